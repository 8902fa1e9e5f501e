"""Exact resume and the numerical guard.

A run stopped at step k and resumed from last.safetensors must end with the
very same bits as a run that never stopped: weights θ, Adam's m and v, the
carried state (a<t>, c<t>) and the dropout RNG. Each restored piece is also
sabotaged once to show that the comparison notices when it is missing.
"""

from __future__ import annotations

import json
import os
import re
import signal
import threading

import numpy as np
import pytest
from typer.testing import CliRunner

from charlm import checkpoint
from charlm.cli import app
from charlm.config import ModelConfig, TrainConfig
from charlm.errors import CheckpointError, CorpusError, TrainingDiverged, UsageError, WorkerError
from charlm.prepare import prepare_run
from charlm.resume import resume_run
from charlm.train import Callbacks
from tests.conftest import SMALL_TEXT

runner = CliRunner()

N = 40  # steps in all; SMALL_TEXT gives 29 steps per epoch at B=4, T=16, so the run crosses an epoch
SPLIT = 17  # stopped mid-epoch


class StopAt(Callbacks):
    """Calls request_stop after step ``k``, as SIGINT would."""

    def __init__(self, k: int) -> None:
        self.k = k

    def on_step(self, trainer, loss):
        if trainer.step == self.k:
            trainer.request_stop()


class Poison(Callbacks):
    """Puts a NaN into a weight every prediction uses, after step ``k`` (a stand-in for
    an exploding update)."""

    def __init__(self, k: int) -> None:
        self.k = k

    def on_step(self, trainer, loss):
        if trainer.step == self.k:
            trainer.model.params["decoder.bias"][0] = np.nan


def make_trainer(corpus, run_dir, dropout=0.0, callbacks=None, **config):
    cfg = TrainConfig(batch_size=4, seq_len=16, eval_every=6, seed=3, steps=N, warmup=5, **config)
    model = ModelConfig(layers=2, hidden=12, embed=6, dropout=dropout)
    return prepare_run(corpus, run_dir, model, cfg, callbacks)


def straight_and_split(corpus, tmp_path, dropout, sabotage=None):
    straight = make_trainer(corpus, tmp_path / "straight", dropout)
    straight.run()
    first = make_trainer(corpus, tmp_path / "split", dropout, callbacks=StopAt(SPLIT))
    summary = first.run()
    assert summary.interrupted == 0 and summary.steps == SPLIT
    resumed = resume_run(tmp_path / "split" / "last.safetensors", corpus)
    assert (resumed.step, resumed.position, resumed.epoch) == (SPLIT, SPLIT, 0)
    if sabotage is not None:
        sabotage(resumed)
    resumed.run()
    return straight, resumed


@pytest.mark.parametrize("dropout", [0.0, 0.3])
def test_stopped_and_resumed_run_is_bit_identical(small_corpus, tmp_path, dropout):
    straight, resumed = straight_and_split(small_corpus, tmp_path, dropout)
    assert resumed.step == straight.step == N and resumed.epoch == straight.epoch == 1
    assert np.array_equal(resumed.model.flat, straight.model.flat)
    assert np.array_equal(resumed.optimizer.m, straight.optimizer.m)
    assert np.array_equal(resumed.optimizer.v, straight.optimizer.v)
    assert resumed.optimizer.t == straight.optimizer.t == N
    for a, b in zip(resumed.state, straight.state, strict=True):
        assert all(np.array_equal(x, y) for x, y in zip(a, b, strict=True))
    assert resumed.rng.bit_generator.state == straight.rng.bit_generator.state
    assert resumed.validation.best_val == straight.validation.best_val
    assert resumed.validation.best_step == straight.validation.best_step
    # the resumed run wrote into the same folder and continued its log
    lines = [json.loads(x) for x in (tmp_path / "split" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in lines] == [6, 12, 18, 24, 30, 36, 40, 40]
    assert "best_val_loss" in lines[-1]  # the end: the best weights on the whole held-out text


SABOTAGE = {
    "dropout RNG": lambda t: setattr(t, "rng", np.random.default_rng(99)),
    "carried state": lambda t: setattr(t, "state", t.model.zero_state(4)),
    "Adam moments": lambda t: t.optimizer.m.fill(0.0),
    "Adam step count": lambda t: setattr(t.optimizer, "t", 0),
    "data position": lambda t: setattr(t, "position", 0),
}


@pytest.mark.parametrize("what", list(SABOTAGE))
def test_each_restored_piece_matters(small_corpus, tmp_path, what):
    """The bit-identity test can fail: losing any one piece of state changes the result."""
    straight, resumed = straight_and_split(small_corpus, tmp_path, 0.3, SABOTAGE[what])
    assert not np.array_equal(resumed.model.flat, straight.model.flat)


def test_resume_refuses_another_corpus(small_corpus, tmp_path):
    make_trainer(small_corpus, tmp_path / "run").run()
    other = tmp_path / "other.txt"
    other.write_text(SMALL_TEXT.replace("speak", "spake"), encoding="utf-8")
    before = snapshot(tmp_path / "run")
    with pytest.raises(CorpusError, match="differs from the one the run") as e:
        resume_run(tmp_path / "run" / "last.safetensors", other, {"steps": N + 10})
    assert "\n" not in str(e.value)
    assert snapshot(tmp_path / "run") == before


def test_resume_refuses_weights_only_checkpoint(tiny_checkpoint, small_corpus):
    with pytest.raises(CheckpointError, match="cannot be resumed"):
        resume_run(tiny_checkpoint, small_corpus)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"hidden": 13}, "hidden 13 differs from this run's 12"),
        ({"seq_len": 8}, "seq_len 8 differs"),
        ({"dropout": 0.5}, "dropout 0.5 differs"),
        ({"steps": N}, f"a budget of {N} steps is not more than the {N} steps"),
        ({}, "already used its budget"),
        ({"epochs": 1.0}, "a budget of 1 epochs is not more than"),
    ],
)
def test_resume_option_conflicts(small_corpus, tmp_path, options, message):
    make_trainer(small_corpus, tmp_path / "run").run()
    with pytest.raises(UsageError, match=message):
        resume_run(tmp_path / "run" / "last.safetensors", small_corpus, options)


def test_resume_budget_rules(small_corpus, tmp_path):
    make_trainer(small_corpus, tmp_path / "run", callbacks=StopAt(SPLIT)).run()
    last = tmp_path / "run" / "last.safetensors"
    same = resume_run(last, small_corpus, {"hidden": 12, "lr": 1e-3})  # same value: fine; lr may change
    assert same.total_steps == N and same.config.lr == 1e-3
    assert same.changed == {"lr": (3e-3, 1e-3)}
    same.folder.release()  # a resumed Trainer holds its run folder until its run ends; this one never runs
    longer = resume_run(last, small_corpus, {"steps": 2 * N})
    assert longer.total_steps == 2 * N and longer.run().steps == 2 * N
    more = resume_run(last, small_corpus, {"minutes": 0.5})  # minutes more than already spent
    assert more.config.steps is None
    assert more.config.minutes == pytest.approx(0.5 + longer.elapsed / 60.0, abs=1e-6)


def test_resume_drops_metrics_of_an_abandoned_future(small_corpus, tmp_path):
    make_trainer(small_corpus, tmp_path / "run", callbacks=StopAt(SPLIT)).run()
    log = tmp_path / "run" / "metrics.jsonl"
    lines = log.read_text().splitlines(keepends=True)
    log.write_text("".join(lines) + '{"step": 18, "val_loss": 1.0}\n{"step": 2')  # logged, then killed mid-line
    trainer = resume_run(tmp_path / "run" / "last.safetensors", small_corpus)
    trainer.run()
    steps = [json.loads(x)["step"] for x in log.read_text().splitlines()]
    assert steps == [6, 12, 18, 24, 30, 36, 40, 40]  # the last: the whole held-out text


# --------------------------------------------------------------------------- #
# numerical guard
# --------------------------------------------------------------------------- #


@pytest.mark.parametrize(
    ("poison_at", "caught_at", "what"),
    [(8, 9, "the training loss is not finite"), (12, 12, "the validation loss is not finite")],
)
def test_divergence_stops_and_keeps_the_last_good_checkpoint(small_corpus, tmp_path, poison_at, caught_at, what):
    """NaN weights after step 8 show up as a NaN loss at step 9; after step 12 the
    validation at step 12 sees them first and must not save them."""
    run = tmp_path / "run"
    trainer = make_trainer(small_corpus, run, callbacks=Poison(poison_at))
    with pytest.raises(TrainingDiverged) as e:
        trainer.run()
    message = str(e.value)
    assert "\n" not in message
    assert message.startswith(f"training diverged at step {caught_at}: {what}.")
    assert "(step 6), is kept" in message and "learning rate" in message and "clipping norm" in message
    assert "--" not in message  # the library names no flags; the CLI words it with them
    for name in ("last.safetensors", "best.safetensors"):
        ck = checkpoint.load(run / name)  # load() itself refuses non-finite weights
        assert ck.state.step == 6
        assert all(np.isfinite(p).all() for p in ck.params.values())
    assert [json.loads(x)["step"] for x in (run / "metrics.jsonl").read_text().splitlines()] == [6]


def test_divergence_before_any_checkpoint_leaves_no_folder(small_corpus, tmp_path):
    with pytest.raises(TrainingDiverged, match="No checkpoint had been written yet"):
        make_trainer(small_corpus, tmp_path / "run", callbacks=Poison(2)).run()
    assert not (tmp_path / "run").exists()


def test_save_refuses_non_finite_weights(small_corpus, tmp_path):
    trainer = make_trainer(small_corpus, tmp_path / "run")
    trainer.model.flat[0] = np.inf
    with pytest.raises(TrainingDiverged, match="weights are no longer finite"):
        trainer.save(tmp_path / "last.safetensors")
    assert not (tmp_path / "last.safetensors").exists()


# --------------------------------------------------------------------------- #
# through the command line
# --------------------------------------------------------------------------- #

TINY = ["--hidden", "12", "--embed", "6", "--layers", "2", "--dropout", "0.2", "--batch-size", "4", "--seq-len", "16"]


def train(*args):
    return runner.invoke(app, ["train", *args])


def last_params(run):
    ck = checkpoint.load(run / "last.safetensors")
    return ck.build_model().flat, ck.extra["optimizer.exp_avg_sq"], ck.state.step


def test_cli_interrupt_and_resume_is_bit_identical(small_corpus, tmp_path, monkeypatch):
    """A real SIGINT to this process at step 23 (a callback sends it), then the printed
    command: the end result equals a run that was never interrupted."""
    out = str(tmp_path / "runs")
    r = train(str(small_corpus), "--steps", "50", "--out", out, "--name", "straight", "--eval-every", "10", *TINY)
    assert r.exit_code == 0, r.output

    from charlm.cli.progress import TrainingDisplay

    real_on_step = TrainingDisplay.on_step

    def on_step(self, trainer, loss):
        real_on_step(self, trainer, loss)
        if trainer.step == 23:
            os.kill(os.getpid(), signal.SIGINT)

    monkeypatch.setattr(TrainingDisplay, "on_step", on_step)
    handler = signal.getsignal(signal.SIGINT)
    r = train(str(small_corpus), "--steps", "50", "--out", out, "--name", "split", "--eval-every", "10", *TINY)
    monkeypatch.setattr(TrainingDisplay, "on_step", real_on_step)
    assert r.exit_code == 130, r.output
    run = tmp_path / "runs" / "split"
    line = f"interrupted at step 23; resume with: charlm train {small_corpus} --resume {run}"
    assert r.stderr.strip().splitlines()[-1] == line
    assert r.stdout == "" and "Traceback" not in r.output
    assert last_params(run)[2] == 23
    assert signal.getsignal(signal.SIGINT) is handler  # the previous handler is back

    command = line.split("resume with: charlm ", 1)[1].split()
    r = runner.invoke(app, command)
    assert r.exit_code == 0, r.output
    assert "resuming" in r.stderr and "at step 23" in r.stderr
    a, b = last_params(tmp_path / "runs" / "straight"), last_params(run)
    assert a[2] == b[2] == 50
    assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])


def test_second_ctrl_c_during_the_final_save_is_absorbed(small_corpus, tmp_path, monkeypatch):
    from charlm.cli.progress import TrainingDisplay

    def on_step(self, trainer, loss):
        if trainer.step == 5:
            os.kill(os.getpid(), signal.SIGINT)

    real_write = checkpoint.atomic_write

    def impatient_write(path, data):  # Ctrl-C again while the checkpoint is being written
        os.kill(os.getpid(), signal.SIGINT)
        real_write(path, data)

    monkeypatch.setattr(TrainingDisplay, "on_step", on_step)
    monkeypatch.setattr(checkpoint, "atomic_write", impatient_write)
    r = train(str(small_corpus), "--steps", "50", "--out", str(tmp_path / "runs"), *TINY)
    assert r.exit_code == 130, r.output
    assert "Traceback" not in r.output and "interrupted at step 5;" in r.stderr
    assert last_params(tmp_path / "runs" / "small")[2] == 5


def test_cli_resume_alone_takes_the_newest_run_and_extends_the_budget(small_corpus, tmp_path):
    out = str(tmp_path / "runs")
    assert train(str(small_corpus), "--steps", "8", "--out", out, "--name", "old", *TINY).exit_code == 0
    assert train(str(small_corpus), "--steps", "8", "--out", out, "--name", "new", *TINY).exit_code == 0
    os.utime(tmp_path / "runs" / "old" / "last.safetensors", (1, 1))
    os.utime(tmp_path / "runs" / "old" / "best.safetensors", (1, 1))
    # a bare --resume followed by another option, and at the very end
    r = train(str(small_corpus), "--resume", "--steps", "12", "--out", out)
    assert r.exit_code == 0, r.output
    assert last_params(tmp_path / "runs" / "new")[2] == 12
    r = train(str(small_corpus), "--steps", "16", "--out", out, "--resume")
    assert r.exit_code == 0, r.output
    assert last_params(tmp_path / "runs" / "new")[2] == 16
    assert last_params(tmp_path / "runs" / "old")[2] == 8
    assert sorted(p.name for p in (tmp_path / "runs").iterdir()) == ["new", "old"]  # no new folder


@pytest.mark.parametrize(
    ("extra", "code", "words"),
    [
        (["--hidden", "64"], 2, "--hidden 64 differs"),
        (["--name", "x"], 2, "--name cannot be combined"),
        ([], 2, "already used its budget"),
    ],
)
def test_cli_resume_refusals_change_nothing(small_corpus, tmp_path, extra, code, words):
    out = str(tmp_path / "runs")
    assert train(str(small_corpus), "--steps", "6", "--out", out, *TINY).exit_code == 0
    before = snapshot(tmp_path)
    r = train(str(small_corpus), "--resume", str(tmp_path / "runs" / "small"), *extra)
    assert r.exit_code == code
    assert words in r.stderr and len(r.stderr.strip().splitlines()) == 1 and "Traceback" not in r.output
    assert snapshot(tmp_path) == before


def test_cli_resume_other_corpus_and_missing_run(small_corpus, tmp_path):
    out = str(tmp_path / "runs")
    assert train(str(small_corpus), "--steps", "6", "--out", out, *TINY).exit_code == 0
    other = tmp_path / "other.txt"
    other.write_text(SMALL_TEXT.upper(), encoding="utf-8")
    before = snapshot(tmp_path)
    r = train(str(other), "--resume", str(tmp_path / "runs" / "small"), "--steps", "20")
    assert r.exit_code == 1 and "differs from the one the run" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1
    r = train(str(small_corpus), "--resume", "--out", str(tmp_path / "nothing"))
    assert r.exit_code == 1 and "no run under" in r.stderr
    assert snapshot(tmp_path) == before


@pytest.mark.filterwarnings("error::RuntimeWarning")  # pytest would swallow a warning, not print it
def test_cli_divergence_is_one_line_and_keeps_checkpoints(small_corpus, tmp_path):
    """An absurd learning rate diverges for sure: Adam moves each weight by about lr,
    and 1e300 is beyond float32, so the first update makes the weights infinite and
    the next loss NaN. (1e30 is not enough: saturated gates keep the loss finite.)
    Resuming a healthy run with it must leave that run's files untouched."""
    out = str(tmp_path / "runs")
    assert train(str(small_corpus), "--steps", "12", "--eval-every", "6", "--out", out, *TINY).exit_code == 0
    run = tmp_path / "runs" / "small"
    before = {p.name: p.read_bytes() for p in run.iterdir()}
    r = train(str(small_corpus), "--resume", str(run), "--steps", "40", "--lr", "1e300")
    assert r.exit_code == 1
    errors = [x for x in r.stderr.splitlines() if x.startswith("error:")]
    assert len(errors) == 1 and r.stderr.strip().splitlines()[-1] == errors[0]
    assert "Warning" not in r.stderr and "Traceback" not in r.output
    assert int(re.match(r"error: training diverged at step (\d+): ", errors[0]).group(1)) > 12
    assert "--lr (now 1e+300)" in errors[0] and "--clip" in errors[0] and "(step 12), is kept" in errors[0]
    assert {p.name: p.read_bytes() for p in run.iterdir()} == before
    for name in ("last.safetensors", "best.safetensors"):
        ck = checkpoint.load(run / name)
        assert ck.state.step == 12 and all(np.isfinite(p).all() for p in ck.params.values())

    # two row blocks: the worker thread's overflow is silenced too (np.errstate is per thread)
    fresh = train(
        str(small_corpus), "--steps", "40", "--out", out, "--name", "fresh", "--lr", "1e300", *TINY, "--threads", "2"
    )
    assert fresh.exit_code == 1 and "No checkpoint had been written yet" in fresh.stderr
    assert "Warning" not in fresh.stderr and fresh.stderr.strip().splitlines()[-1].startswith(
        "error: training diverged"
    )
    assert not (tmp_path / "runs" / "fresh").exists()


def snapshot(root):
    return {
        str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns, p.read_bytes() if p.is_file() else b"")
        for p in sorted(root.rglob("*"))
    }


def test_cli_resume_forms_with_a_shipped_corpus(tmp_path, monkeypatch):
    """The two spellings from the issue: 'charlm train shakespeare --resume' and
    'charlm train shakespeare --resume runs/x'."""
    monkeypatch.chdir(tmp_path)
    small = ["--hidden", "8", "--embed", "4", "--layers", "1", "--batch-size", "4", "--seq-len", "8"]
    assert train("shakespeare", "--steps", "2", *small).exit_code == 0
    r = train("shakespeare", "--steps", "3", "--resume")
    assert r.exit_code == 0, r.output
    assert "resuming runs/shakespeare/last.safetensors at step 2" in r.stderr
    r = train("shakespeare", "--steps", "4", "--resume", "runs/shakespeare")
    assert r.exit_code == 0, r.output
    assert last_params(tmp_path / "runs" / "shakespeare")[2] == 4
    assert [p.name for p in (tmp_path / "runs").iterdir()] == ["shakespeare"]


class StallAt(Callbacks):
    """After step ``k``, stops the worker process with SIGSTOP, as if it hung. Then
    either the wait for its answer times out (shortened to 0.3 s, as $CHARLM_WORKER_TIMEOUT
    can), or with ``ctrl_c`` a stop is requested 0.3 s into the next step, as SIGINT would."""

    def __init__(self, k: int, ctrl_c: bool) -> None:
        self.k, self.ctrl_c, self.warnings = k, ctrl_c, []

    def on_step(self, trainer, loss):
        if trainer.step == self.k:
            os.kill(trainer.stepper._procs[0].proc.pid, signal.SIGSTOP)
            trainer.stepper.min_wait = 60.0 if self.ctrl_c else 0.3
            if self.ctrl_c:
                threading.Timer(0.3, trainer.request_stop, (signal.SIGINT,)).start()

    def on_warning(self, text):
        self.warnings.append(text)


@pytest.mark.slow
@pytest.mark.parametrize("ctrl_c", [False, True], ids=["timeout", "ctrl-c"])
def test_a_step_lost_with_a_stopped_worker_is_redone_exactly_on_resume(small_corpus, tmp_path, monkeypatch, ctrl_c):
    """The lost step's dropout draws are drawn again: stalled at step 17 (not a save
    step) and resumed, the run ends bit-identical to one that never stalled."""
    import charlm.parallel

    monkeypatch.setattr(charlm.parallel, "GRACE_S", 0.2)  # the wait for an answer after a stop request
    straight = make_trainer(small_corpus, tmp_path / "straight", 0.3, threads=2)
    straight.run()
    stall = StallAt(SPLIT, ctrl_c)
    first = make_trainer(small_corpus, tmp_path / "split", 0.3, callbacks=stall, threads=2)
    if ctrl_c:
        assert first.run().interrupted == signal.SIGINT
        assert len(stall.warnings) == 1 and re.search(r"within [\d.]+ s of the request to stop", stall.warnings[0])
    else:
        with pytest.raises(WorkerError, match=rf"within [\d.]+ s; it is stopped .* step {SPLIT} is saved in"):
            first.run()
    resumed = resume_run(tmp_path / "split" / "last.safetensors", small_corpus)
    assert resumed.step == SPLIT
    resumed.run()
    assert np.array_equal(resumed.model.flat, straight.model.flat)
    assert resumed.rng.bit_generator.state == straight.rng.bit_generator.state
