"""Central finite differences in float64, cs231n style; random recurrent layers and
the reference step functions of charlm.cells run over a whole chunk."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from charlm.cells import (
    GRU,
    LSTM,
    RNN,
    Recurrent,
    gru,
    gru_step_backward,
    gru_step_forward,
    lstm,
    lstm_step_backward,
    lstm_step_forward,
    notes_weights,
    rnn,
    rnn_step_backward,
    rnn_step_forward,
)


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


# --------------------------------------------------------------------------- #
# Recurrent cells: a random fused layer, and the notes' reference run over a chunk
# --------------------------------------------------------------------------- #


def make_layer(cls: type[Recurrent], D: int, H: int, rng: np.random.Generator, dtype=np.float64) -> Recurrent:
    """A fused layer with U(−0.5, 0.5) weights and biases (all nonzero) and zeroed gradients."""
    G = cls.gates * H
    w_ih = rng.uniform(-0.5, 0.5, (G, D)).astype(dtype)
    w_hh = rng.uniform(-0.5, 0.5, (G, H)).astype(dtype)
    b_ih = rng.uniform(-0.5, 0.5, G).astype(dtype)
    b_hh = rng.uniform(-0.5, 0.5, G).astype(dtype)
    grads = [np.zeros_like(w) for w in (w_ih, w_hh, b_ih, b_hh)]
    return cls(D, H, w_ih, w_hh, b_ih, b_hh, *grads)


@dataclass(frozen=True)
class Reference:
    """A cell's reference step pair. ``forward(x, *state, weights) → (*state, cache)``,
    ``backward(*∂L/∂state, cache) → grads``; the first state part is the output a<t>."""

    forward: Callable
    backward: Callable
    gates: tuple[str, ...]  # notes' names of the PyTorch blocks
    grad_prev: tuple[str, ...]  # keys of ∂L/∂(previous state) in the backward's grads


REFERENCE = {
    LSTM: Reference(lstm_step_forward, lstm_step_backward, lstm.GATES, ("da_prev", "dc_prev")),
    GRU: Reference(gru_step_forward, gru_step_backward, gru.GATES, ("dc_prev",)),
    RNN: Reference(rnn_step_forward, rnn_step_backward, rnn.GATES, ("da_prev",)),
}


def reference_forward(layer: Recurrent, x: np.ndarray, state: tuple) -> tuple[np.ndarray, tuple, list]:
    """The reference step function in a loop over x (T, B, D), with the layer's
    weights. Returns the outputs a<1..T> (T, B, H), the final state and the caches."""
    ref = REFERENCE[type(layer)]
    weights = notes_weights(layer.w_ih, layer.w_hh, layer.b_ih, layer.b_hh, ref.gates)
    outs, caches = [], []
    for x_t in x:
        *state, cache = ref.forward(x_t, *state, weights)
        outs.append(state[0])
        caches.append(cache)
    return np.stack(outs), tuple(state), caches


def reference_backward(layer: Recurrent, grad_out: np.ndarray, grad_state: tuple, caches: list):
    """The reference step backward in a reverse loop. grad_out (T, B, H) ∂L/∂a<t>,
    grad_state ∂L/∂(final state). Returns ∂L/∂x (T, B, D), ∂L/∂(initial state)
    and the gradients of the notes' weights summed over the steps ("dWu", "dbu" …;
    ``pytorch_grads`` maps them to w_ih, w_hh, b_ih, b_hh)."""
    ref = REFERENCE[type(layer)]
    d_state = list(grad_state)
    d_weights: dict[str, np.ndarray] = {}
    dx = []
    for t in range(len(caches) - 1, -1, -1):
        d_state[0] = d_state[0] + grad_out[t]  # the output a<t> is the first state part
        grads = ref.backward(*d_state, caches[t])
        dx.append(grads["dx"])
        d_state = [grads[k] for k in ref.grad_prev]
        for k, v in grads.items():
            if k.startswith(("dW", "db")):
                d_weights[k] = d_weights.get(k, 0.0) + v
    return np.stack(dx[::-1]), tuple(d_state), d_weights
