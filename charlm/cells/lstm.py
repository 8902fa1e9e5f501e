"""Long short-term memory: the notes' reference step pair, then the fused fast path.

    Γu = σ(Wu[a<t-1>, x<t>] + bu)   Γf = σ(Wf[a<t-1>, x<t>] + bf)   Γo = σ(Wo[a<t-1>, x<t>] + bo)
    c̃<t> = tanh(Wc[a<t-1>, x<t>] + bc)
    c<t> = Γu ∗ c̃<t> + Γf ∗ c<t-1>
    a<t> = Γo ∗ tanh c<t>

The weights are PyTorch's ``nn.LSTM`` tensors, gate blocks in the order i, f,
g, o, which are the notes' u, f, c, o: Wu = [W_hh[i] | W_ih[i]] (H, H + D),
bu = b_ih[i] + b_hh[i], and so on (``GATES``, ``base.notes_weights``).
"""

from __future__ import annotations

import numpy as np

from charlm.cells.base import Recurrent, check_state_shape, sigmoid

GATES = ("u", "f", "c", "o")  # the notes' names of PyTorch's blocks i, f, g, o

# =========================================================================== #
# Reference: one time step, exactly as the notes write it
# =========================================================================== #


def lstm_step_forward(
    x: np.ndarray, a_prev: np.ndarray, c_prev: np.ndarray, weights: dict[str, np.ndarray]
) -> tuple[np.ndarray, np.ndarray, dict]:
    """One LSTM time step.

    x:       (B, D) x<t>
    a_prev:  (B, H) a<t-1>
    c_prev:  (B, H) c<t-1>
    weights: Wu, Wf, Wo, Wc (H, H + D) and bu, bf, bo, bc (H,), the named slices
             of the PyTorch tensors: Wu = [W_hh[i] | W_ih[i]], bu = b_ih[i] + b_hh[i]
             (``notes_weights(w_ih, w_hh, b_ih, b_hh, GATES)``).
    Returns a<t> (B, H), c<t> (B, H) and the cache for ``lstm_step_backward``.
    """
    a_x = np.concatenate([a_prev, x], axis=1)  # [a<t-1>, x<t>] (B, H + D)
    gamma_u = sigmoid(a_x @ weights["Wu"].T + weights["bu"])  # Γu (B, H)
    gamma_f = sigmoid(a_x @ weights["Wf"].T + weights["bf"])  # Γf (B, H)
    gamma_o = sigmoid(a_x @ weights["Wo"].T + weights["bo"])  # Γo (B, H)
    c_tilde = np.tanh(a_x @ weights["Wc"].T + weights["bc"])  # c̃<t> (B, H)
    c = gamma_u * c_tilde + gamma_f * c_prev  # c<t> (B, H)
    tanh_c = np.tanh(c)  # (B, H)
    a = gamma_o * tanh_c  # a<t> (B, H)
    cache = {
        "a_x": a_x,
        "c_prev": c_prev,
        "gamma_u": gamma_u,
        "gamma_f": gamma_f,
        "gamma_o": gamma_o,
        "c_tilde": c_tilde,
        "tanh_c": tanh_c,
        "weights": weights,
    }
    return a, c, cache


def lstm_step_backward(da: np.ndarray, dc: np.ndarray, cache: dict) -> dict[str, np.ndarray]:
    """The gradients of one LSTM time step.

    da: (B, H) ∂L/∂a<t> (from the output and from step t+1)
    dc: (B, H) ∂L/∂c<t> from step t+1 only (the path through a<t> is added here)
    cache: from ``lstm_step_forward``.
    Returns dx (B, D), da_prev (B, H), dc_prev (B, H), dWu, dWf, dWo, dWc
    (H, H + D) and dbu, dbf, dbo, dbc (H,) (``pytorch_grads`` maps them back).
    """
    a_x, c_prev, w = cache["a_x"], cache["c_prev"], cache["weights"]
    gamma_u, gamma_f, gamma_o = cache["gamma_u"], cache["gamma_f"], cache["gamma_o"]
    c_tilde, tanh_c = cache["c_tilde"], cache["tanh_c"]
    H = c_prev.shape[1]
    # a<t> = Γo ∗ tanh c<t>
    d_gamma_o = da * tanh_c  # (B, H)
    dc = dc + da * gamma_o * (1.0 - tanh_c**2)  # all of ∂L/∂c<t> (B, H)
    # c<t> = Γu ∗ c̃<t> + Γf ∗ c<t-1>
    d_gamma_u = dc * c_tilde
    d_c_tilde = dc * gamma_u
    d_gamma_f = dc * c_prev
    dc_prev = dc * gamma_f
    # through σ and tanh to the pre-activations (B, H) each
    dz_u = d_gamma_u * gamma_u * (1.0 - gamma_u)
    dz_f = d_gamma_f * gamma_f * (1.0 - gamma_f)
    dz_o = d_gamma_o * gamma_o * (1.0 - gamma_o)
    dz_c = d_c_tilde * (1.0 - c_tilde**2)
    d_a_x = dz_u @ w["Wu"] + dz_f @ w["Wf"] + dz_o @ w["Wo"] + dz_c @ w["Wc"]  # (B, H + D)
    grads = {"dx": d_a_x[:, H:], "da_prev": d_a_x[:, :H], "dc_prev": dc_prev}
    for gate, dz in (("u", dz_u), ("f", dz_f), ("o", dz_o), ("c", dz_c)):
        grads[f"dW{gate}"] = dz.T @ a_x  # (H, H + D)
        grads[f"db{gate}"] = dz.sum(axis=0)  # (H,)
    return grads


# =========================================================================== #
# Fast path: the fused whole-sequence layer used for training and sampling
# =========================================================================== #

SPAN_BYTES = 2 * 1024 * 1024  # per span of backward time steps: small enough to stay in a core's L2 cache


def steps_per_span(bytes_per_step: int) -> int:
    """Time steps per span of a backward loop whose step-independent factors are
    computed span by span, so that they are still in the core's cache (L2)
    when the loop reads them, instead of for the whole chunk at once."""
    return max(1, SPAN_BYTES // bytes_per_step)


class LSTM(Recurrent):
    """The LSTM over a whole chunk, fused gates in PyTorch's order (i, f, g, o).

    Computes the reference's a<t> and c<t> for t = 1 … T. With the pre-activations
    z = W_ih x<t> + W_hh a<t-1> + b in four H-wide blocks (Γu = σ(z_i), Γf = σ(z_f),
    c̃<t> = tanh(z_g), Γo = σ(z_o)), the chunk's input projection W_ih x<t> + b
    is one GEMM before the loop, a time step one (B, H) @ (H, 4H) GEMM and
    element-wise operations in place.

    tanh(z) is computed as 2σ(2z) − 1, so one exp serves the whole (B, 4H) block:
    copies of W_ih (or the first layer's table), of the bias and of W_hh are
    multiplied by the block factors s = (−1, −1, −2, −1), so the chunk's input
    projection comes out scaled and a step's exp(s ∗ z) needs no scaling of its
    own, and 1/(1 + e) for i, f, o and 2/(1 + e) for g is one division by the
    numerators −s. (Powers of two: the same bits as scaling the products.)

    Backward, per time step (δa = ∂L/∂a<t>, δc = ∂L/∂c<t> from t+1):

        δc += δa ∗ Γo ∗ (1 − tanh² c<t>)
        δz_o = δa ∗ tanh c<t> ∗ Γo(1 − Γo)       δz_i = δc ∗ c̃ ∗ Γu(1 − Γu)
        δz_f = δc ∗ c<t-1> ∗ Γf(1 − Γf)          δz_g = δc ∗ Γu ∗ (1 − c̃²)
        ∂L/∂c<t-1> = δc ∗ Γf,   ∂L/∂a<t-1> += δz @ W_hh

    The factors of δa and δc there are computed vectorized, a span of some time
    steps at a time just before the loop reaches them, so that the loop finds
    them in the core's cache. Step t's δz is written over its gate values,
    which nothing reads after that step.

    Memory: the workspace holds (T, B, 4H) + 3·(T, B, H) floats (gates, then
    their gradients; a<t>, c<t>, tanh c<t>), and one span's factors.
    """

    gates = 4
    state_names = ("a", "c")
    grad_over_gates = True
    forget_block = 1

    def _extra_buffers(self, T: int, B: int) -> dict[str, np.ndarray]:
        H, dt = self.hidden_size, self.dtype
        scale = self._gate_scale()
        return {
            "c_seq": np.empty((T + 1, B, H), dt),  # c<0..T>
            "tanh_c": np.empty((T, B, H), dt),  # tanh c<1..T>
            "numerator": -scale,  # (4H,) −s: 1 for i, f, o and 2 for g
            "w_hh_scaled_t": np.empty((H, 4 * H), dt),  # (s ∗ W_hh)ᵀ, contiguous (see base)
        }

    def _gate_scale(self) -> np.ndarray:
        """s (4H,): −1 for i, f, o and −2 for g, as exp(−2 z_g) gives tanh via 2σ(2z) − 1."""
        H = self.hidden_size
        scale = np.full(4 * H, -1.0, self.dtype)
        scale[2 * H : 3 * H] = -2.0
        return scale

    def _forward_loop(self, ws, state):
        a0, c0 = state
        gates, a_seq, c_seq, tanh_c = ws["gates"], ws["a_seq"], ws["c_seq"], ws["tanh_c"]
        T, B, _ = gates.shape
        H = self.hidden_size
        check_state_shape(a0, B, H)
        z_rec, tmp, numerator = ws["z_rec"], ws["tmp1"], ws["numerator"]
        one = gates.dtype.type(1.0)  # a NumPy scalar: a Python float costs a conversion per call
        w_hh_t = np.multiply(self.w_hh.T, ws["scale"], out=ws["w_hh_scaled_t"])  # (H, 4H)
        a_seq[0] = a0
        c_seq[0] = c0
        with np.errstate(over="ignore", under="ignore"):
            for t in range(T):
                g = gates[t]  # (B, 4H) scaled pre-activations → gate values
                np.matmul(a_seq[t], w_hh_t, out=z_rec)
                np.add(g, z_rec, out=g)  # s ∗ z<t>
                np.exp(g, out=g)
                np.add(g, one, out=g)
                np.divide(numerator, g, out=g)  # σ(z) for i, f, o; 2σ(2z) for g
                c_tilde = g[:, 2 * H : 3 * H]
                np.subtract(c_tilde, one, out=c_tilde)  # c̃ = tanh(z_g) = 2σ(2z) − 1
                np.multiply(g[:, H : 2 * H], c_seq[t], out=c_seq[t + 1])  # Γf ∗ c<t-1>
                np.multiply(g[:, :H], c_tilde, out=tmp)  # Γu ∗ c̃
                np.add(c_seq[t + 1], tmp, out=c_seq[t + 1])
                np.tanh(c_seq[t + 1], out=tanh_c[t])
                np.multiply(g[:, 3 * H :], tanh_c[t], out=a_seq[t + 1])  # a<t> = Γo ∗ tanh c<t>
        return a_seq[1:], (a_seq[T].copy(), c_seq[T].copy())

    def _loop_weights(self, scale):
        return {"w_hh_t": np.ascontiguousarray(self.w_hh.T * scale), "numerator": -scale}  # (H, 4H), (4H,)

    def _infer_loop(self, pre, state, weights, out):
        a_prev, c = state[0], state[1].copy()  # c<t> is updated in place
        T, B, _ = pre.shape
        H = self.hidden_size
        w_hh_t, numerator = weights["w_hh_t"], weights["numerator"]
        z_rec, tmp = np.empty((B, 4 * H), pre.dtype), np.empty((B, H), pre.dtype)
        one = pre.dtype.type(1.0)
        with np.errstate(over="ignore", under="ignore"):
            for t in range(T):  # as _forward_loop, without c<t> and tanh c<t> kept for backward
                g = pre[t]  # (B, 4H) scaled pre-activations → gate values
                np.matmul(a_prev, w_hh_t, out=z_rec)
                np.add(g, z_rec, out=g)  # s ∗ z<t>
                np.exp(g, out=g)
                np.add(g, one, out=g)
                np.divide(numerator, g, out=g)  # σ(z) for i, f, o; 2σ(2z) for g
                c_tilde = g[:, 2 * H : 3 * H]
                np.subtract(c_tilde, one, out=c_tilde)  # c̃ = tanh(z_g)
                np.multiply(g[:, H : 2 * H], c, out=c)  # Γf ∗ c<t-1>
                np.multiply(g[:, :H], c_tilde, out=tmp)  # Γu ∗ c̃
                np.add(c, tmp, out=c)  # c<t>
                np.tanh(c, out=tmp)
                a_prev = np.multiply(g[:, 3 * H :], tmp, out=out[t])  # a<t> = Γo ∗ tanh c<t>
        return out[T - 1].copy(), c

    def forward_one(self, pre, state):
        a, c = state
        H = self.hidden_size
        if not hasattr(self, "_one_bufs"):
            scale = self._gate_scale()
            self._one_bufs = (np.empty(4 * H, self.dtype), np.empty(H, self.dtype), scale, -scale)
        z_rec, tmp, scale, numerator = self._one_bufs
        np.matmul(self.w_hh, a, out=z_rec)
        pre += z_rec
        pre *= scale
        with np.errstate(over="ignore", under="ignore"):
            np.exp(pre, out=pre)
        pre += 1.0
        np.divide(numerator, pre, out=pre)  # σ(z) for i, f, o; 2σ(2z) for g
        c_tilde = pre[2 * H : 3 * H]
        c_tilde -= 1.0
        c *= pre[H : 2 * H]
        np.multiply(pre[:H], c_tilde, out=tmp)
        c += tmp
        np.tanh(c, out=tmp)
        np.multiply(pre[3 * H :], tmp, out=a)
        return a

    def _backward_loop(self, ws, grad_out, grad_state):
        gates, c_seq, tanh_c = ws["gates"], ws["c_seq"], ws["tanh_c"]
        T, B, _ = gates.shape
        H = self.hidden_size
        gates4 = gates.reshape(T, B, 4, H)  # gate values, blocks i, f, g, o; step t's become its δz
        # a time step touches gates and gate_factors (4H each), c, tanh c and cell_factor
        span = min(T, steps_per_span(B * (11 * H) * gates.itemsize))
        gate_factors, cell_factor = self._factor_buffers(ws, span)  # (S, B, 4H), (S, B, H)
        gate_factors4 = gate_factors.reshape(span, B, 4, H)
        da = np.zeros((B, H), self.dtype)  # ∂L/∂a<t>, recurrent part
        dc = np.zeros((B, H), self.dtype)  # ∂L/∂c<t>
        dc_prev = np.empty((B, H), self.dtype)  # ∂L/∂c<t-1>
        if grad_state is not None:
            da += grad_state[0]
            dc += grad_state[1]
        tmp = ws["tmp1"]
        w_hh = self.w_hh
        for end in range(T, 0, -span):
            start = max(0, end - span)
            n = end - start
            self._backward_factors(  # c_seq[t] holds c<t-1> of step t
                gates[start:end], c_seq[start:end], tanh_c[start:end], cell_factor[:n], gate_factors[:n]
            )
            for t in range(end - 1, start - 1, -1):
                j, g = t - start, gates4[t]
                np.add(da, grad_out[t], out=da)
                np.multiply(da, cell_factor[j], out=tmp)
                np.add(dc, tmp, out=dc)  # δc<t>
                np.multiply(dc, g[:, 1], out=dc_prev)  # ∂L/∂c<t-1> = δc ∗ Γf, before Γf is overwritten
                np.multiply(gate_factors4[j, :, 3], da, out=g[:, 3])  # δz_o
                np.multiply(gate_factors4[j, :, :3], dc[:, None, :], out=g[:, :3])  # δz_i, δz_f, δz_g
                dc, dc_prev = dc_prev, dc
                np.matmul(gates[t], w_hh, out=da)  # ∂L/∂a<t-1> = δz @ W_hh
        return (da, dc)

    @staticmethod
    def _factor_buffers(ws, span: int) -> tuple[np.ndarray, np.ndarray]:
        """The (span, B, 4H) and (span, B, H) arrays for one span's backward factors,
        made at the first backward pass of the workspace (or of a longer span)."""
        gate_factors = ws.get("gate_factors")
        if gate_factors is None or gate_factors.shape[0] < span:
            _, B, H4 = ws["gates"].shape
            gate_factors = ws["gate_factors"] = np.empty((span, B, H4), ws["gates"].dtype)
            ws["cell_factor"] = np.empty((span, B, H4 // 4), ws["gates"].dtype)
        return gate_factors[:span], ws["cell_factor"][:span]

    @staticmethod
    def _backward_factors(gates, c_prev, tanh_c, cell_factor, gate_factors) -> None:
        """The time-step-independent factors of the backward pass for a span of S
        steps, vectorized over the span (gates, gate_factors: (S, B, 4H); c_prev,
        tanh_c, cell_factor: (S, B, H)), into gate_factors (P) and cell_factor (K):

            P_i = c̃ ∗ Γu(1 − Γu)      P_f = c<t-1> ∗ Γf(1 − Γf)
            P_g = Γu ∗ (1 − c̃²)       P_o = tanh c<t> ∗ Γo(1 − Γo)
            K   = Γo ∗ (1 − tanh² c<t>)

        so that in the loop δz_{i,f,g} = δc ∗ P_{i,f,g} and δz_o = δa ∗ P_o.
        """
        S, B, H = tanh_c.shape
        gates4, factors4 = gates.reshape(S, B, 4, H), gate_factors.reshape(S, B, 4, H)  # blocks i, f, g, o
        one = gates.dtype.type(1.0)
        np.multiply(gates, gates, out=gate_factors)
        np.subtract(gates, gate_factors, out=gate_factors)  # Γ(1 − Γ) (wrong for the g block, fixed next)
        factor_g, c_tilde = factors4[:, :, 2], gates4[:, :, 2]
        np.multiply(c_tilde, c_tilde, out=factor_g)
        np.subtract(one, factor_g, out=factor_g)
        np.multiply(factors4[:, :, 0], c_tilde, out=factors4[:, :, 0])
        np.multiply(factors4[:, :, 1], c_prev, out=factors4[:, :, 1])
        np.multiply(factor_g, gates4[:, :, 0], out=factor_g)
        np.multiply(factors4[:, :, 3], tanh_c, out=factors4[:, :, 3])
        np.multiply(tanh_c, tanh_c, out=cell_factor)
        np.subtract(one, cell_factor, out=cell_factor)
        np.multiply(cell_factor, gates4[:, :, 3], out=cell_factor)
