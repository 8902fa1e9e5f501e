"""Forward-only passes of a CharModel, for scoring: weights prepared once, nothing kept for backward.

For a (T, B) chunk of ids x and targets y, with s each layer's gate scale (see charlm.cells):

    pre[1]<t>  = s ∗ (W_ih[1] Emb[x<t>] + b[1])      a row of table = s ∗ (Emb W_ih[1]ᵀ + b[1]) (V, G·H)
    a[l]<t>    = cell(pre[l]<t>, state[l]<t-1>)       (B, H), the cell's time loop
    pre[l+1]   = s ∗ (a[l] W_ih[l+1]ᵀ + b[l+1])        one GEMM over the chunk's T·B positions
    −log ŷ<t>[y<t>] = log Σ_v exp z<t>[v] − z<t>[y<t>],  z = W_dec a[N] + b_dec   one GEMM over T·B

The scaled weights (the table, s ∗ W_ih, s ∗ W_hhᵀ) are made once per Scorer instead
of once per chunk, so a Scorer is a snapshot of the model's weights: make a new one
after they change. A chunk needs one (T, B, G·H) and one (T, B, H) array whatever
the depth (each layer's pre-activations overwrite the last's, its outputs the last's
outputs), and the logits (T·B, V).
"""

from __future__ import annotations

import numpy as np

from charlm.cells import CELLS
from charlm.cells.base import Workspace
from charlm.config import ModelConfig
from charlm.layers import log_softmax_pick
from charlm.model import CharModel, State


def prepared_floats(c: ModelConfig) -> int:
    """Floats of a Scorer's prepared weights: the table (V, G·H), and per layer s ∗ W_ih
    (G·H, D), s ∗ b (G·H,) and the loop's scaled W_hhᵀ (H, G·H) (and the LSTM's numerator)."""
    GH, H = CELLS[c.cell].gates * c.hidden, c.hidden
    per_layer = sum(GH * (c.embed if layer == 0 else H) + GH + H * GH for layer in range(c.layers))
    return c.vocab_size * GH + per_layer + (c.layers * GH if c.cell == "lstm" else 0)


def chunk_floats(c: ModelConfig, T: int, B: int) -> int:
    """Floats of a (T, B) chunk's arrays: the pre-activations (T, B, G·H), the outputs
    (T, B, H) and the logits (T·B, V)."""
    return T * B * (CELLS[c.cell].gates * c.hidden + c.hidden + c.vocab_size)


class Scorer:
    """−log p of a chunk's targets, or only its final state, from forward-only passes."""

    def __init__(self, model: CharModel) -> None:
        self.model = model
        self.prepared = [layer.prepare() for layer in model.rnn]
        p = model.params
        self.table = model.input_table() * model.rnn[0]._gate_scale()  # s ∗ (Emb W_ihᵀ + b) (V, G·H)
        self.w_dec, self.b_dec = p["decoder.weight"], p["decoder.bias"]  # (V, H), (V,)
        self._workspace = Workspace(limit=1)  # a shorter last chunk replaces the arrays

    def nll(self, ids: np.ndarray, targets: np.ndarray, state: State) -> tuple[np.ndarray, State]:
        """−log p(target) in nats for each position, (T, B) float64; and the final state.
        ids, targets: (T, B) ints; state: the carried state (left as it is)."""
        return self._run(ids, targets, state)

    def advance(self, ids: np.ndarray, state: State) -> State:
        """The final state after reading a (T, B) chunk of ids; nothing is scored."""
        return self._run(ids, None, state)[1]

    def _run(self, ids, targets, state) -> tuple[np.ndarray | None, State]:
        T, B = ids.shape
        model = self.model
        H, GH = model.config.hidden, self.table.shape[1]
        ws = self._workspace.get((T, B), lambda: _arrays(T, B, GH, H, self.table.shape[0], model.dtype))
        pre, out = ws["pre"], ws["out"]  # (T, B, G·H), (T, B, H)
        if ids.size and (ids.min() < 0 or ids.max() >= self.table.shape[0]):
            raise IndexError(f"symbol ids must lie in [0, {self.table.shape[0]}) for this model")
        np.take(self.table, ids, axis=0, out=pre, mode="clip")  # ids checked above
        new_state = []
        for layer, weights in enumerate(self.prepared):
            if layer > 0:  # the projection of the last layer's outputs, over all T·B positions
                np.matmul(out.reshape(T * B, H), weights["w_ih"].T, out=pre.reshape(T * B, GH))
                pre += weights["b"]
            new_state.append(model.rnn[layer].infer(pre, state[layer], weights, out))
        if targets is None:
            return None, new_state
        logits = np.matmul(out.reshape(T * B, H), self.w_dec.T, out=ws["logits"])  # (T·B, V)
        logits += self.b_dec
        return log_softmax_pick(logits, targets.reshape(-1)).reshape(T, B), new_state


def _arrays(T: int, B: int, GH: int, H: int, V: int, dtype) -> dict[str, np.ndarray]:
    return {
        "pre": np.empty((T, B, GH), dtype),  # a layer's scaled pre-activations, then its gate values
        "out": np.empty((T, B, H), dtype),  # a layer's outputs a<1..T>
        "logits": np.empty((T * B, V), dtype),
    }
