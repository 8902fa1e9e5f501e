"""The memory check: charlm estimates what a model needs before allocating it, and
refuses one that does not fit with one line naming a smaller setting that would.

Unit tests of the estimator (against the arrays the code really allocates), of the
memory-available figure (from fake /proc and cgroup trees), of the refusal (with
the memory available monkeypatched, in-process), and through the console script
with a model too large for any machine.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import struct
import subprocess
import sys
import tempfile
import threading
import tracemalloc
from dataclasses import replace
from itertools import pairwise
from pathlib import Path

import numpy as np
import pytest

from charlm import memory, sysmem
from charlm.checkpoint import read_header
from charlm.cli import run
from charlm.config import ModelConfig, TrainConfig
from charlm.errors import NotEnoughMemory
from charlm.model import CharModel
from charlm.optim import Adam
from tests.conftest import SMALL_TEXT

MB = 2**20
TINY = ["--hidden", "8", "--embed", "4", "--layers", "1", "--batch-size", "4", "--seq-len", "16", "--steps", "1"]
CELLS = ["lstm", "gru", "rnn"]


def console_script() -> str:
    found = shutil.which("charlm", path=os.path.dirname(sys.executable)) or shutil.which("charlm")
    if found is None:
        pytest.fail("the charlm console script is not installed; install the package as the README says")
    return found


def call(capsys, args: list[str]) -> tuple[int, str, str]:
    capsys.readouterr()
    code = run(args)
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture
def corpus(tmp_path: Path) -> Path:
    path = tmp_path / "small.txt"
    path.write_text(SMALL_TEXT * 2, encoding="utf-8")  # long enough for one default batch of 32 × 64
    return path


# --------------------------------------------------------------------------- #
# The estimate against what the code allocates
# --------------------------------------------------------------------------- #


@pytest.mark.parametrize("cell", CELLS)
def test_parameters_gradients_and_adam_are_exactly_the_arrays_allocated(cell):
    config = ModelConfig(40, cell, embed=12, hidden=24, layers=3)
    model = CharModel(config)
    adam = Adam(model.num_params, model.dtype)
    est = memory.training(config, TrainConfig(threads=1), 40, 1000)
    assert est.parts["parameters"] == model.flat.nbytes
    assert est.parts["gradients"] == model.grad_flat.nbytes
    assert est.parts["optimizer"] == sum(a.nbytes for a in (adam.m, adam.v, adam._tmp, adam._tmp2))


def _workspace_bytes(model: CharModel, shape: tuple[int, int], skip=()) -> int:
    """Bytes of every layer's workspace arrays for ``shape``, each array once, less the named ones."""
    total = 0
    for layer in model.rnn:
        arrays = {id(a): a for name, a in layer._ws._sets[shape].items() if name not in skip}
        total += sum(a.nbytes for a in arrays.values())
    return total


@pytest.mark.parametrize("cell", CELLS)
def test_workspace_formula_matches_the_layers_workspaces(cell):
    """Training: every buffer of a (T, B) chunk's workspace after forward and backward.
    Scoring: those a forward pass writes (a GRU's backward-only buffers stay untouched)."""
    config = ModelConfig(30, cell, embed=6, hidden=20, layers=2)
    model = CharModel(config)
    T, B = 9, 5
    ids = np.random.default_rng(0).integers(0, 30, (T, B))
    model.loss_and_grads(ids, ids, model.zero_state(B))
    assert _workspace_bytes(model, (T, B)) == memory.model_workspace(config, T, B, backward=True)
    model.nll(ids[:4, :3], ids[:4, :3], model.zero_state(3))
    backward_only = {"grad_z", "one_minus_u"} if cell == "gru" else set()
    assert _workspace_bytes(model, (4, 3), backward_only) == memory.model_workspace(config, 4, 3, backward=False)


@pytest.mark.slow
def test_the_estimate_bounds_a_small_run_closely(tmp_path):
    """A short run with validations and checkpoints allocates (traced by tracemalloc:
    NumPy's arrays, every Python object) no more than the estimate without the
    interpreter's own memory, and not much less. The held-out text fills 64 rows of
    validation, as a real corpus's does."""
    from charlm.prepare import prepare_run

    corpus = tmp_path / "c.txt"
    corpus.write_text(SMALL_TEXT * 20, encoding="utf-8")
    model = ModelConfig(0, "lstm", embed=16, hidden=96, layers=2)
    config = TrainConfig(batch_size=16, seq_len=32, threads=1, steps=3, eval_every=1, val_frac=0.25, lr=1.0)
    tracemalloc.start()
    try:
        trainer = prepare_run(corpus, tmp_path / "runs" / "x", model, config)
        trainer.run()
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    est = memory.training(model, config, len(trainer.vocab), len(SMALL_TEXT) * 20)
    arrays = est.total - est.parts["runtime"]
    assert 0.6 * arrays <= peak <= arrays, f"traced {peak / MB:.1f} MB, estimated {arrays / MB:.1f} MB"


def test_the_estimate_grows_with_every_size():
    model, train = ModelConfig(65, "lstm", 64, 256, 2), TrainConfig(threads=1)
    base = memory.training(model, train, 65, 10_000).total
    for bigger_model, bigger_train in (
        (replace(model, hidden=512), train),
        (replace(model, layers=3), train),
        (replace(model, embed=128), train),
        (model, replace(train, batch_size=64)),
        (model, replace(train, seq_len=128)),
    ):
        assert memory.training(bigger_model, bigger_train, 65, 10_000).total > base
    assert memory.training(model, train, 200, 10_000).total > base  # a larger vocabulary
    assert memory.training(replace(model, dropout=0.2), train, 65, 10_000).total >= base


def test_every_worker_process_adds_its_copy():
    """Each row block beyond the first is a worker process: its runtime, its own
    workspace and its gradient in shared memory."""
    model = ModelConfig(65, "lstm", 64, 512, 2)
    P = 4 * CharModel.count_params(model)
    totals = [memory.training(model, TrainConfig(batch_size=64, threads=k), 65, 10_000) for k in (1, 2, 3, 4)]
    assert [e.workers for e in totals] == [0, 1, 2, 3]
    steps = [b.total - a.total for a, b in pairwise(totals)]
    assert all(s >= memory.WORKER_RUNTIME + P for s in steps)


def test_a_huge_model_is_counted_as_huge():
    """The issue's case: 16 layers of 8,192 units, 8.3 billion parameters, 31 GiB each copy."""
    est = memory.training(ModelConfig(65, "lstm", 64, 8192, 16), TrainConfig(threads=1), 65, 10_000)
    assert est.parts["parameters"] / 2**30 == pytest.approx(31.0, rel=0.01)
    assert est.total > 15 * est.parts["parameters"]


# --------------------------------------------------------------------------- #
# The memory available
# --------------------------------------------------------------------------- #


def _fake_system(root: Path, mem_available_kb: int, cgroup_line: str) -> tuple[Path, Path]:
    proc, cgroup = root / "proc", root / "cgroup"
    (proc / "self").mkdir(parents=True)
    (proc / "meminfo").write_text(f"MemTotal: 99999999 kB\nMemAvailable: {mem_available_kb} kB\n")
    (proc / "self" / "cgroup").write_text(cgroup_line + "\n")
    cgroup.mkdir()
    return proc, cgroup


def test_available_is_meminfo_without_a_cgroup_limit(tmp_path):
    proc, cgroup = _fake_system(tmp_path, 8 * 1024 * 1024, "0::/user.slice")
    (cgroup / "user.slice").mkdir()
    (cgroup / "user.slice" / "memory.max").write_text("max\n")
    (cgroup / "user.slice" / "memory.current").write_text("123\n")
    assert sysmem.available_bytes(proc, cgroup) == 8 * 2**30


def test_a_cgroup_v2_limit_wins_when_smaller(tmp_path):
    """limit − usage + page cache, the tightest of the cgroup and its ancestors."""
    proc, cgroup = _fake_system(tmp_path, 8 * 1024 * 1024, "0::/a/b")
    inner = cgroup / "a" / "b"
    inner.mkdir(parents=True)
    (inner / "memory.max").write_text(f"{3 * 2**30}\n")
    (inner / "memory.current").write_text(f"{2 * 2**30}\n")
    (inner / "memory.stat").write_text(f"anon 1\nactive_file {2**28}\ninactive_file {2**28}\nshmem 5\n")
    assert sysmem.available_bytes(proc, cgroup) == 2**30 + 2**29
    (cgroup / "a" / "memory.max").write_text(f"{2**30}\n")  # a tighter parent
    (cgroup / "a" / "memory.current").write_text(f"{2**29}\n")
    assert sysmem.available_bytes(proc, cgroup) == 2**29


def test_a_cgroup_v1_limit_is_read_and_unlimited_ignored(tmp_path):
    proc, cgroup = _fake_system(tmp_path, 8 * 1024 * 1024, "4:memory:/docker/abc\n3:cpu,cpuacct:/docker/abc")
    v1 = cgroup / "memory" / "docker" / "abc"
    v1.mkdir(parents=True)
    (v1 / "memory.limit_in_bytes").write_text(f"{2**30}\n")
    (v1 / "memory.usage_in_bytes").write_text(f"{2**29}\n")
    (v1 / "memory.stat").write_text(f"total_inactive_file {2**27}\ntotal_active_file 0\n")
    assert sysmem.available_bytes(proc, cgroup) == 2**29 + 2**27
    (v1 / "memory.limit_in_bytes").write_text("9223372036854771712\n")
    assert sysmem.available_bytes(proc, cgroup) == 8 * 2**30


def test_unknown_without_proc(tmp_path):
    """Another system: nothing to read, so the memory available is unknown and nothing is refused."""
    assert sysmem.available_bytes(tmp_path / "none", tmp_path / "none") is None
    assert memory.fits(memory.Estimate({"x": 10**18}), None)


# --------------------------------------------------------------------------- #
# The refusal, with the memory available made small (in-process)
# --------------------------------------------------------------------------- #


def _available(monkeypatch, n: int) -> None:
    monkeypatch.setattr(memory, "available_bytes", lambda *a, **k: n)


def test_the_refusal_names_smaller_settings_that_fit(monkeypatch):
    model, train = ModelConfig(65, "lstm", 64, 1024, 4), TrainConfig(batch_size=64, threads=1)
    available = 2**30
    _available(monkeypatch, available)
    with pytest.raises(NotEnoughMemory) as e:
        memory.check_training(model, train, 65, 10_000)
    smaller = e.value.details["smaller"]
    assert smaller["hidden"] < 1024 and smaller["layers"] < 4
    assert memory.fits(memory.training(replace(model, hidden=smaller["hidden"]), train, 65, 10_000), available)
    assert not memory.fits(memory.training(replace(model, hidden=2 * smaller["hidden"]), train, 65, 10_000), available)
    assert memory.fits(memory.training(replace(model, layers=smaller["layers"]), train, 65, 10_000), available)
    assert "batch_size" not in smaller  # the weights alone do not fit: no batch size helps
    assert "needs about" in str(e.value) and "1.0 GiB is available" in str(e.value)


def test_nothing_fits_says_so(monkeypatch):
    _available(monkeypatch, 10 * MB)
    with pytest.raises(NotEnoughMemory) as e:
        memory.check_training(ModelConfig(65, "lstm", 64, 256, 2), TrainConfig(threads=1), 65, 10_000)
    assert e.value.details["smaller"] == {}
    assert "free some memory" in str(e.value)


def test_train_refuses_in_one_line_and_leaves_no_run_folder(tmp_path, corpus, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    _available(monkeypatch, 600 * MB)
    code, out, err = call(capsys, ["train", str(corpus), "--hidden", "1024", "--layers", "4", "--threads", "1"])
    assert code == 1 and out == ""
    assert len(err.strip().splitlines()) == 1
    assert re.search(r"^error: training this model needs about .* is available; try --hidden \d+ or --layers \d+", err)
    assert not (tmp_path / "runs").exists()


def test_resume_with_more_worker_processes_is_checked(tmp_path, corpus, capsys, monkeypatch):
    """--threads on resume changes the worker copies: a count that does not fit is
    refused, naming one that does, and the run is left as it was."""
    monkeypatch.chdir(tmp_path)
    assert call(capsys, ["train", str(corpus), *TINY, "--threads", "1", "--name", "r"])[0] == 0
    before = {p.name: p.stat().st_mtime_ns for p in (tmp_path / "runs" / "r").iterdir()}
    model = ModelConfig(0, "lstm", embed=4, hidden=8, layers=1)
    vocab = len(set(SMALL_TEXT))
    one, four = (memory.training(model, TrainConfig(batch_size=4, seq_len=16, threads=k), vocab, 0) for k in (1, 4))
    _available(monkeypatch, int((one.total + four.total) / 2 / memory.USABLE))
    args = ["train", str(corpus), "--resume", "runs/r", "--steps", "2"]
    code, out, err = call(capsys, [*args, "--threads", "4"])
    assert code == 1 and len(err.strip().splitlines()) == 1
    assert "error: resuming this run needs about" in err and "try --threads" in err and "--hidden" not in err
    assert {p.name: p.stat().st_mtime_ns for p in (tmp_path / "runs" / "r").iterdir()} == before
    assert call(capsys, [*args, "--threads", "1"])[0] == 0


# --------------------------------------------------------------------------- #
# Through the console script: a model too large for any machine
# --------------------------------------------------------------------------- #


def test_console_train_of_a_huge_model_is_one_line_and_quick(tmp_path, corpus):
    """The issue's command: 16 layers of 8,192 units (inside the documented ranges)
    asked for 31 GiB and ended in a traceback; the estimate is some 600 GiB."""
    r, peak = run_with_peak([console_script(), "train", str(corpus), "--hidden", "8192", "--layers", "16"], tmp_path)
    assert r.returncode == 1 and r.stdout == ""
    assert len(r.stderr.strip().splitlines()) == 1 and "Traceback" not in r.stderr
    assert r.stderr.startswith("error: training this model needs about") and "try --hidden" in r.stderr
    assert not (tmp_path / "runs").exists()
    assert peak < REFUSAL_PEAK, f"peak RSS {peak / 2**20:.0f} MiB: the model was built before the refusal"


REFUSAL_PEAK = 300 * 2**20  # a refusal before any model is built: interpreter and libraries only


def run_with_peak(cmd: list[str], cwd: Path) -> tuple[subprocess.CompletedProcess, int]:
    """Run ``cmd`` to its end (killed after 60 s); its result and its own peak RSS in bytes."""
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        proc = subprocess.Popen(cmd, cwd=cwd, stdout=out, stderr=err, text=True)
        timer = threading.Timer(60, proc.kill)  # a refusal is quick; a model being built is not
        timer.start()
        try:
            _, status, usage = os.wait4(proc.pid, 0)  # the rusage of this child alone
        finally:
            timer.cancel()
        out.seek(0), err.seek(0)
        code = os.waitstatus_to_exitcode(status)
        return subprocess.CompletedProcess(cmd, code, out.read(), err.read()), usage.ru_maxrss * 1024


def sparse_checkpoint(path: Path, source: Path, hidden: int, layers: int, extras: bool) -> Path:
    """A checkpoint whose header is ``source``'s with a model of ``layers`` × ``hidden``,
    every tensor's bytes in place but never written: a sparse file of hundreds of GB."""
    raw = source.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    meta = json.loads(raw[8 : 8 + n])["__metadata__"]
    config = {**json.loads(meta["config"]), "hidden": hidden, "layers": layers}
    meta["config"] = json.dumps(config)
    shapes = dict(CharModel.param_shapes(ModelConfig.from_dict(config)))
    P = sum(int(np.prod(s)) for s in shapes.values())
    if extras:
        shapes |= {"optimizer.exp_avg": (P,), "optimizer.exp_avg_sq": (P,)}
        shapes |= {f"state.{s}_l{k}": (4, hidden) for k in range(layers) for s in ("a", "c")}
    header, offset = {"__metadata__": meta}, 0
    for name, shape in shapes.items():
        size = 4 * int(np.prod(shape))
        header[name] = {"dtype": "F32", "shape": list(shape), "data_offsets": [offset, offset + size]}
        offset += size
    text = json.dumps(header).encode()
    text += b" " * (-len(text) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(text)) + text)
        f.truncate(8 + len(text) + offset)
    return path


@pytest.fixture
def trained(tmp_path, corpus) -> Path:
    r = subprocess.run(
        [console_script(), "train", str(corpus), *TINY, "--threads", "1", "--name", "t"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 0, r.stderr
    return tmp_path / "runs" / "t" / "last.safetensors"


def skip_if_it_fits() -> None:
    """The sparse 16 × 8,192 checkpoints below need about 100 GB to use; a machine with that
    much free cannot show the refusal."""
    free = sysmem.available_bytes()
    if free is not None and free > 100 * 2**30:
        pytest.skip(f"{free / 2**30:.0f} GiB available: a 16 × 8,192 model fits here")


def _refused(tmp_path: Path, args: list[str], expected: str) -> None:
    """One line naming the memory needed and available, exit code 1, before anything large is read."""
    r, peak = run_with_peak([console_script(), *args], tmp_path)
    assert r.returncode == 1 and r.stdout == "", args
    assert len(r.stderr.strip().splitlines()) == 1 and "Traceback" not in r.stderr, r.stderr
    assert expected in r.stderr and "free some memory" in r.stderr, r.stderr
    assert peak < REFUSAL_PEAK, f"peak RSS {peak / 2**20:.0f} MiB: the checkpoint was read before the refusal"


def test_a_checkpoint_too_large_to_read_is_refused_before_reading(tmp_path, tiny_checkpoint):
    """A (sparse) checkpoint of a 16 × 8,192 model (the largest the settings allow), 34 GB of
    weights: sample and export refuse it in one line, having read only its header. (The
    reader already refuses a header whose tensors do not fit the file.)"""
    skip_if_it_fits()
    huge = sparse_checkpoint(tmp_path / "huge.safetensors", tiny_checkpoint, 8192, 16, extras=False)
    assert read_header(huge)  # a well-formed header
    _refused(tmp_path, ["sample", "-c", str(huge), "--length", "10"], "huge.safetensors: this model needs about")
    _refused(tmp_path, ["export", str(huge), str(tmp_path / "out.safetensors")], "huge.safetensors: this model")
    assert not (tmp_path / "out.safetensors").exists()


@pytest.mark.slow
def test_scoring_or_resuming_a_checkpoint_too_large_is_refused(tmp_path, corpus, trained):
    """perplexity, score and --resume refuse a (sparse) checkpoint too large to read, the same way."""
    skip_if_it_fits()
    huge = sparse_checkpoint(tmp_path / "huge.safetensors", trained, 8192, 16, extras=False)
    resumable = sparse_checkpoint(tmp_path / "huge-run.safetensors", trained, 8192, 16, extras=True)
    _refused(tmp_path, ["perplexity", "-c", str(huge), str(corpus)], "huge.safetensors: this model needs about")
    _refused(tmp_path, ["score", "-c", str(huge), "hello"], "huge.safetensors: this model needs about")
    _refused(tmp_path, ["train", str(corpus), "--resume", str(resumable)], "resuming this run needs about")
