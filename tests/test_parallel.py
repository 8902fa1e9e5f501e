"""Row-block data parallelism computes exactly the serial gradient, in worker
processes that leave nothing behind."""

from __future__ import annotations

import os
import re
import signal
import threading
import time

import numpy as np
import pytest

from charlm import blas
from charlm.errors import WorkerError
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
    pid = dp._procs[0].proc.pid
    os.kill(pid, signal.SIGKILL)
    with pytest.raises(
        WorkerError, match=rf"process 1 \(pid {pid}\) ended unexpectedly \(killed by signal 9\).*one row block"
    ):
        dp.loss_and_grads(ids, ids, model.zero_state(8))
    assert dp._procs == [] and dp._params is None  # cleaned up at once
    loss, _ = dp.loss_and_grads(ids, ids, model.zero_state(8))  # and usable again
    assert np.isfinite(loss)
    dp.close()


@pytest.fixture
def hang_guard():
    """Fail, rather than hang, a test whose step never returns (SIGALRM after 30 s)."""

    def hung(signum, frame):
        raise AssertionError("the step hung: no answer and no timeout")

    previous = signal.signal(signal.SIGALRM, hung)
    signal.alarm(30)
    yield
    signal.alarm(0)
    signal.signal(signal.SIGALRM, previous)


def _stopped_worker_step(dp, model, rng, stop=None):
    """A step of ``dp`` whose worker has been stopped with SIGSTOP (and ``stop`` set):
    (the error, seconds it took)."""
    ids = np.zeros((4, 8), np.int64)
    dp.loss_and_grads(ids, ids, model.zero_state(8), rng=rng)  # the worker is up and has answered
    pid = dp._procs[0].proc.pid
    os.kill(pid, signal.SIGSTOP)
    if stop is not None:
        stop.set()
    before = rng.bit_generator.state
    t0 = time.monotonic()
    with pytest.raises(WorkerError) as e:
        dp.loss_and_grads(ids, ids, model.zero_state(8), rng=rng)
    took = time.monotonic() - t0
    assert f"training worker process 1 (pid {pid}) did not answer within" in str(e.value)
    assert "it is stopped (SIGSTOP or SIGTSTP)" in str(e.value)
    assert rng.bit_generator.state == before  # the lost step's dropout draws are drawn again next time
    assert dp._procs == [] and not os.path.exists(f"/proc/{pid}/stat")  # ended (SIGTERM + SIGCONT) and reaped
    if stop is not None:
        stop.clear()
    loss, _ = dp.loss_and_grads(ids, ids, model.zero_state(8), rng=rng)  # a new worker takes over
    assert np.isfinite(loss)
    return e.value, took


@pytest.mark.skipif(not os.path.exists("/proc/self/stat"), reason="needs /proc")
def test_a_stopped_worker_is_reported_and_ended_after_the_timeout(hang_guard):
    _, model = _setup(dropout=0.3)
    with DataParallel(model, 2) as dp:
        dp.min_wait = 0.3  # what $CHARLM_WORKER_TIMEOUT sets; the blocks here take milliseconds
        error, took = _stopped_worker_step(dp, model, np.random.default_rng(3))
    waited = float(re.search(r"did not answer within ([\d.]+) s;", str(error)).group(1))
    assert 0.3 <= waited <= took < 5  # 0.3 s, or 20 blocks if a loaded machine made a block slower


@pytest.mark.slow
@pytest.mark.skipif(not os.path.exists("/proc/self/stat"), reason="needs /proc")
def test_a_stop_request_cuts_the_wait_for_a_stopped_worker_short(monkeypatch, hang_guard):
    import charlm.parallel as parallel

    monkeypatch.setattr(parallel, "GRACE_S", 0.2)
    _, model = _setup(dropout=0.3)
    stop = threading.Event()
    with DataParallel(model, 2, stop_requested=stop.is_set) as dp:
        assert dp.min_wait == 30.0  # the default: only the stop request ends this wait early
        error, took = _stopped_worker_step(dp, model, np.random.default_rng(3), stop)
    assert re.search(r"did not answer within [\d.]+ s of the request to stop;", str(error))
    assert took < 5


@pytest.mark.parametrize(
    "value,seconds",
    [(None, 30.0), ("", 30.0), ("5", 5.0), (" 0.5 ", 0.5), ("abc", None), ("0", None), ("-1", None), ("inf", None)],
)
def test_the_least_wait_for_an_answer_comes_from_the_environment(monkeypatch, value, seconds):
    from charlm.errors import UsageError
    from charlm.workerproc import min_wait

    if value is None:
        monkeypatch.delenv("CHARLM_WORKER_TIMEOUT", raising=False)
    else:
        monkeypatch.setenv("CHARLM_WORKER_TIMEOUT", value)
    if seconds is None:
        with pytest.raises(UsageError, match=r"^CHARLM_WORKER_TIMEOUT=.*a number greater than 0"):
            min_wait()
    else:
        assert min_wait() == seconds


def test_peak_rss_counts_the_workers():
    _, model = _setup(dtype=np.float32)
    ids = np.zeros((4, 8), np.int64)
    with DataParallel(model, 2) as dp:
        alone = dp.peak_rss_mb()
        dp.loss_and_grads(ids, ids, model.zero_state(8))
        assert dp._procs[0].peak_rss_kb > 10_000  # a Python with NumPy
        assert dp.workers_peak_rss_mb() == dp._procs[0].peak_rss_kb / 1024
        assert dp.peak_rss_mb() >= alone + dp.workers_peak_rss_mb() - 1


@pytest.fixture
def several_threads():
    """The BLAS may use more than one thread here, so a limit to one can be seen."""
    if not blas.controllable() or blas.threads() < 2:
        pytest.skip("needs a BLAS that uses more than one thread")
    return blas.threads()


def test_the_main_process_computes_its_block_on_one_blas_thread_only(several_threads, monkeypatch):
    """One thread while this process computes block 1 beside the workers; every thread again
    afterwards, for the work done alone (clipping, evaluation); none limited with one block."""
    _, model = _setup()
    seen = []
    own = model.loss_and_grads

    def spy(*args, **kw):
        seen.append(blas.threads())
        return own(*args, **kw)

    monkeypatch.setattr(model, "loss_and_grads", spy)
    ids = np.zeros((4, 8), np.int64)
    with DataParallel(model, 2) as dp:
        dp.loss_and_grads(ids, ids, model.zero_state(8))
        assert blas.threads() == several_threads
    with DataParallel(model, 1) as dp:
        dp.loss_and_grads(ids, ids, model.zero_state(8))
    assert seen == [1, several_threads]


@pytest.mark.parametrize("variables", [True, False], ids=["with-thread-variables", "limit-alone"])
def test_a_worker_process_runs_on_one_blas_thread(several_threads, variables, monkeypatch):
    """The worker limits its own BLAS, even without the *_NUM_THREADS variables it is started with."""
    import charlm.workerproc as workerproc

    if not variables:
        monkeypatch.setattr(workerproc, "ONE_THREAD_ENV", ())
        for name in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS", "BLIS_NUM_THREADS"):
            monkeypatch.delenv(name, raising=False)
    _, model = _setup()
    ids = np.zeros((4, 8), np.int64)
    with DataParallel(model, 2) as dp:
        dp.loss_and_grads(ids, ids, model.zero_state(8))
        assert dp._procs[0].blas_threads == 1
