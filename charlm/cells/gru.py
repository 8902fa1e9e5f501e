"""The notes' full gated recurrent unit: the reference step pair, then the fused fast path.

    Γr = σ(Wr[c<t-1>, x<t>] + br)                 (relevance gate)
    Γu = σ(Wu[c<t-1>, x<t>] + bu)                 (update gate)
    c̃<t> = tanh(Wc[Γr ∗ c<t-1>, x<t>] + bc)       (candidate)
    c<t> = Γu ∗ c̃<t> + (1 − Γu) ∗ c<t-1>
    a<t> = c<t>

The memory cell is the hidden state. The tensors are named and shaped like
``nn.GRU``'s (``weight_ih`` (3H, D), ``weight_hh`` (3H, H), two biases), blocks
in the order r, u, c̃: Wr = [W_hh[r] | W_ih[r]] (H, H + D), br = b_ih[r] + b_hh[r],
and so on (``GATES``, ``base.notes_weights``).

Γr multiplies c<t-1> *before* the recurrent product, as in the notes. PyTorch's
``nn.GRU`` applies it after, Γr ∗ (W_hh[c̃] c<t-1> + b_hh[c̃]), and swaps the
roles of Γu and 1 − Γu, so these tensors do not load into it.
"""

from __future__ import annotations

import numpy as np

from charlm.cells.base import Recurrent, check_state_shape, sigmoid, sigmoid_

GATES = ("r", "u", "c")  # the notes' names of the blocks r, u, c̃

# =========================================================================== #
# Reference: one time step, exactly as the notes write it
# =========================================================================== #


def gru_step_forward(x: np.ndarray, c_prev: np.ndarray, weights: dict[str, np.ndarray]) -> tuple[np.ndarray, dict]:
    """One full-GRU time step.

    x:       (B, D) x<t>
    c_prev:  (B, H) c<t-1> (= a<t-1>)
    weights: Wr, Wu, Wc (H, H + D) and br, bu, bc (H,), the named slices of the
             PyTorch-shaped tensors: Wr = [W_hh[r] | W_ih[r]], br = b_ih[r] + b_hh[r]
             (``notes_weights(w_ih, w_hh, b_ih, b_hh, GATES)``).
    Returns c<t> (B, H) (= a<t>) and the cache for ``gru_step_backward``.
    """
    c_x = np.concatenate([c_prev, x], axis=1)  # [c<t-1>, x<t>] (B, H + D)
    gamma_r = sigmoid(c_x @ weights["Wr"].T + weights["br"])  # Γr (B, H)
    gamma_u = sigmoid(c_x @ weights["Wu"].T + weights["bu"])  # Γu (B, H)
    rc_x = np.concatenate([gamma_r * c_prev, x], axis=1)  # [Γr ∗ c<t-1>, x<t>] (B, H + D)
    c_tilde = np.tanh(rc_x @ weights["Wc"].T + weights["bc"])  # c̃<t> (B, H)
    c = gamma_u * c_tilde + (1.0 - gamma_u) * c_prev  # c<t> (B, H)
    cache = {
        "c_x": c_x,
        "rc_x": rc_x,
        "c_prev": c_prev,
        "gamma_r": gamma_r,
        "gamma_u": gamma_u,
        "c_tilde": c_tilde,
        "weights": weights,
    }
    return c, cache


def gru_step_backward(dc: np.ndarray, cache: dict) -> dict[str, np.ndarray]:
    """The gradients of one full-GRU time step.

    dc: (B, H) ∂L/∂c<t> (from the output and from step t+1)
    cache: from ``gru_step_forward``.
    Returns dx (B, D), dc_prev (B, H), dWr, dWu, dWc (H, H + D) and dbr, dbu, dbc (H,).
    """
    c_x, rc_x, c_prev, w = cache["c_x"], cache["rc_x"], cache["c_prev"], cache["weights"]
    gamma_r, gamma_u, c_tilde = cache["gamma_r"], cache["gamma_u"], cache["c_tilde"]
    H = c_prev.shape[1]
    # c<t> = Γu ∗ c̃<t> + (1 − Γu) ∗ c<t-1>
    d_gamma_u = dc * (c_tilde - c_prev)
    d_c_tilde = dc * gamma_u
    dc_prev = dc * (1.0 - gamma_u)
    # c̃<t> = tanh(Wc[Γr ∗ c<t-1>, x<t>] + bc)
    dz_c = d_c_tilde * (1.0 - c_tilde**2)  # (B, H)
    d_rc_x = dz_c @ w["Wc"]  # (B, H + D)
    d_gamma_r = d_rc_x[:, :H] * c_prev
    dc_prev = dc_prev + d_rc_x[:, :H] * gamma_r
    # Γr, Γu = σ(W[c<t-1>, x<t>] + b)
    dz_r = d_gamma_r * gamma_r * (1.0 - gamma_r)
    dz_u = d_gamma_u * gamma_u * (1.0 - gamma_u)
    d_c_x = dz_r @ w["Wr"] + dz_u @ w["Wu"]  # (B, H + D)
    grads = {"dx": d_c_x[:, H:] + d_rc_x[:, H:], "dc_prev": dc_prev + d_c_x[:, :H]}
    for gate, dz, inputs in (("r", dz_r, c_x), ("u", dz_u, c_x), ("c", dz_c, rc_x)):
        grads[f"dW{gate}"] = dz.T @ inputs  # (H, H + D)
        grads[f"db{gate}"] = dz.sum(axis=0)  # (H,)
    return grads


# =========================================================================== #
# Fast path: the fused whole-sequence layer used for training and sampling
# =========================================================================== #


class GRU(Recurrent):
    """The full GRU over a whole chunk, fused blocks in the order (r, u, c̃).

    A time step is one (B, 2H) GEMM for Γr, Γu, the product Γr ∗ c<t-1>, and
    one (B, H) GEMM for c̃. σ(z) = 1 / (1 + exp(−z)) and tanh(z) = 2 / (1 + exp(−2z)) − 1
    share one exp each; their factors −1 and −2 are folded into scaled copies of
    W_ih, the bias and W_hh.

    Backward, per time step (δa = ∂L/∂c<t>):

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
            "rc_prev": np.empty((T, B, H), dt),  # s = Γr ∗ c<t-1>
            "one_minus_u": np.empty((T, B, H), dt),  # 1 − Γu, backward only
            "w_ru_t": np.empty((H, 2 * H), dt),  # −W_hh[r, u]ᵀ, contiguous
            "w_c_t": np.empty((H, H), dt),  # −2 W_hh[c̃]ᵀ
            "z_ru": np.empty((B, 2 * H), dt),  # recurrent projection for r, u
        }

    def _gate_scale(self) -> np.ndarray:
        H = self.hidden_size
        scale = np.full(3 * H, -1.0, self.dtype)
        scale[2 * H :] = -2.0  # exp(−2 z_c) gives tanh via 2σ(2z) − 1
        return scale

    def _forward_loop(self, ws, state):
        (a0,) = state
        gates, c_seq, rc_prev = ws["gates"], ws["a_seq"], ws["rc_prev"]  # a<t> = c<t>
        T, B, _ = gates.shape
        H = self.hidden_size
        check_state_shape(a0, B, H)
        scale = ws["scale"]  # −1 for r, u; −2 for c̃
        w_ru = np.multiply(self.w_hh[: 2 * H].T, scale[: 2 * H], out=ws["w_ru_t"])  # (H, 2H)
        w_c = np.multiply(self.w_hh[2 * H :].T, scale[2 * H :], out=ws["w_c_t"])  # (H, H)
        z_ru, z_c, tmp = ws["z_ru"], ws["tmp1"], ws["tmp2"]
        one, two = gates.dtype.type(1.0), gates.dtype.type(2.0)
        c_seq[0] = a0
        with np.errstate(over="ignore", under="ignore"):
            for t in range(T):
                g = gates[t]  # (B, 3H) scaled pre-activations → Γr, Γu, c̃
                ru, c_tilde = g[:, : 2 * H], g[:, 2 * H :]
                np.matmul(c_seq[t], w_ru, out=z_ru)
                np.add(z_ru, ru, out=z_ru)
                np.exp(z_ru, out=z_ru)
                np.add(z_ru, one, out=z_ru)
                np.reciprocal(z_ru, out=ru)  # Γr, Γu
                np.multiply(g[:, :H], c_seq[t], out=rc_prev[t])  # s = Γr ∗ c<t-1>
                np.matmul(rc_prev[t], w_c, out=z_c)
                np.add(z_c, c_tilde, out=z_c)
                np.exp(z_c, out=z_c)
                np.add(z_c, one, out=z_c)
                np.divide(two, z_c, out=z_c)
                np.subtract(z_c, one, out=c_tilde)  # c̃<t>
                np.subtract(c_tilde, c_seq[t], out=tmp)
                np.multiply(tmp, g[:, H : 2 * H], out=tmp)
                np.add(c_seq[t], tmp, out=c_seq[t + 1])  # c<t> = c<t-1> + Γu ∗ (c̃<t> − c<t-1>)
        return c_seq[1:], (c_seq[T].copy(),)

    def _loop_weights(self, scale):
        H = self.hidden_size
        return {
            "w_ru_t": np.ascontiguousarray(self.w_hh[: 2 * H].T * scale[: 2 * H]),  # −W_hh[r, u]ᵀ (H, 2H)
            "w_c_t": np.ascontiguousarray(self.w_hh[2 * H :].T * scale[2 * H :]),  # −2 W_hh[c̃]ᵀ (H, H)
        }

    def _infer_loop(self, pre, state, weights, out):
        T, B, _ = pre.shape
        H, dt = self.hidden_size, pre.dtype
        w_ru, w_c = weights["w_ru_t"], weights["w_c_t"]
        z_ru, z_c, tmp, rc_prev = (
            np.empty((B, 2 * H), dt),
            np.empty((B, H), dt),
            np.empty((B, H), dt),
            np.empty((B, H), dt),
        )
        one, two = dt.type(1.0), dt.type(2.0)
        c_prev = state[0]
        with np.errstate(over="ignore", under="ignore"):
            for t in range(T):  # as _forward_loop, without Γr ∗ c<t-1> kept for backward
                g = pre[t]  # (B, 3H) scaled pre-activations → Γr, Γu, c̃
                ru, c_tilde = g[:, : 2 * H], g[:, 2 * H :]
                np.matmul(c_prev, w_ru, out=z_ru)
                np.add(z_ru, ru, out=z_ru)
                np.exp(z_ru, out=z_ru)
                np.add(z_ru, one, out=z_ru)
                np.reciprocal(z_ru, out=ru)  # Γr, Γu
                np.multiply(g[:, :H], c_prev, out=rc_prev)  # Γr ∗ c<t-1>
                np.matmul(rc_prev, w_c, out=z_c)
                np.add(z_c, c_tilde, out=z_c)
                np.exp(z_c, out=z_c)
                np.add(z_c, one, out=z_c)
                np.divide(two, z_c, out=z_c)
                np.subtract(z_c, one, out=c_tilde)  # c̃<t>
                np.subtract(c_tilde, c_prev, out=tmp)
                np.multiply(tmp, g[:, H : 2 * H], out=tmp)
                c_prev = np.add(c_prev, tmp, out=out[t])  # c<t> = c<t-1> + Γu ∗ (c̃<t> − c<t-1>)
        return (out[T - 1].copy(),)

    def forward_one(self, pre, state):
        (a,) = state
        H = self.hidden_size
        if not hasattr(self, "_one_bufs"):
            self._one_bufs = (np.empty(2 * H, self.dtype), np.empty(H, self.dtype), np.empty(H, self.dtype))
        z_ru, rc_prev, tmp = self._one_bufs
        np.matmul(self.w_hh[: 2 * H], a, out=z_ru)
        ru = pre[: 2 * H]
        ru += z_ru
        with np.errstate(over="ignore"):
            sigmoid_(ru)  # Γr, Γu
        np.multiply(pre[:H], a, out=rc_prev)
        np.matmul(self.w_hh[2 * H :], rc_prev, out=tmp)
        c_tilde = pre[2 * H :]
        c_tilde += tmp
        np.tanh(c_tilde, out=c_tilde)  # c̃<t>
        np.subtract(c_tilde, a, out=tmp)
        tmp *= pre[H : 2 * H]
        a += tmp
        return a

    def _backward_loop(self, ws, grad_out, grad_state):
        gates, c_seq, one_minus_u, grad_z = ws["gates"], ws["a_seq"], ws["one_minus_u"], ws["grad_z"]
        T, B, _ = gates.shape
        H = self.hidden_size
        gates3 = gates.reshape(T, B, 3, H)  # gate values, blocks r, u, c̃
        factors3 = grad_z.reshape(T, B, 3, H)  # factors, then δz in place
        gamma_r, gamma_u, c_tilde, c_prev = gates3[:, :, 0], gates3[:, :, 1], gates3[:, :, 2], c_seq[:-1]
        factor_r, factor_u, factor_c = factors3[:, :, 0], factors3[:, :, 1], factors3[:, :, 2]
        # Time-step-independent factors, vectorized over all T steps before the loop:
        #   P_r = c<t-1> ∗ Γr(1 − Γr)   P_u = (c̃ − c<t-1>) ∗ Γu(1 − Γu)   P_c = Γu ∗ (1 − c̃²)   K = 1 − Γu
        # so that inside the loop δz_r = δs ∗ P_r and δz_{u,c} = δa ∗ P_{u,c}.
        np.subtract(1.0, gamma_r, out=factor_r)
        np.multiply(factor_r, gamma_r, out=factor_r)
        np.multiply(factor_r, c_prev, out=factor_r)
        np.subtract(1.0, gamma_u, out=one_minus_u)
        np.multiply(one_minus_u, gamma_u, out=factor_u)
        np.subtract(c_tilde, c_prev, out=factor_c)  # scratch
        np.multiply(factor_u, factor_c, out=factor_u)
        np.multiply(c_tilde, c_tilde, out=factor_c)
        np.subtract(1.0, factor_c, out=factor_c)
        np.multiply(factor_c, gamma_u, out=factor_c)

        da = np.zeros((B, H), self.dtype)  # ∂L/∂c<t>, recurrent part
        if grad_state is not None:
            da += grad_state[0]
        ds, tmp = ws["tmp1"], ws["tmp2"]
        da_b = da[:, None, :]  # (B, 1, H) broadcast over the u, c̃ blocks
        w_ru, w_c = self.w_hh[: 2 * H], self.w_hh[2 * H :]
        for t in range(T - 1, -1, -1):
            np.add(da, grad_out[t], out=da)
            p, dz = factors3[t], grad_z[t]  # (B, 3, H), the same memory as (B, 3H)
            np.multiply(p[:, 1:], da_b, out=p[:, 1:])  # δz_u, δz_c
            np.matmul(dz[:, 2 * H :], w_c, out=ds)  # δs, s = Γr ∗ c<t-1>
            np.multiply(p[:, 0], ds, out=p[:, 0])  # δz_r
            np.multiply(da, one_minus_u[t], out=da)  # δa ∗ (1 − Γu)
            np.multiply(ds, gates3[t, :, 0], out=ds)
            np.add(da, ds, out=da)
            np.matmul(dz[:, : 2 * H], w_ru, out=tmp)
            np.add(da, tmp, out=da)  # ∂L/∂c<t-1>
        return (da,)

    def _grad_hh(self, grad_z2d: np.ndarray, a_prev2d: np.ndarray, ws) -> None:
        H = self.hidden_size
        self.grad_w_hh[: 2 * H] += grad_z2d[:, : 2 * H].T @ a_prev2d  # against c<t-1>
        self.grad_w_hh[2 * H :] += grad_z2d[:, 2 * H :].T @ ws["rc_prev"].reshape(-1, H)  # against Γr ∗ c<t-1>
