"""One way to name a model everywhere (issue 17, item 5), and text read in the
model's form through the installed script (item 6)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from charlm.checkpoint import load
from charlm.cli import app
from charlm.corpora import shipped_model
from charlm.errors import CharlmError
from charlm.runs import find_model, resume_checkpoint
from tests.conftest import SMALL_TEXT
from tests.test_cli import TINY, run_cli

runner = CliRunner()


@pytest.fixture
def workdir(tmp_path, monkeypatch, tiny_checkpoint) -> Path:
    """A folder with two runs: runs/mine and runs/shakespeare (a run named like a shipped model)."""
    monkeypatch.chdir(tmp_path)
    for name in ("mine", "shakespeare"):
        (tmp_path / "runs" / name).mkdir(parents=True)
        for which in ("best", "last"):
            shutil.copy(tiny_checkpoint, tmp_path / "runs" / name / f"{which}.safetensors")
    return tmp_path


def test_precedence_path_then_shipped_name_then_run_name(workdir):
    by_path = find_model("runs/mine")
    assert (by_path.path, by_path.how) == (Path("runs/mine/best.safetensors"), "path")
    by_name = find_model("mine")
    assert (by_name.path, by_name.how) == (Path("runs/mine/best.safetensors"), "run")
    shipped = find_model("Shakespeare")  # any case; the shipped model wins over runs/shakespeare …
    assert (shipped.path, shipped.how) == (shipped_model("shakespeare"), "shipped")
    assert "runs/shakespeare" in shipped.note  # … and the run is pointed at
    assert find_model("NEWS").path == shipped_model("news") and find_model("news").note is None
    (workdir / "news").write_bytes(Path("runs/mine/best.safetensors").read_bytes())
    assert find_model("news").how == "path"  # an existing file comes first


@pytest.mark.parametrize(
    "typed, meant",
    [("mien", "mine"), ("shakespear", "shakespeare"), ("Nwes", "news"), ("runs/mien", "mine")],
)
def test_an_unknown_name_gets_the_closest_names(workdir, typed, meant):
    with pytest.raises(CharlmError, match=rf"^{typed}: no such checkpoint, run folder, run or shipped model\. "):
        find_model(typed)
    with pytest.raises(CharlmError, match=rf"Did you mean .*\b{meant}\b"):
        find_model(typed)


def test_resume_takes_a_run_name_under_the_runs_folder(workdir):
    assert resume_checkpoint(Path("mine"), Path("runs")) == Path("runs/mine/last.safetensors")
    with pytest.raises(CharlmError, match=r"Did you mean mine\?"):
        resume_checkpoint(Path("mien"), Path("runs"))


def test_every_model_command_takes_every_kind_of_name(workdir):
    (workdir / "t.txt").write_text("All:\nSpeak, speak.\n", encoding="utf-8")
    for name in ("mine", "runs/mine", "runs/mine/best.safetensors"):
        for args in (
            ["sample", "-n", "5", "-m", name],
            ["sample", "-n", "5", "-c", name],
            ["score", "All:", "-m", name],
        ):
            r = runner.invoke(app, args)
            assert r.exit_code == 0, (args, r.output)
        assert runner.invoke(app, ["perplexity", "t.txt", "-m", name]).exit_code == 0
        assert runner.invoke(app, ["info", name]).exit_code == 0
    r = runner.invoke(app, ["sample", "-n", "5", "-m", "shakespeare"])
    assert r.exit_code == 0 and "note: shakespeare: the shipped model; for your run of that name" in r.stderr


def test_info_and_export_take_a_shipped_name_in_any_case(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    r = runner.invoke(app, ["info", "Shakespeare"])
    assert r.exit_code == 0 and "2×512 LSTM" in r.stdout
    r = runner.invoke(app, ["export", "shakespeare", "x.safetensors", "--half"])
    assert r.exit_code == 0, r.output
    ck = load(tmp_path / "x.safetensors")
    assert ck.config.hidden == 512 and ck.corpus.name == "shakespeare.txt" and ck.corpus.nfc


# --------------------------------------------------------------------------- #
# Through the installed console script
# --------------------------------------------------------------------------- #


def test_script_lists_no_runs_quietly_and_suggests_a_name(tmp_path):
    runs = run_cli("runs", cwd=tmp_path)
    assert runs.returncode == 0 and runs.stdout == "" and "no runs with a checkpoint under runs" in runs.stderr
    typo = run_cli("info", "Shakspeare", cwd=tmp_path)
    assert typo.returncode == 1 and typo.stderr.strip().endswith("Did you mean shakespeare?")


@pytest.mark.slow
def test_script_with_no_runs_falls_back_alike(tmp_path):
    (tmp_path / "t.txt").write_text("ROMEO:\nBut soft!\n", encoding="utf-8")
    fallback = "no trained model under ./runs; using the shipped shakespeare model"
    for args in (["score", "But soft!", "--json"], ["perplexity", "t.txt"], ["sample", "-n", "5"]):
        r = run_cli(*args, cwd=tmp_path)
        assert r.returncode == 0 and fallback in r.stderr, (args, r.stderr)


@pytest.mark.slow
def test_script_names_a_run_by_its_name_everywhere(tmp_path):
    (tmp_path / "small.txt").write_text(SMALL_TEXT, encoding="utf-8")
    assert run_cli("train", "small.txt", "--steps", "2", *TINY, cwd=tmp_path).returncode == 0
    for args in (["sample", "-m", "small", "-n", "5"], ["info", "small"], ["export", "small", "s.safetensors"]):
        r = run_cli(*args, cwd=tmp_path)
        assert r.returncode == 0, (args, r.stderr)
    r = run_cli("train", "small.txt", "--resume", "small", "--steps", "4", cwd=tmp_path)
    assert r.returncode == 0 and "resuming runs/small/last.safetensors at step 2" in r.stderr
    assert run_cli("export", "Shakespeare", "x.safetensors", cwd=tmp_path).returncode == 0


@pytest.mark.slow
def test_script_lists_skipped_characters_and_reads_text_in_the_models_form(tmp_path, tiny_checkpoint):
    """CRLF text: a model that records no form (older checkpoints) skips the \\r and
    says which characters it skipped; the shipped model reads \\r\\n as \\n."""
    (tmp_path / "win.txt").write_bytes("All:\r\nSpeak, speak.\r\nGro\u0308sse\r\n".encode())
    old = run_cli("perplexity", "win.txt", "-c", str(tiny_checkpoint), cwd=tmp_path)
    assert old.returncode == 0, old.stderr
    assert "notice: skipped 5 character(s) the model has never seen: '\\r' U+000D ×3, " in old.stderr
    assert "U+0308 COMBINING DIAERESIS ×1" in old.stderr  # never a bare combining mark
    shipped = run_cli("perplexity", "win.txt", "-m", "news", cwd=tmp_path)
    assert shipped.returncode == 0 and "U+000D" not in shipped.stderr and "U+0308" not in shipped.stderr
    assert "unknown     0 characters" in shipped.stdout  # 'ö' composed, as the news corpus has it


@pytest.mark.slow
def test_script_error_advice_works_when_followed(tmp_path, tiny_checkpoint):
    """The sequence a user follows: binary data is called binary (no advice that then
    fails); UTF-16 text is named as such, and reading it so works."""
    ck = ["-c", str(tiny_checkpoint)]
    (tmp_path / "blob.txt").write_bytes(b"\x42\x0d\x0d\x0a\xe3\x00\xff" * 300)
    binary = run_cli("perplexity", "blob.txt", *ck, cwd=tmp_path)
    assert binary.returncode == 1 and "binary data, not text" in binary.stderr
    assert "--errors" not in binary.stderr and "--encoding" not in binary.stderr
    (tmp_path / "u16.txt").write_bytes(SMALL_TEXT.encode("utf-16-le"))
    first = run_cli("perplexity", "u16.txt", *ck, cwd=tmp_path)
    assert first.returncode == 1 and "it looks like utf-16-le text. Pass --encoding utf-16-le." in first.stderr
    followed = run_cli("perplexity", "u16.txt", *ck, "--encoding", "utf-16-le", cwd=tmp_path)
    assert followed.returncode == 0 and "unknown     0 characters" in followed.stdout


@pytest.mark.slow
def test_script_trains_in_nfc_with_lf_unless_told_otherwise(tmp_path):
    text = SMALL_TEXT.replace("\n", "\r\n").replace("speak", "spe\u0301ak")  # decomposed é, Windows line ends
    (tmp_path / "win.txt").write_bytes(text.encode())
    assert run_cli("train", "win.txt", "--steps", "2", *TINY, cwd=tmp_path).returncode == 0
    clean = load(tmp_path / "runs" / "win" / "best.safetensors")
    assert "\r" not in clean.vocab.chars and "\u0301" not in clean.vocab.chars and "é" in clean.vocab.chars
    assert (clean.corpus.nfc, clean.corpus.crlf_as_lf) == (True, True)
    r = run_cli("train", "win.txt", "--steps", "2", *TINY, "--no-normalize", "--keep-cr", "--name", "raw", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    raw = load(tmp_path / "runs" / "raw" / "best.safetensors")
    assert "\r" in raw.vocab.chars and "\u0301" in raw.vocab.chars
    assert (raw.corpus.nfc, raw.corpus.crlf_as_lf) == (False, False)
    refused = run_cli("train", "win.txt", "--resume", "runs/raw", "--normalize", "--steps", "4", cwd=tmp_path)
    assert refused.returncode == 2 and "--normalize: this run read its text not normalized" in refused.stderr
    # the prime is read in the model's form: decomposed é is known to the NFC model
    primed = run_cli("sample", "-m", "runs/win", "--prime", "spe\u0301ak", "-n", "3", "-t", "0", cwd=tmp_path)
    assert primed.returncode == 0 and primed.stdout.startswith("spéak")
