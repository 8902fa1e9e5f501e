"""Each recurrent layer's backward pass against central differences, and the
fused, optimized layer against a plain per-gate reference implementation."""

from __future__ import annotations

import numpy as np
import pytest

from charlm.layers import LSTM, scatter_rows, softmax_cross_entropy_
from tests.gradcheck import numeric_grad, rel_error

TOL = 1e-6


def make_layer(cls, D, H, rng, dtype=np.float64):
    G = cls.gates * H
    w_ih = rng.uniform(-0.5, 0.5, (G, D)).astype(dtype)
    w_hh = rng.uniform(-0.5, 0.5, (G, H)).astype(dtype)
    b_ih = rng.uniform(-0.5, 0.5, G).astype(dtype)
    b_hh = rng.uniform(-0.5, 0.5, G).astype(dtype)
    grads = [np.zeros_like(w) for w in (w_ih, w_hh, b_ih, b_hh)]
    return cls(D, H, w_ih, w_hh, b_ih, b_hh, *grads)


def layer_loss_setup(cls, T=5, B=3, D=4, H=6, seed=0):
    """A layer, inputs, carried initial state, and random projections of
    every output and of the final state: L = Σ out∗R + Σ state_T∗S."""
    rng = np.random.default_rng(seed)
    layer = make_layer(cls, D, H, rng)
    x = rng.standard_normal((T, B, D))
    state = tuple(rng.standard_normal((B, H)) for _ in cls.state_names)
    R = rng.standard_normal((T, B, H))
    S = tuple(rng.standard_normal((B, H)) for _ in cls.state_names)

    def loss():
        out, final = layer.forward(x, state)
        return float((out * R).sum() + sum((f * s).sum() for f, s in zip(final, S, strict=True)))

    return layer, x, state, R, S, loss


@pytest.mark.parametrize("cls", [LSTM])
def test_recurrent_layer_gradients_through_carried_state(cls):
    layer, x, state, R, S, loss = layer_loss_setup(cls)
    loss()
    for g in (layer.grad_w_ih, layer.grad_w_hh, layer.grad_b_ih, layer.grad_b_hh):
        g.fill(0.0)
    grad_x, grad_state = layer.backward(R, x, S)
    checks = {
        "x": (x, grad_x),
        "w_ih": (layer.w_ih, layer.grad_w_ih.copy()),
        "w_hh": (layer.w_hh, layer.grad_w_hh.copy()),
        "b_ih": (layer.b_ih, layer.grad_b_ih.copy()),
        "b_hh": (layer.b_hh, layer.grad_b_hh.copy()),
    }
    for name, s0, g0 in zip(layer.state_names, state, grad_state, strict=True):
        checks[f"{name}0"] = (s0, g0)
    for name, (arr, analytic) in checks.items():
        numeric = numeric_grad(loss, arr)
        err = rel_error(analytic, numeric)
        assert err < TOL, f"{cls.__name__} ∂L/∂{name}: relative error {err:.2e}"


def reference_lstm(x, a0, c0, w_ih, w_hh, b_ih, b_hh):
    """The seeds' LSTM, one gate at a time, one step at a time, no tricks."""
    H = a0.shape[1]
    sig = lambda z: 1.0 / (1.0 + np.exp(-z))  # noqa: E731
    Wi, Wf, Wg, Wo = (w_ih[k * H : (k + 1) * H] for k in range(4))
    Ui, Uf, Ug, Uo = (w_hh[k * H : (k + 1) * H] for k in range(4))
    b = b_ih + b_hh
    bi, bf, bg, bo = (b[k * H : (k + 1) * H] for k in range(4))
    a, c, outs = a0, c0, []
    for xt in x:
        gu = sig(xt @ Wi.T + a @ Ui.T + bi)
        gf = sig(xt @ Wf.T + a @ Uf.T + bf)
        cand = np.tanh(xt @ Wg.T + a @ Ug.T + bg)
        go = sig(xt @ Wo.T + a @ Uo.T + bo)
        c = gf * c + gu * cand
        a = go * np.tanh(c)
        outs.append(a)
    return np.stack(outs), (a, c)


@pytest.mark.parametrize("dtype,tol", [(np.float64, 1e-12), (np.float32, 2e-5)])
def test_fused_lstm_matches_reference(dtype, tol):
    rng = np.random.default_rng(1)
    T, B, D, H = 7, 5, 6, 8
    layer = make_layer(LSTM, D, H, rng, dtype)
    x = rng.standard_normal((T, B, D)).astype(dtype) * 3  # large inputs saturate gates
    a0, c0 = (rng.standard_normal((B, H)).astype(dtype) for _ in range(2))
    out, (aT, cT) = layer.forward(x, (a0, c0))
    ref, (ra, rc) = reference_lstm(
        *(v.astype(np.float64) for v in (x, a0, c0, layer.w_ih, layer.w_hh, layer.b_ih, layer.b_hh))
    )
    assert np.max(np.abs(out - ref)) < tol
    assert np.max(np.abs(aT - ra)) < tol and np.max(np.abs(cT - rc)) < tol


def test_lstm_step_matches_sequence_forward():
    """The batch-1 sampling step computes the same a<t> as the training forward."""
    rng = np.random.default_rng(2)
    D, H, T = 3, 5, 6
    layer = make_layer(LSTM, D, H, rng)
    x = rng.standard_normal((T, 1, D))
    out, _ = layer.forward(x, layer.zero_state(1))
    a, c = np.zeros(H), np.zeros(H)
    for t in range(T):
        pre = layer.w_ih @ x[t, 0] + layer.b_ih + layer.b_hh
        layer.step(pre, (a, c))
        assert np.allclose(a, out[t, 0], atol=1e-12)


def test_lstm_saturated_gates_stay_finite():
    rng = np.random.default_rng(3)
    layer = make_layer(LSTM, 2, 3, rng, np.float32)
    x = np.full((4, 2, 2), 1e4, np.float32)
    with np.errstate(all="raise"):
        out, _ = layer.forward(x, layer.zero_state(2))
    assert np.isfinite(out).all()


def test_softmax_cross_entropy_gradient():
    rng = np.random.default_rng(4)
    logits = rng.standard_normal((6, 5)) * 3
    y = rng.integers(0, 5, 6)
    work = logits.copy()
    softmax_cross_entropy_(work, y)
    numeric = numeric_grad(lambda: softmax_cross_entropy_(logits.copy(), y), logits)
    assert rel_error(work, numeric) < TOL


def test_softmax_cross_entropy_is_stable_for_huge_logits():
    logits = np.array([[1e4, 0.0, -1e4]], np.float32)
    loss = softmax_cross_entropy_(logits, np.array([0]))
    assert loss == pytest.approx(0.0, abs=1e-6)


def test_scatter_rows_is_the_adjoint_of_a_gather():
    rng = np.random.default_rng(5)
    ids = rng.integers(0, 7, 40)
    g = rng.standard_normal((40, 3))
    expect = np.zeros((7, 3))
    np.add.at(expect, ids, g)
    assert np.allclose(scatter_rows(ids, g, 7), expect)
