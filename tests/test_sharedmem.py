"""Shared files for the worker processes: reserved up front, with a fallback folder,
unlinked once mapped; and the exchange file's layout."""

from __future__ import annotations

import errno
import os
from itertools import pairwise

import numpy as np
import pytest

import charlm.sharedmem as sharedmem
from charlm.errors import CharlmError
from charlm.model import CharModel, ModelConfig
from charlm.parallel import DataParallel
from charlm.sharedmem import exchange_layout, exchange_views, map_file, remove, shared_file
from tests.shm import charlm_files_left, shm_names


def _setup():
    cfg = ModelConfig(vocab_size=9, embed=4, hidden=6, layers=2)
    return CharModel(cfg, dtype=np.float64, seed=5), CharModel(cfg, dtype=np.float64, seed=5)


@pytest.mark.parametrize("masks", [False, True])
def test_exchange_arrays_are_aligned_apart_and_seen_by_a_second_mapping(masks):
    model = CharModel(ModelConfig(vocab_size=9, cell="lstm", embed=4, hidden=6, layers=2), dtype=np.float32)
    T, B = 3, 5
    layout, nbytes = exchange_layout(model, T, B, masks)
    assert set(layout) == {"ids", "targets", "state_in", "state_out"} | ({"masks"} if masks else set())
    assert layout["state_in"][1] == (2, 2, B, 6)  # (layers, a and c, B, H)
    spans = sorted((off, off + np.prod(shape) * dt.itemsize) for off, shape, dt in layout.values())
    assert all(off % 64 == 0 for off, _ in spans)
    assert all(end <= nxt for (_, end), (nxt, _) in pairwise(spans))
    assert spans[-1][1] <= nbytes
    path, buf = shared_file(nbytes)
    try:
        mine, theirs = exchange_views(buf, layout), exchange_views(map_file(path), layout)
    finally:
        remove(path)
    mine["targets"][...] = np.arange(T * B).reshape(T, B)
    mine["state_out"][1, 1] = 0.5
    assert np.array_equal(theirs["targets"], mine["targets"]) and (theirs["state_out"][1, 1] == 0.5).all()
    assert not theirs["ids"].any()


def test_no_room_in_dev_shm_falls_back_then_fails_in_one_line(monkeypatch, tmp_path):
    """posix_fallocate reserves the space up front: a full /dev/shm means the temporary
    folder instead, and no room anywhere is one clear error, not a SIGBUS later."""
    if not hasattr(os, "posix_fallocate"):
        pytest.skip("needs posix_fallocate")
    real = os.posix_fallocate
    full = {"/dev/shm"}

    def fallocate(fd, offset, length):
        if any(os.readlink(f"/proc/self/fd/{fd}").startswith(f + "/") for f in full):
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(fd, offset, length)

    shm_before = shm_names()
    monkeypatch.setattr(os, "posix_fallocate", fallocate)
    monkeypatch.setattr(sharedmem, "shared_folders", lambda: ["/dev/shm", str(tmp_path)])
    serial, model = _setup()
    ids = np.zeros((4, 8), np.int64)
    serial.loss_and_grads(ids, ids, serial.zero_state(8))
    with DataParallel(model, 2) as dp:
        dp.loss_and_grads(ids, ids, model.zero_state(8))
        assert np.allclose(model.grad_flat, serial.grad_flat, rtol=1e-10, atol=1e-13)
    assert os.listdir(tmp_path) == []  # the fallback files are unlinked as well
    full.add(str(tmp_path))
    with DataParallel(model, 2) as dp, pytest.raises(CharlmError, match=r"cannot reserve .*one row block"):
        dp.loss_and_grads(ids, ids, model.zero_state(8))
    assert charlm_files_left(shm_before) == set()
