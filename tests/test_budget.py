"""A budget in minutes: the whole command ends in time, with its whole schedule run,
also when the machine slows down or speeds up during the run.

The planner is first driven by a simulated clock (instant, deterministic), then a
real trainer with a step that sleeps, then the installed console script."""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
import time
from itertools import pairwise

import numpy as np
import pytest

from charlm.budget import EXIT_SECONDS, TimeBudget
from charlm.config import ModelConfig, TrainConfig
from charlm.optim import learning_rate, timed_learning_rate
from charlm.prepare import prepare_run
from charlm.train import Callbacks
from tests.conftest import SMALL_TEXT

# --------------------------------------------------------------------------- #
# The schedule in time
# --------------------------------------------------------------------------- #


def test_the_timed_schedule_warms_up_by_steps_and_ends_exactly_at_the_final_rate():
    base, warmup, final = 3e-3, 50, 0.1
    assert timed_learning_rate(0, 0.0, base, warmup, final) == pytest.approx(base / warmup)
    assert timed_learning_rate(warmup - 1, 0.0, base, warmup, final) == pytest.approx(base)
    assert timed_learning_rate(5000, 1.0, base, warmup, final) == base * final  # exactly
    assert timed_learning_rate(5000, 1.7, base, warmup, final) == base * final  # p is capped
    rates = [timed_learning_rate(5000, p, base, warmup, final) for p in np.linspace(0, 1, 11)]
    assert all(a > b for a, b in pairwise(rates))
    # the step schedule is the one --steps runs keep, unchanged
    assert learning_rate(5000, 5000, base, warmup, final) == pytest.approx(base * final)


class FakeClock:
    def __init__(self) -> None:
        self.t = 0.5  # start-up before the loop

    def __call__(self) -> float:
        return self.t


def simulate(step_seconds, budget_s: float = 120.0, every: int = 200, end_slower: float = 1.0):
    """Drive a TimeBudget as the trainer does, with steps taking ``step_seconds(k)``;
    a validation pass step costs 1 ms (``end_slower`` times that at the end), a save
    20 ms. Returns (clock at exit, p of each step, whether the last step was planned
    as last, seconds in steps)."""
    clock = FakeClock()
    budget = TimeBudget(budget_s, clock, sample_steps=512, whole_steps=2000)
    budget.note_validation(0.001, 1)  # the first measure, as from pass_step_seconds
    ps, in_steps, k, last = [], 0.0, 0, False
    while not last:
        plan = budget.plan(validate_after=(k + 1) % every == 0)
        if plan is None:
            break
        p, last = plan
        ps.append(p)
        d = step_seconds(k)
        clock.t += d
        in_steps += d
        budget.note_step(d)
        k += 1
        if k % every == 0:  # a validation during the run, and two checkpoints
            clock.t += 512 * 0.001 + 0.04
            budget.note_validation(512 * 0.001, 512)
            budget.note_save(0.02)
    if k % every:  # the end: the final weights on the sample unless just validated, then the whole text
        clock.t += 512 * 0.001 * end_slower
    clock.t += 2000 * 0.001 * end_slower + 3 * 0.02 + EXIT_SECONDS
    return clock.t, ps, last, in_steps


SPEEDS = {
    "steady": lambda k: 0.05,
    "slows down 4×": lambda k: 0.05 if k < 500 else 0.2,
    "speeds up 4×": lambda k: 0.2 if k < 150 else 0.05,
    "slows down gradually": lambda k: 0.05 * (1 + k / 400),
    "a hiccup": lambda k: 3.0 if k == 700 else 0.05,
}


@pytest.mark.parametrize("speed", list(SPEEDS))
def test_a_change_of_speed_changes_how_many_steps_fit_never_whether_the_schedule_ends(speed):
    end, ps, last, in_steps = simulate(SPEEDS[speed])
    assert end <= 120.0  # the command ends within its budget
    assert ps[-1] == 1.0 and last  # the last step ran at the final learning rate
    assert all(a <= b for a, b in pairwise(ps))  # the schedule never goes back
    assert in_steps / end > 0.9  # little is left unused


def test_the_end_may_run_slower_than_measured():
    end, ps, last, _ = simulate(SPEEDS["slows down 4×"], end_slower=1.2)
    assert end <= 120.0 and ps[-1] == 1.0


def test_the_old_plan_would_have_cut_the_schedule_short():
    """The test above can fail: planning the steps once from the first steps' speed (as
    before) leaves the decay unfinished when the machine slows down."""
    speed = SPEEDS["slows down 4×"]
    sec_per_step = sum(speed(k) for k in range(20)) / 20
    planned = int((120.0 - 0.5) / sec_per_step)
    t, k = 0.5, 0
    while t + speed(k) <= 120.0:
        t += speed(k)
        k += 1
    assert k < planned and (k - 50) / (planned - 50) < 0.9


# --------------------------------------------------------------------------- #
# A real trainer whose steps slow down
# --------------------------------------------------------------------------- #


class Slowdown(Callbacks):
    """Sleeps ``pause`` seconds after every step from step ``after`` on (a busier machine)."""

    def __init__(self, after: int, pause: float) -> None:
        self.after, self.pause = after, pause

    def on_step(self, trainer, loss):
        if trainer.step >= self.after:
            time.sleep(self.pause)


@pytest.mark.slow
def test_a_trainer_whose_steps_slow_down_ends_in_time_with_the_final_rate(tmp_path, small_corpus):
    started = time.perf_counter()
    cfg = TrainConfig(batch_size=4, seq_len=16, eval_every=25, minutes=0.05, threads=1, warmup=5)
    trainer = prepare_run(
        small_corpus, tmp_path / "run", ModelConfig(hidden=8, embed=4, layers=1), cfg, Slowdown(60, 0.01), started
    )
    summary = trainer.run()
    wall = time.perf_counter() - started
    assert wall <= 3.0
    assert summary.steps > 60 and summary.interrupted is None
    lines = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert lines[-2]["step"] == summary.steps
    assert lines[-2]["lr"] == pytest.approx(cfg.lr * cfg.final_lr_frac, rel=1e-3)
    assert lines[-1]["best_val_loss"] == pytest.approx(summary.best_val, abs=1e-6)
    assert summary.elapsed == pytest.approx(wall, abs=0.2)


# --------------------------------------------------------------------------- #
# Through the installed console script
# --------------------------------------------------------------------------- #


def console_script() -> str:
    found = shutil.which("charlm", path=os.path.dirname(sys.executable)) or shutil.which("charlm")
    if found is None:
        pytest.fail("the charlm console script is not installed; install the package as the README says")
    return found


@pytest.mark.slow
def test_minutes_is_the_whole_command_and_info_agrees_with_the_summary(tmp_path):
    corpus = tmp_path / "small.txt"
    corpus.write_text(SMALL_TEXT * 20, encoding="utf-8")
    args = ["train", str(corpus), "--minutes", "0.1", "--hidden", "16", "--layers", "1", "--eval-every", "50"]
    t0 = time.perf_counter()
    r = subprocess.run([console_script(), *args], cwd=tmp_path, capture_output=True, text=True, timeout=60)
    wall = time.perf_counter() - t0
    assert r.returncode == 0, r.stderr
    assert wall <= 6.0, f"took {wall:.2f} s of a 6 s budget"
    run = tmp_path / "runs" / "small"
    lines = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert lines[-2]["lr"] == pytest.approx(3e-4, rel=1e-3)  # the decay ran to its end
    assert lines[-1]["val_chars"] == round(len(SMALL_TEXT * 20) * 0.1) - 1  # all the held-out text
    trained = next(x for x in r.stdout.splitlines() if x.startswith("trained"))
    took = trained.split(" in ")[1].split(",")[0]  # e.g. "6s"
    info = subprocess.run([console_script(), "info", str(run)], cwd=tmp_path, capture_output=True, text=True)
    assert f"characters seen, {took}" in info.stdout
    share = float(trained.split(", ")[1].split("%")[0])
    assert 0 < share <= 100 and math.isfinite(share)


def test_process_started_is_in_the_past():
    """The start a budget in minutes counts from: this process's start, within a minute."""
    import time

    from charlm.budget import process_started

    assert time.perf_counter() - 60.0 <= process_started() <= time.perf_counter()
