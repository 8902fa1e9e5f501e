"""``charlm train``: options in, a Trainer run, the summary out."""

import shlex
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from typer.core import TyperCommand

from charlm.cli.common import (
    DEFAULT_MINUTES,
    app,
    err,
    flag,
    out,
    user_errors,
    warn_threads_over_cores,
)
from charlm.config import MAX_LAYERS, MAX_WIDTH, UNIT_NAMES, UNITS, WORD_DEFAULTS
from charlm.errors import UsageError, WorkerError

if TYPE_CHECKING:  # imported lazily, so that --help stays instant
    from charlm.config import ModelConfig, TrainConfig, WordConfig
    from charlm.train import Trainer

# --------------------------------------------------------------------------- #
# train
# --------------------------------------------------------------------------- #


class _TrainCommand(TyperCommand):
    """``--resume`` takes an optional value; Typer's parser has no such option kind,
    so a bare ``--resume`` (last, or followed by another option) gets the value ""
    (= the newest run) before parsing."""

    def parse_args(self, ctx, args: list[str]) -> list[str]:
        args = list(args)
        for i, arg in enumerate(args):
            if arg == "--":
                break
            if arg == "--resume" and (i + 1 == len(args) or args[i + 1].startswith("-")):
                args[i] = "--resume="
        return super().parse_args(ctx, args)


@app.command(cls=_TrainCommand)
@user_errors
def train(
    ctx: typer.Context,
    corpus: Annotated[
        str, typer.Argument(help="Text file to learn from, or a shipped corpus name (see 'charlm corpora').")
    ],
    name: Annotated[
        str | None, typer.Option(help="Run name: checkpoints go to OUT/NAME. Default: the corpus name, made unique.")
    ] = None,
    out_dir: Annotated[Path, typer.Option("--out", help="Folder that holds the run folders.")] = Path("runs"),
    unit: Annotated[
        str,
        typer.Option(
            help="What the model reads and predicts: char (characters) or word (the lecture notes' word-level "
            "model: words, numbers and punctuation marks are tokens, <UNK> stands for every word outside the "
            "vocabulary and <EOS> ends each sentence; see the README). A word model's defaults: --embed 200 "
            "--hidden 200 --dropout 0.65 --seq-len 35 --batch-size 32 --val-chars 50000 (tokens), unless given "
            "(chosen by held-out nats/word after a few minutes on news). Recorded in the checkpoint, so sample, "
            "score, perplexity and --resume need no flag."
        ),
    ] = "char",
    vocab_size: Annotated[
        int | None,
        typer.Option(
            "--vocab-size",
            help="Word models: keep the N most frequent tokens of the corpus (ties in code-point order), plus "
            "<UNK> and <EOS>; 1 to 65,534 (ids are 16-bit). Above the corpus's distinct tokens, all of them are "
            "kept, with a notice. Default: 10,000.",
        ),
    ] = None,
    lowercase: Annotated[
        bool | None,
        typer.Option(
            "--lowercase/--no-lowercase",
            help="Word models: lower-case the text before it is split into tokens, so The and the are one word "
            "(as in the notes' vocabulary); sample capitalises sentence starts again. Default: on.",
            show_default=False,
        ),
    ] = None,
    cell: Annotated[
        str,
        typer.Option(
            help="Recurrent cell: lstm, gru (the lecture notes' full GRU) or rnn (vanilla tanh). "
            "Recorded in the checkpoint, so sample, perplexity and --resume need no flag."
        ),
    ] = "lstm",
    layers: Annotated[int, typer.Option(min=1, max=MAX_LAYERS, help="Stacked recurrent layers.")] = 2,
    hidden: Annotated[int, typer.Option(min=1, max=MAX_WIDTH, help="Hidden units per layer (H).")] = 256,
    embed: Annotated[
        int, typer.Option(min=1, max=MAX_WIDTH, help="Embedding width (E) of a character or a word.")
    ] = 64,
    dropout: Annotated[
        float,
        typer.Option(
            help="Dropout probability between layers and before the decoder, 0–0.9. Training only; 0 turns it off "
            "(a short run on a large corpus learns a little faster without). A word model's default: 0.65."
        ),
    ] = 0.2,
    forget_bias: Annotated[
        float,
        typer.Option(
            help="Initial LSTM forget-gate bias b_f, −10–10. 0 (PyTorch's biases are 0 on average) learns text "
            "fastest; 1 keeps c<t> longer from the start and helps dependencies 20+ characters apart.",
        ),
    ] = 0.0,
    batch_size: Annotated[int, typer.Option(min=1, help="Parallel streams per batch (B).")] = 32,
    seq_len: Annotated[
        int,
        typer.Option(
            min=1, help="Characters (tokens for a word model) of back-propagation through time per batch (T)."
        ),
    ] = 64,
    lr: Annotated[
        float, typer.Option(help="Peak Adam learning rate, > 0; it warms up and decays to 10% by the end.")
    ] = 3e-3,
    clip: Annotated[float, typer.Option(help="Maximum global gradient norm, > 0.")] = 5.0,
    val_frac: Annotated[
        float,
        typer.Option(help="Fraction of the text, from its end, held out for validation; in (0, 0.5]."),
    ] = 0.1,
    val_chars: Annotated[
        int,
        typer.Option(
            min=0,
            help="Validate on at most this many characters (tokens for a word model) from the start of the held-out "
            "text (0 = all), so validation stays quick on a large corpus.",
        ),
    ] = 500_000,
    eval_every: Annotated[
        int, typer.Option(min=1, help="Steps between validations (each writes checkpoints and a metrics line).")
    ] = 200,
    steps: Annotated[int | None, typer.Option(min=1, help="Stop after this many optimizer steps.")] = None,
    epochs: Annotated[
        float | None, typer.Option(help="Stop after this many passes over the training text (> 0; fractions allowed).")
    ] = None,
    minutes: Annotated[
        float | None,
        typer.Option(help=f"Stop after this many minutes, > 0. Default: {DEFAULT_MINUTES:g} when no budget is given."),
    ] = None,
    seed: Annotated[
        int, typer.Option(min=0, help="Random seed; with --steps or --epochs a run is exactly reproducible.")
    ] = 0,
    threads: Annotated[
        int,
        typer.Option(
            min=0,
            max=256,
            help="Row blocks of each batch trained in parallel, one per core; 0 = one per CPU core "
            "(each block at least 8 rows). Results are reproducible for a given value. Under MPI: row blocks "
            "per rank (0 = 1).",
        ),
    ] = 0,
    encoding: Annotated[str, typer.Option(help="Text encoding of the corpus file.")] = "utf-8",
    errors: Annotated[
        str, typer.Option(help="What to do with undecodable bytes: strict (stop with an error) or replace.")
    ] = "strict",
    normalize: Annotated[
        bool,
        typer.Option(
            "--normalize/--no-normalize",
            help="NFC-normalize the text as it is read (a decomposed o + U+0308 becomes ö), so one letter is one "
            "character however it was typed; --no-normalize keeps it as it is. Recorded in the checkpoint: "
            "sample, score and perplexity read their text the same way.",
        ),
    ] = True,
    keep_cr: Annotated[
        bool,
        typer.Option(
            "--keep-cr",
            help="Keep \\r\\n (Windows line ends) as two characters; by default \\r\\n is read as \\n. "
            "Recorded in the checkpoint like --normalize.",
        ),
    ] = False,
    resume: Annotated[
        str | None,
        typer.Option(
            "--resume",
            metavar="[RUN]",
            help="Continue a run exactly where it stopped: a run folder (its last.safetensors) or a checkpoint file; "
            "alone, the newest run under --out. CORPUS must be the same text. Model and data options come from "
            "the run; --lr, --clip, --eval-every and --threads may change. With no budget option the run's own budget "
            "goes on; --steps/--epochs are totals counted from the start of the run; --minutes is minutes more.",
        ),
    ] = None,
) -> None:
    """Train a model on a text file; checkpoints go to runs/NAME/.

    --unit word trains the lecture notes' word-level model instead: tokens, <UNK> for
    words outside the --vocab-size most frequent, <EOS> at sentence ends (see the README).

    Ctrl-C (or SIGTERM) stops after the current step, saves last.safetensors and
    prints the command that resumes the run (exit code 130, or 143 for SIGTERM).
    A worker process (--threads) that does not answer within 20 times the slowest
    step (at least 30 seconds, or $CHARLM_WORKER_TIMEOUT) ends the run with the
    last completed step saved (exit code 1).

    Under MPI (mpiexec -n N charlm train ...; needs charlm[mpi]) each of the N ranks
    trains its row block of every batch (--threads: row blocks per rank, default 1);
    rank 0 alone shows progress and writes the run.
    """
    from charlm.config import ModelConfig, TrainConfig
    from charlm.corpora import resolve

    words = _word_settings(ctx, unit, vocab_size, lowercase, resume is not None)
    if words is not None:  # the word model's defaults, where no value was given
        chosen = {
            k: v if ctx.get_parameter_source(k).name == "DEFAULT" else ctx.params[k] for k, v in WORD_DEFAULTS.items()
        }
        embed, hidden, dropout, seq_len, batch_size, val_chars = (
            chosen[k] for k in ("embed", "hidden", "dropout", "seq_len", "batch_size", "val_chars")
        )

    model_config = ModelConfig(0, cell, embed, hidden, layers, dropout, forget_bias)
    config = TrainConfig(
        batch_size=batch_size,
        seq_len=seq_len,
        lr=lr,
        clip=clip,
        val_frac=val_frac,
        val_chars=val_chars,
        eval_every=eval_every,
        steps=steps,
        epochs=epochs,
        minutes=minutes,
        seed=seed,
        threads=threads,
        encoding=encoding,
        errors=errors,
        normalize=normalize,
        keep_cr=keep_cr,
    )
    from charlm.budget import process_started
    from charlm.cli.ranks import start_on_every_rank
    from charlm.session import start_session

    started = process_started()  # --minutes counts from here, the command's start-up
    session = start_session()  # this process alone, or one rank of an MPI job
    if not session.root:  # rank 0 speaks for the job
        err.silence()
        out.silence()
    if session.size > 1 and resume is None:  # before anything is read or made (a resumed run's B is its own)
        from charlm.mpistep import check_rows

        check_rows(batch_size, session.size, threads or 1)

    def build() -> "Trainer":
        path, stem = resolve(corpus)
        if resume is not None:
            return _resume(ctx, resume, name, out_dir, path, started, session.root)
        return _new_run(path, stem, name, out_dir, model_config, config, started, words, session.root)

    trainer = start_on_every_rank(session, build)
    warn_threads_over_cores(threads)
    try:
        summary = trainer.run()
    except WorkerError as e:  # the last completed step is saved: the message says how to go on from it
        if e.kind == "worker_lost":
            e.details.update(corpus=shlex.quote(corpus), run_dir=shlex.quote(str(e.details["run_dir"])))
        raise
    _report_training(summary, corpus, trainer.vocab.unit)


def _new_run(
    path: Path,
    stem: str,
    name: str | None,
    out_dir: Path,
    model_config: "ModelConfig",
    config: "TrainConfig",
    started: float,
    words: "WordConfig | None" = None,
    root: bool = True,
) -> "Trainer":
    """The Trainer of a new run in OUT/NAME; with no budget given, DEFAULT_MINUTES. ``words``: a word model's
    vocabulary settings (None: a character model). Not ``root`` (an MPI rank other than 0): the run folder is
    neither taken nor checked."""
    from dataclasses import replace

    from charlm.callbacks import Callbacks
    from charlm.cli.progress import TrainingDisplay
    from charlm.prepare import build_trainer, prepare_run
    from charlm.runfolder import RunFolder
    from charlm.runs import run_name

    model_config.check()
    config.check()
    if words is not None:
        words.check()
    if config.steps is None and config.epochs is None and config.minutes is None:
        config = replace(config, minutes=DEFAULT_MINUTES)
    if name is not None and (not name.strip() or name in (".", "..") or any(c in name for c in "/\\")):
        raise UsageError(f"--name {name!r}: give a plain folder name (no '/'); the run goes to {out_dir}/NAME.")
    # OUT/NAME, or OUT/<corpus name>, -2, -3, …: the first free one, taken when the folder is locked
    folder = RunFolder(out_dir / name) if name else RunFolder(out_dir / run_name(stem), unique=True)
    if not root:
        return build_trainer(path, folder, model_config, config, Callbacks(), started, words=words)
    if name:
        folder.refuse_overwrite()  # before the corpus is read; prepare_run checks again under the lock
    display = TrainingDisplay(err, show_reading=sys.stderr.isatty(), notices=True)
    return prepare_run(path, folder, model_config, config, display, started, words)


def _resume(
    ctx: typer.Context, resume: str, name: str | None, out_dir: Path, path: Path, started: float, root: bool = True
) -> "Trainer":
    """The Trainer for ``train --resume``: the options given on the command line are passed on.
    Not ``root`` (an MPI rank other than 0): the run folder is not locked, nothing is shown."""
    from charlm.callbacks import Callbacks
    from charlm.cli.progress import TrainingDisplay
    from charlm.resume import RESUME_SETTINGS, resume_run
    from charlm.runs import resume_checkpoint

    if name is not None:
        raise UsageError("--name cannot be combined with --resume: a resumed run continues in its own folder.")
    given = {k: ctx.params[k] for k in RESUME_SETTINGS if ctx.get_parameter_source(k).name != "DEFAULT"}
    target = resume_checkpoint(Path(resume) if resume else None, out_dir)
    callbacks = TrainingDisplay(err) if root else Callbacks()
    trainer = resume_run(target, path, given, callbacks=callbacks, started=started, lock=root)
    for note in trainer.notes:
        err.print(note, markup=False)
    for setting, (stored, new) in trainer.changed.items():
        err.print(f"resuming with {flag(setting)} {new:g} (was {stored:g})", markup=False)
    return trainer


def _report_training(summary, corpus: str, unit: str = "char") -> None:
    """The end-of-run summary on stdout; after a signal, the resume command on stderr and exit 128 + signal."""
    from charlm.report import human_count, human_duration, perplexity_text

    if summary.interrupted is not None:
        command = f"charlm train {shlex.quote(corpus)} --resume {shlex.quote(str(summary.run_dir))}"
        err.print(f"interrupted at step {summary.steps}; resume with: {command}", markup=False)
        raise typer.Exit(128 + summary.interrupted)
    best = summary.run_dir / "best.safetensors"
    u = UNIT_NAMES[unit]
    on = f" on all {summary.val_chars:,} held-out {u.many}" if summary.val_chars else ""
    out.print(
        f"best validation loss {summary.best_val:.4f} nats/{u.one} ({summary.best_val_bits:.4f} bits/{u.one}, "
        f"perplexity {perplexity_text(summary.best_val)}) at step {summary.best_step:,}{on}"
    )
    share = summary.train_seconds / summary.elapsed if summary.elapsed > 0 else 0.0
    out.print(
        f"trained {summary.steps:,} step{'' if summary.steps == 1 else 's'} ({human_count(summary.chars_seen)} {u.many}) "
        f"in {human_duration(summary.elapsed)}, {share:.0%} of it in training steps at "
        f"{summary.chars_seen / max(summary.train_seconds, 1e-9):,.0f} {u.short}/s"
    )
    out.print(f"checkpoint: {best}")
    out.print(f"sample from it: charlm sample --checkpoint {best}")


def _word_settings(
    ctx: typer.Context, unit: str, vocab_size: int | None, lowercase: bool | None, resuming: bool
) -> "WordConfig | None":
    """The word model's vocabulary settings (None: a character model); the word options are
    refused with a character model, and with --resume (a resumed run keeps its own)."""
    from charlm.config import WordConfig

    if ctx.get_parameter_source("lowercase").name == "DEFAULT":  # not given (a flag pair's default may read False)
        lowercase = None
    if resuming:
        given = [
            f
            for k, f in (("unit", "--unit"), ("vocab_size", "--vocab-size"), ("lowercase", "--lowercase"))
            if ctx.get_parameter_source(k).name != "DEFAULT"
        ]
        if given:
            raise UsageError(
                f"{'/'.join(given)} cannot be combined with --resume: a resumed run keeps its unit and vocabulary, "
                "which its checkpoint records. Drop it."
            )
        return None
    if unit not in UNITS:
        raise UsageError(f"--unit {unit!r}: choose char (characters) or word (words, <UNK> and <EOS>).")
    if unit == "word":
        defaults = WordConfig()
        return WordConfig(
            defaults.vocab_size if vocab_size is None else vocab_size,
            defaults.lowercase if lowercase is None else lowercase,
        ).check()
    if vocab_size is not None:
        raise UsageError(
            "--vocab-size is for word models (--unit word); a character model's vocabulary is every character "
            "of its text. Drop it, or add --unit word."
        )
    if lowercase is not None:
        flag_given = "--lowercase" if lowercase else "--no-lowercase"
        raise UsageError(
            f"{flag_given} is for word models (--unit word); a character model keeps its text as it is. "
            "Drop it, or add --unit word."
        )
    return None
