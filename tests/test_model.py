"""The whole model: gradient check through every tensor and the carried state,
the first loss, and the ability to memorise a short string."""

from __future__ import annotations

import math

import numpy as np
import pytest

from charlm.model import CharModel, ModelConfig
from charlm.optim import Adam, clip_grad_norm_
from charlm.vocab import Vocab
from tests.gradcheck import numeric_grad, rel_error, sample_indices

CELLS = ["lstm"]


def random_state(model: CharModel, B: int, rng) -> list:
    return [tuple(rng.standard_normal((B, model.config.hidden)) * 0.5 for _ in c.state_names) for c in model.rnn]


@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("layers", [1, 2, 3])
def test_full_model_gradient_every_tensor(cell, layers):
    rng = np.random.default_rng(layers)
    cfg = ModelConfig(vocab_size=7, cell=cell, embed=5, hidden=6, layers=layers)
    model = CharModel(cfg, dtype=np.float64, seed=layers)
    T, B = 4, 3
    ids, targets = rng.integers(0, 7, (T, B)), rng.integers(0, 7, (T, B))
    state = random_state(model, B, rng)  # a carried, non-zero initial state
    model.loss_and_grads(ids, targets, state)
    for name, param in model.params.items():
        analytic = model.grads[name].copy()
        idx = sample_indices(param.size, 40, rng)
        numeric = numeric_grad(lambda: model.loss_and_grads(ids, targets, state)[0], param, idx)
        err = rel_error(analytic.reshape(-1)[idx], numeric.reshape(-1)[idx])
        assert err < 1e-6, f"{cell} ×{layers} ∂L/∂{name}: relative error {err:.2e}"


@pytest.mark.parametrize("cell", CELLS)
def test_gradient_with_dropout_masks(cell):
    rng = np.random.default_rng(7)
    cfg = ModelConfig(vocab_size=6, cell=cell, embed=4, hidden=5, layers=2, dropout=0.4)
    model = CharModel(cfg, dtype=np.float64, seed=3)
    T, B = 3, 2
    ids, targets = rng.integers(0, 6, (T, B)), rng.integers(0, 6, (T, B))
    masks = [(rng.random((T, B, 5)) > 0.4) / 0.6 for _ in range(2)]
    state = random_state(model, B, rng)
    model.loss_and_grads(ids, targets, state, dropout_masks=masks)
    analytic = model.grad_flat.copy()
    numeric = numeric_grad(lambda: model.loss_and_grads(ids, targets, state, dropout_masks=masks)[0], model.flat)
    assert rel_error(analytic, numeric) < 1e-6


@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("V", [10, 65, 300])
def test_first_loss_is_log_vocabulary_size(cell, V):
    model = CharModel(ModelConfig(vocab_size=V, cell=cell, embed=16, hidden=64, layers=2), seed=0)
    rng = np.random.default_rng(0)
    ids = rng.integers(0, V, (32, 8))
    loss, _ = model.loss_and_grads(ids, rng.integers(0, V, (32, 8)), model.zero_state(8))
    assert abs(loss - math.log(V)) < 0.1


def overfit(cell: str, text: str, steps: int = 400) -> float:
    vocab = Vocab.from_text(text)
    ids = vocab.encode(text).ids.astype(np.int64)
    model = CharModel(ModelConfig(len(vocab), cell, embed=16, hidden=64, layers=1), seed=0)
    opt = Adam(model.num_params)
    x, y = ids[:-1].reshape(-1, 1), ids[1:].reshape(-1, 1)  # the whole string as one (T, 1) chunk
    loss = math.inf
    for _ in range(steps):
        loss, _ = model.loss_and_grads(x, y, model.zero_state(1))
        clip_grad_norm_(model.grad_flat, 5.0)
        opt.step(model.flat, model.grad_flat, 1e-2)
    loss, _ = model.loss_and_grads(x, y, model.zero_state(1))
    return loss


@pytest.mark.parametrize("cell", CELLS)
def test_tiny_model_overfits_a_short_string(cell):
    text = (
        "It was the best of times, it was the worst of times, it was the age of wisdom, "
        "it was the age of foolishness, it was the epoch of belief, it was the epoch of "
        "incredulity, it was the season of Light, it"
    )[:200]
    assert len(text) == 200
    assert overfit(cell, text) < 0.05


def test_parameters_are_named_like_pytorch():
    model = CharModel(ModelConfig(vocab_size=11, embed=3, hidden=4, layers=2))
    shapes = {n: p.shape for n, p in model.params.items()}
    assert shapes["embedding.weight"] == (11, 3)
    assert shapes["rnn.weight_ih_l0"] == (16, 3)
    assert shapes["rnn.weight_hh_l0"] == (16, 4)
    assert shapes["rnn.bias_ih_l1"] == (16,)
    assert shapes["decoder.weight"] == (11, 4)
    # the forget-gate block (second quarter) starts at 1
    assert np.all(model.params["rnn.bias_ih_l0"][4:8] == 1.0)
    assert np.all(model.params["rnn.bias_ih_l0"][:4] == 0.0)
    # every view lives in the one flat buffer
    assert all(np.shares_memory(p, model.flat) for p in model.params.values())


def test_carried_state_equals_one_long_pass():
    """Two chunks with the state carried give the same logits as one chunk of both."""
    rng = np.random.default_rng(8)
    model = CharModel(ModelConfig(vocab_size=9, embed=4, hidden=8, layers=2), dtype=np.float64)
    ids = rng.integers(0, 9, (10, 3))
    whole, _ = model.forward_logits(ids, model.zero_state(3))
    first, state = model.forward_logits(ids[:4], model.zero_state(3))
    first = first.copy()
    second, _ = model.forward_logits(ids[4:], state)
    assert np.allclose(np.concatenate([first, second]), whole)
