"""Start-up: what a command imports, and the option values charlm converts itself
(without Typer's Pydantic adapters, whose import costs more than the rest)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from typer._click.exceptions import BadParameter
from typer.testing import CliRunner

from charlm.cli import app
from charlm.cli.coerce import PlainValue, plain_converter

runner = CliRunner()


def modules_after(args: list[str], tmp_path) -> set[str]:
    """The modules a fresh interpreter holds after running ``charlm ARGS`` (stdout discarded)."""
    code = (
        "import io, json, sys\n"
        "from charlm.cli import run\n"
        "out, sys.stdout = sys.stdout, io.StringIO()\n"
        f"status = run({args!r})\n"
        "sys.stdout = out\n"
        "print(json.dumps([status, sorted(sys.modules)]))\n"
    )
    r = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    status, modules = json.loads(r.stdout.strip().splitlines()[-1])
    assert status == 0, r.stderr
    return set(modules)


def test_help_imports_neither_numpy_nor_rich_nor_pydantic(tmp_path):
    loaded = modules_after(["--help"], tmp_path)
    assert not {m.split(".")[0] for m in loaded} & {"numpy", "rich", "pydantic", "safetensors"}


def test_sample_imports_no_pydantic_and_no_worker_pool(tmp_path):
    loaded = modules_after(["sample", "-m", "shakespeare", "--length", "5", "--seed", "1"], tmp_path)
    assert "numpy" in loaded and "charlm.sample" in loaded  # it did sample
    assert not {m for m in loaded if m.split(".")[0] == "pydantic" or m in ("charlm.parallel", "charlm.train")}


class Param:
    """What plain_converter reads of a Typer parameter."""

    def __init__(self, annotation, multiple=False, nargs=1, low=None, high=None, **settings) -> None:
        info = type("Info", (), {"parser": None, **settings})()
        descriptor = {"annotation": annotation, "parameter_info": info, "file_annotation": None}
        self.type_descriptor = type("Descriptor", (), descriptor)()
        self.multiple, self.nargs, self.min, self.max = multiple, nargs, low, high


def test_plain_values_are_converted_and_their_ranges_checked():
    assert PlainValue(int, 1, None, False).coerce(" 12", None, None) == 12
    assert PlainValue(float, None, None, False).coerce("2e-3", None, None) == 0.002
    assert PlainValue(Path, None, None, False).coerce("runs", None, None) == Path("runs")
    assert PlainValue(str, None, None, True).coerce(("a", "b"), None, None) == ["a", "b"]
    assert PlainValue(bool, None, None, False).coerce("yes", None, None) is True
    assert PlainValue(int, None, None, False).coerce(None, None, None) is None
    assert PlainValue(int, 0, None, False).coerce(200, None, None) == 200  # a default as it is
    with pytest.raises(BadParameter, match=r"'abc' is not a valid integer\."):
        PlainValue(int, None, None, False).coerce("abc", None, None)
    with pytest.raises(BadParameter, match=r"0 is not in the range 1<=x<=8192\."):
        PlainValue(int, 1, 8192, False).coerce("0", None, None)
    with pytest.raises(BadParameter, match=r"-1.5 is not in the range x>=0\."):
        PlainValue(float, 0, None, False).coerce("-1.5", None, None)


def test_only_plain_parameters_get_charlms_converter():
    assert isinstance(plain_converter(Param(int, low=1)), PlainValue)
    assert isinstance(plain_converter(Param(list[str], nargs=-1)), PlainValue)
    assert plain_converter(Param(int, parser=int)) is None  # a parser of its own: Typer's
    assert plain_converter(Param(Path, exists=True)) is None  # a path to check: Typer's
    assert plain_converter(Param(complex)) is None
    assert plain_converter(object()) is None  # a Typer without per-parameter converters


def test_a_bad_option_value_names_the_option_and_the_problem():
    r = runner.invoke(app, ["sample", "--length", "many"])
    assert r.exit_code == 2
    assert "'--length'" in r.output and "'many' is not a valid integer" in r.output
    r = runner.invoke(app, ["train", "x.txt", "--hidden", "0"])
    assert r.exit_code == 2 and "0 is not in the range 1<=x<=8192" in r.output
