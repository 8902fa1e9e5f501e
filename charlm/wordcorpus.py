"""A word model's text: the training corpus as token ids, and text to score.

``load_word_corpus`` reads the file twice with ``charlm.text.iter_text``, as
``charlm.corpus.load_corpus`` does for characters. The first pass splits it into
tokens (``charlm.words``) chunk by chunk and counts every token — memory grows
with the number of distinct tokens, not with the text — hashes its bytes and
counts its characters, tokens and sentences, so the vocabulary
(``WordVocab.from_counts``) and every refusal come before anything is written.
The second pass encodes the tokens to uint16 ids, in memory or in the corpus
cache (``charlm.corpus.encode_ids``) under a name that also holds the tokenizer's
version, the case policy and the vocabulary size. The last ``val_frac`` of the
tokens is held out for validation.

``encode_word_stream`` reads a text to score in one streaming pass: ids after an
<EOS> (so its first token starts a sentence and is scored too), the unknown
tokens, and the characters the per-character figure is taken over.
"""

from __future__ import annotations

import codecs
import hashlib
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

import numpy as np

from charlm.config import TrainConfig, WordConfig
from charlm.corpus import (
    Corpus,
    CorpusFingerprint,
    CorpusScan,
    check_length,
    encode_ids,
    form_of,
    refuse_special_file,
)
from charlm.errors import CorpusError
from charlm.text import iter_text
from charlm.textform import RAW, TextForm
from charlm.words import Tokenizer
from charlm.wordvocab import EOS_ID, TokenCounts, WordVocab

TOKENIZER_VERSION = 1  # in the cache name: ids cached by another tokenizer are never reused
MIN_SENTENCES = 2  # a word model learns from at least this many sentences
TOKEN_BLOCK = 2**18  # characters split into tokens at a time (their token list: a few MB of Python strings)


@dataclass(frozen=True)
class WordScan(CorpusScan):
    """What the first pass over a word corpus learns (``vocab`` is a WordVocab)."""

    n_tokens: int = 0  # tokens, <EOS> included
    n_sentences: int = 0  # <EOS> tokens
    distinct: int = 0  # distinct tokens besides <EOS>
    unknown: int = 0  # tokens outside the vocabulary (read as <UNK>)


@dataclass(frozen=True)
class WordCorpus(Corpus):
    """A word corpus: ``ids`` are token ids and ``n_val`` counts tokens."""

    def fingerprint(self) -> CorpusFingerprint:
        s = self.scan
        return CorpusFingerprint(
            s.path.name,
            s.sha256,
            s.n_chars,
            None,
            s.encoding,
            s.errors,
            s.form.nfc,
            s.form.crlf_as_lf,
            tokens=s.n_tokens,
            val_tokens=self.n_val,
            unknown_tokens=s.unknown,
        )


def scan_words(
    path: Path,
    words: WordConfig,
    encoding: str = "utf-8",
    errors: str = "strict",
    *,
    form: TextForm = RAW,
    progress: bool = False,
) -> WordScan:
    """First pass: check the file, count its characters, tokens, sentences and each token, hash
    its bytes, and keep the ``words.vocab_size`` most frequent tokens (all of them when it has
    fewer). Raises CorpusError for a text of fewer than MIN_SENTENCES sentences."""
    path = Path(path)
    label = str(path)
    refuse_special_file(path, label)
    digest = hashlib.sha256()
    counts = TokenCounts()
    tok = Tokenizer(words.lowercase)
    n_chars = 0
    reading = "reading" if progress else None
    for text, final in _blocks(iter_text(path, label, encoding, errors, form=form, digest=digest, progress=reading)):
        n_chars += len(text)
        counts.add(tok.feed(text, final=final))
    if counts.sentences < MIN_SENTENCES:
        raise CorpusError(
            f"{label}: {counts.sentences} sentence(s); a word model needs at least {MIN_SENTENCES}. A sentence "
            "ends with . ! or ? before a space or a line break, or at a blank line. Use a longer text.",
            kind="too_few_sentences",
            label=label,
            sentences=counts.sentences,
        )
    vocab = WordVocab.from_counts(counts.counts, min(words.vocab_size, len(counts.counts)), words.lowercase)
    kept = sum(counts.counts[w] for w in vocab.words)
    unknown = counts.tokens - counts.sentences - kept
    return WordScan(
        path,
        label,
        encoding,
        errors,
        n_chars,
        digest.hexdigest(),
        vocab,
        form,
        n_tokens=counts.tokens,
        n_sentences=counts.sentences,
        distinct=len(counts.counts),
        unknown=unknown,
    )


def word_chunks(scan: WordScan, progress: bool = False) -> Iterator[np.ndarray]:
    """Second pass: the token ids of the file chunk by chunk, each (n,) uint16; refuses a
    file that changed since ``scan``."""
    digest = hashlib.sha256()
    tok = Tokenizer(scan.vocab.lowercase)
    n = 0
    changed = CorpusError(f"{scan.label}: the file changed while it was being read. Run the command again.")
    bar = "encoding" if progress else None
    texts = iter_text(scan.path, scan.label, scan.encoding, scan.errors, form=scan.form, digest=digest, progress=bar)
    for text, final in _blocks(texts):
        ids = scan.vocab.ids(tok.feed(text, final=final))
        n += len(ids)
        if n > scan.n_tokens:
            raise changed
        yield ids
    if n != scan.n_tokens or digest.hexdigest() != scan.sha256:
        raise changed


def _blocks(texts: Iterator[str]) -> Iterator[tuple[str, bool]]:
    """(block, False) for each block of at most TOKEN_BLOCK characters of the chunks, then ("", True):
    the tokens of one block are Python strings, so blocks keep them to a few MB."""
    for text in texts:
        for start in range(0, len(text), TOKEN_BLOCK):
            yield text[start : start + TOKEN_BLOCK], False
    yield "", True


def word_cache_name(scan: WordScan) -> str:
    """``<sha256>-<codec>-<errors>-<form>-words<tokenizer version>-<lower|cased>-<V>.u16``."""
    codec = codecs.lookup(scan.encoding).name
    form = "-".join(name for name, on in (("nfc", scan.form.nfc), ("lf", scan.form.crlf_as_lf)) if on) or "raw"
    case = "lower" if scan.vocab.lowercase else "cased"
    return f"{scan.sha256}-{codec}-{scan.errors}-{form}-words{TOKENIZER_VERSION}-{case}-{len(scan.vocab)}.u16"


def load_word_corpus(
    path: Path,
    config: TrainConfig,
    words: WordConfig,
    *,
    progress: bool = False,
    report: Callable[[str], None] | None = None,
    check: Callable[[WordScan], None] | None = None,
) -> WordCorpus:
    """Check, count and encode a word corpus without holding it as a string (see the
    module docstring). A vocabulary size above the text's distinct tokens keeps them all,
    said through ``report``. ``check`` is called with the first pass's findings before the
    text is encoded (it may raise)."""
    scan = scan_words(Path(path), words, config.encoding, config.errors, form=form_of(config), progress=progress)
    n_val = check_length(scan.label, scan.n_tokens, config, unit="tokens")
    if scan.distinct < words.vocab_size and report is not None:
        report(
            f"notice: {scan.label} has {scan.distinct:,} distinct tokens, fewer than the {words.vocab_size:,} "
            f"asked for: the vocabulary keeps all of them ({len(scan.vocab):,} ids with <EOS> and <UNK>)"
        )
    if check is not None:
        check(scan)
    ids, cache = encode_ids(
        scan.n_tokens, len(scan.vocab), word_cache_name(scan), lambda: word_chunks(scan, progress), report, "tokens"
    )
    return WordCorpus(scan, ids, n_val, cache)


@dataclass(frozen=True)
class WordText:
    """Text to score with a word model: its ids after an <EOS>, and what they stand for."""

    ids: np.ndarray  # (1 + tokens,) uint16: <EOS>, then the text's tokens (<UNK> for unknown ones)
    chars: int  # characters of the text, in the model's text form
    unknown: Counter = field(default_factory=Counter)  # token → occurrences read as <UNK>

    @property
    def tokens(self) -> int:
        return len(self.ids) - 1

    @property
    def unknown_count(self) -> int:
        return sum(self.unknown.values())


def encode_word_stream(
    source: Path | BinaryIO,
    vocab: WordVocab,
    label: str | None = None,
    encoding: str = "utf-8",
    errors: str = "strict",
    *,
    form: TextForm = RAW,
    progress: bool = False,
) -> WordText:
    """One streaming pass over a file or a binary stream: check it (``iter_text``), bring it
    into ``form``, split it into tokens with ``vocab``'s case policy and encode them, unknown
    tokens as <UNK> (and counted)."""
    tok = Tokenizer(vocab.lowercase)
    parts = [np.array([EOS_ID], np.uint16)]
    unknown: Counter = Counter()
    n_chars = 0
    texts = iter_text(source, label, encoding, errors, form=form, progress="reading" if progress else None)
    for text, final in _blocks(texts):
        n_chars += len(text)
        enc = vocab.encode_tokens(tok.feed(text, final=final), unknown="unk")
        unknown.update(enc.unknown)
        parts.append(enc.ids)
    return WordText(np.concatenate(parts), n_chars, unknown)
