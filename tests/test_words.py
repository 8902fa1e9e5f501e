"""The word tokenizer, detokenizer and vocabulary (charlm.words, charlm.wordvocab)."""

from __future__ import annotations

import itertools
import json
from collections import Counter

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from charlm.errors import CharlmError
from charlm.words import EOS, UNK, SentenceEnds, Tokenizer, detokenize, iter_tokens, tokenize
from charlm.wordvocab import EOS_ID, MAX_WORDS, UNK_ID, TokenCounts, WordVocab

texts = st.text(alphabet=st.characters(exclude_categories=("Cs",)), max_size=200)
prose_chars = st.text(alphabet=st.sampled_from("ab Z9.,!?\"'()-\n \t$"), max_size=200)


def test_docstring_example():
    assert tokenize("The apple and pear salad. It cost $3.50!\n\nNext line") == [
        *("the", "apple", "and", "pear", "salad", ".", EOS),
        *("it", "cost", "$", "3.50", "!", EOS),
        *("next", "line", EOS),
    ]


@pytest.mark.parametrize(
    ("text", "tokens"),
    [
        ("Don't stop, well-known 1990s covid-19.", ["don't", "stop", ",", "well-known", "1990s", "covid-19", ".", EOS]),
        ("1,000 and 3.14 and 2.5.1", ["1,000", "and", "3.14", "and", "2.5.1", EOS]),
        ('He said "Stop." Then', ["he", "said", '"', "stop", ".", '"', EOS, "then", EOS]),
        ("Why?! Now...", ["why", "?", "!", EOS, "now", ".", ".", ".", EOS]),
        ("a.b c", ["a", ".", "b", "c", EOS]),  # . inside a token does not end a sentence
        ("line one\nline two", ["line", "one", "line", "two", EOS]),  # a single line break is a space
        ("para one\n  \npara two", ["para", "one", EOS, "para", "two", EOS]),  # a blank line ends a sentence
        ("Done.\n\n\nNext.", ["done", ".", EOS, "next", ".", EOS]),  # never two <EOS> in a row
        ("\n\n  \n", []),
        ("", []),
        ("<UNK> <EOS>", ["<", "unk", ">", "<", "eos", ">", EOS]),  # a literal spelling is not the special
    ],
)
def test_rules(text, tokens):
    assert tokenize(text) == tokens


def test_case_policy():
    assert tokenize("The THE the", lowercase=True) == ["the", "the", "the", EOS]
    assert tokenize("The THE the", lowercase=False) == ["The", "THE", "the", EOS]


def test_prime_stays_open():
    assert tokenize("The cat", end=False) == ["the", "cat"]
    assert tokenize("The cat.", end=False) == ["the", "cat", ".", EOS]  # a finished sentence is finished


@given(texts, st.booleans())
def test_every_character_is_in_one_token(text, lowercase):
    """Tokens hold no whitespace, and together they are the text without its whitespace."""
    tokens = tokenize(text, lowercase)
    words = [t for t in tokens if t != EOS]
    assert all(t and not any(c.isspace() for c in t) for t in words)
    expected = "".join((text.lower() if lowercase else text).split())
    assert "".join(words) == expected


@given(texts)
def test_eos_never_first_never_doubled_always_last(text):
    tokens = tokenize(text)
    assert not tokens or (tokens[0] != EOS and tokens[-1] == EOS)
    assert all(not (a == b == EOS) for a, b in itertools.pairwise(tokens))


@given(st.one_of(texts, prose_chars), st.lists(st.integers(0, 200), max_size=6), st.booleans())
def test_chunks_do_not_change_tokens(text, cuts, lowercase):
    """Streaming: the tokens do not depend on where the text is cut into chunks."""
    bounds = sorted({min(c, len(text)) for c in cuts})
    chunks = [text[a:b] for a, b in zip([0, *bounds], [*bounds, len(text)], strict=False)]
    streamed = [t for part in iter_tokens(chunks, lowercase) for t in part]
    assert streamed == tokenize(text, lowercase)


sentences = st.lists(
    st.tuples(
        st.lists(
            st.tuples(
                st.sampled_from(["the", "apple", "pear", "salad", "don't", "3.50", "1990s", "I", "well-known"]),
                st.sampled_from(["", "", "", ","]),
            ),
            min_size=1,
            max_size=8,
        ),
        st.sampled_from([".", "!", "?"]),
        st.sampled_from([" ", "\n", "\n\n"]),
    ),
    min_size=1,
    max_size=5,
)


@given(sentences, st.booleans())
def test_detokenize_round_trip(doc, lowercase):
    """Prose → tokens → text → the same tokens; capitals only for a lower-cased model."""
    text = "".join(" ".join(w + p for w, p in words) + end + gap for words, end, gap in doc)
    tokens = tokenize(text, lowercase)
    printed = detokenize(tokens, capitalize=lowercase)
    assert tokenize(printed, lowercase) == tokens
    assert printed.count("\n") == tokens.count(EOS)  # one sentence per line


def test_detokenize_english():
    tokens = tokenize('the apple and pear salad. "yes," i said (twice). $3 is 100%!')
    assert detokenize(tokens, capitalize=True) == ('The apple and pear salad.\n"Yes," I said (twice).\n$3 is 100%!\n')
    assert detokenize(["salad", ".", EOS, "ok"]) == "salad.\nok"
    assert detokenize([UNK, "salad"]) == "<UNK> salad"


@given(texts)
def test_sentence_ends_of_characters_match_tokenizer(text):
    """The character sampler's count of sentence ends is the tokenizer's count of <EOS>
    inside the text (the tokenizer also ends the text's last sentence)."""
    ends = SentenceEnds()
    counted = sum(ends(ch) for ch in text)
    tokens = Tokenizer(lowercase=False).feed(text + "x")  # "x": what follows; not final, so no <EOS> at the end
    assert counted == tokens.count(EOS)


# --------------------------------------------------------------------------- #
# Vocabulary
# --------------------------------------------------------------------------- #


def counts_of(text: str) -> TokenCounts:
    c = TokenCounts()
    c.add(tokenize(text))
    return c


def test_vocab_most_frequent_with_ties_in_code_point_order():
    c = counts_of("b a c b a d. B")
    assert (c.tokens, c.sentences) == (10, 2)
    assert c.counts == Counter({"b": 3, "a": 2, "c": 1, "d": 1, ".": 1})
    v = WordVocab.from_counts(c.counts, 3)
    assert v.tokens == [EOS, UNK, "b", "a", "."]  # ".", "c", "d" tie at 1: "." (U+002E) first
    assert (v.index(EOS), v.index(UNK), v.index("zzz")) == (EOS_ID, UNK_ID, None)
    assert len(v) == 5 and v.boundary_id == EOS_ID


@given(st.lists(st.sampled_from("abcdefg"), max_size=60), st.integers(1, 10), st.randoms())
def test_vocab_order_does_not_depend_on_text_order(words, size, rnd):
    shuffled = list(words)
    rnd.shuffle(shuffled)
    assert WordVocab.from_counts(Counter(words), size) == WordVocab.from_counts(Counter(shuffled), size)


def test_encode_unknown_policies():
    v = WordVocab(["the", "apple", "and", "salad", "."])
    enc = v.encode("The apple and pear salad.")
    assert enc.ids.dtype == np.uint16
    assert enc.ids.tolist() == [2, 3, 4, UNK_ID, 5, 6, EOS_ID]
    assert enc.unknown == Counter({"pear": 1})
    assert v.encode("The apple and pear salad.", unknown="skip").ids.tolist() == [2, 3, 4, 5, 6, EOS_ID]
    with pytest.raises(CharlmError, match="1 word.* not in the model's vocabulary: 'pear'"):
        v.encode("The apple and pear salad.", unknown="error")
    assert v.decode(enc.ids) == "The apple and <UNK> salad.\n"


def test_json_round_trip_and_limits():
    v = WordVocab(["é", "naïve", "日本"], lowercase=False)
    again = WordVocab.from_json(v.to_json())
    assert again == v and again.lowercase is False
    assert json.loads(v.to_json()) == {"words": ["é", "naïve", "日本"], "lowercase": False}
    with pytest.raises(ValueError):
        WordVocab(["a", "a"])
    with pytest.raises(ValueError):
        WordVocab([EOS])
    with pytest.raises(CharlmError):
        WordVocab([str(i) for i in range(MAX_WORDS + 1)])
