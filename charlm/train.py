"""The training loop: truncated BPTT with carried state, Adam, clipping, evaluation.

The loop knows nothing about progress bars: it reports to a ``Callbacks``
object, and the CLI attaches a display. One step is

    loss, grads = model(chunk k of every stream, carried state)
    ‖grads‖ clipped to ``clip``;  Adam step with the scheduled learning rate
    state ← final state of the chunk (gradients do not flow across chunks)

Every ``eval_every`` steps the held-out text is scored (see ``evaluate``) and
the run folder records it (``charlm.runs.RunFolder``: ``last.safetensors``,
``best.safetensors`` if validation improved, then a ``metrics.jsonl`` line).

Safety: SIGINT and SIGTERM are caught while the loop runs (``charlm.signals``);
the current step finishes, ``last.safetensors`` is written (atomically) and the
summary says which signal stopped the run. A non-finite loss, gradient norm,
validation loss or weight stops training with ``TrainingDiverged`` before
anything is written, so the checkpoints on disk are always the last good ones.
``charlm.resume`` rebuilds a Trainer from ``last.safetensors`` (``restore``) —
weights, Adam moments, step, epoch, data position, carried state a<t>/c<t>,
schedule and the dropout RNG — so that a run stopped and resumed ends
bit-identical to one that never stopped.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from charlm import checkpoint
from charlm.config import ModelConfig, TrainConfig, TrainState
from charlm.corpus import Corpus, load_corpus
from charlm.data import BatchStream
from charlm.errors import CharlmError, CheckpointError, TrainingDiverged
from charlm.evaluate import score_ids
from charlm.model import CharModel
from charlm.optim import Adam, clip_grad_norm_, learning_rate
from charlm.parallel import DataParallel, default_workers
from charlm.runs import RunFolder
from charlm.signals import signals_call
from charlm.vocab import Vocab


class Callbacks:
    """Hooks the training loop calls; override what you need. ``show_reading`` asks
    for progress bars while the corpus is read; ``on_notice`` gets one-line notices
    from preparing a run (e.g. where a large corpus is cached)."""

    show_reading = False

    def on_notice(self, text: str) -> None: ...

    def on_start(self, trainer: Trainer) -> None: ...

    def on_step(self, trainer: Trainer, loss: float) -> None: ...

    def on_eval(self, trainer: Trainer, record: dict) -> None: ...

    def on_end(self, trainer: Trainer, summary: TrainSummary) -> None: ...


@dataclass
class TrainSummary:
    run_dir: Path
    steps: int
    chars_seen: int
    elapsed: float  # seconds spent in the loop, evaluations included
    train_seconds: float  # seconds spent in training steps
    best_val: float  # nats/char
    best_step: int
    final_train: float
    history: list[dict] = field(default_factory=list)
    interrupted: int | None = None  # the signal that stopped the run early (0: request_stop), else None

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
    ) -> None:
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
        self.optimizer = Adam(model.num_params, model.dtype)
        workers = config.threads or default_workers(config.batch_size)
        self.stepper = DataParallel(model, workers)  # loss_and_grads over row blocks on the cores
        self.rng = np.random.default_rng(config.seed + 1)  # dropout
        self.state = model.zero_state(config.batch_size)  # carried a<t> (and c<t>) per layer, (B, H) each
        self.step = 0  # optimizer steps taken
        self.position = 0  # next chunk within the epoch
        self.epoch = 0
        self.best_val = math.inf
        self.best_step = 0
        self.elapsed = 0.0  # seconds in the loop, validation included
        self.train_seconds = 0.0  # seconds in training steps only
        self.total_steps = self.planned_steps()
        self.history: list[dict] = []  # metrics records of this session
        self.val_curve: list[list[float]] = []  # [step, val loss] of every validation of the run
        self.lr = 0.0
        self.stop_signal: int | None = None  # set by SIGINT/SIGTERM or request_stop()
        self.saved_step: int | None = None  # step of the newest last.safetensors written
        self.notes: list[str] = []  # what resuming decided, for the CLI to show
        self.changed: dict[str, tuple] = {}  # setting → (stored, new) that resuming changed

    # -- budget --------------------------------------------------------------------

    def planned_steps(self, sec_per_step: float | None = None) -> int | None:
        """Steps the learning-rate schedule spans: the tightest of the budgets.
        A budget in minutes needs a measured step time; until then it is None."""
        c = self.config
        plans = []
        if c.steps is not None:
            plans.append(c.steps)
        if c.epochs is not None:
            plans.append(max(1, int(c.epochs * self.stream.steps_per_epoch)))
        if c.minutes is not None and sec_per_step:
            left = c.minutes * 60.0 - self.elapsed
            plans.append(self.step + max(1, int(left / sec_per_step)))
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

    def _loop(self) -> TrainSummary:
        c = self.config
        self.callbacks.on_start(self)
        deadline = None if c.minutes is None else c.minutes * 60.0
        t0 = time.perf_counter() - self.elapsed
        window_loss, window_steps, window_t = 0.0, 0, time.perf_counter()
        loss = math.nan
        while True:
            if self.stop_signal is not None:
                break
            self.elapsed = time.perf_counter() - t0
            if self.total_steps is not None and self.step >= self.total_steps:
                break
            if deadline is not None and self.elapsed >= deadline:
                break
            loss = self.train_step()
            window_loss += loss
            window_steps += 1
            self.callbacks.on_step(self, loss)
            if c.minutes is not None and (self.step == 20 or self.step % c.eval_every == 0):
                self.elapsed = time.perf_counter() - t0
                self.total_steps = self.planned_steps(self.elapsed / self.step)
            if self.step % c.eval_every == 0:
                now = time.perf_counter()
                rate = window_steps * self.chars_per_step / max(now - window_t, 1e-9)
                self.elapsed = now - t0
                self.evaluate(window_loss / window_steps, rate)
                window_loss, window_steps, window_t = 0.0, 0, time.perf_counter()
        self.elapsed = time.perf_counter() - t0
        if self.stop_signal is not None:
            if self.saved_step != self.step:
                self.save(self.folder.last)
        elif window_steps or not self.history:
            rate = window_steps * self.chars_per_step / max(time.perf_counter() - window_t, 1e-9)
            self.evaluate(window_loss / max(window_steps, 1) if window_steps else loss, rate)
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

    def train_step(self) -> float:
        c = self.config
        t0 = time.perf_counter()
        x, y = self.stream.batch(self.position)
        loss, self.state = self.stepper.loss_and_grads(x, y, self.state, rng=self.rng)
        norm = clip_grad_norm_(self.model.grad_flat, c.clip)
        if not (math.isfinite(loss) and math.isfinite(norm)):
            what = "the training loss" if not math.isfinite(loss) else "the gradient norm"
            raise self._diverged(f"{what} is not finite", self.step + 1)
        total = self.total_steps if self.total_steps is not None else self.step + 1
        self.lr = learning_rate(self.step, total, c.lr, c.warmup, c.final_lr_frac)
        self.optimizer.step(self.model.flat, self.model.grad_flat, self.lr, run=self.stepper.run_all)
        self.step += 1
        self.position += 1
        if self.position >= self.stream.steps_per_epoch:
            self.position = 0
            self.epoch += 1
            self.state = self.model.zero_state(c.batch_size)
        self.train_seconds += time.perf_counter() - t0
        return loss

    def evaluate(self, train_loss: float, chars_per_s: float) -> dict:
        val = score_ids(self.model, self.val_ids).nats_per_char if len(self.val_ids) > 1 else math.nan
        if len(self.val_ids) > 1 and not math.isfinite(val):
            raise self._diverged("the validation loss is not finite", self.step)
        record = {
            "step": self.step,
            "epoch": round(self.step / self.stream.steps_per_epoch, 4),
            "chars": self.step * self.chars_per_step,
            "train_loss": round(train_loss, 6),
            "val_loss": round(val, 6),
            "lr": self.lr,
            "chars_per_s": round(chars_per_s, 1),
            "elapsed": round(self.elapsed, 2),
        }
        self.history.append(record)
        self.val_curve.append([self.step, round(val, 5)])
        # With no held-out text (val is NaN) the newest weights are the best we know.
        improved = math.isnan(val) or val < self.best_val
        if improved and not math.isnan(val):
            self.best_val, self.best_step = val, self.step
        self.folder.record(self.save, record, improved)
        self.callbacks.on_eval(self, record)
        return record

    # -- checkpoints -------------------------------------------------------------------

    def train_state(self) -> TrainState:
        return TrainState(
            step=self.step,
            epoch=self.epoch,
            position=self.position,
            total_steps=self.total_steps,
            best_val=self.best_val if math.isfinite(self.best_val) else None,
            best_step=self.best_step,
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
        extra = {"optimizer.exp_avg": self.optimizer.m, "optimizer.exp_avg_sq": self.optimizer.v}
        for layer, parts in enumerate(self.state):
            for name, arr in zip(self.model.rnn[layer].state_names, parts, strict=True):
                extra[f"state.{name}_l{layer}"] = arr
        checkpoint.save(path, self.model, self.vocab, self.train_state(), self.corpus, extra)
        if Path(path).name == "last.safetensors":
            self.saved_step = self.step

    def restore(self, ckpt: checkpoint.Checkpoint) -> None:
        """Continue from a checkpoint written by ``save``: weights θ, Adam's m, v and t,
        step, epoch, data position, carried state (a<t>, c<t> per layer), schedule
        length, best validation loss, clocks and the dropout RNG's exact state."""
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
) -> Trainer:
    """Check both configs, read and check a corpus, build the vocabulary and model,
    and return a Trainer (see ``build_trainer``)."""
    model_config.check()
    config.check()
    return build_trainer(corpus_path, run_dir, model_config, config, callbacks)


def build_trainer(
    corpus_path: Path,
    run_dir: Path,
    model_config: ModelConfig,
    config: TrainConfig,
    callbacks: Callbacks | None = None,
) -> Trainer:
    """A Trainer for a new model of ``model_config``'s shape on the corpus at ``corpus_path``.

    Everything that can be wrong with the input is found here, before the run
    folder is created. The corpus is streamed, never held as one string (see
    ``corpus.load_corpus``); ``callbacks`` may ask for progress bars while it is
    read and receives one-line notices.
    """
    callbacks = callbacks or Callbacks()
    corpus = load_corpus(Path(corpus_path), config, progress=callbacks.show_reading, report=callbacks.on_notice)
    model = new_model(model_config, corpus.vocab, config.seed)
    return Trainer(model, corpus, config, run_dir, callbacks)
