"""The form text is read in: NFC normalization and "\\r\\n" read as "\\n", each optional.

``TextForm.apply`` brings a whole text into a form; ``Cleaner`` does the same for
text that arrives in chunks, holding back each chunk's tail while the next chunk
could still change it, so the result never depends on where the chunks were cut.
"""

from __future__ import annotations

import functools
import unicodedata
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

PIECE_CHARS = 2**16  # characters brought into a text form at a time (see Cleaner)


@dataclass(frozen=True)
class TextForm:
    """What is done to decoded text on the way in. The default, nothing, is how
    checkpoints that record no form (older ones) read their text."""

    nfc: bool = False  # Unicode NFC normalization: "o" + U+0308 → "ö"
    crlf_as_lf: bool = False  # read "\r\n" as "\n" (a lone "\r" stays)

    def apply(self, text: str) -> str:
        """``text`` in this form, all at once (see Cleaner for text in chunks)."""
        if self.crlf_as_lf:
            text = text.replace("\r\n", "\n")
        return unicodedata.normalize("NFC", text) if self.nfc and not text.isascii() else text


RAW = TextForm()
CLEAN = TextForm(nfc=True, crlf_as_lf=True)  # how new runs read their text unless told otherwise

_HANGUL_V_T = (range(0x1161, 0x1176), range(0x11A8, 0x11C3))  # jamo that compose with a preceding syllable


@functools.cache
def stable_start(ch: str) -> bool:
    """True if NFC never joins ``ch`` to what comes before it: its decomposition
    starts with a character of combining class 0 that is not a mark and not a
    Hangul vowel or final consonant. Every second part of a canonical composition
    is one of those (tests/test_text.py checks this over all of Unicode), so
    NFC(a + b) = NFC(a) + NFC(b) whenever b starts with such a character."""
    if ch < "\u0300":
        return True  # ASCII and Latin-1/Extended: no marks, nothing composes onto them
    first = unicodedata.normalize("NFD", ch)[0]
    return (
        unicodedata.combining(first) == 0
        and not unicodedata.category(first).startswith("M")
        and not any(ord(first) in r for r in _HANGUL_V_T)
    )


class Cleaner:
    """Brings text read in chunks into a TextForm; the result is the same as
    ``form.apply`` on the whole text. The text may be cut before a stable start
    (``stable_start``, for NFC) that does not follow a "\\r" (for line ends): each
    chunk's tail from its last such cut waits for the next chunk, and the rest is
    given out in pieces of about PIECE_CHARS, so that no copy of a whole chunk is made."""

    def __init__(self, form: TextForm, piece_chars: int = PIECE_CHARS) -> None:
        self.form = form
        self.piece_chars = piece_chars
        self.pending = ""  # the held-back tail of the last chunk

    def _cut(self, s: str, i: int, final: bool) -> bool:
        """Whether ``s`` (after ``pending``) may be cut before index ``i``: nothing after
        the cut can change what comes before it."""
        if i == len(s) and final:
            return True
        if self.form.crlf_as_lf and (s[i - 1] if i else self.pending[-1:]) == "\r":
            return False  # a "\r" waits for a possible "\n"
        if not self.form.nfc:
            return True
        return i < len(s) and stable_start(s[i])  # the next chunk's first character is not known yet

    def feed(self, text: str, final: bool = False) -> Iterator[str]:
        """The text that is final once ``text`` is read, in pieces; on ``final`` everything left."""
        form = self.form
        if not (form.nfc or form.crlf_as_lf):
            if text:
                yield text
            return
        n, start = len(text), 0
        if self.pending:  # the held-back tail, completed up to the first cut in ``text``
            first = next((i for i in range(n + 1) if self._cut(text, i, final)), None)
            if first is None:
                self.pending += text
                return
            head, self.pending, start = form.apply(self.pending + text[:first]), "", first
            if head:
                yield head
        end = next((i for i in range(n, start, -1) if self._cut(text, i, final)), start)
        self.pending = text[end:]
        while start < end:  # pieces cut where they may be, each at most piece_chars unless no cut is nearer
            stop = end
            if end - start > self.piece_chars:
                limit = start + self.piece_chars
                stop = next((i for i in range(limit, start, -1) if self._cut(text, i, final)), 0) or next(
                    i for i in range(limit, end + 1) if self._cut(text, i, final) or i == end
                )
            yield form.apply(text[start:stop])
            start = stop


def clean_chunks(chunks: Iterable[str], form: TextForm) -> Iterator[str]:
    """``chunks`` in ``form``, piece by piece (the same text as ``form.apply`` on their concatenation)."""
    cleaner = Cleaner(form)
    for chunk in chunks:
        yield from cleaner.feed(chunk)
    yield from cleaner.feed("", final=True)
