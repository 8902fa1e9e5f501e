"""A training worker process as the main process sees it: started, sent a step,
its answer awaited for a limited time, stopped.

The two talk through a pair of pipes, framed by the standard library's
``multiprocessing.connection.Connection`` (length-prefixed messages, each one
JSON object: nothing is pickled). The worker (``python -m charlm.worker``, see
``charlm.worker``) answers each step with one message. The main process polls
for it in slices of POLL_S, so that a worker that never answers (a stopped or
hung process) neither hangs the run nor deafens it to Ctrl-C: a ``Wait`` ends
after its timeout, or GRACE_S after a stop is requested, and the worker is then
reported (``WorkerError``) and terminated.

How long a step may take is measured, not guessed: the timeout is SLOW_FACTOR
times the slowest row block so far (this process's own included, so it holds
from the first step), and never less than ``min_wait()`` seconds (MIN_WAIT_S,
or ``$CHARLM_WORKER_TIMEOUT``). A worker's first answer also covers its
start-up (START_WAIT_S more).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from multiprocessing.connection import Connection
from pathlib import Path

import numpy as np

from charlm.errors import CharlmError, UsageError, WorkerError
from charlm.model import CharModel, State
from charlm.sharedmem import exchange_layout, exchange_views, remove, shared_file

# a worker's BLAS starts no thread pool at all (its own limit then covers any library these miss)
ONE_THREAD_ENV = ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS", "BLIS_NUM_THREADS")
TIMEOUT_ENV = "CHARLM_WORKER_TIMEOUT"  # environment variable: the least seconds to wait for an answer
MIN_WAIT_S = 30.0  # the least wait for an answer: far beyond a scheduler's or a page fault's delay
SLOW_FACTOR = 20.0  # the wait for an answer, in slowest row blocks so far
START_WAIT_S = 60.0  # more for a worker's first answer: starting Python and importing NumPy
GRACE_S = 2.0  # once a stop is requested, at least this long for answers (a step's work is not thrown away lightly)
POLL_S = 0.1  # how often a wait looks whether a stop was requested
KILL_AFTER_S = 1.0  # SIGTERM, then SIGKILL if the worker has not ended this much later

# /proc/PID/stat states that explain a missing answer
STATES = {
    "T": "it is stopped (SIGSTOP or SIGTSTP)",
    "t": "it is stopped by a debugger",
    "D": "it is blocked in the kernel (waiting for the disk or for memory)",
    "R": "it is still computing",
    "S": "it is asleep (waiting for its input or a lock)",
    "Z": "it has ended",
}


def min_wait() -> float:
    """The least seconds to wait for a worker's answer: ``$CHARLM_WORKER_TIMEOUT`` if set, else MIN_WAIT_S."""
    given = os.environ.get(TIMEOUT_ENV, "").strip()
    if not given:
        return MIN_WAIT_S
    try:
        seconds = float(given)
    except ValueError:
        seconds = float("nan")
    if not 0.0 < seconds < float("inf"):
        raise UsageError(
            f"{TIMEOUT_ENV}={given!r}: give the least number of seconds to wait for a training worker "
            f"process's answer, a number greater than 0 (or unset it for {MIN_WAIT_S:g})."
        )
    return seconds


def state_letter(pid: int) -> str:
    """A process's state in /proc/PID/stat (R, S, D, T, t, Z …; '' where that cannot be read)."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as f:
            return f.read().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return ""


def process_state(pid: int) -> str:
    """Why a process may not answer, from its state in /proc ('' where that cannot be read)."""
    return STATES.get(state_letter(pid), "")


class Wait:
    """How long the main process waits for its workers' answers to one step:
    ``timeout`` seconds from now, or ``grace`` seconds once ``stop_requested()``
    turns true, whichever ends first."""

    def __init__(self, timeout: float, grace: float, stop_requested: Callable[[], bool] | None = None) -> None:
        self.start = time.monotonic()
        self.timeout = timeout
        self.grace = grace
        self.stop_requested = stop_requested
        self.stopped_at: float | None = None  # when a stop request was first seen

    def left(self) -> float:
        """Seconds left to wait (≤ 0: give up)."""
        now = time.monotonic()
        if self.stopped_at is None and self.stop_requested is not None and self.stop_requested():
            self.stopped_at = now
        end = self.start + self.timeout
        if self.stopped_at is not None:
            end = min(end, self.stopped_at + self.grace)
        return end - now


class WorkerProcess:
    """A ``python -m charlm.worker`` process computing one row block per step."""

    def __init__(self, index: int, model: CharModel, params_path: str, unlink: list[str]) -> None:
        self.index = index
        self.model = model
        grad_path, grad_map = shared_file(model.grad_flat.nbytes)
        unlink.append(grad_path)
        self.grad = np.frombuffer(grad_map, model.dtype, model.num_params)  # (P,) the block's ∂L_k/∂flat
        self._unlink = unlink  # files to remove (shared with DataParallel's clean-up)
        self._mapped = [grad_path]  # files the worker maps before its next answer
        self._exchange_key = None
        self._exchange: dict[str, np.ndarray] = {}
        self.ready = False  # the worker's first line (after init) has been read
        self.blas_threads = 0  # the BLAS threads the worker runs with, as its first line says
        self.peak_rss_kb = 0
        self._stderr = tempfile.TemporaryFile()
        env = dict(os.environ)
        env.update(dict.fromkeys(ONE_THREAD_ENV, "1"))
        package_root = str(Path(__file__).resolve().parent.parent)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (package_root, env.get("PYTHONPATH")) if p)
        to_worker, from_worker = os.pipe(), os.pipe()  # (read end, write end) each
        try:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "charlm.worker"],
                stdin=to_worker[0],
                stdout=from_worker[1],
                stderr=self._stderr,
                env=env,
                start_new_session=True,  # Ctrl-C reaches the main process only, which decides when to stop
            )
        except BaseException:
            os.close(to_worker[1])
            os.close(from_worker[0])
            raise
        finally:  # the worker's ends: its own now
            os.close(to_worker[0])
            os.close(from_worker[1])
        self.pipes = Pipes(Connection(to_worker[1], readable=False), Connection(from_worker[0], writable=False))
        self._send(
            {
                "op": "init",
                "config": json.loads(model.config.to_json()),
                "dtype": model.dtype.str,
                "params": params_path,
                "grad": grad_path,
            }
        )

    def send_step(self, ids, targets, state: State, masks, err: dict) -> None:
        T, B = ids.shape
        key = (T, B, masks is not None)
        if key != self._exchange_key:
            layout, nbytes = exchange_layout(self.model, T, B, masks is not None)
            path, buf = shared_file(nbytes)
            self._unlink.append(path)
            self._mapped.append(path)
            self._exchange = exchange_views(buf, layout)
            self._exchange_key = key
            self._exchange_path = path
        x = self._exchange
        x["ids"][...] = ids
        x["targets"][...] = targets
        for layer, arrays in enumerate(state):
            for s, a in enumerate(arrays):
                x["state_in"][layer, s] = a
        if masks is not None:
            for layer, m in enumerate(masks):
                x["masks"][layer] = m
        self._send(
            {"op": "step", "exchange": self._exchange_path, "T": T, "B": B, "masks": masks is not None, "err": err}
        )

    def receive(self, wait: Wait) -> tuple[float, State]:
        """The answer to the step sent last: (loss, final state of the block's rows).
        Raises WorkerError if the worker ended, or did not answer within ``wait``."""
        if not self.ready:
            self.blas_threads = self._read(wait)["blas_threads"]
            self.ready = True
        reply = self._read(wait)
        for path in self._mapped:  # the worker has mapped them; the mappings outlive the names
            remove(path)
            self._unlink.remove(path)
        self._mapped.clear()
        out = self._exchange["state_out"]
        new_state = [tuple(out[layer, s].copy() for s in range(out.shape[1])) for layer in range(out.shape[0])]
        return reply["loss"], new_state

    def terminate(self) -> None:
        """End the process now (see ``terminate``)."""
        terminate(self.proc)

    def close_log(self) -> None:
        """Drop the file that holds the worker's stderr (once the worker has stopped)."""
        self._stderr.close()

    def _send(self, message: dict) -> None:
        try:
            self.pipes.to_worker.send_bytes(json.dumps(message).encode())
        except OSError:  # BrokenPipeError: the worker has ended
            raise self._died() from None

    def _read(self, wait: Wait) -> dict:
        reply = json.loads(self._receive(wait))
        self.peak_rss_kb = max(self.peak_rss_kb, reply.get("peak_rss_kb", 0))
        if reply["ok"]:
            return reply
        if reply["error"] == "FloatingPointError":
            raise FloatingPointError(reply["message"])
        if reply["error"] == "MemoryError":
            raise MemoryError(reply["message"])
        raise CharlmError(f"training worker process {self.index} failed: {reply['error']}: {reply['message']}")

    def _receive(self, wait: Wait) -> bytes:
        """The worker's next message, polled for in slices of POLL_S until ``wait`` ends."""
        pipe = self.pipes.from_worker
        try:
            while not pipe.poll(min(max(wait.left(), 0.0), POLL_S)):
                if wait.left() <= 0:
                    raise self._stalled(wait)
            return pipe.recv_bytes()
        except (EOFError, OSError):  # the worker ended: its end of the pipe closed
            raise self._died() from None

    def _stalled(self, wait: Wait) -> WorkerError:
        why = process_state(self.proc.pid)
        if wait.stopped_at is not None:
            late = f"within {wait.grace:.3g} s of the request to stop"
        else:
            late = f"within {wait.timeout:.3g} s"
        return WorkerError(
            f"training worker process {self.index} (pid {self.proc.pid}) did not answer {late}"
            + (f"; {why}" if why else ""),
            index=self.index,
            pid=self.proc.pid,
        )

    def _died(self) -> WorkerError:
        try:
            code = self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            code = None
        self._stderr.seek(0)
        lines = self._stderr.read().decode(errors="replace").strip().splitlines()
        how = "not responding" if code is None else f"exit code {code}" if code >= 0 else f"killed by signal {-code}"
        last = f": {lines[-1]}" if lines else ""
        return WorkerError(
            f"training worker process {self.index} (pid {self.proc.pid}) ended unexpectedly ({how}){last}. "
            "Try again, or train in one row block, without worker processes.",
            index=self.index,
            pid=self.proc.pid,
        )


class Pipes:
    """The main process's ends of the two pipes to a worker."""

    def __init__(self, to_worker: Connection, from_worker: Connection) -> None:
        self.to_worker = to_worker
        self.from_worker = from_worker

    def close(self, which: str = "both") -> None:
        for name in ("to_worker", "from_worker") if which == "both" else (which,):
            conn = getattr(self, name)
            if not conn.closed:
                conn.close()


def stop_process(proc: subprocess.Popen, pipes: Pipes) -> None:
    """Close the pipe to the worker (it exits at the end of its input) and wait; terminate
    it if it has not ended 10 s later, or as soon as it is stopped (it cannot read that end then)."""
    pipes.close("to_worker")
    deadline = time.monotonic() + 10.0
    while proc.poll() is None:
        if state_letter(proc.pid) in ("T", "t") or time.monotonic() > deadline:
            terminate(proc)
            break
        try:
            proc.wait(timeout=POLL_S / 2)
        except subprocess.TimeoutExpired:
            pass
    pipes.close()


def terminate(proc: subprocess.Popen) -> None:
    """End a process now: SIGTERM, with SIGCONT so that a stopped process acts on it,
    then SIGKILL if it has not ended KILL_AFTER_S later."""
    if proc.poll() is not None:
        return
    for sig in (signal.SIGTERM, signal.SIGCONT):
        try:
            proc.send_signal(sig)
        except OSError:
            pass
    try:
        proc.wait(timeout=KILL_AFTER_S)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
