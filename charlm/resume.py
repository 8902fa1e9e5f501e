"""Continuing a run exactly where it stopped.

The path is straight: the checkpoint is read once into typed objects (model
config, training state with its settings, vocabulary, corpus fingerprint); the
settings given for this session are merged into them by field name; the corpus
is read as before and checked against the fingerprint; the Trainer restores
the weights, Adam's moments, carried state and RNG. Everything is checked
before anything on disk changes.
"""

from __future__ import annotations

from dataclasses import asdict, replace
from pathlib import Path

from charlm import checkpoint, memory
from charlm.config import TrainConfig, WordConfig
from charlm.corpus import text_form
from charlm.errors import CheckpointError, CorpusError, UsageError
from charlm.prepare import build_trainer
from charlm.runfolder import RunFolder
from charlm.train import Callbacks, Trainer

# Settings a resumed run keeps from its checkpoint (a different value is refused) …
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
# … settings it may change (threads: bit-exact only with the same worker count) …
CHANGEABLE_ON_RESUME = ("lr", "clip", "eval_every", "threads")
# … budgets, any of which replaces all stored ones, and how the corpus is read.
BUDGETS = ("steps", "epochs", "minutes")
READING = ("encoding", "errors", "normalize", "keep_cr")
RESUME_SETTINGS = (*FIXED_ON_RESUME, *CHANGEABLE_ON_RESUME, *BUDGETS, *READING)


def merge_settings(
    ckpt: checkpoint.Checkpoint | checkpoint.Metadata, given: dict
) -> tuple[TrainConfig, dict[str, tuple]]:
    """The training settings of the resumed session and what changed (setting →
    (stored, new)). ``given`` holds only the settings given for this session, by
    field name. Rules:

    * model and data layout come from the checkpoint; a setting among
      ``FIXED_ON_RESUME`` that contradicts it is refused (``UsageError``);
    * ``lr``, ``clip``, ``eval_every`` and ``threads`` may change;
    * budget: none given → the stored one continues, so the learning-rate
      schedule goes on exactly; ``steps`` / ``epochs`` → new totals counted from
      the start of the run; ``minutes`` → minutes of additional training. Any
      budget given replaces all stored ones. Minutes count on the run's clock
      (``TrainState.elapsed``), so the session ends M minutes after its start-up;
    * ``encoding`` / ``errors`` default to how the corpus was read before;
      ``normalize`` / ``keep_cr`` are the run's (its fingerprint's text form; raw
      for a checkpoint that records none), and a different value is refused.
    """
    state, corpus = ckpt.state, ckpt.corpus
    config = state.config
    stored = {**asdict(config), **asdict(ckpt.config)}
    for key in FIXED_ON_RESUME:
        if key in given and given[key] != stored[key]:
            raise UsageError(
                f"{key} {given[key]} differs from this run's {stored[key]}: a resumed run keeps its model and data "
                "settings. Leave it out, or start a new run.",
                kind="fixed_on_resume",
                setting=key,
                given=given[key],
                stored=stored[key],
            )
    changed = {k: (stored[k], given[k]) for k in CHANGEABLE_ON_RESUME if k in given and given[k] != stored[k]}
    config = replace(config, **{k: new for k, (_, new) in changed.items()})
    form = text_form(corpus)
    reading = {
        "encoding": (corpus.encoding if corpus else None) or "utf-8",
        "errors": (corpus.errors if corpus else None) or "strict",
        "normalize": form.nfc,
        "keep_cr": not form.crlf_as_lf,
    }
    for key in ("normalize", "keep_cr"):
        if key in given and given[key] != reading[key]:
            how = "NFC-normalized" if form.nfc else "not normalized"
            how += ", \\r\\n read as \\n" if form.crlf_as_lf else ", \\r\\n kept"
            raise UsageError(
                f"this run read its text {how}; a resumed run reads it the same way. Leave the setting out, "
                "or start a new run.",
                kind="form_on_resume",
                setting=key,
                given=given[key],
                how=how,
            )
    config = replace(config, **{k: given.get(k, reading[k]) for k in READING})
    budget = {k: given[k] for k in BUDGETS if k in given}
    if budget:
        minutes = state.elapsed / 60.0 + budget["minutes"] if "minutes" in budget else None
        config = replace(config, steps=budget.get("steps"), epochs=budget.get("epochs"), minutes=minutes)
    if "steps" in budget and config.steps <= state.step:
        raise UsageError(
            f"a budget of {config.steps} steps is not more than the {state.step:,} steps this run has taken; on "
            "resume the step budget counts from the start of the run. Give a larger one, or a budget in minutes "
            "to train that much longer.",
            kind="resume_steps",
            steps=config.steps,
            done=state.step,
        )
    return config, changed


def resume_run(
    checkpoint_path: Path,
    corpus_path: Path,
    given: dict | None = None,
    callbacks: Callbacks | None = None,
    started: float | None = None,
    lock: bool = True,
) -> Trainer:
    """A Trainer that continues the run ``checkpoint_path`` belongs to, in its folder.
    ``given``: the settings given for this session, by field name (see ``merge_settings``).
    The corpus must be the same text (sha256) with the same vocabulary. ``started``:
    as for ``build_trainer``, the session's start-up, from which its minutes count.

    The run folder is locked (``RunFolder.lock``) before the checkpoint is read, so
    that no other process trains there while this one continues from what it read;
    the Trainer holds the lock until its run ends. Without ``lock`` (an MPI rank other
    than 0, which never writes) the folder is only read."""
    given = {k: v for k, v in (given or {}).items() if v is not None}
    if set(given) - set(RESUME_SETTINGS):
        raise ValueError(f"resume_run: unknown settings {sorted(set(given) - set(RESUME_SETTINGS))}")
    folder = RunFolder(Path(checkpoint_path).parent)
    if lock and folder.path.is_dir():  # else there is no checkpoint to read, and load says so
        folder.lock()
    try:
        return _resume_locked(Path(checkpoint_path), folder, corpus_path, given, callbacks, started)
    except BaseException:
        folder.release()
        raise


def _resume_locked(
    checkpoint_path: Path,
    folder: RunFolder,
    corpus_path: Path,
    given: dict,
    callbacks: Callbacks | None,
    started: float | None,
) -> Trainer:
    where = checkpoint_path
    header, meta = checkpoint.read_header(where)  # the header only: nothing large is read before the checks
    stored = checkpoint.read_metadata(where, header, meta)
    state = stored.state
    if state is None or state.config is None or state.rng is None or "optimizer.exp_avg" not in header:
        raise CheckpointError(
            f"{where}: holds weights only, without the training state, so it cannot be resumed. "
            "Start a new run instead.",
            kind="weights_only",
            path=where,
        )
    config, changed = merge_settings(stored, given)
    config.check()  # the model config is the stored one, as it was built
    c = stored.corpus  # the same text, or refused below
    ids = ((c.tokens if c.tokens is not None else c.chars) or 0) if c is not None else 0
    memory.check_training(stored.config, config, len(stored.vocab), ids, resuming=True)
    ckpt = checkpoint.load(where, memory_for=None)
    words = words_of(ckpt.vocab)
    trainer = build_trainer(corpus_path, folder, ckpt.config, config, callbacks, started, False, words)
    check_same_text(trainer, ckpt, corpus_path)
    trainer.restore(ckpt)
    step, elapsed = state.step, state.elapsed
    if any(k in given for k in BUDGETS):
        trainer.total_steps = trainer.step_limit  # a budget in minutes is planned as the session goes
    check_budget_left(trainer, given, step, elapsed)
    trainer.notes = [f"resuming {where} at step {step:,} (epoch {step / trainer.stream.steps_per_epoch:.2f})"]
    trainer.changed = changed
    return trainer


def check_same_text(trainer: Trainer, ckpt: checkpoint.Checkpoint, corpus_path: Path) -> None:
    """Refuse a corpus other than the one the run was trained on."""
    stored = ckpt.corpus
    run = ckpt.path.parent
    if stored is None or trainer.corpus.sha256 != stored.sha256:
        name, chars = (stored.name, stored.chars) if stored is not None else (None, None)
        raise CorpusError(
            f"{corpus_path}: this text differs from the one the run in {run} was trained on "
            f"({name or '?'}, {chars or 0:,} characters). Resume with that same text, or start a new run.",
            kind="other_corpus",
            corpus=corpus_path,
            run=run,
            name=name or "?",
            chars=chars or 0,
        )
    if trainer.vocab != ckpt.vocab:
        raise CorpusError(
            f"{corpus_path}: its vocabulary differs from the run's, though the text is the same; this checkpoint "
            "was written by another charlm version. Start a new run.",
            kind="other_vocab",
            corpus=corpus_path,
        )


def check_budget_left(trainer: Trainer, given: dict, step: int, elapsed: float) -> None:
    """Refuse to resume a run whose budget is already used up."""
    config = trainer.config
    done = trainer.total_steps is not None and step >= trainer.total_steps  # a timed run that ended: total = step
    if not (done or (config.minutes is not None and elapsed >= config.minutes * 60.0)):
        return
    epochs_done = step / trainer.stream.steps_per_epoch
    if any(k in given for k in BUDGETS) and config.epochs is not None:
        raise UsageError(
            f"a budget of {config.epochs:g} epochs is not more than the {epochs_done:.2f} epochs this run has "
            "done; on resume the epoch budget counts from the start of the run. Give a larger value.",
            kind="resume_epochs",
            epochs=config.epochs,
            done=epochs_done,
        )
    raise UsageError(
        f"the run in {trainer.run_dir} has already used its budget ({step:,} steps). To train on, give a larger "
        "budget of steps or epochs (counted from the start of the run), or a number of minutes more.",
        kind="budget_used",
        run=trainer.run_dir,
        steps=step,
    )


def words_of(vocab) -> WordConfig | None:
    """The word settings that rebuild a word model's vocabulary from its text (None: characters):
    its size, which the text has at least as many distinct tokens as, and its case policy."""
    if vocab.unit != "word":
        return None
    return WordConfig(vocab_size=len(vocab.words), lowercase=vocab.lowercase)
