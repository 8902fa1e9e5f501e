"""End to end through the command line: CliRunner in-process, and the installed
console script in a subprocess."""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from charlm.cli import app
from tests.conftest import SMALL_TEXT

runner = CliRunner()
TINY = ["--hidden", "16", "--embed", "8", "--layers", "1", "--batch-size", "4", "--seq-len", "16", "--eval-every", "4"]


def train_tiny(tmp_path: Path, corpus: Path, steps: int = 6):
    return runner.invoke(app, ["train", str(corpus), "--steps", str(steps), "--out", str(tmp_path / "runs"), *TINY])


def test_train_sample_perplexity(tmp_path, small_corpus, monkeypatch):
    monkeypatch.chdir(tmp_path)
    r = train_tiny(tmp_path, small_corpus)
    assert r.exit_code == 0, r.output
    run = tmp_path / "runs" / "small"
    assert {p.name for p in run.iterdir()} == {"best.safetensors", "last.safetensors", "metrics.jsonl"}
    lines = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert [rec["step"] for rec in lines] == [4, 6, 6]  # the last: the best weights on all the held-out text
    assert set(lines[0]) >= {"step", "chars", "train_loss", "val_loss", "val_chars", "lr", "chars_per_s", "elapsed"}
    assert set(lines[-1]) == {"step", "best_step", "best_val_loss", "val_chars", "elapsed"}
    assert "best validation loss" in r.stdout and "charlm sample --checkpoint" in r.stdout
    assert "step" in r.stderr  # progress on stderr, not stdout
    assert "step      4" not in r.stdout

    # sample: newest run by default, exactly --length characters on stdout
    s = runner.invoke(app, ["sample", "--length", "50", "--seed", "3"])
    assert s.exit_code == 0, s.output
    assert len(s.stdout) == 50
    assert set(s.stdout) <= set(SMALL_TEXT)
    again = runner.invoke(app, ["sample", "--length", "50", "--seed", "3"])
    assert again.stdout == s.stdout

    primed = runner.invoke(app, ["sample", "-n", "20", "--prime", "All:", "-t", "0"])
    assert primed.exit_code == 0 and primed.stdout.startswith("All:") and len(primed.stdout) == 24

    other = tmp_path / "heldout.txt"
    other.write_text("All:\nSpeak, speak. Resolved!\n", encoding="utf-8")
    p = runner.invoke(app, ["perplexity", str(other)])
    assert p.exit_code == 0, p.output
    values = dict(line.split(None, 1) for line in p.stdout.strip().splitlines())
    nats = float(values["nats/char"])
    assert math.isclose(float(values["bits/char"]), nats / math.log(2), rel_tol=1e-3)
    assert math.isclose(float(values["perplexity"]), math.exp(nats), rel_tol=1e-3)
    assert values["unknown"].startswith("1 ")  # '!' is not in the training text


def test_perplexity_reads_stdin(tmp_path, tiny_checkpoint):
    r = runner.invoke(app, ["perplexity", "-", "-c", str(tiny_checkpoint)], input="All:\nSpeak.\n")
    assert r.exit_code == 0, r.output
    assert "nats/char" in r.stdout


def test_validation_loss_equals_perplexity_of_the_tail(tmp_path, small_corpus):
    r = train_tiny(tmp_path, small_corpus, steps=4)
    assert r.exit_code == 0, r.output
    run = tmp_path / "runs" / "small"
    val = json.loads((run / "metrics.jsonl").read_text().splitlines()[-1])["best_val_loss"]
    text = small_corpus.read_text()
    tail = tmp_path / "tail.txt"
    tail.write_text(text[len(text) - int(round(len(text) * 0.1)) :])
    p = runner.invoke(app, ["perplexity", str(tail), "-c", str(run / "last.safetensors")])
    got = float(p.stdout.split()[1])
    assert abs(got - val) < 1e-3


def test_val_chars_validates_on_the_start_of_the_held_out_text(tmp_path, small_corpus):
    r = runner.invoke(
        app,
        ["train", str(small_corpus), "--steps", "4", "--val-chars", "40", "--out", str(tmp_path / "runs"), *TINY],
    )
    assert r.exit_code == 0, r.output
    held_out = int(round(len(small_corpus.read_text()) * 0.1))
    assert f"validating on 40 of the {held_out:,} held out (--val-chars)" in r.stderr
    run = tmp_path / "runs" / "small"
    val = json.loads((run / "metrics.jsonl").read_text().splitlines()[-1])["best_val_loss"]
    text = small_corpus.read_text()
    head = tmp_path / "head.txt"
    head.write_text(text[len(text) - held_out :][:40])
    p = runner.invoke(app, ["perplexity", str(head), "-c", str(run / "last.safetensors")])
    assert abs(float(p.stdout.split()[1]) - val) < 1e-3
    # The whole held-out text scores differently, so the cap was applied.
    whole = tmp_path / "whole.txt"
    whole.write_text(text[len(text) - held_out :])
    q = runner.invoke(app, ["perplexity", str(whole), "-c", str(run / "last.safetensors")])
    assert abs(float(q.stdout.split()[1]) - val) > 1e-3


def test_no_run_yet_says_train_first(tmp_path, monkeypatch):
    import charlm.corpora

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(charlm.corpora, "shipped_model", lambda name: None)  # no shipped model to fall back on
    r = runner.invoke(app, ["sample"])
    assert r.exit_code == 1
    assert "train" in r.stderr and "Traceback" not in r.output
    assert r.stdout == ""


def test_corpora_lists_shipped_texts():
    r = runner.invoke(app, ["corpora"])
    assert r.exit_code == 0, r.output
    assert "shakespeare" in r.stdout and "news" in r.stdout
    assert "1,115,394" in r.stdout and "1,254,779" in r.stdout


def test_train_refuses_bad_corpus_without_creating_files(tmp_path):
    bad = tmp_path / "img.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(100))
    r = runner.invoke(app, ["train", str(bad), "--out", str(tmp_path / "runs"), "--steps", "1"])
    assert r.exit_code == 1
    assert "PNG" in r.stderr and len(r.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "runs").exists()


def console_script() -> str:
    found = shutil.which("charlm", path=os.path.dirname(sys.executable)) or shutil.which("charlm")
    if found is None:
        pytest.fail("the charlm console script is not installed; install the package as the README says")
    return found


def run_cli(*args, cwd, input=None):
    return subprocess.run([console_script(), *args], cwd=cwd, capture_output=True, text=True, input=input, timeout=300)


def test_installed_console_script_end_to_end(tmp_path, small_corpus):
    r = run_cli("train", str(small_corpus), "--steps", "4", *TINY, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "\r" not in r.stderr  # no progress bar when stderr is not a terminal
    s = run_cli("sample", "--length", "50", "--seed", "1", cwd=tmp_path)
    assert s.returncode == 0, s.stderr
    assert len(s.stdout) == 50
    p = run_cli("perplexity", "-", cwd=tmp_path, input=SMALL_TEXT[:300])
    assert p.returncode == 0, p.stderr
    assert "bits/char" in p.stdout


def test_python_dash_m_and_fast_help(tmp_path):
    r = subprocess.run([sys.executable, "-m", "charlm", "--help"], capture_output=True, text=True, cwd=tmp_path)
    assert r.returncode == 0 and "train" in r.stdout
    code = "import sys, charlm.cli; print('numpy' in sys.modules)"
    lazy = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert lazy.stdout.strip() == "False"  # NumPy is imported only when a command needs it


@pytest.mark.parametrize("cell", ["gru", "rnn"])
def test_each_cell_trains_then_samples_scores_and_resumes_without_a_flag(tmp_path, small_corpus, cell):
    """The checkpoint records the cell: sample, perplexity and --resume find it on their own."""
    from charlm.checkpoint import read_header

    runs = tmp_path / "runs"
    r = runner.invoke(app, ["train", str(small_corpus), "--cell", cell, "--steps", "4", "--out", str(runs), *TINY])
    assert r.exit_code == 0, r.output
    last = runs / "small" / "last.safetensors"
    assert json.loads(read_header(last)[1]["config"])["cell"] == cell
    s = runner.invoke(app, ["sample", "-c", str(last), "--length", "30", "--seed", "1"])
    assert s.exit_code == 0, s.output
    assert len(s.stdout) == 30 and set(s.stdout) <= set(SMALL_TEXT)
    p = runner.invoke(app, ["perplexity", str(small_corpus), "-c", str(last)])
    assert p.exit_code == 0, p.output
    assert 0 < float(dict(line.split(None, 1) for line in p.stdout.strip().splitlines())["nats/char"]) < 5
    again = runner.invoke(app, ["train", str(small_corpus), "--resume", str(runs / "small"), "--steps", "8"])
    assert again.exit_code == 0, again.output
    meta = read_header(last)[1]
    assert json.loads(meta["config"])["cell"] == cell and json.loads(meta["train"])["step"] == 8


def test_unknown_cell_is_one_clear_line(tmp_path, small_corpus):
    r = runner.invoke(
        app, ["train", str(small_corpus), "--cell", "foo", "--steps", "1", "--out", str(tmp_path / "runs")]
    )
    assert r.exit_code != 0
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "'foo'" in lines[0]
    assert all(c in lines[0] for c in ("lstm", "gru", "rnn")) and "Traceback" not in r.output
    assert not (tmp_path / "runs").exists()


def test_forget_bias_is_recorded_and_fixed_on_resume(tmp_path, small_corpus):
    """--forget-bias sets b_f of every LSTM layer at step 0, is stored in the
    config, and a resume that names another value is refused without a change."""
    from charlm.checkpoint import load, read_header
    from charlm.model import ModelConfig

    runs = tmp_path / "runs"
    args = ["train", str(small_corpus), "--out", str(runs), *TINY, "--layers", "2", "--lr", "1e-9"]
    r = runner.invoke(app, [*args, "--steps", "2", "--forget-bias", "2.5", "--name", "fb"])
    assert r.exit_code == 0, r.output
    last = runs / "fb" / "last.safetensors"
    ckpt = load(last)
    assert ckpt.config.forget_bias == 2.5
    H = ckpt.config.hidden
    for layer in (0, 1):  # lr 1e-9: the biases are still (almost exactly) their initial values
        b = ckpt.params[f"rnn.bias_ih_l{layer}"]
        assert np.allclose(b[H : 2 * H], 2.5, atol=1e-6) and np.allclose(b[:H], 0.0, atol=1e-6)
    before = last.read_bytes()
    again = runner.invoke(app, ["train", str(small_corpus), "--resume", str(runs / "fb"), "--forget-bias", "0"])
    assert again.exit_code == 2 and "--forget-bias 0.0 differs from this run's 2.5" in again.output
    assert last.read_bytes() == before
    default = runner.invoke(app, [*args, "--steps", "1", "--name", "plain"])
    assert default.exit_code == 0, default.output
    assert json.loads(read_header(runs / "plain" / "last.safetensors")[1]["config"])["forget_bias"] == 0.0
    # a checkpoint from before the setting existed was initialised with b_f = 1
    assert ModelConfig.from_dict({"vocab_size": 5}).forget_bias == 1.0


# --------------------------------------------------------------------------- #
# the library's errors, worded with the flags by the CLI
# --------------------------------------------------------------------------- #


def one_error_line(r) -> str:
    lines = [x for x in r.stderr.splitlines() if x.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in r.output, r.output
    return lines[0][len("error: ") :]


@pytest.mark.parametrize(
    ("args", "start"),
    [
        (["--lr", "-1"], "--lr must be a finite number greater than 0 (got -1)."),
        (["--clip", "0"], "--clip must be a finite number greater than 0"),
        (["--epochs", "0"], "--epochs must be a finite number greater than 0"),
        (["--minutes", "-1"], "--minutes must be a finite number greater than 0"),
        (["--val-frac", "0.7"], "--val-frac must be in (0, 0.5] (got 0.7)"),
        (["--errors", "ignore"], "--errors must be 'strict' or 'replace', not 'ignore'."),
        (["--dropout", "0.95"], "--dropout must be between 0 and 0.9 (got 0.95)"),
        (["--forget-bias", "11"], "--forget-bias must be between -10 and 10 (got 11)."),
        (["--cell", "gru", "--forget-bias", "1"], "--forget-bias is for the LSTM's forget gate; a gru cell has none."),
        (["--cell", "lsmt"], "--cell 'lsmt' is not a cell charlm knows; choose one of: lstm, gru, rnn."),
        (["--threads", "9"], "--threads 9 is more than the batch size 4: each block needs a row of its own."),
    ],
)
def test_a_config_check_reaches_the_user_as_its_flag(tmp_path, small_corpus, args, start):
    r = runner.invoke(app, ["train", str(small_corpus), "--out", str(tmp_path / "runs"), *TINY, *args])
    assert r.exit_code == 2
    assert one_error_line(r).startswith(start)
    assert not (tmp_path / "runs").exists()


def test_corpus_errors_advise_the_flags(tmp_path, small_corpus, tiny_checkpoint):
    out = ["--out", str(tmp_path / "runs")]
    r = runner.invoke(app, ["train", str(tiny_checkpoint), *out])
    assert r.exit_code == 1 and one_error_line(r).endswith("checkpoints go to --checkpoint/-c or --resume.")
    r = runner.invoke(app, ["train", str(small_corpus), *out, "--batch-size", "64", "--seq-len", "64"])
    line = one_error_line(r)
    assert r.exit_code == 1 and "--batch-size 64 × --seq-len 64 needs at least" in line and "--val-frac 0.1" in line
    assert line.endswith("Use a longer text or smaller --batch-size/--seq-len.")
    short = tmp_path / "short.txt"
    short.write_text(SMALL_TEXT[:300], encoding="utf-8")
    r = runner.invoke(app, ["train", str(short), *out, "--batch-size", "1", "--seq-len", "8", "--val-frac", "0.001"])
    assert r.exit_code == 1 and "--val-frac 0.001 holds out 0 of its 300 characters" in one_error_line(r)
    assert "Raise --val-frac to" in one_error_line(r)
    assert not (tmp_path / "runs").exists()


def test_resume_errors_advise_the_flags(tmp_path, small_corpus, tiny_checkpoint):
    r = runner.invoke(app, ["train", str(small_corpus), "--resume", str(tiny_checkpoint)])
    assert r.exit_code == 1 and one_error_line(r).endswith("Start a new run (without --resume).")
    r = runner.invoke(app, ["train", str(small_corpus), "--resume", str(tmp_path / "nowhere")])
    assert r.exit_code == 1 and one_error_line(r).endswith("Give a folder under runs/ (or a run's name) to --resume.")
    r = runner.invoke(app, ["train", str(small_corpus), "--resume", "--out", str(tmp_path / "empty")])
    assert r.exit_code == 1 and "(--resume runs/NAME) or --out FOLDER" in one_error_line(r)
    assert train_tiny(tmp_path, small_corpus).exit_code == 0
    run = str(tmp_path / "runs" / "small")
    r = runner.invoke(app, ["train", str(small_corpus), "--resume", run, "--steps", "4"])
    assert r.exit_code == 2 and one_error_line(r).startswith("--steps 4 is not more than the 6 steps")
    r = runner.invoke(app, ["train", str(small_corpus), "--resume", run, "--seq-len", "8"])
    assert r.exit_code == 2 and one_error_line(r).startswith("--seq-len 8 differs from this run's 16")
    r = runner.invoke(app, ["train", str(small_corpus), "--resume", run, "--steps", "8", "--lr", "0.001"])
    assert r.exit_code == 0 and "resuming with --lr 0.001 (was 0.003)" in r.stderr


def test_core_modules_name_no_flags():
    """Only charlm/cli names command-line flags; the library speaks about the thing."""
    import io
    import re
    import tokenize

    flag = re.compile(r"(?<![\w-])--[a-z][a-z-]*")
    root = Path(__file__).resolve().parent.parent / "charlm"
    TEXT_TOKENS = {tokenize.STRING, tokenize.COMMENT, getattr(tokenize, "FSTRING_MIDDLE", tokenize.STRING)}
    core = ("config", "errors", "train", "resume", "checkpoint", "corpus", "text", "data", "vocab", "runs", "runfolder")
    for name in (*core, "signals", "atomic", "optim", "corpora", "runlock"):
        source = (root / f"{name}.py").read_text(encoding="utf-8")
        for tok in tokenize.generate_tokens(io.StringIO(source).readline):
            if tok.type in TEXT_TOKENS:
                assert not flag.search(tok.string), f"charlm/{name}.py:{tok.start[0]} names a flag: {tok.string[:80]}"


def test_every_kind_the_library_raises_has_its_cli_wording_and_back():
    import ast

    from charlm.cli.common import WORDING

    def raised_kinds(source: str):
        for node in ast.walk(ast.parse(source)):
            if isinstance(node, ast.Call) and getattr(node.func, "id", "").endswith(("Error", "Diverged")):
                yield from (k.value.value for k in node.keywords if k.arg == "kind")

    root = Path(__file__).resolve().parent.parent / "charlm"
    raised = {kind for path in root.glob("*.py") for kind in raised_kinds(path.read_text(encoding="utf-8"))}
    assert raised == set(WORDING) - {"diverged_kept"}  # diverged_kept: "diverged" with a checkpoint kept
