"""Sampling: the logits → next-id decoder (greedy, temperature, top-k, top-p) tested
as a distribution on a fixed logit vector, the sampler's loop, and the `sample`
command's options."""

from __future__ import annotations

import math
import re
import subprocess
import tracemalloc
import warnings

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from typer.testing import CliRunner

from charlm.cli import app
from charlm.config import SampleConfig
from charlm.errors import ConfigError
from charlm.model import CharModel, ModelConfig
from charlm.sample import Decoder, Sampler
from charlm.vocab import Vocab
from tests.conftest import SMALL_TEXT
from tests.test_cli import console_script

runner = CliRunner()

# Ten distinct logits; the two largest are at ids 0 and 9, the smallest at id 7.
LOGITS = np.array([2.0, 1.5, 1.2, 0.3, 0.0, -0.4, -1.0, -2.5, 0.8, 1.9], np.float32)
V = len(LOGITS)


def reference(logits: np.ndarray, temperature: float = 1.0, top_k: int | None = None, top_p: float | None = None):
    """The distribution the decoder should draw from, computed independently in float64 by sorting."""
    z = logits.astype(np.float64) / temperature
    prob = np.exp(z - z.max())
    prob /= prob.sum()
    order = np.argsort(-prob, kind="stable")  # most likely first
    if top_k is not None:
        prob[order[top_k:]] = 0.0
        prob /= prob.sum()
    if top_p is not None:
        cum = np.cumsum(prob[order])
        assert np.min(np.abs(cum - top_p)) > 1e-3, "choose a p away from a cumulative boundary"
        n = int(np.argmax(cum >= top_p)) + 1  # the smallest head whose mass reaches p
        prob[order[n:]] = 0.0
        prob /= prob.sum()
    return prob


def decoder(vocab_size: int = V, **settings) -> Decoder:
    return Decoder(vocab_size, SampleConfig(**settings))


def draw_counts(decoder: Decoder, logits: np.ndarray, n: int, seed: int = 0) -> np.ndarray:
    uniforms = np.random.default_rng(seed).random(n)
    buf = np.empty_like(logits)
    counts = np.zeros(len(logits), np.int64)
    for u in uniforms:
        np.copyto(buf, logits)  # choose() overwrites its logits
        counts[decoder.choose(buf, float(u))] += 1
    return counts


def chi_square(counts: np.ndarray, prob: np.ndarray) -> tuple[float, float]:
    """(Pearson statistic, its 0.1% critical value) over the ids with non-zero probability."""
    assert np.all(counts[prob == 0] == 0), "drew an id with probability 0"
    keep = prob > 0
    expected = counts.sum() * prob[keep]
    stat = float(np.sum((counts[keep] - expected) ** 2 / expected))
    df = int(keep.sum()) - 1
    z = 3.0902  # upper 0.1% point of N(0, 1); Wilson–Hilferty approximation of the χ² quantile
    critical = df * (1 - 2 / (9 * df) + z * math.sqrt(2 / (9 * df))) ** 3
    return stat, critical


# --------------------------------------------------------------------------- #
# Decoder
# --------------------------------------------------------------------------- #


@pytest.mark.parametrize("temperature", [0.0, 1e-3, 1e-20, 1e-45])
def test_temperature_towards_zero_is_the_argmax(temperature):
    d = decoder(temperature=temperature)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no overflow or invalid-value warnings either
        counts = draw_counts(d, LOGITS, 500)
    assert counts[0] == 500
    rng = np.random.default_rng(1)
    for _ in range(50):
        logits = rng.standard_normal(V).astype(np.float32) * 5
        assert d.choose(logits.copy(), float(rng.random())) == int(np.argmax(logits))


def test_temperature_one_matches_softmax_chi_square():
    counts = draw_counts(decoder(temperature=1.0), LOGITS, 20_000)
    stat, critical = chi_square(counts, reference(LOGITS))
    assert stat < critical
    # the same counts are clearly not the T = 2 distribution: the test has the power to fail
    wrong, _ = chi_square(counts, reference(LOGITS, 2.0))
    assert wrong > 10 * critical


@pytest.mark.parametrize("temperature", [0.5, 2.0])
def test_temperature_reshapes_the_distribution(temperature):
    counts = draw_counts(decoder(temperature=temperature), LOGITS, 20_000, seed=2)
    stat, critical = chi_square(counts, reference(LOGITS, temperature))
    assert stat < critical


@pytest.mark.parametrize("k", [1, 2, 3, 5, 9])
def test_top_k_never_emits_outside_the_k_best(k):
    counts = draw_counts(decoder(temperature=1.5, top_k=k), LOGITS, 6_000, seed=k)
    best = set(np.argsort(-LOGITS)[:k].tolist())
    assert {i for i in range(V) if counts[i]} == best  # never outside, and every one of them drawn
    stat, critical = (0.0, 1.0) if k == 1 else chi_square(counts, reference(LOGITS, 1.5, top_k=k))
    assert stat < critical


def test_top_k_at_least_vocabulary_size_keeps_everything():
    a = draw_counts(decoder(top_k=V), LOGITS, 3_000)
    b = draw_counts(decoder(top_k=10 * V), LOGITS, 3_000)
    c = draw_counts(decoder(), LOGITS, 3_000)
    assert np.array_equal(a, c) and np.array_equal(b, c)


@pytest.mark.parametrize("p", [0.05, 0.5, 0.75, 0.9])
def test_top_p_draws_from_the_nucleus_only(p):
    counts = draw_counts(decoder(top_p=p), LOGITS, 20_000, seed=3)
    expected = reference(LOGITS, top_p=p)
    assert {i for i in range(V) if counts[i]} == set(np.flatnonzero(expected).tolist())
    if np.count_nonzero(expected) > 1:
        stat, critical = chi_square(counts, expected)
        assert stat < critical


def test_top_p_one_keeps_everything():
    a = draw_counts(decoder(top_p=1.0), LOGITS, 3_000)
    assert np.array_equal(a, draw_counts(decoder(), LOGITS, 3_000))


def test_temperature_top_k_and_top_p_compose():
    d = decoder(temperature=0.7, top_k=5, top_p=0.8)
    counts = draw_counts(d, LOGITS, 20_000, seed=4)
    expected = reference(LOGITS, 0.7, top_k=5, top_p=0.8)
    assert 1 < np.count_nonzero(expected) < 5  # both filters bite
    stat, critical = chi_square(counts, expected)
    assert stat < critical


def test_a_rounded_up_draw_never_lands_on_a_filtered_id():
    # U·Σw ≥ Σw must fall back to the last id with weight, not to the last id of the vocabulary
    d = decoder(top_k=1)
    assert d.choose(LOGITS.copy(), 1.0) == 0
    d = decoder(top_p=0.3)
    assert d.choose(LOGITS.copy(), 1.0) in (0, 9)


def test_decoder_allocates_no_array_per_character():
    big = np.random.default_rng(5).standard_normal(20_000).astype(np.float32)  # an 80 kB logit vector
    buf = np.empty_like(big)
    for kw in ({}, {"top_k": 40}, {"top_p": 0.9}, {"top_k": 100, "top_p": 0.5}):
        d = decoder(len(big), temperature=0.8, **kw)
        np.copyto(buf, big)
        d.choose(buf, 0.5)  # warm-up
        tracemalloc.start()
        base = tracemalloc.get_traced_memory()[0]
        tracemalloc.reset_peak()
        for u in np.linspace(0.01, 0.99, 20).tolist():
            np.copyto(buf, big)
            d.choose(buf, u)
        peak = tracemalloc.get_traced_memory()[1] - base
        tracemalloc.stop()
        assert peak < 8_000, f"{kw}: {peak} bytes allocated while choosing"  # < 1/10 of one logit vector


@pytest.mark.parametrize(
    "kw", [{"temperature": -1.0}, {"temperature": math.nan}, {"top_k": 0}, {"top_p": 0.0}, {"top_p": 1.5}]
)
def test_decoder_refuses_bad_settings(kw):
    with pytest.raises(ConfigError) as e:
        decoder(**kw)
    assert e.value.setting == next(iter(kw))


# --------------------------------------------------------------------------- #
# SampleConfig
# --------------------------------------------------------------------------- #

BAD_SETTINGS = [
    ({"temperature": -1.0}, "temperature"),
    ({"temperature": math.nan}, "temperature"),
    ({"temperature": math.inf}, "temperature"),
    ({"top_k": 0}, "top_k"),
    ({"top_p": 0.0}, "top_p"),
    ({"top_p": 1.01}, "top_p"),
    ({"top_p": math.nan}, "top_p"),
    ({"length": -1}, "length"),
    ({"num_samples": 0}, "num_samples"),
    ({"unknown": "drop"}, "unknown"),
    ({"stop": ""}, "stop"),
    ({"seed": -1}, "seed"),
]


@pytest.mark.parametrize("settings, field", BAD_SETTINGS)
def test_sample_config_check_names_the_setting(settings, field):
    with pytest.raises(ConfigError) as e:
        SampleConfig(**settings).check()
    assert e.value.setting == field
    assert "--" not in str(e.value)  # the library speaks of settings, not of flags


@given(
    temperature=st.floats(0.0, 100.0),
    top_k=st.none() | st.integers(1, 10_000),
    top_p=st.none() | st.floats(1e-6, 1.0),
    length=st.integers(0, 10_000),
    seed=st.none() | st.integers(0, 2**63),
    stop=st.none() | st.text(min_size=1, max_size=4),
    num_samples=st.integers(1, 100),
    unknown=st.sampled_from(["error", "skip"]),
)
def test_sample_config_check_accepts_every_workable_setting(**settings):
    config = SampleConfig(**settings)
    assert config.check() is config


# --------------------------------------------------------------------------- #
# Sampler
# --------------------------------------------------------------------------- #


@pytest.fixture(scope="module")
def small_model():
    vocab = Vocab.from_text(SMALL_TEXT)
    return CharModel(ModelConfig(len(vocab), embed=6, hidden=12, layers=2), seed=4), vocab


def sampler_of(model_vocab, **settings) -> Sampler:
    return Sampler(*model_vocab, SampleConfig(**settings))


def text(sampler: Sampler, n: int) -> str:
    return "".join(sampler.generate(n))


def test_sampler_refuses_a_config_that_cannot_work(small_model):
    with pytest.raises(ConfigError) as e:
        sampler_of(small_model, top_p=2.0)
    assert e.value.setting == "top_p"


def test_seed_fixes_the_text(small_model):
    for kw in ({}, {"top_k": 4}, {"top_p": 0.8, "temperature": 1.3}):
        a = text(sampler_of(small_model, seed=11, **kw), 300)
        b = text(sampler_of(small_model, seed=11, **kw), 300)
        c = text(sampler_of(small_model, seed=12, **kw), 300)
        assert a == b and a != c


def test_greedy_sampling_follows_the_full_forward_pass():
    """The batch-1 step path gives the same argmax as forward_logits over the whole text so far."""
    vocab = Vocab.from_text(SMALL_TEXT)
    model = CharModel(ModelConfig(len(vocab), embed=6, hidden=12, layers=2), dtype=np.float64, seed=4)
    prime = vocab.encode("All:").ids
    sampler = sampler_of((model, vocab), temperature=0.0)
    sampler.feed(prime)
    got = text(sampler, 25)
    ids = list(prime.tolist())
    for _ in range(25):
        logits, _ = model.forward_logits(np.array(ids).reshape(-1, 1), model.zero_state(1))
        ids.append(int(np.argmax(logits[-1])))
    assert got == vocab.decode(ids[len(prime) :])


@pytest.mark.parametrize("cell", ["lstm", "gru", "rnn"])
def test_sampler_logits_equal_the_full_forward_pass(cell):
    """Three layers, every cell: after a prompt, each character's logits are those of
    the whole text so far run through the model at once (the prompt's last character
    is read once, not twice)."""
    vocab = Vocab.from_text(SMALL_TEXT)
    model = CharModel(ModelConfig(len(vocab), cell=cell, embed=5, hidden=7, layers=3), dtype=np.float64, seed=2)
    sampler = Sampler(model, vocab)
    ids = vocab.encode("Citizen").ids.tolist()
    sampler.feed(np.array(ids[:3]))
    for k in range(3, len(ids)):
        got = sampler.logits_after(ids[k - 1]).copy()
        want, _ = model.forward_logits(np.array(ids[:k]).reshape(-1, 1), model.zero_state(1))
        assert np.allclose(got, want[-1], rtol=1e-12, atol=1e-12)


def test_a_prompt_is_read_once_even_in_pieces(small_model):
    """feed() leaves the prompt's last character for generate to read first, so it
    is read exactly once, and feeding in pieces is feeding the whole."""
    model, vocab = small_model
    ids = vocab.encode("First Citizen:").ids
    whole, pieces = sampler_of(small_model, seed=3), sampler_of(small_model, seed=3)
    whole.feed(ids)
    pieces.feed(ids[:5])
    pieces.feed(ids[5:])
    assert text(whole, 40) == text(pieces, 40)
    whole.reset()
    whole.feed(ids)
    got = whole.logits_after(whole.last).copy()
    want, _ = model.forward_logits(ids.reshape(-1, 1), model.zero_state(1))
    assert np.allclose(got, want[-1], rtol=1e-5, atol=1e-5)


def test_top_k_one_is_greedy(small_model):
    greedy = text(sampler_of(small_model, seed=1, temperature=0.0), 80)
    assert text(sampler_of(small_model, seed=2, temperature=1.7, top_k=1), 80) == greedy


def test_reset_and_feed_start_again_from_the_prime(small_model):
    model, vocab = small_model
    prime = vocab.encode("Speak").ids
    fresh = sampler_of(small_model, seed=3, temperature=0.0)
    fresh.feed(prime)
    first = text(fresh, 60)
    fresh.reset()
    fresh.feed(prime)
    assert text(fresh, 60) == first
    fresh.reset()
    unprimed = sampler_of(small_model, seed=3, temperature=0.0)
    assert text(fresh, 60) == text(unprimed, 60)


def test_stop_string_ends_the_sample_where_it_first_appears(small_model):
    full = text(sampler_of(small_model, seed=5, temperature=1.2), 400)
    stop = full[150:152]
    end = next(i for i in range(1, len(full) + 1) if full[:i].endswith(stop))
    assert end <= 152
    assert text(sampler_of(small_model, seed=5, temperature=1.2, stop=stop), 400) == full[:end]


def test_sampling_loop_allocates_no_array_per_character(small_model):
    sampler = sampler_of(small_model, seed=0, top_k=5, top_p=0.9)
    text(sampler, 50)  # warm-up: step buffers
    n = 2_000
    tracemalloc.start()
    gen = sampler.generate(n)
    next(gen)  # the uniforms of the whole sample are drawn here, once
    base = tracemalloc.get_traced_memory()[0]
    tracemalloc.reset_peak()
    for _ in gen:
        pass
    peak = tracemalloc.get_traced_memory()[1] - base
    tracemalloc.stop()
    assert peak < 4_000, f"{peak} bytes allocated while generating {n} characters"


# --------------------------------------------------------------------------- #
# charlm sample
# --------------------------------------------------------------------------- #


def sample_cli(ckpt, *args, input=None):
    return runner.invoke(app, ["sample", "-c", str(ckpt), *args], input=input)


@pytest.mark.parametrize(
    "args, flag",
    [
        (["--temperature", "-1"], "--temperature"),
        (["--temperature", "nan"], "--temperature"),
        (["--temperature", "inf"], "--temperature"),
        (["--top-k", "0"], "--top-k"),
        (["--top-k", "-3"], "--top-k"),
        (["--top-p", "0"], "--top-p"),
        (["--top-p", "1.5"], "--top-p"),
        (["--top-p", "nan"], "--top-p"),
        (["--length", "-1"], "--length"),
        (["--num-samples", "0"], "--num-samples"),
        (["--unknown", "drop"], "--unknown"),
        (["--stop", ""], "--stop"),
    ],
)
def test_bad_options_get_one_line_and_exit_2(tiny_checkpoint, args, flag):
    r = sample_cli(tiny_checkpoint, *args)
    assert r.exit_code == 2, r.output
    assert r.stdout == ""
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and flag in lines[0]


@pytest.mark.parametrize(
    "args, settings",
    [
        (["--temperature", "-1"], {"temperature": -1.0}),
        (["--top-k", "0"], {"top_k": 0}),
        (["--top-p", "1.5"], {"top_p": 1.5}),
        (["--length", "-1"], {"length": -1}),
        (["--num-samples", "0"], {"num_samples": 0}),
        (["--unknown", "drop"], {"unknown": "drop"}),
        (["--stop", ""], {"stop": ""}),
    ],
)
def test_the_cli_names_the_flag_of_the_setting_that_fails(tiny_checkpoint, args, settings):
    """The config's own check says what is wrong; the command line puts its flag in front."""
    with pytest.raises(ConfigError) as e:
        SampleConfig(**settings).check()
    r = sample_cli(tiny_checkpoint, *args)
    assert r.exit_code == 2
    assert r.stderr.strip() == f"error: {args[0]} {e.value.problem}"


def test_length_counts_generated_characters_after_the_echoed_prime(tiny_checkpoint):
    r = sample_cli(tiny_checkpoint, "--prime", "All:\n", "-n", "37", "--seed", "1")
    assert r.exit_code == 0, r.output
    assert r.stdout.startswith("All:\n") and len(r.stdout) == 5 + 37
    only = sample_cli(tiny_checkpoint, "--prime", "All:", "-n", "0")
    assert only.stdout == "All:"


def test_unknown_prime_characters_are_listed_by_default(tiny_checkpoint):
    r = sample_cli(tiny_checkpoint, "--prime", "Zoë said: €5", "-n", "10")
    assert r.exit_code == 1
    assert r.stdout == ""
    line = r.stderr.strip()
    assert len(line.splitlines()) == 1 and line.startswith("error: --prime:")
    for ch in ("'Z'", "'ë'", "'€'", "'5'"):
        assert ch in line
    assert "--unknown skip" in line


def test_unknown_skip_drops_them_with_a_notice(tiny_checkpoint):
    r = sample_cli(tiny_checkpoint, "--prime", "Zoë said: €5", "-n", "10", "--unknown", "skip", "--seed", "2")
    assert r.exit_code == 0, r.output
    assert r.stdout.startswith("o said: ") and len(r.stdout) == len("o said: ") + 10
    assert "notice" in r.stderr and "'€'" in r.stderr and "4 character(s)" in r.stderr


def test_prime_file(tiny_checkpoint, tmp_path):
    f = tmp_path / "prime.txt"
    f.write_text("All:\nSpeak", encoding="utf-8")
    a = sample_cli(tiny_checkpoint, "--prime-file", str(f), "-n", "20", "--seed", "4")
    b = sample_cli(tiny_checkpoint, "--prime", "All:\nSpeak", "-n", "20", "--seed", "4")
    assert a.exit_code == 0, a.output
    assert a.stdout == b.stdout and a.stdout.startswith("All:\nSpeak")
    both = sample_cli(tiny_checkpoint, "--prime-file", str(f), "--prime", "All:")
    assert both.exit_code == 2 and "not both" in both.stderr
    missing = sample_cli(tiny_checkpoint, "--prime-file", str(tmp_path / "nope.txt"))
    assert missing.exit_code == 2 and "nope.txt" in missing.stderr and len(missing.stderr.strip().splitlines()) == 1


def test_num_samples_are_separated_and_each_restarts_from_the_prime(tiny_checkpoint):
    r = sample_cli(tiny_checkpoint, "--prime", "All:", "-n", "30", "--num-samples", "3", "--seed", "8")
    assert r.exit_code == 0, r.output
    parts = re.split(r"--- sample \d+ ---\n", r.stdout)
    assert parts[0] == "" and len(parts) == 4
    samples = [part.rstrip("\n") for part in parts[1:]]
    assert all(s.startswith("All:") and len(s) <= 34 for s in samples) and len(parts[3]) == 34
    assert all(part.endswith("\n\n") and not part.endswith("\n\n\n") for part in parts[1:3])  # one blank line
    assert len(set(samples)) == 3  # independent draws
    assert re.findall(r"--- sample (\d+) ---", r.stdout) == ["1", "2", "3"]
    greedy = sample_cli(tiny_checkpoint, "--prime", "All:", "-n", "30", "--num-samples", "2", "-t", "0")
    g = re.split(r"--- sample \d+ ---\n", greedy.stdout)[1:]
    assert g[0].rstrip("\n") == g[1].rstrip("\n")  # the state really restarts from the prime


def test_samples_that_end_a_line_are_still_one_blank_line_apart(tiny_checkpoint):
    for stop in ("\\n", "\\n\\n"):
        r = sample_cli(tiny_checkpoint, "-n", "400", "--num-samples", "3", "--seed", "2", "--stop", stop)
        assert r.exit_code == 0, r.output
        parts = re.split(r"--- sample \d+ ---\n", r.stdout)[1:]
        assert len(parts) == 3 and all(part.endswith("\n\n") and not part.endswith("\n\n\n") for part in parts[:2])


def test_stop_string_with_escapes(tiny_checkpoint):
    full = sample_cli(tiny_checkpoint, "-n", "300", "--seed", "6").stdout
    assert "\n" in full[:250]
    end = full.index("\n") + 1
    r = sample_cli(tiny_checkpoint, "-n", "300", "--seed", "6", "--stop", "\\n")
    assert r.exit_code == 0, r.output
    assert r.stdout == full[:end]
    never = sample_cli(tiny_checkpoint, "-n", "40", "--seed", "6", "--stop", "€")
    assert never.exit_code == 0 and len(never.stdout) == 40
    assert "warning" in never.stderr and "'€'" in never.stderr


@pytest.mark.parametrize(
    "given, meant",
    [("\\n\\n", "\n\n"), ("a\\tb\\r", "a\tb\r"), ("\\\\n", "\\n"), ("\\q\\", "\\q\\"), ("é", "é")],
)
def test_stop_escapes_are_read_left_to_right(given, meant):
    from charlm.cli.generate import unescape

    assert unescape(given) == meant


def test_model_alias(tiny_checkpoint, monkeypatch):
    import charlm.corpora

    monkeypatch.setattr(charlm.corpora, "shipped_model", lambda name: None)
    r = runner.invoke(app, ["sample", "--model", "shakespeare"])
    assert r.exit_code == 1 and r.stdout == ""
    line = r.stderr.strip()
    assert len(line.splitlines()) == 1
    assert "no pretrained 'shakespeare' model is shipped yet" in line and "charlm train shakespeare" in line
    words = runner.invoke(app, ["sample", "--model", "News-Words"]).stderr.strip()  # the word model's own command
    assert "'charlm train news --unit word', then use --checkpoint runs/news." in words and "\n" not in words
    by_path = runner.invoke(app, ["sample", "-m", str(tiny_checkpoint), "-n", "40", "--seed", "3"])
    assert by_path.exit_code == 0, by_path.output
    assert by_path.stdout == sample_cli(tiny_checkpoint, "-n", "40", "--seed", "3").stdout
    both = runner.invoke(app, ["sample", "-m", str(tiny_checkpoint), "-c", str(tiny_checkpoint)])
    assert both.exit_code == 2 and "not both" in both.stderr
    monkeypatch.setattr(charlm.corpora, "shipped_model", lambda name: tiny_checkpoint if name == "news" else None)
    shipped = runner.invoke(app, ["sample", "-m", "news", "-n", "40", "--seed", "3"])
    assert shipped.exit_code == 0 and shipped.stdout == by_path.stdout


def test_with_no_runs_sample_score_and_perplexity_fall_back_to_the_shipped_shakespeare_model(
    tiny_checkpoint, tmp_path, monkeypatch
):
    import charlm.corpora

    monkeypatch.chdir(tmp_path)  # no ./runs here
    monkeypatch.setattr(
        charlm.corpora, "shipped_model", lambda name: tiny_checkpoint if name == "shakespeare" else None
    )
    r = runner.invoke(app, ["sample", "-n", "40", "--seed", "3"])
    assert r.exit_code == 0, r.output
    assert r.stdout == sample_cli(tiny_checkpoint, "-n", "40", "--seed", "3").stdout
    assert "no trained model under ./runs; using the shipped shakespeare model" in r.stderr
    # score and perplexity fall back alike, and say so.
    scored = runner.invoke(app, ["score", "hello", "--json"])
    assert scored.exit_code == 0, scored.output
    assert "no trained model under ./runs; using the shipped shakespeare model" in scored.stderr
    (tmp_path / "t.txt").write_text("All:\nSpeak, speak.\n", encoding="utf-8")
    measured = runner.invoke(app, ["perplexity", "t.txt"])
    assert measured.exit_code == 0 and "nats/char" in measured.stdout
    assert "no trained model under ./runs; using the shipped shakespeare model" in measured.stderr
    # Without a shipped model either, sample says to train first.
    monkeypatch.setattr(charlm.corpora, "shipped_model", lambda name: None)
    none = runner.invoke(app, ["sample", "-n", "5"])
    assert none.exit_code == 1 and none.stdout == "" and "charlm train shakespeare" in none.stderr


def test_help_explains_every_control():
    r = runner.invoke(app, ["sample", "--help"])
    assert r.exit_code == 0
    for option in ("--temperature", "--top-k", "--top-p", "--prime-file", "--unknown", "--seed", "--num-samples"):
        assert option in r.stdout
    flat = " ".join(r.stdout.replace("│", " ").split())
    for words in ("Nucleus sampling", "greedy", "'--- sample K ---'", "separated by a blank line", "stops at"):
        assert words in flat


def test_seed_is_reproducible_byte_for_byte_across_processes(tiny_checkpoint, tmp_path):
    args = [console_script(), "sample", "-c", str(tiny_checkpoint), "-n", "400", "-t", "0.8", "--top-k", "6"]
    args += ["--top-p", "0.9", "--prime", "All:", "--num-samples", "2"]
    a = subprocess.run([*args, "--seed", "7"], capture_output=True, cwd=tmp_path, timeout=120)
    b = subprocess.run([*args, "--seed", "7"], capture_output=True, cwd=tmp_path, timeout=120)
    c = subprocess.run([*args, "--seed", "8"], capture_output=True, cwd=tmp_path, timeout=120)
    assert a.returncode == 0, a.stderr
    assert a.stdout == b.stdout and a.stdout != c.stdout
    assert a.stderr == b""


def test_warm_up_is_the_same_for_every_seed_and_continues_the_text(small_model):
    a, b = sampler_of(small_model, seed=1), sampler_of(small_model, seed=2)
    assert a.warm_up() == b.warm_up()
    assert all(
        np.array_equal(p, q) for la, lb in zip(a.state, b.state, strict=True) for p, q in zip(la, lb, strict=True)
    )
    assert any(p.any() for layer in a.state for p in layer)  # no longer the zero state
    # Two calls to generate make one text: the second continues from the last character of the first.
    whole = text(sampler_of(small_model, seed=9, temperature=0.0), 120)
    parts = sampler_of(small_model, seed=9, temperature=0.0)
    assert text(parts, 50) + text(parts, 70) == whole


# --------------------------------------------------------------------------- #
# Streaming: the uniforms in chunks, the same text for a seed, flat memory
# --------------------------------------------------------------------------- #

# Texts of the small model computed with the sampler that drew all of a sample's uniforms up front.
PINNED_TOP_K = (
    ".ciABp?.uh.ikievthvSpAihdk.tl?eS yS.h.lYFSefyneFeymkFFvma.,,\nwR,m,\nrw\nr,\n\n:dckCRkyyRS?l .S.iietlnyFsSfvys"
    "\n::r?:A,us,R\na,"
)
PINNED_STOPPED = ["ssfF Ya  zmCczvtae", "ndBl.nlYsAasYokyzos?otahe", "uSrakpfnn\n ?BA BkvSYcnryYoStBufohRe"]


def test_chunked_draws_are_the_stream_of_one_draw():
    """Generator.random(n) in pieces gives the numbers of one call, and advancing the bit
    generator by n skips exactly n of them: what generate relies on."""
    whole = np.random.default_rng(17).random(10_000)
    rng = np.random.default_rng(17)
    pieces = np.concatenate([rng.random(k) for k in (1, 4096, 7, 4096, 1800)])
    assert np.array_equal(whole, pieces)
    skipped = np.random.default_rng(17)
    skipped.bit_generator.advance(9_000)
    assert np.array_equal(skipped.random(1_000), whole[9_000:])


@pytest.mark.parametrize("chunk", [4096, 7, 1])
def test_a_seed_gives_the_pinned_text_whatever_the_chunk(small_model, monkeypatch, chunk):
    """Byte for byte the text of the up-front sampler, also across chunk boundaries, and
    samples after one stopped early start where they did (the generator moves on by --length)."""
    import charlm.sample

    monkeypatch.setattr(charlm.sample, "DRAW_CHUNK", chunk)
    model, vocab = small_model
    assert text(sampler_of(small_model, seed=11, top_k=8), 120) == PINNED_TOP_K
    sampler = sampler_of(small_model, seed=5, temperature=1.2, stop="e")
    got = []
    for _ in range(3):
        sampler.reset()
        sampler.feed(vocab.encode("All:").ids)
        got.append(text(sampler, 60))
    assert got == PINNED_STOPPED


def test_memory_does_not_grow_with_the_length(small_model, monkeypatch):
    import charlm.sample

    monkeypatch.setattr(charlm.sample, "DRAW_CHUNK", 64)
    sampler = sampler_of(small_model, seed=0)
    text(sampler, 10)  # warm-up: step buffers
    n = 5_000  # drawn up front, its uniforms alone took 40 bytes each
    tracemalloc.start()
    base = tracemalloc.get_traced_memory()[0]
    for _ in sampler.generate(n):
        pass
    peak = tracemalloc.get_traced_memory()[1] - base
    tracemalloc.stop()
    assert peak < 20_000, f"{peak} bytes allocated while generating {n} characters"


def test_a_length_past_the_maximum_is_one_line(tiny_checkpoint, tmp_path):
    from charlm.config import MAX_SAMPLE_LENGTH

    SampleConfig(length=MAX_SAMPLE_LENGTH).check()
    with pytest.raises(ConfigError) as e:
        SampleConfig(length=MAX_SAMPLE_LENGTH + 1).check()
    assert e.value.setting == "length"
    args = [console_script(), "sample", "-c", str(tiny_checkpoint), "--length", str(10**30)]
    r = subprocess.run(args, capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert r.returncode == 2 and r.stdout == ""
    assert (
        r.stderr.strip()
        == f"error: --length must be at most 10^15 (got {10**30}): " + e.value.problem.split(": ", 1)[1]
    )


def test_a_huge_length_streams_at_once(tiny_checkpoint, tmp_path):
    """10^12 characters: the first lines arrive through a pipe without anything drawn up front."""
    args = [
        console_script(),
        "sample",
        "-c",
        str(tiny_checkpoint),
        "--length",
        str(10**12),
        "--prime",
        "All:\n",
        "--seed",
        "1",
    ]
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=tmp_path)
    try:
        first = proc.stdout.readline()
        second = proc.stdout.readline()
    finally:
        proc.kill()
        proc.wait(timeout=30)
        proc.stdout.close()
        proc.stderr.close()
    assert first == b"All:\n" and second.endswith(b"\n")
