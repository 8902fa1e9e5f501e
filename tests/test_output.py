"""What the commands print, through the installed console script: tables that never
cut a value (tab-separated when stdout is not a terminal, aligned at 80 columns on
one), --json objects with the fields the README documents, and a closed pipe that
ends the command quietly with status 0."""

from __future__ import annotations

import json
import os
import pty
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from typer.testing import CliRunner

from charlm.cli import app
from charlm.corpora import shipped
from tests.conftest import SMALL_TEXT
from tests.test_cli import console_script

runner = CliRunner()
ANSI = re.compile(r"\x1b\[[0-9;]*m")
LONG_SENTENCE = " ".join(SMALL_TEXT[:300].split())  # wider than 80 columns, in the tiny model's vocabulary


def here(*args, cwd: Path):
    """The command line in this process, stdout not a terminal (as through a pipe)."""
    old = Path.cwd()
    os.chdir(cwd)
    try:
        return runner.invoke(app, list(args))
    finally:
        os.chdir(old)


def cli(*args, cwd, env=None, input=None):
    """The console script with stdout and stderr captured (pipes, not a terminal)."""
    return subprocess.run(
        [console_script(), *args], cwd=cwd, capture_output=True, text=True, input=input, timeout=120, env=env
    )


def on_terminal(*args, cwd, columns: int = 80) -> str:
    """What the console script writes to a terminal COLUMNS wide (a pseudo-terminal),
    without the style codes; carriage returns dropped."""
    leader, follower = pty.openpty()
    env = {**os.environ, "COLUMNS": str(columns), "LINES": "50", "TERM": "xterm"}
    proc = subprocess.Popen([console_script(), *args], cwd=cwd, stdout=follower, stderr=subprocess.DEVNULL, env=env)
    os.close(follower)
    chunks = []
    while True:
        try:
            data = os.read(leader, 65536)
        except OSError:  # EIO: the writer has gone
            break
        if not data:
            break
        chunks.append(data)
    os.close(leader)
    assert proc.wait(timeout=120) == 0
    return ANSI.sub("", b"".join(chunks).decode("utf-8")).replace("\r", "")


@pytest.fixture
def run_dir(tmp_path: Path, tiny_checkpoint: Path) -> Path:
    """./runs/small/best.safetensors under tmp_path."""
    run = tmp_path / "runs" / "small"
    run.mkdir(parents=True)
    shutil.copy(tiny_checkpoint, run / "best.safetensors")
    return run


def no_trailing_spaces(text: str) -> None:
    for line in text.splitlines():
        assert line == line.rstrip(), f"trailing space in {line!r}"


# --------------------------------------------------------------------------- #
# Tables
# --------------------------------------------------------------------------- #


def test_corpora_piped_is_tsv_with_whole_paths(tmp_path):
    r = cli("corpora", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    header, *rows = [line.split("\t") for line in r.stdout.splitlines()]
    assert header == ["name", "size", "characters", "distinct", "path", "source"]
    assert [row[0] for row in rows] == [c.name for c in shipped()]
    for row in rows:
        assert len(row) == 6 and Path(row[4]).is_file() and "…" not in row[5]
    no_trailing_spaces(r.stdout)


def test_corpora_at_80_columns_cuts_no_path(tmp_path):
    screen = on_terminal("corpora", cwd=tmp_path)
    for c in shipped():
        assert str(c.path) in screen  # whole, on one line: the terminal wraps it, charlm does not cut it
    assert "…" not in screen
    no_trailing_spaces(screen)


def test_runs_piped_and_at_80_columns(tmp_path, run_dir):
    r = here("runs", cwd=tmp_path)
    assert r.exit_code == 0, r.output
    header, row = [line.split("\t") for line in r.stdout.splitlines()]
    assert header == ["run", "model", "best val nats/char", "bits/char", "steps", "age"]
    assert row[0] == str(Path("runs") / "small") and row[1] == "2×8 LSTM"
    screen = on_terminal("runs", cwd=tmp_path)
    head = next(line for line in screen.splitlines() if line.startswith("run "))
    assert head.split() == ["run", "model", "best", "val", "nats/char", "bits/char", "steps", "age"]
    assert "…" not in screen and max(map(len, screen.splitlines())) <= 80
    no_trailing_spaces(screen)


def test_score_piped_keeps_a_long_sentence_whole(tmp_path, tiny_checkpoint):
    r = here("score", "-c", str(tiny_checkpoint), LONG_SENTENCE, "First Citizen:", cwd=tmp_path)
    assert r.exit_code == 0, r.output
    header, *rows = [line.split("\t") for line in r.stdout.splitlines()]
    assert header == ["rank", "log P (nats)", "nats/char", "bits/char", "P", "sentence"]
    assert sorted(row[-1] for row in rows) == sorted([LONG_SENTENCE, "First Citizen:"])


@pytest.mark.slow
def test_score_and_info_at_80_columns(tmp_path, run_dir):
    screen = on_terminal("score", "-c", str(run_dir), LONG_SENTENCE, cwd=tmp_path)
    assert LONG_SENTENCE in screen  # on one line, not folded into a narrow column
    no_trailing_spaces(screen)
    screen = on_terminal("info", str(run_dir), cwd=tmp_path)
    no_trailing_spaces(screen)
    assert str(run_dir / "best.safetensors") in screen


def test_info_lines_have_no_padding(tmp_path, run_dir):
    r = here("info", str(run_dir), cwd=tmp_path)
    assert r.exit_code == 0, r.output
    no_trailing_spaces(r.stdout)
    fields = dict(re.split(r"  +", line, maxsplit=1) for line in r.stdout.splitlines())
    assert fields["checkpoint"].startswith(str(run_dir / "best.safetensors"))
    assert fields["model"].startswith("2×8 LSTM")


# --------------------------------------------------------------------------- #
# --json
# --------------------------------------------------------------------------- #

PERPLEXITY_FIELDS = {"checkpoint", "nats_per_char", "bits_per_char", "perplexity", "chars", "unknown"}
INFO_FIELDS = {
    "checkpoint",
    "file_bytes",
    "model",
    "params",
    "vocab_size",
    "unit",  # char, or word for a word model
    "corpus",
    "training",
    "best_val",
    "val_curve",
    "warmed_up",
}
RUNS_FIELDS = {
    "run",
    "checkpoint",
    "broken",
    "model",
    "params",
    "unit",
    "steps",
    "best_val",
    "corpus",
    "modified",
    "age_seconds",
}
MODEL_FIELDS = {"vocab_size", "cell", "embed", "hidden", "layers", "dropout", "forget_bias"}


def test_perplexity_json(tmp_path, tiny_checkpoint):
    text = tmp_path / "t.txt"
    text.write_text(SMALL_TEXT[:400], encoding="utf-8")
    r = here("perplexity", "-c", str(tiny_checkpoint), str(text), "--json", cwd=tmp_path)
    assert r.exit_code == 0, r.output
    got = json.loads(r.stdout)
    assert set(got) == PERPLEXITY_FIELDS
    assert got["chars"] == 399 and got["unknown"] == 0
    assert got["bits_per_char"] == pytest.approx(got["nats_per_char"] / 0.6931471805599453)
    assert got["perplexity"] == pytest.approx(2.718281828459045 ** got["nats_per_char"])
    lines = here("perplexity", "-c", str(tiny_checkpoint), str(text), cwd=tmp_path).stdout
    assert f"{got['nats_per_char']:.4f}" in lines  # the same figure as the five lines
    both = here("perplexity", "-c", str(tiny_checkpoint), str(text), "--json", "--show", cwd=tmp_path)
    assert both.exit_code == 2 and both.stdout == "" and "--show or --json" in both.stderr


def test_info_and_runs_json(tmp_path, run_dir):
    r = here("info", str(run_dir), "--json", cwd=tmp_path)
    assert r.exit_code == 0, r.output
    info = json.loads(r.stdout)
    assert set(info) == INFO_FIELDS and set(info["model"]) == MODEL_FIELDS
    assert info["checkpoint"] == str(run_dir / "best.safetensors") and info["model"]["hidden"] == 8
    assert info["corpus"]["name"] == "small.txt" and info["warmed_up"] is False  # saved without one
    runs = json.loads(here("runs", "--json", cwd=tmp_path).stdout)
    assert len(runs) == 1 and set(runs[0]) == RUNS_FIELDS
    assert runs[0]["run"] == str(Path("runs") / "small") and runs[0]["params"] == info["params"]
    assert runs[0]["broken"] is None  # readable (see test_header_cli.py for broken runs)


# --------------------------------------------------------------------------- #
# A closed pipe
# --------------------------------------------------------------------------- #


TINY_TRAIN = ["--hidden", "8", "--embed", "4", "--layers", "1", "--batch-size", "4", "--seq-len", "8", "--steps", "2"]


def reader_gone(args, cwd) -> subprocess.CompletedProcess:
    """Run the console script with stdout a pipe whose reader has already closed it."""
    proc = subprocess.Popen(
        [console_script(), *args], cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    proc.stdout.close()  # before the command writes a byte
    err = proc.stderr.read()
    return subprocess.CompletedProcess(args, proc.wait(timeout=120), "", err)


CLOSED_PIPE = [
    ["sample", "-c", "runs/small", "--length", "100000"],
    *[
        pytest.param(args, marks=pytest.mark.slow)
        for args in (
            ["corpora"],
            ["--help"],
            ["--version"],
            ["runs"],
            ["runs", "--json"],
            ["info", "runs/small"],
            ["info", "runs/small", "--json"],
            ["score", "-c", "runs/small", "hello"],
            ["score", "-c", "runs/small", "hello", "--json"],
            ["perplexity", "-c", "runs/small", "small.txt"],
            ["perplexity", "-c", "runs/small", "small.txt", "--json"],
            ["export", "runs/small", "exported.safetensors"],
            ["train", "small.txt", *TINY_TRAIN],
            [
                "bench",
                "--hidden",
                "8",
                "--embed",
                "4",
                "--layers",
                "1",
                "--batch",
                "4",
                "--seq-len",
                "8",
                "--windows",
                "1",
                "--window-seconds",
                "0.01",
            ],
        )
    ],
]


@pytest.mark.parametrize("args", CLOSED_PIPE, ids=lambda a: " ".join(a[:2]) + " --json" * ("--json" in a[2:]))
def test_a_closed_pipe_ends_quietly_with_status_0(args, tmp_path, run_dir):
    (tmp_path / "small.txt").write_text(SMALL_TEXT, encoding="utf-8")
    r = reader_gone(args, tmp_path)
    assert r.returncode == 0, r.stderr
    assert "Traceback" not in r.stderr and "Broken pipe" not in r.stderr and "Exception ignored" not in r.stderr
    assert "error" not in r.stderr


@pytest.mark.slow
def test_sample_into_head_and_into_a_file(tmp_path, run_dir):
    script = console_script()
    head = subprocess.run(
        ["bash", "-c", f"set -o pipefail; '{script}' sample -c runs/small --seed 1 --length 100000 | head -c 50"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert head.returncode == 0 and head.stderr == "", head.stderr
    assert len(head.stdout) == 50
    written = subprocess.run(
        ["bash", "-c", f"'{script}' sample -c runs/small --seed 1 --length 500 > out.txt"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert written.returncode == 0 and written.stderr == ""
    text = (tmp_path / "out.txt").read_text(encoding="utf-8")
    assert len(text) == 500 and text.startswith(head.stdout)  # exactly the text, no newline added


# --------------------------------------------------------------------------- #
# --threads above the core count
# --------------------------------------------------------------------------- #

MORE = (os.cpu_count() or 1) + 1
TINY = ["--hidden", "8", "--embed", "4", "--layers", "1", "--seq-len", "8"]


@pytest.mark.slow
def test_bench_threads_above_the_cores_warns_once(tmp_path):
    args = ["bench", *TINY, "--batch", str(MORE), "--threads", str(MORE), "--windows", "1"]
    r = cli(*args, "--window-seconds", "0.01", "--no-sample", "--json", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    warnings = [line for line in r.stderr.splitlines() if line.startswith("warning:")]
    assert warnings == [
        f"warning: --threads {MORE} is more than the {MORE - 1} CPU cores here: {MORE} row blocks "
        f"({MORE - 1} worker processes) share them, slower than --threads {MORE - 1}; the results are "
        f"those of --threads {MORE} on any machine."
    ]
    result = json.loads(r.stdout)
    assert result["threads"] == MORE and result["train"]["gemm_threads"] == MORE - 1
    assert result["train"]["roofline_fraction"] <= 1.0


@pytest.mark.slow
def test_train_threads_above_the_cores_warns_once_and_is_reproducible(tmp_path, small_corpus):
    def train(name):
        args = ["train", str(small_corpus), *TINY, "--batch-size", str(MORE), "--threads", str(MORE)]
        return cli(*args, "--steps", "3", "--eval-every", "3", "--name", name, cwd=tmp_path)

    first, second = train("a"), train("b")
    assert first.returncode == 0, first.stderr
    assert sum(line.startswith("warning: --threads") for line in first.stderr.splitlines()) == 1
    loss = [line for line in first.stdout.splitlines() if line.startswith("best validation loss")]
    assert loss and loss == [line for line in second.stdout.splitlines() if line.startswith("best validation loss")]
