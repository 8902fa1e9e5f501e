"""Character vocabulary: Unicode code points ↔ integer ids.

The vocabulary is the sorted set of code points of the training text, so the
same text always gives the same ids. Ids are ``uint16`` (at most 65,536
symbols). Characters outside the vocabulary are never silently mapped to
another symbol: ``encode`` either refuses them (``unknown="error"``) or drops
them from the stream (``unknown="skip"``) and reports how many it dropped.
"""

from __future__ import annotations

import json
import unicodedata
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np

from charlm.errors import CharlmError

MAX_VOCAB = 65_536  # ids are stored as uint16
CODE_POINTS = 0x110000  # size of the Unicode code space
BLOCK_CHARS = 2**20  # characters converted to code points / ids at a time (bounds the temporaries)


def code_points(text: str) -> np.ndarray:
    """The code points of ``text`` as a (len(text),) uint32 array, without a Python loop."""
    return np.frombuffer(text.encode("utf-32-le", "surrogatepass"), dtype="<u4")


def code_point_blocks(text: str) -> Iterator[np.ndarray]:
    """The code points of ``text`` in blocks of at most BLOCK_CHARS: (n,) uint8 when
    the text is ASCII (one byte per character instead of four), else (n,) uint32.
    Blocks keep the temporaries of indexing small (NumPy widens indices to int64)."""
    ascii_only = text.isascii()
    for start in range(0, len(text), BLOCK_CHARS):
        block = text[start : start + BLOCK_CHARS]
        if ascii_only:
            yield np.frombuffer(block.encode("ascii"), dtype=np.uint8)
        else:
            yield code_points(block)


def describe_char(ch: str) -> str:
    """A character named for messages, with its code point: 'x' U+0078, '\\r' U+000D;
    a mark or an invisible character by its Unicode name instead of alone:
    U+0308 COMBINING DIAERESIS, U+00A0 NO-BREAK SPACE."""
    code = f"U+{ord(ch):04X}"
    visible = ch.isprintable() and not ch.isspace() and not unicodedata.category(ch).startswith("M")
    if visible or ch in "\n\t\r ":
        return f"{ch!r} {code}"
    name = unicodedata.name(ch, "")
    return f"{code} {name}" if name else f"{ch!r} {code}"


def describe_counts(counts: Counter, limit: int = 5) -> str:
    """Characters with their counts, most frequent first: '\\r' U+000D ×782, 'é' U+00E9 ×3 and 2 more."""
    listed = ", ".join(f"{describe_char(c)} ×{n:,}" for c, n in counts.most_common(limit))
    return listed + (f" and {len(counts) - limit} more" if len(counts) > limit else "")


def _valid_code_point(c: object) -> bool:
    """An integer (not a boolean) code point outside the surrogates, which no text can hold."""
    return isinstance(c, int) and not isinstance(c, bool) and 0 <= c <= 0x10FFFF and not 0xD800 <= c <= 0xDFFF


@dataclass(frozen=True)
class EncodeResult:
    ids: np.ndarray  # (N,) uint16, unknown characters removed
    unknown: Counter = field(default_factory=Counter)  # character → count dropped

    @property
    def unknown_count(self) -> int:
        return sum(self.unknown.values())


class Vocab:
    """A fixed, ordered set of characters."""

    unit = "char"

    def __init__(self, chars: str) -> None:
        cps = np.sort(code_points(chars))  # not np.unique: it imports numpy.ma, 25 ms of start-up
        if cps.size > 1 and not (cps[1:] > cps[:-1]).all():
            raise ValueError("vocabulary characters must be distinct")
        if cps.size == 0:
            raise CharlmError("the vocabulary is empty: the text has no characters")
        if cps.size > MAX_VOCAB:
            raise CharlmError(
                f"the text has {cps.size:,} distinct characters; charlm models at most "
                f"{MAX_VOCAB:,}. Use a smaller or more uniform text."
            )
        self._cps = cps.astype(np.uint32)  # (V,) sorted code points
        self.chars = "".join(map(chr, self._cps.tolist()))
        self._char_array = np.array(list(self.chars), dtype=object) if self.chars else None

    @classmethod
    def from_text(cls, text: str) -> Vocab:
        return cls("".join(map(chr, np.unique(code_points(text)).tolist())))

    def __len__(self) -> int:
        return len(self.chars)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Vocab) and self.chars == other.chars

    def __hash__(self) -> int:
        return hash(self.chars)

    def __contains__(self, ch: str) -> bool:
        return self.index(ch) is not None

    @property
    def boundary_id(self) -> int | None:
        """The id a line (so a sentence on its own) starts after: the newline, None without one."""
        return self.index("\n")

    def index(self, ch: str) -> int | None:
        cp = ord(ch)
        i = int(np.searchsorted(self._cps, cp))
        return i if i < len(self._cps) and self._cps[i] == cp else None

    def encode(self, text: str, unknown: str = "error") -> EncodeResult:
        """Text → ids. unknown: "error" raises CharlmError naming the unknown
        characters; "skip" drops them and counts them."""
        cps = code_points(text)
        idx = np.searchsorted(self._cps, cps)
        idx_c = np.minimum(idx, len(self._cps) - 1)
        known = self._cps[idx_c] == cps
        if known.all():
            return EncodeResult(idx.astype(np.uint16))
        missing = Counter(chr(c) for c in cps[~known].tolist())
        if unknown == "error":
            listed = ", ".join(describe_char(c) for c, _ in missing.most_common(10))
            more = "" if len(missing) <= 10 else f" and {len(missing) - 10} more"
            count = sum(missing.values())
            raise CharlmError(
                f"{count} character(s) not in the model's vocabulary: {listed}{more}. "
                "Remove them, or have unknown characters skipped.",
                kind="unknown_chars",
                count=count,
                listed=f"{listed}{more}",
            )
        return EncodeResult(idx[known].astype(np.uint16), missing)

    def id_table(self) -> np.ndarray:
        """(0x110000,) int32: the id of every code point, −1 for characters outside the vocabulary."""
        table = np.full(CODE_POINTS, -1, dtype=np.int32)
        table[self._cps] = np.arange(len(self), dtype=np.int32)
        return table

    def decode(self, ids) -> str:
        ids = np.asarray(ids, dtype=np.int64)
        if ids.size == 0:
            return ""
        return "".join(self._char_array[ids].tolist())

    def to_json(self) -> str:
        """JSON list of code points: unambiguous for any character, ASCII only."""
        return json.dumps(self._cps.tolist())

    @classmethod
    def from_json(cls, s: str) -> Vocab:
        try:
            cps = json.loads(s)
        except (TypeError, RecursionError):
            raise ValueError("vocabulary must be a JSON list of code points") from None
        if not isinstance(cps, list) or not all(map(_valid_code_point, cps)):
            raise ValueError("vocabulary must be a JSON list of code points")
        if sorted(set(cps)) != cps:
            raise ValueError("vocabulary code points must be sorted and distinct")
        return cls("".join(map(chr, cps)))
