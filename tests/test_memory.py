"""Peak memory of what a user runs, through the installed console script.

Each command runs under a fresh Python wrapper, so that the peak resident memory
measured is that command's alone: ``resource.getrusage(RUSAGE_CHILDREN)`` for a
single process, and for training (a main process and its worker processes) the
sum of every process's own peak (VmHWM), read from /proc while it runs.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from charlm.corpora import resolve

pytestmark = pytest.mark.slow

SCORING_MB = 250  # perplexity and score with a shipped model
TRAINING_MB = 300  # default training on Shakespeare, all processes

ONE_PROCESS = """
import resource, subprocess, sys
done = subprocess.run(sys.argv[1:], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024, done.returncode, repr(done.stderr[-300:]))
"""

PROCESS_TREE = """
import os, subprocess, sys, time
def hwm(pid):
    try:
        with open(f"/proc/{pid}/status") as f:
            return next(int(x.split()[1]) for x in f if x.startswith("VmHWM:"))
    except (OSError, StopIteration):
        return None
def children(pid):
    found = []
    try:
        for task in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{task}/children") as f:
                found += [int(x) for x in f.read().split()]
    except OSError:
        pass
    return found
proc = subprocess.Popen(sys.argv[1:], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
peaks = {}
while proc.poll() is None:
    todo = [proc.pid]
    while todo:
        pid = todo.pop()
        kb = hwm(pid)
        if kb is not None:
            peaks[pid] = max(peaks.get(pid, 0), kb)
        todo += children(pid)
    time.sleep(0.02)
print(sum(peaks.values()) / 1024, len(peaks), proc.returncode)
"""


def console_script() -> str:
    found = shutil.which("charlm", path=os.path.dirname(sys.executable)) or shutil.which("charlm")
    if found is None:
        pytest.fail("the charlm console script is not installed; install the package as the README says")
    return found


def peak_mb(*args: str, cwd: Path) -> float:
    r = subprocess.run(
        [sys.executable, "-c", ONE_PROCESS, console_script(), *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=600,
    )
    mb, code, err = r.stdout.split(maxsplit=2)
    assert code == "0", err
    return float(mb)


def shakespeare_slice(tmp_path: Path, chars: int) -> Path:
    text = resolve("shakespeare")[0].read_text(encoding="utf-8")
    path = tmp_path / "slice.txt"
    path.write_text(text[-chars:], encoding="utf-8")
    return path


@pytest.mark.parametrize("model", ["shakespeare", "news"])
def test_perplexity_with_a_shipped_model_stays_small(tmp_path, model):
    """39,900 characters are scored in all 64 rows of 623 targets with every chunk shape
    a longer text meets: warm-up and full chunks of 16 steps, a last chunk of 15, the tail."""
    mb = peak_mb("perplexity", "-m", model, str(shakespeare_slice(tmp_path, 39_900)), cwd=tmp_path)
    assert mb <= SCORING_MB, f"perplexity -m {model}: {mb:.0f} MB"


def test_the_length_of_the_text_adds_little(tmp_path, tiny_checkpoint):
    """A few megabytes of text cost their ids (2 bytes a character) and little else:
    with a tiny model, so that the text is all that is large."""
    short = shakespeare_slice(tmp_path, 20_000)
    base = peak_mb("perplexity", "-c", str(tiny_checkpoint), str(short), cwd=tmp_path)
    long = tmp_path / "long.txt"
    long.write_text(resolve("shakespeare")[0].read_text(encoding="utf-8") * 3, encoding="utf-8")  # 3.3 MB
    mb = peak_mb("perplexity", "-c", str(tiny_checkpoint), str(long), cwd=tmp_path)
    assert mb - base <= 40, f"{base:.0f} MB for 20,000 characters, {mb:.0f} MB for 3.3 million"


def test_score_with_a_shipped_model_stays_small(tmp_path):
    lines = [x for x in resolve("shakespeare")[0].read_text(encoding="utf-8").splitlines() if x.strip()][:1500]
    sentences = tmp_path / "lines.txt"
    sentences.write_text("\n".join(lines) + "\n", encoding="utf-8")
    mb = peak_mb("score", "-m", "shakespeare", "--file", str(sentences), "--json", cwd=tmp_path)
    assert mb <= SCORING_MB, f"score -m shakespeare: {mb:.0f} MB"


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads each process's peak from /proc")
def test_default_training_on_shakespeare_stays_small(tmp_path):
    """The default model and batch on two row blocks (a worker process), through
    several validations and the final one on the whole held-out text."""
    args = ["train", "shakespeare", "--minutes", "0.25", "--eval-every", "50", "--threads", "2"]
    r = subprocess.run(
        [sys.executable, "-c", PROCESS_TREE, console_script(), *args],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=600,
    )
    mb, processes, code = r.stdout.split()
    assert code == "0" and int(processes) == 2
    assert float(mb) <= TRAINING_MB, f"training: {float(mb):.0f} MB in {processes} processes"
    lines = (tmp_path / "runs" / "shakespeare" / "metrics.jsonl").read_text().splitlines()
    assert "best_val_loss" in json.loads(lines[-1])  # it got as far as the whole held-out text
