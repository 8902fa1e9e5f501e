"""charlm info and charlm runs: what a checkpoint holds, from its header."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st
from typer.testing import CliRunner

from charlm.cli import app
from charlm.report import SPARK, sparkline
from charlm.runs import describe

runner = CliRunner()
TINY = ["--hidden", "16", "--embed", "8", "--layers", "1", "--batch-size", "4", "--seq-len", "16", "--eval-every", "2"]


@given(
    st.lists(st.floats(allow_nan=False, allow_infinity=False, min_value=-1e6, max_value=1e6), min_size=1, max_size=300)
)
def test_sparkline_orders_values(values):
    line = sparkline(values, width=40)
    assert len(line) == min(len(values), 40)
    assert set(line) <= set(SPARK)
    if len(values) <= 40 and max(values) > min(values):
        assert line[values.index(min(values))] == SPARK[0]
        assert line[values.index(max(values))] == SPARK[-1]


def test_sparkline_marks_missing_values():
    assert sparkline([2.0, math.nan, 1.0]) == "█ ▁"
    assert sparkline([]) == ""


@pytest.fixture
def trained_run(tmp_path, small_corpus, monkeypatch):
    monkeypatch.chdir(tmp_path)
    r = runner.invoke(app, ["train", str(small_corpus), "--steps", "6", *TINY])
    assert r.exit_code == 0, r.output
    return tmp_path / "runs" / "small"


def test_info_reports_training_and_curve(trained_run):
    info = describe(trained_run)
    assert info.path.name == "best.safetensors"
    assert info.config.hidden == 16 and info.vocab_size > 10
    assert [s for s, _ in info.val_curve] == [2, 4, 6]
    assert info.params == sum(
        n for n in (info.vocab_size * 8, 64 * 8, 64 * 16, 64, 64, info.vocab_size * 16, info.vocab_size)
    )
    r = runner.invoke(app, ["info", str(trained_run / "last.safetensors")])
    assert r.exit_code == 0, r.output
    for word in ("1×16 LSTM", "parameters", "6 steps", "nats/char", "validation curve", "small.txt"):
        assert word in r.stdout, word
    assert "initial forget-gate bias 0" in r.stdout


def test_info_and_perplexity_take_shipped_names_and_explain_a_typo(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    r = runner.invoke(app, ["info", "news"])
    assert r.exit_code == 0, r.output
    assert "2×512 LSTM" in r.stdout and "initial forget-gate bias 1" in r.stdout  # trained before the setting
    typo = runner.invoke(app, ["sample", "-m", "shakspeare", "-n", "5"])
    assert typo.exit_code == 1
    assert "shakspeare: no such checkpoint, run folder, run or shipped model. Did you mean shakespeare?" in typo.stderr
    far = runner.invoke(app, ["sample", "-m", "xyz", "-n", "5"])
    assert far.exit_code == 1 and "The shipped models are shakespeare, news and news-words" in far.stderr


def test_runs_lists_newest_first(trained_run, small_corpus):
    r = runner.invoke(app, ["train", str(small_corpus), "--steps", "2", *TINY])
    assert r.exit_code == 0, r.output
    r = runner.invoke(app, ["runs"])
    assert r.exit_code == 0, r.output
    runs = [line.split("\t")[0] for line in r.stdout.splitlines()[1:]]  # stdout is not a terminal: TSV
    assert runs.index(str(Path("runs") / "small-2")) < runs.index(str(Path("runs") / "small"))


def test_info_refuses_what_is_not_a_checkpoint(tmp_path):
    bad = tmp_path / "x.safetensors"
    bad.write_bytes(b"not a checkpoint")
    r = runner.invoke(app, ["info", str(bad)])
    assert r.exit_code == 1 and "error" in r.stderr and "Traceback" not in r.output
    r = runner.invoke(app, ["runs", "--out", str(tmp_path / "none")])  # nothing to list is not an error
    assert r.exit_code == 0 and r.stdout == "" and "no runs with a checkpoint under" in r.stderr


def test_export_keeps_the_model_and_drops_resume_state(trained_run, tmp_path):
    import numpy as np

    from charlm.checkpoint import load

    dst = tmp_path / "model.safetensors"
    r = runner.invoke(app, ["export", str(trained_run), str(dst), "--half"])
    assert r.exit_code == 0, r.output
    src, exp = load(trained_run / "best.safetensors"), load(dst)
    assert exp.config == src.config and exp.vocab == src.vocab
    assert not exp.extra  # no optimizer moments, no carried state
    assert exp.state.rng is None and exp.state.best_val == src.state.best_val
    for name, p in src.params.items():
        assert np.allclose(exp.params[name], p, rtol=1e-3, atol=1e-4), name
    assert dst.stat().st_size < 0.5 * (trained_run / "best.safetensors").stat().st_size
    again = runner.invoke(app, ["export", str(trained_run), str(dst)])
    assert again.exit_code == 2 and "--force" in again.stderr
    assert load(dst).params["decoder.bias"].dtype == np.float32


# --------------------------------------------------------------------------- #
# RunFolder: the folder and the save policy
# --------------------------------------------------------------------------- #


def test_run_folder_writes_checkpoints_before_the_metrics_line(tmp_path):
    from charlm.runfolder import RunFolder

    folder = RunFolder(tmp_path / "runs" / "x")
    folder.open(0)
    assert folder.created and folder.path.is_dir()
    order = []

    def save(path):
        order.append((path.name, folder.metrics.exists() and folder.metrics.read_text().count("\n")))

    folder.record(save, {"step": 4, "val_loss": 2.0}, improved=True)
    folder.record(save, {"step": 8, "val_loss": 2.5}, improved=False)
    assert order == [("last.safetensors", False), ("best.safetensors", False), ("last.safetensors", 1)]
    assert [json.loads(x)["step"] for x in folder.metrics.read_text().splitlines()] == [4, 8]


def test_run_folder_on_resume_trims_the_abandoned_future_and_stale_temps(tmp_path):
    from charlm.runfolder import RunFolder

    folder = RunFolder(tmp_path / "run")
    folder.path.mkdir()
    folder.metrics.write_text('{"step": 4}\n{"step": 8}\n{"step": 12}\n{"step": 1')  # killed mid-line
    stale = folder.path / ".last.safetensors.999999999.tmp"  # no such process
    stale.write_bytes(b"half")
    folder.open(8)
    assert not folder.created and not stale.exists()
    assert folder.metrics.read_text() == '{"step": 4}\n{"step": 8}\n'


def test_run_folder_that_stayed_empty_is_removed_only_if_this_session_made_it(tmp_path):
    from charlm.runfolder import RunFolder

    made = RunFolder(tmp_path / "new")
    made.open(0)
    made.discard_if_empty()
    assert not made.path.exists()
    kept = RunFolder(tmp_path / "old")
    kept.path.mkdir()
    kept.open(0)
    kept.discard_if_empty()
    assert kept.path.is_dir()
