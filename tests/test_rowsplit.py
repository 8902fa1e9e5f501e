"""A scoring's rows split over forked processes (charlm.rowsplit): the same score as one
process, errors and interrupts reported and no child left behind."""

from __future__ import annotations

import os

import numpy as np
import pytest

from charlm import rowsplit
from charlm.errors import CharlmError
from charlm.evaluate import row_layout, score_ids, surprisal_chunks
from charlm.model import CharModel, ModelConfig

pytestmark = pytest.mark.skipif(not rowsplit.available(), reason="needs Linux, 2 cores and a settable BLAS")


@pytest.fixture
def model_and_ids():
    rng = np.random.default_rng(3)
    model = CharModel(ModelConfig(vocab_size=11, embed=5, hidden=8, layers=2), dtype=np.float64, seed=1)
    model.flat[...] = rng.uniform(-0.5, 0.5, model.flat.shape)
    ids = rng.integers(0, 11, size=64 * 200 + 37).astype(np.uint16)  # 37 targets left over after 64 rows
    return model, ids


def no_children_left() -> bool:
    try:
        os.waitpid(-1, os.WNOHANG)
    except ChildProcessError:
        return True
    return False


def test_blocks_cover_the_rows_once():
    assert rowsplit.blocks(64, 2) == [slice(0, 32), slice(32, 64)]
    assert rowsplit.blocks(7, 3) == [slice(0, 2), slice(2, 5), slice(5, 7)]
    assert rowsplit.blocks(1, 2) == [slice(0, 1)]


def test_a_short_text_or_few_rows_stay_in_one_process(monkeypatch):
    monkeypatch.setattr(rowsplit, "_cores", lambda: 2)
    assert rowsplit.processes_for(rowsplit.MIN_TARGETS - 1, 64) == 1
    assert rowsplit.processes_for(rowsplit.MIN_TARGETS, 64) == 2
    assert rowsplit.processes_for(rowsplit.MIN_TARGETS, rowsplit.MIN_ROWS) == 1


def test_blocks_of_rows_give_every_target_once(model_and_ids):
    model, ids = model_and_ids
    B, L = row_layout(len(ids) - 1)
    whole = {int(p) for pos, _ in surprisal_chunks(model, ids) for p in pos.ravel()}
    parts = [
        [int(p) for pos, _ in surprisal_chunks(model, ids, rows=part) for p in pos.ravel()]
        for part in rowsplit.blocks(B, 3)
    ]
    assert sorted(p for part in parts for p in part) == sorted(whole) == list(range(len(ids) - 1))


def test_the_split_score_is_the_one_process_score(model_and_ids, monkeypatch):
    model, ids = model_and_ids
    monkeypatch.setattr(rowsplit, "MIN_TARGETS", 1000)
    one = score_ids(model, ids)
    split = score_ids(model, ids, parallel=True)
    assert rowsplit.processes_for(len(ids) - 1, 64) == 2
    assert split.chars == one.chars == len(ids) - 1
    assert split.nats == pytest.approx(one.nats, rel=1e-12)
    assert no_children_left()


def test_a_failing_child_is_one_error_and_is_reaped(model_and_ids):
    parent = os.getpid()

    def score(rows: slice) -> tuple[float, int]:
        if os.getpid() != parent:
            raise MemoryError("cannot allocate the workspace")
        return 1.0, 1

    with pytest.raises(CharlmError, match="a scoring process failed: cannot allocate the workspace"):
        rowsplit.score_blocks(score, rowsplit.blocks(64, 2))
    assert no_children_left()


def test_an_interrupt_here_kills_the_children(model_and_ids):
    parent = os.getpid()

    def score(rows: slice) -> tuple[float, int]:
        if os.getpid() == parent:
            raise KeyboardInterrupt
        import time

        time.sleep(60)  # a child that would outlive the test unless killed
        return 0.0, 0

    with pytest.raises(KeyboardInterrupt):
        rowsplit.score_blocks(score, rowsplit.blocks(64, 2))
    assert no_children_left()


def test_perplexity_of_a_long_text_from_the_console_script(tmp_path, tiny_checkpoint):
    import json

    from charlm.checkpoint import load
    from tests.conftest import SMALL_TEXT
    from tests.test_cli import run_cli

    text = SMALL_TEXT * (rowsplit.MIN_TARGETS // len(SMALL_TEXT) + 2)  # long enough to be split
    (tmp_path / "long.txt").write_text(text, encoding="utf-8")
    r = run_cli("perplexity", "long.txt", "-c", str(tiny_checkpoint), "--json", cwd=tmp_path)
    assert r.returncode == 0 and r.stderr == "", r.stderr
    ckpt = load(tiny_checkpoint)
    one = score_ids(ckpt.build_model(), ckpt.vocab.encode(text).ids)
    got = json.loads(r.stdout)
    assert got["chars"] == one.chars
    assert got["nats_per_char"] == pytest.approx(one.nats_per_char, rel=1e-6)
