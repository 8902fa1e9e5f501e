"""Adam, clipping by global norm, and the learning-rate schedules (in steps or in time).

Every parameter lives in one flat array (see ``model.CharModel``), so each of
these is a few whole-array NumPy operations per step.
"""

from __future__ import annotations

import math
from itertools import pairwise

import numpy as np


def clip_grad_norm_(grad: np.ndarray, max_norm: float) -> float:
    """Scale ``grad`` in place so that ‖grad‖₂ ≤ max_norm; return the norm before.

    Clipping by the global norm keeps the gradient's direction (the seeds'
    remedy for exploding gradients), unlike element-wise clamping.
    """
    norm = math.sqrt(float(np.dot(grad, grad)))
    if max_norm > 0 and norm > max_norm:
        grad *= max_norm / (norm + 1e-6)
    return norm


class Adam:
    """Adam (Kingma & Ba, 2015):

    m ← β₁ m + (1 − β₁) g          v ← β₂ v + (1 − β₂) g²
    θ ← θ − lr · (m / (1 − β₁ᵗ)) / (√(v / (1 − β₂ᵗ)) + ε)
    """

    def __init__(self, size: int, dtype=np.float32, betas=(0.9, 0.999), eps: float = 1e-8) -> None:
        self.beta1, self.beta2 = betas
        self.eps = eps
        self.m = np.zeros(size, dtype)  # first moment
        self.v = np.zeros(size, dtype)  # second moment
        self.t = 0  # steps taken
        self._tmp = np.empty(size, dtype)
        self._tmp2 = np.empty(size, dtype)

    def step(self, params: np.ndarray, grad: np.ndarray, lr: float, run=None) -> None:
        """One update of the flat ``params`` with gradient ``grad``.

        ``run``, if given, takes a list of functions and calls them, possibly on
        several cores (e.g. ``DataParallel.run_all``). The update is element-wise,
        so splitting the arrays into parts gives exactly the serial result.
        """
        self.t += 1
        bc1 = 1.0 - self.beta1**self.t
        bc2 = 1.0 - self.beta2**self.t
        if run is None:
            self._update(slice(None), params, grad, lr, bc1, bc2)
            return
        n = params.size
        bounds = [round(n * k / 2) for k in range(3)]
        run([lambda s=slice(lo, hi): self._update(s, params, grad, lr, bc1, bc2) for lo, hi in pairwise(bounds)])

    def _update(self, part: slice, params, grad, lr: float, bc1: float, bc2: float) -> None:
        b1, b2 = self.beta1, self.beta2
        m, v, g, tmp, tmp2 = self.m[part], self.v[part], grad[part], self._tmp[part], self._tmp2[part]
        m *= b1
        np.multiply(g, 1.0 - b1, out=tmp)
        m += tmp
        v *= b2
        np.multiply(g, g, out=tmp)
        tmp *= 1.0 - b2
        v += tmp
        np.sqrt(v, out=tmp)
        tmp *= 1.0 / math.sqrt(bc2)
        tmp += self.eps
        np.divide(m, tmp, out=tmp2)
        tmp2 *= lr / bc1
        params[part] -= tmp2


def learning_rate(step: int, total: int, base: float, warmup: int, final_frac: float) -> float:
    """Linear warm-up over ``warmup`` steps, then cosine decay from ``base`` to
    ``final_frac · base`` at step ``total``."""
    if step < warmup:
        return base * (step + 1) / warmup
    if total <= warmup:
        return base
    progress = min(1.0, (step - warmup) / (total - warmup))
    return base * (final_frac + (1.0 - final_frac) * 0.5 * (1.0 + math.cos(math.pi * progress)))


def timed_learning_rate(step: int, progress: float, base: float, warmup: int, final_frac: float) -> float:
    """Under a time budget: the linear warm-up over the first ``warmup`` steps times the
    cosine decay from ``base`` to ``final_frac · base`` over ``progress`` ∈ [0, 1], the
    fraction of the training time used (see ``charlm.budget``), so that whatever the
    speed of the steps the last one has exactly ``final_frac · base``."""
    warm = min(1.0, (step + 1) / warmup) if warmup > 0 else 1.0
    p = min(1.0, max(0.0, progress))
    return base * warm * (final_frac + (1.0 - final_frac) * 0.5 * (1.0 + math.cos(math.pi * p)))
