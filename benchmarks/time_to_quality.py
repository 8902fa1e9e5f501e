"""Time to quality: the held-out loss each system reaches in a fixed wall-clock budget.

For every budget (--minutes, default 3 and 10) and seed (--seeds, default 0 and 1), one run at a time on the
whole machine, each in a process of its own:

    charlm    ``charlm train CORPUS --minutes M --seed S`` (the console script next to --python) with no model or
              recipe option, so it measures charlm's defaults, whatever they are; its best.safetensors is then
              scored by ``charlm perplexity TAIL --checkpoint …/best.safetensors --json``, TAIL a file holding
              exactly the held-out tail, and that figure checked against the run's own final validation
    lstm      benchmarks/recipe_peer.py: the PyTorch LSTM with charlm's default recipe, read from charlm.config
    nanogpt   benchmarks/nanogpt_peer.py: nanoGPT's CPU recipe, its iterations calibrated to the budget

A budget counts from the start of the system's process. charlm's and the LSTM peer's include the final
validation of their best weights on the whole tail; nanoGPT's ends with its last evaluation, and its scoring of
the whole tail (a 64-character window per character) comes after, outside the budget.

The held-out tail is the last round(0.1·N) characters of the corpus as charlm train reads it (charlm's default
split, which the peers use too); every system scores its targets tail[1:]: charlm and the LSTM peer in 64 rows
with a 256-character warm-up (charlm.evaluate), nanoGPT with 64 characters of context per target, and in its
own non-overlapping 64-character blocks for reference. The "Time to quality" section of RESULTS.md is written
(other sections are kept) and every history goes to time_to_quality.json next to it.

    python benchmarks/time_to_quality.py                       # 3 and 10 minutes, seeds 0 and 1: about 80 minutes
    python benchmarks/time_to_quality.py --minutes 0.2 --seeds 0 --out /tmp/R.md   # smoke test
    python benchmarks/time_to_quality.py --minutes 30 --seeds 0 --systems charlm --add   # one more run, kept with the others

With --add the runs already in the JSON are kept unless this invocation runs the same budget, seed and system
again; a kept charlm or LSTM run must have used today's charlm defaults (else it is dropped, with a line saying so).
"""

from __future__ import annotations

import argparse
import json
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path

from benchlib import (
    HERE,
    BenchError,
    Parser,
    blas_line,
    bounded,
    command_block,
    cpu_model,
    fail,
    nproc,
    parse_with_outputs,
    pins_line,
    replace_section,
    run_as_user,
    thread_env,
    user_command,
    user_env,
    write_atomic,
)

SECTION = "Time to quality"
SYSTEMS = ("charlm", "lstm", "nanogpt")
VAL_FRAC = 0.1  # the held-out tail: charlm's default split, the same for every system
NAMES = {
    "charlm": "charlm, its defaults",
    "lstm": "PyTorch LSTM, charlm's default recipe",
    "nanogpt": "nanoGPT CPU recipe, 64 characters of context",
    "nanogpt-blocks": "nanoGPT, its own measure (64-character blocks)",
}


def stream(cmd: list[str], label: str) -> str:
    """Run ``cmd`` with the user's environment, pass its stderr through prefixed by ``label``, return stdout."""
    env = user_env(NO_COLOR="1", TERM="dumb", COLUMNS="200")
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    last = "no message"
    assert proc.stderr is not None and proc.stdout is not None
    for line in proc.stderr:
        if line.strip():
            last = line.strip()
            print(f"  {label}: {last}", file=sys.stderr, flush=True)
    out = proc.stdout.read()
    if proc.wait() != 0:
        raise BenchError(f"{shlex.join(cmd)} failed with exit code {proc.returncode}: {last}")
    return out


def run_charlm(charlm: Path, corpus: str, minutes: float, seed: int, tmp: Path, tail: Path, n_tail: int) -> dict:
    """Train with charlm's defaults, score best.safetensors on the tail file, check it against the run's figure."""
    from quality import run_charlm as train_and_read

    from charlm.checkpoint import load

    name = f"m{minutes:g}-s{seed}"
    cmd = [
        str(charlm),
        "train",
        corpus,
        "--minutes",
        f"{minutes:g}",
        "--seed",
        str(seed),
        "--out",
        str(tmp),
        "--name",
        name,
    ]
    t0 = time.perf_counter()
    res = train_and_read(cmd, tmp / name)
    wall = time.perf_counter() - t0
    best = tmp / name / "best.safetensors"
    scored = json.loads(stream([str(charlm), "perplexity", str(tail), "--checkpoint", str(best), "--json"], "charlm"))
    if scored["chars"] != n_tail - 1 or scored["unknown"]:
        raise BenchError(f"charlm perplexity scored {scored['chars']:,} characters of the tail, not {n_tail - 1:,}")
    ckpt = load(best, with_extra=False)
    used = {"model": asdict(ckpt.config), "train": ckpt.train_config.to_dict()}
    differs = recipe_differences(used)
    return {
        "system": "charlm",
        "tail_nats": scored["nats_per_char"],
        "tail_chars": scored["chars"],
        "run_best_val": res["best_val"],  # the run's own final validation of its best weights
        "run_val_chars": res["history"][-1].get("val_chars"),
        "held_out": ckpt.corpus.val_chars if ckpt.corpus else None,
        "used": used,
        "differs_from_dataclasses": differs,
        "best_step": res["best_step"],
        "steps": res["steps"],
        "chars": res["chars"],
        "elapsed": res["elapsed"],
        "wall": round(wall, 2),
        "command": shlex.join(["charlm", *cmd[1:]]).replace(str(tmp), "<tmpdir>"),
        "history": res["history"],
        "stdout": [line.replace(str(tmp), "<tmpdir>") for line in res["stdout"]],
    }


def run_peer(script: str, corpus: str, minutes: float, seed: int, label: str) -> dict:
    cmd = [sys.executable, str(HERE / script), "--corpus", corpus, "--minutes", f"{minutes:g}", "--seed", str(seed)]
    t0 = time.perf_counter()
    res = json.loads(stream([*cmd, "--json"], label))
    res["wall"] = round(time.perf_counter() - t0, 2)
    return res


def recipe_differences(used: dict) -> list[str]:
    """The settings of a run's {"model": …, "train": …} that differ from charlm's defaults now."""
    from recipe_peer import KNOWN_MODEL, KNOWN_TRAIN, charlm_recipe

    defaults = charlm_recipe()
    skip = {"vocab_size", "minutes", "seed"}  # set by the run itself
    return [
        f"{part}.{k}: ran {used[part][k]!r}, dataclass {defaults[part][k]!r}"
        for part, known in (("model", KNOWN_MODEL), ("train", KNOWN_TRAIN))
        for k in sorted(known - skip)
        if k in used[part] and used[part][k] != defaults[part][k]
    ]


def same_recipe(run: dict) -> bool:
    """Whether a stored charlm or LSTM-peer run used charlm's defaults as they are now (nanoGPT's recipe is fixed)."""
    if run["system"] == "nanogpt":
        return True
    used = run["result"].get("used") or run["result"].get("recipe")
    return used is not None and not recipe_differences(used)


def kept_runs(path: Path, redo: set[tuple[float, int, str]]) -> tuple[list[dict], list[str]]:
    """The runs of an earlier JSON that --add keeps, and the commands that produced them."""
    if not path.is_file():
        return [], []
    old = json.loads(path.read_text(encoding="utf-8"))
    kept = []
    for run in old["runs"]:
        key = (run["minutes"], run["seed"], run["system"])
        if key in redo:
            continue
        if not same_recipe(run):
            print(
                f"dropped {run['system']}, {run['minutes']:g} min, seed {run['seed']}: not today's defaults",
                file=sys.stderr,
            )
            continue
        kept.append(run)
    return kept, old.get("commands", [old["command"]]) if kept else []


def tail_of(corpus: str) -> str:
    """The held-out tail as charlm train reads and splits the corpus."""
    from charlm.config import TrainConfig
    from charlm.corpora import resolve
    from charlm.corpus import form_of
    from charlm.data import split_text
    from charlm.text import read_text

    return split_text(read_text(resolve(corpus)[0], form=form_of(TrainConfig())), VAL_FRAC)[1]


def loss_of(r: dict, key: str) -> float:
    return {"charlm": r.get("tail_nats"), "lstm": r.get("tail_nats"), "nanogpt": r.get("tail_sliding")}.get(
        key, r.get("tail_blocks")
    )


def summarize(runs: list[dict]) -> dict[tuple[float, str], dict]:
    """(budget, row key) → mean loss, per-seed losses, mean steps, chars/s and wall time over the seeds."""
    rows: dict[tuple[float, str], dict] = {}
    for key in (*SYSTEMS, "nanogpt-blocks"):
        for minutes in dict.fromkeys(r["minutes"] for r in runs):
            mine = [r for r in runs if r["minutes"] == minutes and r["system"] == key.split("-")[0]]
            if not mine:
                continue
            losses = [loss_of(r["result"], key) for r in mine]
            res = [r["result"] for r in mine]
            rows[(minutes, key)] = {
                "mean": statistics.fmean(losses),
                "seeds": {r["seed"]: round(x, 4) for r, x in zip(mine, losses, strict=True)},
                "steps": statistics.fmean(x.get("steps", x.get("iters", 0)) for x in res),
                "chars_per_s": statistics.fmean(x["chars"] / max(x["elapsed"], 1e-9) for x in res),
                "wall": statistics.fmean(x["wall"] for x in res),
                "elapsed": statistics.fmean(x["elapsed"] for x in res),
                "score_seconds": statistics.fmean(x.get("score_seconds", 0.0) for x in res),
            }
    return rows


def goals(rows: dict) -> list[str]:
    """The goals of issue 19's item 3, each judged on the means where the runs exist."""
    lines = []

    def mean(m, key):
        return rows[(m, key)]["mean"] if (m, key) in rows else None

    for m, margin in ((10.0, 0.06), (3.0, 0.0)):
        c, g = mean(m, "charlm"), mean(m, "nanogpt")
        want = f"lower than nanoGPT's recipe by ≥ {margin:g} nats/char" if margin else "lower than nanoGPT's recipe"
        if c is None or g is None:
            lines.append(f"- {m:g} minutes, charlm {want}: not measured")
        else:
            met = c - g <= -margin if margin else c < g
            lines.append(
                f"- {m:g} minutes, charlm {want}: charlm − nanoGPT = {c - g:+.4f}: **{'met' if met else 'not met'}**"
            )
    for m in sorted({m for m, _ in rows}):
        c, p = mean(m, "charlm"), mean(m, "lstm")
        if c is not None and p is not None:
            verdict = "met" if c <= p else "not met"
            lines.append(
                f"- {m:g} minutes, charlm no worse than the PyTorch LSTM with its recipe: charlm − peer = {c - p:+.4f}: **{verdict}**"
            )
    c30 = mean(30.0, "charlm")
    lines.append(
        "- a 30-minute default run ≤ 1.40: "
        + (
            "not measured (add 30 to --minutes)"
            if c30 is None
            else f"{c30:.4f}: **{'met' if c30 <= 1.40 else 'not met'}**"
        )
    )
    return lines


def render(data: dict, rows: dict) -> str:
    runs = data["runs"]
    minutes = sorted({r["minutes"] for r in runs})
    first = {s: next((r["result"] for r in runs if r["system"] == s), None) for s in SYSTEMS}
    table = [
        "| budget | system | held-out nats/char (mean) | per seed | steps / iterations | chars/s | wall time |",
        "| --- | --- | ---: | --- | ---: | ---: | ---: |",
    ]
    for m in minutes:
        for key in (*SYSTEMS, "nanogpt-blocks"):
            if (m, key) not in rows:
                continue
            r = rows[(m, key)]
            seeds = ", ".join(f"{x:.4f}" for x in r["seeds"].values())
            if key == "nanogpt-blocks":
                table.append(f"| {m:g} min | {NAMES[key]} | {r['mean']:.4f} | {seeds} | same runs | | |")
                continue
            wall = f"{r['wall']:.0f} s" + (f" (scoring {r['score_seconds']:.0f} s)" if key == "nanogpt" else "")
            table.append(
                f"| {m:g} min | {NAMES[key]} | {r['mean']:.4f} | {seeds} | {r['steps']:,.0f} | {r['chars_per_s']:,.0f} | {wall} |"
            )
    diffs = [
        f"{m:g} min {rows[(m, 'charlm')]['mean'] - rows[(m, 'nanogpt')]['mean']:+.4f}"
        for m in minutes
        if (m, "charlm") in rows and (m, "nanogpt") in rows
    ]
    notes = []
    if first["charlm"]:
        c = first["charlm"]
        m, t = c["used"]["model"], c["used"]["train"]
        notes.append(
            f"- charlm: `{c['command']}`, i.e. {m['layers']}×{m['hidden']} {m['cell'].upper()}, E {m['embed']}, dropout "
            f"{m['dropout']:g}, batch {t['batch_size']} × {t['seq_len']}, lr {t['lr']:g}, validation every "
            f"{t['eval_every']} steps; scored by `charlm perplexity` on a file holding the tail (the run's own final "
            f"validation agrees within {max(abs(r['result']['tail_nats'] - r['result']['run_best_val']) for r in runs if r['system'] == 'charlm'):.1e})."
        )
        if c["differs_from_dataclasses"]:
            notes.append(
                "- charlm train ran settings other than charlm.config's dataclasses: "
                + "; ".join(c["differs_from_dataclasses"])
            )
    if first["lstm"]:
        from recipe_peer import describe

        p = first["lstm"]
        ign = f" (it does not follow: {', '.join(p['ignored'])})" if p["ignored"] else ""
        notes.append(f"- PyTorch LSTM: `benchmarks/recipe_peer.py`, {describe(p['recipe'])}{ign}.")
    if first["nanogpt"]:
        g = first["nanogpt"]
        notes.append(
            f"- nanoGPT: `benchmarks/nanogpt_peer.py`, {g['params']:,} parameters, AdamW lr 1e-3 → 1e-4 (cosine after 100 "
            "warm-up iterations, max_iters planned from the measured iteration time so the decay ends with the budget), "
            "weight decay 0.1, betas (0.9, 0.99), clip 1.0, the best of its evaluations (every 250 iterations and the "
            "last, on 20 random batches) kept."
        )
    held = next((r["result"]["held_out"] for r in runs), 0)
    return "\n".join(
        [
            f"## {SECTION}",
            "",
            f"`benchmarks/time_to_quality.py`, {data['date'][:16].replace('T', ' ')} UTC, {nproc()} CPUs ({cpu_model()}), "
            f"{data['blas']}, PyTorch {data['torch']}. One run at a time on the whole machine, each system in a process of "
            f"its own; budgets {', '.join(f'{m:g}' for m in minutes)} minutes from the process's start, seeds "
            f"{', '.join(map(str, data['seeds']))}; thread variables: "
            + (", ".join(f"`{k}={v}`" for k, v in data["thread_env"].items()) or "none set")
            + ". "
            + pins_line()[2:]
            + ".",
            "",
            f"Held-out tail: the last {VAL_FRAC:.0%} of `{data['corpus']}` as charlm train reads it ({held:,} characters); "
            f"every system scores its {held - 1:,} characters after the first: charlm and the LSTM in 64 rows with a "
            "256-character warm-up (as `charlm perplexity`), nanoGPT with the 64 characters before each (the first ones "
            "reach back into the training text) and, for reference, in nanoGPT's own non-overlapping 64-character blocks. "
            "Each run's best weights are scored (charlm's best.safetensors, the peers' best validation kept in memory).",
            "",
            *table,
            "",
            "Steps: optimizer steps (charlm, LSTM) or iterations (nanoGPT), mean over the seeds; chars/s: characters "
            "trained on (steps × batch × sequence length) per second of the budget; wall time: the whole process. The "
            "budget covers charlm's and the LSTM's final validation, not nanoGPT's whole-tail scoring (shown apart). "
            f"charlm − nanoGPT: {', '.join(diffs) or 'not measured'}.",
            "",
            "Goals (issue 19, item 3), on the means over the seeds:",
            "",
            *goals(rows),
            "",
            *notes,
            "",
            *command_block("\n".join(data.get("commands", [data["command"]]))),
            "Histories: `time_to_quality.json` next to this file. Earlier runs: [HISTORY.md](HISTORY.md).",
        ]
    )


def parse_args(argv: list[str] | None = None):
    p = Parser(
        prog="time_to_quality.py",
        description="Train charlm's defaults, the PyTorch LSTM with charlm's recipe and nanoGPT's CPU recipe for the same "
        "wall-clock budgets, one after the other, and compare the held-out loss of each run's best weights; updates "
        "the 'Time to quality' section of RESULTS.md.",
    )
    p.add_argument(
        "--minutes", type=bounded(float, 0.0, strict_low=True), nargs="+", default=[3.0, 10.0], help="Budgets."
    )
    p.add_argument("--seeds", type=bounded(int, 0), nargs="+", default=[0, 1], help="Seeds, each run at every budget.")
    p.add_argument("--systems", nargs="+", choices=SYSTEMS, default=list(SYSTEMS), help="Systems to run.")
    p.add_argument("--corpus", default="shakespeare", help="Shipped corpus name or text file.")
    p.add_argument(
        "--add",
        action="store_true",
        help="Keep the JSON's earlier runs (of today's defaults) that this one does not redo.",
    )
    p.add_argument(
        "--python",
        type=Path,
        default=Path(sys.executable),
        help="Interpreter whose environment's 'charlm' script runs.",
    )
    p.add_argument(
        "--runs",
        type=Path,
        default=argparse.SUPPRESS,
        help="Keep charlm's run folders in this (new or empty) folder. (default: a temporary one)",
    )
    args = parse_with_outputs(p, argv, "time_to_quality.json", "Histories as JSON. ")
    args.runs = getattr(args, "runs", None)
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    run_as_user()
    command = user_command("benchmarks/time_to_quality.py", argv)
    started = datetime.now(UTC)
    runs: list[dict] = []
    try:
        try:
            import torch

            from charlm.errors import CharlmError
        except ImportError as e:
            raise BenchError(
                f"cannot import {e.name}: run this with charlm's interpreter, with torch==2.13.0"
            ) from None
        charlm = args.python.parent / "charlm"
        if "charlm" in args.systems and not charlm.is_file():
            raise BenchError(f"no 'charlm' console script next to {args.python}; pass --python")
        try:
            tail = tail_of(args.corpus)
        except CharlmError as e:
            raise BenchError(str(e).rstrip(".")) from None
        with tempfile.TemporaryDirectory(prefix="charlm-ttq-") as tmp:
            tail_file = Path(tmp) / "tail.txt"
            run_dir = args.runs or Path(tmp)
            tail_file.write_text(tail, encoding="utf-8")
            for minutes in args.minutes:
                for seed in args.seeds:
                    for system in args.systems:
                        print(f"{system}: {minutes:g} min, seed {seed} …", file=sys.stderr, flush=True)
                        if system == "charlm":
                            res = run_charlm(charlm, args.corpus, minutes, seed, run_dir, tail_file, len(tail))
                        else:
                            script = {"lstm": "recipe_peer.py", "nanogpt": "nanogpt_peer.py"}[system]
                            res = run_peer(script, args.corpus, minutes, seed, system)
                        if res["held_out"] != len(tail):  # e.g. charlm's default val_frac changed: not the same tail
                            raise BenchError(
                                f"{system} held out {res['held_out']:,} characters, not the {len(tail):,} of the "
                                f"benchmark's tail (the last {VAL_FRAC:.0%}); the systems would not score the same text"
                            )
                        runs.append({"minutes": minutes, "seed": seed, "system": system, "result": res})
                        loss = loss_of(res, system)
                        print(f"{system}: {minutes:g} min, seed {seed}: {loss:.4f} nats/char", file=sys.stderr)
    except BenchError as e:
        fail(f"{e}. Nothing was written")
    except KeyboardInterrupt:
        fail("interrupted; nothing was written", 130)
    redo = {(m, s, system) for m in args.minutes for s in args.seeds for system in args.systems}
    kept, commands = kept_runs(args.json_out, redo) if args.add else ([], [])
    runs = sorted(kept + runs, key=lambda r: (r["minutes"], r["seed"], SYSTEMS.index(r["system"])))
    data = {
        "command": command,
        "commands": [*commands, command],
        "date": started.isoformat(timespec="seconds"),
        "corpus": args.corpus,
        "seeds": sorted({r["seed"] for r in runs}),
        "cpu": cpu_model(),
        "nproc": nproc(),
        "blas": blas_line(),
        "torch": torch.__version__,
        "blas_pins": pins_line(),
        "thread_env": thread_env(),
        "runs": runs,
    }
    rows = summarize(runs)
    head = "# charlm vs PyTorch: benchmark results\n\nThe throughput sections are written by benchmarks/compare.py.\n\n"
    replace_section(args.out, SECTION, render(data, rows), head)
    write_atomic(args.json_out, json.dumps(data, indent=1) + "\n")
    for (m, key), r in rows.items():
        print(
            f"{m:g} min  {NAMES[key]:<48} {r['mean']:.4f} nats/char  (seeds: {', '.join(map(str, r['seeds'].values()))})"
        )
    print(f"wrote the '{SECTION}' section of {args.out} and {args.json_out}")


if __name__ == "__main__":
    main()
