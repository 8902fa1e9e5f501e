"""Training under MPI: ``mpiexec -n 2 charlm train …`` from the installed console script.

Needs the ``mpi`` extra (mpi4py and the mpich wheel, whose mpiexec sits next to
the Python of this environment); without it the end-to-end tests are skipped.
The launcher is MPICH's Hydra: it forwards SIGINT/SIGTERM to every rank, and it
ends the whole job when one rank dies.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import types
import uuid
from pathlib import Path

import numpy as np
import pytest

from charlm import checkpoint
from charlm.errors import ConfigError
from charlm.mpistep import check_rows
from charlm.session import LAUNCH_VARIABLES, LocalSession, launched
from tests.test_cli import console_script

TINY = ["--hidden", "12", "--embed", "6", "--layers", "2", "--dropout", "0.2", "--batch-size", "8", "--seq-len", "16"]
STEPS = 400  # long enough to interrupt after the first checkpoint (step 50), short enough to finish (~2 s)


def mpiexec() -> str:
    pytest.importorskip("mpi4py", reason="the mpi extra is not installed")
    found = shutil.which("mpiexec", path=os.path.dirname(sys.executable))
    if found is None:
        pytest.skip("no mpiexec next to this Python (the mpich wheel of the mpi extra)")
    return found


def plain_env() -> dict[str, str]:
    """This environment without an MPI launcher's variables (pytest may itself run under one)."""
    return {k: v for k, v in os.environ.items() if k not in LAUNCH_VARIABLES and not k.startswith(("PMI", "OMPI"))}


def mpi_train(cwd: Path, *args: str, n: int = 2, env: dict | None = None, popen: bool = False):
    command = [mpiexec(), "-n", str(n), console_script(), "train", *args]
    if popen:
        return subprocess.Popen(
            command, cwd=cwd, env=env or plain_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
    return subprocess.run(command, cwd=cwd, env=env or plain_env(), capture_output=True, text=True, timeout=120)


def tagged(tag: str, word: str) -> list[tuple[dict[str, str], int]]:
    """(environment, pid) of the processes started with CHARLM_TEST_TAG=tag whose command line holds ``word``."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            env = dict(v.split("=", 1) for v in (entry / "environ").read_text().split("\0") if "=" in v)
            cmd = (entry / "cmdline").read_text()
        except OSError:  # gone meanwhile, or not ours
            continue
        if env.get("CHARLM_TEST_TAG") == tag and word in cmd:
            found.append((env, int(entry.name)))
    return found


def rank_pids(tag: str) -> dict[int, int]:
    """rank → pid of the charlm ranks started with CHARLM_TEST_TAG=tag."""
    return {int(env["PMI_RANK"]): pid for env, pid in tagged(tag, "train") if "PMI_RANK" in env}


def wait_for(condition, proc: subprocess.Popen, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if proc.poll() is not None:
            pytest.fail(f"mpiexec ended (exit {proc.returncode}) too early:\n{proc.communicate()[1]}")
        if time.monotonic() > deadline:
            proc.kill()
            pytest.fail("the MPI run did not start training in time")
        time.sleep(0.01)


def tagged_env() -> tuple[dict[str, str], str]:
    tag = uuid.uuid4().hex
    return {**plain_env(), "CHARLM_TEST_TAG": tag}, tag


# --------------------------------------------------------------------------- #
# without MPI
# --------------------------------------------------------------------------- #


def started_run(cwd: Path, corpus: Path, steps: int = 100_000) -> tuple[subprocess.Popen, str, Path]:
    """A two-rank run in runs/r of ``steps`` steps, started in the background with tagged
    ranks and past its first validation: (the mpiexec process, the tag, the run folder)."""
    env, tag = tagged_env()
    run = cwd / "runs" / "r"
    args = ["--steps", str(steps), "--eval-every", "50", "--name", "r", *TINY]
    proc = mpi_train(cwd, str(corpus), *args, env=env, popen=True)
    wait_for(lambda: (run / "metrics.jsonl").exists(), proc)
    return proc, tag, run


def test_an_mpi_launch_is_recognised_from_the_environment(monkeypatch):
    for name in LAUNCH_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    assert not launched()
    monkeypatch.setenv("PMI_SIZE", "2")
    assert launched()


def test_a_plain_run_never_imports_mpi4py(tmp_path, small_corpus):
    code = (
        "import sys; from charlm.cli import main; sys.argv = ['charlm', 'train', sys.argv[1], '--steps', '1', "
        "'--hidden', '8', '--embed', '4', '--layers', '1', '--batch-size', '4', '--seq-len', '8', '--threads', '1']\n"
        "try:\n    main()\nexcept SystemExit as e:\n    assert not e.code, e.code\n"
        "assert 'mpi4py' not in sys.modules, 'mpi4py was imported'"
    )
    r = subprocess.run(
        [sys.executable, "-c", code, str(small_corpus)],
        cwd=tmp_path,
        env=plain_env(),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 0, r.stderr


def test_a_launch_without_mpi4py_says_what_to_install(tmp_path):
    code = (
        "import sys; sys.modules['mpi4py'] = None\n"
        "from charlm.session import start_session\n"
        "try:\n    start_session()\nexcept Exception as e:\n    print(e)"
    )
    r = subprocess.run(
        [sys.executable, "-c", code], env={**plain_env(), "PMI_SIZE": "2"}, capture_output=True, text=True, timeout=60
    )
    assert "mpi4py is not installed: pip install 'charlm[mpi]'" in r.stdout, r.stderr


def test_local_session_decides_alone():
    s = LocalSession()
    assert s.agree(lambda: (None, False, 5), None) == (None, (None, False, 5))
    assert s.agree(lambda: pytest.fail("no plan after a stop"), 15) == (15, None)


class OneRankView:
    """A rank of an N-rank session seen alone: its collectives leave the arrays as they are,
    so ``RankScoring.score`` returns this rank's own share."""

    def __init__(self, rank: int, size: int) -> None:
        self.rank, self.size, self.local_size, self.root = rank, size, size, rank == 0
        self.MPI = types.SimpleNamespace(IN_PLACE=None, SUM=None)
        self.comm = types.SimpleNamespace(Allreduce=lambda *a, **k: None)


@pytest.mark.parametrize("ranks", [2, 3])
@pytest.mark.parametrize("chars", [None, 1000])
def test_the_ranks_shares_of_a_validation_add_up_to_one_process_score(ranks, chars):
    from charlm.config import ModelConfig
    from charlm.evaluate import score_ids, score_sample
    from charlm.model import CharModel
    from charlm.mpistep import RankScoring

    rng = np.random.default_rng(0)
    ids = rng.integers(0, 7, 40_000).astype(np.uint8)  # 64 rows of 624 targets, and a leftover tail
    model = CharModel(ModelConfig(7, embed=3, hidden=6, layers=2), dtype=np.float64, seed=2)
    whole = score_ids(model, ids) if chars is None else score_sample(model, ids, chars)
    shares = [RankScoring(model, OneRankView(r, ranks)).score(ids, chars) for r in range(ranks)]
    assert all(s.chars > 0 for s in shares)
    assert sum(s.chars for s in shares) == whole.chars
    assert sum(s.nats for s in shares) == pytest.approx(whole.nats, rel=1e-12)


def test_a_rank_left_without_rows_scores_nothing():
    from charlm.config import ModelConfig
    from charlm.evaluate import score_ids
    from charlm.model import CharModel
    from charlm.mpistep import RankScoring

    ids = np.arange(100, dtype=np.uint8) % 5  # 99 targets: one row
    model = CharModel(ModelConfig(5, embed=3, hidden=4, layers=1), dtype=np.float64, seed=2)
    shares = [RankScoring(model, OneRankView(r, 2)).score(ids) for r in range(2)]
    assert [s.chars for s in shares] == [99, 0]
    assert shares[0].nats == pytest.approx(score_ids(model, ids).nats, rel=1e-12)


def test_every_row_block_needs_a_row():
    check_rows(4, 4)
    with pytest.raises(ConfigError, match="3 is too small for 4 MPI ranks: each row block needs a row"):
        check_rows(3, 4)
    with pytest.raises(ConfigError, match=r"7 is too small for 4 MPI ranks × 2 row blocks each.*give 8 or more"):
        check_rows(7, 4, 2)


# --------------------------------------------------------------------------- #
# mpiexec -n 2, end to end
# --------------------------------------------------------------------------- #


def tensors(path: Path) -> dict[str, np.ndarray]:
    from safetensors.numpy import load_file

    return load_file(str(path))


@pytest.mark.slow
def test_two_ranks_train_as_two_row_blocks_and_only_rank_0_writes(tmp_path, small_corpus):
    (tmp_path / "mpi").mkdir()
    (tmp_path / "threads").mkdir()
    args = [str(small_corpus), "--steps", "8", "--eval-every", "4", "--name", "r", *TINY]
    m = mpi_train(tmp_path / "mpi", *args)
    assert m.returncode == 0, m.stderr
    t = subprocess.run(
        [console_script(), "train", *args, "--threads", "2"],
        cwd=tmp_path / "threads",
        env=plain_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert t.returncode == 0, t.stderr
    # rank 0 alone speaks: one summary, one progress display
    assert m.stdout.count("best validation loss") == 1 and m.stderr.count("training a ") == 1, m.stderr
    # and writes: the same files as the one-process run, nothing else anywhere
    files = {p.relative_to(tmp_path / "mpi") for p in (tmp_path / "mpi").rglob("*")}
    assert files == {p.relative_to(tmp_path / "threads") for p in (tmp_path / "threads").rglob("*")}

    # the same losses, weights, Adam moments and carried state: here bit for bit
    def records(root: Path) -> list[dict]:

        lines = (root / "runs" / "r" / "metrics.jsonl").read_text().splitlines()
        return [{k: v for k, v in json.loads(x).items() if k not in ("elapsed", "chars_per_s")} for x in lines]

    assert records(tmp_path / "mpi") == records(tmp_path / "threads")
    a, b = tensors(tmp_path / "mpi/runs/r/last.safetensors"), tensors(tmp_path / "threads/runs/r/last.safetensors")
    assert a.keys() == b.keys()
    for k in a:
        assert np.array_equal(a[k], b[k]), k


@pytest.fixture(scope="module")
def straight(tmp_path_factory) -> Path:
    """The run the interrupted ones make, never interrupted, in one process with two row blocks."""
    from tests.conftest import SMALL_TEXT

    root = tmp_path_factory.mktemp("straight")
    (root / "small.txt").write_text(SMALL_TEXT, encoding="utf-8")
    args = ["train", "small.txt", "--steps", str(STEPS), "--eval-every", "50", "--name", "r", "--threads", "2", *TINY]
    r = subprocess.run(
        [console_script(), *args], cwd=root, env=plain_env(), capture_output=True, text=True, timeout=120
    )
    assert r.returncode == 0, r.stderr
    return root / "runs" / "r" / "last.safetensors"


@pytest.mark.slow
@pytest.mark.parametrize(("sig", "code"), [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_a_signal_to_mpiexec_saves_every_rank_exits_and_resume_continues(tmp_path, small_corpus, straight, sig, code):
    proc, tag, run = started_run(tmp_path, small_corpus, STEPS)
    ranks = rank_pids(tag)
    assert sorted(ranks) == [0, 1]
    proc.send_signal(sig)  # Hydra forwards it to every rank
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == code, err  # every rank exits 128 + signal; Hydra passes that on
    assert not rank_pids(tag)
    m = re.search(r"interrupted at step (\d+); resume with: charlm train \S+ --resume runs/r", err)
    assert m and err.count("interrupted at step") == 1, err
    step = int(m.group(1))
    assert 50 <= step < STEPS and checkpoint.load(run / "last.safetensors").state.step == step

    resumed = mpi_train(tmp_path, str(small_corpus), "--resume", "runs/r")
    assert resumed.returncode == 0, resumed.stderr
    assert f"resuming runs/r/last.safetensors at step {step:,}" in resumed.stderr
    assert checkpoint.load(run / "last.safetensors").state.step == STEPS
    a, b = tensors(run / "last.safetensors"), tensors(straight)  # resumed as if never stopped
    assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)  # weights, Adam, state


@pytest.mark.slow
def test_a_rank_killed_with_9_ends_the_job_with_a_message(tmp_path, small_corpus):
    proc, tag, run = started_run(tmp_path, small_corpus)
    os.kill(rank_pids(tag)[1], signal.SIGKILL)
    out, err = proc.communicate(timeout=30)  # bounded (TimeoutExpired fails the test): Hydra ends the others at once
    assert proc.returncode != 0
    assert "BAD TERMINATION" in out + err and "Killed (signal 9)" in out + err, out + err
    assert not rank_pids(tag)
    assert checkpoint.load(run / "last.safetensors").state.step >= 50  # the last validation's checkpoint is whole


def error_lines(r) -> list[str]:
    return [x for x in r.stderr.splitlines() if x.strip()]


@pytest.mark.slow
def test_a_batch_too_small_for_the_ranks_is_one_clear_line(tmp_path, small_corpus):
    r = mpi_train(tmp_path, str(small_corpus), "--steps", "2", "--batch-size", "1", "--hidden", "8", "--layers", "1")
    assert r.returncode == 2
    assert error_lines(r) == [
        "error: --batch-size 1 is too small for 2 MPI ranks: each row block needs a row of its own; "
        "give 2 or more, or start fewer ranks."
    ]
    assert not (tmp_path / "runs").exists()


@pytest.mark.slow
def test_a_rank_that_cannot_read_the_corpus_stops_every_rank_with_one_line(tmp_path, small_corpus):
    # MPMD: rank 1 is given a corpus path that does not exist
    tiny = ["--steps", "2", "--hidden", "8", "--layers", "1", "--batch-size", "4", "--name", "r"]
    command = [mpiexec(), "-n", "1", console_script(), "train", str(small_corpus), *tiny]
    command += [":", "-n", "1", console_script(), "train", str(tmp_path / "missing.txt"), *tiny]
    r = subprocess.run(command, cwd=tmp_path, env=plain_env(), capture_output=True, text=True, timeout=120)
    assert r.returncode == 1
    lines = error_lines(r)
    assert len(lines) == 1 and lines[0].startswith("error: MPI rank 1: ") and "missing.txt" in lines[0], r.stderr
    assert not (tmp_path / "runs" / "r").exists()


@pytest.mark.slow
def test_an_error_on_rank_0_between_steps_stops_every_rank(tmp_path, small_corpus):
    proc, tag, run = started_run(tmp_path, small_corpus)
    (run / "last.safetensors").unlink()
    (run / "last.safetensors" / "x").mkdir(parents=True)  # rank 0's next checkpoint cannot be written
    out, err = proc.communicate(timeout=30)  # the other rank, waiting for the next step, is told to stop
    assert proc.returncode == 1, err
    lines = [x for x in err.splitlines() if x.startswith("error:")]
    assert len(lines) == 1 and "cannot write checkpoint runs/r/last.safetensors" in lines[0], err
    assert not rank_pids(tag)


@pytest.mark.slow
def test_a_budget_in_minutes_is_planned_on_rank_0_for_every_rank(tmp_path, small_corpus):
    r = mpi_train(tmp_path, str(small_corpus), "--minutes", "0.08", "--eval-every", "50", "--name", "r", *TINY)
    assert r.returncode == 0, r.stderr  # a rank on another schedule would wait in a collective until the timeout
    last = checkpoint.load(tmp_path / "runs" / "r" / "last.safetensors").state
    assert last.step > 0 and last.total_steps == last.step  # the planned end was reached, by both ranks alike


@pytest.mark.slow
def test_a_failure_in_one_ranks_block_stops_every_rank_after_saving_the_last_step(tmp_path, small_corpus):
    # MPMD: rank 1 splits its block over a local worker process (--threads 2), which is then killed
    env, tag = tagged_env()
    run = tmp_path / "runs" / "r"
    args = [str(small_corpus), "--steps", "100000", "--eval-every", "50", "--name", "r", *TINY]
    command = [mpiexec(), "-n", "1", console_script(), "train", *args]
    command += [":", "-n", "1", console_script(), "train", *args, "--threads", "2"]
    proc = subprocess.Popen(command, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    wait_for(lambda: (run / "metrics.jsonl").exists(), proc)
    workers = [pid for _, pid in tagged(tag, "charlm.worker")]
    assert len(workers) == 1
    os.kill(workers[0], signal.SIGKILL)
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 1, err
    lines = [x for x in err.splitlines() if x.startswith("error:")]
    assert len(lines) == 1 and lines[0].startswith("error: MPI rank 1 failed in its row block (WorkerError: "), err
    m = re.search(r"step (\d+) is saved in runs/r/last.safetensors; resume with: charlm train", lines[0])
    assert m and checkpoint.load(run / "last.safetensors").state.step == int(m.group(1)), lines[0]
    assert not rank_pids(tag)


@pytest.mark.slow
def test_an_unforeseen_error_on_one_rank_ends_the_whole_job(tmp_path, small_corpus):
    # a bug stand-in: rank 1 raises in its training step while rank 0 waits in that step's Allreduce
    code = (
        "import os, sys\n"
        "import charlm.train\n"
        "if os.environ['PMI_RANK'] == '1':\n"
        "    charlm.train.Trainer.train_step = lambda self, progress=None: 1 / 0\n"
        "from charlm.cli import main\n"
        "sys.argv = ['charlm', *sys.argv[1:]]\n"
        "main()\n"
    )
    args = ["train", str(small_corpus), "--steps", "5", "--name", "r", *TINY]
    command = [mpiexec(), "-n", "2", sys.executable, "-c", code, *args]
    r = subprocess.run(command, cwd=tmp_path, env=plain_env(), capture_output=True, text=True, timeout=60)
    assert r.returncode != 0
    # the job ended (no hang within the timeout) with the failing rank's traceback; MPICH's own "MPI_Abort"
    # line is not asserted: under load its launcher can lose it when the job ends
    assert "ZeroDivisionError" in r.stderr, r.stdout + r.stderr


@pytest.mark.slow
def test_ranks_that_read_different_text_stop_with_one_line(tmp_path, small_corpus):
    other = tmp_path / "other" / small_corpus.name  # the same name, another text
    other.parent.mkdir()
    other.write_text(small_corpus.read_text(encoding="utf-8").upper(), encoding="utf-8")
    tiny = ["--steps", "2", "--hidden", "8", "--layers", "1", "--batch-size", "4", "--name", "r"]
    command = [mpiexec(), "-n", "1", console_script(), "train", str(small_corpus), *tiny]
    command += [":", "-n", "1", console_script(), "train", str(other), *tiny]
    r = subprocess.run(command, cwd=tmp_path, env=plain_env(), capture_output=True, text=True, timeout=120)
    assert r.returncode == 1
    assert error_lines(r) == [
        "error: the MPI ranks did not read the same corpus or build the same model: give every rank the same "
        "file and options (a shared file system)."
    ]
    assert not (tmp_path / "runs" / "r").exists()


@pytest.mark.slow
def test_a_budget_in_minutes_under_mpi_is_spent_training_not_waiting_for_validation(tmp_path):
    """The held-out text is scored by every rank, its rows split, and timed so: the reserve for
    the final validation fits what it takes, and most of the budget goes to training (timed
    on rank 0 alone, beside a rank spinning in a collective, the run trained one step)."""
    args = ["shakespeare", "--minutes", "0.2", "--hidden", "128", "--layers", "1", "--name", "r"]
    r = mpi_train(tmp_path, *args)
    assert r.returncode == 0, r.stderr
    records = [json.loads(x) for x in (tmp_path / "runs" / "r" / "metrics.jsonl").read_text().splitlines()]
    final = records[-1]
    assert final["val_chars"] == 111_538  # the whole held-out tail was scored, by both ranks together
    last = checkpoint.load(tmp_path / "runs" / "r" / "last.safetensors").state
    assert last.train_seconds > 0.3 * last.elapsed, records  # it was 1%: one step, then validation
