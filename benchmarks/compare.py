"""charlm against its PyTorch peer, side by side, on the same configurations and machine.

For every series (a configuration and a measure) the two tools run as separate
processes, alternately — charlm, PyTorch, charlm, PyTorch, … — for ``--pairs``
pairs, so slow drifts of the machine hit both sides alike:

    series        model                          measure
    A             1×128 LSTM, E 64, B 32, T 64   training throughput
    B             2×256 LSTM, E 64, B 32, T 64   training throughput (charlm's default model)
    C             2×512 LSTM, E 64, B 64, T 100  training throughput and peak RSS
    sample        B                              sampling throughput (batch 1, τ = 1)
    B-gru, B-rnn  B with a GRU / tanh RNN        training throughput (with --cells)

Training runs do not sample, so the peak RSS of a training run is the training's.
Each run reports the median of its own timed windows; per series this script
reports the median of each side over the pairs, the ratio of those medians
(charlm ÷ PyTorch) and the smallest and largest per-pair ratio, and checks them
against the goals of issue 19. It writes benchmarks/RESULTS.md (keeping
the sections other scripts write there: quality.py's, time_to_quality.py's,
memory_estimate.py's, …) and every raw figure to benchmarks/results.json.

    python benchmarks/compare.py                         # the full comparison (about 10 minutes)
    python benchmarks/compare.py --pairs 1 --windows 1 --window-seconds 0.2 --configs A --out /tmp/R.md
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from benchlib import (
    HERE,
    RESULTS_MD,
    TORCH_PIN,
    BenchError,
    Parser,
    bounded,
    command_block,
    cpu_model,
    fail,
    fmt_rate,
    fmt_ratio,
    nproc,
    pins_line,
    run_as_user,
    split_sections,
    thread_env,
    user_command,
    user_env,
    write_atomic,
)

# the sections this script writes (a run without some series leaves theirs out: old figures are not kept)
OWN_SECTIONS = ("Machine", "Protocol", "Training throughput", "Sampling throughput", "Peak memory")


def kept_sections(path: Path) -> dict[str, str]:
    """The sections of an existing report, by title: those other scripts write are kept."""
    return split_sections(path.read_text(encoding="utf-8"))[1] if path.is_file() else {}


SIZES = {  # name: (layers, hidden, embed, batch, seq_len)
    "A": (1, 128, 64, 32, 64),
    "B": (2, 256, 64, 32, 64),
    "C": (2, 512, 64, 64, 100),
}
# Goals of issue 19, charlm ÷ PyTorch with both sides on the kernels a user's machine runs
TRAIN_GOAL = {"lstm": 1.0, "gru": 1.3, "rnn": 1.3}  # training chars/s, by cell: at least
SAMPLE_GOAL = 6.0  # sampling chars/s: at least
RSS_GOAL = 0.7  # peak RSS while training C: at most


@dataclass(frozen=True)
class Series:
    key: str  # "A", "B", "C", "sample", "B-gru", …
    config: str  # A, B or C
    cell: str
    measure: str  # "train" or "sample"

    def options(self) -> list[str]:
        layers, hidden, embed, batch, seq_len = SIZES[self.config]
        opts = ["--cell", self.cell, "--layers", str(layers), "--hidden", str(hidden), "--embed", str(embed)]
        opts += ["--batch", str(batch), "--seq-len", str(seq_len)]
        opts += ["--train", "--no-sample"] if self.measure == "train" else ["--no-train", "--sample"]
        return opts

    @property
    def model(self) -> str:
        layers, hidden, embed, batch, seq_len = SIZES[self.config]
        shape = "batch 1" if self.measure == "sample" else f"B {batch}, T {seq_len}"
        return f"{layers}×{hidden} {self.cell.upper()}, E {embed}, {shape}"


def plan(configs: list[str], cells: list[str], sample: bool) -> list[Series]:
    series = [Series(c, c, "lstm", "train") for c in configs]
    if sample:
        series.append(Series("sample", "B", "lstm", "sample"))
    series += [Series(f"B-{cell}", "B", cell, "train") for cell in cells if cell != "lstm"]
    return series


# --------------------------------------------------------------------------- #
# Running the two tools
# --------------------------------------------------------------------------- #


def commands(python: Path) -> dict[str, list[str]]:
    """The command prefix of each side: charlm's console script next to ``python``, and the peer."""
    charlm = python.parent / "charlm"
    if not charlm.is_file():
        raise BenchError(
            f"no 'charlm' console script next to {python}. Install charlm into that environment "
            "(pip install -e .) or pass --python with an interpreter that has it"
        )
    return {"charlm": [str(charlm), "bench", "--json"], "pytorch": [str(python), str(HERE / "torch_peer.py"), "--json"]}


def run_json(cmd: list[str]) -> dict:
    """Run one benchmark process and return its JSON; a failure raises BenchError with its last stderr line."""
    env = user_env(NO_COLOR="1", TERM="dumb", COLUMNS="200")
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        lines = [ln for ln in proc.stderr.strip().splitlines() if ln.strip()]
        last = lines[-1].strip() if lines else "no message"
        raise BenchError(f"{shlex.join(cmd)} failed with exit code {proc.returncode}: {last}")
    try:
        return json.loads(proc.stdout)
    except json.JSONDecodeError:
        raise BenchError(f"{shlex.join(cmd)} did not print JSON on stdout: {proc.stdout[:200]!r}") from None


def preflight(prefix: dict[str, list[str]], cells: list[str]) -> dict[str, dict]:
    """Check that both tools start and accept every requested cell before the long run.
    Returns each tool's JSON of a run that measures nothing (machine description)."""
    info = {}
    for cell in cells:
        for tool, cmd in prefix.items():
            info[tool] = run_json([*cmd, "--cell", cell, "--no-train", "--no-sample"])
    return info


def measure(series: list[Series], prefix: dict[str, list[str]], pairs: int, window_opts: list[str]) -> dict:
    """Run every series for ``pairs`` alternating pairs; return the raw JSON of every run."""
    raw: dict[str, dict[str, list[dict]]] = {}
    total, done, t_start = len(series) * pairs * 2, 0, time.perf_counter()
    for s in series:
        raw[s.key] = {"charlm": [], "pytorch": []}
        for pair in range(pairs):
            for tool in ("charlm", "pytorch"):
                res = run_json([*prefix[tool], *s.options(), *window_opts])
                raw[s.key][tool].append(res)
                done += 1
                print(
                    f"[{done}/{total}] {s.key:<7} pair {pair + 1}/{pairs} {tool:<8} "
                    f"{fmt_rate(res[s.measure]['chars_per_s']):>10} chars/s  peak RSS {res['peak_rss_mb']:.0f} MB  "
                    f"({time.perf_counter() - t_start:.0f} s)",
                    file=sys.stderr,
                    flush=True,
                )
    return raw


# --------------------------------------------------------------------------- #
# Summaries
# --------------------------------------------------------------------------- #


def summarize(s: Series, runs: dict[str, list[dict]], goal_applies: bool = True) -> dict:
    """Medians per side over the pairs, ratio of medians, min–max per-pair ratio, goal check.

    The goals are judged against PyTorch's defaults only; with oneDNN switched
    off (a sensitivity check) ``met`` is None."""
    rate = {tool: [r[s.measure]["chars_per_s"] for r in runs[tool]] for tool in ("charlm", "pytorch")}
    rss = {tool: [r["peak_rss_mb"] for r in runs[tool]] for tool in ("charlm", "pytorch")}
    med = {tool: statistics.median(v) for tool, v in rate.items()}
    pair_ratios = [c / p for c, p in zip(rate["charlm"], rate["pytorch"], strict=True)]
    ratio = med["charlm"] / med["pytorch"]
    goal = SAMPLE_GOAL if s.measure == "sample" else TRAIN_GOAL[s.cell]
    out = {
        "series": s.key,
        "model": s.model,
        "measure": s.measure,
        "charlm_chars_per_s": rate["charlm"],
        "pytorch_chars_per_s": rate["pytorch"],
        "charlm_median": med["charlm"],
        "pytorch_median": med["pytorch"],
        "ratio": ratio,
        "pair_ratio_min": min(pair_ratios),
        "pair_ratio_max": max(pair_ratios),
        "goal": goal,
        "goal_applies": goal_applies,
        "met": ratio >= goal if goal_applies else None,
        "charlm_peak_rss_mb": rss["charlm"],
        "pytorch_peak_rss_mb": rss["pytorch"],
    }
    if s.measure == "train":
        c_rss, p_rss = statistics.median(rss["charlm"]), statistics.median(rss["pytorch"])
        out.update(
            charlm_rss_median=c_rss,
            pytorch_rss_median=p_rss,
            rss_ratio=c_rss / p_rss,
            rss_pair_ratio_min=min(c / p for c, p in zip(rss["charlm"], rss["pytorch"], strict=True)),
            rss_pair_ratio_max=max(c / p for c, p in zip(rss["charlm"], rss["pytorch"], strict=True)),
        )
    return out


def yes_no(met: bool | None) -> str:
    return "—" if met is None else "**yes**" if met else "**no**"


def render(
    summaries: list[dict], info: dict, command: str, args, started: datetime, minutes: float, load: tuple
) -> str:
    cm, pm = info["charlm"]["machine"], info["pytorch"]["machine"]
    lines = [
        "# charlm vs PyTorch: benchmark results",
        "",
        f"Measured by `benchmarks/compare.py` on {started:%Y-%m-%d %H:%M} UTC ({minutes:.1f} minutes). "
        "Ratios are charlm ÷ PyTorch of the medians over the pairs (higher is better for throughput, "
        "lower for memory); the range is the smallest and largest ratio within one pair.",
        "",
        *(
            []
            if pm["mkldnn"]
            else [
                "**Sensitivity check, not the benchmark of record:** PyTorch ran with oneDNN switched off "
                "(`--no-torch-mkldnn`), which is not its default, so its nn.LSTM used ATen's own kernels instead "
                "of oneDNN's fused RNN primitive. The goals are judged against PyTorch's defaults only "
                "(benchmarks/RESULTS.md), so no goal is judged here.",
                "",
            ]
        ),
        *command_block(command),
        "Earlier runs and what changed between them: [HISTORY.md](HISTORY.md).",
        "",
        "## Machine",
        "",
        f"- CPUs (`nproc`): {nproc()}; CPU: {cpu_model()}",
        f"- Python {cm['python']}",
        f"- charlm: NumPy {cm['numpy']}, BLAS {cm['blas']}; float32 GEMM {info['charlm']['gemm_gflops']} GFLOP/s",
        f"- PyTorch {pm['torch']}: BLAS {pm['blas']}; {pm['torch_threads']} intra-op threads "
        f"(its default, not lowered), oneDNN {'enabled (default backends)' if pm['mkldnn'] else 'disabled'}, eager mode "
        f"(no torch.compile); float32 GEMM {info['pytorch']['gemm_gflops']} GFLOP/s",
        f"- Load average (1 min) at the start and the end: {load[0]:.2f}, {load[1]:.2f} "
        "(a busy machine slows both sides, PyTorch's OpenMP threads more)",
        f"- Thread environment variables: {', '.join(f'{k}={v}' for k, v in thread_env().items()) or 'none set'}",
        pins_line(),
        "",
        "## Protocol",
        "",
        f"- {args.pairs} pair{'s' if args.pairs > 1 else ''} per series, run alternately (charlm, PyTorch, charlm, PyTorch, …), each run a "
        "separate process.",
        f"- Training: synthetic random ids (V = 65), 3 warm-up steps, then {args.windows} timed window{'s' if args.windows > 1 else ''} of at least "
        f"{args.window_seconds:g} s; a run reports its median window. A step is forward, mean cross-entropy, "
        "backward, global-norm clipping at 5, Adam (lr 1e-3), state carried to the next chunk.",
        "- Sampling: batch 1, temperature 1, a 200-character warm-up, then 5 windows of 2000 characters; "
        "a run reports its median window. Sampling runs do not train and training runs do not sample.",
        "- charlm: `charlm bench --json`. PyTorch: `benchmarks/torch_peer.py --json`, "
        "nn.Embedding → nn.LSTM/nn.GRU/nn.RNN(tanh) (time-major) → nn.Linear, `zero_grad(set_to_none=True)`, "
        "`clip_grad_norm_`, `torch.optim.Adam` defaults; sampling under `torch.inference_mode()` with "
        "`torch.multinomial`.",
        "- Peak RSS: `ru_maxrss` of each process at its end (interpreter, libraries and model included).",
        "- Both sides use all cores by default, so other work on the machine distorts the figures (PyTorch's "
        "OpenMP threads suffer most at batch 1): run it on a quiet machine and check the load average above.",
        "",
    ]
    train = [s for s in summaries if s["measure"] == "train"]
    lstm_train = [s for s in train if "-" not in s["series"]]
    other_cells = [s for s in train if "-" in s["series"]]
    header = [
        "| config | model | charlm chars/s | PyTorch chars/s | ratio | per-pair range | goal | met |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | --- |",
    ]

    def row(s: dict) -> str:
        goal = f"≥ {s['goal']:g}×" if s["goal_applies"] else "—"
        return (
            f"| {s['series']} | {s['model']} | {fmt_rate(s['charlm_median'])} | {fmt_rate(s['pytorch_median'])} | "
            f"{fmt_ratio(s['ratio'])} | {s['pair_ratio_min']:.2f}–{s['pair_ratio_max']:.2f} | {goal} | {yes_no(s['met'])} |"
        )

    if lstm_train:
        lines += ["## Training throughput (LSTM)", "", *header, *map(row, lstm_train), ""]
    sample = [s for s in summaries if s["measure"] == "sample"]
    if sample:
        lines += ["## Sampling throughput (config B, batch 1)", "", *header, *map(row, sample), ""]
    rss_c = [s for s in train if s["series"] == "C"]
    if train:
        lines += [
            "## Peak memory (RSS) while training",
            "",
            "The goal applies to config C; the other training series are listed for reference.",
            "",
            "| config | charlm MB | PyTorch MB | ratio | per-pair range | goal | met |",
            "| --- | ---: | ---: | ---: | ---: | ---: | --- |",
        ]
        for s in train:
            judged = s in rss_c and s["goal_applies"]
            goal = f"≤ {RSS_GOAL:g}×" if judged else "—"
            met = yes_no(s["rss_ratio"] <= RSS_GOAL) if judged else "—"
            lines.append(
                f"| {s['series']} | {s['charlm_rss_median']:.0f} | {s['pytorch_rss_median']:.0f} | "
                f"{fmt_ratio(s['rss_ratio'])} | {s['rss_pair_ratio_min']:.2f}–{s['rss_pair_ratio_max']:.2f} | "
                f"{goal} | {met} |"
            )
        lines.append("")
    if other_cells:
        lines += [
            "## Training throughput, other cells (config B)",
            "",
            "Speed only: PyTorch's nn.GRU applies the relevance gate after the recurrent product, charlm's GRU "
            "before it (the lecture notes' full GRU), so the two compute different functions.",
            "",
            *header,
            *map(row, other_cells),
            "",
        ]
    return "\n".join(lines)


# --------------------------------------------------------------------------- #
# Main
# --------------------------------------------------------------------------- #


def parse_args(argv: list[str] | None = None):
    p = Parser(
        prog="compare.py",
        description="Run 'charlm bench' and the PyTorch peer alternately on configs A, B, C and sampling with B; "
        "write benchmarks/RESULTS.md and benchmarks/results.json.",
    )
    p.add_argument("--pairs", type=bounded(int, 1, 100), default=3, help="Alternating charlm/PyTorch pairs per series.")
    p.add_argument(
        "--configs", default="A,B,C", help="Training configurations, comma-separated, from A, B, C (empty: none)."
    )
    p.add_argument(
        "--sample", action=argparse.BooleanOptionalAction, default=True, help="Measure sampling with config B."
    )
    p.add_argument(
        "--cells", default="lstm", help="Cells, comma-separated, from lstm, gru, rnn; each non-LSTM cell adds config B."
    )
    p.add_argument("--windows", type=bounded(int, 1, 100), default=5, help="Timed training windows per run.")
    p.add_argument(
        "--window-seconds", type=bounded(float, 0.01), default=2.0, help="Minimum seconds per training window."
    )
    p.add_argument(
        "--python",
        type=Path,
        default=Path(sys.executable),
        help="Interpreter for both sides; charlm runs as the 'charlm' script next to it.",
    )
    p.add_argument(
        "--torch-mkldnn",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="Let PyTorch use oneDNN (its default); --no-torch-mkldnn passes --no-mkldnn to the peer.",
    )
    p.add_argument(
        "--out",
        type=Path,
        default=argparse.SUPPRESS,
        help="Markdown report to write. (default: benchmarks/RESULTS.md; with --no-torch-mkldnn, "
        "benchmarks/RESULTS-no-onednn.md, so that a sensitivity check never replaces the results of record)",
    )
    p.add_argument(
        "--json",
        dest="json_out",
        type=Path,
        default=argparse.SUPPRESS,
        help="Raw results as JSON. (default: results.json next to --out; results-no-onednn.json with --no-torch-mkldnn)",
    )
    args = p.parse_args(argv)
    args.configs = [c.strip().upper() for c in args.configs.split(",") if c.strip()]
    args.cells = [c.strip().lower() for c in args.cells.split(",") if c.strip()]
    for c in args.configs:
        if c not in SIZES:
            p.error(f"argument --configs: unknown configuration {c!r}; choose from A, B, C")
    for c in args.cells:
        if c not in ("lstm", "gru", "rnn"):
            p.error(f"argument --cells: unknown cell {c!r}; choose from lstm, gru, rnn")
    if not args.configs and not args.sample and not [c for c in args.cells if c != "lstm"]:
        p.error("nothing to measure: give --configs, --sample or a non-LSTM cell in --cells")
    if "out" not in args:
        args.out = RESULTS_MD if args.torch_mkldnn else RESULTS_MD.with_name("RESULTS-no-onednn.md")
    if "json_out" not in args:
        args.json_out = args.out.with_name("results.json" if args.torch_mkldnn else "results-no-onednn.json")
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    run_as_user()
    # the command as a user types it from the checkout: no interpreter path, no working directory
    command = user_command("benchmarks/compare.py", argv)
    series = plan(args.configs, args.cells, args.sample)
    started = datetime.now(UTC)
    t0 = time.perf_counter()
    load_start = os.getloadavg()[0]
    try:
        prefix = commands(args.python)
        if not args.torch_mkldnn:
            prefix["pytorch"].append("--no-mkldnn")
        print(f"checking both tools with cells {', '.join(dict.fromkeys(['lstm', *args.cells]))} …", file=sys.stderr)
        info = preflight(prefix, list(dict.fromkeys(["lstm", *args.cells])))
        window_opts = ["--windows", str(args.windows), "--window-seconds", str(args.window_seconds)]
        raw = measure(series, prefix, args.pairs, window_opts)
    except BenchError as e:
        fail(f"{e}. Nothing was written")
    except FileNotFoundError as e:
        fail(f"cannot run {e.filename}: not found. Pass --python with the interpreter of charlm's environment")
    except KeyboardInterrupt:
        fail("interrupted; nothing was written", 130)
    summaries = [summarize(s, raw[s.key], goal_applies=args.torch_mkldnn) for s in series]
    minutes = (time.perf_counter() - t0) / 60
    load = (load_start, os.getloadavg()[0])
    report = render(summaries, info, command, args, started, minutes, load)
    for title, text in kept_sections(args.out).items():  # quality.py's, time_to_quality.py's, …
        if not title.startswith(OWN_SECTIONS):
            report += "\n" + text.rstrip("\n") + "\n"
    dump = {
        "command": command,
        "date": started.isoformat(timespec="seconds"),
        "nproc": nproc(),
        "cpu": cpu_model(),
        "thread_env": thread_env(),
        "blas_pins": pins_line(),
        "machine": info,  # each tool's description of the machine and its libraries
        "load_average_1min": load,
        "torch_pin": TORCH_PIN,
        "summaries": summaries,
        "runs": raw,
    }
    write_atomic(args.json_out, json.dumps(dump, indent=1) + "\n")
    write_atomic(args.out, report)
    for s in summaries:
        extra = f", peak RSS ratio {fmt_ratio(s['rss_ratio'])}" if s["series"] == "C" else ""
        print(
            f"{s['series']:<7} {s['measure']:<6} charlm {fmt_rate(s['charlm_median']):>9} chars/s, PyTorch "
            f"{fmt_rate(s['pytorch_median']):>9} chars/s: {fmt_ratio(s['ratio'])} "
            + (
                f"(goal ≥ {s['goal']:g}×: {'met' if s['met'] else 'not met'}){extra}"
                if s["goal_applies"]
                else f"(oneDNN off: no goal judged){extra}"
            )
        )
    print(f"wrote {args.out} and {args.json_out}")


if __name__ == "__main__":
    main()
