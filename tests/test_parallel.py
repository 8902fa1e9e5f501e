"""Row-block data parallelism computes exactly the serial gradient."""

from __future__ import annotations

import numpy as np
import pytest

from charlm.model import CharModel, ModelConfig
from charlm.parallel import DataParallel, row_blocks


@pytest.mark.parametrize("B,workers", [(7, 2), (8, 3), (5, 5), (4, 1)])
def test_row_blocks_cover_every_row_once(B, workers):
    blocks = row_blocks(B, workers)
    rows = [r for b in blocks for r in range(b.start, b.stop)]
    assert rows == list(range(B))
    assert len(blocks) == min(workers, B)


@pytest.mark.parametrize("dropout", [0.0, 0.3])
@pytest.mark.parametrize("workers", [2, 3])
def test_parallel_gradient_equals_serial(dropout, workers):
    cfg = ModelConfig(vocab_size=9, embed=4, hidden=6, layers=2, dropout=dropout)
    serial = CharModel(cfg, dtype=np.float64, seed=5)
    model = CharModel(cfg, dtype=np.float64, seed=5)
    rng = np.random.default_rng(0)
    T, B = 5, 7
    ids, targets = rng.integers(0, 9, (T, B)), rng.integers(0, 9, (T, B))
    state = [tuple(rng.standard_normal((B, 6)) for _ in c.state_names) for c in serial.rnn]
    loss_s, state_s = serial.loss_and_grads(ids, targets, state, rng=np.random.default_rng(1))
    dp = DataParallel(model, workers)
    try:
        loss_p, state_p = dp.loss_and_grads(ids, targets, state, rng=np.random.default_rng(1))
    finally:
        dp.close()
    assert loss_p == pytest.approx(loss_s, rel=1e-12)
    assert np.allclose(model.grad_flat, serial.grad_flat, rtol=1e-10, atol=1e-13)
    for a, b in zip(state_p, state_s, strict=True):
        for x, y in zip(a, b, strict=True):
            assert np.allclose(x, y, rtol=1e-12)
    # the replicas share the parameters, not the gradients
    assert all(np.shares_memory(r.flat, model.flat) for r in dp.replicas)
    assert not any(np.shares_memory(r.grad_flat, model.grad_flat) for r in dp.replicas[1:])


def test_parallel_adam_step_equals_serial():
    from charlm.optim import Adam

    rng = np.random.default_rng(3)
    n = 1001
    p1 = rng.standard_normal(n).astype(np.float32)
    p2 = p1.copy()
    a1, a2 = Adam(n), Adam(n)
    dp = DataParallel(CharModel(ModelConfig(vocab_size=3, embed=2, hidden=2, layers=1)), 2)
    try:
        for _ in range(5):
            g = rng.standard_normal(n).astype(np.float32)
            a1.step(p1, g, 1e-2)
            a2.step(p2, g, 1e-2, run=dp.run_all)
    finally:
        dp.close()
    assert np.array_equal(p1, p2) and np.array_equal(a1.m, a2.m) and np.array_equal(a1.v, a2.v)
