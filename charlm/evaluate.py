"""How well a model predicts text: cross-entropy, bits per character, perplexity.

The text is scored in B parallel rows with the hidden state carried along each
row, T steps at a time, so a multi-megabyte file is a few hundred batched
forward passes. Every character after the first is predicted exactly once:
row b predicts targets [bL, (b+1)L) (L = ⌊(N−1)/B⌋), and the last few that do
not fill a row are predicted by continuing from the end of the last row.
Training's validation loss is this same computation on the held-out text.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from charlm.model import CharModel

EVAL_BATCH = 64  # rows scored in parallel
EVAL_SEQ = 128  # steps per forward pass


@dataclass(frozen=True)
class Score:
    nats: float  # total −log p, in nats
    chars: int  # characters scored
    unknown: int = 0  # characters dropped because the model has never seen them

    @property
    def nats_per_char(self) -> float:
        return self.nats / self.chars if self.chars else float("nan")

    @property
    def bits_per_char(self) -> float:
        return self.nats_per_char / math.log(2)

    @property
    def perplexity(self) -> float:
        return math.exp(self.nats_per_char)


def surprisal_chunks(
    model: CharModel, ids: np.ndarray, batch_size: int = EVAL_BATCH, seq_len: int = EVAL_SEQ
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Yield (target positions, −log p in nats) for every target ids[1:], chunk by chunk.

    A target position k means "ids[k+1] predicted from ids[..k]"; positions come
    in a (T', B) grid per chunk, matching the nats array.
    """
    n_targets = len(ids) - 1
    if n_targets <= 0:
        return
    B = max(1, min(batch_size, n_targets // seq_len or 1))
    L = n_targets // B
    rows_x = ids[: B * L].reshape(B, L)
    rows_y = ids[1 : B * L + 1].reshape(B, L)
    state = model.zero_state(B)
    starts = np.arange(B)[None, :] * L  # (1, B)
    for s in range(0, L, seq_len):
        e = min(L, s + seq_len)
        x = np.ascontiguousarray(rows_x[:, s:e].T, dtype=np.int64)  # (T', B)
        y = np.ascontiguousarray(rows_y[:, s:e].T, dtype=np.int64)
        nats, state = model.nll(x, y, state)
        yield starts + np.arange(s, e)[:, None], nats
    rest = n_targets - B * L
    if rest:
        tail_state = [tuple(part[B - 1 : B].copy() for part in layer) for layer in state]
        x = ids[B * L : B * L + rest].astype(np.int64).reshape(rest, 1)
        y = ids[B * L + 1 : B * L + rest + 1].astype(np.int64).reshape(rest, 1)
        nats, _ = model.nll(x, y, tail_state)
        yield np.arange(B * L, B * L + rest)[:, None], nats


def score_ids(model: CharModel, ids: np.ndarray, unknown: int = 0, **kw) -> Score:
    total, count = 0.0, 0
    for _, nats in surprisal_chunks(model, ids, **kw):
        total += float(nats.sum())
        count += nats.size
    return Score(total, count, unknown)


def surprisal(model: CharModel, ids: np.ndarray, **kw) -> np.ndarray:
    """−log p(ids[k+1] | ids[..k]) for k = 0..N−2, in nats, (N−1,) float64."""
    out = np.zeros(max(0, len(ids) - 1))
    for pos, nats in surprisal_chunks(model, ids, **kw):
        out[pos.ravel()] = nats.ravel()
    return out
