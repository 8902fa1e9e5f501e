"""Text on the way in: NFC and line ends read in chunks exactly as in one piece,
characters named in messages, and error advice that works when it is followed."""

from __future__ import annotations

import io
import random
import unicodedata
from collections import Counter

import numpy as np
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from charlm import checkpoint_schema
from charlm import corpus as corpus_mod
from charlm import text as text_mod
from charlm.config import TrainConfig
from charlm.corpus import CorpusFingerprint, load_corpus
from charlm.errors import CorpusError
from charlm.text import decode_bytes, iter_text
from charlm.textform import CLEAN, PIECE_CHARS, RAW, Cleaner, TextForm, stable_start
from charlm.vocab import describe_char, describe_counts
from tests.conftest import SMALL_TEXT

FORMS = [CLEAN, TextForm(nfc=True), TextForm(crlf_as_lf=True)]
# Characters whose NFC depends on their neighbours: combining marks (one with ccc 0 and
# a decomposition that starts with marks), Hangul jamo and syllables, Indic two-part
# vowels, a singleton, line ends; plus anything else.
TRICKY = st.sampled_from(
    [
        *"ae o\r\n",
        *("\u0301", "\u0308", "\u0323", "\u0344", "\u0f73", "\u1100", "\u1161", "\u11a8", "\uac00"),
        *("\u0b47", "\u0b3e", "\u0b57", "\u0dd9", "\u0dcf", "\u0dca", "\u1e0a", "\u212b", "\U00011099", "\U000110ba"),
    ]
)
ANY = st.characters(exclude_categories=("Cs",))
TEXT = st.text(alphabet=TRICKY, max_size=40) | st.text(alphabet=TRICKY | ANY, max_size=40)
CUTS = st.lists(st.floats(0, 1), max_size=10)  # where the chunks end, as fractions of the text


def cleaned_in_chunks(text: str, cuts: list[float], form: TextForm, piece: int) -> list[str]:
    bounds = sorted({round(c * len(text)) for c in cuts})
    chunks = [text[a:b] for a, b in zip([0, *bounds], [*bounds, len(text)], strict=True)]
    cleaner = Cleaner(form, piece_chars=piece)
    out = [p for chunk in chunks for p in cleaner.feed(chunk)]
    return out + list(cleaner.feed("", final=True))


@settings(max_examples=300, deadline=None)
@given(text=TEXT, cuts=CUTS, form=st.sampled_from(FORMS), piece=st.integers(1, 9))
@example(text="a\r\nb", cuts=[0.5], form=CLEAN, piece=9)  # \r | \n
@example(text="ae\u0301b", cuts=[0.5], form=CLEAN, piece=9)  # e | combining acute
@example(text="\u1100\u1161\u11a8", cuts=[0.4, 0.7], form=CLEAN, piece=9)  # Hangul L | V | T
@example(text="xe\u0301\u0323y", cuts=[], form=CLEAN, piece=2)  # a piece boundary inside the sequence
def test_chunked_cleaning_equals_cleaning_the_whole_text(text, cuts, form, piece):
    """Wherever the chunks are cut (inside a combining sequence, between \\r and \\n),
    and however small the pieces given out, the text is the whole text's NFC / line ends."""
    pieces = cleaned_in_chunks(text, cuts, form, piece)
    assert "".join(pieces) == form.apply(text)
    assert all(pieces)  # no empty pieces


@settings(max_examples=200, deadline=None)
@given(text=TEXT, chunk=st.integers(1, 17))
def test_iter_text_in_a_form_does_not_depend_on_the_chunk_size(text, chunk):
    raw = text.encode()
    if raw.startswith((b"\xef\xbb\xbf", *text_mod.BINARY_MAGIC)) or b"\x00" in raw or not text or text.isspace():
        return
    got = "".join(iter_text(io.BytesIO(raw), "x", form=CLEAN, chunk_bytes=chunk))
    assert got == unicodedata.normalize("NFC", text.replace("\r\n", "\n"))


def test_crlf_split_across_chunks_and_a_lone_cr():
    raw = b"one\r\ntwo\rthree\r\n"
    for chunk in (1, 2, 4, 1024):
        assert "".join(iter_text(io.BytesIO(raw), "x", form=CLEAN, chunk_bytes=chunk)) == "one\ntwo\rthree\n"
        assert "".join(iter_text(io.BytesIO(raw), "x", form=RAW, chunk_bytes=chunk)) == raw.decode()


def test_a_decomposed_letter_is_composed_even_when_a_chunk_ends_between_its_parts():
    raw = "Gro\u0308\u00dfe".encode()  # o + COMBINING DIAERESIS
    for chunk in (1, 2, 3, 4, 64):
        assert "".join(iter_text(io.BytesIO(raw), "x", form=CLEAN, chunk_bytes=chunk)) == "Größe"
    assert decode_bytes(raw, "x") == "Gro\u0308\u00dfe"  # raw: as it was


def test_no_second_part_of_a_composition_is_a_stable_start():
    """The claim stable_start rests on, checked over all of Unicode (this Python's
    unicodedata): NFC can join x to what precedes it only if x is the second part of a
    canonical composition (or a Hangul vowel / final consonant), and no such x is a stable start."""
    seconds = set()
    for cp in range(0x110000):
        parts = unicodedata.decomposition(chr(cp)).split()
        if len(parts) == 2 and not parts[0].startswith("<"):
            seconds.add(chr(int(parts[1], 16)))
    seconds |= set(map(chr, [*range(0x1161, 0x1176), *range(0x11A8, 0x11C3)]))
    assert not [f"U+{ord(c):04X}" for c in seconds if stable_start(c)]
    assert all(stable_start(c) for c in "aZ\n\r 0ßé天🙂\uac00")


def test_a_long_chunk_is_given_out_in_pieces():
    text = ("abc\u0301 " * 50_000)[:-1]
    pieces = cleaned_in_chunks(text, [0.4], CLEAN, PIECE_CHARS)
    assert max(map(len, pieces)) <= PIECE_CHARS
    assert "".join(pieces) == CLEAN.apply(text)


# --------------------------------------------------------------------------- #
# Characters in messages
# --------------------------------------------------------------------------- #


@pytest.mark.parametrize(
    "ch, shown",
    [
        ("x", "'x' U+0078"),
        ("é", "'é' U+00E9"),
        ("\r", "'\\r' U+000D"),
        ("\n", "'\\n' U+000A"),
        ("\u0308", "U+0308 COMBINING DIAERESIS"),  # never a bare combining mark
        ("\u00a0", "U+00A0 NO-BREAK SPACE"),
        ("\u200b", "U+200B ZERO WIDTH SPACE"),
        ("\x07", "'\\x07' U+0007"),
        ("🙂", "'🙂' U+1F642"),
    ],
)
def test_characters_are_named_with_their_code_point(ch, shown):
    assert describe_char(ch) == shown


def test_counts_are_listed_most_frequent_first():
    counts = Counter({"é": 3, "\r": 782, "\u0308": 1})
    assert describe_counts(counts) == "'\\r' U+000D ×782, 'é' U+00E9 ×3, U+0308 COMBINING DIAERESIS ×1"
    many = Counter({chr(0x41 + i): 10 - i for i in range(8)})
    assert describe_counts(many, limit=2) == "'A' U+0041 ×10, 'B' U+0042 ×9 and 6 more"


# --------------------------------------------------------------------------- #
# Advice that applies to the file at hand
# --------------------------------------------------------------------------- #


def error_of(raw: bytes, chunk: int | None = None, **kw) -> CorpusError:
    with pytest.raises(CorpusError) as e:
        "".join(iter_text(io.BytesIO(raw), "f", chunk_bytes=chunk, **kw))
    return e.value


BINARY = b"\x42\x0d\x0d\x0a" + random.Random(1).randbytes(3000)  # like a .pyc: a header, then bytes


def test_a_binary_file_is_called_binary_and_not_told_to_replace_bytes():
    first = error_of(BINARY)
    assert first.kind in ("binary_data", "nul_byte") and "binary data" in str(first)
    assert "replaced" not in str(first) and "utf-16" not in str(first)
    again = error_of(BINARY, errors="replace")  # what a user might try anyway: still binary, no UTF-16 hint
    assert again.kind == "nul_byte" and "utf-16" not in str(again)


@pytest.mark.parametrize("encoding, guess", [("utf-16-le", "utf-16-le"), ("utf-16-be", "utf-16-be")])
def test_utf16_without_a_bom_is_recognised_and_the_advice_works(encoding, guess):
    raw = SMALL_TEXT.encode(encoding)
    e = error_of(raw)
    assert e.kind == "other_encoding_nul" and e.details["guess"] == guess
    assert decode_bytes(raw, "f", encoding=guess) == SMALL_TEXT  # following the advice reads the file


def test_utf16_with_a_bom_read_as_utf8_is_recognised():
    raw = ("Größe\n" + SMALL_TEXT).encode("utf-16")
    e = error_of(raw)
    assert e.kind == "other_encoding" and e.details["guess"] == "utf-16" and e.details["offset"] == 0
    assert decode_bytes(raw, "f", encoding="utf-16").startswith("Größe")


def test_latin1_text_is_told_how_to_read_it_and_that_works():
    raw = SMALL_TEXT.encode() + "café".encode("latin-1") + SMALL_TEXT.encode()
    e = error_of(raw)
    assert e.kind == "undecodable"
    assert "\ufffd" in decode_bytes(raw, "f", errors="replace")
    assert "café" in decode_bytes(raw, "f", encoding="latin-1")


@pytest.mark.parametrize("raw", [BINARY, SMALL_TEXT.encode("utf-16-le"), SMALL_TEXT.encode("utf-16"), b"ab\xffcd" * 9])
def test_the_advice_does_not_depend_on_the_chunk_size(raw):
    messages = {str(error_of(raw, chunk)) for chunk in (1, 3, 17, 4096, 1 << 20)}
    assert len(messages) == 1, messages


# --------------------------------------------------------------------------- #
# The corpus: its form in the fingerprint and in the cache's key
# --------------------------------------------------------------------------- #


def test_the_fingerprint_records_the_form_and_older_ones_read_raw():
    assert CorpusFingerprint.from_dict({"name": "x.txt"}).form == RAW
    assert CorpusFingerprint.from_dict({"nfc": True, "crlf_as_lf": True}).form == CLEAN
    with pytest.raises(checkpoint_schema.Bad, match='corpus.nfc must be true or false or null, not "yes"'):
        checkpoint_schema.corpus_fingerprint({"nfc": "yes"})


def test_the_cache_key_includes_the_text_form(tmp_path, monkeypatch):
    monkeypatch.setenv("CHARLM_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(corpus_mod, "MEMMAP_MIN_CHARS", 100)
    path = tmp_path / "win.txt"
    path.write_bytes((SMALL_TEXT.replace("\n", "\r\n") + "Gro\u0308\u00dfe\r\n").encode())
    small = dict(batch_size=4, seq_len=8)
    clean = load_corpus(path, TrainConfig(**small))
    raw = load_corpus(path, TrainConfig(**small, normalize=False, keep_cr=True))
    assert clean.cache.name.endswith("-utf-8-strict-nfc-lf.u16") and raw.cache.name.endswith("-utf-8-strict-raw.u16")
    assert "\r" not in clean.vocab.chars and "\u0308" not in clean.vocab.chars and "ö" in clean.vocab.chars
    assert "\r" in raw.vocab.chars and "\u0308" in raw.vocab.chars
    assert len(raw.ids) - len(clean.ids) == SMALL_TEXT.count("\n") + 2  # every \r, and the mark
    assert (clean.fingerprint().nfc, clean.fingerprint().crlf_as_lf) == (True, True)
    assert (raw.fingerprint().nfc, raw.fingerprint().crlf_as_lf) == (False, False)
    again = load_corpus(path, TrainConfig(**small))  # the cached ids of the same form are reused
    assert again.cache == clean.cache and np.array_equal(again.ids, clean.ids)
