"""Data parallelism over batch rows, one block of rows per CPU core.

The B rows of a batch are independent streams: they share the weights but
nothing else, forward or backward. So a batch splits into row blocks of sizes
B_1 … B_K that run at the same time on different cores, each in its own model
(same parameter values, own gradients and work buffers), and the gradient of
the batch's mean loss is the weighted sum of the blocks' gradients:

    L = Σ_k (B_k / B) L_k        ∇L = Σ_k (B_k / B) ∇L_k

Block 1 runs in this process; every other block runs in a worker process
(``python -m charlm.worker``). Processes, not threads: a time step is some 25
small NumPy calls, and two threads spend much of it handing the GIL back and
forth.

Each block's products use one BLAS thread, so the K blocks fill K cores. A
worker process is limited once, for its whole life; this process only while it
computes block 1 (``blas.limit``, which holds process-wide: this thread is then
the process's only BLAS caller). Between steps its BLAS keeps every thread, for
the work the workers leave it alone with: clipping's global norm, evaluation.

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
import json
import os
import resource
import subprocess
import sys
import tempfile
import weakref
from concurrent.futures import ThreadPoolExecutor
from itertools import pairwise
from pathlib import Path

import numpy as np

from charlm import blas
from charlm.errors import CharlmError
from charlm.model import CharModel, State
from charlm.sharedmem import exchange_layout, exchange_views, remove, shared_file

MIN_ROWS_PER_WORKER = 8  # smaller blocks make the per-step matrix products inefficient
# a worker's BLAS starts no thread pool at all (its own limit then covers any library these miss)
ONE_THREAD_ENV = ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS", "BLIS_NUM_THREADS")


def available() -> bool:
    """True when this process's BLAS can be limited to one thread while workers
    run beside it, and a worker process can be started, so parallelism pays off."""
    return blas.controllable() and bool(sys.executable)


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
        self.blas_threads = 0  # the BLAS threads the worker runs with, as its first line says
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

    def receive(self) -> tuple[float, State]:
        """The answer to the step sent last: (loss, final state of the block's rows)."""
        if not self.ready:
            self.blas_threads = self._read()["blas_threads"]
            self.ready = True
        reply = self._read()
        for path in self._mapped:  # the worker has mapped them; the mappings outlive the names
            remove(path)
            self._unlink.remove(path)
        self._mapped.clear()
        out = self._exchange["state_out"]
        new_state = [tuple(out[layer, s].copy() for s in range(out.shape[1])) for layer in range(out.shape[0])]
        return reply["loss"], new_state

    def close_log(self) -> None:
        """Drop the file that holds the worker's stderr (once the worker has stopped)."""
        self._stderr.close()

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
            "Try again, or train in one row block, without worker processes."
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


def _cleanup(procs: list[subprocess.Popen], paths: list[str]) -> None:
    """Stop the workers and remove the shared files: at close, on collection or at exit."""
    for proc in procs:
        _stop_process(proc)
    for path in paths:
        remove(path)
    paths.clear()


def _block(batch: tuple, rows: slice) -> tuple:
    """(ids, targets, carried state, dropout masks) of one row block of the batch:
    ids and targets (T, B), each state (B, H), each mask (T, B, H), all cut to ``rows``."""
    ids, targets, state, masks = batch
    return (
        ids[:, rows],
        targets[:, rows],
        [tuple(s[rows] for s in layer) for layer in state],
        None if masks is None else [m[:, rows] for m in masks],
    )


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
        """``CharModel.loss_and_grads`` of the whole batch. The dropout masks are drawn
        for the whole batch before it is split, so they are the serial run's draws."""
        T, B = ids.shape
        blocks = row_blocks(B, min(self.workers, B))
        masks = None
        if self.model.config.dropout > 0.0 and rng is not None:
            masks = self.model.draw_dropout_masks(rng, T, B)  # (T, B, H) per layer, same draws as serial
        if len(blocks) == 1:
            return self.model.loss_and_grads(ids, targets, state, rng=rng, dropout_masks=masks)
        batch = (ids, targets, state, masks)
        workers = self._start(len(blocks) - 1)
        np.copyto(self._params, self.model.flat)
        err = np.geterr()  # the caller's floating-point policy holds in the workers too
        try:
            for w, rows in zip(workers, blocks[1:], strict=True):
                w.send_step(*_block(batch, rows), err)
        except CharlmError:  # a worker is gone: stop the others too, a later step starts afresh
            self.close()
            raise
        results = self._own_block_then_answers(_block(batch, blocks[0]), workers)
        if self._params_path is not None:  # every worker has mapped it
            remove(self._params_path)
            self._unlink.remove(self._params_path)
            self._params_path = None
        return self._combine(blocks, workers, results)

    def _own_block_then_answers(self, block: tuple, workers: list[_Worker]) -> list[tuple[float, State]]:
        """Compute block 1 here, on one BLAS thread, then read every worker's answer:
        each block's (loss, final state), in block order."""
        ids, targets, state, masks = block
        results: list[tuple[float, State]] = []
        failure: BaseException | None = None
        try:
            with blas.limit(1):
                results.append(
                    self.model.loss_and_grads(
                        np.ascontiguousarray(ids), np.ascontiguousarray(targets), state, dropout_masks=masks
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
        return results

    def _combine(
        self, blocks: list[slice], workers: list[_Worker], results: list[tuple[float, State]]
    ) -> tuple[float, State]:
        """The batch's loss and final state from the blocks'; ∇L = Σ_k (B_k / B) ∇L_k
        accumulated into the main model's gradient."""
        B = blocks[-1].stop
        weights = [(b.stop - b.start) / B for b in blocks]
        grad = self.model.grad_flat
        grad *= weights[0]
        for w, wk in zip(workers, weights[1:], strict=True):
            w.grad *= wk  # in place: the worker overwrites it at its next step
            grad += w.grad
        loss = sum(wk * r[0] for wk, r in zip(weights, results, strict=True))
        layers = results[0][1]
        new_state = [
            tuple(np.concatenate([r[1][layer][i] for r in results], axis=0) for i in range(len(layers[layer])))
            for layer in range(len(layers))
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
            w.close_log()
        self._procs = []
        self._params = None
        self._params_path = None

    def __enter__(self) -> DataParallel:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
