"""Validation during a run (a spread sample of the held-out text) and at its end (all of it)."""

from __future__ import annotations

import math

import numpy as np
import pytest

import charlm.evaluate
import charlm.train
from charlm import checkpoint
from charlm.cells.base import Workspace
from charlm.config import ModelConfig, TrainConfig
from charlm.evaluate import Score, row_layout, score_ids, score_sample, scoring_steps, surprisal_chunks
from charlm.model import CharModel
from charlm.prepare import prepare_run


def tiny_model(layers: int = 2) -> CharModel:
    return CharModel(ModelConfig(vocab_size=5, embed=3, hidden=4, layers=layers), dtype=np.float64, seed=2)


def test_the_sample_is_the_start_of_every_row_of_the_whole_scoring():
    model = tiny_model()
    ids = np.random.default_rng(1).integers(0, 5, 3001).astype(np.uint16)
    B, L = row_layout(3000, batch_size=8, min_row=16)
    whole = np.full(3000, np.nan)
    for pos, nats in surprisal_chunks(model, ids, batch_size=8, min_row=16, steps=7):
        whole[pos.ravel()] = nats.ravel()
    limit = 20  # targets per row for 160 characters
    picked = np.concatenate([whole[b * L : b * L + limit] for b in range(B)])
    sample = score_sample(model, ids, 8 * limit, batch_size=8, min_row=16, steps=5)
    assert sample.chars == B * limit
    assert math.isclose(sample.nats, picked.sum(), rel_tol=1e-12)
    # a sample as large as the text is the whole scoring, tail included
    everything = score_sample(model, ids, 10**6, batch_size=8, min_row=16)
    assert everything == score_ids(model, ids, batch_size=8, min_row=16)


def test_the_cost_of_a_scoring_counts_warm_up_rows_and_tail():
    B, L = row_layout(100_000)  # 64 rows of 1,562
    assert scoring_steps(100_001) == 256 + L + (100_000 - B * L)
    assert scoring_steps(100_001, chars=16_384) == 256 + 256
    assert scoring_steps(100) == 99  # one row: no warm-up
    assert scoring_steps(1) == 0


def test_a_layer_keeps_workspaces_for_its_two_latest_shapes():
    ws = Workspace()
    made = []

    def make(key):
        return lambda: made.append(key) or {"key": key}

    for key in [(16, 64), (5, 64), (16, 64), (7, 64), (16, 64), (5, 64)]:
        assert ws.get(key, make(key))["key"] == key
    assert made == [(16, 64), (5, 64), (7, 64), (5, 64)]  # (16, 64), used all along, was never dropped
    assert len(ws._sets) == 2


class FakeSample:
    """score_sample's stand-in: validation figures by call, best at the second."""

    def __init__(self, values):
        self.values = list(values)

    def __call__(self, model, ids, chars, **kw):
        return Score(self.values.pop(0) * 100, 100)


def test_the_end_scores_the_best_weights_on_all_the_held_out_text(small_corpus, tmp_path, monkeypatch):
    monkeypatch.setattr(charlm.evaluate, "score_sample", FakeSample([3.0, 2.0, 2.5]))
    cfg = TrainConfig(batch_size=4, seq_len=16, steps=12, eval_every=4, threads=1, seed=1)
    trainer = prepare_run(small_corpus, tmp_path / "run", ModelConfig(hidden=8, embed=4, layers=1), cfg)
    best_before = None

    class Keep(charlm.train.Callbacks):
        def on_eval(self, t, record):
            nonlocal best_before
            if record["step"] == 8:
                best_before = checkpoint.load(t.folder.best).params

    trainer.callbacks = Keep()
    summary = trainer.run()
    best = checkpoint.load(tmp_path / "run" / "best.safetensors")
    last = checkpoint.load(tmp_path / "run" / "last.safetensors")
    whole = score_ids(best.build_model(), trainer.validation.val_ids)
    assert summary.best_step == 8 and best.state.step == 8 and last.state.step == 12
    assert all(np.array_equal(best.params[n], best_before[n]) for n in best.params)  # the same weights, rewritten
    assert best.state.best_val == last.state.best_val == summary.best_val == pytest.approx(whole.nats_per_char)
    assert best.state.best_sample_val == last.state.best_sample_val == 2.0  # what a resumed run compares with
    assert summary.val_chars == len(trainer.validation.val_ids)
    assert all(np.array_equal(last.params[n], trainer.model.params[n]) for n in last.params)  # final weights back
