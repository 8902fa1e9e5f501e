"""The baselines of benchmarks/word_quality.py: proper distributions over the vocabulary."""

from __future__ import annotations

import math
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

from word_quality import bigram_nats, unigram_nats

V = 7
TRAIN = np.array([0, 2, 3, 2, 3, 4, 0, 2, 5, 2, 3, 0], np.uint16)  # id 6 never occurs, 6 never a context


@pytest.mark.parametrize("v", range(V))
def test_bigram_sums_to_one_after_every_context(v):
    p = [math.exp(-bigram_nats(TRAIN, np.array([v, w]), V)) for w in range(V)]
    assert sum(p) == pytest.approx(1.0, abs=1e-12) and min(p) > 0


def test_unigram_sums_to_one_and_counts():
    p = [math.exp(-unigram_nats(TRAIN, np.array([0, w]), V)) for w in range(V)]
    assert sum(p) == pytest.approx(1.0, abs=1e-12)
    assert p[2] == pytest.approx((4 + 1) / (len(TRAIN) + V)) and p[6] == pytest.approx(1 / (len(TRAIN) + V))


def test_bigram_beats_unigram_on_its_own_text():
    assert bigram_nats(TRAIN, TRAIN, V) < unigram_nats(TRAIN, TRAIN, V)
    assert bigram_nats(TRAIN, TRAIN, V, d=0.75) != bigram_nats(TRAIN, TRAIN, V, d=0.5)  # the discount is used
