"""The non-recurrent layers, with hand-written backward passes: the embedding's
row gather and its adjoint, and the decoder's softmax cross-entropy.

The recurrent cells live in ``charlm.cells`` (one module per cell).
Shapes: N rows (T·B positions), V vocabulary size, E embedding width.
"""

from __future__ import annotations

import numpy as np


def softmax_cross_entropy_(logits: np.ndarray, targets: np.ndarray) -> float:
    """Mean cross-entropy of softmax(logits) against integer targets, in nats.

    logits: (N, V), overwritten with ∂L/∂logits = (softmax(logits) − onehot(y)) / N.
    targets: (N,) ints.  L = −(1/N) Σ_n log ŷ<n>[y<n>].
    The maximum of each row is subtracted before exp (stable softmax).
    """
    N = logits.shape[0]
    rows = np.arange(N)
    logits -= logits.max(axis=1, keepdims=True)
    picked = logits[rows, targets]  # (N,) shifted logit of the right answer
    np.exp(logits, out=logits)
    total = logits.sum(axis=1)  # (N,)
    loss = float(np.log(total).sum(dtype=np.float64) - picked.sum(dtype=np.float64)) / N
    logits /= total[:, None]  # ŷ
    logits[rows, targets] -= 1.0
    logits /= N
    return loss


def log_softmax_pick(logits: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """−log ŷ[y] for each row, in nats (float64). logits (N, V) is overwritten."""
    N = logits.shape[0]
    logits -= logits.max(axis=1, keepdims=True)
    picked = logits[np.arange(N), targets].astype(np.float64)
    np.exp(logits, out=logits)
    return np.log(logits.sum(axis=1, dtype=np.float64)) - picked


def scatter_rows(ids: np.ndarray, grad_rows: np.ndarray, num_rows: int) -> np.ndarray:
    """Σ of grad_rows into the rows named by ids: the backward of a row gather.

    ids (N,), grad_rows (N, E) → (num_rows, E). Up to N rows (a character
    vocabulary) a one-hot GEMM, much faster than ``np.add.at``; beyond (a word
    vocabulary, V > N) the rows are sorted by id and summed per id with one
    ``np.add.reduceat``, which costs O(N·E) instead of the GEMM's O(V·N·E).
    """
    N = ids.shape[0]
    if num_rows <= N:
        onehot = np.zeros((N, num_rows), grad_rows.dtype)
        onehot[np.arange(N), ids] = 1.0
        return onehot.T @ grad_rows
    out = np.zeros((num_rows, grad_rows.shape[1]), grad_rows.dtype)
    if N == 0:
        return out
    order = np.argsort(ids, kind="stable")
    sorted_ids = ids[order]
    starts = np.flatnonzero(np.r_[True, sorted_ids[1:] != sorted_ids[:-1]])  # first row of each distinct id
    out[sorted_ids[starts]] = np.add.reduceat(grad_rows[order], starts, axis=0)
    return out
