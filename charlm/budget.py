"""A run's time budget: when training must stop, and how far along its schedule it is.

A budget of M minutes covers the whole command, from start-up to exit: reading
the corpus, the training steps, the validations during the run, the final
validation on the whole held-out text, the last checkpoints and the exit. Time
is kept on the *run clock*: seconds since the run started, summed over the
sessions of a resumed run (``TrainState.elapsed``), so the budget ends at
run clock 60·M.

Training stops at ``train_end`` = 60·M − the reserve, the time the end of the
run is expected to take: the final validations (sample and whole held-out
text, from the measured seconds per time step of a validation pass, with a
quarter more to spare), three checkpoint writes (the slowest measured), one
more training step and a fixed margin for the exit. Everything is measured again and again, so the plan
follows the machine when it slows down or speeds up.

The learning-rate schedule follows p = (run clock at the end of the next step)
/ ``train_end``, the fraction of the training time used, not a step count: a
change of speed changes how many steps fit, never whether the decay finishes.
The step after which no further step fits is the last one and gets p = 1.
"""

from __future__ import annotations

import os
import statistics
import time
from collections import deque

EXIT_SECONDS = 1.0  # closing the worker processes, printing the summary, leaving the interpreter
RECENT_STEPS = 5  # step times the step-time estimate is the median of (a slowdown shows after 3 steps)
END_SAFETY = 1.25  # the final validations are reserved this much more time than measured (a slower machine)


def process_started() -> float:
    """``time.perf_counter()`` at this process's start (Linux: from /proc; elsewhere: now),
    from which a budget in minutes counts: start-up and imports are part of the command."""
    now = time.perf_counter()
    try:
        with open("/proc/self/stat", encoding="ascii") as f:
            ticks = int(f.read().rsplit(")", 1)[1].split()[19])  # field 22: start time, clock ticks after boot
        age = time.clock_gettime(time.CLOCK_BOOTTIME) - ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError, AttributeError):
        return now
    return now - min(max(age, 0.0), 60.0)  # a sane age: start-up takes seconds, not minutes


class RunClock:
    """Seconds since the run started: ``before`` (earlier sessions) plus the time since
    ``started``, this session's start (a ``time.perf_counter()`` value)."""

    def __init__(self, before: float, started: float) -> None:
        self.before = before
        self.started = started

    def __call__(self) -> float:
        return self.before + time.perf_counter() - self.started


class TimeBudget:
    """The plan of a run that must end at run clock ``seconds``.

    The trainer reports what it measures (``note_step``, ``note_validation``,
    ``note_save``) and asks ``plan`` before every step. Validation costs are
    given in time steps of a validation pass (warm-up included, see
    ``charlm.evaluate.scoring_steps``): ``sample_steps`` for one validation
    during the run, ``whole_steps`` for the one on the whole held-out text.
    """

    def __init__(self, seconds: float, clock: RunClock, sample_steps: int, whole_steps: int) -> None:
        self.seconds = seconds
        self.clock = clock
        self.sample_steps = sample_steps
        self.whole_steps = whole_steps
        self.step_times: deque[float] = deque(maxlen=RECENT_STEPS)
        self.pass_step_seconds = 0.0  # seconds per time step of a validation pass (latest measurement)
        self.save_seconds = 0.0  # the slowest checkpoint write so far
        self.progress = 0.0  # p of the step planned last (never decreases)

    # -- measurements ----------------------------------------------------------

    def note_step(self, seconds: float) -> None:
        """A training step took ``seconds``, its callbacks included (validations not)."""
        self.step_times.append(seconds)

    def note_validation(self, seconds: float, steps: int) -> None:
        """A validation pass of ``steps`` time steps took ``seconds``."""
        if steps > 0:
            self.pass_step_seconds = seconds / steps

    def note_save(self, seconds: float) -> None:
        self.save_seconds = max(self.save_seconds, seconds)

    # -- estimates -----------------------------------------------------------------

    def step_seconds(self) -> float | None:
        """The time of the next training step: the median of the recent ones (None before the first)."""
        return statistics.median(self.step_times) if self.step_times else None

    def validation_seconds(self, whole: bool = False) -> float:
        return self.pass_step_seconds * (self.whole_steps if whole else self.sample_steps)

    def reserve(self) -> float:
        """Seconds the run needs after its last training step."""
        step = self.step_seconds() or 0.0
        end = END_SAFETY * (self.validation_seconds() + self.validation_seconds(whole=True)) + 3 * self.save_seconds
        return end + step + EXIT_SECONDS

    def train_end(self) -> float:
        """Run clock by which the last training step must be done."""
        return self.seconds - self.reserve()

    def steps_left(self) -> int:
        """About how many more steps fit (for a progress bar)."""
        step = self.step_seconds()
        if not step:
            return 0
        return max(0, int((self.train_end() - self.clock()) / step))

    # -- the plan ------------------------------------------------------------------

    def plan(self, validate_after: bool) -> tuple[float, bool] | None:
        """(p, last) for the next step, or None when it does not fit any more.

        ``validate_after``: the step is followed by a validation during the run,
        which must fit as well for a further step to follow.
        """
        now, end, step = self.clock(), self.train_end(), self.step_seconds()
        if step is None:  # this session's first step: nothing measured yet
            return min(1.0, max(self.progress, now / end if end > 0 else 1.0)), False
        if now + step > end:
            return None
        after = now + step
        if validate_after:
            after += self.validation_seconds() + 2 * self.save_seconds
        last = after + 1.5 * step > end  # half a step to spare: the estimates move a little between two plans
        self.progress = 1.0 if last else min(1.0, max(self.progress, (now + step) / end))
        return self.progress, last
