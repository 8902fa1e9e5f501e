"""Two row blocks, two transports: ``mpiexec -n 2 charlm train`` against ``charlm train --threads 2``, and one block.

For each config (benchmarks/compare.py's A, B, C, LSTM) and round, the same training run three ways, one
after the other, each a process tree of its own on the whole machine:

    one       charlm train shakespeare --threads 1 …          (one process, one block: 1 rank)
    threads   charlm train shakespeare --threads 2 …          (the local transport: a worker process, /dev/shm)
    mpi       mpiexec -n 2 charlm train shakespeare --threads 1 …   (two MPI ranks, one block each)

threads and mpi compute the same blocks and give the same losses; only the transport differs. A run trains --windows
windows of --window-steps steps (validation on 2,000 characters between them) and reports the median chars/s
of its windows after the first (the first includes starting the worker or the ranks). Needs the mpi extra
(`pip install "charlm[mpi]"`); mpiexec and charlm are taken from next to --python.

    python benchmarks/mpi_scaling.py                       # A, B, C, 3 pairs, on a quiet machine (some minutes)
    python benchmarks/mpi_scaling.py --smoke               # a tiny model, one pair: checks that it runs

The table goes to stdout (markdown), for benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from benchlib import blas_line, cpu_model, nproc, pins_line, run_as_user

SIZES = {  # name: (layers, hidden, embed, batch, seq_len), as benchmarks/compare.py
    "A": (1, 128, 64, 32, 64),
    "B": (2, 256, 64, 32, 64),
    "C": (2, 512, 64, 64, 100),
    "smoke": (1, 16, 8, 8, 16),
}
WINDOW_STEPS = {"A": 100, "B": 20, "C": 4, "smoke": 5}  # about 2-3 s per window on a 2-core machine


def run(kind: str, config: str, bindir: Path, windows: int, folder: Path) -> float:
    """Median chars/s of the windows after the first, of one run of ``kind`` ("one", "threads" or "mpi")."""
    layers, hidden, embed, batch, seq_len = SIZES[config]
    steps = WINDOW_STEPS[config]
    args = ["train", "shakespeare", "--steps", str(steps * windows), "--eval-every", str(steps)]
    args += ["--layers", str(layers), "--hidden", str(hidden), "--embed", str(embed), "--dropout", "0"]
    args += ["--batch-size", str(batch), "--seq-len", str(seq_len), "--val-chars", "2000", "--out", str(folder)]
    if kind in ("one", "threads"):
        command = [str(bindir / "charlm"), *args, "--threads", "1" if kind == "one" else "2", "--name", kind]
    else:
        command = [str(bindir / "mpiexec"), "-n", "2", str(bindir / "charlm"), *args, "--threads", "1", "--name", "mpi"]
    r = subprocess.run(command, capture_output=True, text=True)
    if r.returncode != 0:
        sys.exit(f"mpi_scaling: {' '.join(command)} failed (exit {r.returncode}):\n{r.stderr}")
    lines = (folder / kind / "metrics.jsonl").read_text(encoding="utf-8").splitlines()
    rates = [rec["chars_per_s"] for rec in map(json.loads, lines) if "chars_per_s" in rec]
    return statistics.median(rates[1:] or rates)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--configs", default="A,B,C", help="comma-separated configs of benchmarks/compare.py")
    p.add_argument("--pairs", type=int, default=3, help="rounds per config (one run of each kind per round)")
    p.add_argument("--windows", type=int, default=5, help="timed windows per run (the first is not counted)")
    p.add_argument("--python", default=sys.executable, help="the Python whose environment has charlm[mpi]")
    p.add_argument("--smoke", action="store_true", help="a tiny model, one pair, three windows")
    a = p.parse_args(argv)
    run_as_user()
    configs = ["smoke"] if a.smoke else a.configs.split(",")
    pairs, windows = (1, 3) if a.smoke else (a.pairs, a.windows)
    bindir = Path(a.python).parent
    rows = [
        "| config | model | 1 rank (one block) chars/s | --threads 2 chars/s | mpiexec -n 2 chars/s "
        "| MPI ÷ threads | per-round range | 2 ranks ÷ 1 |"
    ]
    rows.append("| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    for config in configs:
        ratios, rates = [], {"one": [], "threads": [], "mpi": []}
        for _ in range(pairs):
            with tempfile.TemporaryDirectory() as tmp:
                for kind in ("one", "threads", "mpi"):
                    rates[kind].append(run(kind, config, bindir, windows, Path(tmp)))
            ratios.append(rates["mpi"][-1] / rates["threads"][-1])
            print(
                f"{config}: one {rates['one'][-1]:,.0f}, threads {rates['threads'][-1]:,.0f}, "
                f"mpi {rates['mpi'][-1]:,.0f} chars/s",
                file=sys.stderr,
            )
        layers, hidden, embed, batch, seq_len = SIZES[config]
        o, t, m = (statistics.median(rates[k]) for k in ("one", "threads", "mpi"))
        rows.append(
            f"| {config} | {layers}×{hidden} LSTM, E {embed}, B {batch}, T {seq_len} | {o:,.0f} | {t:,.0f} | "
            f"{m:,.0f} | {m / t:.2f}× | {min(ratios):.2f}–{max(ratios):.2f} | {m / o:.2f}× |"
        )
    print(f"{nproc()} CPUs ({cpu_model()}); {blas_line()}")
    print(pins_line())
    print()
    print("\n".join(rows))


if __name__ == "__main__":
    main()
