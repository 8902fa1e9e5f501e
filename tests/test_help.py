"""Help pages and --version through the installed console script: the usual layout
(CORPUS, SOURCE DESTINATION, --hidden INTEGER, flags without a metavar), the same
under every Typer the dependency range allows (see test_dependencies.py)."""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

import charlm
from charlm.cli import app, run
from tests.test_cli import console_script

runner = CliRunner()

# What some Typer versions print in place of a metavar, or in a usage line.
ARTEFACTS = re.compile(r"<(bool|str|int|float|path|list)[^>]*>|\{[a-z_]+\}|Traceback|int range")


def check_page(page: str, command: str) -> str:
    """A help page at 80 columns: no artefact, no line over 80 characters, no trailing space."""
    assert not ARTEFACTS.search(page), (command, ARTEFACTS.search(page).group(), page)
    assert page.startswith(f"Usage: charlm {command}".rstrip()), page
    for line in page.splitlines():
        assert line == line.rstrip(), f"trailing space in {line!r}"
        assert len(line) <= 80, f"{len(line)} characters: {line!r}"
    return page


def check_help_page(charlm_script, command: str, cwd: Path) -> str:
    """``charlm [COMMAND] --help`` through ``charlm_script`` at 80 columns: status 0, nothing
    on stderr, the page as ``check_page`` wants it; returns the page."""
    args = [str(charlm_script), *([command] if command else []), "--help"]
    r = subprocess.run(args, capture_output=True, text=True, cwd=cwd, env={**os.environ, "COLUMNS": "80"}, timeout=60)
    assert r.returncode == 0 and r.stderr == "", (args, r.stderr)
    return check_page(r.stdout, command)


def help_page(command: str) -> str:
    """``charlm [COMMAND] --help`` in this process at 80 columns, checked by ``check_page``."""
    r = runner.invoke(app, [*([command] if command else []), "--help"], env={"COLUMNS": "80"})
    assert r.exit_code == 0 and r.stderr == "", r.output
    return check_page(r.stdout, command)


@pytest.mark.parametrize("command", ["", *typer.main.get_command(app).commands])
def test_help_page_reads_like_a_command_line(command):
    assert "--help  " in help_page(command)


def test_usage_lines_metavars_and_flags(tmp_path):
    page = check_help_page(console_script(), "export", tmp_path)
    assert "Usage: charlm export [OPTIONS] SOURCE DESTINATION" in page
    assert re.search(r"^  --half  +Store", page, re.M)  # a flag takes no metavar
    train = help_page("train")
    assert "Usage: charlm train [OPTIONS] CORPUS\n" in train
    assert re.search(r"^  --hidden INTEGER  +Hidden units per layer \(H\)\.  \[default: 256;", train, re.M)
    assert re.search(r"^  --out PATH ", train, re.M) and re.search(r"^  --lr FLOAT ", train, re.M)
    score = help_page("score")
    assert "Usage: charlm score [OPTIONS] [SENTENCE]...\n" in score and "  SENTENCE...  Sentences" in score
    bench = help_page("bench")
    assert re.search(r"^  --train / --no-train +Measure training throughput\.  \[default:", bench, re.M)


def test_a_missing_argument_is_named_as_in_the_help(capsys):
    assert run(["export"]) == 2
    out, err = capsys.readouterr()
    assert out == "" and err == "error: Missing argument 'SOURCE'. (see 'charlm export --help')\n"


def test_version(tmp_path):
    r = subprocess.run([console_script(), "--version"], capture_output=True, text=True, cwd=tmp_path)
    assert (r.returncode, r.stdout, r.stderr) == (0, f"charlm {charlm.__version__}\n", "")
    assert "--version" in check_help_page(console_script(), "", tmp_path)
