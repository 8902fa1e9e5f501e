"""Fuzzing the checkpoint loader and the vocabulary parser.

Thousands of random, truncated, bit-flipped, spliced and structurally mutated
checkpoint files: every one is either loaded into a usable model or refused
with charlm's own CheckpointError — no other exception escapes, nothing hangs.
"""

from __future__ import annotations

import json
import math
import os
import struct
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from charlm.checkpoint import load, save
from charlm.errors import CharlmError, CheckpointError
from charlm.model import CharModel, ModelConfig
from charlm.vocab import Vocab


def fuzz(examples: int) -> settings:
    return settings(
        max_examples=examples, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large]
    )


def _good_checkpoint(folder: Path) -> bytes:
    vocab = Vocab.from_text("héllo wörld 🙂\n")
    model = CharModel(ModelConfig(len(vocab), embed=3, hidden=4, layers=2, dropout=0.1), seed=4)
    extra = {
        "optimizer.exp_avg": np.arange(model.num_params, dtype=np.float32),
        "state.a_l0": np.ones((2, 4), np.float32),
    }
    path = folder / "good.safetensors"
    save(path, model, vocab, {"step": 7, "best_val": 1.5}, {"sha256": "ab" * 32, "chars": 10}, extra)
    return path.read_bytes()


@pytest.fixture(scope="module")
def good(tmp_path_factory) -> bytes:
    return _good_checkpoint(tmp_path_factory.mktemp("good"))


@pytest.fixture(scope="module")
def target(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("fuzz") / "f.safetensors"


def split(blob: bytes) -> tuple[dict, bytes]:
    (n,) = struct.unpack("<Q", blob[:8])
    return json.loads(blob[8 : 8 + n]), blob[8 + n :]


def join(header: dict, data: bytes) -> bytes:
    raw = json.dumps(header).encode()
    raw += b" " * (-len(raw) % 8)
    return struct.pack("<Q", len(raw)) + raw + data


def overwrite(path: Path, blob: bytes) -> None:
    """Put ``blob`` in ``path`` without truncating it to zero first (on ext4 that
    forces a disk flush per write, which made these tests I/O-bound)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT)
    try:
        os.pwrite(fd, blob, 0)
        os.ftruncate(fd, len(blob))
    finally:
        os.close(fd)


def loads_or_refuses(path: Path, blob: bytes) -> bool:
    """True if ``blob`` loaded as a usable checkpoint, False if it was refused with
    CheckpointError; any other exception fails the test."""
    overwrite(path, blob)
    try:
        ck = load(path)
    except CheckpointError as e:
        message = str(e)
        assert message and "\n" not in message
        return False
    model = ck.build_model()  # whatever loads is usable: shapes, config and vocabulary agree
    assert model.config.vocab_size == len(ck.vocab)
    assert all(np.isfinite(p).all() for p in ck.params.values())
    x = np.zeros((2, 1), dtype=np.int64)  # (T, B)
    with np.errstate(all="ignore"):  # flipped exponent bits give finite but huge weights
        nll, _ = model.nll(x, x, model.zero_state(1))
    assert nll.shape == (2, 1)
    return True


def test_the_unmodified_file_loads(good, target):
    assert loads_or_refuses(target, good)


def test_every_truncation_is_refused(good, target):
    """Every proper prefix of a checkpoint, from 0 bytes to all but the last byte."""
    for cut in range(len(good)):
        assert not loads_or_refuses(target, good[:cut]), cut


@pytest.mark.slow
def test_every_single_bit_flip_in_the_header(good, target):
    """All 8·(8 + header) single-bit flips of the length prefix and the JSON header."""
    (n,) = struct.unpack("<Q", good[:8])
    loaded = 0
    for pos in range(8 + n):
        for bit in range(8):
            b = bytearray(good)
            b[pos] ^= 1 << bit
            loaded += loads_or_refuses(target, bytes(b))
    assert loaded < 8 * (8 + n)  # most flips break the header; the test must be able to tell


@fuzz(1500)
@given(blob=st.binary(max_size=4096))
def test_random_bytes(target, blob):
    loads_or_refuses(target, blob)


@fuzz(500)
@given(body=st.binary(max_size=512), length=st.integers(0, 2**64 - 1))
def test_random_bytes_behind_a_plausible_length(target, body, length):
    """A header length that may be huge, zero or past the end, then garbage."""
    loads_or_refuses(target, struct.pack("<Q", length) + body)


@pytest.mark.slow
@fuzz(1500)
@given(data=st.data())
def test_bit_flips_anywhere(good, target, data):
    """1–16 random bit flips, half of the time all inside the header."""
    (n,) = struct.unpack("<Q", good[:8])
    end = 8 + n if data.draw(st.booleans()) else len(good)
    b = bytearray(good)
    for pos in data.draw(st.lists(st.integers(0, end - 1), min_size=1, max_size=16)):
        b[pos] ^= 1 << data.draw(st.integers(0, 7))
    loads_or_refuses(target, bytes(b))


@pytest.mark.slow
@fuzz(1000)
@given(data=st.data())
def test_splices_and_overwrites(good, target, data):
    cut = data.draw(st.integers(0, len(good)))
    junk = data.draw(st.binary(min_size=1, max_size=64))
    if data.draw(st.booleans()):
        blob = good[:cut] + junk + good[cut:]  # inserted
    else:
        blob = good[:cut] + junk + good[cut + len(junk) :]  # overwritten
    loads_or_refuses(target, blob)


json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**70), 2**70)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=12,
)
small_ints = st.integers(-3, 40) | st.sampled_from([0, 1, 2, 3, 4, 8, 11, 12, 16, 2**31, 2**63, 10**30]) | st.booleans()


def config_values():
    return st.fixed_dictionaries(
        {},
        optional={
            "vocab_size": small_ints | json_values,
            "cell": st.sampled_from(["lstm", "gru", "rnn", "LSTM", ""]) | json_values,
            "embed": small_ints | st.floats(),
            "hidden": small_ints | st.floats(),
            "layers": small_ints | st.floats(),
            "dropout": st.floats(allow_nan=True, allow_infinity=True) | small_ints,
            "extra": json_values,
        },
    )


@pytest.mark.slow
@fuzz(1200)
@given(data=st.data())
def test_mutated_header_fields(good, target, data):
    """Valid JSON, wrong content: any metadata field or tensor entry replaced."""
    header, body = split(good)
    meta = header["__metadata__"]
    kind = data.draw(st.sampled_from(["meta_json", "meta_text", "config", "vocab", "entry", "drop", "meta_type"]))
    if kind == "meta_json":
        key = data.draw(st.sampled_from(["config", "vocab", "train", "corpus", "format_version", "format"]))
        meta[key] = json.dumps(data.draw(json_values))
    elif kind == "meta_text":
        key = data.draw(st.sampled_from(["config", "vocab", "train", "corpus", "format_version"]))
        meta[key] = data.draw(st.text(max_size=40))
    elif kind == "config":
        cfg = json.loads(meta["config"])
        cfg.update(data.draw(config_values()))
        meta["config"] = json.dumps(cfg)
    elif kind == "vocab":
        cps = json.loads(meta["vocab"])
        op = data.draw(st.sampled_from(["append", "replace", "shuffle"]))
        if op == "append":
            cps.append(data.draw(st.integers(-5, 0x110005) | st.booleans() | st.floats()))
        elif op == "replace":
            cps[data.draw(st.integers(0, len(cps) - 1))] = data.draw(st.integers(0xD7F0, 0xE010) | json_values)
        else:
            cps = data.draw(st.permutations(cps))
        meta["vocab"] = json.dumps(cps)
    elif kind == "entry":
        name = data.draw(st.sampled_from(sorted(k for k in header if k != "__metadata__")))
        field = data.draw(st.sampled_from(["dtype", "shape", "data_offsets", "whole"]))
        value = data.draw(
            json_values
            | st.sampled_from(["F32", "F64", "F16", "I64", "BOOL"])
            | st.lists(st.integers(-2, 2**66), max_size=3)
        )
        if field == "whole":
            header[name] = value
        else:
            header[name][field] = value
    elif kind == "drop":
        key = data.draw(st.sampled_from(sorted(header) + sorted(f"__metadata__.{k}" for k in meta)))
        if key.startswith("__metadata__."):
            del meta[key.split(".", 1)[1]]
        else:
            del header[key]
    else:
        header["__metadata__"] = data.draw(json_values)
    loads_or_refuses(target, join(header, body))


def test_deep_nesting_and_huge_numbers_are_refused(good, target):
    """JSON that Python's parser itself rejects (too deep, too many digits)."""
    header, body = split(good)
    for bad in ("[" * 100_000 + "]" * 100_000, "1" * 5000):
        mutated = dict(header, __metadata__=dict(header["__metadata__"], config=bad))
        assert not loads_or_refuses(target, join(mutated, body))
        deep = join(header, body).replace(b'"__metadata__"', b'"x": ' + bad.encode() + b', "__metadata__"', 1)
        deep = struct.pack("<Q", len(deep) - 8 + len(bad) + 6) + deep[8:]
        assert not loads_or_refuses(target, deep)


def test_a_config_with_fractional_sizes_is_refused(good, target):
    """3.0 == 3 in Python, so a float size would pass a shape comparison and then break the model."""
    header, body = split(good)
    cfg = json.loads(header["__metadata__"]["config"])
    cfg["embed"] = float(cfg["embed"])
    header["__metadata__"]["config"] = json.dumps(cfg)
    with pytest.raises(CheckpointError, match="config"):
        load_blob(target, join(header, body))


def load_blob(path: Path, blob: bytes):
    overwrite(path, blob)
    return load(path)


# --------------------------------------------------------------------------- #
# Vocab.from_json
# --------------------------------------------------------------------------- #


def parses_or_refuses(s) -> Vocab | None:
    try:
        vocab = Vocab.from_json(s)
    except (ValueError, CharlmError) as e:
        assert str(e)
        return None
    cps = [ord(c) for c in vocab.chars]
    assert cps == sorted(set(cps)) and all(not 0xD800 <= c <= 0xDFFF for c in cps)
    assert Vocab.from_json(vocab.to_json()) == vocab
    return vocab


@fuzz(1000)
@given(s=st.text(max_size=60))
def test_vocab_from_arbitrary_text(s):
    parses_or_refuses(s)


@fuzz(600)
@given(value=json_values)
def test_vocab_from_arbitrary_json(value):
    parses_or_refuses(json.dumps(value))


@pytest.mark.slow
@fuzz(1000)
@given(cps=st.lists(st.integers(-2, 0x110002) | st.booleans() | st.floats(allow_nan=False), max_size=40))
def test_vocab_from_code_point_lists(cps):
    vocab = parses_or_refuses(json.dumps(cps))
    valid = (
        all(isinstance(c, int) and not isinstance(c, bool) for c in cps)
        and cps == sorted(set(cps))
        and all(0 <= c <= 0x10FFFF and not 0xD800 <= c <= 0xDFFF for c in cps)
        and 0 < len(cps)
    )
    assert (vocab is not None) == valid, cps
    if vocab is not None:
        assert [ord(c) for c in vocab.chars] == cps


def test_vocab_refuses_surrogates_and_booleans():
    for bad in ("[55296]", "[true, 2]", "[1.0]", "[" + "[" * 50_000 + "]" * 50_000 + "]"):
        with pytest.raises((ValueError, CharlmError)):
            Vocab.from_json(bad)
    assert math.isclose(len(Vocab.from_json("[65, 66]")), 2)
