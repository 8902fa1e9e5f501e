"""Data parallelism over batch rows, one block of rows per CPU core.

The B rows of a batch are independent streams: they share the weights but
nothing else, forward or backward. So a batch splits into row blocks of sizes
B_1 … B_K that run at the same time on different cores, each in its own model
(same parameter values, own gradients and work buffers), and the gradient of
the batch's mean loss is the weighted sum of the blocks' gradients:

    L = Σ_k (B_k / B) L_k        ∇L = Σ_k (B_k / B) ∇L_k

Block 1 runs in this process; every other block runs in a worker process
(``python -m charlm.worker``; ``charlm.workerproc`` starts it, and waits for its
answers with a timeout). Processes, not threads: a time step is some 25
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
message through a pipe (``multiprocessing.connection`` framing, a JSON object);
the worker answers with one (its loss, or the error it met). Nothing is pickled. The files are unlinked as soon as
the worker has mapped them, so nothing is left behind in ``/dev/shm``.

Results are deterministic for a given number of workers: each block's
arithmetic and the order of the sum are fixed. Under MPI the same blocks go to
the ranks instead (``charlm.mpistep``), each of which may split its own again here.
"""

from __future__ import annotations

import contextvars
import os
import resource
import subprocess
import sys
import time
import weakref
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from itertools import pairwise

import numpy as np

from charlm import blas
from charlm.errors import CharlmError, WorkerError
from charlm.model import CharModel, State
from charlm.sharedmem import remove, shared_file
from charlm.workerproc import GRACE_S, SLOW_FACTOR, START_WAIT_S, Pipes, Wait, WorkerProcess, min_wait, stop_process

MIN_ROWS_PER_WORKER = 8  # smaller blocks make the per-step matrix products inefficient


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


def _cleanup(procs: list[tuple[subprocess.Popen, Pipes]], paths: list[str]) -> None:
    """Stop the workers and remove the shared files: at close, on collection or at exit."""
    for proc, pipes in procs:
        stop_process(proc, pipes)
    for path in paths:
        remove(path)
    paths.clear()


def row_block(batch: tuple, rows: slice) -> tuple:
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

    A worker that does not answer within SLOW_FACTOR times the slowest row block
    so far (at least ``min_wait()`` seconds), or within GRACE_S once
    ``stop_requested()`` is true, is terminated with the others, and the step
    raises WorkerError (see ``charlm.workerproc``).
    """

    def __init__(self, model: CharModel, workers: int, stop_requested: Callable[[], bool] | None = None) -> None:
        self.model = model
        self.workers = max(1, workers)
        self.stop_requested = stop_requested  # a stop was asked for: wait for answers only GRACE_S more
        self.min_wait = min_wait() if self.workers > 1 else 0.0  # the least seconds to wait for an answer
        self.slowest = 0.0  # seconds of the slowest row block so far, from sending it to its answer
        self._procs: list[WorkerProcess] = []
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
        self,
        ids: np.ndarray,
        targets: np.ndarray,
        state: State,
        rng: np.random.Generator | None = None,
        dropout_masks: list[np.ndarray] | None = None,
    ) -> tuple[float, State]:
        """``CharModel.loss_and_grads`` of the whole batch. The dropout masks are drawn
        for the whole batch before it is split, so they are the serial run's draws; a
        step lost with a worker (WorkerError) leaves ``rng`` as it was. ``dropout_masks``
        (T, B, H) per layer: drawn already (``rng`` is then not used)."""
        T, B = ids.shape
        blocks = row_blocks(B, min(self.workers, B))
        drawn_from = rng.bit_generator.state if rng is not None and len(blocks) > 1 else None
        masks = dropout_masks
        if masks is None and self.model.config.dropout > 0.0 and rng is not None:
            masks = self.model.draw_dropout_masks(rng, T, B)  # (T, B, H) per layer, same draws as serial
        if len(blocks) == 1:
            return self.model.loss_and_grads(ids, targets, state, rng=rng, dropout_masks=masks)
        try:
            return self._parallel_step(blocks, (ids, targets, state, masks))
        except WorkerError:
            if rng is not None:  # the step is lost: the next try draws its dropout masks again
                rng.bit_generator.state = drawn_from
            raise

    def _parallel_step(self, blocks: list[slice], batch: tuple) -> tuple[float, State]:
        """Send each worker its block, compute the first here, and combine the answers."""
        workers = self._start(len(blocks) - 1)
        sent = time.monotonic()
        np.copyto(self._params, self.model.flat)
        err = np.geterr()  # the caller's floating-point policy holds in the workers too
        try:
            for w, rows in zip(workers, blocks[1:], strict=True):
                w.send_step(*row_block(batch, rows), err)
        except CharlmError:  # a worker is gone: stop the others too, a later step starts afresh
            self.close()
            raise
        results = self._own_block_then_answers(row_block(batch, blocks[0]), workers, sent)
        if self._params_path is not None:  # every worker has mapped it
            remove(self._params_path)
            self._unlink.remove(self._params_path)
            self._params_path = None
        return self._combine(blocks, workers, results)

    def _own_block_then_answers(
        self, block: tuple, workers: list[WorkerProcess], sent: float
    ) -> list[tuple[float, State]]:
        """Compute block 1 here, on one BLAS thread, then read every worker's answer:
        each block's (loss, final state), in block order. ``sent``: when the step began
        (``time.monotonic()``), from which the blocks are timed."""
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
        self.slowest = max(self.slowest, time.monotonic() - sent)
        wait = self._wait(workers)
        for k, w in enumerate(workers):
            starting = not w.ready  # a first answer includes the start-up: not a measure of a block
            try:
                results.append(w.receive(wait))
            except (FloatingPointError, MemoryError) as e:  # a whole answer, reporting the worker's error
                failure = failure or e
            except BaseException as e:  # a dead or silent worker, or interrupted while waiting for one
                for late in workers[k:]:  # what they are computing is lost: end them now
                    late.terminate()
                self.close()  # a later step starts afresh
                raise failure or e from None
            if not starting:
                self.slowest = max(self.slowest, time.monotonic() - sent)
        if failure is not None:
            raise failure
        return results

    def _wait(self, workers: list[WorkerProcess]) -> Wait:
        """How long this step's answers may take: SLOW_FACTOR slowest blocks, at least
        ``min_wait`` seconds (START_WAIT_S more while a worker starts), or GRACE_S once a
        stop is requested (longer if a block takes longer)."""
        timeout = max(self.min_wait, SLOW_FACTOR * self.slowest)
        if not all(w.ready for w in workers):
            timeout += START_WAIT_S
        return Wait(timeout, max(GRACE_S, 2.0 * self.slowest), self.stop_requested)

    def _combine(
        self, blocks: list[slice], workers: list[WorkerProcess], results: list[tuple[float, State]]
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

    def _start(self, n: int) -> list[WorkerProcess]:
        """``n`` running workers: started at the first call (again if ``n`` changed)."""
        if len(self._procs) != n:
            self._stop_workers()
            self._unlink = []
            self._params_path, buf = shared_file(self.model.flat.nbytes)
            self._unlink.append(self._params_path)
            self._params = np.frombuffer(buf, self.model.dtype, self.model.num_params)
            procs: list[tuple[subprocess.Popen, Pipes]] = []
            self._finalizer = weakref.finalize(self, _cleanup, procs, self._unlink)
            for k in range(1, n + 1):
                self._procs.append(WorkerProcess(k, self.model, self._params_path, self._unlink))
                procs.append((self._procs[-1].proc, self._procs[-1].pipes))
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
