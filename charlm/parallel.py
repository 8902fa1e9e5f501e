"""Data parallelism over batch rows, one block of rows per CPU core.

The B rows of a batch are independent streams: they share the weights but
nothing else, forward or backward. So a batch splits into row blocks of sizes
B_1 … B_K that run at the same time on different cores, each in its own model
(same parameter values, own gradients and work buffers), and the gradient of
the batch's mean loss is the weighted sum of the blocks' gradients:

    L = Σ_k (B_k / B) L_k        ∇L = Σ_k (B_k / B) ∇L_k

Block 1 runs in this process; every other block runs in a worker process
(``python -m charlm.worker``) with a one-thread BLAS. Processes, not threads:
a time step is some 25 small NumPy calls, and two threads spend much of it
handing the GIL back and forth (config A, 16 rows per block: two threads ran
at 0.5–0.7 of the speed of one, two processes at the speed of one).

A worker's model reads its parameters from, and writes its gradient into,
files in shared memory (``/dev/shm`` where there is one) that this process maps
as well. Each step copies the parameters there, writes the worker's ids,
targets, carried state and dropout masks into its exchange file, and sends one
JSON line on the worker's stdin; the worker answers with one line (its loss,
or the error it met). Nothing is pickled. The files are unlinked as soon as
the worker has mapped them, so nothing is left behind in ``/dev/shm``.

Results are deterministic for a given number of workers: each block's
arithmetic and the order of the sum are fixed.
"""

from __future__ import annotations

import contextvars
import ctypes
import glob
import json
import math
import mmap
import os
import resource
import subprocess
import sys
import tempfile
import weakref
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from functools import cache
from itertools import pairwise
from pathlib import Path

import numpy as np

from charlm.errors import CharlmError
from charlm.model import CharModel, State

MIN_ROWS_PER_WORKER = 8  # smaller blocks make the per-step matrix products inefficient
ONE_THREAD_ENV = ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS")


@cache
def _blas_thread_limit():
    """OpenBLAS's per-calling-thread limit ``openblas_set_num_threads_local``
    from the library NumPy links, or None when NumPy uses another BLAS."""
    libdir = os.path.join(os.path.dirname(np.__file__), os.pardir, "numpy.libs")
    for path in sorted(glob.glob(os.path.join(libdir, "*openblas*"))):
        try:
            lib = ctypes.CDLL(path)
            fn = lib.openblas_set_num_threads_local
        except (OSError, AttributeError):
            continue
        fn.argtypes = [ctypes.c_int]
        fn.restype = ctypes.c_int
        return fn
    return None


@contextmanager
def blas_threads(n: int):
    """Within the block, this thread's BLAS calls use at most ``n`` threads
    (OpenBLAS only; elsewhere a no-op)."""
    limit = _blas_thread_limit()
    previous = limit(n) if limit is not None else None
    try:
        yield
    finally:
        if limit is not None:
            limit(previous)


def available() -> bool:
    """True when this process's BLAS can be limited to one thread while workers
    run beside it, and a worker process can be started, so parallelism pays off."""
    return _blas_thread_limit() is not None and bool(sys.executable)


def default_workers(batch_size: int) -> int:
    """One worker per core, each with at least MIN_ROWS_PER_WORKER rows; 1 when
    the BLAS threads cannot be controlled."""
    if not available():
        return 1
    return max(1, min(os.cpu_count() or 1, batch_size // MIN_ROWS_PER_WORKER))


def row_blocks(B: int, workers: int) -> list[slice]:
    """Split rows 0..B-1 into ``workers`` contiguous blocks of near-equal size."""
    bounds = np.linspace(0, B, workers + 1).round().astype(int)
    return [slice(int(a), int(b)) for a, b in pairwise(bounds) if b > a]


# --------------------------------------------------------------------------- #
# Shared memory: files in RAM mapped by this process and one worker
# --------------------------------------------------------------------------- #


def shared_folders() -> list[str]:
    """Where shared files may go, best first: /dev/shm (RAM), then the temporary folder."""
    shm = "/dev/shm"
    folders = [shm] if os.path.isdir(shm) and os.access(shm, os.W_OK) else []
    return [*folders, tempfile.gettempdir()]


def shared_file(nbytes: int) -> tuple[str, mmap.mmap]:
    """A new private file of ``nbytes`` bytes, mapped read-write, in the first of
    ``shared_folders`` with room for it. Returns its path, for a worker to map,
    and the mapping. The space is reserved at once, so a full /dev/shm (64 MB in
    a default Docker container) means the next folder, not a crash (SIGBUS) on
    the first write to a page that cannot be had."""
    reasons = []
    for folder in shared_folders():
        try:
            fd, path = tempfile.mkstemp(prefix="charlm-", dir=folder)
        except OSError as e:
            reasons.append(f"{folder}: {e.strerror or e}")
            continue
        try:
            if hasattr(os, "posix_fallocate"):
                os.posix_fallocate(fd, 0, nbytes)
            else:
                os.ftruncate(fd, nbytes)
            return path, mmap.mmap(fd, nbytes)
        except OSError as e:
            os.unlink(path)
            reasons.append(f"{folder}: {e.strerror or e}")
        finally:
            os.close(fd)
    raise CharlmError(
        f"cannot reserve {nbytes / 2**20:.0f} MB of shared memory for the training worker processes "
        f"({'; '.join(reasons)}). Free some space there, or train with --threads 1."
    )


def map_file(path: str) -> mmap.mmap:
    """Map an existing file read-write."""
    fd = os.open(path, os.O_RDWR)
    try:
        return mmap.mmap(fd, 0)
    finally:
        os.close(fd)


def exchange_layout(
    T: int, B: int, layers: int, states: int, H: int, dtype: np.dtype, masks: bool
) -> tuple[dict[str, tuple[int, tuple[int, ...], np.dtype]], int]:
    """Where each array of a worker's exchange file lives: name → (byte offset,
    shape, dtype), and the file's size. The same function on both sides."""
    arrays = {
        "ids": ((T, B), np.dtype(np.int64)),
        "targets": ((T, B), np.dtype(np.int64)),
        "state_in": ((layers, states, B, H), dtype),  # carried state of the block's rows
        "state_out": ((layers, states, B, H), dtype),  # final state
    }
    if masks:
        arrays["masks"] = ((layers, T, B, H), dtype)  # inverted-dropout masks
    layout, offset = {}, 0
    for name, (shape, dt) in arrays.items():
        layout[name] = (offset, shape, dt)
        offset += -(-math.prod(shape) * dt.itemsize // 64) * 64  # 64-byte aligned
    return layout, max(offset, 64)


def exchange_views(buf: mmap.mmap, layout) -> dict[str, np.ndarray]:
    return {
        name: np.frombuffer(buf, dt, math.prod(shape), offset).reshape(shape)
        for name, (offset, shape, dt) in layout.items()
    }


# --------------------------------------------------------------------------- #
# One worker process
# --------------------------------------------------------------------------- #


class _Worker:
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
        self.peak_rss_kb = 0
        self._stderr = tempfile.TemporaryFile()
        env = dict(os.environ)
        env.update(dict.fromkeys(ONE_THREAD_ENV, "1"))
        package_root = str(Path(__file__).resolve().parent.parent)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (package_root, env.get("PYTHONPATH")) if p)
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "charlm.worker"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._stderr,
            env=env,
            start_new_session=True,  # Ctrl-C reaches the main process only, which decides when to stop
        )
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
            cfg = self.model.config
            layout, nbytes = exchange_layout(
                T, B, cfg.layers, len(state[0]), cfg.hidden, self.model.dtype, masks is not None
            )
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

    def receive(self) -> tuple[float, State]:
        """The answer to the step sent last: (loss, final state of the block's rows)."""
        if not self.ready:
            self._read()
            self.ready = True
        reply = self._read()
        for path in self._mapped:  # the worker has mapped them; the mappings outlive the names
            _remove(path)
            self._unlink.remove(path)
        self._mapped.clear()
        out = self._exchange["state_out"]
        new_state = [tuple(out[layer, s].copy() for s in range(out.shape[1])) for layer in range(out.shape[0])]
        return reply["loss"], new_state

    def _send(self, message: dict) -> None:
        try:
            self.proc.stdin.write(json.dumps(message).encode() + b"\n")
            self.proc.stdin.flush()
        except (BrokenPipeError, OSError):
            raise self._died() from None

    def _read(self) -> dict:
        line = self.proc.stdout.readline()
        if not line:
            raise self._died()
        reply = json.loads(line)
        self.peak_rss_kb = max(self.peak_rss_kb, reply.get("peak_rss_kb", 0))
        if reply["ok"]:
            return reply
        if reply["error"] == "FloatingPointError":
            raise FloatingPointError(reply["message"])
        if reply["error"] == "MemoryError":
            raise MemoryError(reply["message"])
        raise CharlmError(f"training worker process {self.index} failed: {reply['error']}: {reply['message']}")

    def _died(self) -> CharlmError:
        try:
            code = self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            code = None
        self._stderr.seek(0)
        lines = self._stderr.read().decode(errors="replace").strip().splitlines()
        how = "not responding" if code is None else f"exit code {code}" if code >= 0 else f"killed by signal {-code}"
        last = f": {lines[-1]}" if lines else ""
        return CharlmError(
            f"training worker process {self.index} ended unexpectedly ({how}){last}. "
            "Try again, or train with --threads 1."
        )


def _stop_process(proc: subprocess.Popen) -> None:
    """Close the worker's stdin (it exits at end of input) and wait; kill it if it does not."""
    try:
        proc.stdin.close()
    except OSError:
        pass
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
    proc.stdout.close()


def _remove(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


def _cleanup(procs: list[subprocess.Popen], paths: list[str]) -> None:
    """Stop the workers and remove the shared files: at close, on collection or at exit."""
    for proc in procs:
        _stop_process(proc)
    for path in paths:
        _remove(path)
    paths.clear()


def _rows_of(rows: slice, state: State, masks: list[np.ndarray] | None) -> tuple[State, list | None]:
    """The carried state (each (B, H)) and dropout masks (each (T, B, H)) of one row block."""
    return [tuple(s[rows] for s in layer) for layer in state], None if masks is None else [m[:, rows] for m in masks]


class DataParallel:
    """``loss_and_grads`` of a CharModel, computed on row blocks in parallel.

    The gradient is written to ``model.grad_flat`` as if the model had run the
    whole batch itself. Worker processes start at the first step that needs
    them and stop at ``close`` (or when this object is collected, or at exit).
    """

    def __init__(self, model: CharModel, workers: int) -> None:
        self.model = model
        self.workers = max(1, workers)
        self._procs: list[_Worker] = []
        self._pool: ThreadPoolExecutor | None = None
        self._params: np.ndarray | None = None  # (P,) shared copy of model.flat
        self._params_path: str | None = None  # its file, until every worker has mapped it
        self._unlink: list[str] = []  # shared files not unlinked yet
        self._finalizer = None

    # -- Adam and other element-wise work: threads are fine there ------------

    def run_all(self, fns) -> None:
        """Call every function in ``fns``, spread over a thread of this process and this one."""
        if self.workers == 1 or len(fns) == 1:
            for fn in fns:
                fn()
            return
        if self._pool is None:
            self._pool = ThreadPoolExecutor(1)
        # in a copy of this thread's context, so that the caller's np.errstate (a context variable) holds there
        futures = [self._pool.submit(contextvars.copy_context().run, fn) for fn in fns[1:]]
        fns[0]()
        for f in futures:
            f.result()

    # -- the gradient ---------------------------------------------------------

    def loss_and_grads(
        self, ids: np.ndarray, targets: np.ndarray, state: State, rng: np.random.Generator | None = None
    ) -> tuple[float, State]:
        T, B = ids.shape
        blocks = row_blocks(B, min(self.workers, B))
        masks = None
        if self.model.config.dropout > 0.0 and rng is not None:
            masks = self.model._draw_masks(rng, T, B)  # (T, B, H) per layer, same draws as serial
        if len(blocks) == 1:
            return self.model.loss_and_grads(ids, targets, state, rng=rng, dropout_masks=masks)
        workers = self._start(len(blocks) - 1)
        np.copyto(self._params, self.model.flat)
        err = np.geterr()  # the caller's floating-point policy holds in the workers too
        try:
            for w, rows in zip(workers, blocks[1:], strict=True):
                w.send_step(ids[:, rows], targets[:, rows], *_rows_of(rows, state, masks), err)
        except CharlmError:  # a worker is gone: stop the others too, a later step starts afresh
            self.close()
            raise
        rows = blocks[0]
        own_state, own_masks = _rows_of(rows, state, masks)
        results: list[tuple[float, State]] = []
        failure: BaseException | None = None
        try:
            with blas_threads(1):
                results.append(
                    self.model.loss_and_grads(
                        np.ascontiguousarray(ids[:, rows]),
                        np.ascontiguousarray(targets[:, rows]),
                        own_state,
                        dropout_masks=own_masks,
                    )
                )
        except BaseException as e:  # still read every worker's answer, so the next step starts in step
            failure = e
        in_step = True  # every worker has answered and waits for the next step
        for w in workers:
            try:
                results.append(w.receive())
            except (FloatingPointError, MemoryError) as e:  # a whole answer, reporting the worker's error
                failure = failure or e
            except BaseException as e:  # a dead worker, or interrupted while waiting for one
                failure = failure or e
                in_step = False
        if failure is not None:
            if not in_step:
                self.close()  # a later step starts afresh
            raise failure
        if self._params_path is not None:  # every worker has mapped it
            _remove(self._params_path)
            self._unlink.remove(self._params_path)
            self._params_path = None
        # ∇L = Σ_k (B_k / B) ∇L_k, accumulated into the main model's gradient.
        weights = [(b.stop - b.start) / B for b in blocks]
        grad = self.model.grad_flat
        grad *= weights[0]
        for w, wk in zip(workers, weights[1:], strict=True):
            w.grad *= wk  # in place: the worker overwrites it at its next step
            grad += w.grad
        loss = sum(wk * r[0] for wk, r in zip(weights, results, strict=True))
        new_state = [
            tuple(np.concatenate([r[1][layer][i] for r in results], axis=0) for i in range(len(state[layer])))
            for layer in range(len(state))
        ]
        return loss, new_state

    def _start(self, n: int) -> list[_Worker]:
        """``n`` running workers: started at the first call (again if ``n`` changed)."""
        if len(self._procs) != n:
            self._stop_workers()
            self._unlink = []
            self._params_path, buf = shared_file(self.model.flat.nbytes)
            self._unlink.append(self._params_path)
            self._params = np.frombuffer(buf, self.model.dtype, self.model.num_params)
            procs: list[subprocess.Popen] = []
            self._finalizer = weakref.finalize(self, _cleanup, procs, self._unlink)
            for k in range(1, n + 1):
                self._procs.append(_Worker(k, self.model, self._params_path, self._unlink))
                procs.append(self._procs[-1].proc)
        return self._procs

    def workers_peak_rss_mb(self) -> float:
        """The worker processes' peak resident memory, summed, in MB (as of their last answers)."""
        return sum(w.peak_rss_kb for w in self._procs) / 1024.0

    def peak_rss_mb(self) -> float:
        """Peak resident memory of this process plus that of each worker, in MB."""
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0 + self.workers_peak_rss_mb()

    def close(self) -> None:
        """Stop the worker processes and the thread; a later step starts them again."""
        self._stop_workers()
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None

    def _stop_workers(self) -> None:
        if self._finalizer is not None:
            self._finalizer()  # stops the processes, removes any shared file not unlinked yet
            self._finalizer = None
        for w in self._procs:
            w._stderr.close()
        self._procs = []
        self._params = None
        self._params_path = None

    def __enter__(self) -> DataParallel:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
