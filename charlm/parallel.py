"""Data parallelism over batch rows, one block of rows per CPU core.

The B rows of a batch are independent streams: they share the weights but
nothing else, forward or backward. So a batch splits into row blocks of sizes
B_1 … B_K that run at the same time on different cores, each in its own model
replica (same parameter buffer, own gradients and work buffers), and the
gradient of the batch's mean loss is the weighted sum of the blocks' gradients:

    L = Σ_k (B_k / B) L_k        ∇L = Σ_k (B_k / B) ∇L_k

NumPy releases the GIL inside matrix products and element-wise loops, so
plain threads run the blocks in parallel. Each thread limits its BLAS to one
thread while it works, so K blocks use K cores instead of K × (BLAS threads).
This keeps both cores busy in the element-wise gate maths as well, which a
multithreaded BLAS alone cannot do. Results are deterministic for a given
number of workers (each block's arithmetic and the order of the sum are fixed).
"""

from __future__ import annotations

import contextvars
import ctypes
import glob
import os
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from functools import cache
from itertools import pairwise

import numpy as np

from charlm.model import CharModel, State

MIN_ROWS_PER_WORKER = 8  # smaller blocks make the per-step matrix products inefficient


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
    """True when each thread's BLAS can be limited, so data parallelism pays off."""
    return _blas_thread_limit() is not None


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


class DataParallel:
    """``loss_and_grads`` of a CharModel, computed on row blocks in parallel.

    The gradient is written to ``model.grad_flat`` as if the model had run the
    whole batch itself.
    """

    def __init__(self, model: CharModel, workers: int) -> None:
        self.model = model
        self.workers = max(1, workers)
        self.replicas = [model] + [CharModel(model.config, model.dtype, share=model) for _ in range(self.workers - 1)]
        self._pool = ThreadPoolExecutor(self.workers - 1) if self.workers > 1 else None

    def run_all(self, fns) -> None:
        """Call every function in ``fns``, spread over the worker threads and this one."""
        if self._pool is None or len(fns) == 1:
            for fn in fns:
                fn()
            return
        futures = [self._submit(fn) for fn in fns[1:]]
        fns[0]()
        for f in futures:
            f.result()

    def _submit(self, fn, *args):
        """Run fn(*args) on a worker in a copy of this thread's context, so that the
        caller's ``np.errstate`` (a context variable) holds there too."""
        return self._pool.submit(contextvars.copy_context().run, fn, *args)

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None

    def loss_and_grads(
        self, ids: np.ndarray, targets: np.ndarray, state: State, rng: np.random.Generator | None = None
    ) -> tuple[float, State]:
        T, B = ids.shape
        blocks = row_blocks(B, min(self.workers, B))
        masks = None
        if self.model.config.dropout > 0.0 and rng is not None:
            masks = self.model._draw_masks(rng, T, B)  # (T, B, H) per layer, same draws as serial

        def run(k: int) -> tuple[float, State]:
            rows = blocks[k]
            sub_state = [tuple(s[rows] for s in layer) for layer in state]
            sub_masks = None if masks is None else [m[:, rows] for m in masks]
            with blas_threads(1):
                return self.replicas[k].loss_and_grads(
                    np.ascontiguousarray(ids[:, rows]),
                    np.ascontiguousarray(targets[:, rows]),
                    sub_state,
                    dropout_masks=sub_masks,
                )

        if len(blocks) == 1 or self._pool is None:
            return self.model.loss_and_grads(ids, targets, state, rng=rng, dropout_masks=masks)
        futures = [self._submit(run, k) for k in range(1, len(blocks))]
        results = [run(0)] + [f.result() for f in futures]
        # ∇L = Σ_k (B_k / B) ∇L_k, accumulated into the main model's gradient.
        grad = self.model.grad_flat
        grad *= (blocks[0].stop - blocks[0].start) / B
        loss = results[0][0] * (blocks[0].stop - blocks[0].start) / B
        for k in range(1, len(blocks)):
            w = (blocks[k].stop - blocks[k].start) / B
            grad += w * self.replicas[k].grad_flat
            loss += results[k][0] * w
        new_state = [
            tuple(np.concatenate([r[1][layer][i] for r in results], axis=0) for i in range(len(state[layer])))
            for layer in range(len(state))
        ]
        return loss, new_state
