"""The dependency ranges in pyproject.toml are tested ranges: the oldest Typer and Rich
they allow, and the newest, are each installed into a fresh virtual environment with
charlm, and every help page must read as a normal command line's (no ``<bool>``,
``{corpus}`` or ``<list[str]>`` of some Typer versions, no traceback)."""

from __future__ import annotations

import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import typer

from charlm.cli import app
from tests.test_help import check_help_page

ROOT = Path(__file__).resolve().parents[1]
BOUNDED = ("typer", "rich")


def requirements() -> dict[str, str]:
    """{'typer': '>=0.26.8,<0.30', ...} from pyproject.toml."""
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]["dependencies"]
    found = {}
    for dep in deps:
        m = re.fullmatch(r"([A-Za-z0-9_.-]+)\s*(.*)", dep.strip())
        found[m.group(1).lower()] = m.group(2).replace(" ", "")
    return found


def lowest(spec: str) -> str:
    """'>=0.26.8,<0.30' → '==0.26.8'."""
    m = re.search(r">=([0-9][0-9.]*)", spec)
    assert m, f"{spec!r} has no lower bound"
    return "==" + m.group(1)


def test_typer_and_rich_have_both_bounds():
    reqs = requirements()
    for name in BOUNDED:
        assert ">=" in reqs[name] and "<" in reqs[name].replace("<=", ""), f"{name}{reqs[name]}: give both bounds"
    assert "click" not in reqs  # Typer >= 0.26 carries its own Click


def release(version: str) -> tuple[int, ...]:
    """'13.8.0' and '13.8' → (13, 8)."""
    parts = [int(x) for x in version.split(".")]
    while parts and parts[-1] == 0:
        parts.pop()
    return tuple(parts)


def subcommands() -> list[str]:
    return list(typer.main.get_command(app).commands)


@pytest.mark.slow
@pytest.mark.parametrize("end", ["lowest", "newest"])
def test_help_pages_at_both_ends_of_the_ranges(end, tmp_path):
    reqs = requirements()
    pins = [name + (lowest(reqs[name]) if end == "lowest" else reqs[name]) for name in BOUNDED]
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    pip = subprocess.run(
        [str(venv / "bin" / "python"), "-m", "pip", "install", "-q", str(ROOT), *pins],
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert pip.returncode == 0, pip.stderr
    versions = subprocess.run(
        [
            str(venv / "bin" / "python"),
            "-c",
            "import typer, rich.console; from importlib.metadata import version as v; print(v('typer'), v('rich'))",
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    if end == "lowest":
        assert [release(v) for v in versions] == [release(lowest(reqs[name])[2:]) for name in BOUNDED]
    charlm = venv / "bin" / "charlm"
    for command in ["", *subcommands()]:
        check_help_page(charlm, command, tmp_path)
    r = subprocess.run([str(charlm), "--version"], capture_output=True, text=True, cwd=tmp_path)
    assert r.returncode == 0 and re.fullmatch(r"charlm \d+\.\d+\.\d+\S*\n", r.stdout), (versions, r)
