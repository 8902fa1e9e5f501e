"""Each recurrent layer's backward pass against central differences, and the
fused, optimized layer against a plain per-gate reference implementation."""

from __future__ import annotations

import numpy as np
import pytest

from charlm import layers
from charlm.layers import GRU, LSTM, RNN, Bidirectional, new_layer, scatter_rows, softmax_cross_entropy_
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


@pytest.mark.parametrize("span", [None, 1, 2])
@pytest.mark.parametrize("cls", [LSTM, GRU, RNN])
def test_recurrent_layer_gradients_through_carried_state(cls, span, monkeypatch):
    if span is not None:  # the LSTM's backward computes its step factors span by span: uneven spans too
        monkeypatch.setattr(layers, "_steps_per_span", lambda bytes_per_step: span)
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


@pytest.mark.parametrize("cls", [LSTM, GRU, RNN])
def test_step_matches_sequence_forward(cls):
    """The batch-1 sampling step computes the same a<t> as the training forward."""
    rng = np.random.default_rng(2)
    D, H, T = 3, 5, 6
    layer = make_layer(cls, D, H, rng)
    x = rng.standard_normal((T, 1, D))
    out, _ = layer.forward(x, layer.zero_state(1))
    state = tuple(np.zeros(H) for _ in cls.state_names)
    for t in range(T):
        pre = layer.w_ih @ x[t, 0] + layer.b_ih + layer.b_hh
        a = layer.step(pre, state)
        assert a is state[0]
        assert np.allclose(a, out[t, 0], atol=1e-12)


@pytest.mark.parametrize("cls", [LSTM, GRU, RNN])
@pytest.mark.parametrize("sign", [1.0, -1.0])
def test_saturated_gates_stay_finite(cls, sign):
    rng = np.random.default_rng(3)
    layer = make_layer(cls, 2, 3, rng, np.float32)
    x = np.full((4, 2, 2), sign * 1e4, np.float32)
    with np.errstate(all="raise"):
        out, _ = layer.forward(x, layer.zero_state(2))
    assert np.isfinite(out).all() and np.abs(out).max() <= 1.0


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


def reference_rnn(x, a0, w_ih, w_hh, b_ih, b_hh):
    """a<t> = tanh(Wa[a<t-1>, x<t>] + ba), one step at a time, with Wa = [W_hh | W_ih]."""
    wa, ba = np.concatenate([w_hh, w_ih], axis=1), b_ih + b_hh
    a, outs = a0, []
    for xt in x:
        a = np.tanh(np.concatenate([a, xt], axis=1) @ wa.T + ba)
        outs.append(a)
    return np.stack(outs), (a,)


def reference_gru(x, c0, w_ih, w_hh, b_ih, b_hh):
    """The seeds' full GRU, one gate at a time: Γr applied to c<t-1> before the product."""
    H = c0.shape[1]
    sig = lambda z: 1.0 / (1.0 + np.exp(-z))  # noqa: E731
    Wr, Wu, Wc = (np.concatenate([w_hh[k * H : (k + 1) * H], w_ih[k * H : (k + 1) * H]], axis=1) for k in range(3))
    b = b_ih + b_hh
    br, bu, bc = (b[k * H : (k + 1) * H] for k in range(3))
    c, outs = c0, []
    for xt in x:
        gr = sig(np.concatenate([c, xt], axis=1) @ Wr.T + br)
        gu = sig(np.concatenate([c, xt], axis=1) @ Wu.T + bu)
        cand = np.tanh(np.concatenate([gr * c, xt], axis=1) @ Wc.T + bc)
        c = gu * cand + (1.0 - gu) * c
        outs.append(c)
    return np.stack(outs), (c,)


@pytest.mark.parametrize("cls,reference", [(GRU, reference_gru), (RNN, reference_rnn)])
@pytest.mark.parametrize("dtype,tol", [(np.float64, 1e-12), (np.float32, 2e-5)])
def test_fused_cell_matches_reference(cls, reference, dtype, tol):
    rng = np.random.default_rng(11)
    T, B, D, H = 7, 5, 6, 8
    layer = make_layer(cls, D, H, rng, dtype)
    x = rng.standard_normal((T, B, D)).astype(dtype) * 3  # large inputs saturate gates
    a0 = rng.standard_normal((B, H)).astype(dtype)
    out, (aT,) = layer.forward(x, (a0,))
    ref, (ra,) = reference(*(v.astype(np.float64) for v in (x, a0, layer.w_ih, layer.w_hh, layer.b_ih, layer.b_hh)))
    assert np.max(np.abs(out - ref)) < tol
    assert np.max(np.abs(aT - ra)) < tol


def test_rnn_weights_load_into_pytorch_rnn():
    """Same names, shapes and maths as nn.RNN(nonlinearity="tanh"): identical outputs."""
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(12)
    T, B, D, H = 6, 3, 4, 5
    layer = make_layer(RNN, D, H, rng)
    x = rng.standard_normal((T, B, D))
    a0 = rng.standard_normal((B, H))
    out, (aT,) = layer.forward(x, (a0,))
    ref = torch.nn.RNN(D, H, nonlinearity="tanh").double()
    names = {"weight_ih_l0": layer.w_ih, "weight_hh_l0": layer.w_hh, "bias_ih_l0": layer.b_ih, "bias_hh_l0": layer.b_hh}
    ref.load_state_dict({k: torch.from_numpy(v.copy()) for k, v in names.items()})
    with torch.no_grad():
        r_out, r_h = ref(torch.from_numpy(x), torch.from_numpy(a0[None]))
    assert np.allclose(out, r_out.numpy(), atol=1e-12)
    assert np.allclose(aT, r_h.numpy()[0], atol=1e-12)


def test_gru_is_not_pytorchs_gru():
    """The seeds' GRU applies Γr before the recurrent product; nn.GRU after. Same
    tensor shapes, different function, as the docstring and README say."""
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(13)
    T, B, D, H = 4, 2, 3, 4
    layer = make_layer(GRU, D, H, rng)
    x = rng.standard_normal((T, B, D))
    out, _ = layer.forward(x, layer.zero_state(B))
    ref = torch.nn.GRU(D, H).double()
    names = {"weight_ih_l0": layer.w_ih, "weight_hh_l0": layer.w_hh, "bias_ih_l0": layer.b_ih, "bias_hh_l0": layer.b_hh}
    ref.load_state_dict({k: torch.from_numpy(v.copy()) for k, v in names.items()})  # shapes match
    with torch.no_grad():
        r_out, _ = ref(torch.from_numpy(x))
    assert np.max(np.abs(out - r_out.numpy())) > 1e-3


@pytest.mark.parametrize("cls_f,cls_b", [(LSTM, LSTM), (GRU, GRU), (RNN, RNN), (GRU, LSTM)])
def test_bidirectional_gradients(cls_f, cls_b):
    """L = Σ out∗R + Σ final states∗S through both directions, against central differences."""
    rng = np.random.default_rng(14)
    T, B, D, Hf, Hb = 5, 3, 4, 6, 5
    bi = Bidirectional(make_layer(cls_f, D, Hf, rng), make_layer(cls_b, D, Hb, rng))
    x = rng.standard_normal((T, B, D))
    state = tuple(tuple(rng.standard_normal((B, c.hidden_size)) for _ in c.state_names) for c in (bi.fwd, bi.bwd))
    R = rng.standard_normal((T, B, Hf + Hb))
    S = tuple(tuple(rng.standard_normal((B, c.hidden_size)) for _ in c.state_names) for c in (bi.fwd, bi.bwd))

    def loss():
        out, final = bi.forward(x, state)
        total = float((out * R).sum())
        for fin, s in zip(final, S, strict=True):
            total += sum(float((f * w).sum()) for f, w in zip(fin, s, strict=True))
        return total

    loss()
    grad_x, grad_state = bi.backward(R, x, S)
    checks = {"x": (x, grad_x)}
    for side, cell, g_init, s0 in zip(("fwd", "bwd"), (bi.fwd, bi.bwd), grad_state, state, strict=True):
        for name in ("w_ih", "w_hh", "b_ih", "b_hh"):
            checks[f"{side}.{name}"] = (getattr(cell, name), getattr(cell, f"grad_{name}").copy())
        for name, arr, g in zip(cell.state_names, s0, g_init, strict=True):
            checks[f"{side}.{name}0"] = (arr, g)
    for name, (arr, analytic) in checks.items():
        err = rel_error(analytic, numeric_grad(loss, arr))
        assert err < TOL, f"Bidirectional({cls_f.__name__}, {cls_b.__name__}) ∂L/∂{name}: relative error {err:.2e}"


def test_bidirectional_output_is_both_directions():
    """The second half of the output at step t is the backward cell run over x<T..t>."""
    rng = np.random.default_rng(15)
    T, B, D, H = 6, 2, 3, 4
    fwd, bwd = make_layer(GRU, D, H, rng), make_layer(GRU, D, H, rng)
    x = rng.standard_normal((T, B, D))
    out, _ = Bidirectional(fwd, bwd).forward(x)
    assert out.shape == (T, B, 2 * H)
    ref_f, _ = reference_gru(x, np.zeros((B, H)), fwd.w_ih, fwd.w_hh, fwd.b_ih, fwd.b_hh)
    ref_b, _ = reference_gru(x[::-1], np.zeros((B, H)), bwd.w_ih, bwd.w_hh, bwd.b_ih, bwd.b_hh)
    assert np.allclose(out[:, :, :H], ref_f, atol=1e-12)
    assert np.allclose(out[:, :, H:], ref_b[::-1], atol=1e-12)
    # a→<1> sees only x<1>; a←<1> changes when the last input changes
    x2 = x.copy()
    x2[-1] += 1.0
    out2, _ = Bidirectional(fwd, bwd).forward(x2)
    assert np.allclose(out2[0, :, :H], out[0, :, :H]) and not np.allclose(out2[0, :, H:], out[0, :, H:])


@pytest.mark.parametrize("cls", [LSTM, GRU, RNN])
def test_new_layer_is_initialised_like_the_model(cls):
    layer = new_layer(cls, 3, 16, np.random.default_rng(0))
    assert layer.w_ih.shape == (cls.gates * 16, 3) and layer.w_hh.dtype == np.float32
    assert np.abs(layer.w_hh).max() <= 0.25 and np.abs(layer.w_hh).max() > 0.2
    assert not layer.b_ih.any() and not layer.b_hh.any()  # forget bias 0 by default, as in PyTorch
    biased = new_layer(cls, 3, 16, np.random.default_rng(0), forget_bias=1.0)
    forget = biased.b_ih[16:32] if cls is LSTM else biased.b_ih[:0]
    assert np.all(forget == 1.0) and biased.b_ih.sum() == forget.sum() and not biased.b_hh.any()
    assert not any(g.any() for g in (layer.grad_w_ih, layer.grad_w_hh, layer.grad_b_ih, layer.grad_b_hh))


@pytest.mark.parametrize("bad", [-1, 7])
def test_table_gather_refuses_ids_outside_the_table(bad):
    rng = np.random.default_rng(0)
    layer = make_layer(LSTM, 3, 4, rng)
    table = rng.standard_normal((7, 16))
    ids = np.array([[0, 6], [bad, 1]])
    with pytest.raises(IndexError):
        layer.forward_from_table(ids, table, layer.zero_state(2))


def test_table_gather_is_the_input_projection_of_one_hot_inputs():
    rng = np.random.default_rng(0)
    V, H, T, B = 7, 4, 5, 3
    layer = make_layer(LSTM, V, H, rng)
    ids = rng.integers(0, V, (T, B))
    table = layer.w_ih.T + layer.b_ih + layer.b_hh  # (V, 4H): the projection of each one-hot input
    state = tuple(rng.standard_normal((B, H)) for _ in range(2))
    out, _ = layer.forward_from_table(ids, table, state)
    out = out.copy()
    ref, _ = layer.forward(np.eye(V)[ids], state)
    np.testing.assert_allclose(out, ref, rtol=0, atol=1e-12)


@pytest.mark.parametrize("cls", [LSTM, GRU, RNN])
def test_backward_runs_once_per_forward(cls):
    """The LSTM and RNN write their gradients over the gate values, so a second
    backward of the same forward would read gradients as gates: it is refused."""
    layer, x, state, R, S, loss = layer_loss_setup(cls)
    with pytest.raises(RuntimeError, match="one backward per forward"):
        layer.backward(R, x, S)  # no forward yet
    loss()
    layer.backward(R, x, S)
    with pytest.raises(RuntimeError, match="one backward per forward"):
        layer.backward(R, x, S)
    loss()
    layer.backward(R, x, S)  # a new forward, a new backward


@pytest.mark.parametrize("cls", [LSTM, RNN])
def test_gate_gradients_share_the_gate_values_memory(cls, monkeypatch):
    """One (T, B, G·H) array per LSTM or RNN layer, not two: at config C's block
    (2×512, 32 rows × 100 steps) that is 26 MB less per layer and process."""
    monkeypatch.setattr(layers, "_steps_per_span", lambda bytes_per_step: 2)  # the LSTM's span buffers: (2, B, 4H)
    T, B, D, H = 7, 3, 4, 5
    layer = make_layer(cls, D, H, np.random.default_rng(0), np.float32)
    rng = np.random.default_rng(1)
    layer.forward(rng.standard_normal((T, B, D)).astype(np.float32), layer.zero_state(B))
    layer.backward(rng.standard_normal((T, B, H)).astype(np.float32), None)
    ws = layer._last_ws
    full = {id(a) for a in ws.values() if isinstance(a, np.ndarray) and a.shape == (T, B, cls.gates * H)}
    assert len(full) == 1
    assert layer.grad_pre() is ws["pre"]
