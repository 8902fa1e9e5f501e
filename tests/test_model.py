"""The whole model: gradient check through every tensor and the carried state,
the first loss, and the ability to memorise a short string."""

from __future__ import annotations

import math

import numpy as np
import pytest

from charlm.model import CharModel, ModelConfig
from charlm.optim import Adam, clip_grad_norm_, learning_rate
from charlm.vocab import Vocab
from tests.gradcheck import numeric_grad, rel_error, sample_indices

CELLS = ["lstm", "gru", "rnn"]


def random_state(model: CharModel, B: int, rng) -> list:
    return [tuple(rng.standard_normal((B, model.config.hidden)) * 0.5 for _ in c.state_names) for c in model.rnn]


@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("layers,V,E", [(1, 7, 5), (2, 7, 5), (3, 7, 5), (2, 13, 3)])
def test_full_model_gradient_every_tensor(cell, layers, V, E):
    """V ≤ 2E and V > 2E take the two ways of back-propagating into the embedding."""
    rng = np.random.default_rng(layers)
    cfg = ModelConfig(vocab_size=V, cell=cell, embed=E, hidden=6, layers=layers)
    model = CharModel(cfg, dtype=np.float64, seed=layers)
    T, B = 4, 3
    ids, targets = rng.integers(0, V, (T, B)), rng.integers(0, V, (T, B))
    state = random_state(model, B, rng)  # a carried, non-zero initial state
    model.loss_and_grads(ids, targets, state)
    analytic_grads = {name: g.copy() for name, g in model.grads.items()}  # before any perturbed evaluation
    for name, param in model.params.items():
        analytic = analytic_grads[name]
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
    for step in range(steps):
        loss, _ = model.loss_and_grads(x, y, model.zero_state(1))
        clip_grad_norm_(model.grad_flat, 5.0)
        # a decaying rate: at a constant 1e-2 the GRU and RNN hover near 0.055 for hundreds of steps
        opt.step(model.flat, model.grad_flat, learning_rate(step, steps, 2e-2, 10, 0.05))
    loss, _ = model.loss_and_grads(x, y, model.zero_state(1))
    return loss


@pytest.mark.parametrize("cell", ["lstm", pytest.param("gru", marks=pytest.mark.slow), "rnn"])
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
    # every bias starts at 0, the forget-gate block (second quarter) too unless asked
    assert not model.params["rnn.bias_ih_l0"].any() and not model.params["rnn.bias_hh_l1"].any()
    biased = CharModel(ModelConfig(vocab_size=11, embed=3, hidden=4, layers=2, forget_bias=1.0))
    for layer in (0, 1):
        assert np.all(biased.params[f"rnn.bias_ih_l{layer}"][4:8] == 1.0)
        assert biased.params[f"rnn.bias_ih_l{layer}"].sum() == 4.0 and not biased.params[f"rnn.bias_hh_l{layer}"].any()
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


@pytest.mark.parametrize("cell,gates", [("lstm", 4), ("gru", 3), ("rnn", 1)])
def test_every_cell_has_pytorch_names_and_its_own_block_count(cell, gates):
    model = CharModel(ModelConfig(vocab_size=11, cell=cell, embed=3, hidden=4, layers=2, forget_bias=1.0))
    shapes = {n: p.shape for n, p in model.params.items()}
    assert shapes["rnn.weight_ih_l0"] == (gates * 4, 3)
    assert shapes["rnn.weight_ih_l1"] == (gates * 4, 4)
    assert shapes["rnn.weight_hh_l1"] == (gates * 4, 4)
    assert shapes["rnn.bias_ih_l1"] == shapes["rnn.bias_hh_l0"] == (gates * 4,)
    assert model.num_params == 11 * 3 + gates * 4 * (3 + 4 + 2) + gates * 4 * (4 + 4 + 2) + 11 * 4 + 11
    forget_bias = model.params["rnn.bias_ih_l0"][4:8] if cell == "lstm" else np.zeros(0)
    assert np.all(forget_bias == 1.0) and model.params["rnn.bias_ih_l0"].sum() == forget_bias.sum()


@pytest.mark.parametrize("cell", CELLS)
def test_dropout_is_off_for_validation_and_on_for_training(cell):
    """forward_logits (validation, perplexity, sampling's prompt) never drops; training
    with an rng draws fresh masks, so two steps on the same chunk differ."""
    rng = np.random.default_rng(9)
    model = CharModel(ModelConfig(vocab_size=8, cell=cell, embed=4, hidden=8, layers=2, dropout=0.5), seed=1)
    ids, targets = rng.integers(0, 8, (5, 2)), rng.integers(0, 8, (5, 2))
    a, _ = model.forward_logits(ids, model.zero_state(2))
    b, _ = model.forward_logits(ids, model.zero_state(2))
    assert np.array_equal(a, b)
    plain = CharModel(ModelConfig(vocab_size=8, cell=cell, embed=4, hidden=8, layers=2), seed=1)
    c, _ = plain.forward_logits(ids, plain.zero_state(2))
    assert np.allclose(a, c)  # inverted dropout: no rescaling at evaluation
    l1, _ = model.loss_and_grads(ids, targets, model.zero_state(2), rng=rng)
    l2, _ = model.loss_and_grads(ids, targets, model.zero_state(2), rng=rng)
    assert l1 != l2
