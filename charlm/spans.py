"""Surprisal of every character of a text, and the spans where it is highest:
what ``charlm perplexity --show`` colours and lists.

The surprisal of character k is −log p(x<k> | x<1..k−1>) in nats, from the same
batched passes as the text's score (``charlm.evaluate.surprisal``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from charlm.errors import ConfigError
from charlm.evaluate import Score, surprisal
from charlm.model import CharModel
from charlm.vocab import Vocab, code_points


def text_surprisal(model: CharModel, vocab: Vocab, text: str) -> tuple[np.ndarray, Score]:
    """−log p of every character of ``text`` given the text before it, in nats.

    Returns a (len(text),) float64 array aligned with the text, NaN where a
    character is not scored (the first known character, and characters the
    model has never seen, which are neither scored nor fed), and the Score of
    the whole text: the same figures as ``score_ids`` on the known characters.
    """
    cps = code_points(text)  # (N,)
    known = np.flatnonzero(np.isin(cps, code_points(vocab.chars)))  # positions of known characters
    enc = vocab.encode(text, unknown="skip")
    nats = surprisal(model, enc.ids)  # (K−1,) for known characters 2..K
    out = np.full(len(cps), np.nan)
    out[known[1:]] = nats
    return out, Score(float(nats.sum()), int(nats.size), enc.unknown_count)


@dataclass(frozen=True)
class SpanConfig:
    """Which surprising spans of a text to list (see ``surprising_spans``)."""

    spans: int = 5  # how many spans to list, most surprising first (0: none)
    span_width: int = 12  # characters per span

    def check(self) -> SpanConfig:
        """Raise ConfigError naming the first setting that cannot work; return self."""
        if self.spans < 0:
            raise ConfigError("spans", f"must be 0 or more (got {self.spans}).")
        if self.span_width < 1:
            raise ConfigError("span_width", f"must be at least 1 (got {self.span_width}).")
        return self


@dataclass(frozen=True)
class Span:
    start: int  # first character, 0-based offset into the text
    end: int  # one past the last character
    bits_per_char: float  # mean surprisal of the scored characters in [start, end), bits
    scored: int  # how many characters of the span are scored


def surprising_spans(nats: np.ndarray, width: int = 12, count: int = 5) -> list[Span]:
    """The ``count`` non-overlapping windows of ``width`` characters with the highest
    mean surprisal (over their scored characters), most surprising first.

    nats: (N,) per-character surprisal in nats, NaN where not scored (as from
    ``text_surprisal``). Window means come from one cumulative sum; windows are
    taken greedily in order of decreasing mean, skipping any that overlaps one
    already taken.
    """
    N = len(nats)
    if N == 0 or count < 1:
        return []
    width = max(1, min(width, N))
    scored = ~np.isnan(nats)
    csum = np.concatenate(([0.0], np.cumsum(np.where(scored, nats, 0.0))))  # (N+1,)
    ccount = np.concatenate(([0], np.cumsum(scored)))  # (N+1,)
    totals = csum[width:] - csum[:-width]  # (N−width+1,) window sums, starts 0..N−width
    counts = ccount[width:] - ccount[:-width]
    means = np.where(counts > 0, totals / np.maximum(counts, 1), -np.inf)
    taken = np.zeros(N, np.bool_)
    spans: list[Span] = []
    for s in np.argsort(-means, kind="stable"):
        if means[s] == -np.inf or len(spans) == count:
            break
        if taken[s : s + width].any():
            continue
        taken[s : s + width] = True
        spans.append(Span(int(s), int(s) + width, float(means[s]) / math.log(2), int(counts[s])))
    return spans
