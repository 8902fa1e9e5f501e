"""The non-recurrent layers: softmax cross-entropy and the row scatter, against
central differences and np.add.at. (The recurrent cells: tests/test_cells.py.)"""

from __future__ import annotations

import numpy as np
import pytest

from charlm.layers import log_softmax_pick, scatter_rows, softmax_cross_entropy_
from tests.gradcheck import numeric_grad, rel_error

TOL = 1e-6


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


def test_log_softmax_pick_is_the_mean_cross_entropy_per_row():
    rng = np.random.default_rng(6)
    logits = rng.standard_normal((8, 5)) * 3
    y = rng.integers(0, 5, 8)
    picked = log_softmax_pick(logits.copy(), y)
    assert picked.dtype == np.float64 and picked.shape == (8,)
    assert picked.mean() == pytest.approx(softmax_cross_entropy_(logits.copy(), y), rel=1e-12)


def test_scatter_rows_is_the_adjoint_of_a_gather():
    rng = np.random.default_rng(5)
    ids = rng.integers(0, 7, 40)
    g = rng.standard_normal((40, 3))
    expect = np.zeros((7, 3))
    np.add.at(expect, ids, g)
    assert np.allclose(scatter_rows(ids, g, 7), expect)


@pytest.mark.parametrize(("rows", "N"), [(7, 40), (500, 40), (500, 1), (500, 0)])
def test_scatter_rows_both_ways(rows, N):
    """A one-hot GEMM up to N rows, a sort and np.add.reduceat beyond (a word vocabulary): the same sums."""
    rng = np.random.default_rng(rows + N)
    ids = rng.integers(0, rows, N)
    g = rng.standard_normal((N, 3))
    expect = np.zeros((rows, 3))
    np.add.at(expect, ids, g)
    np.testing.assert_allclose(scatter_rows(ids, g, rows), expect, rtol=1e-12, atol=1e-12)
