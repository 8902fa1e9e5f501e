"""``charlm export`` writes only regular files: devices, FIFOs, sockets, folders and
symbolic links are refused with one line, with or without --force, and left as they were."""

from __future__ import annotations

import os
import socket
import stat
import subprocess

import pytest

from charlm.checkpoint import check_export_destination, load
from charlm.errors import CheckpointError
from tests.test_checkpoint import make
from tests.test_cli import console_script


def export(src, dst, *flags, cwd):
    return subprocess.run(
        [console_script(), "export", str(src), str(dst), *flags], cwd=cwd, capture_output=True, text=True, timeout=120
    )


def refused(r, what):
    assert r.returncode != 0
    assert "Traceback" not in r.stderr and r.stdout == ""
    assert r.stderr.count("\n") == 1 and what in r.stderr and "only regular files" in r.stderr, r.stderr


FORCE = pytest.mark.parametrize("force", [True, pytest.param(False, marks=pytest.mark.slow)])


@FORCE
def test_a_fifo_and_a_folder_are_refused_and_untouched(tmp_path, force):
    src, _, _ = make(tmp_path)
    flags = ["--force"] if force else []
    fifo = tmp_path / "pipe.safetensors"
    os.mkfifo(fifo)
    refused(export(src, fifo, *flags, cwd=tmp_path), "a pipe (FIFO)")
    assert stat.S_ISFIFO(os.lstat(fifo).st_mode)

    folder = tmp_path / "folder.safetensors"
    folder.mkdir()
    refused(export(src, folder, *flags, cwd=tmp_path), "a folder")
    assert folder.is_dir() and not any(folder.iterdir())
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no temp left


@FORCE
def test_symlinks_and_dev_null_are_refused_and_untouched(tmp_path, force):
    src, _, _ = make(tmp_path)
    flags = ["--force"] if force else []
    target = tmp_path / "target.safetensors"
    target.write_bytes(b"keep me")
    link = tmp_path / "link.safetensors"
    link.symlink_to(target)
    refused(export(src, link, *flags, cwd=tmp_path), "a symbolic link")
    assert link.is_symlink() and target.read_bytes() == b"keep me"
    dangling = tmp_path / "dangling.safetensors"
    dangling.symlink_to(tmp_path / "nowhere")
    refused(export(src, dangling, *flags, cwd=tmp_path), "a symbolic link")
    assert not (tmp_path / "nowhere").exists()

    refused(export(src, "/dev/null", *flags, cwd=tmp_path), "a device")
    assert stat.S_ISCHR(os.stat("/dev/null").st_mode)
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no temp left


def test_a_regular_file_is_replaced_with_force_only(tmp_path):
    src, _, _ = make(tmp_path)
    dst = tmp_path / "out.safetensors"
    dst.write_bytes(b"old")
    r = export(src, dst, cwd=tmp_path)
    assert r.returncode != 0 and "--force" in r.stderr and dst.read_bytes() == b"old"
    r = export(src, dst, "--force", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert load(dst).vocab == load(src).vocab


def test_a_socket_is_refused(tmp_path):
    sock = socket.socket(socket.AF_UNIX)
    try:
        sock.bind(str(tmp_path / "s"))
        with pytest.raises(CheckpointError, match="a socket"):
            check_export_destination(tmp_path / "s")
    finally:
        sock.close()
    check_export_destination(tmp_path / "new.safetensors")  # a new name is fine
