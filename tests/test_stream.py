"""Streaming corpora: chunked decoding with exact byte offsets, the two-pass
encoder, the np.memmap cache for large corpora, and streamed perplexity."""

from __future__ import annotations

import hashlib
import io
import math
import os
import re
import subprocess
import sys
import time
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from charlm import corpus as corpus_mod
from charlm import data
from charlm import text as text_mod
from charlm import vocab as vocab_mod
from charlm.cli import run
from charlm.config import ModelConfig, TrainConfig
from charlm.corpus import load_corpus, min_corpus_chars
from charlm.data import encode_stream, split_text
from charlm.errors import CorpusError
from charlm.evaluate import score_ids
from charlm.prepare import prepare_run
from charlm.text import decode_bytes, iter_text
from charlm.vocab import Vocab
from tests.conftest import SMALL_TEXT

MIXED = "naïve café — 天地玄黄 🙂 Ω≈ç\n" + SMALL_TEXT


def pieces(raw: bytes, chunk: int, **kw) -> str:
    return "".join(iter_text(io.BytesIO(raw), "x", chunk_bytes=chunk, **kw))


# --------------------------------------------------------------------------- #
# iter_text: chunk boundaries never change the result
# --------------------------------------------------------------------------- #


def outcome(raw: bytes, chunk: int | None, errors: str = "strict") -> str:
    try:
        return "text:" + "".join(iter_text(io.BytesIO(raw), "x", errors=errors, chunk_bytes=chunk))
    except CorpusError as e:
        return "error:" + str(e)


fragments = st.lists(
    st.text(alphabet=st.characters(exclude_categories=("Cs",)), max_size=8).map(lambda s: s.encode())
    | st.binary(max_size=3)
    | st.sampled_from([b"\xff", b"\xc3", b"\xe2\x82", b"\xf0\x9f\x99", b"\x00", b" ", b"\xef\xbb\xbf"]),
    max_size=30,
).map(b"".join)


@settings(max_examples=400, deadline=None)
@given(raw=fragments, chunk=st.integers(1, 17), errors=st.sampled_from(["strict", "replace"]))
def test_chunking_never_changes_text_or_error(raw, chunk, errors):
    """Any bytes, any chunk size: the same text, or the same error at the same byte offset,
    as decoding everything at once."""
    assert outcome(raw, chunk, errors) == outcome(raw, 1 << 20, errors)


@settings(max_examples=200, deadline=None)
@given(text=st.text(alphabet=st.characters(exclude_categories=("Cs",)), min_size=1, max_size=200))
def test_valid_text_round_trips_through_any_chunking(text):
    raw = text.encode()
    if raw.startswith((b"\xef\xbb\xbf", *text_mod.BINARY_MAGIC)) or b"\x00" in raw or text.isspace():
        return
    assert pieces(raw, 3) == text == raw.decode()


def test_byte_offsets_count_from_the_start_of_the_file():
    raw = ("é" * 10).encode() + b"a" * 1000 + b"\xff" + b"b" * 100  # 20 + 1000 bytes before the bad one
    for chunk in (1, 2, 7, 16, 1024):
        with pytest.raises(CorpusError, match=r"byte offset 1020 \(byte 0xff\)"):
            pieces(raw, chunk)
    with pytest.raises(CorpusError, match="NUL byte at byte offset 513"):
        pieces(b"x" * 513 + b"\x00", 16)


def test_a_sequence_cut_by_the_end_of_the_file_is_reported_where_it_starts():
    raw = b"abc" * 10 + "🙂".encode()[:3]
    with pytest.raises(CorpusError, match="byte offset 30 "):
        pieces(raw, 4)
    assert pieces(raw, 4, errors="replace") == "abc" * 10 + "\ufffd"


def test_a_split_multibyte_character_and_the_bom():
    raw = b"\xef\xbb\xbf" + "🙂x".encode() * 5
    for chunk in (1, 2, 3, 5):
        assert pieces(raw, chunk) == "🙂x" * 5  # the byte-order mark is dropped
    assert decode_bytes("hé".encode("utf-16"), "x", encoding="utf-16") == "hé"


def test_digest_is_the_sha256_of_the_bytes():
    raw = MIXED.encode()
    d = hashlib.sha256()
    pieces(raw, 5, digest=d)
    assert d.hexdigest() == hashlib.sha256(raw).hexdigest()


# --------------------------------------------------------------------------- #
# load_corpus: in memory and through the memmap cache
# --------------------------------------------------------------------------- #


@pytest.fixture
def cache(tmp_path, monkeypatch) -> Path:
    folder = tmp_path / "cache"
    monkeypatch.setenv("CHARLM_CACHE", str(folder))
    return folder


@pytest.fixture
def mixed_file(tmp_path) -> Path:
    p = tmp_path / "mixed.txt"
    p.write_text(MIXED * 3, encoding="utf-8")
    return p


def reference(path: Path, val_frac: float):
    text = path.read_text(encoding="utf-8")
    vocab = Vocab.from_text(text)
    train, val = split_text(text, val_frac)
    return vocab, vocab.encode(train).ids, vocab.encode(val).ids


def test_small_corpus_is_encoded_in_memory(mixed_file, cache, monkeypatch):
    monkeypatch.setattr(text_mod, "CHUNK_BYTES", 7)  # many chunk boundaries inside multi-byte characters
    c = load_corpus(mixed_file, TrainConfig(val_frac=0.1, batch_size=4, seq_len=8))
    vocab, train, val = reference(mixed_file, 0.1)
    assert c.vocab == vocab
    assert np.array_equal(c.train_ids, train) and np.array_equal(c.val_ids, val)
    assert c.ids.dtype == np.uint16 and not isinstance(c.ids, np.memmap) and c.cache is None
    assert c.fingerprint().sha256 == hashlib.sha256(mixed_file.read_bytes()).hexdigest()
    assert c.fingerprint().chars == len(MIXED * 3)
    assert not cache.exists()  # nothing written for a small corpus


def test_large_corpus_goes_through_the_memmap_cache(mixed_file, cache, monkeypatch):
    monkeypatch.setattr(corpus_mod, "MEMMAP_MIN_CHARS", 1000)
    monkeypatch.setattr(text_mod, "CHUNK_BYTES", 100)
    notices = []
    c = load_corpus(mixed_file, TrainConfig(val_frac=0.1, batch_size=4, seq_len=8), report=notices.append)
    vocab, train, val = reference(mixed_file, 0.1)
    assert isinstance(c.ids, np.memmap) and not c.ids.flags.writeable
    assert np.array_equal(c.train_ids, train) and np.array_equal(c.val_ids, val)
    sha = hashlib.sha256(mixed_file.read_bytes()).hexdigest()
    assert c.cache == cache / f"{sha}-utf-8-strict-nfc-lf.u16"
    assert [p.name for p in cache.iterdir()] == [c.cache.name]  # no temporary file left
    assert re.match(r"encoding [\d,]+ characters to .*reused by later runs", notices[0])
    stamp = c.cache.stat().st_mtime_ns

    again = load_corpus(mixed_file, TrainConfig(val_frac=0.1, batch_size=4, seq_len=8), report=notices.append)
    assert notices[1].startswith("using the encoded corpus cached in")
    assert c.cache.stat().st_mtime_ns == stamp
    assert np.array_equal(again.ids, c.ids)


def test_a_damaged_cache_is_rebuilt_and_a_failed_write_leaves_nothing(mixed_file, cache, monkeypatch):
    monkeypatch.setattr(corpus_mod, "MEMMAP_MIN_CHARS", 1000)
    c = load_corpus(mixed_file, TrainConfig(val_frac=0.1, batch_size=4, seq_len=8))
    good = c.cache.read_bytes()
    del c
    Path(cache / next(iter(os.listdir(cache)))).write_bytes(good[:-2])  # truncated by hand
    rebuilt = load_corpus(mixed_file, TrainConfig(val_frac=0.1, batch_size=4, seq_len=8))
    assert rebuilt.cache.read_bytes() == good
    del rebuilt
    for p in cache.iterdir():
        p.unlink()

    real_replace = os.replace

    def full(src, dst):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", full)
    with pytest.raises(CorpusError, match=r"cannot write the encoded corpus to .*No space left.*CHARLM_CACHE"):
        load_corpus(mixed_file, TrainConfig(val_frac=0.1, batch_size=4, seq_len=8))
    monkeypatch.setattr(os, "replace", real_replace)
    assert list(cache.iterdir()) == []


def test_a_file_that_changes_between_the_passes_is_refused(mixed_file, cache, monkeypatch):
    real = corpus_mod.encoded_chunks

    def edit_then_encode(scan, progress):
        mixed_file.write_text(MIXED * 3 + "more", encoding="utf-8")
        yield from real(scan, progress)

    monkeypatch.setattr(corpus_mod, "encoded_chunks", edit_then_encode)
    with pytest.raises(CorpusError, match="changed while it was being read"):
        load_corpus(mixed_file, TrainConfig(val_frac=0.1, batch_size=4, seq_len=8))


def test_minimum_length_is_exact():
    for B, T, f in [(4, 16, 0.1), (32, 64, 0.1), (3, 7, 0.5), (1, 1, 0.25), (5, 5, 0.33)]:
        n = min_corpus_chars(B, T, f)
        assert n - round(n * f) >= B * T + 1 > (n - 1) - round((n - 1) * f)


def test_training_from_the_memmap_equals_training_from_memory(tmp_path, cache, monkeypatch):
    corpus = tmp_path / "c.txt"
    corpus.write_text(MIXED * 4, encoding="utf-8")
    cfg = dict(batch_size=4, seq_len=8, steps=3, eval_every=3, val_frac=0.1)
    model = ModelConfig(layers=1, hidden=8, embed=4)
    a = prepare_run(corpus, tmp_path / "a", model, TrainConfig(**cfg))
    monkeypatch.setattr(corpus_mod, "MEMMAP_MIN_CHARS", 100)
    b = prepare_run(corpus, tmp_path / "b", model, TrainConfig(**cfg))
    assert isinstance(b.stream.ids, np.memmap)
    assert a.corpus == b.corpus
    sa, sb = a.run(), b.run()
    assert np.array_equal(a.model.flat, b.model.flat)
    assert sa.best_val == sb.best_val


def test_loading_a_corpus_never_holds_it_whole(tmp_path, cache, monkeypatch):
    """Peak Python/NumPy memory while loading a corpus through the cache does not grow
    with the corpus: it is never one string or one bytes object."""
    monkeypatch.setattr(text_mod, "CHUNK_BYTES", 256 * 1024)
    monkeypatch.setattr(vocab_mod, "BLOCK_CHARS", 64 * 1024)
    monkeypatch.setattr(corpus_mod, "MEMMAP_MIN_CHARS", 1 << 20)
    block = (MIXED * 40).encode()
    peaks, sizes = [], []
    for megabytes in (3, 12):
        path = tmp_path / f"big{megabytes}.txt"
        with open(path, "wb") as f:
            for _ in range(megabytes * 2**20 // len(block) + 1):
                f.write(block)
        tracemalloc.start()
        try:
            c = load_corpus(path, TrainConfig(val_frac=0.1, batch_size=4, seq_len=8))
            peaks.append(tracemalloc.get_traced_memory()[1])
        finally:
            tracemalloc.stop()
        assert isinstance(c.ids, np.memmap) and len(c.ids) > (megabytes - 1) * 2**20
        sizes.append(path.stat().st_size)
    assert peaks[1] < peaks[0] + 2**20, peaks  # 9 MB more text, under 1 MB more memory
    assert peaks[1] < sizes[1] / 2, (peaks, sizes)


# --------------------------------------------------------------------------- #
# Streamed perplexity
# --------------------------------------------------------------------------- #


def test_encode_stream_drops_and_counts_unknown_characters_and_spools(monkeypatch):
    vocab = Vocab.from_text("abc \n")
    raw = ("abc xyz\n" * 50 + "é").encode()
    small = encode_stream(io.BytesIO(raw), vocab)
    assert small.unknown == {"x": 50, "y": 50, "z": 50, "é": 1} and small.unknown_count == 151
    assert vocab.decode(small.ids) == "abc \n" * 50
    monkeypatch.setattr(data, "SPOOL_MIN_CHARS", 16)
    monkeypatch.setattr(text_mod, "CHUNK_BYTES", 5)
    spooled = encode_stream(io.BytesIO(raw), vocab)
    assert isinstance(spooled.ids, np.memmap)
    assert np.array_equal(spooled.ids, small.ids) and spooled.unknown == small.unknown


def test_streamed_perplexity_equals_in_memory_scoring(tmp_path, tiny_checkpoint, monkeypatch, capsys):
    from charlm.checkpoint import load

    text = SMALL_TEXT * 3 + "¿unknown?"
    f = tmp_path / "held.txt"
    f.write_text(text, encoding="utf-8")
    ck = load(tiny_checkpoint)
    enc = ck.vocab.encode(text, unknown="skip")
    expected = score_ids(ck.build_model(), enc.ids, unknown=enc.unknown_count)

    monkeypatch.setattr(data, "SPOOL_MIN_CHARS", 500)  # spooled to a temporary file
    monkeypatch.setattr(text_mod, "CHUNK_BYTES", 64)
    for args in (["perplexity", str(f), "-c", str(tiny_checkpoint)], ["perplexity", "-", "-c", str(tiny_checkpoint)]):
        monkeypatch.setattr("sys.stdin", io.TextIOWrapper(io.BytesIO(text.encode())))
        capsys.readouterr()
        assert run(args) == 0
        values = dict(line.split(None, 1) for line in capsys.readouterr().out.strip().splitlines())
        assert math.isclose(float(values["nats/char"]), expected.nats_per_char, abs_tol=1e-4)
        assert values["scored"].startswith(f"{expected.chars:,} ")
        assert values["unknown"].startswith(f"{enc.unknown_count} ")


def rss_file_kb() -> int:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("RssFile:"))


def test_release_pages_unmaps_what_was_read(tmp_path):
    path = tmp_path / "ids.u16"
    np.arange(8 * 2**20, dtype=np.uint16).tofile(path)  # 16 MB
    ids = np.memmap(path, dtype=np.uint16, mode="r")
    before = rss_file_kb()
    total = int(ids.sum(dtype=np.int64))
    assert rss_file_kb() - before > 12_000  # reading mapped the pages
    data.release_pages(ids[10:])  # a view of the memmap works too
    assert rss_file_kb() - before < 2_000
    assert int(ids.sum(dtype=np.int64)) == total  # still readable, from the page cache
    data.release_pages(np.zeros(3))  # an array in memory: nothing to do


def test_releasing_pages_while_scoring_and_training_changes_nothing(tmp_path, cache, monkeypatch):
    corpus = tmp_path / "c.txt"
    corpus.write_text(MIXED * 4, encoding="utf-8")
    cfg = dict(batch_size=4, seq_len=8, steps=6, eval_every=3, val_frac=0.2)
    model = ModelConfig(layers=1, hidden=8, embed=4)
    monkeypatch.setattr(corpus_mod, "MEMMAP_MIN_CHARS", 100)
    a = prepare_run(corpus, tmp_path / "a", model, TrainConfig(**cfg))
    sa = a.run()
    calls = []
    real = data.release_pages
    monkeypatch.setattr(data, "release_pages", lambda ids: calls.append(1) or real(ids))
    monkeypatch.setattr("charlm.evaluate.release_pages", data.release_pages)
    monkeypatch.setattr(data, "RELEASE_EVERY", 1)
    monkeypatch.setattr("charlm.evaluate.RELEASE_EVERY", 1)
    b = prepare_run(corpus, tmp_path / "b", model, TrainConfig(**cfg))
    sb = b.run()
    assert len(calls) > 6  # every batch and every scoring chunk released its pages
    assert np.array_equal(a.model.flat, b.model.flat) and sa.best_val == sb.best_val


# --------------------------------------------------------------------------- #
# the cache checks its own contents and clears what killed runs left
# --------------------------------------------------------------------------- #


def out_of_range(ids: np.ndarray) -> None:
    ids[5] = 60000


def changed_in_range(ids: np.ndarray) -> None:
    ids[5], ids[6] = ids[6] + 1 if ids[6] == ids[5] else ids[6], ids[5]


@pytest.mark.parametrize(
    "damage, words",
    [
        (out_of_range, "an id of 60000 in a vocabulary of"),
        (changed_in_range, "its checksum does not match"),
        ("truncate", "bytes, not"),
        ("no trailer", "bytes, not"),  # a cache written before the checksum trailer existed
    ],
)
def test_a_cache_with_wrong_contents_is_encoded_again_and_trains_on_the_right_ids(
    tmp_path, cache, monkeypatch, damage, words
):
    corpus = tmp_path / "c.txt"
    corpus.write_text(MIXED * 4, encoding="utf-8")
    cfg = dict(batch_size=4, seq_len=8, steps=3, eval_every=3, val_frac=0.1)
    model = ModelConfig(layers=1, hidden=8, embed=4)
    a = prepare_run(corpus, tmp_path / "a", model, TrainConfig(**cfg))  # in memory: the right ids
    monkeypatch.setattr(corpus_mod, "MEMMAP_MIN_CHARS", 100)
    prepare_run(corpus, tmp_path / "b", model, TrainConfig(**cfg))  # writes the cache
    (path,) = cache.iterdir()
    good = path.read_bytes()
    n = (len(good) - 32) // 2  # ids, then their sha256
    if damage == "truncate":
        path.write_bytes(good[:-2])
    elif damage == "no trailer":
        path.write_bytes(good[: 2 * n])
    else:
        ids = np.frombuffer(good[: 2 * n], dtype="<u2").copy()
        damage(ids)
        path.write_bytes(ids.tobytes() + good[2 * n :])
    assert path.read_bytes() != good
    notices = []
    c = load_corpus(corpus, TrainConfig(**cfg), report=notices.append)
    assert any(f"cached in {path} is damaged (" in m and words in m for m in notices), "\n".join(notices)
    assert path.read_bytes() == good
    assert np.array_equal(c.train_ids, a.stream.ids)
    del c
    path.write_bytes(good[: 2 * n])  # damaged again: training rebuilds it and learns the same as from memory
    b = prepare_run(corpus, tmp_path / "c", model, TrainConfig(**cfg))
    assert path.read_bytes() == good
    sa, sb = a.run(), b.run()
    assert np.array_equal(a.model.flat, b.model.flat) and sa.best_val == sb.best_val


def test_temps_of_killed_encodings_are_removed(mixed_file, cache, monkeypatch):
    monkeypatch.setattr(corpus_mod, "MEMMAP_MIN_CHARS", 1000)
    cache.mkdir()
    done = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead = cache / f".x.u16.{int(done.stdout)}.tmp"  # its writer was killed
    dead.write_bytes(b"\0" * 100)
    old = cache / ".y.u16.1.tmp"  # pid 1 lives, but nothing was written to it for two days
    old.write_bytes(b"\0" * 100)
    os.utime(old, (time.time() - 2 * 86400,) * 2)
    live = cache / f".z.u16.{os.getpid()}.tmp"  # a running encoding
    live.write_bytes(b"\0" * 100)
    notices = []
    c = load_corpus(mixed_file, TrainConfig(val_frac=0.1, batch_size=4, seq_len=8), report=notices.append)
    assert sorted(p.name for p in cache.iterdir()) == sorted([c.cache.name, live.name])
    assert sum("left by a killed run" in m for m in notices) == 2
