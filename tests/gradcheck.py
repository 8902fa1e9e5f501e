"""Central finite differences in float64, cs231n style."""

from __future__ import annotations

import numpy as np


def rel_error(a: np.ndarray, b: np.ndarray) -> float:
    """max|a − b| / max(1e-8, max(|a| + |b|))."""
    return float(np.max(np.abs(a - b)) / max(1e-8, float(np.max(np.abs(a) + np.abs(b)))))


def numeric_grad(f, x: np.ndarray, indices=None, eps: float = 1e-6) -> np.ndarray:
    """∂f/∂x by central differences at the given flat indices (all by default).

    f() is called with x perturbed in place and must return a float.
    """
    flat = x.reshape(-1)
    idx = range(flat.size) if indices is None else indices
    out = np.zeros(flat.size)
    for i in idx:
        old = flat[i]
        flat[i] = old + eps
        fp = f()
        flat[i] = old - eps
        fm = f()
        flat[i] = old
        out[i] = (fp - fm) / (2 * eps)
    return out.reshape(x.shape)


def sample_indices(size: int, k: int, rng: np.random.Generator) -> np.ndarray:
    return np.arange(size) if size <= k else rng.choice(size, k, replace=False)
