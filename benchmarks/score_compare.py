"""Scoring speed: ``charlm perplexity`` against its PyTorch peer (score_peer.py), same text, same weights.

For each model (--checkpoint, repeatable; by default the shipped shakespeare model, 2×512, and a model of
charlm's default size made by ``charlm train CORPUS --steps N`` with no model option) and each of --pairs
pairs, alternately, every run a process of its own:

    in-process   the scoring alone, after the checkpoint is loaded and the text encoded: in a charlm process,
                 charlm.evaluate.score_ids on charlm's encoding of the file (what ``charlm perplexity`` runs);
                 in a PyTorch process, score_peer.py's rows (batch 64, the same warm-up, inference_mode, oneDNN)
    whole        ``charlm perplexity TEXT --checkpoint CKPT --json`` and ``python benchmarks/score_peer.py TEXT
                 --checkpoint CKPT --json``, timed from outside: start-up, imports, loading and encoding included

Medians over the pairs; a ratio is the peer's seconds ÷ charlm's (above 1: charlm is faster); peak RSS is the
in-process run's ru_maxrss, charlm's plus its forks' (an upper bound: pages they share count twice). The
losses are checked against one sequential pass at batch 1 (score_peer.py --sequential, once per model, not
timed): charlm's should be within 0.005 nats/char of it. The text is by default the held-out
tail of --corpus (its last 10%, as charlm train splits it). The "Scoring speed" section of RESULTS.md is written
(other sections are kept) and every figure goes to scoring.json next to it.

    python benchmarks/score_compare.py                     # shipped model and a default-size one, 3 pairs
    python benchmarks/score_compare.py --checkpoint runs/shakespeare/best.safetensors --text tail.txt --pairs 1
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
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
    fmt_ratio,
    nproc,
    parse_with_outputs,
    pins_line,
    portable,
    replace_section,
    run_as_user,
    thread_env,
    user_command,
    user_env,
    write_atomic,
)

SECTION = "Scoring speed"
TOLERANCE = 0.005  # nats/char: charlm's rows against one sequential pass


def charlm_worker(checkpoint: Path, text: Path) -> dict:
    """In a charlm process: load, encode (as charlm perplexity does), time score_ids alone."""
    import resource

    from charlm.checkpoint import load
    from charlm.corpus import text_form
    from charlm.data import encode_stream
    from charlm.evaluate import score_ids

    forks_too = (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)  # a long text's rows are scored in forks too
    t0 = time.perf_counter()
    ckpt = load(checkpoint)
    model = ckpt.build_model()
    t1 = time.perf_counter()
    enc = encode_stream(text, ckpt.vocab, str(text), form=text_form(ckpt.corpus))
    t2 = time.perf_counter()
    score = score_ids(model, enc.ids, unknown=enc.unknown_count, parallel=True)
    t3 = time.perf_counter()
    return {
        "tool": "charlm",
        "nats_per_char": score.nats_per_char,
        "chars": score.chars,
        "seconds": round(t3 - t2, 4),
        "load_seconds": round(t1 - t0, 4),
        "encode_seconds": round(t2 - t1, 4),
        "peak_rss_mb": round(sum(resource.getrusage(who).ru_maxrss for who in forks_too) / 1024.0, 1),
    }


def timed(cmd: list[str], tmp: Path) -> tuple[str, float, float]:
    """(stdout, wall seconds, peak RSS in MB) of a process run with the user's environment."""
    out_path, err_path = tmp / "stdout", tmp / "stderr"
    with open(out_path, "w") as out, open(err_path, "w") as err:
        t0 = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=out, stderr=err, env=user_env(NO_COLOR="1", TERM="dumb"))
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - t0
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        last = (err_path.read_text().strip().splitlines() or ["no message"])[-1]
        raise BenchError(f"{shlex.join(cmd)} failed with exit code {proc.returncode}: {last}")
    return out_path.read_text(), wall, usage.ru_maxrss / 1024.0


def measure(charlm: Path, ckpt: Path, text: Path, pairs: int, steps: int, tmp: Path) -> dict:
    """Every run of one model: in-process and whole-process pairs, then the sequential reference."""
    peer = [sys.executable, str(HERE / "score_peer.py"), str(text), "--checkpoint", str(ckpt), "--steps", str(steps)]
    worker = [sys.executable, str(Path(__file__).resolve()), "--charlm-worker", str(ckpt), str(text)]
    perplexity = [str(charlm), "perplexity", str(text), "--checkpoint", str(ckpt), "--json"]
    runs: dict[str, list] = {"charlm": [], "peer": [], "charlm_whole": [], "peer_whole": []}
    for k in range(pairs):
        print(f"  pair {k + 1}/{pairs} …", file=sys.stderr, flush=True)
        runs["charlm"].append(json.loads(timed(worker, tmp)[0]))
        runs["peer"].append(json.loads(timed([*peer, "--json"], tmp)[0]))
        for key, cmd in (("charlm_whole", perplexity), ("peer_whole", [*peer, "--json"])):
            out, wall, rss = timed(cmd, tmp)
            runs[key].append({"wall": round(wall, 3), "peak_rss_mb": round(rss, 1), "result": json.loads(out)})
    print("  sequential pass …", file=sys.stderr, flush=True)
    runs["sequential"] = json.loads(timed([*peer, "--sequential", "--json"], tmp)[0])
    return runs


def summarize(name: str, runs: dict) -> dict:
    med = statistics.median
    c, p = [r["seconds"] for r in runs["charlm"]], [r["seconds"] for r in runs["peer"]]
    cw, pw = [r["wall"] for r in runs["charlm_whole"]], [r["wall"] for r in runs["peer_whole"]]
    seq = runs["sequential"]["sequential"]["nats_per_char"]
    loss_c, loss_p = runs["charlm"][0]["nats_per_char"], runs["peer"][0]["nats_per_char"]
    return {
        "model": name,
        "chars": runs["charlm"][0]["chars"],
        "charlm_s": med(c),
        "peer_s": med(p),
        "ratio": med(p) / med(c),
        "range": [min(b / a for a, b in zip(c, p, strict=True)), max(b / a for a, b in zip(c, p, strict=True))],
        "charlm_whole_s": med(cw),
        "peer_whole_s": med(pw),
        "ratio_whole": med(pw) / med(cw),
        "charlm_rss": med(r["peak_rss_mb"] for r in runs["charlm"]),
        "peer_rss": med(r["peak_rss_mb"] for r in runs["peer"]),
        "loss_charlm": loss_c,
        "loss_peer": loss_p,
        "loss_sequential": seq,
        "met_speed": med(p) / med(c) >= 1.0,
        "met_loss": abs(loss_c - seq) <= TOLERANCE,
    }


def render(data: dict, sums: list[dict]) -> str:
    yes = lambda ok: "**yes**" if ok else "**no**"  # noqa: E731
    rows = [
        "| model | characters | charlm scoring | peer scoring | ratio | per-pair range | goal ≥ 1.0× | whole process: charlm, peer | ratio | peak RSS: charlm, peer |",
        "| --- | ---: | ---: | ---: | ---: | ---: | --- | ---: | ---: | ---: |",
    ]
    for s in sums:
        rows.append(
            f"| {s['model']} | {s['chars']:,} | {s['charlm_s']:.2f} s | {s['peer_s']:.2f} s | {fmt_ratio(s['ratio'])} | "
            f"{s['range'][0]:.2f}–{s['range'][1]:.2f} | {yes(s['met_speed'])} | {s['charlm_whole_s']:.2f} s, "
            f"{s['peer_whole_s']:.2f} s | {fmt_ratio(s['ratio_whole'])} | {s['charlm_rss']:.0f} MB, {s['peer_rss']:.0f} MB |"
        )
    losses = [
        "| model | charlm nats/char | peer nats/char | one sequential pass | charlm − sequential | within 0.005 |",
        "| --- | ---: | ---: | ---: | ---: | --- |",
    ]
    for s in sums:
        losses.append(
            f"| {s['model']} | {s['loss_charlm']:.5f} | {s['loss_peer']:.5f} | {s['loss_sequential']:.5f} | "
            f"{s['loss_charlm'] - s['loss_sequential']:+.5f} | {yes(s['met_loss'])} |"
        )
    env = ", ".join(f"`{k}={v}`" for k, v in data["thread_env"].items()) or "none set"
    return "\n".join(
        [
            f"## {SECTION}",
            "",
            f"`benchmarks/score_compare.py`, {data['date'][:16].replace('T', ' ')} UTC, {nproc()} CPUs ({cpu_model()}), "
            f"{data['blas']}; PyTorch {data['torch']}, its default threads, oneDNN on, `inference_mode`. Thread "
            f"variables: {env}. " + pins_line()[2:] + ".",
            "",
            f"Text: {data['text']}. {data['pairs']} pair{'' if data['pairs'] == 1 else 's'} per model, alternately, each run a process of its own; medians. "
            "Scoring: the seconds of the scoring alone, measured inside each process after loading the checkpoint and "
            "encoding the text (charlm: `charlm.evaluate.score_ids`, what `charlm perplexity` runs: forward-only "
            "passes of `charlm.scorer`, the rows split over forked processes, one block per core, by "
            "`charlm.rowsplit`; peer: "
            "`benchmarks/score_peer.py`, the same 64 rows and 256-character warm-up, "
            f"{data['steps']} time steps per forward pass). Whole process: `charlm perplexity TEXT --checkpoint CKPT "
            "--json` against `python benchmarks/score_peer.py TEXT --checkpoint CKPT --json`, start-up and imports "
            "included. Ratios: the peer's seconds ÷ charlm's (above 1: charlm is faster). Peak RSS: of the "
            "in-process runs, charlm's process plus its forks' (an upper bound: the pages they share count twice).",
            "",
            *rows,
            "",
            "Same loss as one sequential pass (batch 1 over the whole text, the state carried, computed by the peer):",
            "",
            *losses,
            "",
            *command_block(data["command"]),
            "Every figure: `scoring.json` next to this file.",
        ]
    )


def parse_args(argv: list[str] | None = None):
    p = Parser(
        prog="score_compare.py",
        description="Time charlm perplexity against its PyTorch peer (score_peer.py) on the same text and weights, "
        "and check the loss against one sequential pass; updates the 'Scoring speed' section of RESULTS.md.",
    )
    p.add_argument("--checkpoint", type=Path, action="append", help="A model to compare (repeat for more).")
    p.add_argument("--text", type=Path, help="UTF-8 text to score. (default: the held-out tail of --corpus)")
    p.add_argument("--corpus", default="shakespeare", help="Corpus of the default text and the default-size model.")
    p.add_argument(
        "--default-steps", type=bounded(int, 1), default=300, help="Training steps of the default-size model."
    )
    p.add_argument("--pairs", type=bounded(int, 1, 100), default=3, help="Pairs per model; medians are reported.")
    p.add_argument("--steps", type=bounded(int, 1), default=128, help="The peer's time steps per forward pass.")
    p.add_argument("--python", type=Path, default=Path(sys.executable), help="Interpreter whose 'charlm' script runs.")
    p.add_argument("--charlm-worker", nargs=2, type=Path, metavar=("CKPT", "TEXT"), help=argparse.SUPPRESS)
    return parse_with_outputs(p, argv, "scoring.json", "")


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    run_as_user()
    if args.charlm_worker:
        print(json.dumps(charlm_worker(*args.charlm_worker)))
        return
    command = user_command("benchmarks/score_compare.py", argv)
    started = datetime.now(UTC)
    results, sums = {}, []
    try:
        try:
            import torch

            from charlm.corpora import shipped_model
            from charlm.errors import CharlmError
        except ImportError as e:
            raise BenchError(
                f"cannot import {e.name}: run this with charlm's interpreter, with torch==2.13.0"
            ) from None
        charlm = args.python.parent / "charlm"
        if not charlm.is_file():
            raise BenchError(f"no 'charlm' console script next to {args.python}; pass --python")
        with tempfile.TemporaryDirectory(prefix="charlm-score-") as tmp_name:
            tmp = Path(tmp_name)
            text, text_desc = args.text, f"`{args.text}`"
            if text is None:
                from time_to_quality import VAL_FRAC, tail_of

                try:
                    tail = tail_of(args.corpus)
                except CharlmError as e:
                    raise BenchError(str(e).rstrip(".")) from None
                text = tmp / "tail.txt"
                text.write_text(tail, encoding="utf-8")
                text_desc = f"the held-out tail of `{args.corpus}` (its last {VAL_FRAC:.0%}, {len(tail):,} characters)"
            models = [(str(c), c) for c in args.checkpoint or []]
            if not models:
                models.append(("shipped `shakespeare` (2×512)", shipped_model("shakespeare")))
                print(f"training a default-size model for {args.default_steps} steps …", file=sys.stderr, flush=True)
                cmd = [str(charlm), "train", args.corpus, "--steps", str(args.default_steps), "--out", str(tmp)]
                timed([*cmd, "--name", "default"], tmp)
                models.append(
                    (f"charlm's default size, {args.default_steps} steps", tmp / "default" / "best.safetensors")
                )
            for name, ckpt in models:
                print(f"{name}: {args.pairs} pairs …", file=sys.stderr, flush=True)
                results[name] = measure(charlm, ckpt, text, args.pairs, args.steps, tmp)
                sums.append(summarize(name, results[name]))
    except BenchError as e:
        fail(f"{e}. Nothing was written")
    except KeyboardInterrupt:
        fail("interrupted; nothing was written", 130)
    data = {
        "command": command,
        "date": started.isoformat(timespec="seconds"),
        "text": text_desc,
        "pairs": args.pairs,
        "steps": args.steps,
        "blas": blas_line(),
        "torch": torch.__version__,
        "thread_env": thread_env(),
        "blas_pins": pins_line(),
        "summaries": sums,
        "runs": results,
    }
    head = "# charlm vs PyTorch: benchmark results\n\nThe throughput sections are written by benchmarks/compare.py.\n\n"
    replace_section(args.out, SECTION, portable(render(data, sums), tmp), head)
    write_atomic(args.json_out, portable(json.dumps(data, indent=1), tmp) + "\n")
    for s in sums:
        print(
            f"{s['model']}: charlm {s['charlm_s']:.2f} s, peer {s['peer_s']:.2f} s ({fmt_ratio(s['ratio'])}); whole "
            f"process {fmt_ratio(s['ratio_whole'])}; charlm − sequential {s['loss_charlm'] - s['loss_sequential']:+.5f}"
        )
    print(f"wrote the '{SECTION}' section of {args.out} and {args.json_out}")


if __name__ == "__main__":
    main()
