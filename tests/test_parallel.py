"""Row-block data parallelism computes exactly the serial gradient, in worker
processes that leave nothing behind."""

from __future__ import annotations

import os
import signal

import numpy as np
import pytest

from charlm.errors import CharlmError
from charlm.model import CharModel, ModelConfig
from charlm.parallel import DataParallel, row_blocks


@pytest.mark.parametrize("B,workers", [(7, 2), (8, 3), (5, 5), (4, 1)])
def test_row_blocks_cover_every_row_once(B, workers):
    blocks = row_blocks(B, workers)
    rows = [r for b in blocks for r in range(b.start, b.stop)]
    assert rows == list(range(B))
    assert len(blocks) == min(workers, B)


@pytest.mark.parametrize("dropout", [0.0, 0.3])
@pytest.mark.parametrize("workers", [2, 3])
def test_parallel_gradient_equals_serial(dropout, workers):
    cfg = ModelConfig(vocab_size=9, embed=4, hidden=6, layers=2, dropout=dropout)
    serial = CharModel(cfg, dtype=np.float64, seed=5)
    model = CharModel(cfg, dtype=np.float64, seed=5)
    rng = np.random.default_rng(0)
    T, B = 5, 7
    ids, targets = rng.integers(0, 9, (T, B)), rng.integers(0, 9, (T, B))
    state = [tuple(rng.standard_normal((B, 6)) for _ in c.state_names) for c in serial.rnn]
    loss_s, state_s = serial.loss_and_grads(ids, targets, state, rng=np.random.default_rng(1))
    dp = DataParallel(model, workers)
    try:
        loss_p, state_p = dp.loss_and_grads(ids, targets, state, rng=np.random.default_rng(1))
    finally:
        dp.close()
    assert loss_p == pytest.approx(loss_s, rel=1e-12)
    assert np.allclose(model.grad_flat, serial.grad_flat, rtol=1e-10, atol=1e-13)
    for a, b in zip(state_p, state_s, strict=True):
        for x, y in zip(a, b, strict=True):
            assert np.allclose(x, y, rtol=1e-12)


def test_parallel_adam_step_equals_serial():
    from charlm.optim import Adam

    rng = np.random.default_rng(3)
    n = 1001
    p1 = rng.standard_normal(n).astype(np.float32)
    p2 = p1.copy()
    a1, a2 = Adam(n), Adam(n)
    dp = DataParallel(CharModel(ModelConfig(vocab_size=3, embed=2, hidden=2, layers=1)), 2)
    try:
        for _ in range(5):
            g = rng.standard_normal(n).astype(np.float32)
            a1.step(p1, g, 1e-2)
            a2.step(p2, g, 1e-2, run=dp.run_all)
    finally:
        dp.close()
    assert np.array_equal(p1, p2) and np.array_equal(a1.m, a2.m) and np.array_equal(a1.v, a2.v)


def _setup(dropout=0.0, dtype=np.float64, seed=5):
    cfg = ModelConfig(vocab_size=9, embed=4, hidden=6, layers=2, dropout=dropout)
    return CharModel(cfg, dtype=dtype, seed=seed), CharModel(cfg, dtype=dtype, seed=seed)


def test_workers_see_every_update_and_shape_change():
    """Several steps with the parameters changed in between, and a chunk of another
    shape: the workers follow the main model's parameters every time."""
    serial, model = _setup()
    rng = np.random.default_rng(2)
    with DataParallel(model, 2) as dp:
        for T, B in [(5, 8), (5, 8), (3, 8), (5, 6)]:
            ids, targets = rng.integers(0, 9, (T, B)), rng.integers(0, 9, (T, B))
            state = serial.zero_state(B)
            loss_s, _ = serial.loss_and_grads(ids, targets, state)
            loss_p, _ = dp.loss_and_grads(ids, targets, state)
            assert loss_p == pytest.approx(loss_s, rel=1e-12)
            assert np.allclose(model.grad_flat, serial.grad_flat, rtol=1e-10, atol=1e-13)
            step = 0.05 * rng.standard_normal(serial.flat.shape)
            serial.flat += step
            model.flat += step


def _children(pid: int) -> set[int]:
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            return {int(p) for p in f.read().split()}
    except FileNotFoundError:
        pytest.skip("needs /proc")


def test_close_stops_the_workers_and_removes_the_shared_files():
    _, model = _setup()
    before = _children(os.getpid())
    dp = DataParallel(model, 3)
    ids = np.zeros((4, 9), np.int64)
    dp.loss_and_grads(ids, ids, model.zero_state(9))
    workers = _children(os.getpid()) - before
    assert len(workers) == 2
    assert dp._unlink == []  # every shared file unlinked once mapped: nothing to leak even on kill -9
    dp.close()
    assert _children(os.getpid()) - before == set()
    dp.loss_and_grads(ids, ids, model.zero_state(9))  # a closed stepper starts again
    dp.close()


def test_floating_point_errors_cross_the_process_boundary():
    """The caller's np.errstate holds in the workers: 'raise' raises there and here,
    and the workers stay usable."""
    _, model = _setup()
    ids = np.zeros((4, 8), np.int64)
    with DataParallel(model, 2) as dp:
        model.params["decoder.bias"][0] = np.inf
        with np.errstate(invalid="raise"), pytest.raises(FloatingPointError):
            dp.loss_and_grads(ids, ids, model.zero_state(8))
        with np.errstate(invalid="ignore"):
            loss, _ = dp.loss_and_grads(ids, ids, model.zero_state(8))
        assert not np.isfinite(loss)
        model.params["decoder.bias"][0] = 0.0
        loss, _ = dp.loss_and_grads(ids, ids, model.zero_state(8))
        assert np.isfinite(loss)


def test_a_killed_worker_is_one_clear_error():
    _, model = _setup()
    ids = np.zeros((4, 8), np.int64)
    dp = DataParallel(model, 2)
    dp.loss_and_grads(ids, ids, model.zero_state(8))
    os.kill(dp._procs[0].proc.pid, signal.SIGKILL)
    with pytest.raises(CharlmError, match=r"worker process 1 ended unexpectedly \(killed by signal 9\).*--threads 1"):
        dp.loss_and_grads(ids, ids, model.zero_state(8))
    assert dp._procs == [] and dp._params is None  # cleaned up at once
    loss, _ = dp.loss_and_grads(ids, ids, model.zero_state(8))  # and usable again
    assert np.isfinite(loss)
    dp.close()


def test_peak_rss_counts_the_workers():
    _, model = _setup(dtype=np.float32)
    ids = np.zeros((4, 8), np.int64)
    with DataParallel(model, 2) as dp:
        alone = dp.peak_rss_mb()
        dp.loss_and_grads(ids, ids, model.zero_state(8))
        assert dp._procs[0].peak_rss_kb > 10_000  # a Python with NumPy
        assert dp.workers_peak_rss_mb() == dp._procs[0].peak_rss_kb / 1024
        assert dp.peak_rss_mb() >= alone + dp.workers_peak_rss_mb() - 1


def test_no_room_in_dev_shm_falls_back_then_fails_in_one_line(monkeypatch, tmp_path):
    """posix_fallocate reserves the space up front: a full /dev/shm means the temporary
    folder instead, and no room anywhere is one clear error, not a SIGBUS later."""
    import errno

    import charlm.parallel as parallel

    if not hasattr(os, "posix_fallocate"):
        pytest.skip("needs posix_fallocate")
    real = os.posix_fallocate
    full = {"/dev/shm"}

    def fallocate(fd, offset, length):
        if any(os.readlink(f"/proc/self/fd/{fd}").startswith(f + "/") for f in full):
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(fd, offset, length)

    shm_before = set(os.listdir("/dev/shm")) if os.path.isdir("/dev/shm") else set()
    monkeypatch.setattr(os, "posix_fallocate", fallocate)
    monkeypatch.setattr(parallel, "shared_folders", lambda: ["/dev/shm", str(tmp_path)])
    serial, model = _setup()
    ids = np.zeros((4, 8), np.int64)
    serial.loss_and_grads(ids, ids, serial.zero_state(8))
    with DataParallel(model, 2) as dp:
        dp.loss_and_grads(ids, ids, model.zero_state(8))
        assert np.allclose(model.grad_flat, serial.grad_flat, rtol=1e-10, atol=1e-13)
    assert os.listdir(tmp_path) == []  # the fallback files are unlinked as well
    full.add(str(tmp_path))
    with DataParallel(model, 2) as dp, pytest.raises(CharlmError, match=r"cannot reserve .*--threads 1"):
        dp.loss_and_grads(ids, ids, model.zero_state(8))
    if os.path.isdir("/dev/shm"):
        assert set(os.listdir("/dev/shm")) - shm_before == set()
