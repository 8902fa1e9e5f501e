"""Fuzzing the checkpoint header's fields, not only its bytes (see test_fuzz.py for those).

Three checkpoints — a resumable LSTM run, an exported half-precision GRU written
before forget_bias was a setting, and a weights-only RNN — have every field of their
metadata (config, vocab, train with its settings, RNG state and validation curve,
corpus) replaced by each value of a pool of wrong types and edge values, removed, or
joined by an unknown field; their tensor entries renamed, reshaped or dropped; then
hypothesis mutates several fields at once. Each file is either loaded into a model
that computes and that ``info`` and ``runs`` describe as valid JSON, or refused with
charlm's CheckpointError in one line. Values no charlm writes — a boolean or a string
for a number, NaN or infinity, a negative counter, a list for a scalar, a missing
size, an unknown config field, a tensor the config does not imply — must be refused.
"""

from __future__ import annotations

import copy
import json
import math
import time
from dataclasses import fields
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from charlm.checkpoint import HISTORY_FIELDS, save
from charlm.config import ModelConfig, TrainConfig, TrainState
from charlm.corpus import CorpusFingerprint
from charlm.errors import CheckpointError
from charlm.model import CharModel
from charlm.report import info_fields, info_json, runs_json, runs_table
from charlm.runs import describe
from charlm.vocab import Vocab
from tests.test_fuzz import fuzz, join, loads_or_refuses, overwrite, split

SECTIONS = ("config", "vocab", "train", "corpus")
POOL = [
    *("abc", "", "lstm", "LSTM", " gru", "gru", "PCG64", "utf-8", "utf-16", "latin-1", "base64", "x\x00y", "é"),
    *("strict", "replace", "ab" * 32, "AB" * 32, "0" * 63, "NaN"),
    *(-1, 0, 1, 2, 3, 4, 10, 16, 17, 8192, 8193, 65_536, 65_537, 2**31, 2**32, 2**63 - 1, 2**63, -(2**63)),
    *(2**128, 10**30, -0.0, 0.1, 0.5, 0.9, 0.95, 1.0, 1.5, 3.0, 10.0, -10.5, 1e-10, 1e308, -1e308, 5e-324),
    *(math.nan, math.inf, -math.inf, True, False, None, [], {}, [1, 2], [None], [[1]], {"a": 1}, [[1, 2.0]]),
    "@huge@",  # written as an integer of 5,000 digits, more than Python's JSON parser reads
]
HUGE = "@huge@"
REMOVE, ADD_UNKNOWN = object(), object()  # the two mutations besides replacing a value
STRINGS = {("config", "cell"), ("train", "rng", "bit_generator")} | {
    ("corpus", k) for k in ("name", "sha256", "encoding", "errors")
}
BOOLS = {("corpus", "nfc"), ("corpus", "crlf_as_lf")}
OBJECTS = {("config",), ("train",), ("corpus",), ("train", "rng"), ("train", "rng", "state"), ("train", "config")}
LISTS = {("vocab",), ("train", "val_curve")}
REQUIRED = {("config", k) for k in ("vocab_size", "cell", "embed", "hidden", "layers", "dropout")}
KNOWN = {  # the fields of the dataclasses a header is read into, and the RNG's
    ("config",): {f.name for f in fields(ModelConfig)},
    ("train",): {f.name for f in fields(TrainState)},
    ("train", "config"): {f.name for f in fields(TrainConfig)},
    ("train", "rng"): {"bit_generator", "state", "has_uint32", "uinteger"},
    ("train", "rng", "state"): {"state", "inc"},
    ("corpus",): {f.name for f in fields(CorpusFingerprint)},
}


# --------------------------------------------------------------------------- #
# Three checkpoints, as three charlm versions and uses write them
# --------------------------------------------------------------------------- #


def resumable_lstm(path: Path) -> None:
    vocab = Vocab.from_text("héllo wörld 🙂\n")
    config = ModelConfig(len(vocab), "lstm", embed=3, hidden=4, layers=2, dropout=0.1, forget_bias=1.0)
    model = CharModel(config, seed=1)
    settings = TrainConfig(batch_size=2, seq_len=8, steps=20, threads=1)
    state = TrainState(
        step=10, epoch=1, position=2, total_steps=20, best_val=2.5, best_step=8, best_sample_val=2.6,
        chars_seen=160, elapsed=3.5, train_seconds=2.0, adam_t=10, rng=np.random.default_rng(1).bit_generator.state,
        config=settings, val_curve=[[4, 3.0], [8, 2.5], [10, math.nan]],
    )  # fmt: skip
    corpus = CorpusFingerprint("t.txt", "ab" * 32, 1000, 100, "utf-8", "strict", True, True)
    P = model.num_params
    extra = {"optimizer.exp_avg": np.zeros(P, np.float32), "optimizer.exp_avg_sq": np.ones(P, np.float32)}
    extra |= {f"state.{n}_l{k}": np.zeros((2, 4), np.float32) for n in ("a", "c") for k in (0, 1)}
    save(path, model, vocab, state, corpus, extra)


def exported_old_gru(path: Path) -> None:
    """Exported as float16, with the config an older version wrote (no forget_bias)."""
    vocab = Vocab.from_text("abc\n")
    model = CharModel(ModelConfig(len(vocab), "gru", embed=2, hidden=3, layers=1), seed=2)
    state = TrainState(step=5, best_val=1.25, best_step=5, chars_seen=80, elapsed=1.0, val_curve=[[5, 1.25]])
    state.config = TrainConfig(batch_size=2, seq_len=8)
    corpus = {"chars": 50, "encoding": "latin-1", "errors": "replace", "name": "x.txt", "sha256": "0" * 64}
    save(path, model, vocab, state.to_dict(HISTORY_FIELDS), corpus, half=True)
    header, body = split(path.read_bytes())
    config = json.loads(header["__metadata__"]["config"])
    del config["forget_bias"]
    header["__metadata__"]["config"] = json.dumps(config)
    path.write_bytes(join(header, body))


def weights_only_rnn(path: Path) -> None:
    vocab = Vocab.from_text("xy")
    save(path, CharModel(ModelConfig(len(vocab), "rnn", embed=2, hidden=2, layers=3), seed=3), vocab)


BASES = {"lstm": resumable_lstm, "gru": exported_old_gru, "rnn": weights_only_rnn}


class Bases(dict):
    """The three checkpoints' bytes by name (shown by name only when hypothesis reports a failure)."""

    def __repr__(self) -> str:
        return f"<bases {sorted(self)}>"


@pytest.fixture(scope="module")
def bases(tmp_path_factory) -> Bases:
    folder = tmp_path_factory.mktemp("bases")
    found = Bases()
    for name, write in BASES.items():
        write(folder / f"{name}.safetensors")
        found[name] = (folder / f"{name}.safetensors").read_bytes()
    return found


@pytest.fixture(scope="module")
def target(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("run") / "best.safetensors"


# --------------------------------------------------------------------------- #
# Mutations
# --------------------------------------------------------------------------- #


def paths(value, prefix: tuple = ()):
    """Every place inside a parsed JSON value: dict members, and a list's first two items and last."""
    yield prefix
    if isinstance(value, dict):
        for key in value:
            yield from paths(value[key], (*prefix, key))
    elif isinstance(value, list):
        for i in sorted({0, 1, len(value) - 1} & set(range(len(value)))):
            yield from paths(value[i], (*prefix, i))


def field_cases(blob: bytes):
    """(section, path, mutation) for every field of the metadata and every mutation."""
    meta = split(blob)[0]["__metadata__"]
    for section in SECTIONS:
        for path in paths(json.loads(meta[section])):
            for mutation in (*POOL, REMOVE, ADD_UNKNOWN):
                yield section, path, mutation


def mutate(blob: bytes, section: str, path: tuple, mutation) -> bytes:
    header, body = split(blob)
    meta = header["__metadata__"]
    root = json.loads(meta[section])
    if not path:  # the section itself
        if mutation is REMOVE:
            del meta[section]
            return join(header, body)
        if mutation is not ADD_UNKNOWN:
            meta[section] = json.dumps(mutation).replace(f'"{HUGE}"', "1" * 5000)
            return join(header, body)
    parent = root
    for key in path[:-1]:
        parent = parent[key]
    holder, key = (parent, path[-1]) if path else (None, None)
    target = holder[key] if path else root
    if mutation is ADD_UNKNOWN:
        if isinstance(target, dict):
            target["zz_unknown"] = 1
        elif isinstance(target, list):
            target.append(target[-1] if target else 0)  # one more entry, a repeat
        else:
            return blob
    elif mutation is REMOVE:
        del holder[key]
    else:
        holder[key] = copy.deepcopy(mutation)
    meta[section] = json.dumps(root).replace(f'"{HUGE}"', "1" * 5000)
    return join(header, body)


def must_refuse(section: str, path: tuple, mutation) -> bool:
    """True for a value no charlm writes at ``path`` (an oracle independent of the schema's tables)."""
    where = (section, *path)
    if mutation is ADD_UNKNOWN:
        return where == ("config",)
    if mutation is REMOVE:
        return where in REQUIRED or where == ("config",) or where == ("vocab",)
    v = mutation
    if v == HUGE:
        return True
    for i in range(1, len(where)):  # in or under an unknown field: refused in the model's config only
        if where[:i] in KNOWN and where[i] not in KNOWN[where[:i]]:
            return where[:i] == ("config",)
    if where in OBJECTS:
        return not isinstance(v, dict) and not (v is None and where in {("train", "rng"), ("train", "config")})
    if where in LISTS:
        return not isinstance(v, list)
    if where in STRINGS:
        return v is not None and not isinstance(v, str)
    if where in BOOLS:
        return v is not None and not isinstance(v, bool)
    if section == "vocab":  # a code point
        return not (isinstance(v, int) and not isinstance(v, bool))
    if where[:2] == ("train", "val_curve") and len(where) == 3:  # a [step, loss] pair
        return not isinstance(v, list)
    if v is None:
        return False  # null is "not recorded" for some fields
    is_nan_loss = where[:2] == ("train", "val_curve") and path[-1] == 1 and isinstance(v, float) and math.isnan(v)
    number = isinstance(v, int | float) and not isinstance(v, bool)
    if not number or (isinstance(v, float) and not math.isfinite(v) and not is_nan_loss):
        return True
    return (v < 0 and where != ("config", "forget_bias")) or (isinstance(v, int) and abs(v) > 2**128)


def tensor_cases(blob: bytes):
    """Renamed, reshaped (same bytes, so only the config can tell) and dropped tensor entries."""
    header, _ = split(blob)
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        shape = entry["shape"]
        reshaped = [[math.prod(shape)], [1, *shape], [*shape, 1], shape[::-1], [math.prod(shape), 1]]
        for new in reshaped:
            if new != shape:
                yield name, "shape", new
        for new_name in ("zz.weight", "state.a_l7", "state.h_l0", "rnn.weight_ih_l9", name + " "):
            yield name, "rename", new_name
        yield name, "drop", None


def mutate_tensor(blob: bytes, name: str, op: str, arg) -> bytes:
    header, body = split(blob)
    if op == "shape":
        header[name]["shape"] = arg
    elif op == "rename":
        header[arg] = header.pop(name)
    else:
        del header[name]
    return join(header, body)


# --------------------------------------------------------------------------- #
# The check: loads and is usable, or is refused with CheckpointError
# --------------------------------------------------------------------------- #


def check(target: Path, blob: bytes, refuse: bool, what) -> bool:
    """Load ``blob``: a usable checkpoint that info and runs describe as strict JSON, or a
    one-line CheckpointError (loads_or_refuses fails on any other exception)."""
    loaded = loads_or_refuses(target, blob)
    assert not (loaded and refuse), f"accepted a value no charlm writes: {what}"
    if loaded:  # what info and runs print is made from it: the lines, the table, strict JSON
        info = describe(target)
        info_fields(info), runs_table([info])
        json.dumps([info_json(info), runs_json([info])], allow_nan=False)
    return loaded


def every_case(bases: dict[str, bytes]):
    for base, blob in bases.items():
        for section, path, mutation in field_cases(blob):
            yield (
                (base, section, path, mutation),
                mutate(blob, section, path, mutation),
                (must_refuse(section, path, mutation)),
            )
        for name, op, arg in tensor_cases(blob):
            yield (base, name, op, arg), mutate_tensor(blob, name, op, arg), True


def run_cases(bases, target, keep=lambda i: True) -> tuple[int, int]:
    """(cases, loaded) over every_case whose index ``keep`` accepts."""
    cases = loaded = 0
    for i, (what, blob, refuse) in enumerate(every_case(bases)):
        if keep(i):
            cases += 1
            loaded += check(target, blob, refuse, what)
    return cases, loaded


def test_the_three_bases_load(bases, target):
    for blob in bases.values():
        assert check(target, blob, False, "unmodified")


def test_a_sample_of_every_field_mutation(bases, target):
    """The quick lane: every 45th case of the systematic run below."""
    cases, loaded = run_cases(bases, target, keep=lambda i: i % 45 == 0)
    assert cases >= 150 and 0 < loaded < cases


@pytest.mark.slow
def test_every_field_mutation(bases, target):
    """Every field × every pool value, removal and unknown field; every tensor renamed,
    reshaped and dropped: over 8,000 files, each loaded or refused with CheckpointError."""
    start = time.perf_counter()
    cases, loaded = run_cases(bases, target)
    print(f"{cases:,} header mutations, {loaded:,} loaded, in {time.perf_counter() - start:.1f} s")
    assert cases >= 8_000 and 0 < loaded < cases


json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**70), 2**70)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=12),
    lambda children: st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=6), children, max_size=3),
    max_leaves=6,
)


def random_mutations(data, bases) -> tuple[bytes, bool]:
    """Two to five field mutations at once on one of the bases, drawn by hypothesis."""
    base = data.draw(st.sampled_from(sorted(bases)))
    blob = bases[base]
    refuse = False
    for _ in range(data.draw(st.integers(2, 5))):
        meta = split(blob)[0]["__metadata__"]
        present = [s for s in SECTIONS if s in meta]
        if not present:
            break
        section = data.draw(st.sampled_from(present))
        try:
            places = list(paths(json.loads(meta[section])))
        except ValueError:
            continue  # an earlier mutation left it unparsable
        path = data.draw(st.sampled_from(places))
        mutation = data.draw(st.sampled_from([*POOL, REMOVE, ADD_UNKNOWN]) | json_values)
        refuse = must_refuse(section, path, mutation)  # the last one stays in the file; earlier ones may be undone
        blob = mutate(blob, section, path, mutation)
    return blob, refuse


@fuzz(100)
@given(data=st.data())
def test_random_field_mutations_quick(bases, target, data):
    blob, refuse = random_mutations(data, bases)
    check(target, blob, refuse, "random")


@pytest.mark.slow
@fuzz(2500)
@given(data=st.data())
def test_random_field_mutations(bases, target, data):
    blob, refuse = random_mutations(data, bases)
    check(target, blob, refuse, "random")


def test_refused_fields_are_named(bases, target):
    """The error names the field and says what is wrong with it, in one line."""
    blob = bases["lstm"]
    for section, path, mutation, words in [
        ("train", ("step",), "abc", 'train.step must be an integer, not "abc"'),
        ("train", ("step",), True, "train.step must be an integer, not true"),
        ("train", ("elapsed",), math.nan, "train.elapsed must be a finite number, not NaN"),
        ("train", ("chars_seen",), -1, "train.chars_seen must be at least 0, not -1"),
        ("train", ("best_step",), 11, "train.best_step is 11, after the last step, 10"),
        ("corpus", ("chars",), "many", 'corpus.chars must be an integer or null, not "many"'),
        ("corpus", ("encoding",), 5, "corpus.encoding must be a string or null, not 5"),
        ("config", ("forget_bias",), "abc", 'config.forget_bias must be a number, not "abc"'),
        ("config", ("layers",), -1, "config.layers must be at least 1"),
        ("config", ("cell",), "transformer", 'config.cell must be "lstm" or "gru" or "rnn", not "transformer"'),
        ("vocab", (1,), 10, "vocab[1] repeats a character"),
    ]:
        overwrite(target, mutate(blob, section, path, mutation))
        with pytest.raises(CheckpointError) as e:
            describe(target)
        assert words in str(e.value) and "\n" not in str(e.value)
        assert e.value.kind == "bad_header" and str(e.value.details["field"]).startswith(section)
