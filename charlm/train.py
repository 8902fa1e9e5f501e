"""The training loop: truncated BPTT with carried state, Adam, clipping, evaluation.

The loop knows nothing about progress bars: it reports to a ``Callbacks``
object, and the CLI attaches a display. One step is

    loss, grads = model(chunk k of every stream, carried state)
    ‖grads‖ clipped to ``clip``;  Adam step with the scheduled learning rate
    state ← final state of the chunk (gradients do not flow across chunks)

Every ``eval_every`` steps a fixed sample of the held-out text (``VAL_SAMPLE``
characters spread over it, see ``evaluate.score_sample``) is scored and the
run folder records it (``charlm.runs.RunFolder``: ``last.safetensors``,
``best.safetensors`` if validation improved, then a ``metrics.jsonl`` line).
When the budget is used up, the final weights are validated on the sample if
they were not yet, and the best weights once on the whole held-out text (up to
``val_chars``): that figure is the run's ``best_val``, in the summary and in
both checkpoints.

Budget: a budget in steps or epochs fixes the schedule's length in steps. A budget in
minutes covers the whole run, start-up to exit; ``charlm.budget`` decides when
the last step is and drives the learning-rate schedule by the fraction of the
training time used, so the decay always finishes.

Safety: SIGINT and SIGTERM are caught while the loop runs (``charlm.signals``);
the current step finishes, ``last.safetensors`` is written (atomically) and the
summary says which signal stopped the run. A non-finite loss, gradient norm,
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
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from charlm import checkpoint
from charlm.budget import RunClock, TimeBudget
from charlm.config import ModelConfig, TrainConfig, TrainState
from charlm.corpus import Corpus, load_corpus
from charlm.data import BatchStream
from charlm.errors import CharlmError, CheckpointError, TrainingDiverged
from charlm.evaluate import Score, pass_step_seconds, score_ids, score_sample, scoring_steps
from charlm.model import CharModel
from charlm.optim import Adam, clip_grad_norm_, learning_rate, timed_learning_rate
from charlm.parallel import DataParallel, default_workers
from charlm.runs import RunFolder
from charlm.signals import signals_call
from charlm.vocab import Vocab

VAL_SAMPLE = 16_384  # held-out characters validated during a run, spread over the held-out text


class Callbacks:
    """Hooks the training loop calls; override what you need. ``show_reading`` asks
    for progress bars while the corpus is read; ``on_notice`` gets one-line notices
    from preparing a run (e.g. where a large corpus is cached)."""

    show_reading = False

    def on_notice(self, text: str) -> None: ...

    def on_start(self, trainer: Trainer) -> None: ...

    def on_step(self, trainer: Trainer, loss: float) -> None: ...

    def on_eval(self, trainer: Trainer, record: dict) -> None: ...

    def on_final(self, trainer: Trainer, record: dict) -> None:
        """After the best weights were validated on the whole held-out text (``record``
        holds step, best_step, best_val_loss, val_chars: the characters predicted, elapsed)."""

    def on_end(self, trainer: Trainer, summary: TrainSummary) -> None: ...


@dataclass
class TrainSummary:
    run_dir: Path
    steps: int
    chars_seen: int
    elapsed: float  # seconds of the run from start-up, validations and checkpoints included
    train_seconds: float  # seconds spent in training steps
    best_val: float  # nats/char, on the val_chars held-out characters once the run has ended
    best_step: int
    final_train: float
    history: list[dict] = field(default_factory=list)
    interrupted: int | None = None  # the signal that stopped the run early (0: request_stop), else None
    val_chars: int = 0  # held-out characters best_val was measured on (0: not yet, the run was interrupted)

    @property
    def best_val_bits(self) -> float:
        return self.best_val / math.log(2)


class Trainer:
    def __init__(
        self,
        model: CharModel,
        corpus: Corpus,
        config: TrainConfig,
        run_dir: Path,
        callbacks: Callbacks | None = None,
        started: float | None = None,
    ) -> None:
        """``started``: ``time.perf_counter()`` at this session's start-up, from which a
        budget in minutes counts (default: now)."""
        self.started: float | None = time.perf_counter() if started is None else started
        self.model = model
        self.vocab: Vocab = corpus.vocab
        self.config = config
        self.folder = RunFolder(run_dir)
        self.run_dir = self.folder.path
        self.corpus = corpus.fingerprint()
        self.callbacks = callbacks or Callbacks()
        self.stream = BatchStream(corpus.train_ids, config.batch_size, config.seq_len)
        val_ids = corpus.val_ids
        self.held_out = len(val_ids)  # characters held out; validation reads the first val_chars of them
        self.val_ids = val_ids[: config.val_chars] if config.val_chars else val_ids
        self.sample_chars = min(VAL_SAMPLE, max(0, len(self.val_ids) - 1))  # targets validated during the run
        self.optimizer = Adam(model.num_params, model.dtype)
        workers = config.threads or default_workers(config.batch_size)
        self.stepper = DataParallel(model, workers)  # loss_and_grads over row blocks on the cores
        self.rng = np.random.default_rng(config.seed + 1)  # dropout
        self.state = model.zero_state(config.batch_size)  # carried a<t> (and c<t>) per layer, (B, H) each
        self.step = 0  # optimizer steps taken
        self.position = 0  # next chunk within the epoch
        self.epoch = 0
        self.best_val = math.inf  # the run's figure: whole held-out text once ended, else the sample's
        self.best_sample = math.inf  # best validation on the sample, what each validation is compared with
        self.best_step = 0
        self.elapsed = 0.0  # run clock: seconds since the run started, validations and saves included
        self.train_seconds = 0.0  # seconds in training steps only
        self.step_limit = self.planned_steps()  # the steps or epochs budget, in steps (None: minutes only)
        self.total_steps = self.step_limit  # steps the schedule spans (under a time budget, an estimate)
        self.budget: TimeBudget | None = None  # the plan of a budget in minutes, made by run()
        self.clock = RunClock(0.0, self.started)  # run() sets the session's clock
        self.history: list[dict] = []  # metrics records of this session
        self.val_curve: list[list[float]] = []  # [step, val loss] of every validation of the run
        self.lr = 0.0
        self.stop_signal: int | None = None  # set by SIGINT/SIGTERM or request_stop()
        self.saved_step: int | None = None  # step of the newest last.safetensors written
        self.notes: list[str] = []  # what resuming decided, for the CLI to show
        self.changed: dict[str, tuple] = {}  # setting → (stored, new) that resuming changed
        self.final_chars = 0  # held-out characters the final validation read (0: not run)

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
    def chars_per_step(self) -> int:
        return self.config.batch_size * self.config.seq_len

    # -- loop -------------------------------------------------------------------------

    def request_stop(self, signum: int = 0) -> None:
        """Stop after the current step and write last.safetensors (what SIGINT and
        SIGTERM do; a callback may call it too). The first request wins."""
        if self.stop_signal is None:
            self.stop_signal = signum

    def run(self) -> TrainSummary:
        """Train until the budget runs out or a stop is requested; see the module docstring."""
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
                self.stepper.close()  # the worker processes; a later run() starts them again

    def _plan_budget(self) -> TimeBudget | None:
        """The plan of a budget in minutes, with a first measure of a validation pass's speed."""
        c = self.config
        if c.minutes is None:
            return None
        n = len(self.val_ids)
        budget = TimeBudget(
            c.minutes * 60.0, self.clock, scoring_steps(n, self.sample_chars), scoring_steps(n) if n > 1 else 0
        )
        if n > 1:
            budget.note_validation(pass_step_seconds(self.model), 1)
        return budget

    def _loop(self) -> TrainSummary:
        c = self.config
        self.budget = budget = self._plan_budget()
        self.callbacks.on_start(self)
        window_loss, window_steps, window_t = 0.0, 0, time.perf_counter()
        loss = math.nan
        while self.stop_signal is None:
            if self.step_limit is not None and self.step >= self.step_limit:
                break
            progress, last = None, False
            if budget is not None:
                plan = budget.plan(validate_after=(self.step + 1) % c.eval_every == 0)
                if plan is None:
                    break
                progress, last = plan
                self.total_steps = self.step + 1 + (0 if last else budget.steps_left())
                if self.step_limit is not None:  # a budget in steps as well: the schedule follows the tighter
                    progress = max(progress, (self.step + 1) / self.step_limit)
                    last = last or self.step + 1 >= self.step_limit
                    self.total_steps = min(self.total_steps, self.step_limit)
            t0 = time.perf_counter()
            loss = self.train_step(progress)
            window_loss += loss
            window_steps += 1
            self.callbacks.on_step(self, loss)
            if budget is not None:
                budget.note_step(time.perf_counter() - t0)
            if self.step % c.eval_every == 0:
                rate = window_steps * self.chars_per_step / max(time.perf_counter() - window_t, 1e-9)
                self.evaluate(window_loss / window_steps, rate)
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
                self.evaluate(window_loss / max(window_steps, 1) if window_steps else loss, rate)
            self.validate_whole()
        summary = self._summary()
        self.callbacks.on_end(self, summary)
        return summary

    def _summary(self) -> TrainSummary:
        return TrainSummary(
            self.run_dir,
            self.step,
            self.step * self.chars_per_step,
            self.elapsed,
            self.train_seconds,
            self.best_val,
            self.best_step,
            self.history[-1]["train_loss"] if self.history else math.nan,
            self.history,
            self.stop_signal,
            self.final_chars,
        )

    def _diverged(self, what: str, step: int) -> TrainingDiverged:
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
            raise self._diverged(f"{what} is not finite", self.step + 1)
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

    def _validate(self, whole: bool) -> Score | None:
        """The score of the held-out sample (or of all of it), None without held-out text;
        the time it took goes into the budget's plan."""
        n = len(self.val_ids)
        if n <= 1:
            return None
        t0 = time.perf_counter()
        score = score_ids(self.model, self.val_ids) if whole else score_sample(self.model, self.val_ids, VAL_SAMPLE)
        if not math.isfinite(score.nats_per_char):
            raise self._diverged("the validation loss is not finite", self.step)
        if self.budget is not None:
            self.budget.note_validation(time.perf_counter() - t0, scoring_steps(n, None if whole else VAL_SAMPLE))
        return score

    def evaluate(self, train_loss: float, chars_per_s: float) -> dict:
        """Validate on the held-out sample and record it: metrics line, last.safetensors,
        best.safetensors if the sample's loss improved."""
        score = self._validate(whole=False)
        val = math.nan if score is None else score.nats_per_char
        self.elapsed = self.clock()
        record = {
            "step": self.step,
            "epoch": round(self.step / self.stream.steps_per_epoch, 4),
            "chars": self.step * self.chars_per_step,
            "train_loss": round(train_loss, 6),
            "val_loss": round(val, 6),
            "val_chars": 0 if score is None else score.chars,
            "lr": self.lr,
            "chars_per_s": round(chars_per_s, 1),
            "elapsed": round(self.elapsed, 2),
        }
        self.history.append(record)
        self.val_curve.append([self.step, round(val, 5)])
        # With no held-out text (val is NaN) the newest weights are the best we know.
        improved = math.isnan(val) or val < self.best_sample
        if improved and not math.isnan(val):
            self.best_sample = self.best_val = val
        if improved:
            self.best_step = self.step
        self.folder.record(self.save, record, improved)
        self.callbacks.on_eval(self, record)
        return record

    def validate_whole(self) -> dict | None:
        """The end of a run: validate the best weights (those of best.safetensors) on all
        the held-out text, make that the run's best_val, and write it into best.safetensors,
        last.safetensors and a last metrics line (with best_step, best_val_loss, val_chars)."""
        if self.budget is not None:
            self.total_steps = self.step  # the schedule has run to its end
        if len(self.val_ids) <= 1:
            self.elapsed = self.clock()
            return None
        if not self.folder.best.is_file():  # removed by hand: the final weights are the best there are
            self.best_step = self.step
        earlier = self.best_step != self.step
        if earlier:  # the best weights are those of an earlier validation: score them, then go back
            best = checkpoint.load(self.folder.best)
            current = self.model.flat.copy()
            self.model.load_params(best.params)
        try:
            score = self._validate(whole=True)
        finally:
            if earlier:
                self.model.flat[...] = current
        assert score is not None
        self.best_val = score.nats_per_char
        self.final_chars = len(self.val_ids)
        self.elapsed = self.clock()
        record = {
            "step": self.step,
            "best_step": self.best_step,
            "best_val_loss": round(self.best_val, 6),
            "val_chars": score.chars,
            "elapsed": round(self.elapsed, 2),
        }
        if earlier:
            self._rewrite_best(best)
        else:
            self.save(self.folder.best)
        self.save(self.folder.last)
        self.folder.log(record)
        self.callbacks.on_final(self, record)
        return record

    def _rewrite_best(self, best: checkpoint.Checkpoint) -> None:
        """best.safetensors again, as it was but with the whole held-out text's best_val."""
        state = replace(best.state, best_val=self.best_val, best_sample_val=self.best_sample)
        current = self.model.flat.copy()
        self.model.load_params(best.params)
        try:
            t0 = time.perf_counter()
            checkpoint.save(self.folder.best, self.model, self.vocab, state, self.corpus, best.extra)
            if self.budget is not None:
                self.budget.note_save(time.perf_counter() - t0)
        finally:
            self.model.flat[...] = current

    # -- checkpoints -------------------------------------------------------------------

    def train_state(self) -> TrainState:
        return TrainState(
            step=self.step,
            epoch=self.epoch,
            position=self.position,
            total_steps=self.total_steps,
            best_val=self.best_val if math.isfinite(self.best_val) else None,
            best_step=self.best_step,
            best_sample_val=self.best_sample if math.isfinite(self.best_sample) else None,
            chars_seen=self.step * self.chars_per_step,
            elapsed=self.elapsed,
            train_seconds=self.train_seconds,
            adam_t=self.optimizer.t,
            rng=self.rng.bit_generator.state,
            config=self.config,
            val_curve=self.val_curve,
        )

    def save(self, path: Path) -> None:
        """Write a resumable checkpoint (atomically). Refuses non-finite weights, so a
        blow-up can never replace the last good checkpoint."""
        if not (np.isfinite(self.model.flat).all() and np.isfinite(self.optimizer.v).all()):
            raise self._diverged("the weights are no longer finite numbers", self.step)
        t0 = time.perf_counter()
        extra = {"optimizer.exp_avg": self.optimizer.m, "optimizer.exp_avg_sq": self.optimizer.v}
        for layer, parts in enumerate(self.state):
            for name, arr in zip(self.model.rnn[layer].state_names, parts, strict=True):
                extra[f"state.{name}_l{layer}"] = arr
        checkpoint.save(path, self.model, self.vocab, self.train_state(), self.corpus, extra)
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
        self.best_val = math.inf if t.best_val is None else float(t.best_val)
        # written before the sample existed: its best validation was the one compared with
        sample = t.best_sample_val if t.best_sample_val is not None else t.best_val
        self.best_sample = math.inf if sample is None else float(sample)
        self.best_step = t.best_step
        self.elapsed, self.train_seconds = float(t.elapsed), float(t.train_seconds)
        self.val_curve = [[s, v] for s, v in t.val_curve if s <= t.step]
        if where is not None and where.name == "last.safetensors" and where.parent == self.run_dir:
            self.saved_step = t.step


def new_model(config: ModelConfig, vocab: Vocab, seed: int) -> CharModel:
    """A freshly initialised model of ``config``'s shape for ``vocab``'s characters."""
    return CharModel(replace(config, vocab_size=len(vocab)), seed=seed)


def prepare_run(
    corpus_path: Path,
    run_dir: Path,
    model_config: ModelConfig,
    config: TrainConfig,
    callbacks: Callbacks | None = None,
    started: float | None = None,
) -> Trainer:
    """Check both configs, read and check a corpus, build the vocabulary and model,
    and return a Trainer (see ``build_trainer``)."""
    model_config.check()
    config.check()
    return build_trainer(corpus_path, run_dir, model_config, config, callbacks, started)


def build_trainer(
    corpus_path: Path,
    run_dir: Path,
    model_config: ModelConfig,
    config: TrainConfig,
    callbacks: Callbacks | None = None,
    started: float | None = None,
) -> Trainer:
    """A Trainer for a new model of ``model_config``'s shape on the corpus at ``corpus_path``.

    Everything that can be wrong with the input is found here, before the run
    folder is created. The corpus is streamed, never held as one string (see
    ``corpus.load_corpus``); ``callbacks`` may ask for progress bars while it is
    read and receives one-line notices. ``started``: ``time.perf_counter()`` at the
    session's start-up, from which a budget in minutes counts (default: now, before
    the corpus is read).
    """
    started = time.perf_counter() if started is None else started
    callbacks = callbacks or Callbacks()
    corpus = load_corpus(Path(corpus_path), config, progress=callbacks.show_reading, report=callbacks.on_notice)
    model = new_model(model_config, corpus.vocab, config.seed)
    return Trainer(model, corpus, config, run_dir, callbacks, started)
