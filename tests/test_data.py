from __future__ import annotations

import math

import numpy as np
import pytest

from charlm.data import BatchStream, split_text
from charlm.errors import CorpusError
from charlm.evaluate import score_ids, surprisal, surprisal_chunks
from charlm.model import CharModel, ModelConfig
from charlm.text import decode_bytes, read_text


def test_batches_continue_each_row_across_steps():
    ids = np.arange(1000, dtype=np.uint16) % 997
    s = BatchStream(ids, batch_size=4, seq_len=10)
    assert s.stream_len == 249
    x0, y0 = s.batch(0)
    x1, _ = s.batch(1)
    assert x0.shape == (10, 4)
    # row b of batch k+1 starts right after row b of batch k
    assert np.array_equal(x1[0], x0[-1] + 1)
    # targets are the next character of the same stream
    assert np.array_equal(y0[:-1], x0[1:])
    assert np.array_equal(y0[-1], x1[0])
    # rows are contiguous, disjoint slices of the corpus
    assert x0[0].tolist() == [0, 249, 498, 747]


def test_stream_too_short_says_minimum():
    with pytest.raises(CorpusError, match="at least 321"):
        BatchStream(np.zeros(100, np.uint16), batch_size=32, seq_len=10)


def test_split_holds_out_the_tail():
    train, val = split_text("abcdefghij", 0.2)
    assert (train, val) == ("abcdefgh", "ij")


@pytest.mark.parametrize(
    "raw,match",
    [
        (b"", "empty"),
        (b"  \n\t \n", "only whitespace"),
        (b"\x89PNG\r\n\x1a\n\x00\x00", "PNG"),
        (b"abc\x00def", "NUL"),
        (b"good text \xff\xfe more", "byte offset 10"),
    ],
)
def test_bad_corpora_are_refused_with_a_reason(raw, match):
    with pytest.raises(CorpusError, match=match):
        decode_bytes(raw, "x.txt")


def test_invalid_utf8_can_be_replaced():
    assert decode_bytes(b"ok \xff ok", "x", errors="replace") == "ok \ufffd ok"


def test_missing_and_directory(tmp_path):
    with pytest.raises(CorpusError, match="no such file"):
        read_text(tmp_path / "nope.txt")
    with pytest.raises(CorpusError, match="directory"):
        read_text(tmp_path)


@pytest.mark.parametrize("n", [2, 3, 50, 129, 1000, 8193])
def test_every_target_is_scored_exactly_once(n):
    """Streamed, batched evaluation equals scoring the text in one sequential pass."""
    rng = np.random.default_rng(n)
    model = CharModel(ModelConfig(vocab_size=5, embed=3, hidden=4, layers=1), dtype=np.float64)
    ids = rng.integers(0, 5, n).astype(np.uint16)
    seen = np.concatenate([pos.ravel() for pos, _ in surprisal_chunks(model, ids, batch_size=8, min_row=16, steps=5)])
    assert sorted(seen.tolist()) == list(range(n - 1))
    s = surprisal(model, ids, batch_size=8, min_row=16, steps=5)
    assert s.shape == (n - 1,) and np.all(s > 0)
    score = score_ids(model, ids, batch_size=8, min_row=16, steps=5)
    assert score.chars == n - 1
    assert math.isclose(score.nats, s.sum())
    assert math.isclose(score.bits_per_char, score.nats_per_char / math.log(2))


def test_batched_scoring_warms_each_row_up_like_one_pass():
    """Rows after the first read the characters before their start, so every
    character's surprisal equals the one a single unbatched pass gives."""
    rng = np.random.default_rng(7)
    model = CharModel(ModelConfig(vocab_size=5, embed=3, hidden=4, layers=2), dtype=np.float64)
    ids = rng.integers(0, 5, 4000).astype(np.uint16)
    one_pass = surprisal(model, ids, batch_size=1, steps=64)
    assert np.allclose(surprisal(model, ids, batch_size=8, min_row=16, steps=5), one_pass, rtol=0, atol=1e-9)
    cold = surprisal(model, ids, batch_size=8, min_row=16, warmup=0)  # each row from a zero state
    assert not np.allclose(cold, one_pass, rtol=0, atol=1e-6)


def test_single_row_scoring_matches_direct_nll():
    rng = np.random.default_rng(0)
    model = CharModel(ModelConfig(vocab_size=6, embed=3, hidden=5, layers=2), dtype=np.float64)
    ids = rng.integers(0, 6, 40).astype(np.uint16)
    direct, _ = model.nll(
        ids[:-1].astype(np.int64).reshape(-1, 1), ids[1:].astype(np.int64).reshape(-1, 1), model.zero_state(1)
    )
    assert np.allclose(surprisal(model, ids, batch_size=1, steps=7), direct.ravel())


def test_perplexity_of_a_huge_loss_is_infinite_not_an_error():
    from charlm.evaluate import Score

    assert Score(nats=1000.0, chars=1).perplexity == math.inf
    assert math.isclose(Score(nats=2.0, chars=2).perplexity, math.e)
