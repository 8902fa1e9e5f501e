"""What the reliability guarantees cost: peak memory of ``charlm sample`` against
``--length`` (streaming), and the time to check a corpus cache file per 100 MiB.

    python benchmarks/reliability.py                 # both, printed as Markdown
    python benchmarks/reliability.py --lengths 1e4 1e7 --model shakespeare

Each sample runs as its own ``charlm`` process (the console script next to this
Python); its peak RSS comes from ``os.wait4``. The cache check times the pieces of
``corpus.cache_problem`` (sha256 of the ids, their maximum) and two alternatives
on 100 MiB of random uint16 ids, median of ``--repeats``.
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import time
import zlib
from pathlib import Path

from benchlib import Parser, fail, run_as_user, user_env


def sample_peak(charlm: Path, model: str, length: int) -> tuple[float, float]:
    """(peak RSS in MB, wall seconds) of one ``charlm sample`` writing to /dev/null."""
    cmd = [str(charlm), "sample", "-m", model, "--length", str(length), "--seed", "1"]
    start = time.perf_counter()
    with open(os.devnull, "wb") as sink:
        proc = subprocess.Popen(cmd, stdout=sink, stderr=subprocess.PIPE, env=user_env())
        _, status, usage = os.wait4(proc.pid, 0)
    seconds = time.perf_counter() - start
    if os.waitstatus_to_exitcode(status) != 0:
        fail(f"{' '.join(cmd)} failed: {proc.stderr.read().decode().strip()}")
    return usage.ru_maxrss / 1024, seconds


def cache_check_times(repeats: int) -> dict[str, float]:
    """Median seconds per 100 MiB of ids for each way of checking them."""
    import hashlib

    import numpy as np

    ids = np.random.default_rng(0).integers(0, 65, size=50 * 2**20, dtype=np.uint16)  # 100 MiB
    ways = {
        "sha256 (used)": lambda: hashlib.sha256(ids).digest(),
        "max id (used)": lambda: int(ids.max()),
        "crc32": lambda: zlib.crc32(ids),
        "blake2b": lambda: hashlib.blake2b(ids).digest(),
    }
    times = {}
    for name, check in ways.items():
        runs = []
        for _ in range(repeats):
            start = time.perf_counter()
            check()
            runs.append(time.perf_counter() - start)
        times[name] = statistics.median(runs)
    return times


def main() -> None:
    parser = Parser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="shakespeare", help="model name or checkpoint to sample")
    parser.add_argument("--lengths", nargs="+", type=float, default=[1e4, 1e6, 1e7])
    parser.add_argument("--repeats", type=int, default=5, help="timings per cache check")
    args = parser.parse_args()
    run_as_user()
    charlm = Path(sys.executable).with_name("charlm")
    if not charlm.exists():
        fail(f"no charlm console script next to {Path(sys.executable).name}; pip install -e . first")

    print("| `--length` | peak RSS (MB) | seconds |\n| ---: | ---: | ---: |")
    for length in args.lengths:
        peak, seconds = sample_peak(charlm, args.model, int(length))
        print(f"| {int(length):,} | {peak:.1f} | {seconds:.2f} |")
    print("\n| cache check, 100 MiB of ids | seconds |\n| --- | ---: |")
    for name, seconds in cache_check_times(args.repeats).items():
        print(f"| {name} | {seconds:.3f} |")


if __name__ == "__main__":
    main()
