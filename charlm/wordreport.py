"""How charlm's reports word a word model: per word, with its vocabulary, OOV rate and per-character figure.

Formatting only, like ``charlm.report``; the numbers come from ``charlm.evaluate``.
A word model's figures are per token ("word": words, numbers, punctuation marks
and <EOS>); the per-character figure is the same total log-loss over the characters
of the text, so that a word model and a character model can be compared on one file.
"""

from __future__ import annotations

import math

from charlm.config import UNIT_NAMES, UnitNames


def unit_names(vocab_or_unit) -> UnitNames:
    """The names of a model's unit, from its vocabulary (or the unit itself)."""
    return UNIT_NAMES[getattr(vocab_or_unit, "unit", vocab_or_unit)]


def _perplexity(nats: float) -> str:
    from charlm.report import perplexity_text

    return perplexity_text(nats, 4)


def oov_rate(unknown: int, tokens: int) -> float:
    """The share of tokens read as <UNK>."""
    return unknown / tokens if tokens else math.nan


def word_perplexity_lines(result, chars: int) -> list[str]:
    """``charlm perplexity`` of a word model (``result``: an evaluate.Score over tokens), aligned lines."""
    per_char = result.nats / chars if chars else math.nan
    rate = oov_rate(result.unknown, result.chars)
    return [
        f"nats/word    {result.nats_per_char:.4f}",
        f"bits/word    {result.bits_per_char:.4f}",
        f"perplexity   {_perplexity(result.nats_per_char)} per word",
        f"nats/char    {per_char:.4f}  (the same total log-loss over the {chars:,} characters of the text)",
        f"bits/char    {per_char / math.log(2):.4f}",
        f"scored       {result.chars:,} tokens (words, numbers, punctuation marks and <EOS>)",
        f"unknown      {result.unknown:,} tokens read as <UNK>: OOV rate {rate:.2%}",
    ]


def word_perplexity_json(result, chars: int, checkpoint) -> dict:
    """``charlm perplexity --json`` of a word model."""
    from charlm.report import _finite

    per_char = result.nats / chars if chars else math.nan
    return {
        "checkpoint": str(checkpoint),
        "unit": "word",
        "nats_per_word": _finite(result.nats_per_char),
        "bits_per_word": _finite(result.bits_per_char),
        "perplexity": _finite(result.perplexity),
        "tokens": result.chars,
        "unknown": result.unknown,
        "oov_rate": _finite(oov_rate(result.unknown, result.chars)),
        "chars": chars,
        "nats_per_char": _finite(per_char),
        "bits_per_char": _finite(per_char / math.log(2)),
    }


def vocabulary_text(info) -> str:
    """The vocabulary line of ``charlm info``: its characters, or a word model's words and case policy."""
    if info.unit != "word":
        return f"{info.vocab_size} characters"
    case = "lower-cased" if info.lowercase else "case kept"
    return (
        f"{info.vocab_size:,} tokens: the {info.vocab_size - 2:,} most frequent of the corpus, <EOS> and <UNK> ({case})"
    )


def corpus_text(c) -> str:
    """The corpus line of ``charlm info`` (c: a CorpusFingerprint)."""
    text = f"{c.name or '?'}, {c.chars or 0:,} characters"
    if c.tokens is not None:
        text += f", {c.tokens:,} tokens"
        if c.val_tokens:
            text += f" ({c.val_tokens:,} held out)"
        if c.unknown_tokens is not None:
            text += f"; OOV rate {oov_rate(c.unknown_tokens, c.tokens):.2%} ({c.unknown_tokens:,} tokens read as <UNK>)"
    elif c.val_chars:
        text += f" ({c.val_chars:,} held out)"
    return text
