"""Through the console script: a damaged corpus cache is encoded again and training
learns what it learns from a good one; a killed encoding's temporary file is removed."""

from __future__ import annotations

import os
import subprocess

import pytest

from charlm.corpus import MEMMAP_MIN_CHARS
from tests.conftest import SMALL_TEXT
from tests.test_cli import console_script


def train(tmp_path, name):
    args = ["train", "big.txt", "--steps", "2", "--hidden", "16", "--layers", "1", "--name", name]
    env = {**os.environ, "CHARLM_CACHE": str(tmp_path / "cache")}
    return subprocess.run([console_script(), *args], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)


def final_line(r):
    return next(line for line in r.stderr.splitlines() if "best weights" in line).rsplit("  ", 1)[0]


@pytest.mark.slow
def test_a_damaged_cache_is_rebuilt_and_a_stale_temp_removed(tmp_path):
    (tmp_path / "big.txt").write_text(SMALL_TEXT * (MEMMAP_MIN_CHARS // len(SMALL_TEXT) + 1), encoding="utf-8")
    first = train(tmp_path, "a")
    assert first.returncode == 0, first.stderr
    (cache,) = (tmp_path / "cache").iterdir()
    good = cache.read_bytes()
    with open(cache, "r+b") as f:  # an id far beyond the vocabulary: an IndexError traceback before
        f.seek(1000)
        f.write(b"\xff\xff")
    stale = cache.with_name(f".{cache.name}.999999999.tmp")  # what a kill -9 during encoding leaves
    stale.write_bytes(b"\0" * 1000)
    second = train(tmp_path, "b")
    assert second.returncode == 0 and "Traceback" not in second.stderr, second.stderr
    assert "is damaged (an id of 65535 in a vocabulary of" in second.stderr
    assert f"removed {stale}, left by a killed run" in second.stderr
    assert cache.read_bytes() == good and not stale.exists()
    assert final_line(second) == final_line(first)  # same data, same seed: the same held-out loss

    with open(cache, "r+b") as f:  # an in-range id changed: caught by the checksum
        f.seek(1000)
        f.write(bytes([good[1002], good[1003]]) if good[1000:1002] != good[1002:1004] else b"\x00\x00")
    assert cache.read_bytes() != good
    third = train(tmp_path, "c")
    assert third.returncode == 0 and "its checksum does not match" in third.stderr, third.stderr
    assert cache.read_bytes() == good and final_line(third) == final_line(first)
