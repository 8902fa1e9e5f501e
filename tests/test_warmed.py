"""The sampler's warmed-up state stored with a model: the very state the live
warm-up reaches, so an unprompted sample prints the same text, byte for byte,
without spending the warm-up at start-up; checked by the schema like any tensor."""

from __future__ import annotations

import hashlib
import json
import subprocess
from dataclasses import replace

import numpy as np
import pytest
from safetensors.numpy import save_file

from charlm import checkpoint
from charlm.checkpoint import load, save
from charlm.config import SampleConfig
from charlm.corpora import shipped_model
from charlm.errors import CheckpointError
from charlm.model import CharModel, ModelConfig
from charlm.sample import WARMUP_CHARS, Sampler, Warmed, warmed_state
from charlm.vocab import Vocab
from tests.conftest import SMALL_TEXT
from tests.test_cli import console_script


@pytest.fixture
def small(tmp_path):
    vocab = Vocab.from_text(SMALL_TEXT)
    model = CharModel(ModelConfig(len(vocab), embed=6, hidden=12, layers=2), seed=4)
    return model, vocab


def text(sampler: Sampler, n: int = 300) -> str:
    return "".join(sampler.generate(n))


def states_equal(a, b) -> bool:
    return all(np.array_equal(x, y) for la, lb in zip(a, b, strict=True) for x, y in zip(la, lb, strict=True))


@pytest.mark.parametrize("cell", ["lstm", "gru", "rnn"])
def test_a_stored_warm_state_is_the_live_warm_up_and_gives_the_same_text(tmp_path, cell):
    vocab = Vocab.from_text(SMALL_TEXT)
    model = CharModel(ModelConfig(len(vocab), cell=cell, embed=6, hidden=12, layers=2), seed=4)
    path = tmp_path / "m.safetensors"
    save(path, model, vocab, warmed=warmed_state(model, vocab))
    ck = load(path)
    assert ck.warmed is not None and ck.extra == {}  # the warm state is not a resume tensor
    live = Sampler(ck.build_model(), ck.vocab)
    first = live.warm_up()
    assert first == ck.warmed.first
    assert states_equal(live.state, ck.warmed.state)  # float32, bit for bit
    assert all(p.dtype == np.float32 for layer in ck.warmed.state for p in layer)
    for settings in ({"seed": 1}, {"seed": 5, "temperature": 0.7, "top_k": 5}):
        cold = Sampler(ck.build_model(), ck.vocab, SampleConfig(**settings))
        warm = Sampler(ck.build_model(), ck.vocab, SampleConfig(**settings), ck.warmed)
        assert warm.warmed is not None
        assert text(warm) == text(cold)


def test_the_stored_state_is_close_to_a_float64_warm_up(small):
    """The float32 warm-up follows the same path as one in float64: same characters,
    states within float32 rounding (the small model's draws are far from ties)."""
    model, vocab = small
    stored = warmed_state(model, vocab)
    exact = CharModel(model.config, dtype=np.float64)
    exact.load_params(model.params)
    reference = warmed_state(exact, vocab)
    assert reference.first == stored.first
    for la, lb in zip(stored.state, reference.state, strict=True):
        for a, b in zip(la, lb, strict=True):
            np.testing.assert_allclose(a, b, rtol=0, atol=1e-5)


def test_a_warm_state_of_another_recipe_or_dtype_is_not_used(small):
    model, vocab = small
    warmed = warmed_state(model, vocab)
    other = replace(
        warmed, chars=WARMUP_CHARS + 1, state=[tuple(np.ones_like(p) for p in layer) for layer in warmed.state]
    )
    assert Sampler(model, vocab, warmed=other).warmed is None
    exact = CharModel(model.config, dtype=np.float64)
    exact.load_params(model.params)
    assert Sampler(exact, vocab, warmed=warmed).warmed is None  # warms up live, in float64
    assert Sampler(model, vocab, warmed=warmed).warmed is warmed


def test_reset_and_a_second_sample_start_from_the_stored_state_again(small):
    model, vocab = small
    warm = Sampler(model, vocab, SampleConfig(seed=2), warmed_state(model, vocab))
    cold = Sampler(model, vocab, SampleConfig(seed=2))
    for s in (warm, cold):
        text(s, 50)
        s.reset()
    assert text(warm, 80) == text(cold, 80)


def write_with(path, model, vocab, tensors=None, warm_up=None, drop=()):
    """A checkpoint of ``model`` with the given warm tensors and warm_up field, written by hand."""
    save(path, model, vocab)
    _, meta = checkpoint.read_header(path)
    if warm_up is not None:
        meta["warm_up"] = json.dumps(warm_up)
    all_tensors = {n: np.ascontiguousarray(p) for n, p in model.params.items()} | (tensors or {})
    save_file({n: t for n, t in all_tensors.items() if n not in drop}, str(path), metadata=meta)


def good_warm(model, vocab):
    w = warmed_state(model, vocab)
    tensors = {f"warm.{n}_l{k}": p for k, layer in enumerate(w.state) for n, p in zip(("a", "c"), layer, strict=True)}
    return tensors, {"first": w.first, "chars": w.chars, "seed": w.seed}


def test_the_schema_accepts_a_good_warm_state_written_by_hand(tmp_path, small):
    model, vocab = small
    tensors, field = good_warm(model, vocab)
    write_with(tmp_path / "m.safetensors", model, vocab, tensors, field)
    ck = load(tmp_path / "m.safetensors")
    assert ck.warmed.first == field["first"] and states_equal(ck.warmed.state, warmed_state(model, vocab).state)


@pytest.mark.parametrize(
    "mutate, match",
    [
        (lambda t, f: t.update({"warm.a_l1": np.zeros(13, np.float32)}), r'tensor "warm.a_l1" has shape \[13\]'),
        (lambda t, f: t.update({"warm.c_l0": np.zeros((1, 12), np.float32)}), r'tensor "warm.c_l0" has shape'),
        (lambda t, f: t.update({"warm.a_l2": np.zeros(12, np.float32)}), r'tensor "warm.a_l2" is not part of'),
        (lambda t, f: t.update({"warm.z_l0": np.zeros(12, np.float32)}), r'tensor "warm.z_l0" is not part of'),
        (lambda t, f: t.pop("warm.c_l1"), r'tensor "warm.c_l1" is missing'),
        (lambda t, f: f.update(first=10_000), r"warm_up.first is 10,000, not the id of one"),
        (lambda t, f: f.update(first=-1), r"warm_up.first must be at least 0"),
        (lambda t, f: f.pop("seed"), r"warm_up.seed is missing"),
        (lambda t, f: f.update(chars=2.5), r"warm_up.chars must be an integer"),
    ],
)
def test_the_schema_refuses_a_bad_warm_state(tmp_path, small, mutate, match):
    model, vocab = small
    tensors, field = good_warm(model, vocab)
    mutate(tensors, field)
    write_with(tmp_path / "m.safetensors", model, vocab, tensors, field)
    with pytest.raises(CheckpointError, match=match) as e:
        load(tmp_path / "m.safetensors")
    assert e.value.kind == "bad_header"


def test_warm_tensors_without_their_field_or_with_nan_are_refused(tmp_path, small):
    model, vocab = small
    tensors, field = good_warm(model, vocab)
    write_with(tmp_path / "a.safetensors", model, vocab, tensors)
    with pytest.raises(CheckpointError, match="warmed-up state without its warm_up field"):
        load(tmp_path / "a.safetensors")
    tensors["warm.a_l0"] = np.full(12, np.nan, np.float32)
    write_with(tmp_path / "b.safetensors", model, vocab, tensors, field)
    with pytest.raises(CheckpointError, match="'warm.a_l0' holds NaN"):
        load(tmp_path / "b.safetensors")


def test_a_checkpoint_without_a_warm_state_still_loads_and_warms_up_live(tmp_path, small):
    model, vocab = small
    save(tmp_path / "old.safetensors", model, vocab, {"step": 3})
    ck = load(tmp_path / "old.safetensors")
    assert ck.warmed is None
    assert Sampler(ck.build_model(), ck.vocab, warmed=ck.warmed).warm_up() == warmed_state(model, vocab).first


@pytest.mark.parametrize("half", [False, True])
def test_export_stores_the_warm_state_of_the_weights_as_they_load(tmp_path, small, half):
    model, vocab = small
    save(tmp_path / "src.safetensors", model, vocab, {"step": 3})
    checkpoint.export(tmp_path / "src.safetensors", tmp_path / "out.safetensors", half=half)
    ck = load(tmp_path / "out.safetensors")
    live = warmed_state(ck.build_model(), ck.vocab)  # from the (float16-rounded) weights read back
    assert ck.warmed.first == live.first and states_equal(ck.warmed.state, live.state)
    assert checkpoint.read_header(tmp_path / "out.safetensors")[0]["warm.a_l0"]["dtype"] == "F32"


def test_a_finished_run_stores_the_warm_state_in_its_best_checkpoint(tmp_path, small_corpus):
    from charlm.config import TrainConfig
    from charlm.prepare import prepare_run

    cfg = TrainConfig(batch_size=4, seq_len=16, eval_every=6, seed=3, steps=12, warmup=5)
    trainer = prepare_run(small_corpus, tmp_path / "run", ModelConfig(layers=1, hidden=12, embed=6), cfg, None)
    trainer.run()
    best = load(tmp_path / "run" / "best.safetensors")
    live = warmed_state(best.build_model(), best.vocab)
    assert best.warmed is not None and best.warmed.first == live.first and states_equal(best.warmed.state, live.state)
    assert load(tmp_path / "run" / "last.safetensors").warmed is None  # for resuming, not sampling


@pytest.mark.parametrize("name", ["shakespeare", "news"])
def test_the_shipped_models_store_their_live_warm_up(name):
    """Bit for bit where the shipped files were made; elsewhere the first layer's input
    table (a multi-threaded product) may round differently, so within float32 noise."""
    ck = load(shipped_model(name))
    assert isinstance(ck.warmed, Warmed)
    live = warmed_state(ck.build_model(), ck.vocab)
    assert ck.warmed.first == live.first
    for stored, now in zip(ck.warmed.state, live.state, strict=True):
        for a, b in zip(stored, now, strict=True):
            np.testing.assert_allclose(a, b, rtol=0, atol=1e-4)


def test_info_says_the_warm_state_is_stored_and_does_not_count_it_as_parameters(tmp_path, small):
    from charlm.report import info_fields, info_json
    from charlm.runs import describe

    model, vocab = small
    save(tmp_path / "plain.safetensors", model, vocab)
    save(tmp_path / "warm.safetensors", model, vocab, warmed=warmed_state(model, vocab))
    plain, warm = describe(tmp_path / "plain.safetensors"), describe(tmp_path / "warm.safetensors")
    assert warm.params == plain.params == model.num_params
    assert (info_json(plain)["warmed_up"], info_json(warm)["warmed_up"]) == (False, True)
    assert ("sampling" in dict(info_fields(warm).fields), "sampling" in dict(info_fields(plain).fields)) == (
        True,
        False,
    )


# sha256 of `charlm sample ARGS --length 200` as printed before the warm state was stored, on the machine
# that made the shipped files (a seed's text depends on the BLAS kernels and thread count, as it always has).
PINNED = {
    "-m shakespeare --seed 1": "4e165c141182a080ac10f41287ab8b63ba24112532fc203b1fd24c633c07f4d3",
    "-m shakespeare --seed 7 -t 0.8": "c567116fdbebd2c70586a63b81f264bee2461286d6cb263d00c703e4148be9b7",
    "-m news --seed 3 -t 0.6 --top-k 10": "781b33d0b014f4598fe52904143287f5225748aaa395638f35fadd8c484de119",
    "-m shakespeare --seed 2 -t 1.2 --num-samples 2": "081887ff80641ecc61ed257865c8aa360161b46a92e9a1f283042217f5a23a07",
}


@pytest.mark.parametrize(
    "args", [pytest.param(a, marks=[] if i == 0 else pytest.mark.slow) for i, a in enumerate(PINNED)]
)
def test_samples_from_the_shipped_models_are_byte_identical_to_the_live_warm_up(tmp_path, args):
    r = subprocess.run(
        [console_script(), "sample", *args.split(), "--length", "200"], cwd=tmp_path, capture_output=True, timeout=60
    )
    assert r.returncode == 0, r.stderr
    assert hashlib.sha256(r.stdout).hexdigest() == PINNED[args]
