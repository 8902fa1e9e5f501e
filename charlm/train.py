"""The training loop: truncated BPTT with carried state, Adam, clipping, evaluation.

The loop knows nothing about progress bars: it reports to a ``Callbacks``
object, and the CLI attaches a display. One step is

    loss, grads = model(chunk k of every stream, carried state)
    ‖grads‖ clipped to ``clip``;  Adam step with the scheduled learning rate
    state ← final state of the chunk (gradients do not flow across chunks)

Every ``eval_every`` steps the held-out text is scored (see ``evaluate``), a
line is appended to ``metrics.jsonl``, ``last.safetensors`` is written and, if
validation improved, ``best.safetensors`` too.

Safety: SIGINT and SIGTERM are caught while the loop runs; the current step
finishes, ``last.safetensors`` is written (atomically) and the summary says
which signal stopped the run. A non-finite loss, gradient norm, validation
loss or weight stops training with ``TrainingDiverged`` before anything is
written, so the checkpoints on disk are always the last good ones.
``resume_run`` rebuilds a Trainer from ``last.safetensors`` — weights, Adam
moments, step, epoch, data position, carried state a<t>/c<t>, schedule and
the dropout RNG — so that a run stopped and resumed ends bit-identical to one
that never stopped.
"""

from __future__ import annotations

import json
import math
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import numpy as np

from charlm import checkpoint
from charlm.config import ModelConfig, TrainConfig
from charlm.data import BatchStream
from charlm.errors import CharlmError, CheckpointError, CorpusError, UsageError
from charlm.evaluate import score_ids
from charlm.model import CharModel
from charlm.optim import Adam, clip_grad_norm_, learning_rate
from charlm.parallel import DataParallel, default_workers
from charlm.vocab import Vocab


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
    interrupted: int | None = None  # the signal that stopped the run early (0: request_stop), else None

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
        self.held_out = len(val_ids)  # characters held out; validation reads the first val_chars of them
        self.val_ids = val_ids[: config.val_chars] if config.val_chars else val_ids
        self.optimizer = Adam(model.num_params, model.dtype)
        workers = config.threads or default_workers(config.batch_size)
        self.stepper = DataParallel(model, workers)  # loss_and_grads over row blocks on the cores
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
        self.history: list[dict] = []  # metrics records of this session
        self.val_curve: list[list[float]] = []  # [step, val loss] of every validation of the run
        self.lr = 0.0
        self.stop_signal: int | None = None  # set by SIGINT/SIGTERM or request_stop()
        self.saved_step: int | None = None  # step of the newest last.safetensors written
        self.notes: list[str] = []  # what resume_run decided, for the CLI to show

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

    def request_stop(self, signum: int = 0) -> None:
        """Stop after the current step and write last.safetensors (what SIGINT and
        SIGTERM do; a callback may call it too). The first request wins."""
        if self.stop_signal is None:
            self.stop_signal = signum

    def _on_signal(self, signum: int, frame) -> None:
        self.request_stop(signum)

    def _catch_signals(self) -> dict:
        """Route SIGINT and SIGTERM to request_stop; returns the previous handlers.
        Only the main thread may set handlers; elsewhere nothing is installed."""
        if threading.current_thread() is not threading.main_thread():
            return {}
        previous = {}
        for sig in (signal.SIGINT, signal.SIGTERM):
            previous[sig] = signal.getsignal(sig)
            signal.signal(sig, self._on_signal)
        return previous

    def run(self) -> TrainSummary:
        """Train until the budget runs out or a stop is requested; see the module docstring."""
        created = not self.run_dir.exists()
        try:
            self.run_dir.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise CharlmError(
                f"cannot create the run folder {self.run_dir} ({e.strerror or e}). Choose another --out folder."
            ) from None
        checkpoint.remove_stale_temps(self.run_dir)
        if self.step:
            self._trim_metrics()
        previous = self._catch_signals()
        try:
            # Overflow on the way to a blow-up is caught as a non-finite loss, not warned about.
            with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
                return self._loop()
        except CharlmError:  # diverged, or a checkpoint could not be written: close the display first
            self.callbacks.on_end(self, self._summary())
            if created and not any(self.run_dir.iterdir()):
                self.run_dir.rmdir()  # a run that wrote nothing leaves no folder behind
            raise
        finally:  # restored only now: a second Ctrl-C during the final save just sets the flag again
            self.stepper.close()  # the worker processes; a later run() starts them again
            for sig, handler in previous.items():
                signal.signal(sig, handler if handler is not None else signal.SIG_DFL)

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
                self.total_steps = self._planned_steps(self.elapsed / self.step)
            if self.step % c.eval_every == 0:
                now = time.perf_counter()
                rate = window_steps * self.chars_per_step / max(now - window_t, 1e-9)
                self.elapsed = now - t0
                self.evaluate(window_loss / window_steps, rate)
                window_loss, window_steps, window_t = 0.0, 0, time.perf_counter()
        self.elapsed = time.perf_counter() - t0
        if self.stop_signal is not None:
            if self.saved_step != self.step:
                self.save(self.run_dir / "last.safetensors")
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
        advice = f"try a lower --lr (now {c.lr:g}) or a lower --clip (now {c.clip:g})"
        if self.saved_step is None:
            kept = f"No checkpoint had been written yet; {advice}"
        else:
            kept = (
                f"The last good checkpoint, {self.run_dir / 'last.safetensors'} (step {self.saved_step}), is kept; "
                f"{advice}, from scratch or with --resume {self.run_dir}"
            )
        return TrainingDiverged(f"training diverged at step {step}: {what}. {kept}.")

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
        self.save(self.run_dir / "last.safetensors")
        if improved:
            self.save(self.run_dir / "best.safetensors")
        # After the checkpoints: every metrics line has a checkpoint at or after its step.
        try:
            with open(self.run_dir / "metrics.jsonl", "a", encoding="utf-8") as f:
                f.write(json.dumps(record) + "\n")
        except OSError as e:
            raise CharlmError(
                f"cannot write {self.run_dir / 'metrics.jsonl'} ({e.strerror or e}); the checkpoints of step "
                f"{self.step} are saved. Free some space or choose another --out folder."
            ) from None
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
            "val_curve": self.val_curve,
        }

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
        t, extra, where = ckpt.train, ckpt.extra, ckpt.path
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
            position, step, epoch = int(t["position"]), int(t["step"]), int(t["epoch"])
            if not (0 <= position < self.stream.steps_per_epoch and step >= 0 and epoch >= 0):
                raise ValueError
            self.rng.bit_generator.state = t["rng"]
            adam_t = int(t["adam_t"])
            total = t["total_steps"]
            best_val = math.inf if t.get("best_val") is None else float(t["best_val"])
            best_step, elapsed = int(t.get("best_step", 0)), float(t.get("elapsed", 0.0))
            train_seconds = float(t.get("train_seconds", 0.0))
            val_curve = [[int(a), float(b)] for a, b in t.get("val_curve", []) if int(a) <= step]
        except (KeyError, TypeError, ValueError):
            raise CheckpointError(f"{where}: the training state is damaged, so it cannot be resumed.") from None
        self.model.load_params(ckpt.params)
        self.optimizer.m[...] = m
        self.optimizer.v[...] = v
        self.optimizer.t = adam_t
        self.state = state
        self.step, self.epoch, self.position = step, epoch, position
        self.total_steps = None if total is None else int(total)
        self.best_val, self.best_step = best_val, best_step
        self.elapsed, self.train_seconds = elapsed, train_seconds
        self.val_curve = val_curve
        if where is not None and where.name == "last.safetensors" and where.parent == self.run_dir:
            self.saved_step = step

    def _trim_metrics(self) -> None:
        """On resume, drop metrics lines from after the resumed step (a future that was
        abandoned, e.g. by a kill) and any torn last line, so the log stays one history."""
        path = self.run_dir / "metrics.jsonl"
        if not path.is_file():
            return
        try:
            lines = path.read_text(encoding="utf-8", errors="replace").splitlines(keepends=True)
            keep = []
            for line in lines:
                try:
                    ok = line.endswith("\n") and json.loads(line)["step"] <= self.step
                except (ValueError, KeyError, TypeError):
                    ok = False
                if ok:
                    keep.append(line)
            if len(keep) != len(lines):
                checkpoint.atomic_write(path, "".join(keep).encode("utf-8"))
        except OSError as e:
            raise CharlmError(f"cannot update {path} ({e.strerror or e}); the run is unchanged.") from None


def new_model(
    vocab: Vocab, cell: str, embed: int, hidden: int, layers: int, dropout: float, forget_bias: float, seed: int
) -> CharModel:
    return CharModel(ModelConfig(len(vocab), cell, embed, hidden, layers, dropout, forget_bias), seed=seed)


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
    forget_bias: float = 0.0,
    encoding: str = "utf-8",
    errors: str = "strict",
    callbacks: Callbacks | None = None,
    progress: bool = False,
    report: Callable[[str], None] | None = None,
) -> Trainer:
    """Read and check a corpus, build the vocabulary and model, and return a Trainer.

    Everything that can be wrong with the input is found here, before the run
    folder is created. The corpus is streamed, never held as one string (see
    ``data.load_corpus``): ``progress`` shows tqdm bars on stderr while it is read,
    ``report`` receives one-line notices (e.g. where a large corpus is cached).
    """
    from charlm.data import load_corpus
    from charlm.model import CELLS

    if cell not in CELLS:
        raise UsageError(f"unknown cell {cell!r}; choose one of: {', '.join(CELLS)}.")
    corpus = load_corpus(
        Path(corpus_path),
        encoding,
        errors,
        val_frac=config.val_frac,
        batch_size=config.batch_size,
        seq_len=config.seq_len,
        progress=progress,
        report=report,
    )
    model = new_model(corpus.vocab, cell, embed, hidden, layers, dropout, forget_bias, config.seed)
    return Trainer(model, corpus.vocab, corpus.train_ids, corpus.val_ids, config, run_dir, corpus.info(), callbacks)


FIXED_ON_RESUME = (
    "cell",
    "layers",
    "hidden",
    "embed",
    "dropout",
    "forget_bias",
    "batch_size",
    "seq_len",
    "val_frac",
    "val_chars",
    "seed",
)
CHANGEABLE_ON_RESUME = ("lr", "clip", "eval_every", "threads")  # threads: bit-exact only with the same worker count
BUDGETS = ("steps", "epochs", "minutes")


def _flag(key: str) -> str:
    return "--" + key.replace("_", "-")


def resume_run(
    checkpoint_path: Path,
    corpus_path: Path,
    options: dict | None = None,
    callbacks: Callbacks | None = None,
) -> Trainer:
    """A Trainer that continues the run ``checkpoint_path`` belongs to, in its folder.

    ``options`` holds only the settings given explicitly for this session, by
    their CLI names with underscores. Rules:

    * model and data layout come from the checkpoint; an option among
      ``FIXED_ON_RESUME`` that contradicts it is refused (``UsageError``);
    * ``lr``, ``clip``, ``eval_every`` and ``threads`` may change; ``trainer.notes`` says so;
    * budget: none given → the stored one continues, so the learning-rate
      schedule goes on exactly; ``steps`` / ``epochs`` → new totals counted from
      the start of the run (they must exceed what is done); ``minutes`` →
      minutes of additional training. Any budget given replaces all stored ones;
    * ``encoding`` / ``errors`` default to how the corpus was read before;
    * the corpus must be the same text (sha256) with the same vocabulary.

    Everything is checked before anything on disk changes.
    """
    options = {k: v for k, v in (options or {}).items() if v is not None}
    known = (*FIXED_ON_RESUME, *CHANGEABLE_ON_RESUME, *BUDGETS, "encoding", "errors")
    if set(options) - set(known):
        raise ValueError(f"resume_run: unknown options {sorted(set(options) - set(known))}")
    ckpt = checkpoint.load(Path(checkpoint_path))
    where, t = ckpt.path, ckpt.train
    if not isinstance(t.get("config"), dict) or "optimizer.exp_avg" not in ckpt.extra or "rng" not in t:
        raise CheckpointError(
            f"{where}: holds weights only, without the training state, so it cannot be resumed. "
            "Start a new run (without --resume)."
        )
    try:
        config = TrainConfig(**{f.name: t["config"][f.name] for f in fields(TrainConfig) if f.name in t["config"]})
    except TypeError:
        raise CheckpointError(f"{where}: the training settings are damaged, so it cannot be resumed.") from None
    mc = ckpt.config
    stored = {**asdict(config), **asdict(mc)}
    for key in FIXED_ON_RESUME:
        if key in options and options[key] != stored[key]:
            raise UsageError(
                f"{_flag(key)} {options[key]} differs from this run's {stored[key]}: a resumed run keeps its model "
                f"and data settings. Drop {_flag(key)}, or start a new run without --resume."
            )
    notes = []
    for key in CHANGEABLE_ON_RESUME:
        if key in options and options[key] != stored[key]:
            notes.append(f"resuming with {_flag(key)} {options[key]:g} (was {stored[key]:g})")
            setattr(config, key, options[key])
    step, elapsed = int(t.get("step", 0)), float(t.get("elapsed", 0.0))
    budget = {k: options[k] for k in BUDGETS if k in options}
    if budget:
        config.steps, config.epochs = budget.get("steps"), budget.get("epochs")
        config.minutes = elapsed / 60.0 + budget["minutes"] if "minutes" in budget else None
    if "steps" in budget and config.steps <= step:
        raise UsageError(
            f"--steps {config.steps} is not more than the {step:,} steps this run has taken; on resume --steps "
            f"counts from the start of the run. Give a larger --steps, or --minutes M to train M minutes more."
        )
    corpus = ckpt.corpus
    trainer = prepare_run(
        corpus_path,
        where.parent,
        config,
        cell=mc.cell,
        layers=mc.layers,
        hidden=mc.hidden,
        embed=mc.embed,
        dropout=mc.dropout,
        forget_bias=mc.forget_bias,
        encoding=options.get("encoding", corpus.get("encoding", "utf-8")),
        errors=options.get("errors", corpus.get("errors", "strict")),
        callbacks=callbacks,
    )
    if trainer.corpus.get("sha256") != corpus.get("sha256"):
        raise CorpusError(
            f"{corpus_path}: this text differs from the one the run in {where.parent} was trained on "
            f"({corpus.get('name', '?')}, {corpus.get('chars', 0):,} characters). Resume with that same text, "
            "or start a new run without --resume."
        )
    if trainer.vocab != ckpt.vocab:
        raise CorpusError(
            f"{corpus_path}: its vocabulary differs from the run's, though the text is the same; this checkpoint "
            "was written by another charlm version. Start a new run without --resume."
        )
    trainer.restore(ckpt)
    if budget:
        trainer.total_steps = trainer._planned_steps(elapsed / step if step else None)
    done = trainer.total_steps is not None and step >= trainer.total_steps
    if done or (config.minutes is not None and elapsed >= config.minutes * 60.0):
        if budget and config.epochs is not None:
            raise UsageError(
                f"--epochs {config.epochs:g} is not more than the {step / trainer.stream.steps_per_epoch:.2f} epochs "
                "this run has done; on resume --epochs counts from the start of the run. Give a larger value."
            )
        raise UsageError(
            f"the run in {where.parent} has already used its budget ({step:,} steps). To train on, give a "
            "larger --steps or --epochs (counted from the start of the run), or --minutes M for M more minutes."
        )
    trainer.notes = [
        f"resuming {where} at step {step:,} (epoch {step / trainer.stream.steps_per_epoch:.2f})",
        *notes,
    ]
    return trainer
