from __future__ import annotations

import json
import os
import pickle
import struct

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from charlm import checkpoint
from charlm.checkpoint import Checkpoint, load, save
from charlm.config import TrainConfig, TrainState
from charlm.corpus import CorpusFingerprint
from charlm.errors import CheckpointError
from charlm.model import CharModel, ModelConfig
from charlm.vocab import Vocab

SHA = "ab" * 32  # a sha256 in hex: 64 digits


def make(tmp_path, cell="lstm", name="m.safetensors"):
    vocab = Vocab.from_text("héllo wörld 🙂\n")
    model = CharModel(ModelConfig(len(vocab), cell=cell, embed=3, hidden=5, layers=2, dropout=0.1), seed=4)
    path = tmp_path / name
    extra = {"optimizer.exp_avg": np.arange(model.num_params, dtype=np.float32)}
    save(path, model, vocab, TrainState(step=7, best_val=1.5), CorpusFingerprint(sha256=SHA), extra)
    return path, model, vocab


@pytest.mark.parametrize("cell", ["lstm", "gru", "rnn"])
def test_round_trip_is_exact(tmp_path, cell):
    path, model, vocab = make(tmp_path, cell)
    ck = load(path)
    assert isinstance(ck, Checkpoint)
    assert ck.config == model.config
    assert ck.vocab == vocab
    assert ck.state == TrainState(step=7, best_val=1.5) and ck.train_config is None
    assert ck.corpus == CorpusFingerprint(sha256=SHA)
    for name, p in model.params.items():
        assert np.array_equal(ck.params[name], p), name
    assert np.array_equal(ck.extra["optimizer.exp_avg"], np.arange(model.num_params, dtype=np.float32))
    rebuilt = ck.build_model()
    assert np.array_equal(rebuilt.flat, model.flat)
    # the cell comes back from the checkpoint alone, and computes the same function
    assert type(rebuilt.rnn[1]) is type(model.rnn[1]) and type(model.rnn[1]).__name__ == cell.upper()
    ids = np.array([[0, 1], [2, 3], [4, 0]])
    assert np.array_equal(
        rebuilt.forward_logits(ids, rebuilt.zero_state(2))[0], model.forward_logits(ids, model.zero_state(2))[0]
    )


def test_tensors_are_pytorch_state_dict_layout(tmp_path):
    path, model, _ = make(tmp_path)
    header, meta = checkpoint.read_header(path)
    H, E = 5, 3
    assert header["rnn.weight_ih_l0"]["shape"] == [4 * H, E]
    assert header["rnn.weight_hh_l1"]["shape"] == [4 * H, H]
    assert header["rnn.bias_hh_l1"]["shape"] == [4 * H]
    assert meta["format"] == "charlm" and meta["format_version"] == "1"
    assert json.loads(meta["config"])["cell"] == "lstm"


def test_interrupted_save_never_replaces_a_good_checkpoint(tmp_path, monkeypatch):
    path, model, vocab = make(tmp_path)
    before = path.read_bytes()

    def crash(fd):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", crash)
    model.flat += 1.0
    with pytest.raises(CheckpointError, match="No space left on device.*unchanged"):
        save(path, model, vocab)
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.safetensors"]  # no temp file left


def test_kill_during_write_leaves_old_file(tmp_path, monkeypatch):
    """A KeyboardInterrupt in the middle of writing acts like a crash: old file intact."""
    path, model, vocab = make(tmp_path)
    before = path.read_bytes()
    real_replace = os.replace

    def interrupted(src, dst):
        raise KeyboardInterrupt

    monkeypatch.setattr(os, "replace", interrupted)
    with pytest.raises(KeyboardInterrupt):
        save(path, model, vocab)
    monkeypatch.setattr(os, "replace", real_replace)
    assert path.read_bytes() == before
    load(path)


def test_pickle_is_refused_without_unpickling(tmp_path):
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    p = tmp_path / "evil.safetensors"
    p.write_bytes(pickle.dumps(Evil()))
    with pytest.raises(CheckpointError, match="pickle"):
        load(p)
    assert not marker.exists()


@pytest.mark.parametrize("prefix", [b"\x80", b"\x80\x02", b"\x80\x05", b"(d", b"(l", b"}q", b"]q"])
def test_a_header_length_that_starts_like_a_pickle_still_loads(tmp_path, prefix):
    """The header length is the file's first 8 bytes: a length of 128 + 256k, or one
    whose low bytes read "(d", opens like a pickle. It is still a safetensors file."""
    path, model, vocab = make(tmp_path)
    path.write_bytes(with_length_prefix(path.read_bytes(), prefix))  # safetensors pads its header with spaces
    assert path.read_bytes().startswith(prefix)
    ck = load(path)
    assert ck.vocab == vocab
    assert all(np.array_equal(ck.params[k], p) for k, p in model.params.items())


def with_length_prefix(blob: bytes, prefix: bytes) -> bytes:
    """``blob`` (a safetensors file) with its header padded so that the 8-byte header
    length starts with ``prefix`` (little-endian)."""
    (n,) = struct.unpack("<Q", blob[:8])
    step = 256 ** len(prefix)
    length = n + (int.from_bytes(prefix, "little") - n) % step  # the next length ≥ n that starts so
    return struct.pack("<Q", length) + blob[8 : 8 + n] + b" " * (length - n) + blob[8 + n :]


class Evil:
    def __reduce__(self):
        return (print, ("unpickled!",))


@pytest.mark.parametrize("protocol", [2, 3, 4, 5])
@pytest.mark.parametrize(
    "obj", [Evil(), {"w": [0.5] * 300, "step": 7}, list(range(1000)), "a{b"], ids=["evil", "dict", "list", "str"]
)
def test_a_real_pickle_is_named_a_pickle(tmp_path, protocol, obj):
    p = tmp_path / "model.pt"
    p.write_bytes(pickle.dumps(obj, protocol=protocol))
    with pytest.raises(CheckpointError, match="Python pickle"):
        load(p)


@pytest.mark.parametrize("prefix", [b"\x80\x02", b"\x80\x03", b"\x80\x04", b"\x80\x05"])
@pytest.mark.parametrize(
    "cut,match",
    [
        (lambda b, n: b[: 8 + n // 2], r"truncated checkpoint \(the header runs past the end"),
        (lambda b, n: b[:-100], r"damaged or truncated checkpoint \(tensor .* out of bounds"),
        (lambda b, n: b[:8] + b"[" + b[9:], r"damaged checkpoint \(the header is not"),
    ],
    ids=["cut-in-header", "cut-in-tensors", "header-not-an-object"],
)
def test_a_damaged_file_whose_length_reads_like_pickle_protocol_is_not_called_a_pickle(tmp_path, prefix, cut, match):
    """A header length of 0x0280 + 65536k opens like PROTO 2: a damaged file with it is
    refused for what is wrong with it, not named a pickle."""
    path, *_ = make(tmp_path)
    blob = with_length_prefix(path.read_bytes(), prefix)
    path.write_bytes(blob)
    load(path)  # the undamaged file loads
    (n,) = struct.unpack("<Q", blob[:8])
    path.write_bytes(cut(blob, n))
    with pytest.raises(CheckpointError, match=match) as e:
        load(path)
    assert "pickle" not in str(e.value)


@pytest.mark.parametrize(
    "mutate,match",
    [
        (lambda b: b[: len(b) // 2], "truncated|damaged"),
        (lambda b: b[:5], "too short"),
        (lambda b: b"", "too short"),
        (lambda b: b"PK\x03\x04" + b[4:], "zip"),
        (lambda b: b"hello world, not a checkpoint at all", "not a safetensors|truncated"),
    ],
)
def test_damaged_files_are_refused(tmp_path, mutate, match):
    path, *_ = make(tmp_path)
    path.write_bytes(mutate(path.read_bytes()))
    with pytest.raises(CheckpointError, match=match):
        load(path)


def rewrite_meta(path, **changes):
    raw = path.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8 : 8 + n])
    for k, v in changes.items():
        if v is None:
            header["__metadata__"].pop(k)
        else:
            header["__metadata__"][k] = v
    new = json.dumps(header).encode()
    new += b" " * ((8 - len(new) % 8) % 8)
    path.write_bytes(struct.pack("<Q", len(new)) + new + raw[8 + n :])


@pytest.mark.parametrize(
    "changes,match",
    [
        ({"format_version": "99"}, "version '99'"),
        ({"config": "{not json"}, "config is not valid JSON"),
        ({"config": None}, "config is missing"),
        ({"vocab": "[1, 2"}, "vocab is not valid JSON"),
        ({"format": "other"}, "not one written by charlm"),
        (
            {
                "config": json.dumps(
                    {"vocab_size": 11, "cell": "lstm", "embed": 3, "hidden": 6, "layers": 2, "dropout": 0.1}
                )
            },
            "shape",
        ),
    ],
)
def test_bad_metadata_is_refused(tmp_path, changes, match):
    path, *_ = make(tmp_path)
    rewrite_meta(path, **changes)
    with pytest.raises(CheckpointError, match=match):
        load(path)


@pytest.mark.parametrize(
    "changes,match",
    [
        ({"train": json.dumps({"step": "seven"})}, 'train.step must be an integer, not "seven"'),
        ({"train": json.dumps({"config": {"lr": "fast"}})}, 'train.config.lr must be a number, not "fast"'),
        ({"corpus": json.dumps({"chars": "many"})}, 'corpus.chars must be an integer or null, not "many"'),
    ],
)
def test_damaged_training_metadata_is_refused(tmp_path, changes, match):
    path, *_ = make(tmp_path)
    rewrite_meta(path, **changes)
    with pytest.raises(CheckpointError, match=match):
        load(path)


# Metadata exactly as 1ce1bb7 wrote it for a resumable run (json.dumps of plain dicts, sorted keys).
OLD_CONFIG = {
    "batch_size": 4,
    "clip": 5.0,
    "epochs": None,
    "eval_every": 10,
    "final_lr_frac": 0.1,
    "lr": 0.003,
    "minutes": None,
    "seed": 7,
    "seq_len": 16,
    "steps": 60,
    "threads": 1,
    "val_chars": 500000,
    "val_frac": 0.1,
    "warmup": 50,
}
OLD_TRAIN = {
    "adam_t": 30,
    "best_step": 30,
    "best_val": 3.364525,
    "chars_seen": 1920,
    "config": OLD_CONFIG,
    "elapsed": 1.25,
    "epoch": 0,
    "position": 30,
    "rng": {"bit_generator": "PCG64", "has_uint32": 0, "state": {"inc": 7, "state": 2**90 + 1}, "uinteger": 0},
    "step": 30,
    "total_steps": 60,
    "train_seconds": 1.0,
    "val_curve": [[10, 4.17], [20, 3.9], [30, 3.36453]],
}
OLD_CORPUS = {
    "chars": 1115394,
    "encoding": "latin-1",
    "errors": "replace",
    "name": "shakespeare.txt",
    "sha256": "86c4e6aa9db7c042ec79f339dcb96d42b0075e16b8fc2e86bf0ca57e2dc565ed",
    "val_chars": 111539,
}


def test_an_old_header_is_read_once_into_typed_objects_and_written_back_the_same(tmp_path):
    path, model, vocab = make(tmp_path)
    rewrite_meta(path, train=json.dumps(OLD_TRAIN, sort_keys=True), corpus=json.dumps(OLD_CORPUS, sort_keys=True))
    ck = load(path)
    assert ck.state.step == 30 and ck.state.position == 30 and ck.state.total_steps == 60
    assert ck.state.best_val == 3.364525 and ck.state.val_curve == OLD_TRAIN["val_curve"]
    assert ck.state.rng == OLD_TRAIN["rng"] and ck.state.adam_t == 30
    assert ck.train_config == TrainConfig(batch_size=4, seq_len=16, eval_every=10, steps=60, seed=7, threads=1)
    assert ck.corpus == CorpusFingerprint(
        "shakespeare.txt", OLD_CORPUS["sha256"], 1115394, 111539, "latin-1", "replace"
    )
    again = tmp_path / "again.safetensors"
    save(again, ck.build_model(), ck.vocab, ck.state, ck.corpus)
    _, meta = checkpoint.read_header(again)
    assert meta["train"] == json.dumps(OLD_TRAIN, sort_keys=True)
    assert meta["corpus"] == json.dumps(OLD_CORPUS, sort_keys=True)


def test_the_shipped_models_headers_round_trip(tmp_path):
    from charlm.corpora import shipped_model

    for name in ("shakespeare", "news"):
        path = shipped_model(name)
        if path is None:
            pytest.skip("no shipped models in this install")
        header, meta = checkpoint.read_header(path)
        md = checkpoint.read_metadata(path, header, meta)
        assert json.dumps(md.state.to_dict(checkpoint.HISTORY_FIELDS), sort_keys=True) == meta["train"]
        assert json.dumps(md.corpus.to_dict(), sort_keys=True) == meta["corpus"]


def test_missing_tensor_is_refused(tmp_path):
    from safetensors.numpy import save_file

    path, model, vocab = make(tmp_path)
    _, meta = checkpoint.read_header(path)
    tensors = {n: p for n, p in model.params.items() if n != "decoder.bias"}
    save_file(tensors, str(path), metadata=meta)
    with pytest.raises(CheckpointError, match='tensor "decoder.bias" is missing'):
        load(path)


_GOOD: dict[str, bytes] = {}


def good_bytes(tmp_path_factory) -> bytes:
    if "b" not in _GOOD:
        path, *_ = make(tmp_path_factory.mktemp("good"))
        _GOOD["b"] = path.read_bytes()
    return _GOOD["b"]


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_loader_fuzz_loads_or_refuses(tmp_path_factory, data):
    """Random, truncated and bit-flipped files: loaded correctly or CheckpointError, nothing else."""
    good = good_bytes(tmp_path_factory)
    kind = data.draw(st.sampled_from(["random", "truncate", "flip", "splice"]))
    if kind == "random":
        blob = data.draw(st.binary(max_size=2048))
    elif kind == "truncate":
        blob = good[: data.draw(st.integers(0, len(good)))]
    elif kind == "flip":
        b = bytearray(good)
        for pos in data.draw(st.lists(st.integers(0, len(good) - 1), min_size=1, max_size=8)):
            b[pos] ^= 1 << data.draw(st.integers(0, 7))
        blob = bytes(b)
    else:
        cut = data.draw(st.integers(0, len(good)))
        blob = good[:cut] + data.draw(st.binary(max_size=64)) + good[cut:]
    path = tmp_path_factory.mktemp("fuzz") / "f.safetensors"
    path.write_bytes(blob)
    try:
        ck = load(path)
    except CheckpointError as e:
        assert str(e)
    else:
        model = ck.build_model()  # whatever loads is usable
        assert np.isfinite(model.flat).all()
