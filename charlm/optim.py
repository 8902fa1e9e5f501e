"""Adam, clipping by global norm, and the learning-rate schedule.

Every parameter lives in one flat array (see ``model.CharModel``), so each of
these is a few whole-array NumPy operations per step.
"""

from __future__ import annotations

import math

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

    def step(self, params: np.ndarray, grad: np.ndarray, lr: float) -> None:
        b1, b2, tmp, tmp2 = self.beta1, self.beta2, self._tmp, self._tmp2
        self.t += 1
        self.m *= b1
        np.multiply(grad, 1.0 - b1, out=tmp)
        self.m += tmp
        self.v *= b2
        np.multiply(grad, grad, out=tmp)
        tmp *= 1.0 - b2
        self.v += tmp
        bc1 = 1.0 - b1**self.t
        bc2 = 1.0 - b2**self.t
        np.sqrt(self.v, out=tmp)
        tmp *= 1.0 / math.sqrt(bc2)
        tmp += self.eps
        np.divide(self.m, tmp, out=tmp2)
        tmp2 *= lr / bc1
        params -= tmp2


def learning_rate(step: int, total: int, base: float, warmup: int, final_frac: float) -> float:
    """Linear warm-up over ``warmup`` steps, then cosine decay from ``base`` to
    ``final_frac · base`` at step ``total``."""
    if step < warmup:
        return base * (step + 1) / warmup
    if total <= warmup:
        return base
    progress = min(1.0, (step - warmup) / (total - warmup))
    return base * (final_frac + (1.0 - final_frac) * 0.5 * (1.0 + math.cos(math.pi * progress)))
