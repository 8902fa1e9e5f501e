"""charlm's memory estimate against the measured peak, for a few small runs.

charlm refuses a model that does not fit in the memory available, from an
estimate of the bytes the work needs at its peak (``charlm.memory``). This script
runs a few short trainings on a slice of Shakespeare (through every phase that
costs memory: steps, validations, checkpoints, the final validation of the best
weights on the whole held-out text) and then ``perplexity`` and ``sample`` with a
model so trained, and compares each estimate with the measured peak:

* the main process: ``ru_maxrss`` of a wrapper's waited-for children (the largest
  peak among them, which is the main process's);
* each worker process: its peak (VmHWM) less the shared memory it maps (RssShmem),
  which the main process maps too and so has counted already.

The "Memory estimate" section of benchmarks/RESULTS.md is written (other sections
are kept). It takes about two minutes on 2 cores.

    python benchmarks/memory_estimate.py
    python benchmarks/memory_estimate.py --out /tmp/M.md
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from benchlib import RESULTS_MD, BenchError, Parser, fail, replace_section

SECTION = "Memory estimate"
CHARS = 200_000  # characters of Shakespeare trained on (the end of the play text)
# A last validation worse than the first (lr 1), so the run ends by reading its best checkpoint back; a
# held-out text of 64·160 + 1 characters, scored in 64 full rows, so a validation pass's workspace is the largest.
COMMON = ["--steps", "4", "--eval-every", "2", "--val-chars", "10241", "--lr", "1"]


@dataclass(frozen=True)
class Run:
    name: str
    options: list[str]


RUNS = [
    Run("default model", ["--threads", "1"]),
    Run("default model, 2 row blocks", ["--threads", "2"]),
    Run("1×1024 LSTM, small batch", ["--layers", "1", "--hidden", "1024", "--batch-size", "8", "--seq-len", "16"]),
    Run(
        "2×1024 LSTM, 2 row blocks",
        ["--hidden", "1024", "--batch-size", "16", "--seq-len", "16", "--threads", "2", "--lr", "3"],
    ),
    Run(
        "1×128 LSTM, long chunks",
        ["--layers", "1", "--hidden", "128", "--batch-size", "128", "--seq-len", "128", "--lr", "3"],
    ),
    Run("2×512 GRU, dropout 0.2", ["--cell", "gru", "--hidden", "512", "--dropout", "0.2", "--threads", "1"]),
    Run("2×512 RNN", ["--cell", "rnn", "--hidden", "512", "--threads", "1"]),
]

WRAPPER = """
import resource, subprocess, sys
done = subprocess.run(sys.argv[1:], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024, done.returncode, repr(done.stderr[-400:]))
"""


def status_kb(pid: int) -> dict[str, int]:
    """VmHWM and RssShmem of a process, in kB (empty once it is gone)."""
    try:
        with open(f"/proc/{pid}/status") as f:
            return {k: int(v.split()[0]) for k, v in (line.split(":", 1) for line in f) if k in ("VmHWM", "RssShmem")}
    except (OSError, ValueError):
        return {}


def children(pid: int) -> list[int]:
    found = []
    try:
        for task in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{task}/children") as f:
                found += [int(x) for x in f.read().split()]
    except OSError:
        pass
    return found


def measure(args: list[str], cwd: Path) -> tuple[int, int]:
    """(main process's peak, the worker processes' peaks less their shared memory), in bytes."""
    proc = subprocess.Popen(
        [sys.executable, "-c", WRAPPER, charlm(), *args], cwd=cwd, stdout=subprocess.PIPE, text=True
    )
    workers: dict[int, tuple[int, int]] = {}  # pid → (VmHWM, RssShmem) in kB, the largest seen
    while proc.poll() is None:
        for main in children(proc.pid):
            for pid in children(main):
                s = status_kb(pid)
                if s:
                    hwm, shm = workers.get(pid, (0, 0))
                    workers[pid] = (max(hwm, s.get("VmHWM", 0)), max(shm, s.get("RssShmem", 0)))
        time.sleep(0.01)
    peak, code, err = proc.stdout.read().split(maxsplit=2)
    if code != "0":
        raise BenchError(f"charlm {' '.join(args)} failed: {err}")
    return int(peak), sum(1024 * (hwm - shm) for hwm, shm in workers.values())


def charlm() -> str:
    found = shutil.which("charlm", path=os.path.dirname(sys.executable)) or shutil.which("charlm")
    if found is None:
        raise BenchError("the charlm console script is not installed next to this Python")
    return found


def training_row(run: Run, corpus: Path, work: Path) -> tuple[list[str], Path]:
    from charlm import memory
    from charlm.runs import describe

    out = work / run.name.replace(" ", "_").replace(",", "").replace("×", "x")
    args = ["train", str(corpus), "--out", str(out), "--name", "run", *COMMON, *run.options]
    main, workers = measure(args, work)
    info = describe(out / "run" / "last.safetensors")
    estimate = memory.training(info.config, info.state.config, info.vocab_size, info.corpus.chars)
    print(f"{run.name}: main {main / 2**20:.0f} MB, workers {workers / 2**20:.0f} MB", file=sys.stderr)
    back = "yes" if info.state.best_step != info.state.step else "no"
    return [
        *cells(f"`train {' '.join(run.options)}`", estimate, main + workers, estimate.workers + 1),
        back,
    ], out / "run"


def loading_rows(run_dir: Path, corpus: Path, work: Path) -> list[list[str]]:
    from charlm.checkpoint import loading_estimate, read_header, read_metadata

    best = run_dir / "best.safetensors"
    header, meta = read_header(best)
    estimate = loading_estimate(best, header, read_metadata(best, header, meta).config)
    rows = []
    for args in (["perplexity", "-c", str(best), str(corpus)], ["sample", "-c", str(best), "--length", "2000"]):
        main, _ = measure(args, work)
        rows.append([*cells(f"`{args[0]}` with the model above", estimate, main, 1), "—"])
    return rows


def cells(what: str, estimate, measured: int, processes: int) -> list[str]:
    mb = 2**20
    return [
        what,
        str(processes),
        f"{estimate.total / mb:,.0f}",
        f"{measured / mb:,.0f}",
        f"{estimate.total / measured:.2f}",
    ]


def main() -> None:
    p = Parser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, default=RESULTS_MD, help="Markdown report whose section is updated.")
    args = p.parse_args()
    from charlm import memory
    from charlm.corpora import resolve

    text = resolve("shakespeare")[0].read_text(encoding="utf-8")[-CHARS:]
    rows = []
    try:
        with tempfile.TemporaryDirectory(prefix="charlm-memory-") as tmp:
            work = Path(tmp)
            corpus = work / "shakespeare-end.txt"
            corpus.write_text(text, encoding="utf-8")
            for i, run in enumerate(RUNS):
                row, run_dir = training_row(run, corpus, work)
                rows.append(row)
                print(" | ".join(row), file=sys.stderr)
                if i == 2:  # the largest single-process model: also read it back to score and sample
                    for row in loading_rows(run_dir, corpus, work):
                        rows.append(row)
                        print(" | ".join(row), file=sys.stderr)
    except BenchError as e:
        fail(str(e))
    table = [
        "| run | processes | estimate MB | measured MB | estimate ÷ measured | best read back at the end |",
        "| --- | ---: | ---: | ---: | ---: | --- |",
    ]
    table += ["| " + " | ".join(r) + " |" for r in rows]
    ratios = [float(r[4]) for r in rows]
    body = "\n".join(
        [
            f"## {SECTION}",
            "",
            f"Measured by `benchmarks/memory_estimate.py` on {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}: "
            "charlm's estimate of a command's peak memory (`charlm.memory`, what the check before building a model "
            f"compares with the memory available) against the measured peak. Training: {CHARS:,} characters of "
            f"Shakespeare, `{' '.join(COMMON)}` (options after them override them), so each run goes through "
            "steps, validations (in 64 full rows, the largest validation workspace), checkpoints and the final "
            "validation of the best weights; a run whose last validation is worse than its first (the high "
            "learning rate's doing) reads its best checkpoint back at the end, the costliest moment the estimate "
            "allows for. Measured: the main process's peak RSS (`ru_maxrss`), plus each worker process's peak less "
            "the shared memory it maps (counted in the main process). The check refuses a run whose estimate is "
            f"more than {memory.USABLE:.0%} of the memory available.",
            "",
            "```bash",
            "python benchmarks/memory_estimate.py",
            "```",
            "",
            *table,
            "",
            f"Estimate ÷ measured: {min(ratios):.2f}–{max(ratios):.2f}. `sample` runs at batch 1 without the "
            "scoring workspaces the loading estimate allows for (it is the same estimate for every command that "
            "reads a model), hence its margin.",
        ]
    )
    replace_section(args.out, SECTION, body, "# charlm benchmark results\n\n")
    print(f"wrote the '{SECTION}' section of {args.out}")


if __name__ == "__main__":
    main()
