"""The recurrent cells of charlm.cells: the reference step pairs against central
differences, the fused fast path against the reference step by step, and the
fast path's own gradient checks, sampling step, table path and workspace."""

from __future__ import annotations

import numpy as np
import pytest

from charlm.cells import GRU, LSTM, RNN, lstm, new_layer, notes_weights, pytorch_grads
from tests.gradcheck import (
    REFERENCE,
    make_layer,
    numeric_grad,
    reference_backward,
    reference_forward,
    rel_error,
)

TOL = 1e-6
CELLS = [LSTM, GRU, RNN]
# The LSTM's backward computes its factors span by span (lstm.steps_per_span): uneven spans too
WITH_SPANS = [(LSTM, None), (LSTM, 1), (LSTM, 2), (GRU, None), (RNN, None)]


def chunk_setup(cls, T=5, B=3, D=4, H=6, seed=0):
    """A float64 layer, inputs, a nonzero initial state, and random projections of
    every output and of the final state: L = Σ out∗R + Σ state_T∗S."""
    rng = np.random.default_rng(seed)
    layer = make_layer(cls, D, H, rng)
    x = rng.standard_normal((T, B, D))
    state = tuple(rng.standard_normal((B, H)) for _ in cls.state_names)
    R = rng.standard_normal((T, B, H))
    S = tuple(rng.standard_normal((B, H)) for _ in cls.state_names)
    return layer, x, state, R, S


def projection(out, final, R, S) -> float:
    return float((out * R).sum() + sum((f * s).sum() for f, s in zip(final, S, strict=True)))


# --------------------------------------------------------------------------- #
# The reference step pairs
# --------------------------------------------------------------------------- #


@pytest.mark.parametrize("cls", CELLS)
def test_reference_backward_matches_central_differences(cls):
    """Three reference steps, so the gradients also flow through the carried state:
    ∂L/∂x<t>, ∂L/∂(initial state) and every weight and bias, against finite differences."""
    layer, x, state, R, S = chunk_setup(cls, T=3, seed=1)
    ref = REFERENCE[cls]
    weights = notes_weights(layer.w_ih, layer.w_hh, layer.b_ih, layer.b_hh, ref.gates)

    def loss() -> float:
        s, outs = state, []
        for x_t in x:
            *s, _ = ref.forward(x_t, *s, weights)
            outs.append(s[0])
        return projection(np.stack(outs), s, R, S)

    _, _, caches = reference_forward(layer, x, state)
    dx, d_init, d_weights = reference_backward(layer, R, S, caches)
    checks = {"x": (x, dx)}
    checks.update({f"{n}0": (s0, g0) for n, s0, g0 in zip(cls.state_names, state, d_init, strict=True)})
    checks.update({name: (weights[name], d_weights[f"d{name}"]) for name in weights})
    assert len(checks) == 1 + len(cls.state_names) + 2 * len(ref.gates)
    for name, (arr, analytic) in checks.items():
        err = rel_error(analytic, numeric_grad(loss, arr))
        assert err < TOL, f"reference {cls.__name__} ∂L/∂{name}: relative error {err:.2e}"


@pytest.mark.parametrize("cls", CELLS)
def test_notes_weights_are_named_slices_of_the_pytorch_tensors(cls):
    """W<k> = [W_hh[k] | W_ih[k]], b<k> = b_ih[k] + b_hh[k]; and pytorch_grads is its adjoint."""
    rng = np.random.default_rng(2)
    D, H = 3, 4
    layer = make_layer(cls, D, H, rng)
    gates = REFERENCE[cls].gates
    weights = notes_weights(layer.w_ih, layer.w_hh, layer.b_ih, layer.b_hh, gates)
    for k, gate in enumerate(gates):
        rows = slice(k * H, (k + 1) * H)
        np.testing.assert_array_equal(weights[f"W{gate}"][:, :H], layer.w_hh[rows])
        np.testing.assert_array_equal(weights[f"W{gate}"][:, H:], layer.w_ih[rows])
        np.testing.assert_array_equal(weights[f"b{gate}"], layer.b_ih[rows] + layer.b_hh[rows])
    # ⟨d_notes, ∂notes/∂tensors · v⟩ = ⟨pytorch_grads(d_notes), v⟩ for random d_notes and v
    d_notes = {f"d{name}": rng.standard_normal(w.shape) for name, w in weights.items()}
    v = {name: rng.standard_normal(getattr(layer, name).shape) for name in ("w_ih", "w_hh", "b_ih", "b_hh")}
    pushed = notes_weights(v["w_ih"], v["w_hh"], v["b_ih"], v["b_hh"], gates)
    lhs = sum(float((d_notes[f"d{name}"] * pushed[name]).sum()) for name in weights)
    back = pytorch_grads(d_notes, gates)
    rhs = sum(float((back[name] * v[name]).sum()) for name in v)
    assert lhs == pytest.approx(rhs, rel=1e-12)


# --------------------------------------------------------------------------- #
# The fast path against the reference, step by step
# --------------------------------------------------------------------------- #


@pytest.mark.parametrize("cls,span", WITH_SPANS)
def test_fast_path_matches_reference_step_by_step(cls, span, monkeypatch):
    """float64, B > 1, nonzero initial state: outputs, final state and every gradient
    (weights, biases, ∂L/∂x, ∂L/∂initial state) of the fused layer and of the
    reference step pair in a loop agree to 1e-6 relative."""
    if span is not None:
        monkeypatch.setattr(lstm, "steps_per_span", lambda bytes_per_step: span)
    layer, x, state, R, S = chunk_setup(cls, T=7, B=3, D=4, H=5, seed=3)
    out, final = layer.forward(x, state)
    ref_out, ref_final, caches = reference_forward(layer, x, state)
    assert rel_error(out, ref_out) < TOL
    for name, mine, theirs in zip(cls.state_names, final, ref_final, strict=True):
        assert rel_error(mine, theirs) < TOL, f"{cls.__name__} final {name}"

    grad_x, grad_init = layer.backward(R, x, S)
    ref_dx, ref_init, ref_notes_grads = reference_backward(layer, R, S, caches)
    ref_grads = pytorch_grads(ref_notes_grads, REFERENCE[cls].gates)
    checks = {"x": (grad_x, ref_dx)}
    checks.update({f"{n}0": pair for n, *pair in zip(cls.state_names, grad_init, ref_init, strict=True)})
    checks.update({name: (getattr(layer, f"grad_{name}"), ref_grads[name]) for name in ref_grads})
    assert len(checks) == 5 + len(cls.state_names)
    for name, (mine, theirs) in checks.items():
        err = rel_error(mine, theirs)
        assert err < TOL, f"{cls.__name__} ∂L/∂{name}: fast path vs reference, relative error {err:.2e}"


@pytest.mark.parametrize("cls", CELLS)
@pytest.mark.parametrize("dtype,tol", [(np.float64, 1e-12), (np.float32, 2e-5)])
def test_fast_path_forward_matches_reference_in_saturation(cls, dtype, tol):
    """Large inputs saturate the gates; float32 stays within 2e-5 of the float64 reference."""
    rng = np.random.default_rng(1)
    T, B, D, H = 7, 5, 6, 8
    layer = make_layer(cls, D, H, rng, dtype)
    x = rng.standard_normal((T, B, D)).astype(dtype) * 3
    state = tuple(rng.standard_normal((B, H)).astype(dtype) for _ in cls.state_names)
    out, final = layer.forward(x, state)
    as64 = make_layer(cls, D, H, rng)
    for name in ("w_ih", "w_hh", "b_ih", "b_hh"):
        getattr(as64, name)[...] = getattr(layer, name)
    ref, ref_final, _ = reference_forward(as64, x.astype(np.float64), tuple(s.astype(np.float64) for s in state))
    assert np.max(np.abs(out - ref)) < tol
    assert all(np.max(np.abs(f - r)) < tol for f, r in zip(final, ref_final, strict=True))


@pytest.mark.parametrize("cls", CELLS)
def test_forward_one_matches_sequence_forward(cls):
    """The batch-1 sampling step computes the same a<t> as the training forward."""
    rng = np.random.default_rng(2)
    D, H, T = 3, 5, 6
    layer = make_layer(cls, D, H, rng)
    x = rng.standard_normal((T, 1, D))
    out, _ = layer.forward(x, layer.zero_state(1))
    state = tuple(np.zeros(H) for _ in cls.state_names)
    for t in range(T):
        pre = layer.w_ih @ x[t, 0] + layer.b_ih + layer.b_hh
        a = layer.forward_one(pre, state)
        assert a is state[0]
        assert np.allclose(a, out[t, 0], atol=1e-12)


# --------------------------------------------------------------------------- #
# The fast path's own checks
# --------------------------------------------------------------------------- #


@pytest.mark.parametrize("cls,span", WITH_SPANS)
def test_fast_path_gradients_through_carried_state(cls, span, monkeypatch):
    if span is not None:
        monkeypatch.setattr(lstm, "steps_per_span", lambda bytes_per_step: span)
    layer, x, state, R, S = chunk_setup(cls)

    def loss() -> float:
        return projection(*layer.forward(x, state), R, S)

    loss()
    grad_x, grad_state = layer.backward(R, x, S)
    checks = {n: (getattr(layer, n), getattr(layer, f"grad_{n}").copy()) for n in ("w_ih", "w_hh", "b_ih", "b_hh")}
    checks["x"] = (x, grad_x)
    checks.update({f"{n}0": (s0, g0) for n, s0, g0 in zip(layer.state_names, state, grad_state, strict=True)})
    for name, (arr, analytic) in checks.items():
        err = rel_error(analytic, numeric_grad(loss, arr))
        assert err < TOL, f"{cls.__name__} ∂L/∂{name}: relative error {err:.2e}"


@pytest.mark.parametrize("cls", CELLS)
@pytest.mark.parametrize("sign", [1.0, -1.0])
def test_saturated_gates_stay_finite(cls, sign):
    rng = np.random.default_rng(3)
    layer = make_layer(cls, 2, 3, rng, np.float32)
    x = np.full((4, 2, 2), sign * 1e4, np.float32)
    with np.errstate(all="raise"):
        out, _ = layer.forward(x, layer.zero_state(2))
    assert np.isfinite(out).all() and np.abs(out).max() <= 1.0


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
    """The notes' GRU applies Γr before the recurrent product; nn.GRU after. Same
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


@pytest.mark.parametrize("cls", CELLS)
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


@pytest.mark.parametrize("cls", CELLS)
def test_table_gather_is_the_input_projection_of_one_hot_inputs(cls):
    rng = np.random.default_rng(0)
    V, H, T, B = 7, 4, 5, 3
    layer = make_layer(cls, V, H, rng)
    ids = rng.integers(0, V, (T, B))
    table = layer.w_ih.T + layer.b_ih + layer.b_hh  # (V, G·H): the projection of each one-hot input
    state = tuple(rng.standard_normal((B, H)) for _ in cls.state_names)
    out, _ = layer.forward_from_table(ids, table, state)
    out = out.copy()
    ref, _ = layer.forward(np.eye(V)[ids], state)
    np.testing.assert_allclose(out, ref, rtol=0, atol=1e-12)


@pytest.mark.parametrize("cls", CELLS)
def test_backward_runs_once_per_forward(cls):
    """The LSTM and RNN write their gradients over the gate values, so a second
    backward of the same forward would read gradients as gates: it is refused."""
    layer, x, state, R, S = chunk_setup(cls)
    with pytest.raises(RuntimeError, match="one backward per forward"):
        layer.backward(R, x, S)  # no forward yet
    layer.forward(x, state)
    layer.backward(R, x, S)
    with pytest.raises(RuntimeError, match="one backward per forward"):
        layer.backward(R, x, S)
    layer.forward(x, state)
    layer.backward(R, x, S)  # a new forward, a new backward


@pytest.mark.parametrize("cls", [LSTM, RNN])
def test_gate_gradients_share_the_gate_values_memory(cls, monkeypatch):
    """One (T, B, G·H) array per LSTM or RNN layer, not two: at config C's block
    (2×512, 32 rows × 100 steps) that is 26 MB less per layer and process."""
    monkeypatch.setattr(lstm, "steps_per_span", lambda bytes_per_step: 2)  # the LSTM's span buffers: (2, B, 4H)
    T, B, D, H = 7, 3, 4, 5
    layer = make_layer(cls, D, H, np.random.default_rng(0), np.float32)
    rng = np.random.default_rng(1)
    layer.forward(rng.standard_normal((T, B, D)).astype(np.float32), layer.zero_state(B))
    layer.backward(rng.standard_normal((T, B, H)).astype(np.float32), None)
    ws = layer._last_ws
    full = {id(a) for a in ws.values() if isinstance(a, np.ndarray) and a.shape == (T, B, cls.gates * H)}
    assert len(full) == 1
    assert layer.grad_pre() is ws["gates"]
