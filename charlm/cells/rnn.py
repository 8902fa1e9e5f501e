"""The vanilla recurrent cell: the notes' reference step pair, then the fused fast path.

    a<t> = tanh(Wa[a<t-1>, x<t>] + ba)

The weights are PyTorch's ``nn.RNN(nonlinearity="tanh")`` tensors (``weight_ih``
(H, D), ``weight_hh`` (H, H), ``bias_ih``, ``bias_hh`` (H,)), so they load into
that module unchanged: Wa = [W_hh | W_ih] (H, H + D), ba = b_ih + b_hh
(``GATES``, ``base.notes_weights``).
"""

from __future__ import annotations

import numpy as np

from charlm.cells.base import Recurrent, check_state_shape

GATES = ("a",)  # one block: the notes' Wa, ba

# =========================================================================== #
# Reference: one time step, exactly as the notes write it
# =========================================================================== #


def rnn_step_forward(x: np.ndarray, a_prev: np.ndarray, weights: dict[str, np.ndarray]) -> tuple[np.ndarray, dict]:
    """One vanilla RNN time step.

    x:       (B, D) x<t>
    a_prev:  (B, H) a<t-1>
    weights: Wa (H, H + D) and ba (H,), Wa = [W_hh | W_ih], ba = b_ih + b_hh
             (``notes_weights(w_ih, w_hh, b_ih, b_hh, GATES)``).
    Returns a<t> (B, H) and the cache for ``rnn_step_backward``.
    """
    a_x = np.concatenate([a_prev, x], axis=1)  # [a<t-1>, x<t>] (B, H + D)
    a = np.tanh(a_x @ weights["Wa"].T + weights["ba"])  # a<t> (B, H)
    return a, {"a_x": a_x, "a": a, "weights": weights}


def rnn_step_backward(da: np.ndarray, cache: dict) -> dict[str, np.ndarray]:
    """The gradients of one vanilla RNN time step.

    da: (B, H) ∂L/∂a<t> (from the output and from step t+1)
    cache: from ``rnn_step_forward``.
    Returns dx (B, D), da_prev (B, H), dWa (H, H + D) and dba (H,).
    """
    a_x, a, w = cache["a_x"], cache["a"], cache["weights"]
    H = a.shape[1]
    dz = da * (1.0 - a**2)  # through tanh (B, H)
    d_a_x = dz @ w["Wa"]  # (B, H + D)
    return {"dx": d_a_x[:, H:], "da_prev": d_a_x[:, :H], "dWa": dz.T @ a_x, "dba": dz.sum(axis=0)}


# =========================================================================== #
# Fast path: the fused whole-sequence layer used for training and sampling
# =========================================================================== #


class RNN(Recurrent):
    """The vanilla RNN over a whole chunk:

        a<t> = tanh(Wa[a<t-1>, x<t>] + ba) = tanh(W_hh a<t-1> + W_ih x<t> + b_ih + b_hh)

    tanh(z) is computed as 2 / (1 + exp(−2z)) − 1, since NumPy's float32 exp is
    faster than its tanh here. The factor −2 is folded into scaled copies of
    W_ih, the bias and W_hh, so a time step is one GEMM and four element-wise
    operations.

    Backward, per time step (δa = ∂L/∂a<t>):

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
        return {"w_hh_scaled_t": np.empty((H, H), self.dtype)}  # −2 W_hhᵀ, contiguous

    def _gate_scale(self) -> np.ndarray:
        return np.full(self.hidden_size, -2.0, self.dtype)  # exp(−2z) gives tanh via 2σ(2z) − 1

    def _forward_loop(self, ws, state):
        (a0,) = state
        z_in, a_seq, z = ws["gates"], ws["a_seq"], ws["z_rec"]  # z_in: −2 (W_ih x<t> + b), (T, B, H)
        T, B, _ = z_in.shape
        check_state_shape(a0, B, self.hidden_size)
        w_t = np.multiply(self.w_hh.T, ws["scale"], out=ws["w_hh_scaled_t"])  # −2 W_hhᵀ, (H, H)
        one, two = z_in.dtype.type(1.0), z_in.dtype.type(2.0)
        a_seq[0] = a0
        with np.errstate(over="ignore", under="ignore"):
            for t in range(T):
                np.matmul(a_seq[t], w_t, out=z)
                np.add(z, z_in[t], out=z)  # −2 z<t>, (B, H)
                np.exp(z, out=z)
                np.add(z, one, out=z)
                np.divide(two, z, out=z)
                np.subtract(z, one, out=a_seq[t + 1])  # a<t> = tanh z<t>
        return a_seq[1:], (a_seq[T].copy(),)

    def _loop_weights(self, scale):
        return {"w_hh_t": np.ascontiguousarray(self.w_hh.T * scale)}  # −2 W_hhᵀ (H, H)

    def _infer_loop(self, pre, state, weights, out):
        w_t, a_prev = weights["w_hh_t"], state[0]
        z_rec = np.empty_like(a_prev)  # (B, H)
        one, two = pre.dtype.type(1.0), pre.dtype.type(2.0)
        with np.errstate(over="ignore", under="ignore"):
            for t in range(pre.shape[0]):  # as _forward_loop; z<t> is computed in pre[t]
                z = pre[t]  # −2 (W_ih x<t> + b), (B, H)
                np.matmul(a_prev, w_t, out=z_rec)
                np.add(z, z_rec, out=z)
                np.exp(z, out=z)
                np.add(z, one, out=z)
                np.divide(two, z, out=z)
                a_prev = np.subtract(z, one, out=out[t])  # a<t> = tanh z<t>
        return (out[-1].copy(),)

    def forward_one(self, pre, state):
        (a,) = state
        if not hasattr(self, "_one_buf"):
            self._one_buf = np.empty(self.hidden_size, self.dtype)
        z_rec = self._one_buf
        np.matmul(self.w_hh, a, out=z_rec)
        pre += z_rec
        np.tanh(pre, out=a)  # at batch 1 np.tanh beats the exp route (fewer calls)
        return a

    def _backward_loop(self, ws, grad_out, grad_state):
        a_seq, grad_z = ws["a_seq"], ws["grad_z"]
        T, B, H = grad_z.shape
        np.multiply(a_seq[1:], a_seq[1:], out=grad_z)
        np.subtract(1.0, grad_z, out=grad_z)  # 1 − a<t>², (T, B, H)
        da = np.zeros((B, H), self.dtype)  # ∂L/∂a<t>, recurrent part
        if grad_state is not None:
            da += grad_state[0]
        w_hh = self.w_hh
        for t in range(T - 1, -1, -1):
            np.add(da, grad_out[t], out=da)
            np.multiply(grad_z[t], da, out=grad_z[t])  # δz<t>
            np.matmul(grad_z[t], w_hh, out=da)  # ∂L/∂a<t-1> = δz @ W_hh
        return (da,)
