"""Word vocabulary: the N most frequent tokens of a text, plus <EOS> and <UNK>, ↔ uint16 ids.

As in the lecture notes ("Representing Word"): the vocabulary holds the N most
frequent tokens of the training text (``charlm.words``); every other token is
<UNK>. Ids: 0 is <EOS>, 1 is <UNK>, then the N tokens from the most frequent,
ties broken by the tokens' code points, so the same text and N always give the
same ids. Ids are ``uint16``: N is at most MAX_WORDS = 65,534.

The counts are gathered in one streaming pass (``TokenCounts``): memory grows with
the number of distinct tokens, not with the length of the text.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from itertools import repeat

import numpy as np

from charlm.config import MAX_WORDS
from charlm.errors import CharlmError
from charlm.vocab import MAX_VOCAB, EncodeResult
from charlm.words import EOS, UNK, Detokenizer, tokenize

SPECIALS = (EOS, UNK)
EOS_ID, UNK_ID = 0, 1
assert MAX_WORDS == MAX_VOCAB - len(SPECIALS)  # tokens besides <EOS> and <UNK>: every id fits uint16


@dataclass
class TokenCounts:
    """What one pass over a text's tokens learns: how often each token occurs (<EOS> apart),
    how many tokens and how many sentences (<EOS>) there are."""

    counts: Counter = field(default_factory=Counter)  # token → occurrences, <EOS> not included
    tokens: int = 0  # all tokens, <EOS> included
    sentences: int = 0  # <EOS> tokens

    def add(self, tokens: Sequence[str]) -> None:
        self.counts.update(tokens)
        eos = self.counts.pop(EOS, 0)
        self.sentences += eos
        self.tokens += len(tokens)


class WordVocab:
    """<EOS>, <UNK> and a fixed list of words, with the case policy they were read with."""

    unit = "word"

    def __init__(self, words: Sequence[str], lowercase: bool = True) -> None:
        words = list(words)
        if len(words) > MAX_WORDS:
            raise CharlmError(f"a word vocabulary holds at most {MAX_WORDS:,} words besides <EOS> and <UNK>.")
        self.tokens = [*SPECIALS, *words]  # id → token
        self.index_of = {t: i for i, t in enumerate(self.tokens)}
        if len(self.index_of) != len(self.tokens):
            raise ValueError("vocabulary words must be distinct, and neither <EOS> nor <UNK>")
        self.lowercase = lowercase
        self.chars = self.tokens  # what the sampler prints for an id: a token here, a character in a Vocab

    @classmethod
    def from_counts(cls, counts: Counter, size: int, lowercase: bool = True) -> WordVocab:
        """The ``size`` most frequent tokens of ``counts``, ties in code-point order."""
        ranked = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))[:size]
        return cls([t for t, _ in ranked], lowercase)

    @property
    def words(self) -> list[str]:
        """The tokens besides <EOS> and <UNK>, by id."""
        return self.tokens[len(SPECIALS) :]

    @property
    def boundary_id(self) -> int:
        """The id a sentence starts after: <EOS>."""
        return EOS_ID

    def __len__(self) -> int:
        return len(self.tokens)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, WordVocab) and (self.tokens, self.lowercase) == (other.tokens, other.lowercase)

    def __hash__(self) -> int:
        return hash((tuple(self.tokens), self.lowercase))

    def __contains__(self, token: str) -> bool:
        return token in self.index_of

    def index(self, token: str) -> int | None:
        return self.index_of.get(token)

    def ids(self, tokens: Sequence[str]) -> np.ndarray:
        """(len(tokens),) uint16: each token's id, <UNK>'s for tokens outside the vocabulary."""
        return np.fromiter(map(self.index_of.get, tokens, repeat(UNK_ID)), dtype=np.uint16, count=len(tokens))

    def encode_tokens(self, tokens: Sequence[str], unknown: str = "unk") -> EncodeResult:
        """Tokens → ids. unknown: "unk" reads a token outside the vocabulary as <UNK>,
        "skip" drops it, "error" raises CharlmError naming such tokens. ``unknown`` of
        the result counts them (token → occurrences) under every policy."""
        ids = self.ids(tokens)
        miss = ids == UNK_ID
        if not miss.any():
            return EncodeResult(ids)
        missing = Counter(t for t, m in zip(tokens, miss.tolist(), strict=True) if m and t != UNK)
        if not missing:  # only a literal <UNK> token, which is the vocabulary's own
            return EncodeResult(ids)
        if unknown == "error":
            count = sum(missing.values())
            listed = describe_words(missing)
            raise CharlmError(
                f"{count} word(s) not in the model's vocabulary: {listed}. "
                "Remove them, or have unknown words read as <UNK> or skipped.",
                kind="unknown_words",
                count=count,
                listed=listed,
            )
        if unknown == "skip":
            ids = ids[~miss]
        return EncodeResult(ids, missing)

    def encode(self, text: str, unknown: str = "unk", end: bool = True) -> EncodeResult:
        """Text → tokens (``charlm.words.tokenize``, with this vocabulary's case policy) → ids;
        ``end=False`` leaves the last sentence open (a prime)."""
        return self.encode_tokens(tokenize(text, self.lowercase, end=end), unknown)

    def decode(self, ids: Iterable[int]) -> str:
        """Ids → text (``charlm.words.Detokenizer``; capitals at sentence starts when lower-cased)."""
        return Detokenizer(capitalize=self.lowercase).join(self.tokens[int(i)] for i in ids)

    def to_json(self) -> str:
        """A JSON object: ``words`` (the tokens besides <EOS> and <UNK>, by id) and ``lowercase``."""
        return json.dumps({"words": self.words, "lowercase": self.lowercase}, ensure_ascii=True)

    @classmethod
    def from_json(cls, s: str) -> WordVocab:
        d = json.loads(s)
        return cls(d["words"], d["lowercase"])


def describe_words(counts: Counter, limit: int = 10) -> str:
    """Words with their counts, most frequent first: 'pear' ×3, 'zulu' ×1 and 4 more."""
    listed = ", ".join(f"{w!r} ×{n:,}" if n > 1 else repr(w) for w, n in counts.most_common(limit))
    return listed + (f" and {len(counts) - limit} more" if len(counts) > limit else "")
