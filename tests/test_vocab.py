from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from charlm.errors import CharlmError
from charlm.vocab import Vocab

# Any Unicode text except lone surrogates (which no UTF-8 file can hold).
texts = st.text(alphabet=st.characters(exclude_categories=("Cs",)), min_size=1, max_size=300)


@given(texts)
def test_round_trip(text):
    vocab = Vocab.from_text(text)
    enc = vocab.encode(text)
    assert enc.ids.dtype == np.uint16
    assert enc.unknown_count == 0
    assert vocab.decode(enc.ids) == text
    assert len(vocab) == len(set(text))


@given(texts)
def test_json_round_trip(text):
    vocab = Vocab.from_text(text)
    again = Vocab.from_json(vocab.to_json())
    assert again == vocab
    assert again.decode(again.encode(text).ids) == text


@pytest.mark.parametrize(
    "text",
    ["天地玄黄，宇宙洪荒。", "Ça, déjà vu — naïve façade", "emoji 🙂🚀 and ZWJ 👩‍👩‍👧", "\t\n \r", "Ω≈ç√∫"],
)
def test_non_ascii_round_trip(text):
    vocab = Vocab.from_text(text)
    assert vocab.decode(vocab.encode(text).ids) == text
    assert all(len(ch) == 1 for ch in vocab.chars)  # code points, not bytes


def test_ids_follow_code_point_order():
    vocab = Vocab.from_text("cab")
    assert vocab.chars == "abc"
    assert vocab.encode("cab").ids.tolist() == [2, 0, 1]


def test_unknown_characters_error_names_them():
    vocab = Vocab.from_text("abc")
    with pytest.raises(CharlmError, match=r"'z'.*'y'|'y'.*'z'"):
        vocab.encode("abzzy")


@given(texts, texts)
def test_unknown_characters_skipped_and_counted(known, other):
    vocab = Vocab.from_text(known)
    enc = vocab.encode(other, unknown="skip")
    kept = "".join(ch for ch in other if ch in set(known))
    assert vocab.decode(enc.ids) == kept
    assert enc.unknown_count == len(other) - len(kept)


@pytest.mark.parametrize("bad", ["[3, 1]", "[1, 1]", '"abc"', "[-1]", "[1114112]", "{}"])
def test_from_json_rejects_malformed(bad):
    with pytest.raises((ValueError, CharlmError)):
        Vocab.from_json(bad)
