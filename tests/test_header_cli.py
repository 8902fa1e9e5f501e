"""A checkpoint with an invalid header field, through every command that reads one.

``info``, ``sample``, ``perplexity``, ``score``, ``export`` and ``train --resume``
each print one line on stderr naming the file, the field and what is wrong, and
exit with 1, without a traceback and without writing anything; ``runs`` lists the
run as broken beside the good ones and exits with 0. The quick test runs the
command line in-process; the slow one the installed console script.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

from charlm.cli import run
from tests.conftest import SMALL_TEXT
from tests.test_cli import console_script
from tests.test_fuzz import join, split

TINY = ["--hidden", "8", "--embed", "4", "--layers", "1", "--batch-size", "4", "--seq-len", "16", "--threads", "1"]

# (name, section, field, value, what the error says): the examples and impossible models
BROKEN = [
    ("step-abc", "train", "step", "abc", 'train.step must be an integer, not "abc"'),
    ("elapsed-nan", "train", "elapsed", float("nan"), "train.elapsed must be a finite number, not NaN"),
    ("best-after-step", "train", "best_step", 99, "train.best_step is 99, after the last step, 4"),
    ("encoding-int", "corpus", "encoding", 5, "corpus.encoding must be a string or null, not 5"),
    ("forget-bias-str", "config", "forget_bias", "abc", 'config.forget_bias must be a number, not "abc"'),
    ("hidden-negative", "config", "hidden", -1, "config.hidden must be at least 1"),
    ("transformer", "config", "cell", "transformer", 'config.cell must be "lstm" or "gru" or "rnn"'),
]


def break_header(path: Path, section: str, field: str, value) -> None:
    header, body = split(path.read_bytes())
    stored = json.loads(header["__metadata__"][section])
    stored[field] = value
    header["__metadata__"][section] = json.dumps(stored)
    path.write_bytes(join(header, body))


def commands(run_dir: str) -> dict[str, list[str]]:
    """Every command that reads a checkpoint, pointed at the run ``run_dir``."""
    best = f"{run_dir}/best.safetensors"
    return {
        "info": ["info", run_dir],
        "sample": ["sample", "-c", best, "--length", "5", "--seed", "1"],
        "perplexity": ["perplexity", "small.txt", "-c", run_dir],
        "score": ["score", "-c", run_dir, "First Citizen"],
        "export": ["export", run_dir, "exported.safetensors"],
        "resume": ["train", "small.txt", "--resume", run_dir, "--steps", "8"],
    }


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    """A trained run, runs/good, and one broken copy of it per BROKEN case."""
    root = tmp_path_factory.mktemp("header")
    (root / "small.txt").write_text(SMALL_TEXT, encoding="utf-8")
    args = ["train", "small.txt", *TINY, "--steps", "4", "--eval-every", "2", "--out", "runs", "--name", "good"]
    completed = subprocess.run([console_script(), *args], cwd=root, capture_output=True, text=True, timeout=300)
    assert completed.returncode == 0, completed.stderr
    for name, section, field, value, _ in BROKEN:
        shutil.copytree(root / "runs/good", root / f"runs/{name}")
        for which in ("best", "last"):
            break_header(root / f"runs/{name}/{which}.safetensors", section, field, value)
    return root


def files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def check_refused(code: int, stderr: str, run_dir: str, words: str, command: str) -> None:
    lines = stderr.strip().splitlines()
    assert code == 1, (command, stderr)
    assert "Traceback" not in stderr and len(lines) == 1, (command, stderr)
    assert lines[0].startswith(f"error: {run_dir}/") and f"damaged checkpoint: {words}" in lines[0], (command, lines)
    assert "train it again" in lines[0]


@pytest.mark.parametrize("case", BROKEN[:3], ids=[c[0] for c in BROKEN[:3]])
def test_every_command_refuses_a_broken_header_in_one_line(folder, case, capsys, monkeypatch):
    monkeypatch.chdir(folder)
    name, *_, words = case
    before = files(folder)
    for command, args in commands(f"runs/{name}").items():
        capsys.readouterr()
        code = run(args)
        check_refused(code, capsys.readouterr().err, f"runs/{name}", words, command)
    assert files(folder) == before  # nothing written, nothing removed


def test_runs_lists_a_broken_run_as_broken_and_goes_on(folder, capsys, monkeypatch):
    monkeypatch.chdir(folder)
    capsys.readouterr()
    assert run(["runs", "--json"]) == 0
    out, err = capsys.readouterr()
    listed = {Path(r["run"]).name: r for r in json.loads(out)}
    assert set(listed) == {"good", *(c[0] for c in BROKEN)}
    assert listed["good"]["broken"] is None and listed["good"]["steps"] == 4
    for name, *_, words in BROKEN:
        assert listed[name]["broken"].startswith(words) and listed[name]["model"] is None
    assert f"warning: {len(BROKEN)} run(s) have a checkpoint charlm cannot read" in err
    assert run(["runs"]) == 0
    table = capsys.readouterr().out.splitlines()
    assert sum(line.startswith("runs/") and "\tbroken: " in line for line in table) == len(BROKEN)


@pytest.mark.slow
def test_the_console_script_refuses_every_broken_header_in_one_line(folder):
    before = files(folder)
    for i, command in enumerate(commands("")):  # each command on two broken files, each file at least once
        for name, *_, words in (BROKEN[i], BROKEN[(i + 3) % len(BROKEN)]):
            args = commands(f"runs/{name}")[command]
            r = subprocess.run([console_script(), *args], cwd=folder, capture_output=True, text=True, timeout=300)
            check_refused(r.returncode, r.stderr, f"runs/{name}", words, command)
    r = subprocess.run([console_script(), "runs"], cwd=folder, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0 and "Traceback" not in r.stderr
    assert sum("\tbroken: " in line for line in r.stdout.splitlines()) == len(BROKEN)
    assert files(folder) == before
