"""Each config checks its own values and names the field; the training state
keeps the JSON layout of every checkpoint written so far."""

from __future__ import annotations

import json
import math
from dataclasses import asdict

import pytest
from hypothesis import given
from hypothesis import strategies as st

from charlm import checkpoint_schema
from charlm.config import ModelConfig, TrainConfig, TrainState
from charlm.errors import ConfigError

# What TrainConfig stored before it took encoding and errors: checkpoints keep exactly these keys.
STORED_TRAIN_KEYS = [
    "batch_size",
    "clip",
    "epochs",
    "eval_every",
    "final_lr_frac",
    "lr",
    "minutes",
    "seed",
    "seq_len",
    "steps",
    "threads",
    "val_chars",
    "val_frac",
    "warmup",
]


def test_defaults_pass_their_checks():
    ModelConfig().check()
    TrainConfig().check()


@pytest.mark.parametrize(
    ("changes", "setting", "words"),
    [
        ({"cell": "transformer"}, "cell", "'transformer' is not a cell"),
        ({"dropout": 0.95}, "dropout", "between 0 and 0.9"),
        ({"dropout": -0.1}, "dropout", "between 0 and 0.9"),
        ({"forget_bias": 11.0}, "forget_bias", "between -10 and 10"),
        ({"cell": "gru", "forget_bias": 1.0}, "forget_bias", "a gru cell has none"),
        ({"cell": "rnn", "forget_bias": -1.0}, "forget_bias", "a rnn cell has none"),
        ({"hidden": 0}, "hidden", "at least 1"),
        ({"layers": 0}, "layers", "at least 1"),
        ({"layers": 17}, "layers", "at most 16"),
        ({"hidden": 8193}, "hidden", "at most 8192"),
        ({"embed": 8193}, "embed", "at most 8192"),
    ],
)
def test_model_config_check_names_the_field(changes, setting, words):
    with pytest.raises(ConfigError) as e:
        ModelConfig(**changes).check()
    assert e.value.setting == setting and words in e.value.problem
    assert "--" not in str(e.value)


@pytest.mark.parametrize(
    ("changes", "setting", "words"),
    [
        ({"errors": "ignore"}, "errors", "must be 'strict' or 'replace', not 'ignore'"),
        ({"val_frac": 0.0}, "val_frac", "must be in (0, 0.5]"),
        ({"val_frac": 0.6}, "val_frac", "must be in (0, 0.5]"),
        ({"lr": -1.0}, "lr", "finite number greater than 0 (got -1)"),
        ({"lr": math.inf}, "lr", "finite number greater than 0"),
        ({"lr": math.nan}, "lr", "finite number greater than 0"),
        ({"clip": 0.0}, "clip", "finite number greater than 0"),
        ({"epochs": 0.0}, "epochs", "finite number greater than 0"),
        ({"minutes": -2.0}, "minutes", "finite number greater than 0"),
        ({"batch_size": 0}, "batch_size", "at least 1"),
        ({"steps": 0}, "steps", "at least 1"),
        ({"final_lr_frac": 2.0}, "final_lr_frac", "between 0 and 1"),
        ({"batch_size": 4, "threads": 9}, "threads", "9 is more than the batch size 4"),
    ],
)
def test_train_config_check_names_the_field(changes, setting, words):
    with pytest.raises(ConfigError) as e:
        TrainConfig(**changes).check()
    assert e.value.setting == setting and words in e.value.problem
    assert "--" not in str(e.value)


@given(lr=st.floats(allow_nan=True, allow_infinity=True))
def test_lr_check_accepts_exactly_the_finite_positive_values(lr):
    ok = math.isfinite(lr) and lr > 0
    try:
        TrainConfig(lr=lr).check()
        accepted = True
    except ConfigError as e:
        assert e.setting == "lr"
        accepted = False
    assert accepted == ok


def test_train_config_stores_the_same_keys_as_before_and_reads_them_back():
    config = TrainConfig(steps=60, lr=1e-3, encoding="latin-1", errors="replace")
    stored = config.to_dict()
    assert sorted(stored) == STORED_TRAIN_KEYS  # encoding and errors go with the corpus fingerprint
    assert stored == {k: v for k, v in asdict(config).items() if k in STORED_TRAIN_KEYS}
    back = TrainConfig.from_dict(json.loads(json.dumps(stored)))
    assert back == TrainConfig(steps=60, lr=1e-3)
    # an older checkpoint lacking a setting keeps its default; unknown ones are ignored
    assert TrainConfig.from_dict({"lr": 0.5, "gone": 1}) == TrainConfig(lr=0.5)
    with pytest.raises(checkpoint_schema.Bad, match='train.config.batch_size must be an integer, not "32"'):
        checkpoint_schema.train_state({"config": {"batch_size": "32"}})


def test_model_config_of_an_old_checkpoint_gets_the_forget_bias_it_was_initialised_with():
    assert ModelConfig.from_dict({"vocab_size": 5, "cell": "lstm"}).forget_bias == 1.0
    assert ModelConfig.from_dict({"vocab_size": 5, "forget_bias": 0.0}).forget_bias == 0.0
    # a GRU or RNN has no forget gate: none was initialised, and its config passes its check
    for cell in ("gru", "rnn"):
        old = ModelConfig.from_dict({"vocab_size": 5, "cell": cell})
        assert old.forget_bias == 0.0
        old.check()


def test_the_checkpoint_schema_lists_every_stored_field():
    """A field added to a stored dataclass without a line in the schema's tables fails here."""
    from dataclasses import fields

    from charlm.corpus import CorpusFingerprint

    assert set(checkpoint_schema.MODEL) == {f.name for f in fields(ModelConfig)}
    assert set(checkpoint_schema.TRAIN) | {"rng", "config", "val_curve"} == {f.name for f in fields(TrainState)}
    assert set(checkpoint_schema.TRAIN_CONFIG) == set(TrainConfig().to_dict())
    assert set(checkpoint_schema.CORPUS) == {f.name for f in fields(CorpusFingerprint)}


# The training state exactly as the untyped dict of 1ce1bb7 wrote it (json.dumps, sort_keys).
OLD_TRAIN_JSON = json.dumps(
    {
        "step": 30,
        "epoch": 0,
        "position": 30,
        "total_steps": 60,
        "best_val": 3.71,
        "best_step": 30,
        "chars_seen": 7680,
        "elapsed": 2.5,
        "train_seconds": 2.25,
        "adam_t": 30,
        "rng": {"bit_generator": "PCG64", "state": {"state": 2**100 + 3, "inc": 5}, "has_uint32": 0, "uinteger": 0},
        "config": {**{k: v for k, v in asdict(TrainConfig(steps=60)).items() if k in STORED_TRAIN_KEYS}},
        "val_curve": [[10, 4.1], [20, 3.9], [30, 3.71]],
    },
    sort_keys=True,
)


def test_train_state_reads_an_old_header_and_writes_it_back_byte_for_byte():
    state = TrainState.from_dict(json.loads(OLD_TRAIN_JSON))
    assert (state.step, state.position, state.total_steps, state.adam_t) == (30, 30, 60, 30)
    assert state.best_val == 3.71 and state.val_curve[-1] == [30, 3.71]
    assert state.config == TrainConfig(steps=60) and state.rng["state"]["state"] == 2**100 + 3
    assert json.dumps(state.to_dict(), sort_keys=True) == OLD_TRAIN_JSON


def test_train_state_of_an_exported_model_keeps_its_history_only():
    history = {"step": 5, "best_val": None, "val_curve": []}
    state = TrainState.from_dict(history)
    assert state.rng is None and state.config is None and state.best_val is None
    assert state.to_dict(("step", "best_val", "val_curve")) == history


@pytest.mark.parametrize(
    "bad",
    [{"step": "5"}, {"step": True}, {"best_val": "low"}, {"rng": [1, 2]}, {"val_curve": [[1]]}, {"config": []}],
)
def test_train_state_refuses_wrong_types(bad):
    """The checkpoint schema checks a stored state before TrainState.from_dict builds it."""
    with pytest.raises(checkpoint_schema.Bad, match=r"^train\."):
        checkpoint_schema.train_state(bad)


def test_config_errors_and_worded_errors_survive_pickling():
    import pickle

    from charlm.errors import CorpusError

    e = pickle.loads(pickle.dumps(ConfigError("lr", "must be greater than 0 (got -1).")))
    assert (e.setting, e.problem, str(e)) == (
        "lr",
        "must be greater than 0 (got -1).",
        "lr must be greater than 0 (got -1).",
    )
    c = pickle.loads(pickle.dumps(CorpusError("x: empty.", kind="nul_byte", label="x", offset=3)))
    assert (str(c), c.kind, c.details) == ("x: empty.", "nul_byte", {"label": "x", "offset": 3})


def test_train_options_default_to_the_dataclasses():
    """`charlm train`'s option defaults are the configs' defaults, so the product's answer to "what
    should I run?" lives in one place (a default changed in one but not the other fails here)."""
    import typer.main

    from charlm.cli import app

    train = typer.main.get_command(app).commands["train"]
    defaults = {**asdict(ModelConfig()), **asdict(TrainConfig())}
    shared = [p for p in train.params if p.name in defaults and p.name != "vocab_size"]
    assert {p.name for p in shared} >= {"hidden", "layers", "dropout", "batch_size", "seq_len", "lr", "eval_every"}
    for p in shared:
        assert p.default == defaults[p.name], p.name
