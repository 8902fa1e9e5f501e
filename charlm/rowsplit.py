"""A scoring's rows split over processes: this one and forks of it, one block of rows each.

The B rows ``charlm.evaluate`` scores a text in are independent streams, so
blocks of them can run at the same time on different cores, and the text's
total −log p is the sum of the blocks' totals. At scoring sizes a block of B/2
rows on one BLAS thread in each of two processes beats B rows on two BLAS
threads in one (the products of a time step are too small to share well).

Blocks 2 … K run in children made by ``os.fork``: they see the model and the ids
as they are here (copy-on-write, nothing is sent), set their BLAS to its share
of the cores, score their rows and write one line back through a pipe, their
(total, count) or the error they met, and leave with ``os._exit`` (no clean-up
handler of this process runs twice). A child dies with this process (Linux's
parent-death signal) and ignores Ctrl-C, which reaches this process: on any
error or interrupt here, the children are killed and reaped before it goes on.

Only on Linux, with a BLAS whose threads can be set, and two cores or more;
elsewhere everything runs here, with the same result to float round-off (a
block's products have fewer rows, which can change the last bits of a sum).
"""

from __future__ import annotations

import ctypes
import json
import os
import signal
import sys
from collections.abc import Callable
from itertools import pairwise

import numpy as np

from charlm import blas
from charlm.errors import CharlmError

MIN_ROWS = 16  # rows per process: fewer make the per-step products inefficient
MIN_TARGETS = 2**15  # shorter texts score in a fraction of a second: not worth a fork
PR_SET_PDEATHSIG = 1  # prctl option: the signal a child gets when its parent dies

BlockScore = Callable[[slice], tuple[float, int]]  # rows → (total −log p in nats, targets scored)


def processes_for(n_targets: int, rows: int) -> int:
    """How many processes score ``rows`` rows of ``n_targets`` targets in all: one per
    core, each with at least MIN_ROWS rows; 1 where forking is not available or the
    text is short."""
    if n_targets < MIN_TARGETS or not available():
        return 1
    return max(1, min(_cores(), rows // MIN_ROWS))


def available() -> bool:
    """True on Linux with a BLAS whose thread count can be set and two cores or more."""
    return sys.platform.startswith("linux") and hasattr(os, "fork") and _cores() >= 2 and blas.controllable()


def _cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def blocks(rows: int, processes: int) -> list[slice]:
    """Rows 0..rows-1 in ``processes`` contiguous blocks of near-equal size."""
    bounds = np.linspace(0, rows, processes + 1).round().astype(int)
    return [slice(int(a), int(b)) for a, b in pairwise(bounds) if b > a]


def score_blocks(score: BlockScore, parts: list[slice]) -> tuple[float, int]:
    """Σ of ``score(block)`` over the blocks: the first here, each other in a fork of
    this process; every process's BLAS gets cores ÷ blocks threads."""
    threads = max(1, _cores() // len(parts))
    children: list[tuple[int, int]] = []  # (pid, read end of its pipe), not yet answered
    try:
        for part in parts[1:]:
            children.append(_fork(score, part, threads))
        with blas.limit(threads):
            total, count = score(parts[0])
        while children:
            t, c = _answer(*children.pop(0))
            total, count = total + t, count + c
        return total, count
    finally:
        for pid, fd in children:  # an error or an interrupt here: the children go too
            os.close(fd)
            _kill(pid)


def _fork(score: BlockScore, part: slice, threads: int) -> tuple[int, int]:
    """Start a child that scores ``part`` and writes its answer to a pipe; (pid, read end)."""
    parent = os.getpid()
    read, write = os.pipe()
    pid = os.fork()
    if pid:
        os.close(write)
        return pid, read
    code = 1
    try:  # the child: never returns to the caller
        os.close(read)
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle
        _die_with_parent(parent)
        blas.limit_process(threads)
        total, count = score(part)
        answer, code = {"total": total, "count": count}, 0
    except BaseException as e:
        answer = {"error": str(e) or type(e).__name__}
    finally:
        try:
            os.write(write, (json.dumps(answer) + "\n").encode())
        finally:
            os._exit(code)


def _die_with_parent(parent: int) -> None:
    """Have the kernel kill this child when its parent dies (it may have died already)."""
    try:
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    except (OSError, AttributeError):
        pass
    if os.getppid() != parent:
        os._exit(1)


def _answer(pid: int, fd: int) -> tuple[float, int]:
    """The child's (total, count), once it has written it and ended; closes ``fd``."""
    try:
        with os.fdopen(fd, "rb") as pipe:
            line = pipe.read()
        _, status = os.waitpid(pid, 0)
    except BaseException:
        _kill(pid)
        raise
    try:
        answer = json.loads(line)
    except ValueError:
        answer = {"error": f"it ended without an answer (wait status {status})"}
    if "error" in answer:
        raise CharlmError(f"a scoring process failed: {answer['error']}")
    return float(answer["total"]), int(answer["count"])


def _kill(pid: int) -> None:
    """Kill a child and reap it (nothing when it has been reaped already)."""
    try:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
    except (ProcessLookupError, ChildProcessError):
        pass
