"""The pretrained models that ship inside the package (charlm/models), made by
`make models`: found by name, small, trained on their corpus, and usable from
the CLI with no training."""

from __future__ import annotations

import json
import math
import subprocess

import numpy as np
import pytest
from safetensors import safe_open
from typer.testing import CliRunner

from charlm.checkpoint import load
from charlm.cli import app
from charlm.config import SampleConfig
from charlm.corpora import SHIPPED_MODELS, corpus_dir, shipped_model
from charlm.evaluate import score_ids
from charlm.sample import Sampler
from tests.test_cli import console_script

runner = CliRunner()
MAX_BYTES = 8 * 2**20  # small enough to ship in the wheel
MAX_WORD_BYTES = 12 * 2**20  # a 10,000-word model: its embedding and decoder are most of it
CHAR_MODELS = tuple(n for n in SHIPPED_MODELS if n != "news-words")


@pytest.mark.slow
@pytest.mark.parametrize("name", CHAR_MODELS)
def test_shipped_model_is_small_float16_and_trained_on_its_corpus(name):
    path = shipped_model(name)
    assert path is not None, f"charlm/models/{name}.safetensors is missing: run 'make models'"
    assert path.stat().st_size <= MAX_BYTES
    with safe_open(str(path), "np") as f:
        weights = [k for k in f.keys() if not k.startswith("warm.")]  # the warmed-up state: float32, (H,) each
        assert {f.get_slice(k).get_dtype() for k in weights} == {"F16"}
        assert {f.get_slice(k).get_dtype() for k in f.keys() if k not in weights} == {"F32"}
        assert not any(k.startswith(("optimizer.", "state.")) for k in f.keys())  # exported: no resume state
    ck = load(path)
    text = (corpus_dir() / f"{name}.txt").read_text(encoding="utf-8")
    assert ck.corpus.sha256 and ck.corpus.chars == len(text)
    assert set(ck.vocab.chars) == set(text)  # the vocabulary is the whole corpus's
    assert math.isfinite(ck.state.best_val) and ck.state.val_curve
    # It predicts its own held-out tail far better than chance (ln V ≈ 4.2–4.9 nats/char).
    tail = text[len(text) - int(round(len(text) * 0.1)) :][:20_000]
    score = score_ids(ck.build_model(), ck.vocab.encode(tail).ids)
    assert score.nats_per_char < 1.8
    assert abs(score.nats_per_char - ck.state.best_val) < 0.25  # a slice, not the whole tail


def test_sample_from_a_shipped_model_by_name():
    r = runner.invoke(app, ["sample", "-m", "shakespeare", "--length", "50", "--seed", "1"])
    assert r.exit_code == 0, r.output
    assert len(r.stdout) == 50
    again = runner.invoke(app, ["sample", "-m", "shakespeare", "--length", "50", "--seed", "1"])
    assert again.stdout == r.stdout


@pytest.mark.slow
def test_installed_script_scores_with_the_news_model(tmp_path):
    text = (corpus_dir() / "news.txt").read_text(encoding="utf-8")[-5_000:]
    (tmp_path / "tail.txt").write_text(text, encoding="utf-8")
    r = subprocess.run(
        [console_script(), "perplexity", "-m", "news", "tail.txt"], cwd=tmp_path, capture_output=True, text=True
    )
    assert r.returncode == 0, r.stderr
    values = dict(line.split(None, 1) for line in r.stdout.splitlines() if line.strip())
    assert float(values["nats/char"]) < 2.0


def test_info_shows_a_shipped_model():
    r = runner.invoke(app, ["info", str(shipped_model("news"))])
    assert r.exit_code == 0, r.output
    assert "2×512 LSTM" in r.stdout and "validation curve" in r.stdout


@pytest.mark.slow
@pytest.mark.parametrize("name", CHAR_MODELS)
def test_an_unprompted_sample_starts_from_a_warmed_up_state(name):
    """Training meets a zero state only at the start of a stream, so from it the
    model's next-character entropy at a line start is untypical (news: near
    chance). After the sampler's warm-up on its own unprinted text it sits at a
    newline with an entropy closer to the model's mean after a newline in real
    held-out text (read with the state carried)."""
    ck = load(shipped_model(name))
    vocab, model = ck.vocab, ck.build_model()
    newline = vocab.index("\n")

    def entropy(logits: np.ndarray) -> np.ndarray:  # (…, V) → (…,) nats
        p = np.exp(logits - logits.max(axis=-1, keepdims=True))
        p /= p.sum(axis=-1, keepdims=True)
        return -(p * np.log(p)).sum(axis=-1)

    def entropy_after(sampler: Sampler, x: int) -> float:
        return float(entropy(sampler.logits_after(x)))

    text = (corpus_dir() / f"{name}.txt").read_text(encoding="utf-8")[-20_000:]
    ids = vocab.encode(text).ids.astype(np.int64)
    logits, _ = model.forward_logits(ids[:, None], model.zero_state(1))  # (T, V)
    after_newline = entropy(np.asarray(logits).reshape(len(ids), -1))[300:][ids[300:] == newline]
    typical = float(after_newline.mean())

    cold = entropy_after(Sampler(model, vocab), newline)
    sampler = Sampler(ck.build_model(), vocab, SampleConfig(seed=7))
    first = sampler.warm_up()
    assert vocab.chars[first] == "\n"
    warm = entropy_after(sampler, first)
    assert abs(warm - typical) < abs(cold - typical), (cold, warm, typical)


# --------------------------------------------------------------------------- #
# The word model: news-words
# --------------------------------------------------------------------------- #


@pytest.mark.slow
def test_shipped_word_model_is_float16_under_12_mb_and_trained_on_news():
    path = shipped_model("news-words")
    assert path is not None, "charlm/models/news-words.safetensors is missing: run 'make model-news-words'"
    assert path.stat().st_size <= MAX_WORD_BYTES
    with safe_open(str(path), "np") as f:
        weights = [k for k in f.keys() if not k.startswith("warm.")]
        assert {f.get_slice(k).get_dtype() for k in weights} == {"F16"}
        assert not any(k.startswith(("optimizer.", "state.")) for k in f.keys())
    ck = load(path)
    assert ck.vocab.unit == "word" and len(ck.vocab) == 10_002 and ck.warmed is not None
    text = (corpus_dir() / "news.txt").read_text(encoding="utf-8")
    assert ck.corpus.sha256 and ck.corpus.chars == len(text) and ck.corpus.tokens > 250_000
    assert math.isfinite(ck.state.best_val) and ck.state.best_val < 6.0  # nats/word; chance: ln 10,002 ≈ 9.2
    assert ck.train_config.threads == 2 and ck.train_config.seed == 1


def test_info_says_the_shipped_word_model_is_a_word_model():
    r = runner.invoke(app, ["info", "news-words", "--json"])
    assert r.exit_code == 0, r.output
    info = json.loads(r.stdout)
    assert info["unit"] == "word" and info["vocab_size"] == 10_002


def test_sample_two_sentences_from_the_shipped_word_model():
    r = runner.invoke(app, ["sample", "-m", "news-words", "--sentences", "2", "--seed", "0"])
    assert r.exit_code == 0, r.output
    lines = r.stdout.splitlines()
    assert len(lines) == 2 and r.stdout.endswith("\n") and all(line.strip() for line in lines)
    assert all(line[0].isupper() or not line[0].isalpha() for line in lines)  # sentence starts capitalised
    again = runner.invoke(app, ["sample", "-m", "news-words", "--sentences", "2", "--seed", "0"])
    assert again.stdout == r.stdout


@pytest.mark.slow
def test_installed_script_scores_with_the_news_word_model(tmp_path):
    text = (corpus_dir() / "news.txt").read_text(encoding="utf-8")[-5_000:]
    (tmp_path / "tail.txt").write_text(text, encoding="utf-8")
    r = subprocess.run(
        [console_script(), "perplexity", "-m", "news-words", "tail.txt", "--json"],
        cwd=tmp_path, capture_output=True, text=True,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    js = json.loads(r.stdout)
    assert js["unit"] == "word" and js["nats_per_word"] < 6.5 and 0 < js["oov_rate"] < 0.2
    assert js["chars"] == len(text) and js["bits_per_char"] < 2.5
