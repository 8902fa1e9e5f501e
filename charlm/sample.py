"""Generating text one character at a time.

At each step the model gives logits u<t> over the vocabulary; the next character
is drawn from ŷ<t> = softmax(u<t> / τ), where the temperature τ sharpens (τ < 1)
or flattens (τ > 1) the distribution, and τ = 0 takes the argmax (greedy). The
drawn character is fed back as x<t+1>.

Sampling runs at batch 1, so it is latency-bound: the first layer's input
projection is a precomputed (V, G·H) table, every array is allocated once, and
the per-character loop calls NumPy a fixed, small number of times.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

from charlm.model import CharModel
from charlm.vocab import Vocab


class Sampler:
    def __init__(self, model: CharModel, vocab: Vocab, seed: int | None = None) -> None:
        self.model = model
        self.vocab = vocab
        self.rng = np.random.default_rng(seed)
        p = model.params
        first = model.rnn[0]
        self.table = p["embedding.weight"] @ first.w_ih.T + first.b_ih + first.b_hh  # (V, G·H)
        self.bias = [cell.b_ih + cell.b_hh for cell in model.rnn]  # (G·H,) per layer
        self.dec_w = np.ascontiguousarray(p["decoder.weight"])  # (V, H)
        self.dec_b = p["decoder.bias"].copy()  # (V,)
        self.pre = [np.empty(cell.gates * cell.hidden_size, model.dtype) for cell in model.rnn]
        self.logits = np.empty(len(vocab), model.dtype)  # (V,)
        self.state = [tuple(s[0] for s in layer) for layer in model.zero_state(1)]  # (H,) vectors

    def feed(self, ids: np.ndarray) -> None:
        """Run the prompt through the model (batched over time), updating the state."""
        if len(ids) == 0:
            return
        x = np.asarray(ids, dtype=np.int64).reshape(-1, 1)  # (T, 1)
        state = [tuple(s[None, :] for s in layer) for layer in self.state]
        _, new_state, _ = self.model._forward(x, state, None)
        self.state = [tuple(s[0].copy() for s in layer) for layer in new_state]
        self._last = int(ids[-1])

    def _step(self, x: int) -> np.ndarray:
        """One character through the stack; returns the top hidden vector (H,)."""
        cells = self.model.rnn
        pre = self.pre[0]
        np.copyto(pre, self.table[x])
        a = cells[0].step(pre, self.state[0])
        for layer in range(1, len(cells)):
            pre = self.pre[layer]
            np.matmul(cells[layer].w_ih, a, out=pre)
            pre += self.bias[layer]
            a = cells[layer].step(pre, self.state[layer])
        return a

    def generate(self, length: int, temperature: float = 1.0, first: int | None = None) -> Iterator[str]:
        """Yield ``length`` characters. ``first`` is the id fed first when no prompt was fed."""
        x = first if first is not None else getattr(self, "_last", None)
        if x is None:
            x = self.vocab.index("\n")
            if x is None:
                x = int(np.argmax(self.dec_b))
        chars = self.vocab.chars
        logits = self.logits
        uniforms = self.rng.random(length)
        for n in range(length):
            a = self._step(x)
            np.matmul(self.dec_w, a, out=logits)
            logits += self.dec_b
            if temperature == 0.0:
                x = int(logits.argmax())
            else:
                logits *= 1.0 / temperature
                logits -= logits.max()
                np.exp(logits, out=logits)
                np.cumsum(logits, out=logits)
                x = int(np.searchsorted(logits, uniforms[n] * logits[-1], side="right"))
                x = min(x, len(chars) - 1)
            yield chars[x]
