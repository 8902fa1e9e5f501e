"""A run folder belongs to one process at a time (charlm.runlock, charlm.runfolder).

The fast tests lock folders in this process and in small child processes; the slow
ones start real ``charlm train`` processes of the installed console script at the
same time, on the same folder, and check that exactly one of them trains there.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from charlm import checkpoint
from charlm.errors import RunFolderBusyError
from charlm.runfolder import RunFolder
from charlm.runlock import FolderLock, lock_owner
from tests.test_cli import console_script

TINY = ["--hidden", "16", "--embed", "8", "--layers", "1", "--batch-size", "4", "--seq-len", "16"]
HOLD = """
import fcntl, os, sys
fd = os.open(sys.argv[1], os.O_RDONLY | os.O_DIRECTORY)
fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
print("locked", flush=True)
sys.stdin.read()
"""

needs_proc_locks = pytest.mark.skipif(not os.access("/proc/locks", os.R_OK), reason="needs Linux's /proc/locks")


def holder(folder: Path) -> subprocess.Popen:
    """A child process that holds ``folder``'s lock until its stdin closes or it is killed."""
    proc = subprocess.Popen(
        [sys.executable, "-c", HOLD, str(folder)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    assert proc.stdout.readline() == "locked\n"
    return proc


# --------------------------------------------------------------------------- #
# the lock itself
# --------------------------------------------------------------------------- #


def test_a_locked_folder_refuses_a_second_owner_until_released(tmp_path):
    a, b = RunFolder(tmp_path / "runs" / "ok"), RunFolder(tmp_path / "runs" / "ok")
    a.lock()  # creates the folder: one lock per open folder, so two in one process exclude each other too
    assert a.locked and a.created and a.path.is_dir()
    assert not os.get_inheritable(a._lock._fd)  # worker processes never get it
    with pytest.raises(RunFolderBusyError) as e:
        b.lock()
    assert e.value.kind == "run_folder_busy" and e.value.details["path"] == b.path
    if os.access("/proc/locks", os.R_OK):
        assert e.value.details["pid"] == os.getpid() and f"(pid {os.getpid()})" in str(e.value)
    assert list(a.path.iterdir()) == []  # a lock writes nothing into the folder
    a.release()
    b.lock()
    assert b.locked and not b.created
    b.release()


@needs_proc_locks
def test_the_refusal_names_the_owning_process_and_a_killed_owner_frees_the_folder(tmp_path):
    folder = RunFolder(tmp_path / "run")
    folder.path.mkdir()
    proc = holder(folder.path)
    try:
        with pytest.raises(RunFolderBusyError, match=rf"in use by another charlm process \(pid {proc.pid}\)"):
            folder.lock()
    finally:
        proc.kill()  # kill -9: the operating system frees its lock
        proc.wait()
    folder.lock()
    assert folder.locked
    folder.release()


def test_an_automatic_name_takes_the_first_folder_it_can_create_and_lock(tmp_path):
    runs = tmp_path / "runs"
    (runs / "small").mkdir(parents=True)  # an earlier run
    (runs / "small-2").write_text("a file")  # not a folder at all
    taken = RunFolder(runs / "small-3")
    first = RunFolder(runs / "small", unique=True)
    first.lock()
    assert first.path == runs / "small-3" and first.created
    with pytest.raises(RunFolderBusyError):
        taken.lock()
    second = RunFolder(runs / "small", unique=True)
    second.lock()
    assert second.path == runs / "small-4"
    first.release()
    second.release()


def test_a_run_folder_left_empty_is_removed_only_by_its_maker_and_only_while_locked(tmp_path):
    made = RunFolder(tmp_path / "new")
    made.lock()
    made.discard_if_empty()
    assert not made.path.exists() and not made.locked
    kept = RunFolder(tmp_path / "kept")
    kept.lock()
    kept.release()
    kept.discard_if_empty()  # no longer its folder: another process may own it now
    assert kept.path.is_dir()


def test_lock_owner_reads_the_lock_table():
    table = (
        "1: FLOCK  ADVISORY  WRITE 4242 fe:00:1234 0 EOF\n"
        "1: -> FLOCK  ADVISORY  WRITE 77 fe:00:1234 0 EOF\n"  # waiting, not holding
        "2: POSIX  ADVISORY  WRITE 99 fe:00:555 0 EOF\n"
        "3: FLOCK  ADVISORY  WRITE 4343 00:2a:555 0 EOF\n"
    )
    assert lock_owner(table, 1234, 0xFE, 0) == 4242
    assert lock_owner(table, 555, 0xFE, 0) == 4343  # the only flock on that inode, on another device number
    assert lock_owner(table, 9, 0xFE, 0) is None
    assert lock_owner("garbage\n\n", 1234, 0xFE, 0) is None


def test_a_lock_taken_on_a_folder_removed_meanwhile_moves_to_the_folder_now_at_the_path(tmp_path, monkeypatch):
    """Opened, then removed and made anew by others before the flock: that lock is worth
    nothing, and the folder now at the path is locked instead."""
    path = tmp_path / "run"
    path.mkdir()
    opened = [os.open(path, os.O_RDONLY)]  # what the first open saw
    os.rmdir(path)
    path.mkdir()
    real_open = os.open
    monkeypatch.setattr(os, "open", lambda *a, **k: opened.pop() if opened else real_open(*a, **k))
    lock = FolderLock(path)
    assert lock.acquire()
    assert not opened and os.path.samestat(os.fstat(lock._fd), os.stat(path))
    lock.release()


def test_resume_in_a_locked_folder_is_refused_and_changes_nothing(tmp_path, small_corpus):
    from charlm.config import ModelConfig, TrainConfig
    from charlm.prepare import prepare_run
    from charlm.resume import resume_run

    run = tmp_path / "run"
    cfg = TrainConfig(batch_size=4, seq_len=16, eval_every=2, steps=2)
    prepare_run(small_corpus, run, ModelConfig(hidden=8, embed=4, layers=1), cfg).run()
    before = {p.name: p.read_bytes() for p in run.iterdir()}
    owner = RunFolder(run)
    owner.lock()
    with pytest.raises(RunFolderBusyError):
        resume_run(run / "last.safetensors", small_corpus, {"steps": 4})
    with pytest.raises(RunFolderBusyError):
        prepare_run(small_corpus, RunFolder(run), ModelConfig(hidden=8, embed=4, layers=1), cfg)
    owner.release()
    assert {p.name: p.read_bytes() for p in run.iterdir()} == before
    resumed = resume_run(run / "last.safetensors", small_corpus, {"steps": 4})
    assert resumed.folder.locked and resumed.run().steps == 4 and not resumed.folder.locked


# --------------------------------------------------------------------------- #
# real concurrent charlm processes
# --------------------------------------------------------------------------- #


def train(cwd: Path, *args: str, log: str) -> subprocess.Popen:
    """``charlm train ARGS`` in the background; stdout and stderr to files named after ``log``."""
    out, err = (open(cwd / f"{log}.{x}", "w") for x in ("out", "err"))
    with out, err:
        return subprocess.Popen([console_script(), "train", *args], cwd=cwd, stdout=out, stderr=err)


def finish(proc: subprocess.Popen, cwd: Path, log: str) -> tuple[int, str, str]:
    code = proc.wait(timeout=120)
    return code, (cwd / f"{log}.out").read_text(), (cwd / f"{log}.err").read_text()


def wait_until(condition, procs, what: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline or any(p.poll() is not None for p in procs):
            for p in procs:
                p.kill()
            pytest.fail(f"gave up waiting until {what}")
        time.sleep(0.01)


def owner_of(folder: Path) -> int | None:
    return FolderLock(folder).owner() if folder.is_dir() else None


def busy_line(err: str) -> int:
    """The one error line of a refused process; the pid it names."""
    lines = [x for x in err.splitlines() if x.strip()]
    assert len(lines) == 1 and "Traceback" not in err, err
    m = re.fullmatch(
        r"error: (\S+) is in use by another charlm process \(pid (\d+)\); wait for it to finish, or give a new run "
        r"another --name or --out\.",
        lines[0],
    )
    assert m, lines[0]
    return int(m.group(2))


def metric_steps(run: Path) -> list[int]:
    return [json.loads(x)["step"] for x in (run / "metrics.jsonl").read_text().splitlines()]


def last_logged(run: Path) -> int:
    """The step of the newest whole metrics line (a line being written is not yet one)."""
    lines = (run / "metrics.jsonl").read_text().split("\n")[:-1]
    return json.loads(lines[-1])["step"] if lines else 0


@pytest.mark.slow
@needs_proc_locks
def test_two_trains_into_one_named_folder_at_once_one_trains_the_other_names_it(tmp_path, small_corpus):
    args = [str(small_corpus), "--name", "ok", "--steps", "1000000", "--eval-every", "1000000", *TINY]
    procs = [train(tmp_path, *args, log=f"p{i}") for i in range(2)]  # started together, no waiting
    try:
        wait_until(lambda: any(p.poll() is not None for p in procs), [], "one of them stopped", timeout=60)
        loser = next(p for p in procs if p.poll() is not None)
        winner = procs[1 - procs.index(loser)]
        code, out, err = finish(loser, tmp_path, f"p{procs.index(loser)}")
        assert code == 1 and out == ""
        assert busy_line(err) == winner.pid and err.startswith(f"error: {Path('runs') / 'ok'} is in use")
        assert winner.poll() is None and owner_of(tmp_path / "runs" / "ok") == winner.pid
        winner.send_signal(signal.SIGINT)  # it saves last.safetensors and says how to resume
        code, out, err = finish(winner, tmp_path, f"p{procs.index(winner)}")
        assert code == 130 and "interrupted at step" in err
    finally:
        for p in procs:
            p.kill()
    run = tmp_path / "runs" / "ok"
    assert sorted(p.name for p in run.iterdir()) == ["last.safetensors"]
    assert checkpoint.load(run / "last.safetensors").state.step > 0
    assert sorted(p.name for p in (tmp_path / "runs").iterdir()) == ["ok"]


@pytest.mark.slow
def test_two_trains_with_an_automatic_name_at_once_get_a_folder_each(tmp_path, small_corpus):
    args = [str(small_corpus), "--steps", "8", "--eval-every", "4", "--threads", "1", *TINY]
    procs = [train(tmp_path, *args, log=f"p{i}") for i in range(2)]
    results = [finish(p, tmp_path, f"p{i}") for i, p in enumerate(procs)]
    assert [code for code, _, _ in results] == [0, 0], results
    runs = tmp_path / "runs"
    assert sorted(p.name for p in runs.iterdir()) == ["small", "small-2"]
    said = {re.search(r"checkpoint: (\S+)", out).group(1) for _, out, _ in results}
    assert said == {str(Path("runs") / n / "best.safetensors") for n in ("small", "small-2")}
    for name in ("small", "small-2"):
        assert metric_steps(runs / name) == [4, 8, 8]  # one run's history each, not two interleaved


@pytest.mark.slow
@needs_proc_locks
def test_two_resumes_of_one_run_at_once_one_continues_and_no_step_is_logged_twice(tmp_path, small_corpus):
    first = train(tmp_path, str(small_corpus), "--name", "r", "--steps", "4", "--eval-every", "2", *TINY, log="first")
    assert finish(first, tmp_path, "first")[0] == 0
    run = tmp_path / "runs" / "r"
    args = [str(small_corpus), "--resume", str(Path("runs") / "r"), "--steps", "1000000", "--eval-every", "3"]
    procs = [train(tmp_path, *args, log=f"p{i}") for i in range(2)]
    try:
        wait_until(lambda: any(p.poll() is not None for p in procs), [], "one of them stopped", timeout=60)
        loser = next(p for p in procs if p.poll() is not None)
        winner = procs[1 - procs.index(loser)]
        code, out, err = finish(loser, tmp_path, f"p{procs.index(loser)}")
        assert code == 1 and busy_line(err) == winner.pid
        wait_until(lambda: last_logged(run) >= 12, [winner], "the winner logged step 12")
        # a third resume while it trains: refused the same way, and nothing changes under it
        code, _, err = finish(train(tmp_path, *args, log="third"), tmp_path, "third")
        assert code == 1 and busy_line(err) == winner.pid
        winner.send_signal(signal.SIGINT)
        assert finish(winner, tmp_path, f"p{procs.index(winner)}")[0] == 130
    finally:
        for p in procs:
            p.kill()
    steps = metric_steps(run)
    assert steps[:3] == [2, 4, 4] and steps[3:] == list(range(6, 3 * len(steps[3:]) + 4, 3))
    assert checkpoint.load(run / "last.safetensors").state.step >= steps[-1]


@pytest.mark.slow
@needs_proc_locks
def test_a_run_killed_with_sigkill_leaves_no_lock_behind(tmp_path, small_corpus):
    """kill -9 of a run with worker processes (--threads 2): the operating system frees
    its lock, and the workers never held it, so the run resumes at once."""
    run = tmp_path / "runs" / "k"
    args = [str(small_corpus), "--name", "k", "--steps", "1000000", "--eval-every", "3", "--threads", "2", *TINY]
    proc = train(tmp_path, *args, log="killed")
    try:
        wait_until(lambda: (run / "metrics.jsonl").exists() and owner_of(run) == proc.pid, [proc], "it trains")
    finally:
        proc.kill()
    assert proc.wait(timeout=30) == -signal.SIGKILL
    step = checkpoint.load(run / "last.safetensors").state.step
    resumed = train(tmp_path, str(small_corpus), "--resume", str(run), "--steps", str(step + 3), log="resumed")
    code, out, err = finish(resumed, tmp_path, "resumed")
    assert code == 0, err
    assert checkpoint.load(run / "last.safetensors").state.step == step + 3
    # and a new run into a folder whose owner was killed before it wrote anything
    fresh = tmp_path / "runs" / "fresh"
    args = [str(small_corpus), "--name", "fresh", "--steps", "1000000", "--eval-every", "1000000", *TINY]
    proc = train(tmp_path, *args, log="killed2")
    try:
        wait_until(lambda: owner_of(fresh) == proc.pid, [proc], "it holds the folder")
    finally:
        proc.kill()
    proc.wait(timeout=30)
    again = train(tmp_path, str(small_corpus), "--name", "fresh", "--steps", "2", "--eval-every", "2", *TINY, log="a")
    code, out, err = finish(again, tmp_path, "a")
    assert code == 0, err
    assert metric_steps(fresh) == [2, 2]
