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
the transpose to BLAS without copying. The one exception is the recurrent
product inside a time loop: there each chunk first makes a contiguous copy of
W_hhᵀ (with the cell's scale factors folded in), because OpenBLAS repacks the
weight at every one of the T small products and packs a contiguous (H, G·H)
operand faster (measured per product, one thread: 1.18× at H 128 B 16, 1.14×
at H 256 B 16, 1.07× at H 512 B 32, medians of 15 interleaved rounds).

A layer owns references to its parameter and gradient arrays (views into the
model's flat buffers) and a workspace of preallocated arrays per (T, B) shape.
``forward`` fills the workspace; ``backward`` reads it (and may overwrite the
gate values with their gradients), so the pair must run back to back on the
same chunk, one backward per forward. Nothing is allocated inside the time loop.
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


SPAN_BYTES = 2 * 1024 * 1024  # per span of backward steps: 11 at H 256 B 16 (spans of 7–14 steps measured best there)


def _steps_per_span(bytes_per_step: int) -> int:
    """Steps per span of a backward loop whose step-independent factors are
    computed span by span, so that they are still in the core's cache (L2)
    when the loop reads them, instead of for the whole chunk at once."""
    return max(1, SPAN_BYTES // bytes_per_step)


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
    # True when backward writes ∂L/∂pre-activations over the forward's gate
    # values (ws["dpre"] is ws["pre"]): one (T, B, G·H) array fewer per layer.
    grad_over_gates: ClassVar[bool] = False

    def __post_init__(self) -> None:
        self._ws = _Workspace()
        self._last_ws: dict[str, np.ndarray] | None = None
        self._forward_pending = False  # a forward pass has filled _last_ws and no backward has read it

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
        scale = ws["scale"]
        w = np.multiply(self.w_ih, scale[:, None], out=ws["w_ih_scaled"])  # s ∗ W_ih, (G·H, D)
        X = ws["pre"].reshape(T * B, -1)  # (T·B, G·H)
        np.matmul(x.reshape(T * B, D), w.T, out=X)
        b = np.add(self.b_ih, self.b_hh, out=ws["b_scaled"])
        b *= scale
        X += b  # s ∗ (W_ih x<t> + b_ih + b_hh)
        return self._run(ws, state)

    def forward_from_table(
        self, ids: np.ndarray, table: np.ndarray, state: tuple[np.ndarray, ...]
    ) -> tuple[np.ndarray, tuple]:
        """Forward for a first layer fed by an embedding: the input projection of
        every symbol is precomputed, ``table = Emb @ W_ih.T + b`` (V, G·H), and the
        projection of a chunk is a row gather. ids: (T, B) ints."""
        T, B = ids.shape
        ws = self._workspace(T, B)
        if ids.size and (ids.min() < 0 or ids.max() >= table.shape[0]):
            raise IndexError(f"symbol ids must lie in [0, {table.shape[0]}) for this table")
        # mode="clip" (ids checked above) copies whole rows: 20× faster than table[ids] at (64, 16, 1024)
        np.take(table * ws["scale"], ids, axis=0, out=ws["pre"], mode="clip")  # (T, B, G·H) s ∗ rows
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
        if ws is None or not self._forward_pending:
            raise RuntimeError("backward needs a forward pass of its own (one backward per forward)")
        self._forward_pending = False  # the gate values may now be overwritten (grad_over_gates)
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
    def _gate_scale(self) -> np.ndarray:
        """s (G·H,): the factor by which the loop wants each pre-activation
        multiplied (−1 where exp(−z) gives σ(z), −2 where exp(−2z) gives tanh(z)).
        ``forward`` applies it to the chunk's input projection through a scaled
        copy of W_ih (or of the table), so the loop needs no pass of its own."""

    @abstractmethod
    def _run(self, ws, state) -> tuple[np.ndarray, tuple]:
        """The time loop over ws["pre"], which holds s ∗ (W_ih x<t> + b) (see
        ``_gate_scale``): fill it with gate values and ws["a"] with a<0..T>."""

    @abstractmethod
    def _recur_backward(self, ws, grad_out, grad_state) -> tuple:
        """The reverse time loop: fill ws["dpre"]; return ∂L/∂(initial state)."""

    # -- workspace ------------------------------------------------------------

    def _workspace(self, T: int, B: int) -> dict[str, np.ndarray]:
        def make() -> dict[str, np.ndarray]:
            GH, H, dt = self.gates * self.hidden_size, self.hidden_size, self.dtype
            pre = np.empty((T, B, GH), dt)  # pre-activations, then gate values
            ws = {
                "pre": pre,
                "dpre": pre if self.grad_over_gates else np.empty((T, B, GH), dt),  # ∂L/∂pre-activations
                "a": np.empty((T + 1, B, H), dt),  # a<0..T>
                "z": np.empty((B, GH), dt),  # recurrent projection of one step
                "h1": np.empty((B, H), dt),  # step scratch
                "h2": np.empty((B, H), dt),  # step scratch
                "scale": self._gate_scale(),  # (G·H,) s
                "w_ih_scaled": np.empty((GH, self.input_size), dt),  # s ∗ W_ih
                "b_scaled": np.empty(GH, dt),  # s ∗ (b_ih + b_hh)
            }
            ws.update(self._extra_buffers(T, B))
            return ws

        ws = self._ws.get((T, B), make)
        self._last_ws = ws
        self._forward_pending = True
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

    tanh(z) is computed as 2σ(2z) − 1, so one exp serves the whole (B, 4H) block:
    copies of W_ih (or the first layer's table), of the bias and of W_hh are
    multiplied by the block factors s = (−1, −1, −2, −1), so the chunk's input
    projection comes out scaled and a step's exp(s ∗ z) needs no scaling of its
    own, and 1/(1 + e) for i, f, o and 2/(1 + e) for g is one division by the
    numerators −s. (Powers of two: the same bits as scaling the products.)

    Backward, per step (δa = ∂L/∂a<t>, δc = ∂L/∂c<t> from t+1):

        δc += δa ∗ Γo ∗ (1 − tanh² c<t>)
        δz_o = δa ∗ tanh c<t> ∗ Γo(1 − Γo)       δz_i = δc ∗ c̃ ∗ Γu(1 − Γu)
        δz_f = δc ∗ c<t-1> ∗ Γf(1 − Γf)          δz_g = δc ∗ Γu ∗ (1 − c̃²)
        ∂L/∂c<t-1> = δc ∗ Γf,   ∂L/∂a<t-1> += δz @ W_hh

    The factors of δa and δc there are computed vectorized, a span of some
    steps at a time just before the loop reaches them, so that the loop finds
    them in the core's cache (1.07–1.08× the backward loop at H 256 B 16 against
    one pass over the whole chunk, 25 interleaved rounds). Step t's δz is
    written over its gate values, which nothing reads after that step.

    Memory: the workspace holds (T, B, 4H) + 3·(T, B, H) floats (gates, then
    their gradients; a<t>, c<t>, tanh c<t>), and one span's factors.
    """

    gates = 4
    state_names = ("a", "c")
    grad_over_gates = True

    def _extra_buffers(self, T: int, B: int) -> dict[str, np.ndarray]:
        H, dt = self.hidden_size, self.dtype
        scale = self._gate_scale()
        return {
            "c": np.empty((T + 1, B, H), dt),  # c<0..T>
            "tanh_c": np.empty((T, B, H), dt),  # tanh c<1..T>
            "numerator": -scale,  # (4H,) −s: 1 for i, f, o and 2 for g
            "w_scaled_t": np.empty((H, 4 * H), dt),  # (s ∗ W_hh)ᵀ, contiguous (see Recurrent)
        }

    def _gate_scale(self) -> np.ndarray:
        """s (4H,): −1 for i, f, o and −2 for g, as exp(−2 z_g) gives tanh via 2σ(2z) − 1."""
        H = self.hidden_size
        scale = np.full(4 * H, -1.0, self.dtype)
        scale[2 * H : 3 * H] = -2.0
        return scale

    def _run(self, ws, state):
        a0, c0 = state
        G, A, C, TC = ws["pre"], ws["a"], ws["c"], ws["tanh_c"]
        T, B, _ = G.shape
        H = self.hidden_size
        _state_shape_check(a0, B, H)
        z, tmp, scale, numerator = ws["z"], ws["h1"], ws["scale"], ws["numerator"]
        one = G.dtype.type(1.0)  # a NumPy scalar: a Python float costs a conversion per call
        w_hh_t = np.multiply(self.w_hh.T, scale, out=ws["w_scaled_t"])  # (H, 4H)
        A[0] = a0
        C[0] = c0
        with np.errstate(over="ignore", under="ignore"):
            for t in range(T):
                g = G[t]  # (B, 4H) scaled pre-activations → gate values
                np.matmul(A[t], w_hh_t, out=z)
                np.add(g, z, out=g)  # s ∗ z<t>
                np.exp(g, out=g)
                np.add(g, one, out=g)
                np.divide(numerator, g, out=g)  # σ(z) for i, f, o; 2σ(2z) for g
                cand = g[:, 2 * H : 3 * H]
                np.subtract(cand, one, out=cand)  # c̃ = tanh(z_g) = 2σ(2z) − 1
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
            scale = self._gate_scale()
            self._step_bufs = (np.empty(4 * H, self.dtype), np.empty(H, self.dtype), scale, -scale)
        z, tmp, scale, numerator = self._step_bufs
        np.matmul(self.w_hh, a, out=z)
        pre += z
        pre *= scale
        with np.errstate(over="ignore", under="ignore"):
            np.exp(pre, out=pre)
        pre += 1.0
        np.divide(numerator, pre, out=pre)  # σ(z) for i, f, o; 2σ(2z) for g
        cand = pre[2 * H : 3 * H]
        cand -= 1.0
        c *= pre[H : 2 * H]
        np.multiply(pre[:H], cand, out=tmp)
        c += tmp
        np.tanh(c, out=tmp)
        np.multiply(pre[3 * H :], tmp, out=a)
        return a

    def _recur_backward(self, ws, grad_out, grad_state):
        G, C, TC = ws["pre"], ws["c"], ws["tanh_c"]
        T, B, _ = G.shape
        H = self.hidden_size
        G4 = G.reshape(T, B, 4, H)  # gate values, blocks i, f, g, o; step t's become its δz
        span = min(T, _steps_per_span(B * (11 * H) * G.itemsize))  # a step touches G, P (4H each), C, tanh C, K
        P, K = self._span_buffers(ws, span)  # (S, B, 4H) and (S, B, H) factors of one span
        P4 = P.reshape(span, B, 4, H)
        da = np.zeros((B, H), self.dtype)  # ∂L/∂a<t>, recurrent part
        dc = np.zeros((B, H), self.dtype)  # ∂L/∂c<t>
        dc_prev = np.empty((B, H), self.dtype)  # ∂L/∂c<t-1>
        if grad_state is not None:
            da += grad_state[0]
            dc += grad_state[1]
        tmp = ws["h1"]
        w_hh = self.w_hh
        for end in range(T, 0, -span):
            start = max(0, end - span)
            n = end - start
            self._step_factors(G[start:end], C[start:end], TC[start:end], K[:n], P[:n])  # C[t] holds c<t-1> of step t
            for t in range(end - 1, start - 1, -1):
                j, g = t - start, G4[t]
                np.add(da, grad_out[t], out=da)
                np.multiply(da, K[j], out=tmp)
                np.add(dc, tmp, out=dc)  # δc<t>
                np.multiply(dc, g[:, 1], out=dc_prev)  # ∂L/∂c<t-1> = δc ∗ Γf, before Γf is overwritten
                np.multiply(P4[j, :, 3], da, out=g[:, 3])  # δz_o
                np.multiply(P4[j, :, :3], dc[:, None, :], out=g[:, :3])  # δz_i, δz_f, δz_g
                dc, dc_prev = dc_prev, dc
                np.matmul(G[t], w_hh, out=da)  # ∂L/∂a<t-1> = δz @ W_hh
        return (da, dc)

    @staticmethod
    def _span_buffers(ws, span: int) -> tuple[np.ndarray, np.ndarray]:
        """The (span, B, 4H) and (span, B, H) arrays for one span's backward factors,
        made at the first backward pass of the workspace (or of a longer span)."""
        P = ws.get("p_span")
        if P is None or P.shape[0] < span:
            _, B, H4 = ws["pre"].shape
            P = ws["p_span"] = np.empty((span, B, H4), ws["pre"].dtype)
            ws["k_span"] = np.empty((span, B, H4 // 4), ws["pre"].dtype)
        return P[:span], ws["k_span"][:span]

    @staticmethod
    def _step_factors(G, C_prev, TC, K, P) -> None:
        """The step-independent factors of the backward pass for a span of S steps,
        vectorized over the span (G, P: (S, B, 4H); C_prev, TC, K: (S, B, H)), into P and K:

            P_i = c̃ ∗ Γu(1 − Γu)      P_f = c<t-1> ∗ Γf(1 − Γf)
            P_g = Γu ∗ (1 − c̃²)       P_o = tanh c<t> ∗ Γo(1 − Γo)
            K   = Γo ∗ (1 − tanh² c<t>)

        so that in the loop δz_{i,f,g} = δc ∗ P_{i,f,g} and δz_o = δa ∗ P_o.
        """
        S, B, H = TC.shape
        G4, P4 = G.reshape(S, B, 4, H), P.reshape(S, B, 4, H)  # views: blocks i, f, g, o
        one = G.dtype.type(1.0)
        np.multiply(G, G, out=P)
        np.subtract(G, P, out=P)  # s(1 − s) (wrong for the g block, fixed next)
        Pg, Sg = P4[:, :, 2], G4[:, :, 2]
        np.multiply(Sg, Sg, out=Pg)
        np.subtract(one, Pg, out=Pg)
        np.multiply(P4[:, :, 0], Sg, out=P4[:, :, 0])
        np.multiply(P4[:, :, 1], C_prev, out=P4[:, :, 1])
        np.multiply(Pg, G4[:, :, 0], out=Pg)
        np.multiply(P4[:, :, 3], TC, out=P4[:, :, 3])
        np.multiply(TC, TC, out=K)
        np.subtract(one, K, out=K)
        np.multiply(K, G4[:, :, 3], out=K)


# --------------------------------------------------------------------------- #
# The rest of the seeds' recurrent family: vanilla RNN, full GRU, bidirectional
# --------------------------------------------------------------------------- #


class RNN(Recurrent):
    """Vanilla recurrent layer, laid out like PyTorch's ``nn.RNN(nonlinearity="tanh")``
    (``weight_ih`` (H, D), ``weight_hh`` (H, H), ``bias_ih``, ``bias_hh`` (H,)), so
    its weights load into that module unchanged:

        a<t> = tanh(Wa[a<t-1>, x<t>] + ba) = tanh(W_hh a<t-1> + W_ih x<t> + b_ih + b_hh)

    tanh(z) is computed as 2 / (1 + exp(−2z)) − 1, since NumPy's float32 exp is
    faster than its tanh here. The factor −2 is folded into scaled copies of
    W_ih, the bias and W_hh, so a step is one GEMM and four element-wise
    operations.

    Backward, per step (δa = ∂L/∂a<t>):

        δz = δa ∗ (1 − a<t>²)           (1 − a<t>² for all T before the loop)
        ∂L/∂a<t-1> = δz @ W_hh

    Memory: the workspace holds (T, B, H) + (T + 1, B, H) floats and (H, H); the
    backward pass writes δz over the pre-activations.
    """

    gates = 1
    state_names = ("a",)
    grad_over_gates = True

    def _extra_buffers(self, T: int, B: int) -> dict[str, np.ndarray]:
        H = self.hidden_size
        return {"w_scaled_t": np.empty((H, H), self.dtype)}  # −2 W_hhᵀ, contiguous

    def _gate_scale(self) -> np.ndarray:
        return np.full(self.hidden_size, -2.0, self.dtype)  # exp(−2z) gives tanh via 2σ(2z) − 1

    def _run(self, ws, state):
        (a0,) = state
        P, A, z = ws["pre"], ws["a"], ws["z"]
        T, B, _ = P.shape
        _state_shape_check(a0, B, self.hidden_size)
        w_t = np.multiply(self.w_hh.T, ws["scale"], out=ws["w_scaled_t"])  # −2 W_hhᵀ, (H, H)
        one, two = P.dtype.type(1.0), P.dtype.type(2.0)
        A[0] = a0
        with np.errstate(over="ignore", under="ignore"):
            for t in range(T):
                np.matmul(A[t], w_t, out=z)
                np.add(z, P[t], out=z)  # −2 z<t>, (B, H)
                np.exp(z, out=z)
                np.add(z, one, out=z)
                np.divide(two, z, out=z)
                np.subtract(z, one, out=A[t + 1])  # a<t> = tanh z<t>
        return A[1:], (A[T].copy(),)

    def step(self, pre, state):
        (a,) = state
        if not hasattr(self, "_step_buf"):
            self._step_buf = np.empty(self.hidden_size, self.dtype)
        z = self._step_buf
        np.matmul(self.w_hh, a, out=z)
        pre += z
        np.tanh(pre, out=a)  # at batch 1 np.tanh beats the exp route (fewer calls)
        return a

    def _recur_backward(self, ws, grad_out, grad_state):
        A, dZ = ws["a"], ws["dpre"]
        T, B, H = dZ.shape
        np.multiply(A[1:], A[1:], out=dZ)
        np.subtract(1.0, dZ, out=dZ)  # 1 − a<t>², (T, B, H)
        da = np.zeros((B, H), self.dtype)  # ∂L/∂a<t>, recurrent part
        if grad_state is not None:
            da += grad_state[0]
        w_hh = self.w_hh
        for t in range(T - 1, -1, -1):
            np.add(da, grad_out[t], out=da)
            np.multiply(dZ[t], da, out=dZ[t])  # δz<t>
            np.matmul(dZ[t], w_hh, out=da)  # ∂L/∂a<t-1> = δz @ W_hh
        return (da,)


class GRU(Recurrent):
    """The seeds' full gated recurrent unit, fused blocks in the order (r, u, c̃).

    The memory cell is the hidden state (a<t> = c<t>). With W[·] the H-row block
    of a fused weight, Wr[c<t-1>, x<t>] = W_hh[r] c<t-1> + W_ih[r] x<t> and
    br = b_ih[r] + b_hh[r] (likewise for u and c̃):

        Γr = σ(Wr[c<t-1>, x<t>] + br)                 (relevance gate)
        Γu = σ(Wu[c<t-1>, x<t>] + bu)                 (update gate)
        c̃<t> = tanh(Wc[Γr ∗ c<t-1>, x<t>] + bc)       (candidate)
        c<t> = Γu ∗ c̃<t> + (1 − Γu) ∗ c<t-1>
        a<t> = c<t>

    Γr multiplies c<t-1> *before* the recurrent product, as in the seeds.
    PyTorch's ``nn.GRU`` applies it after, Γr ∗ (W_hh[c̃] c<t-1> + b_hh[c̃]), and
    swaps the roles of Γu and 1 − Γu, so these tensors, though named and shaped
    like ``nn.GRU``'s (``weight_ih`` (3H, D), ``weight_hh`` (3H, H)), do not load
    into it.

    A step is one (B, 2H) GEMM for Γr, Γu, the product Γr ∗ c<t-1>, and one
    (B, H) GEMM for c̃. σ(z) = 1 / (1 + exp(−z)) and tanh(z) = 2 / (1 + exp(−2z)) − 1
    share one exp each; their factors −1 and −2 are folded into scaled copies of
    W_ih, the bias and W_hh.

    Backward, per step (δa = ∂L/∂c<t>):

        δz_c = δa ∗ Γu ∗ (1 − c̃²)                    δz_u = δa ∗ (c̃ − c<t-1>) ∗ Γu(1 − Γu)
        δs   = δz_c @ W_hh[c̃]                          (s = Γr ∗ c<t-1>)
        δz_r = δs ∗ c<t-1> ∗ Γr(1 − Γr)
        ∂L/∂c<t-1> = δa ∗ (1 − Γu) + δs ∗ Γr + [δz_r, δz_u] @ W_hh[r, u]

    The factors multiplying δa and δs are computed for all T before the loop.
    ∂L/∂W_hh[c̃] is one GEMM against the stored s, the r and u blocks one GEMM
    against c<t-1>.

    Memory: the workspace holds 2·(T, B, 3H) + 3·(T, B, H) floats and 3·(H, H).
    """

    gates = 3
    state_names = ("a",)

    def _extra_buffers(self, T: int, B: int) -> dict[str, np.ndarray]:
        H, dt = self.hidden_size, self.dtype
        return {
            "s": np.empty((T, B, H), dt),  # Γr ∗ c<t-1>
            "k": np.empty((T, B, H), dt),  # 1 − Γu, backward only
            "w_ru_t": np.empty((H, 2 * H), dt),  # −W_hh[r, u]ᵀ, contiguous
            "w_c_t": np.empty((H, H), dt),  # −2 W_hh[c̃]ᵀ
            "z_ru": np.empty((B, 2 * H), dt),  # recurrent projection for r, u
        }

    def _gate_scale(self) -> np.ndarray:
        H = self.hidden_size
        scale = np.full(3 * H, -1.0, self.dtype)
        scale[2 * H :] = -2.0  # exp(−2 z_c) gives tanh via 2σ(2z) − 1
        return scale

    def _run(self, ws, state):
        (a0,) = state
        G, A, S = ws["pre"], ws["a"], ws["s"]
        T, B, _ = G.shape
        H = self.hidden_size
        _state_shape_check(a0, B, H)
        scale = ws["scale"]  # −1 for r, u; −2 for c̃
        w_ru = np.multiply(self.w_hh[: 2 * H].T, scale[: 2 * H], out=ws["w_ru_t"])  # (H, 2H)
        w_c = np.multiply(self.w_hh[2 * H :].T, scale[2 * H :], out=ws["w_c_t"])  # (H, H)
        z_ru, z_c, tmp = ws["z_ru"], ws["h1"], ws["h2"]
        one, two = G.dtype.type(1.0), G.dtype.type(2.0)
        A[0] = a0
        with np.errstate(over="ignore", under="ignore"):
            for t in range(T):
                g = G[t]  # (B, 3H) scaled pre-activations → Γr, Γu, c̃
                ru, cand = g[:, : 2 * H], g[:, 2 * H :]
                np.matmul(A[t], w_ru, out=z_ru)
                np.add(z_ru, ru, out=z_ru)
                np.exp(z_ru, out=z_ru)
                np.add(z_ru, one, out=z_ru)
                np.reciprocal(z_ru, out=ru)  # Γr, Γu
                np.multiply(g[:, :H], A[t], out=S[t])  # s = Γr ∗ c<t-1>
                np.matmul(S[t], w_c, out=z_c)
                np.add(z_c, cand, out=z_c)
                np.exp(z_c, out=z_c)
                np.add(z_c, one, out=z_c)
                np.divide(two, z_c, out=z_c)
                np.subtract(z_c, one, out=cand)  # c̃<t>
                np.subtract(cand, A[t], out=tmp)
                np.multiply(tmp, g[:, H : 2 * H], out=tmp)
                np.add(A[t], tmp, out=A[t + 1])  # c<t> = c<t-1> + Γu ∗ (c̃<t> − c<t-1>)
        return A[1:], (A[T].copy(),)

    def step(self, pre, state):
        (a,) = state
        H = self.hidden_size
        if not hasattr(self, "_step_bufs"):
            self._step_bufs = (np.empty(2 * H, self.dtype), np.empty(H, self.dtype), np.empty(H, self.dtype))
        z_ru, s, tmp = self._step_bufs
        np.matmul(self.w_hh[: 2 * H], a, out=z_ru)
        ru = pre[: 2 * H]
        ru += z_ru
        with np.errstate(over="ignore"):
            sigmoid_(ru)  # Γr, Γu
        np.multiply(pre[:H], a, out=s)
        np.matmul(self.w_hh[2 * H :], s, out=tmp)
        cand = pre[2 * H :]
        cand += tmp
        np.tanh(cand, out=cand)  # c̃<t>
        np.subtract(cand, a, out=tmp)
        tmp *= pre[H : 2 * H]
        a += tmp
        return a

    def _recur_backward(self, ws, grad_out, grad_state):
        G, A, K, dG = ws["pre"], ws["a"], ws["k"], ws["dpre"]
        T, B, _ = G.shape
        H = self.hidden_size
        G3 = G.reshape(T, B, 3, H)  # gate values, blocks r, u, c̃
        P3 = dG.reshape(T, B, 3, H)
        R, U, Cand, prev = G3[:, :, 0], G3[:, :, 1], G3[:, :, 2], A[:-1]
        Pr, Pu, Pc = P3[:, :, 0], P3[:, :, 1], P3[:, :, 2]
        # Step-independent factors, vectorized over all T steps before the loop:
        #   P_r = c<t-1> ∗ Γr(1 − Γr)   P_u = (c̃ − c<t-1>) ∗ Γu(1 − Γu)   P_c = Γu ∗ (1 − c̃²)   K = 1 − Γu
        # so that inside the loop δz_r = δs ∗ P_r and δz_{u,c} = δa ∗ P_{u,c}.
        np.subtract(1.0, R, out=Pr)
        np.multiply(Pr, R, out=Pr)
        np.multiply(Pr, prev, out=Pr)
        np.subtract(1.0, U, out=K)
        np.multiply(K, U, out=Pu)
        np.subtract(Cand, prev, out=Pc)  # scratch
        np.multiply(Pu, Pc, out=Pu)
        np.multiply(Cand, Cand, out=Pc)
        np.subtract(1.0, Pc, out=Pc)
        np.multiply(Pc, U, out=Pc)

        da = np.zeros((B, H), self.dtype)  # ∂L/∂c<t>, recurrent part
        if grad_state is not None:
            da += grad_state[0]
        ds, tmp = ws["h1"], ws["h2"]
        da_b = da[:, None, :]  # (B, 1, H) broadcast over the u, c̃ blocks
        w_ru, w_c = self.w_hh[: 2 * H], self.w_hh[2 * H :]
        for t in range(T - 1, -1, -1):
            np.add(da, grad_out[t], out=da)
            p, dg = P3[t], dG[t]  # (B, 3, H), the same memory as (B, 3H)
            np.multiply(p[:, 1:], da_b, out=p[:, 1:])  # δz_u, δz_c
            np.matmul(dg[:, 2 * H :], w_c, out=ds)  # δs, s = Γr ∗ c<t-1>
            np.multiply(p[:, 0], ds, out=p[:, 0])  # δz_r
            np.multiply(da, K[t], out=da)  # δa ∗ (1 − Γu)
            np.multiply(ds, G3[t, :, 0], out=ds)
            np.add(da, ds, out=da)
            np.matmul(dg[:, : 2 * H], w_ru, out=tmp)
            np.add(da, tmp, out=da)  # ∂L/∂c<t-1>
        return (da,)

    def _grad_hh(self, dpre2d: np.ndarray, states2d: np.ndarray, ws) -> None:
        H = self.hidden_size
        self.grad_w_hh[: 2 * H] += dpre2d[:, : 2 * H].T @ states2d  # against c<t-1>
        self.grad_w_hh[2 * H :] += dpre2d[:, 2 * H :].T @ ws["s"].reshape(-1, H)  # against Γr ∗ c<t-1>


class Bidirectional:
    """Two recurrent layers over the same sequence, one forward and one backward
    in time, their outputs concatenated:

        a→<t> = cell→(x<t>, a→<t-1>)      t = 1, …, T
        a←<t> = cell←(x<t>, a←<t+1>)      t = T, …, 1
        a<t>  = [a→<t>, a←<t>]            (B, H→ + H←)

    Any cells work (LSTM, GRU, RNN, mixed). Each output depends on the whole
    sequence x<1..T>, which is what scoring or tagging a complete sequence needs
    and what a generator cannot have: the next character is not yet written when
    it is predicted, so a←<t> does not exist while sampling. A library layer:
    ``CharModel`` does not use it.

    Backward: ∂L/∂a<t> splits into its two halves; each cell runs its own
    backward pass (the backward cell in reversed time) and the two ∂L/∂x<t> add.
    Each cell accumulates into its own gradient arrays.
    """

    def __init__(self, forward_cell: Recurrent, backward_cell: Recurrent) -> None:
        if forward_cell.input_size != backward_cell.input_size:
            raise ValueError("both directions must take the same input size")
        self.fwd = forward_cell
        self.bwd = backward_cell
        self._x_rev: np.ndarray | None = None  # the reversed input of the last forward

    @property
    def input_size(self) -> int:
        return self.fwd.input_size

    @property
    def hidden_size(self) -> int:
        return self.fwd.hidden_size + self.bwd.hidden_size

    def zero_state(self, B: int) -> tuple[tuple[np.ndarray, ...], tuple[np.ndarray, ...]]:
        return self.fwd.zero_state(B), self.bwd.zero_state(B)

    def forward(self, x: np.ndarray, state: tuple | None = None) -> tuple[np.ndarray, tuple]:
        """x: (T, B, D). state: (initial state of cell→ before x<1>, initial state
        of cell← after x<T>), or None for zeros. Returns [a→<t>, a←<t>] as a new
        (T, B, H→ + H←) array and the final states (cell→ after x<T>, cell← after x<1>)."""
        T, B, _ = x.shape
        if state is None:
            state = self.zero_state(B)
        out_f, s_f = self.fwd.forward(x, state[0])
        self._x_rev = np.ascontiguousarray(x[::-1])  # x<T..1>
        out_b, s_b = self.bwd.forward(self._x_rev, state[1])
        Hf = self.fwd.hidden_size
        out = np.empty((T, B, self.hidden_size), out_f.dtype)
        out[:, :, :Hf] = out_f
        out[:, :, Hf:] = out_b[::-1]
        return out, (s_f, s_b)

    def backward(
        self, grad_out: np.ndarray, x: np.ndarray, grad_state: tuple | None = None
    ) -> tuple[np.ndarray, tuple]:
        """grad_out: (T, B, H→ + H←) ∂L/∂a<t>; x: the input of the last forward;
        grad_state: ∂L/∂(both final states) or None. Accumulates both cells'
        parameter gradients; returns (∂L/∂x (T, B, D), ∂L/∂(both initial states))."""
        assert self._x_rev is not None, "backward without forward"
        Hf = self.fwd.hidden_size
        gs_f, gs_b = (None, None) if grad_state is None else grad_state
        grad_x, gi_f = self.fwd.backward(np.ascontiguousarray(grad_out[:, :, :Hf]), x, gs_f)
        grad_x_rev, gi_b = self.bwd.backward(np.ascontiguousarray(grad_out[::-1, :, Hf:]), self._x_rev, gs_b)
        grad_x += grad_x_rev[::-1]
        return grad_x, (gi_f, gi_b)


def new_layer(
    cls: type[Recurrent],
    input_size: int,
    hidden_size: int,
    rng: np.random.Generator,
    dtype=np.float32,
    forget_bias: float = 0.0,
) -> Recurrent:
    """A stand-alone recurrent layer that owns its parameters and zeroed gradients,
    initialised like ``CharModel``: weights U(−1/√H, 1/√H), biases 0 except the
    LSTM forget-gate bias b_f = ``forget_bias``."""
    G, H = cls.gates * hidden_size, hidden_size
    k = 1.0 / np.sqrt(H)
    w_ih = rng.uniform(-k, k, (G, input_size)).astype(dtype)
    w_hh = rng.uniform(-k, k, (G, H)).astype(dtype)
    b_ih, b_hh = np.zeros(G, dtype), np.zeros(G, dtype)
    if cls is LSTM:
        b_ih[H : 2 * H] = forget_bias
    grads = [np.zeros_like(p) for p in (w_ih, w_hh, b_ih, b_hh)]
    return cls(input_size, hidden_size, w_ih, w_hh, b_ih, b_hh, *grads)


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
