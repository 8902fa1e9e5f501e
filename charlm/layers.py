"""Layers with hand-written forward and backward passes, vectorized over the batch.

Notation follows the lecture notes in ``shared/seeds``: x<t> input, a<t> hidden
state, c<t> memory cell, c̃<t> candidate, Γu update, Γf forget, Γo output and
Γr relevance gates, σ the logistic sigmoid, ∗ the element-wise product.

Sizes used in every shape comment:

    T  time steps in a chunk        B  batch rows (independent streams)
    D  input features per step      H  hidden units
    V  vocabulary size              E  embedding width

Sequences are time-major, ``(T, B, ·)``, so that step t is the contiguous block
``x[t]``. Weights are laid out like PyTorch's ``nn.LSTM``/``nn.Linear``
(``weight (out, in)``), so ``x @ W.T`` is a forward projection; NumPy passes
the transpose to BLAS without copying.

A layer owns references to its parameter and gradient arrays (views into the
model's flat buffers) and a workspace of preallocated arrays per (T, B) shape.
``forward`` fills the workspace; ``backward`` reads it, so the pair must run
back to back on the same chunk. Nothing is allocated inside the time loop.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import ClassVar

import numpy as np

# --------------------------------------------------------------------------- #
# Element-wise helpers. On CPUs without AVX-512, NumPy's float32 exp is about
# twice as fast as its tanh, so σ is computed as 1 / (1 + exp(-x)) in place.
# --------------------------------------------------------------------------- #


def sigmoid_(x: np.ndarray) -> np.ndarray:
    """In place: x ← σ(x) = 1 / (1 + exp(-x)). Overflow of exp gives exactly 0."""
    np.negative(x, out=x)
    np.exp(x, out=x)
    np.add(x, 1.0, out=x)
    np.reciprocal(x, out=x)
    return x


def _state_shape_check(a0: np.ndarray, B: int, H: int) -> None:
    if a0.shape != (B, H):
        raise ValueError(f"initial state has shape {a0.shape}, expected {(B, H)}")


class _Workspace:
    """Keeps one set of work arrays per (T, B) shape; a few shapes at most."""

    def __init__(self, limit: int = 4) -> None:
        self._sets: dict[tuple[int, int], dict[str, np.ndarray]] = {}
        self._limit = limit

    def get(self, key: tuple[int, int], make) -> dict[str, np.ndarray]:
        ws = self._sets.get(key)
        if ws is None:
            if len(self._sets) >= self._limit:
                self._sets.pop(next(iter(self._sets)))
            ws = self._sets[key] = make()
        return ws

    def clear(self) -> None:
        self._sets.clear()


@dataclass
class Recurrent(ABC):
    """Base for recurrent layers: input projection, state layout, weight gradients.

    Subclasses set ``gates`` (number of H-wide blocks in the fused weight) and
    ``state_names`` (one (B, H) array per name), and implement ``_recur`` and
    ``_recur_backward``.
    """

    input_size: int
    hidden_size: int
    w_ih: np.ndarray  # (G·H, D)
    w_hh: np.ndarray  # (G·H, H)
    b_ih: np.ndarray  # (G·H,)
    b_hh: np.ndarray  # (G·H,)
    grad_w_ih: np.ndarray
    grad_w_hh: np.ndarray
    grad_b_ih: np.ndarray
    grad_b_hh: np.ndarray

    gates: ClassVar[int] = 1
    state_names: ClassVar[tuple[str, ...]] = ("a",)

    def __post_init__(self) -> None:
        self._ws = _Workspace()
        self._last_ws: dict[str, np.ndarray] | None = None

    @property
    def dtype(self) -> np.dtype:
        return self.w_hh.dtype

    # -- public API ---------------------------------------------------------

    def zero_state(self, B: int) -> tuple[np.ndarray, ...]:
        return tuple(np.zeros((B, self.hidden_size), self.dtype) for _ in self.state_names)

    def forward(self, x: np.ndarray, state: tuple[np.ndarray, ...]) -> tuple[np.ndarray, tuple]:
        """Run the layer over a chunk.

        x: (T, B, D) inputs; state: initial state, each (B, H).
        Returns the outputs a<1..T> as a (T, B, H) view of the workspace and the
        final state (copies, safe to carry into the next chunk).
        """
        T, B, D = x.shape
        ws = self._workspace(T, B)
        X = ws["pre"].reshape(T * B, -1)  # (T·B, G·H)
        np.matmul(x.reshape(T * B, D), self.w_ih.T, out=X)
        X += self.b_ih
        X += self.b_hh
        return self._run(ws, state)

    def forward_from_table(
        self, ids: np.ndarray, table: np.ndarray, state: tuple[np.ndarray, ...]
    ) -> tuple[np.ndarray, tuple]:
        """Forward for a first layer fed by an embedding: the input projection of
        every symbol is precomputed, ``table = Emb @ W_ih.T + b`` (V, G·H), and the
        projection of a chunk is a row gather. ids: (T, B) ints."""
        T, B = ids.shape
        ws = self._workspace(T, B)
        ws["pre"][...] = table[ids]  # (T, B, G·H)
        return self._run(ws, state)

    def backward(
        self, grad_out: np.ndarray, x: np.ndarray | None, grad_state: tuple | None = None
    ) -> tuple[np.ndarray, tuple]:
        """Back-propagate through the chunk run by the last ``forward``.

        grad_out: (T, B, H) ∂L/∂a<t> from the layer above; x: the (T, B, D) inputs
        of the forward pass (for ∂L/∂W_ih) or None when the caller handles the
        input projection itself (see ``grad_pre``); grad_state: ∂L/∂(final state),
        or None for zero (truncated BPTT).
        Accumulates into the gradient arrays. Returns (∂L/∂x (T, B, D) or None,
        ∂L/∂(initial state)).
        """
        ws = self._last_ws
        assert ws is not None, "backward without forward"
        T, B, _ = grad_out.shape
        grad_init = self._recur_backward(ws, grad_out, grad_state)
        dpre = ws["dpre"].reshape(T * B, -1)  # (T·B, G·H) ∂L/∂(pre-activations)
        # Weight gradients: one GEMM each over the stacked steps.
        states = ws["a"][:-1].reshape(T * B, -1)  # a<0..T-1> (T·B, H)
        self._grad_hh(dpre, states, ws)
        db = dpre.sum(axis=0)
        self.grad_b_ih += db
        self.grad_b_hh += db
        if x is None:
            return None, grad_init
        D = x.shape[-1]
        self.grad_w_ih += dpre.T @ x.reshape(T * B, D)
        grad_x = (dpre @ self.w_ih).reshape(T, B, D)
        return grad_x, grad_init

    def grad_pre(self) -> np.ndarray:
        """∂L/∂(input projection) of the last backward pass, (T, B, G·H)."""
        assert self._last_ws is not None
        return self._last_ws["dpre"]

    def accumulate_input_weight_grad(self, inputs2d: np.ndarray) -> None:
        """∂L/∂W_ih += dpre.T @ inputs, for callers that ran backward(x=None)."""
        dpre = self.grad_pre()
        self.grad_w_ih += dpre.reshape(-1, dpre.shape[-1]).T @ inputs2d

    # -- subclass hooks ----------------------------------------------------

    def _grad_hh(self, dpre2d: np.ndarray, states2d: np.ndarray, ws) -> None:
        self.grad_w_hh += dpre2d.T @ states2d  # (G·H, H)

    def _extra_buffers(self, T: int, B: int) -> dict[str, np.ndarray]:
        return {}

    @abstractmethod
    def step(self, pre: np.ndarray, state: tuple[np.ndarray, ...]) -> np.ndarray:
        """One step at batch 1 for sampling. pre: (G·H,) input projection
        W_ih x<t> + b, overwritten; state: (H,) vectors, updated in place.
        Returns a<t> (a view of the state)."""

    @abstractmethod
    def _run(self, ws, state) -> tuple[np.ndarray, tuple]:
        """The time loop: fill ws["pre"] with gate values and ws["a"] with a<0..T>."""

    @abstractmethod
    def _recur_backward(self, ws, grad_out, grad_state) -> tuple:
        """The reverse time loop: fill ws["dpre"]; return ∂L/∂(initial state)."""

    # -- workspace ------------------------------------------------------------

    def _workspace(self, T: int, B: int) -> dict[str, np.ndarray]:
        def make() -> dict[str, np.ndarray]:
            GH, H, dt = self.gates * self.hidden_size, self.hidden_size, self.dtype
            ws = {
                "pre": np.empty((T, B, GH), dt),  # pre-activations, then gate values
                "dpre": np.empty((T, B, GH), dt),  # ∂L/∂pre-activations
                "a": np.empty((T + 1, B, H), dt),  # a<0..T>
                "z": np.empty((B, GH), dt),  # recurrent projection of one step
                "h1": np.empty((B, H), dt),  # step scratch
                "h2": np.empty((B, H), dt),  # step scratch
            }
            ws.update(self._extra_buffers(T, B))
            return ws

        ws = self._ws.get((T, B), make)
        self._last_ws = ws
        return ws


class LSTM(Recurrent):
    """Long short-term memory layer, fused gates in PyTorch's order (i, f, g, o).

    With pre-activations  z = W_ih x<t> + W_hh a<t-1> + b  split into four H-wide
    blocks:

        Γu = σ(z_i)            (update / input gate)
        Γf = σ(z_f)            (forget gate)
        c̃<t> = tanh(z_g)       (candidate)
        Γo = σ(z_o)            (output gate)
        c<t> = Γf ∗ c<t-1> + Γu ∗ c̃<t>
        a<t> = Γo ∗ tanh(c<t>)

    tanh(z) is computed as 2σ(2z) − 1, so one exp serves the whole (B, 4H) block.

    Backward, per step (δa = ∂L/∂a<t>, δc = ∂L/∂c<t> from t+1):

        δc += δa ∗ Γo ∗ (1 − tanh² c<t>)
        δz_o = δa ∗ tanh c<t> ∗ Γo(1 − Γo)       δz_i = δc ∗ c̃ ∗ Γu(1 − Γu)
        δz_f = δc ∗ c<t-1> ∗ Γf(1 − Γf)          δz_g = δc ∗ Γu ∗ (1 − c̃²)
        ∂L/∂c<t-1> = δc ∗ Γf,   ∂L/∂a<t-1> += δz @ W_hh

    Memory: the workspace holds 2·(T, B, 4H) + 4·(T, B, H) floats.
    """

    gates = 4
    state_names = ("a", "c")

    def _extra_buffers(self, T: int, B: int) -> dict[str, np.ndarray]:
        H, dt = self.hidden_size, self.dtype
        scale = np.full(4 * H, -1.0, dt)
        scale[2 * H : 3 * H] = -2.0  # exp(-2 z_g) gives tanh via 2σ(2z) − 1
        return {
            "c": np.empty((T + 1, B, H), dt),  # c<0..T>
            "tanh_c": np.empty((T, B, H), dt),  # tanh c<1..T>
            "k": np.empty((T, B, H), dt),  # Γo ∗ (1 − tanh² c<t>), backward only
            "neg_scale": scale,  # (4H,)
        }

    def _run(self, ws, state):
        a0, c0 = state
        G, A, C, TC = ws["pre"], ws["a"], ws["c"], ws["tanh_c"]
        T, B, _ = G.shape
        H = self.hidden_size
        _state_shape_check(a0, B, H)
        z, tmp, scale = ws["z"], ws["h1"], ws["neg_scale"]
        w_hh_t = self.w_hh.T
        A[0] = a0
        C[0] = c0
        with np.errstate(over="ignore", under="ignore"):
            for t in range(T):
                g = G[t]  # (B, 4H) pre-activations → gate values
                np.matmul(A[t], w_hh_t, out=z)
                np.add(g, z, out=g)
                np.multiply(g, scale, out=g)
                np.exp(g, out=g)
                np.add(g, 1.0, out=g)
                np.reciprocal(g, out=g)  # σ(z) for i, f, o; σ(2z) for g
                cand = g[:, 2 * H : 3 * H]
                np.multiply(cand, 2.0, out=cand)
                np.subtract(cand, 1.0, out=cand)  # c̃ = tanh(z_g)
                np.multiply(g[:, H : 2 * H], C[t], out=C[t + 1])  # Γf ∗ c<t-1>
                np.multiply(g[:, :H], cand, out=tmp)  # Γu ∗ c̃
                np.add(C[t + 1], tmp, out=C[t + 1])
                np.tanh(C[t + 1], out=TC[t])
                np.multiply(g[:, 3 * H :], TC[t], out=A[t + 1])
        return A[1:], (A[T].copy(), C[T].copy())

    def step(self, pre, state):
        a, c = state
        H = self.hidden_size
        if not hasattr(self, "_step_bufs"):
            scale = np.full(4 * H, -1.0, self.dtype)
            scale[2 * H : 3 * H] = -2.0
            self._step_bufs = (np.empty(4 * H, self.dtype), np.empty(H, self.dtype), scale)
        z, tmp, scale = self._step_bufs
        np.matmul(self.w_hh, a, out=z)
        pre += z
        pre *= scale
        with np.errstate(over="ignore", under="ignore"):
            np.exp(pre, out=pre)
        pre += 1.0
        np.reciprocal(pre, out=pre)
        cand = pre[2 * H : 3 * H]
        cand *= 2.0
        cand -= 1.0
        c *= pre[H : 2 * H]
        np.multiply(pre[:H], cand, out=tmp)
        c += tmp
        np.tanh(c, out=tmp)
        np.multiply(pre[3 * H :], tmp, out=a)
        return a

    def _recur_backward(self, ws, grad_out, grad_state):
        G, C, TC, K, dG = ws["pre"], ws["c"], ws["tanh_c"], ws["k"], ws["dpre"]
        T, B, _ = G.shape
        H = self.hidden_size
        G4 = G.reshape(T, B, 4, H)  # gate values, blocks i, f, g, o
        P4 = dG.reshape(T, B, 4, H)
        # Step-independent factors, vectorized over all T steps before the loop:
        #   P_i = c̃ ∗ Γu(1 − Γu)      P_f = c<t-1> ∗ Γf(1 − Γf)
        #   P_g = Γu ∗ (1 − c̃²)       P_o = tanh c<t> ∗ Γo(1 − Γo)
        #   K   = Γo ∗ (1 − tanh² c<t>)
        # so that inside the loop δz_{i,f,g} = δc ∗ P_{i,f,g} and δz_o = δa ∗ P_o.
        np.multiply(G, G, out=dG)
        np.subtract(G, dG, out=dG)  # s(1 − s) (wrong for the g block, fixed next)
        Pg, Sg = P4[:, :, 2], G4[:, :, 2]
        np.multiply(Sg, Sg, out=Pg)
        np.subtract(1.0, Pg, out=Pg)
        np.multiply(P4[:, :, 0], Sg, out=P4[:, :, 0])
        np.multiply(P4[:, :, 1], C[:-1], out=P4[:, :, 1])
        np.multiply(Pg, G4[:, :, 0], out=Pg)
        np.multiply(P4[:, :, 3], TC, out=P4[:, :, 3])
        np.multiply(TC, TC, out=K)
        np.subtract(1.0, K, out=K)
        np.multiply(K, G4[:, :, 3], out=K)

        da = np.zeros((B, H), self.dtype)  # ∂L/∂a<t>, recurrent part
        dc = np.zeros((B, H), self.dtype)  # ∂L/∂c<t>
        if grad_state is not None:
            da += grad_state[0]
            dc += grad_state[1]
        tmp = ws["h1"]
        dc_b = dc[:, None, :]  # (B, 1, H) broadcast over the i, f, g blocks
        w_hh = self.w_hh
        for t in range(T - 1, -1, -1):
            np.add(da, grad_out[t], out=da)
            np.multiply(da, K[t], out=tmp)
            np.add(dc, tmp, out=dc)  # δc<t>
            p = P4[t]
            np.multiply(p[:, 3], da, out=p[:, 3])  # δz_o
            np.multiply(p[:, :3], dc_b, out=p[:, :3])  # δz_i, δz_f, δz_g
            np.multiply(dc, G4[t, :, 1], out=dc)  # ∂L/∂c<t-1> = δc ∗ Γf
            np.matmul(dG[t], w_hh, out=da)  # ∂L/∂a<t-1> = δz @ W_hh
        return (da, dc)


# --------------------------------------------------------------------------- #
# Output layer
# --------------------------------------------------------------------------- #


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

    ids (N,), grad_rows (N, E) → (num_rows, E). A one-hot GEMM is an order of
    magnitude faster than ``np.add.at`` for the small vocabularies used here.
    """
    onehot = np.zeros((ids.shape[0], num_rows), grad_rows.dtype)
    onehot[np.arange(ids.shape[0]), ids] = 1.0
    return onehot.T @ grad_rows
