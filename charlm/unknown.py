"""Errors about text a model cannot score: symbols it has never seen, sentences with nothing left to score."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence

from charlm.errors import CharlmError
from charlm.vocab import describe_char, describe_counts
from charlm.wordvocab import describe_words


def _which(sentences: Sequence[int]) -> str:
    """Sentence numbers for a message: 1, 4, 7 (ten at most)."""
    return ", ".join(map(str, sentences[:10])) + (", …" if len(sentences) > 10 else "")


class UnknownCharacters(CharlmError):
    """Sentences hold characters (or words) the model has never seen, and the policy is to refuse them.

    ``what`` names the characters or words and the sentences; the message adds what to do."""

    def __init__(self, missing: Counter, sentences: Sequence[int], words: bool = False) -> None:
        if words:
            listed, what = describe_words(missing), "word(s)"
        else:
            listed = ", ".join(describe_char(c) for c, _ in missing.most_common(10))
            listed += "" if len(missing) <= 10 else f" and {len(missing) - 10} more"
            what = "character(s)"
        self.what = (
            f"{sum(missing.values())} {what} not in the model's vocabulary: {listed} (sentence {_which(sentences)})"
        )
        super().__init__(f"{self.what}. Remove them, or score with the unknown-symbol policy 'skip' to drop them.")


def nothing_to_score(short: list[int], lost: dict[int, Counter], newline: bool, words: bool = False) -> CharlmError:
    """Why sentences ``short`` leave nothing to score: no known character (or no token at all
    for a word model), or one and no newline to feed first."""
    which = _which(short)
    if words:
        return CharlmError(f"sentence {which}: no word to score. Leave that sentence out.")
    unknown = sum((lost.get(i, Counter()) for i in short), Counter())
    dropped = f" once the unknown ones ({describe_counts(unknown, 10)}) are dropped" if unknown else ""
    if newline:
        return CharlmError(
            f"sentence {which}: no character the model knows is left to score{dropped}. Leave that sentence out, "
            "or score it with a model trained on such text."
        )
    return CharlmError(
        f"sentence {which}: fewer than two characters the model knows{dropped}; this model has no newline in its "
        "vocabulary, so a sentence's first character is fed to it, not scored. Give at least two characters it "
        "knows, or leave that sentence out."
    )
