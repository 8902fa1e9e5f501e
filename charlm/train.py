"""The training loop: truncated BPTT with carried state, Adam, clipping, evaluation.

The loop knows nothing about progress bars: it reports to a ``Callbacks``
object, and the CLI attaches a display. One step is

    loss, grads = model(chunk k of every stream, carried state)
    ‖grads‖ clipped to ``clip``;  Adam step with the scheduled learning rate
    state ← final state of the chunk (gradients do not flow across chunks)

Every ``eval_every`` steps the held-out text is scored (see ``evaluate``), a
line is appended to ``metrics.jsonl``, ``last.safetensors`` is written and, if
validation improved, ``best.safetensors`` too.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from charlm import checkpoint
from charlm.data import BatchStream
from charlm.errors import CharlmError
from charlm.evaluate import score_ids
from charlm.model import CharModel, ModelConfig
from charlm.optim import Adam, clip_grad_norm_, learning_rate
from charlm.vocab import Vocab


@dataclass
class TrainConfig:
    batch_size: int = 32  # B: parallel streams per batch
    seq_len: int = 64  # T: steps of back-propagation through time
    lr: float = 3e-3  # peak Adam learning rate
    clip: float = 5.0  # maximum global gradient norm
    val_frac: float = 0.1  # held-out tail of the corpus
    eval_every: int = 200  # steps between validations
    steps: int | None = None  # budget: optimizer steps
    epochs: float | None = None  # budget: passes over the training text
    minutes: float | None = None  # budget: wall-clock minutes of training
    seed: int = 0  # initialisation, dropout and everything random
    warmup: int = 50  # steps of linear learning-rate warm-up
    final_lr_frac: float = 0.1  # learning rate at the end, as a fraction of lr


class Callbacks:
    """Hooks the training loop calls; override what you need."""

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

    @property
    def best_val_bits(self) -> float:
        return self.best_val / math.log(2)


class TrainingDiverged(CharlmError):
    """The loss or gradient stopped being finite."""


class Trainer:
    def __init__(
        self,
        model: CharModel,
        vocab: Vocab,
        train_ids: np.ndarray,
        val_ids: np.ndarray,
        config: TrainConfig,
        run_dir: Path,
        corpus: dict | None = None,
        callbacks: Callbacks | None = None,
    ) -> None:
        self.model = model
        self.vocab = vocab
        self.config = config
        self.run_dir = Path(run_dir)
        self.corpus = corpus or {}
        self.callbacks = callbacks or Callbacks()
        self.stream = BatchStream(train_ids, config.batch_size, config.seq_len)
        self.val_ids = val_ids
        self.optimizer = Adam(model.num_params, model.dtype)
        self.rng = np.random.default_rng(config.seed + 1)  # dropout
        self.state = model.zero_state(config.batch_size)
        self.step = 0  # optimizer steps taken
        self.position = 0  # next chunk within the epoch
        self.epoch = 0
        self.best_val = math.inf
        self.best_step = 0
        self.elapsed = 0.0  # seconds in the loop, validation included
        self.train_seconds = 0.0  # seconds in training steps only
        self.total_steps = self._planned_steps()
        self.history: list[dict] = []
        self.lr = 0.0

    # -- budget --------------------------------------------------------------------

    def _planned_steps(self, sec_per_step: float | None = None) -> int | None:
        """Steps the learning-rate schedule spans: the tightest of the budgets.
        A --minutes budget needs a measured step time; until then it is None."""
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

    def run(self) -> TrainSummary:
        c = self.config
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.callbacks.on_start(self)
        deadline = None if c.minutes is None else c.minutes * 60.0
        t0 = time.perf_counter() - self.elapsed
        window_loss, window_steps, window_t = 0.0, 0, time.perf_counter()
        loss = math.nan
        while True:
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
                self.total_steps = self._planned_steps(self.elapsed / self.step)
            if self.step % c.eval_every == 0:
                now = time.perf_counter()
                rate = window_steps * self.chars_per_step / max(now - window_t, 1e-9)
                self.elapsed = now - t0
                self.evaluate(window_loss / window_steps, rate)
                window_loss, window_steps, window_t = 0.0, 0, time.perf_counter()
        self.elapsed = time.perf_counter() - t0
        if window_steps or not self.history:
            rate = window_steps * self.chars_per_step / max(time.perf_counter() - window_t, 1e-9)
            self.evaluate(window_loss / max(window_steps, 1) if window_steps else loss, rate)
        summary = TrainSummary(
            self.run_dir,
            self.step,
            self.step * self.chars_per_step,
            self.elapsed,
            self.train_seconds,
            self.best_val,
            self.best_step,
            self.history[-1]["train_loss"] if self.history else math.nan,
            self.history,
        )
        self.callbacks.on_end(self, summary)
        return summary

    def train_step(self) -> float:
        c = self.config
        t0 = time.perf_counter()
        x, y = self.stream.batch(self.position)
        loss, self.state = self.model.loss_and_grads(x, y, self.state, rng=self.rng)
        norm = clip_grad_norm_(self.model.grad_flat, c.clip)
        if not (math.isfinite(loss) and math.isfinite(norm)):
            what = "loss" if not math.isfinite(loss) else "gradient norm"
            raise TrainingDiverged(
                f"training diverged at step {self.step + 1}: the {what} is not finite. "
                f"The last good checkpoint is in {self.run_dir}; try a lower --lr (now {c.lr:g}) "
                f"or a lower --clip (now {c.clip:g})."
            )
        total = self.total_steps if self.total_steps is not None else self.step + 1
        self.lr = learning_rate(self.step, total, c.lr, c.warmup, c.final_lr_frac)
        self.optimizer.step(self.model.flat, self.model.grad_flat, self.lr)
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
        # With no held-out text (val is NaN) the newest weights are the best we know.
        improved = math.isnan(val) or val < self.best_val
        if improved and not math.isnan(val):
            self.best_val, self.best_step = val, self.step
        with open(self.run_dir / "metrics.jsonl", "a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")
        self.save(self.run_dir / "last.safetensors")
        if improved:
            self.save(self.run_dir / "best.safetensors")
        self.callbacks.on_eval(self, record)
        return record

    # -- checkpoints -------------------------------------------------------------------

    def train_state(self) -> dict:
        return {
            "step": self.step,
            "epoch": self.epoch,
            "position": self.position,
            "total_steps": self.total_steps,
            "best_val": self.best_val if math.isfinite(self.best_val) else None,
            "best_step": self.best_step,
            "chars_seen": self.step * self.chars_per_step,
            "elapsed": self.elapsed,
            "train_seconds": self.train_seconds,
            "adam_t": self.optimizer.t,
            "rng": self.rng.bit_generator.state,
            "config": asdict(self.config),
        }

    def save(self, path: Path) -> None:
        extra = {"optimizer.exp_avg": self.optimizer.m, "optimizer.exp_avg_sq": self.optimizer.v}
        for layer, parts in enumerate(self.state):
            for name, arr in zip(self.model.rnn[layer].state_names, parts, strict=True):
                extra[f"state.{name}_l{layer}"] = arr
        checkpoint.save(path, self.model, self.vocab, self.train_state(), self.corpus, extra)


def new_model(vocab: Vocab, cell: str, embed: int, hidden: int, layers: int, dropout: float, seed: int) -> CharModel:
    return CharModel(ModelConfig(len(vocab), cell, embed, hidden, layers, dropout), seed=seed)


def prepare_run(
    corpus_path: Path,
    run_dir: Path,
    config: TrainConfig,
    *,
    cell: str = "lstm",
    layers: int = 2,
    hidden: int = 256,
    embed: int = 64,
    dropout: float = 0.0,
    encoding: str = "utf-8",
    errors: str = "strict",
    callbacks: Callbacks | None = None,
) -> Trainer:
    """Read and check a corpus, build the vocabulary and model, and return a Trainer.

    Everything that can be wrong with the input is found here, before the run
    folder is created.
    """
    from charlm.data import fingerprint, read_text, split_text
    from charlm.model import CELLS

    if cell not in CELLS:
        raise CharlmError(f"unknown cell {cell!r}; choose one of: {', '.join(CELLS)}.")
    text = read_text(Path(corpus_path), encoding, errors)
    train_text, val_text = split_text(text, config.val_frac)
    vocab = Vocab.from_text(text)
    needed = config.batch_size * config.seq_len + 1
    if len(train_text) < needed:
        raise CharlmError(
            f"{corpus_path}: {len(train_text):,} training characters after holding out "
            f"{config.val_frac:g} for validation; one batch of --batch-size {config.batch_size} × "
            f"--seq-len {config.seq_len} needs at least {needed:,}. Use a longer text or smaller values."
        )
    train_ids = vocab.encode(train_text).ids
    val_ids = vocab.encode(val_text).ids
    model = new_model(vocab, cell, embed, hidden, layers, dropout, config.seed)
    corpus = {
        "name": Path(corpus_path).name,
        "sha256": fingerprint(text),
        "chars": len(text),
        "val_chars": len(val_text),
    }
    return Trainer(model, vocab, train_ids, val_ids, config, run_dir, corpus, callbacks)
