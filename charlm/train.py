"""The training loop: truncated BPTT with carried state, Adam, clipping, evaluation.

The loop knows nothing about progress bars: it reports to a ``Callbacks``
object, and the CLI attaches a display. One step is

    loss, grads = model(chunk k of every stream, carried state)
    ‖grads‖ clipped to ``clip``;  Adam step with the scheduled learning rate
    state ← final state of the chunk (gradients do not flow across chunks)

Every ``eval_every`` steps, and once more at the end, the Trainer's
``charlm.validation.Validation`` scores the held-out text and records it in the
run folder, best checkpoint included.

Budget: a budget in steps or epochs fixes the schedule's length in steps. A budget in
minutes covers the whole run, start-up to exit; ``charlm.budget`` decides when
the last step is and drives the learning-rate schedule by the fraction of the
training time used, so the decay always finishes.

Safety: SIGINT and SIGTERM are caught while the loop runs (``charlm.signals``);
the current step finishes, ``last.safetensors`` is written (atomically) and the
summary says which signal stopped the run. A worker process that ends or does
not answer in time (``charlm.parallel``) loses its step: the run stops with
``WorkerError`` after saving the last completed step to ``last.safetensors``, or,
if a signal was waiting for that step, drops it with a warning and stops as
interrupted. A non-finite loss, gradient norm,
validation loss or weight stops training with ``TrainingDiverged`` before
anything is written, so the checkpoints on disk are always the last good ones.
``charlm.resume`` rebuilds a Trainer from ``last.safetensors`` (``restore``) —
weights, Adam moments, step, epoch, data position, carried state a<t>/c<t>,
schedule and the dropout RNG — so that a run stopped and resumed ends
bit-identical to one that never stopped (with a budget in steps or epochs).
"""

from __future__ import annotations

import math
import time
from pathlib import Path

import numpy as np

from charlm import checkpoint
from charlm.budget import RunClock, TimeBudget
from charlm.callbacks import Callbacks, TrainSummary
from charlm.config import TrainConfig, TrainState
from charlm.corpus import Corpus
from charlm.data import BatchStream
from charlm.errors import CharlmError, CheckpointError, TrainingDiverged, WorkerError
from charlm.evaluate import scoring_steps
from charlm.model import CharModel
from charlm.optim import Adam, clip_grad_norm_, learning_rate, timed_learning_rate
from charlm.parallel import DataParallel, default_workers
from charlm.runfolder import RunFolder
from charlm.sample import warmed_state
from charlm.session import LocalSession, Plan
from charlm.signals import signals_call
from charlm.validation import Validation
from charlm.vocab import Vocab


class Trainer:
    def __init__(
        self,
        model: CharModel,
        corpus: Corpus,
        config: TrainConfig,
        run_dir: Path | RunFolder,
        callbacks: Callbacks | None = None,
        started: float | None = None,
    ) -> None:
        """``run_dir``: the run folder (a path, or a RunFolder that may hold its lock already);
        ``started``: ``time.perf_counter()`` at this session's start-up, from which a
        budget in minutes counts (default: now)."""
        self.started: float | None = time.perf_counter() if started is None else started
        self.model = model
        self.vocab: Vocab = corpus.vocab
        self.config = config
        self.folder = run_dir if isinstance(run_dir, RunFolder) else RunFolder(run_dir)
        self.corpus = corpus.fingerprint()
        self.callbacks = callbacks or Callbacks()
        self.stream = BatchStream(corpus.train_ids, config.batch_size, config.seq_len)
        self.validation = Validation(self, corpus.val_ids)  # the held-out text, the best validation so far
        self.optimizer = Adam(model.num_params, model.dtype)
        workers = config.threads or default_workers(config.batch_size)
        # loss_and_grads over row blocks on the cores; a stop request cuts the wait for a silent worker short
        self.stepper = DataParallel(model, workers, stop_requested=lambda: self.stop_signal is not None)
        self.session = LocalSession()  # this process alone; ``mpistep.distribute`` makes it an MPI rank
        self.rng = np.random.default_rng(config.seed + 1)  # dropout
        self.state = model.zero_state(config.batch_size)  # carried a<t> (and c<t>) per layer, (B, H) each
        self.step = 0  # optimizer steps taken
        self.position = 0  # next chunk within the epoch
        self.epoch = 0
        self.elapsed = 0.0  # run clock: seconds since the run started, validations and saves included
        self.train_seconds = 0.0  # seconds in training steps only
        self.step_limit = self.planned_steps()  # the steps or epochs budget, in steps (None: minutes only)
        self.total_steps = self.step_limit  # steps the schedule spans (under a time budget, an estimate)
        self.budget: TimeBudget | None = None  # the plan of a budget in minutes, made by run()
        self.clock = RunClock(0.0, self.started)  # run() sets the session's clock
        self.history: list[dict] = []  # metrics records of this session
        self.lr = 0.0
        self.stop_signal: int | None = None  # set by SIGINT/SIGTERM or request_stop()
        self.saved_step: int | None = None  # step of the newest last.safetensors written
        self.notes: list[str] = []  # what resuming decided, for the CLI to show
        self.changed: dict[str, tuple] = {}  # setting → (stored, new) that resuming changed

    # -- budget --------------------------------------------------------------------

    def planned_steps(self) -> int | None:
        """The steps a budget in steps or epochs allows, the tighter of the two (None:
        neither is given; a budget in minutes is planned as the run goes, see ``charlm.budget``)."""
        c = self.config
        plans = []
        if c.steps is not None:
            plans.append(c.steps)
        if c.epochs is not None:
            plans.append(max(1, int(c.epochs * self.stream.steps_per_epoch)))
        return min(plans) if plans else None

    @property
    def run_dir(self) -> Path:
        return self.folder.path  # an automatic name is known once the folder is locked

    @property
    def chars_per_step(self) -> int:
        return self.config.batch_size * self.config.seq_len

    # -- loop -------------------------------------------------------------------------

    def request_stop(self, signum: int = 0) -> None:
        """Stop after the current step and write last.safetensors (what SIGINT and
        SIGTERM do; a callback may call it too). The first request wins."""
        if self.stop_signal is None:
            self.stop_signal = signum

    def run(self) -> TrainSummary:
        """Train until the budget runs out or a stop is requested; see the module docstring.
        The run folder is locked for this process until the run ends (``RunFolder.lock``)."""
        if self.session.root:  # rank 0 alone writes the run
            self.folder.open(self.step)
        started = time.perf_counter() if self.started is None else self.started
        self.started = None  # a later run() is a session of its own, counted from its call
        self.clock = RunClock(self.elapsed, started)
        # Handlers are restored only after the final save: a second Ctrl-C during it just sets the flag again.
        with signals_call(self.request_stop):
            try:
                # Overflow on the way to a blow-up is caught as a non-finite loss, not warned about.
                with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
                    return self._loop()
            except CharlmError:  # diverged, or a checkpoint could not be written: close the display first
                self.callbacks.on_end(self, self._summary())
                self.folder.discard_if_empty()
                raise
            finally:
                self.session.end()  # rank 0 leaving with an error: the other ranks stop too
                self.stepper.close()  # the worker processes; a later run() starts them again
                self.folder.release()  # a later run() takes the folder again

    def _plan_budget(self) -> TimeBudget | None:
        """The plan of a budget in minutes, with a first measure of a validation pass's speed."""
        c = self.config
        if c.minutes is None:
            return None
        n = len(self.validation.val_ids)
        budget = TimeBudget(
            c.minutes * 60.0,
            self.clock,
            scoring_steps(n, self.validation.sample_chars),
            scoring_steps(n) if n > 1 else 0,
        )
        if n > 1:  # under MPI timed on every rank at once, each on its rows, as the ranks then validate
            budget.note_validation(self.validation.scoring.pass_step_seconds(), 1)
        return budget

    def _plan_step(self) -> Plan | None:
        """(p, last, total steps) of the next step, or None when the budget is spent; p is
        the fraction of a time budget used by the step's end (None: no time budget)."""
        if self.step_limit is not None and self.step >= self.step_limit:
            return None
        budget = self.budget
        if budget is None:
            return None, False, self.total_steps
        plan = budget.plan(validate_after=(self.step + 1) % self.config.eval_every == 0)
        if plan is None:
            return None
        progress, last = plan
        total = self.step + 1 + (0 if last else budget.steps_left())
        if self.step_limit is not None:  # a budget in steps as well: the schedule follows the tighter
            progress = max(progress, (self.step + 1) / self.step_limit)
            last = last or self.step + 1 >= self.step_limit
            total = min(total, self.step_limit)
        return progress, last, total

    def _loop(self) -> TrainSummary:
        c = self.config
        root = self.session.root  # under MPI, rank 0 plans and writes; see charlm.session
        budget = self._plan_budget()
        self.budget = budget = budget if root else None
        self.callbacks.on_start(self)
        window_loss, window_steps, window_t = 0.0, 0, time.perf_counter()
        loss = math.nan
        while True:
            signal, plan = self.session.agree(self._plan_step, self.stop_signal)  # any rank's signal, rank 0's plan
            self.stop_signal = self.stop_signal if signal is None else signal  # one caught during agree() is kept
            if plan is None:
                break
            progress, last, self.total_steps = plan
            t0 = time.perf_counter()
            try:
                loss = self.train_step(progress)
            except WorkerError as e:  # the step is lost, the model is as the last completed step left it
                if self.stop_signal is None:
                    raise self._worker_lost(e) from None
                self.callbacks.on_warning(f"warning: {str(e).rstrip('.')}; the step in progress was dropped.")
                break
            self.session.stepped(last)  # under MPI the others now wait for rank 0's next plan
            window_loss += loss
            window_steps += 1
            self.callbacks.on_step(self, loss)
            if budget is not None:
                budget.note_step(time.perf_counter() - t0)
            if self.step % c.eval_every == 0:  # under MPI every rank scores its rows of the held-out text
                rate = window_steps * self.chars_per_step / max(time.perf_counter() - window_t, 1e-9)
                self.validation.evaluate(window_loss / window_steps, rate)
                window_loss, window_steps, window_t = 0.0, 0, time.perf_counter()
            if last:
                break
        if self.stop_signal is not None:
            self.elapsed = self.clock()
            if self.saved_step != self.step:
                self.save(self.folder.last)
        else:
            if window_steps or not self.history:
                rate = window_steps * self.chars_per_step / max(time.perf_counter() - window_t, 1e-9)
                self.validation.evaluate(window_loss / max(window_steps, 1) if window_steps else loss, rate)
            self.validation.validate_whole()
        summary = self._summary()
        self.callbacks.on_end(self, summary)
        return summary

    def _summary(self) -> TrainSummary:
        v = self.validation
        return TrainSummary(
            self.run_dir,
            self.step,
            self.step * self.chars_per_step,
            self.elapsed,
            self.train_seconds,
            v.best_val,
            v.best_step,
            self.history[-1]["train_loss"] if self.history else math.nan,
            self.history,
            self.stop_signal,
            v.final_chars,
        )

    def _worker_lost(self, e: WorkerError) -> WorkerError:
        """After a worker was lost: the last completed step saved (if any), and the error to raise."""
        what = str(e).rstrip(".")
        if self.step == 0:
            return WorkerError(f"{what}. No training step had completed, so nothing is saved.")
        if self.saved_step != self.step:
            self.elapsed = self.clock()
            self.save(self.folder.last)
        kept = f"{what}. The workers were ended; step {self.step} is saved in {self.folder.last}"
        details = {"what": what, "step": self.step, "path": self.folder.last, "run_dir": self.run_dir}
        return WorkerError(f"{kept}, from which the run can resume.", kind="worker_lost", **details)

    def diverged(self, what: str, step: int) -> TrainingDiverged:
        """The one-line report of a numerical blow-up: what, when, what survives, what to try."""
        c = self.config
        advice = f"try a lower learning rate (now {c.lr:g}) or a lower clipping norm (now {c.clip:g})"
        if self.saved_step is None:
            kept = f"No checkpoint had been written yet; {advice}"
        else:
            kept = (
                f"The last good checkpoint, {self.folder.last} (step {self.saved_step}), is kept; "
                f"{advice}, from scratch or by resuming the run in {self.run_dir}"
            )
        return TrainingDiverged(
            f"training diverged at step {step}: {what}. {kept}.",
            kind="diverged",
            step=step,
            what=what,
            lr=c.lr,
            clip=c.clip,
            kept=None if self.saved_step is None else self.folder.last,
            kept_step=self.saved_step,
            run_dir=self.run_dir,
        )

    def train_step(self, progress: float | None = None) -> float:
        """One optimizer step. ``progress``: the fraction of a time budget's training time
        used by the end of this step, which sets the learning rate (None: the step
        count does, see ``total_steps``)."""
        c = self.config
        t0 = time.perf_counter()
        x, y = self.stream.batch(self.position)
        loss, self.state = self.stepper.loss_and_grads(x, y, self.state, rng=self.rng)
        norm = clip_grad_norm_(self.model.grad_flat, c.clip)
        if not (math.isfinite(loss) and math.isfinite(norm)):
            what = "the training loss" if not math.isfinite(loss) else "the gradient norm"
            raise self.diverged(f"{what} is not finite", self.step + 1)
        if progress is None:
            total = self.total_steps if self.total_steps is not None else self.step + 1
            self.lr = learning_rate(self.step, total, c.lr, c.warmup, c.final_lr_frac)
        else:
            self.lr = timed_learning_rate(self.step, progress, c.lr, c.warmup, c.final_lr_frac)
        self.optimizer.step(self.model.flat, self.model.grad_flat, self.lr, run=self.stepper.run_all)
        self.step += 1
        self.position += 1
        if self.position >= self.stream.steps_per_epoch:
            self.position = 0
            self.epoch += 1
            self.state = self.model.zero_state(c.batch_size)
        self.train_seconds += time.perf_counter() - t0
        return loss

    # -- checkpoints -------------------------------------------------------------------

    def train_state(self) -> TrainState:
        v = self.validation
        return TrainState(
            step=self.step,
            epoch=self.epoch,
            position=self.position,
            total_steps=self.total_steps,
            best_val=v.best_val if math.isfinite(v.best_val) else None,
            best_step=v.best_step,
            best_sample_val=v.best_sample if math.isfinite(v.best_sample) else None,
            chars_seen=self.step * self.chars_per_step,
            elapsed=self.elapsed,
            train_seconds=self.train_seconds,
            adam_t=self.optimizer.t,
            rng=self.rng.bit_generator.state,
            config=self.config,
            val_curve=v.val_curve,
        )

    def save(self, path: Path, warm: bool = False) -> None:
        """Write a resumable checkpoint (atomically). Refuses non-finite weights, so a
        blow-up can never replace the last good checkpoint. With ``warm`` it also holds
        the sampler's warmed-up state, so that sampling from it starts at once. Under
        MPI only rank 0 writes; the other ranks hold the same weights."""
        if not self.session.root:
            return
        if not (np.isfinite(self.model.flat).all() and np.isfinite(self.optimizer.v).all()):
            raise self.diverged("the weights are no longer finite numbers", self.step)
        t0 = time.perf_counter()
        extra = {"optimizer.exp_avg": self.optimizer.m, "optimizer.exp_avg_sq": self.optimizer.v}
        for layer, parts in enumerate(self.state):
            for name, arr in zip(self.model.rnn[layer].state_names, parts, strict=True):
                extra[f"state.{name}_l{layer}"] = arr
        warmed = warmed_state(self.model, self.vocab) if warm else None
        checkpoint.save(path, self.model, self.vocab, self.train_state(), self.corpus, extra, warmed=warmed)
        if Path(path).name == "last.safetensors":
            self.saved_step = self.step
        if self.budget is not None:
            self.budget.note_save(time.perf_counter() - t0)

    def restore(self, ckpt: checkpoint.Checkpoint) -> None:
        """Continue from a checkpoint written by ``save``: weights θ, Adam's m, v and t,
        step, epoch, data position, carried state (a<t>, c<t> per layer), schedule
        length, best validation losses, clocks and the dropout RNG's exact state."""
        t, extra, where = ckpt.state, ckpt.extra, ckpt.path
        B, n = self.config.batch_size, self.model.num_params
        state = []
        for layer, cell in enumerate(self.model.rnn):
            parts = [extra.get(f"state.{name}_l{layer}") for name in cell.state_names]
            if any(p is None or p.shape != (B, self.model.config.hidden) for p in parts):
                raise CheckpointError(f"{where}: the carried state is missing or mis-shaped, so it cannot be resumed.")
            state.append(tuple(np.array(p, dtype=self.model.dtype) for p in parts))  # (B, H) each
        m, v = extra.get("optimizer.exp_avg"), extra.get("optimizer.exp_avg_sq")
        if m is None or v is None or m.shape != (n,) or v.shape != (n,):
            raise CheckpointError(f"{where}: the optimizer state is missing or mis-shaped, so it cannot be resumed.")
        try:
            if t is None or not (0 <= t.position < self.stream.steps_per_epoch and t.step >= 0 and t.epoch >= 0):
                raise ValueError
            self.rng.bit_generator.state = t.rng
        except (KeyError, TypeError, ValueError):
            raise CheckpointError(f"{where}: the training state is damaged, so it cannot be resumed.") from None
        self.model.load_params(ckpt.params)
        self.optimizer.m[...] = m
        self.optimizer.v[...] = v
        self.optimizer.t = t.adam_t
        self.state = state
        self.step, self.epoch, self.position = t.step, t.epoch, t.position
        self.total_steps = t.total_steps
        val = self.validation
        val.best_val = math.inf if t.best_val is None else float(t.best_val)
        # written before the sample existed: its best validation was the one compared with
        sample = t.best_sample_val if t.best_sample_val is not None else t.best_val
        val.best_sample = math.inf if sample is None else float(sample)
        val.best_step = t.best_step
        self.elapsed, self.train_seconds = float(t.elapsed), float(t.train_seconds)
        val.val_curve = [[s, v] for s, v in t.val_curve if s <= t.step]
        if where is not None and where.name == "last.safetensors" and where.parent == self.run_dir:
            self.saved_step = t.step
