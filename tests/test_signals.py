"""Interrupting a real ``charlm train`` process: SIGINT, SIGTERM and kill -9.

Each test starts the installed console script on a tiny model, waits until it
is training, sends the signal, and checks what is left on disk.
"""

from __future__ import annotations

import os
import random
import re
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from charlm import checkpoint
from charlm.cli import app
from charlm.runs import checkpoint_in, list_runs, resume_checkpoint
from tests.shm import charlm_files_left, shm_names
from tests.test_cli import console_script

STEPS = 600  # long enough to interrupt after the first checkpoint (step 50), short enough to finish (~2 s)
TINY = ["--hidden", "12", "--embed", "6", "--layers", "2", "--dropout", "0.2", "--batch-size", "4", "--seq-len", "16"]


def start(tmp_path: Path, *args: str, stderr=subprocess.PIPE) -> subprocess.Popen:
    return subprocess.Popen(
        [console_script(), "train", *args], cwd=tmp_path, stdout=subprocess.PIPE, stderr=stderr, text=True
    )


def wait_for(condition, proc: subprocess.Popen, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if proc.poll() is not None:
            out, err = proc.communicate()
            pytest.fail(f"charlm train ended (exit {proc.returncode}) before the signal:\n{err}")
        if time.monotonic() > deadline:
            proc.kill()
            pytest.fail("charlm train did not start training in time")
        time.sleep(0.005)


def step_of(path: Path) -> int:
    return checkpoint.load(path).state.step


def params_of(path: Path) -> tuple[np.ndarray, np.ndarray]:
    ck = checkpoint.load(path)
    return ck.build_model().flat, ck.extra["optimizer.exp_avg"]


@pytest.fixture(scope="module")
def straight(tmp_path_factory) -> Path:
    """The same run as the interrupted ones, never interrupted (in-process, for speed)."""
    root = tmp_path_factory.mktemp("straight")
    corpus = root / "small.txt"
    from tests.conftest import SMALL_TEXT

    corpus.write_text(SMALL_TEXT, encoding="utf-8")
    r = CliRunner().invoke(
        app, ["train", str(corpus), "--steps", str(STEPS), "--eval-every", "50", "--out", str(root), *TINY]
    )
    assert r.exit_code == 0, r.output
    return root / "small" / "last.safetensors"


@pytest.mark.parametrize(
    ("sig", "code"), [(signal.SIGINT, 130), pytest.param(signal.SIGTERM, 143, marks=pytest.mark.slow)]
)
def test_signal_saves_prints_resume_command_and_resumes_exactly(tmp_path, small_corpus, straight, sig, code):
    run = tmp_path / "runs" / "small"
    proc = start(tmp_path, str(small_corpus), "--steps", str(STEPS), "--eval-every", "50", "--out", "runs", *TINY)
    wait_for(lambda: (run / "last.safetensors").exists(), proc)
    proc.send_signal(sig)
    proc.send_signal(sig)  # impatient: a second one right away must change nothing
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == code, err
    assert out == "" and "Traceback" not in err
    last_line = err.strip().splitlines()[-1]
    m = re.fullmatch(r"interrupted at step (\d+); resume with: (charlm train .+)", last_line)
    assert m, err
    step = int(m.group(1))
    assert 50 <= step < STEPS and step_of(run / "last.safetensors") == step
    assert shlex.split(m.group(2)) == ["charlm", "train", str(small_corpus), "--resume", "runs/small"]

    # the printed command, as printed, continues the run to the end of its budget
    resumed = subprocess.run(
        [console_script(), *shlex.split(m.group(2))[1:]], cwd=tmp_path, capture_output=True, text=True, timeout=120
    )
    assert resumed.returncode == 0, resumed.stderr
    assert f"at step {step:,}" in resumed.stderr
    assert step_of(run / "last.safetensors") == STEPS
    a, b = params_of(straight), params_of(run / "last.safetensors")
    assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])


@pytest.mark.slow
def test_kill_9_at_random_moments_never_leaves_a_bad_checkpoint(tmp_path, small_corpus):
    """With --eval-every 1 the run writes last.safetensors (and often best) at every
    step. Odd attempts kill at a random moment, even ones as soon as a temporary
    checkpoint file appears, i.e. in the middle of a save."""
    rng = random.Random(5)
    run = tmp_path / "runs" / "small"
    metrics = run / "metrics.jsonl"
    common = ["--eval-every", "1", "--out", "runs"]
    mid_save = 0
    for attempt in range(6):
        size = metrics.stat().st_size if metrics.exists() else 0
        if attempt == 0:
            proc = start(tmp_path, str(small_corpus), "--steps", "100000", *TINY, *common, stderr=subprocess.DEVNULL)
        else:  # each later attempt resumes what the kills left behind
            proc = start(tmp_path, str(small_corpus), "--resume", "runs/small", *common, stderr=subprocess.DEVNULL)
        wait_for(lambda size=size: metrics.exists() and metrics.stat().st_size > size, proc)
        if attempt % 2:
            time.sleep(rng.uniform(0.0, 0.3))
        else:
            wait_for(lambda: any(p.name.endswith(".tmp") for p in run.iterdir()), proc)
        proc.kill()
        proc.wait(timeout=30)
        assert proc.returncode == -signal.SIGKILL
        temps = [p for p in run.iterdir() if p.name.endswith(".tmp")]
        mid_save += bool(temps)
        assert all(re.fullmatch(rf"\.(last|best)\.safetensors\.{proc.pid}\.tmp", p.name) for p in temps)
        for p in run.glob("*.safetensors"):
            checkpoint.load(p)  # every checkpoint present loads
        assert list_runs(tmp_path / "runs") == [run]
        assert checkpoint_in(run).name == "best.safetensors"
        assert resume_checkpoint(run).name == "last.safetensors"
    assert mid_save >= 1  # at least one kill really hit a save in progress
    step = step_of(run / "last.safetensors")
    r = subprocess.run(
        [console_script(), "train", str(small_corpus), "--resume", "runs/small", "--steps", str(step + 3), *common],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 0, r.stderr
    assert step_of(run / "last.safetensors") == step + 3
    assert sorted(p.name for p in run.iterdir()) == ["best.safetensors", "last.safetensors", "metrics.jsonl"]


KILL_WHILE_REPLACING = """
import os, sys, time
real_replace = os.replace
calls = []

def slow_replace(src, dst):
    calls.append(dst)
    if len(calls) == 3:  # the second save of last.safetensors: written and fsynced, not yet renamed
        sys.stderr.write("REPLACING " + str(src) + "\\n")
        sys.stderr.flush()
        time.sleep(120)
    real_replace(src, dst)

os.replace = slow_replace
from charlm.cli import main
sys.argv = ["charlm", "train", *sys.argv[1:]]
main()
"""


def test_kill_9_in_the_middle_of_a_save_keeps_the_old_checkpoint(tmp_path, small_corpus):
    run = tmp_path / "runs" / "small"
    proc = subprocess.Popen(
        [sys.executable, "-c", KILL_WHILE_REPLACING, str(small_corpus), "--steps", "50", "--eval-every", "5", *TINY],
        cwd=tmp_path,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        for line in proc.stderr:
            if line.startswith("REPLACING "):
                temp = tmp_path / line.split(" ", 1)[1].strip()
                break
        else:
            pytest.fail("the save was never reached")
        before = (run / "last.safetensors").read_bytes()
        assert temp.name == f".last.safetensors.{proc.pid}.tmp" and temp.parent == run
        assert step_of(temp) == 10  # the new checkpoint is complete, only the rename is missing
    finally:
        proc.kill()
        proc.wait(timeout=30)
    assert (run / "last.safetensors").read_bytes() == before and step_of(run / "last.safetensors") == 5
    assert temp.exists()  # a stale temporary file remains ...
    assert checkpoint_in(run, "last") == run / "last.safetensors"  # ... and nothing picks it up
    r = subprocess.run(
        [console_script(), "train", str(small_corpus), "--resume", "runs/small", "--steps", "12"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 0, r.stderr
    assert not temp.exists()  # the next run in that folder cleans it up
    assert step_of(run / "last.safetensors") == 12


def _children(pid: int) -> set[int]:
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            return {int(p) for p in f.read().split()}
    except FileNotFoundError:
        return set()


def _gone(pids: set[int], timeout: float = 20.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not any(os.path.exists(f"/proc/{p}") for p in pids):
            return True
        time.sleep(0.05)
    return False


@pytest.mark.slow
@pytest.mark.skipif(not os.path.exists("/proc/self/task"), reason="needs /proc")
def test_ctrl_c_with_worker_processes(tmp_path, small_corpus):
    """Two row blocks, so a worker process trains beside the main one. A terminal's
    Ctrl-C goes to the whole foreground process group: the main process saves and
    stops with 130, the worker (in its own session) is not interrupted mid-step and
    ends with it. Then kill -9 of the main process: the worker ends too (its input
    closes) and nothing is left in /dev/shm."""
    run = tmp_path / "runs" / "small"
    args = [str(small_corpus), "--steps", "100000", "--eval-every", "20", "--out", "runs", *TINY]
    args[args.index("--batch-size") + 1] = "16"
    proc = subprocess.Popen(
        [console_script(), "train", *args, "--threads", "2"],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,  # its own process group, as a shell gives a foreground job
    )
    wait_for(lambda: (run / "last.safetensors").exists(), proc)
    workers = _children(proc.pid)
    assert len(workers) == 1
    os.killpg(proc.pid, signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert "Traceback" not in err and re.search(r"interrupted at step \d+; resume with", err)
    assert _gone(workers)
    checkpoint.load(run / "last.safetensors")

    shm_before = shm_names()
    proc = start(tmp_path, str(small_corpus), "--resume", "runs/small", stderr=subprocess.DEVNULL)
    wait_for(lambda: len(_children(proc.pid)) == 1, proc)
    workers = _children(proc.pid)
    time.sleep(0.5)
    proc.kill()
    proc.wait(timeout=30)
    assert _gone(workers)
    assert charlm_files_left(shm_before) == set()


PARALLEL = ["--steps", "200", "--eval-every", "20", "--threads", "2", *TINY]
PARALLEL[PARALLEL.index("--batch-size") + 1] = "16"  # two row blocks of 8


@pytest.fixture(scope="module")
def straight_parallel(tmp_path_factory) -> Path:
    """The run of the stalled-worker tests, never stopped, with the same two row blocks."""
    root = tmp_path_factory.mktemp("straight-parallel")
    corpus = root / "small.txt"
    from tests.conftest import SMALL_TEXT

    corpus.write_text(SMALL_TEXT, encoding="utf-8")
    r = CliRunner().invoke(app, ["train", str(corpus), "--out", str(root), *PARALLEL])
    assert r.exit_code == 0, r.output
    return root / "small" / "last.safetensors"


@pytest.mark.slow
@pytest.mark.skipif(not os.path.exists("/proc/self/task"), reason="needs /proc")
@pytest.mark.parametrize("how", ["ctrl-c", "timeout", "kill-9"])
def test_a_stopped_worker_neither_hangs_the_run_nor_deafens_it(tmp_path, small_corpus, straight_parallel, how):
    """SIGSTOP a worker process mid-run. Ctrl-C then stops the run within seconds
    (exit 130, the step in progress dropped with a warning naming the worker); with
    no Ctrl-C, the wait for the worker times out ($CHARLM_WORKER_TIMEOUT=1 s here;
    30 s by default): one error line naming it, exit 1. A worker killed instead
    (kill -9) is one error line too. Each time the worker is ended,
    last.safetensors holds the last completed step, and the printed resume
    command ends bit-identical to a run never stopped."""
    run = tmp_path / "runs" / "small"
    env = {k: v for k, v in os.environ.items() if k != "CHARLM_WORKER_TIMEOUT"}
    if how == "timeout":
        env["CHARLM_WORKER_TIMEOUT"] = "1"
    proc = subprocess.Popen(
        [console_script(), "train", str(small_corpus), "--out", "runs", *PARALLEL],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        start_new_session=True,  # its own process group, as a shell gives a foreground job
    )
    wait_for(lambda: (run / "last.safetensors").exists(), proc)
    (worker,) = _children(proc.pid)
    os.kill(worker, signal.SIGKILL if how == "kill-9" else signal.SIGSTOP)
    t0 = time.monotonic()
    if how == "ctrl-c":
        time.sleep(0.3)  # the main process is now waiting for the stopped worker
        os.killpg(proc.pid, signal.SIGINT)
        t0 = time.monotonic()
    try:
        out, err = proc.communicate(timeout=60)
    finally:
        if os.path.exists(f"/proc/{worker}"):  # never leave a stopped process behind
            os.kill(worker, signal.SIGKILL)
    took = time.monotonic() - t0
    assert out == "" and "Traceback" not in err
    named = f"training worker process 1 (pid {worker}) did not answer within"
    stopped = "it is stopped (SIGSTOP or SIGTSTP)"
    last = err.strip().splitlines()[-1]
    if how == "ctrl-c":
        assert proc.returncode == 130, err
        assert took < 10  # the 2 s grace for an answer after Ctrl-C, and the save
        warning = next(line for line in err.splitlines() if line.startswith("warning: training worker"))
        assert named in warning and "of the request to stop" in warning and stopped in warning
        assert warning.endswith("the step in progress was dropped.")
        m = re.fullmatch(r"interrupted at step (\d+); resume with: (charlm train .+)", last)
    elif how == "timeout":
        assert proc.returncode == 1, err
        assert took < 10  # 1 s, then SIGTERM and SIGCONT end the worker, and the save
        assert re.match(rf"error: {re.escape(named)} [\d.]+ s; {re.escape(stopped)}\. The workers were ended", last)
    else:
        assert proc.returncode == 1, err
        died = f"error: training worker process 1 (pid {worker}) ended unexpectedly (killed by signal 9)."
        assert last.startswith(died) and "The workers were ended; step " in last
    if how != "ctrl-c":
        m = re.search(r"step (\d+) is saved in runs/small/last\.safetensors; resume with: (charlm train .+)$", last)
    assert m, err
    step = int(m.group(1))
    assert _gone({worker}, timeout=5)
    assert 20 <= step < 200 and step_of(run / "last.safetensors") == step

    resumed = subprocess.run(
        [console_script(), *shlex.split(m.group(2))[1:]], cwd=tmp_path, capture_output=True, text=True, timeout=120
    )
    assert resumed.returncode == 0, resumed.stderr
    a, b = params_of(straight_parallel), params_of(run / "last.safetensors")
    assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])  # the dropped step was redone, same draws


def test_signals_call_routes_both_signals_and_restores_the_handlers():
    from charlm.signals import signals_call

    before = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    seen = []
    with signals_call(seen.append):
        os.kill(os.getpid(), signal.SIGINT)
        os.kill(os.getpid(), signal.SIGTERM)
    assert seen == [signal.SIGINT, signal.SIGTERM]
    assert {sig: signal.getsignal(sig) for sig in before} == before
