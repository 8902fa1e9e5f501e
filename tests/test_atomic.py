"""Atomic writes and the temporary files a killed writer leaves behind."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from charlm.atomic import atomic_write, remove_stale_temps


def test_remove_stale_temps_spares_live_writers(tmp_path):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead_pid = int(dead.stdout)
    names = [
        f".last.safetensors.{dead_pid}.tmp",  # its writer is gone: stale
        f".best.safetensors.{os.getpid()}.tmp",  # this process is alive
        f".last.safetensors.{os.getppid()}.tmp",  # so is the parent
        "notes.tmp",  # not a name atomic_write uses
        "last.safetensors.1.tmp",
    ]
    for name in names:
        (tmp_path / name).write_bytes(b"x")
    removed = remove_stale_temps(tmp_path)
    assert removed == [tmp_path / names[0]]
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(names[1:])


def test_atomic_write_replaces_whole_or_not_at_all(tmp_path, monkeypatch):
    target = tmp_path / "f.bin"
    atomic_write(target, b"old")

    def full(src, dst):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", full)
    with pytest.raises(OSError):
        atomic_write(target, b"new")
    assert target.read_bytes() == b"old" and list(tmp_path.iterdir()) == [target]  # no temporary file left
