"""Scoring: sentence log-probabilities (the seeds' "which sentence is more likely"),
per-character surprisal aligned with the text, the most surprising spans, and
the `score` and `perplexity --show` commands."""

from __future__ import annotations

import io
import json
import math
import re
from pathlib import Path

import numpy as np
import pytest
from rich.console import Console
from typer.testing import CliRunner

from charlm.checkpoint import save
from charlm.cli import app
from charlm.errors import CharlmError, ConfigError
from charlm.evaluate import UnknownCharacters, score_ids, score_sentences, surprisal
from charlm.model import CharModel, ModelConfig
from charlm.optim import Adam, clip_grad_norm_
from charlm.report import BIN_STYLES, UNSCORED_STYLE, heatmap, power_of_ten
from charlm.spans import SpanConfig, surprising_spans, text_surprisal
from charlm.vocab import Vocab

runner = CliRunner()

PEAR = "The apple and pear salad."
PAIR = "The apple and pair salad."


@pytest.fixture(scope="module")
def overfit(tmp_path_factory) -> tuple[CharModel, Vocab, Path]:
    """A tiny model that has memorised 'The apple and pear salad.' line after line.
    'i' is in its vocabulary but never in its training text."""
    text = "\n" + (PEAR + "\n") * 4
    vocab = Vocab.from_text(text + "i")
    ids = vocab.encode(text).ids.astype(np.int64)
    model = CharModel(ModelConfig(len(vocab), embed=8, hidden=32, layers=1), seed=0)
    opt = Adam(model.num_params)
    x, y = ids[:-1].reshape(-1, 1), ids[1:].reshape(-1, 1)
    for _ in range(150):
        model.loss_and_grads(x, y, model.zero_state(1))
        clip_grad_norm_(model.grad_flat, 5.0)
        opt.step(model.flat, model.grad_flat, 1e-2)
    path = tmp_path_factory.mktemp("overfit") / "salad.safetensors"
    save(path, model, vocab, {"step": 150}, {"name": "salad"})
    return model, vocab, path


def reference_nats(model: CharModel, ids: list[int]) -> float:
    """−Σ log p(ids[t+1] | ids[..t]) from one full forward pass, softmax in float64."""
    logits, _ = model.forward_logits(np.array(ids[:-1]).reshape(-1, 1), model.zero_state(1))
    z = logits.astype(np.float64)
    logp = z - z.max(axis=1, keepdims=True)
    logp -= np.log(np.exp(logp).sum(axis=1, keepdims=True))
    return float(-logp[np.arange(len(ids) - 1), ids[1:]].sum())


# --------------------------------------------------------------------------- #
# score_sentences
# --------------------------------------------------------------------------- #


def test_the_overfit_model_prefers_the_sentence_it_knows(overfit):
    model, vocab, _ = overfit
    pair, pear = score_sentences(model, vocab, [PAIR, PEAR])
    assert pear.nats < 0.5  # memorised: P(pear sentence) close to 1
    assert pair.nats > pear.nats + 3.0  # 'i' after "pa" is a surprise
    assert pear.chars == pair.chars == len(PEAR)
    assert math.isclose(pear.log10_prob, -pear.nats / math.log(10))
    assert math.isclose(pear.bits_per_char, pear.nats / len(PEAR) / math.log(2))


def test_a_sentence_is_scored_after_a_newline_character_by_character(overfit):
    model, vocab, _ = overfit
    (got,) = score_sentences(model, vocab, [PAIR])
    ids = [vocab.index(c) for c in "\n" + PAIR]
    assert math.isclose(got.nats, reference_nats(model, ids), rel_tol=1e-5)
    assert math.isclose(got.nats, float(surprisal(model, np.array(ids)).sum()), rel_tol=1e-6)


def test_batched_scoring_equals_one_sentence_at_a_time(overfit):
    model, vocab, _ = overfit
    rng = np.random.default_rng(0)
    chars = vocab.chars.replace("\n", "")
    sentences = ["".join(rng.choice(list(chars), n)) for n in (1, 2, 9, 3, 17, 5, 1, 11, 30, 4)]
    together = score_sentences(model, vocab, sentences, batch_size=3, steps=4)  # groups and time chunks
    for s, got in zip(sentences, together, strict=True):
        (alone,) = score_sentences(model, vocab, [s], batch_size=1)
        assert got.text == s and got.chars == len(s)
        assert math.isclose(got.nats, alone.nats, rel_tol=1e-5)


def test_without_a_newline_in_the_vocabulary_the_first_character_is_given():
    vocab = Vocab.from_text("abc")
    model = CharModel(ModelConfig(len(vocab), embed=3, hidden=5, layers=1), seed=2)
    (s,) = score_sentences(model, vocab, ["abca"])
    assert s.chars == 3
    assert math.isclose(s.nats, reference_nats(model, [0, 1, 2, 0]), rel_tol=1e-5)


def test_unknown_characters_error_or_skip(overfit):
    model, vocab, _ = overfit
    with pytest.raises(UnknownCharacters) as e:
        score_sentences(model, vocab, [PEAR, "The €uro salad", "Zap"])
    msg = str(e.value)
    assert "'€'" in msg and "'Z'" in msg and "sentence 2, 3" in msg and "'skip'" in msg
    assert msg.startswith(e.value.what) and "--" not in msg  # the library names the policy, not a flag
    with pytest.raises(ConfigError) as bad:
        score_sentences(model, vocab, [PEAR], unknown="maybe")
    assert bad.value.setting == "unknown"
    skipped, plain = score_sentences(model, vocab, ["The apple and p€ear salad.", PEAR], unknown="skip")
    assert skipped.unknown == 1 and plain.unknown == 0
    assert math.isclose(skipped.nats, plain.nats, rel_tol=1e-6) and skipped.text != plain.text
    # a sentence with nothing known left cannot be ranked (it would come first, at P = 1)
    with pytest.raises(CharlmError, match=r"sentence 2: no character the model knows is left to score"):
        score_sentences(model, vocab, [PEAR, "€€€"], unknown="skip")


@pytest.mark.parametrize(
    "p, text", [(3.2e-13, "3.2 × 10⁻¹³"), (5.7e-10, "5.7 × 10⁻¹⁰"), (3.2e-3, "3.2 × 10⁻³"), (0.999, "1.0 × 10⁰")]
)
def test_probability_as_a_power_of_ten(p, text):
    assert power_of_ten(math.log10(p)) == text


# --------------------------------------------------------------------------- #
# charlm score
# --------------------------------------------------------------------------- #


def test_score_command_ranks_most_likely_first(overfit):
    _, _, path = overfit
    r = runner.invoke(app, ["score", "-c", str(path), PAIR, PEAR])  # the seeds' example, as written
    assert r.exit_code == 0, r.output
    assert r.stdout.index("pear") < r.stdout.index("pair")
    for header in ("rank", "sentence", "log P (nats)", "nats/char", "bits/char", "× 10"):
        assert header in r.stdout
    assert r.stderr == ""


def test_score_json(overfit):
    model, vocab, path = overfit
    r = runner.invoke(app, ["score", "-c", str(path), "--json", PAIR, PEAR, "salad"])
    assert r.exit_code == 0, r.output
    rows = json.loads(r.stdout)
    assert [row["rank"] for row in rows] == [1, 2, 3]
    assert rows[0]["sentence"] == PEAR and rows[0]["index"] == 2
    logp = [row["log_prob_nats"] for row in rows]
    assert logp == sorted(logp, reverse=True)
    expected = {s.text: s for s in score_sentences(model, vocab, [PAIR, PEAR, "salad"])}
    for row in rows:
        s = expected[row["sentence"]]
        assert math.isclose(row["log_prob_nats"], -s.nats, rel_tol=1e-9)
        assert math.isclose(row["bits_per_char"], s.bits_per_char, rel_tol=1e-9)
        assert row["chars"] == len(row["sentence"]) and row["unknown"] == 0


def test_score_file_and_stdin(overfit, tmp_path):
    _, _, path = overfit
    f = tmp_path / "candidates.txt"
    f.write_text(f"{PAIR}\r\n\n   \n{PEAR}\n", encoding="utf-8")
    r = runner.invoke(app, ["score", "-c", str(path), "--file", str(f), "--json"])
    assert r.exit_code == 0, r.output
    assert [row["sentence"] for row in json.loads(r.stdout)] == [PEAR, PAIR]  # blank lines and \r dropped
    s = runner.invoke(app, ["score", "-c", str(path), "--file", "-", "--json", "salad"], input=f"{PAIR}\n")
    assert s.exit_code == 0, s.output
    assert {row["sentence"] for row in json.loads(s.stdout)} == {PAIR, "salad"}


@pytest.mark.parametrize(
    "args, code, words",
    [
        ([], 2, "nothing to score"),
        ([PEAR, ""], 2, "sentence 2 is empty"),
        (["The €uro"], 1, "'€'"),
        (["The €uro"], 1, "use --unknown skip"),
        (["--unknown", "maybe", PEAR], 2, "--unknown"),
        (["--file", "no-such-file.txt"], 2, "no-such-file.txt: no such file"),
    ],
)
def test_score_refuses_bad_input_in_one_line(overfit, args, code, words):
    _, _, path = overfit
    r = runner.invoke(app, ["score", "-c", str(path), *args])
    assert r.exit_code == code
    assert r.stdout == ""
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and words in lines[0]


def test_score_skip_notice(overfit):
    _, _, path = overfit
    r = runner.invoke(app, ["score", "-c", str(path), "--unknown", "skip", "--json", "The €pear salad"])
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)[0]["unknown"] == 1
    assert "notice: skipped 1 character(s) the model has never seen: '€' U+20AC ×1" in r.stderr


# --------------------------------------------------------------------------- #
# surprisal of a text, spans, heat map, perplexity --show
# --------------------------------------------------------------------------- #


def test_text_surprisal_is_aligned_with_the_text(overfit):
    model, vocab, _ = overfit
    text = "The apple €and pear salad.\nZThe"
    nats, score = text_surprisal(model, vocab, text)
    assert nats.shape == (len(text),)
    unscored = {0, text.index("€"), text.index("Z")}
    assert {i for i in range(len(text)) if np.isnan(nats[i])} == unscored
    enc = vocab.encode(text, unknown="skip")
    assert np.allclose(nats[~np.isnan(nats)], surprisal(model, enc.ids))
    ref = score_ids(model, enc.ids, unknown=enc.unknown_count)
    assert score.chars == ref.chars == len(text) - 3 and score.unknown == 2
    assert math.isclose(score.nats, ref.nats, rel_tol=1e-9)


def test_surprising_spans_are_the_highest_non_overlapping_windows():
    nats = np.full(40, 0.1)
    nats[30:33] = 5.0  # the hardest stretch
    nats[10] = 4.0
    nats[0] = np.nan
    nats[20:24] = np.nan  # unscored characters do not count in a window's mean
    spans = surprising_spans(nats, width=4, count=3)
    assert len(spans) == 3
    assert spans[0].start in (29, 30) and spans[0].end - spans[0].start == 4
    assert 30 >= spans[0].start and 33 <= spans[0].end
    assert spans[1].start <= 10 < spans[1].end
    taken = [set(range(s.start, s.end)) for s in spans]
    assert not (taken[0] & taken[1]) and not (taken[1] & taken[2]) and not (taken[0] & taken[2])
    assert spans[0].bits_per_char > spans[1].bits_per_char >= spans[2].bits_per_char
    assert math.isclose(spans[0].bits_per_char, nats[spans[0].start : spans[0].end].mean() / math.log(2))
    assert surprising_spans(np.full(5, np.nan)) == []
    assert surprising_spans(nats, count=0) == []
    short = surprising_spans(np.array([1.0, 2.0]), width=12, count=5)
    assert len(short) == 1 and (short[0].start, short[0].end) == (0, 2)


def test_heatmap_styles_each_character_by_its_bin():
    text = "abcdefg"
    bits = np.array([np.nan, 0.5, 1.5, 3.0, 6.0, 9.0, 0.2])
    t = heatmap(text, bits * math.log(2))
    assert t.plain == text
    style_at = {i: str(span.style) for span in t.spans for i in range(span.start, span.end)}
    assert [style_at[i] for i in range(7)] == [UNSCORED_STYLE, *BIN_STYLES, BIN_STYLES[0]]
    buf = io.StringIO()
    Console(file=buf, force_terminal=True, color_system="standard", soft_wrap=True).print(t)
    assert "\x1b[" in buf.getvalue()  # coloured on a terminal
    plain = io.StringIO()
    Console(file=plain, force_terminal=False, soft_wrap=True).print(t)
    assert plain.getvalue() == text + "\n"  # and not in a file


def test_perplexity_show(overfit, tmp_path):
    _, _, path = overfit
    text = f"{PEAR}\n{PEAR}\n{PAIR}\n{PEAR}\n"
    f = tmp_path / "salads.txt"
    f.write_text(text, encoding="utf-8")
    r = runner.invoke(app, ["perplexity", str(f), "-c", str(path), "--show", "--spans", "2", "--span-width", "4"])
    assert r.exit_code == 0, r.output
    out = r.stdout
    assert out.startswith(text)  # not a terminal: the text exactly, no colour codes
    assert "\x1b[" not in out
    assert "surprisal" in out and "≥ 8" in out  # the legend
    spans = [line for line in out.splitlines() if re.match(r"\s+\d+\. line \d+, col \d+", line)]
    assert len(spans) == 2
    i = text.index("pair") + 2  # the 'i' the model has never seen
    line3 = text.count("\n", 0, i) + 1
    assert f"line {line3}," in spans[0]
    offset = int(spans[0].split("(offset ")[1].split(")")[0])
    assert offset <= i < offset + 4
    figures = dict(line.split(None, 1) for line in out.strip().splitlines()[-5:])
    plain = runner.invoke(app, ["perplexity", str(f), "-c", str(path)])
    assert figures == dict(line.split(None, 1) for line in plain.stdout.strip().splitlines())
    args = ["-c", str(path), "--show", "--spans", "2", "--span-width", "4"]
    stdin = runner.invoke(app, ["perplexity", "-", *args], input=text)
    assert stdin.exit_code == 0, stdin.output
    assert stdin.stdout == r.stdout
    for flag, value in (("--span-width", "0"), ("--spans", "-1")):
        bad = runner.invoke(app, ["perplexity", str(f), "-c", str(path), "--show", flag, value])
        assert bad.exit_code == 2 and bad.stdout == ""
        assert bad.stderr.startswith(f"error: {flag} ") and len(bad.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize("settings, field", [({"spans": -1}, "spans"), ({"span_width": 0}, "span_width")])
def test_span_config_check_names_the_setting(settings, field):
    with pytest.raises(ConfigError) as e:
        SpanConfig(**settings).check()
    assert e.value.setting == field and "--" not in str(e.value)
    assert SpanConfig(spans=0, span_width=1).check() == SpanConfig(0, 1)


def test_the_readmes_pear_and_pair_figures_are_what_the_shipped_models_give():
    """README's score section quotes ln P of the notes' two sentences under each
    shipped model; they are what `charlm score -m NAME --json` prints."""
    import re
    from pathlib import Path

    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text(encoding="utf-8")
    rows = re.findall(r"^\| `-m (\w+)` \| −([\d.]+) \| −([\d.]+) \| \*(\w+)\*, by ([\d.]+) nats \|$", readme, re.M)
    assert {r[0] for r in rows} == {"news", "shakespeare"}, rows
    pear, pair = "The apple and pear salad.", "The apple and pair salad."
    for name, pear_nats, pair_nats, winner, margin in rows:
        r = runner.invoke(app, ["score", "-m", name, "--json", pear, pair])
        assert r.exit_code == 0, r.output
        got = {s["sentence"]: s["log_prob_nats"] for s in json.loads(r.stdout)}
        assert (f"{-got[pear]:.2f}", f"{-got[pair]:.2f}") == (pear_nats, pair_nats)
        assert winner == ("pear" if got[pear] > got[pair] else "pair")
        assert f"{abs(got[pear] - got[pair]):.2f}" == margin


def test_the_readmes_word_counts_of_the_corpora():
    """Why the news model prefers pair: its corpus has pair and pairs twice each, pear never."""
    import re

    from charlm.corpora import corpus_dir

    def count(name: str, word: str) -> int:
        return len(re.findall(rf"\b{word}\b", (corpus_dir() / f"{name}.txt").read_text(encoding="utf-8"), re.I))

    assert [count("news", w) for w in ("pair", "pairs", "pear", "pears")] == [2, 2, 0, 0]
    assert [count("shakespeare", w) for w in ("pair", "pear")] == [14, 1]


def test_one_known_character_without_a_newline_is_not_called_unknown():
    """A model with no newline feeds a sentence's first character: "a" leaves nothing to
    score, and the message says so without claiming unknown characters were dropped."""
    vocab = Vocab.from_text("ab")
    model = CharModel(ModelConfig(len(vocab), embed=3, hidden=4, layers=1), seed=0)
    with pytest.raises(CharlmError) as e:
        score_sentences(model, vocab, ["ab", "a"])
    assert "sentence 2:" in str(e.value) and "no newline" in str(e.value) and "unknown" not in str(e.value)
    with pytest.raises(CharlmError) as e:  # only the characters really unknown are named
        score_sentences(model, vocab, ["xa", "ab"], unknown="skip")
    assert "sentence 1:" in str(e.value) and "('x' U+0078 ×1) are dropped" in str(e.value) and "'a'" not in str(e.value)
    assert score_sentences(model, vocab, ["ab"])[0].chars == 1
    newline = Vocab.from_text("ab\n")
    model = CharModel(ModelConfig(len(newline), embed=3, hidden=4, layers=1), seed=0)
    assert score_sentences(model, newline, ["a"])[0].chars == 1  # fed "\n", "a" scored


@pytest.mark.slow
def test_score_a_on_a_model_without_a_newline_through_the_console_script(tmp_path):
    from tests.test_cli import TINY, run_cli

    (tmp_path / "ab.txt").write_text("ab" * 600, encoding="utf-8")  # no newline anywhere
    r = run_cli("train", "ab.txt", "--steps", "5", *TINY, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    s = run_cli("score", "a", "-c", "runs/ab", cwd=tmp_path)
    assert s.returncode == 1 and s.stdout == ""
    assert s.stderr.startswith(
        "error: sentence 1: fewer than two characters the model knows; this model has no newline"
    )
    assert "unknown" not in s.stderr and len(s.stderr.splitlines()) == 1
    s = run_cli("score", "xa", "-c", "runs/ab", "--unknown", "skip", cwd=tmp_path)
    assert s.returncode == 1 and "('x' U+0078 ×1) are dropped" in s.stderr
    s = run_cli("score", "ab", "-c", "runs/ab", cwd=tmp_path)
    assert s.returncode == 0 and s.stderr == "" and "ab" in s.stdout
