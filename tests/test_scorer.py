"""The forward-only scoring path (charlm.scorer, Recurrent.prepare/infer) against the
plain reference: the notes' step functions in a loop, the embedding and a float64
log-softmax, with a carried state."""

from __future__ import annotations

import numpy as np
import pytest

from charlm.cells import GRU, LSTM, RNN
from charlm.model import CharModel, ModelConfig
from charlm.scorer import Scorer, chunk_floats, prepared_floats
from tests.gradcheck import make_layer, reference_forward

TOL = 1e-10  # float64 throughout
CELLS = {"lstm": LSTM, "gru": GRU, "rnn": RNN}


def random_state(model: CharModel, B: int, rng) -> list:
    return [tuple(rng.standard_normal((B, model.config.hidden)) * 0.5 for _ in layer) for layer in model.zero_state(B)]


def reference_nll(model: CharModel, ids, targets, state) -> tuple[np.ndarray, list]:
    """−log p(target) (T, B) and the final state from the reference step functions."""
    p = model.params
    x = p["embedding.weight"][ids]  # (T, B, E)
    new_state = []
    for layer, s in zip(model.rnn, state, strict=True):
        x, final, _ = reference_forward(layer, x, s)
        new_state.append(final)
    z = x @ p["decoder.weight"].T + p["decoder.bias"]  # (T, B, V)
    log_p = z - np.log(np.exp(z - z.max(-1, keepdims=True)).sum(-1, keepdims=True)) - z.max(-1, keepdims=True)
    return -np.take_along_axis(log_p, targets[..., None], -1)[..., 0], new_state


@pytest.mark.parametrize("cell", sorted(CELLS))
def test_scorer_matches_the_reference_with_a_carried_state(cell):
    rng = np.random.default_rng(4)
    model = CharModel(ModelConfig(vocab_size=9, cell=cell, embed=5, hidden=6, layers=3), dtype=np.float64, seed=2)
    model.flat[...] = rng.uniform(-0.6, 0.6, model.flat.shape)  # biases too, nonzero
    T, B = 7, 5
    state = random_state(model, B, rng)
    scorer = Scorer(model)
    for _ in range(2):  # two chunks: the returned state carries into the next
        ids, targets = rng.integers(0, 9, (T, B)), rng.integers(0, 9, (T, B))
        want, want_state = reference_nll(model, ids, targets, state)
        nats, got_state = scorer.nll(ids, targets, state)
        assert nats.shape == (T, B) and nats.dtype == np.float64
        assert np.abs(nats - want).max() < TOL
        advanced = scorer.advance(ids, state)
        for got in (got_state, advanced):
            for g_layer, w_layer in zip(got, want_state, strict=True):
                for g, w in zip(g_layer, w_layer, strict=True):
                    assert np.abs(g - w).max() < TOL
        state = got_state


@pytest.mark.parametrize("cls", [LSTM, GRU, RNN])
def test_layer_infer_matches_the_reference_and_leaves_the_state(cls):
    rng = np.random.default_rng(5)
    T, B, D, H = 6, 3, 4, 5
    layer = make_layer(cls, D, H, rng)
    x = rng.standard_normal((T, B, D))
    state = tuple(rng.standard_normal((B, H)) for _ in cls.state_names)
    kept = tuple(s.copy() for s in state)
    weights = layer.prepare()
    pre = x @ weights["w_ih"].T + weights["b"]  # (T, B, G·H) s ∗ (W_ih x<t> + b)
    out = np.empty((T, B, H))
    final = layer.infer(pre, state, weights, out)
    want_out, want_final, _ = reference_forward(layer, x, state)
    assert np.abs(out - want_out).max() < TOL
    for f, w, s, k in zip(final, want_final, state, kept, strict=True):
        assert np.abs(f - w).max() < TOL
        assert np.array_equal(s, k)  # the caller's state is not touched


def test_scorer_matches_the_training_forward_in_float32():
    """float32, as scoring runs: CharModel.nll's figures (the same operations)."""
    rng = np.random.default_rng(6)
    model = CharModel(ModelConfig(vocab_size=20, cell="lstm", embed=8, hidden=16, layers=2), seed=3)
    ids, targets = rng.integers(0, 20, (9, 8)), rng.integers(0, 20, (9, 8))
    state = [tuple(s.astype(np.float32) for s in layer) for layer in random_state(model, 8, rng)]
    want, want_state = model.nll(ids, targets, state)
    nats, got_state = Scorer(model).nll(ids, targets, state)
    assert np.abs(nats - want).max() < 1e-5
    for g_layer, w_layer in zip(got_state, want_state, strict=True):
        assert all(np.abs(g - w).max() < 1e-5 for g, w in zip(g_layer, w_layer, strict=True))


def test_scorer_refuses_ids_outside_the_vocabulary():
    model = CharModel(ModelConfig(vocab_size=5, embed=3, hidden=4, layers=1), seed=0)
    with pytest.raises(IndexError):
        Scorer(model).nll(np.full((2, 2), 5), np.zeros((2, 2), np.int64), model.zero_state(2))


@pytest.mark.parametrize("cell", sorted(CELLS))
def test_memory_formulas_count_the_scorers_arrays(cell):
    """charlm.memory's scoring estimate rests on these: every array a Scorer keeps after a pass."""
    config = ModelConfig(vocab_size=30, cell=cell, embed=6, hidden=20, layers=3)
    model = CharModel(config)
    T, B = 7, 5
    scorer = Scorer(model)
    scorer.nll(np.zeros((T, B), np.int64), np.zeros((T, B), np.int64), model.zero_state(B))
    prepared = scorer.table.nbytes + sum(a.nbytes for w in scorer.prepared for a in w.values())
    assert prepared == 4 * prepared_floats(config)
    chunk = sum(a.nbytes for a in scorer._workspace.get((T, B), dict).values())
    assert chunk == 4 * chunk_floats(config, T, B)
