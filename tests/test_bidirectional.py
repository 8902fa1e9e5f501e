"""charlm.cells.Bidirectional: gradients through both directions against central
differences, and its output against the reference steps run each way."""

from __future__ import annotations

import numpy as np
import pytest

from charlm.cells import GRU, LSTM, RNN, Bidirectional
from tests.gradcheck import make_layer, numeric_grad, reference_forward, rel_error

TOL = 1e-6


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
    ref_f, _, _ = reference_forward(fwd, x, (np.zeros((B, H)),))
    ref_b, _, _ = reference_forward(bwd, x[::-1], (np.zeros((B, H)),))
    assert np.allclose(out[:, :, :H], ref_f, atol=1e-12)
    assert np.allclose(out[:, :, H:], ref_b[::-1], atol=1e-12)
    # a→<1> sees only x<1>; a←<1> changes when the last input changes
    x2 = x.copy()
    x2[-1] += 1.0
    out2, _ = Bidirectional(fwd, bwd).forward(x2)
    assert np.allclose(out2[0, :, :H], out[0, :, :H]) and not np.allclose(out2[0, :, H:], out[0, :, H:])
