"""What every command shares: the Typer app, the two consoles, one-line errors and the model options."""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Annotated

import typer

from charlm.cli.help import HelpTyper
from charlm.cli.output import LazyConsole, stderr_console, stdout_console
from charlm.errors import CharlmError, ConfigError, UsageError

app = HelpTyper(
    name="charlm",
    help="Train a character-level language model on any text, sample from it, and score text.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode="rich",
)
err = LazyConsole(stderr_console)  # progress, warnings and errors
out = LazyConsole(stdout_console)  # results

DEFAULT_MINUTES = 10.0


def fail(message: str, code: int = 1) -> None:
    """``error: <message>`` as one line on stderr (the message is never read as markup), then exit ``code``."""
    from rich.markup import escape

    err.print(f"[bold red]error:[/] {escape(' '.join(str(message).splitlines()))}", markup=True)
    raise typer.Exit(code)


def notice(message: str) -> None:
    """A one-line notice on stderr."""
    err.print(message, markup=False)


# Config fields whose flag is not "--" + the field name with "-" for "_".
FLAG_OF_SETTING: dict[str, str] = {}


def flag(setting: str) -> str:
    """The command-line flag of a config field: lr → --lr, batch_size → --batch-size."""
    return FLAG_OF_SETTING.get(setting, "--" + setting.replace("_", "-"))


# How the CLI words an error whose advice is a flag: CharlmError.kind → a template
# filled from the error's details (and {flag}, the flag of a "setting" detail).
WORDING: dict[str, str] = {
    "checkpoint_as_text": "{label}: looks like a safetensors model file (a checkpoint), not text. Give the text file "
    "to learn from; checkpoints go to --checkpoint/-c or --resume.",
    "undecodable": "{label}: not valid {encoding} at byte offset {offset} (byte 0x{byte:02x}). Convert it to UTF-8, "
    "or pass --encoding NAME or --errors replace.",
    "codec_refused": "{label}: cannot be read as {encoding} ({reason}). Pass another --encoding "
    "(UTF-16 without a byte-order mark: utf-16-le or utf-16-be).",
    "binary_data": "{label}: binary data, not text (byte 0x{byte:02x} at byte offset {offset} is not valid {encoding}, "
    "and NUL bytes are near it). Give a plain text file.",
    "other_encoding": "{label}: not valid {encoding} at byte offset {offset}; it looks like {guess} text. "
    "Pass --encoding {guess}.",
    "other_encoding_nul": "{label}: contains a NUL byte at byte offset {offset}; it looks like {guess} text. "
    "Pass --encoding {guess}.",
    "nul_byte": "{label}: contains a NUL byte at byte offset {offset}, so it is binary data, not text. Give a plain "
    "text file.",
    "unknown_chars": "{count} character(s) not in the model's vocabulary: {listed}. "
    "Remove them, or use --unknown skip to drop them.",
    "model_not_shipped": "no pretrained {name!r} model is shipped yet. Train one with 'charlm train {corpus}{unit_flag}', "
    "then use --checkpoint runs/{corpus}.",
    "export_destination": "{path} is {what}; export writes only regular files, with or without --force. "
    "Name a new file or an existing regular one.",
    "export_unchecked": "cannot look at {path} ({reason}). Export to a folder you can read and write.",
    "half_overflow": "a weight is too large for float16; save without --half.",
    "bad_header": "{path}: damaged checkpoint: {field} {problem}. Use another copy of the model (a run folder "
    "holds two: best.safetensors and last.safetensors), or train it again.",
    "text_too_short_for_batch": "the training text has {chars:,} characters, too short for one batch of "
    "{batch_size} rows × {seq_len} steps (needs at least {needed:,}). "
    "Use a longer text or smaller --batch-size/--seq-len.",
    "corpus_too_short": "{label}: {count:,} {unit}, too short for one training batch: --batch-size "
    "{batch_size} × --seq-len {seq_len} needs at least {minimum:,} {unit} with --val-frac {val_frac:g}. "
    "Use a longer text or smaller --batch-size/--seq-len.",
    "validation_too_short": "{label}: --val-frac {val_frac:g} holds out {n_val} of its {count:,} {unit}; "
    "validation needs at least {needed}. Raise --val-frac to {suggest:.2g} or more, or use a longer text.",
    "too_few_sentences": "{label}: {sentences} sentence(s); a word model (--unit word) needs at least 2. A sentence "
    "ends with . ! or ? before a space or a line break, or at a blank line. Use a longer text.",
    "unknown_words": "{count} word(s) not in the model's vocabulary: {listed}. Remove them, or use --unknown unk "
    "to read them as <UNK> or --unknown skip to drop them.",
    "run_folder_unwritable": "cannot create the run folder {path} ({reason}). Choose another --out folder.",
    "run_exists": "{path} already holds a run, which a new run would overwrite. Choose another --name, "
    "or continue that run with --resume {path}.",
    "run_folder_busy": "{path} is in use by another charlm process ({owner}); wait for it to finish, or give a new "
    "run another --name or --out.",
    "metrics_unwritable": "cannot write {path} ({reason}); the checkpoints of step {step} are saved. "
    "Free some space or choose another --out folder.",
    "no_run_to_resume": "no run under {runs} to resume. Give the run folder (--resume runs/NAME) or --out FOLDER, "
    "or start a new run without --resume.",
    "no_such_run": "{target}: no such run folder, run or checkpoint. Give a folder under runs/ (or a run's "
    "name) to --resume.{hint}",
    "weights_only": "{path}: holds weights only, without the training state, so it cannot be resumed. "
    "Start a new run (without --resume).",
    "form_on_resume": "{flag}: this run read its text {how}, and a resumed run reads it the same way. Drop {flag}, "
    "or start a new run without --resume.",
    "fixed_on_resume": "{flag} {given} differs from this run's {stored}: a resumed run keeps its model and data "
    "settings. Drop {flag}, or start a new run without --resume.",
    "resume_steps": "--steps {steps} is not more than the {done:,} steps this run has taken; on resume --steps "
    "counts from the start of the run. Give a larger --steps, or --minutes M to train M minutes more.",
    "resume_epochs": "--epochs {epochs:g} is not more than the {done:.2f} epochs this run has done; on resume "
    "--epochs counts from the start of the run. Give a larger value.",
    "budget_used": "the run in {run} has already used its budget ({steps:,} steps). To train on, give a larger "
    "--steps or --epochs (counted from the start of the run), or --minutes M for M more minutes.",
    "other_corpus": "{corpus}: this text differs from the one the run in {run} was trained on ({name}, {chars:,} "
    "characters). Resume with that same text, or start a new run without --resume.",
    "other_vocab": "{corpus}: its vocabulary differs from the run's, though the text is the same; this checkpoint "
    "was written by another charlm version. Start a new run without --resume.",
    "diverged": "training diverged at step {step}: {what}. No checkpoint had been written yet; try a lower --lr "
    "(now {lr:g}) or a lower --clip (now {clip:g}).",
    "diverged_kept": "training diverged at step {step}: {what}. The last good checkpoint, {kept} (step {kept_step}), "
    "is kept; try a lower --lr (now {lr:g}) or a lower --clip (now {clip:g}), from scratch or with --resume {run_dir}.",
    "worker_lost": "{what}. The workers were ended; step {step:,} is saved in {path}; resume with: "
    "charlm train {corpus} --resume {run_dir}",
}


def cli_message(e: CharlmError) -> str:
    """The one line the CLI prints for ``e``: a ConfigError names the flag, a known
    kind is worded with flags (see WORDING), anything else is the error's own text."""
    if isinstance(e, ConfigError):
        return f"{flag(e.setting)} {e.problem}"
    kind = e.kind
    if kind == "memory":
        return memory_message(e.details)
    if kind == "diverged" and e.details.get("kept") is not None:
        kind = "diverged_kept"
    if kind in WORDING:
        details = dict(e.details)
        if "setting" in details:
            details["flag"] = flag(str(details["setting"]))
            if details.get("given") is False:  # a switch turned off: --normalize → --no-normalize
                details["flag"] = "--no-" + details["flag"][2:]
        if "unit" in details:  # a character model is the default: only a word model needs the flag
            details["unit_flag"] = "" if details["unit"] == "char" else f" {flag('unit')} {details['unit']}"
        return WORDING[kind].format(**details)
    return str(e)


def memory_message(details: dict) -> str:
    """A NotEnoughMemory error (see ``charlm.memory``) with its smaller settings as flags."""
    smaller = details["smaller"]
    advice = (
        "try " + " or ".join(f"{flag(setting)} {value}" for setting, value in smaller.items())
        if smaller
        else "free some memory or use a machine with more"
    )
    return (
        f"{details['what']} needs about {details['needed']} ({details['breakdown']}) but {details['available']} "
        f"is available; {advice}."
    )


def user_errors(fn):
    """Turn charlm's own errors into one line on stderr and a non-zero exit (see
    ``cli_message``): a ConfigError names the flag (exit 2), a CharlmError (its exit_code), an operating-system error such as a full disk (1),
    Ctrl-C outside the training loop (130). A closed stdout pipe stays quiet."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except CharlmError as e:  # a ConfigError names the flag that set it
            fail(cli_message(e), e.exit_code)
        except KeyboardInterrupt:
            fail("interrupted.", 130)
        except BrokenPipeError:
            raise  # the reader of stdout went away (charlm sample | head): cli.main ends quietly
        except OSError as e:
            where = f"{e.filename}: " if e.filename else ""
            fail(f"{where}{e.strerror or e}. Check the path, its permissions and the free space.")

    return wrapper


MODEL_HELP = (
    "The model: a checkpoint file, a run folder, a shipped model (shakespeare, news or news-words, any case) or the "
    "name of a run under ./runs, tried in that order. Default: the newest run under ./runs, else the shipped "
    "shakespeare model."
)
# The two ways every model-reading command is told which model to read; both are resolved alike.
CheckpointOption = Annotated[
    Path | None, typer.Option("--checkpoint", "-c", metavar="PATH|NAME", help="The same as --model.")
]
ModelOption = Annotated[str | None, typer.Option("--model", "-m", metavar="NAME|PATH", help=MODEL_HELP)]
FALLBACK_MODEL = "shakespeare"  # the shipped model used when no model is given and there is no run


def checkpoint_path(checkpoint: Path | None, model: str | None = None) -> Path:
    """The checkpoint a command reads: --checkpoint or --model (see ``runs.find_model``),
    else the newest run's best checkpoint, else the shipped FALLBACK_MODEL; the last
    two are said on stderr."""
    from charlm import corpora
    from charlm.runs import find_model, newest_checkpoint

    if checkpoint is not None and model is not None:
        raise UsageError("give --checkpoint or --model, not both.")
    given = model if model is not None else None if checkpoint is None else str(checkpoint)
    if given is not None:
        found = find_model(given)
        if found.note:
            notice(f"note: {found.note}")
        return found.path
    newest = newest_checkpoint()
    if newest is not None:
        err.print(f"using {newest}", markup=False)
        return newest
    shipped = corpora.shipped_model(FALLBACK_MODEL)
    if shipped is None:
        raise CharlmError(
            "no trained model under ./runs. Use a shipped one (-m shakespeare or -m news), "
            "or train one first: charlm train shakespeare"
        )
    err.print(f"no trained model under ./runs; using the shipped {FALLBACK_MODEL} model ({shipped})", markup=False)
    return shipped


def check_threads(threads: int, batch_size: int) -> None:
    """Row blocks run in parallel, each at least one row of the batch."""
    if threads > batch_size:
        raise UsageError(
            f"--threads {threads} is more than --batch-size {batch_size}: each block needs a row of its own. "
            "Give at most the batch size, or 0 for one block per core."
        )


def warn_threads_over_cores(threads: int) -> None:
    """--threads above the core count runs as asked (the blocks, and so the results, are
    those of that value) but the blocks then share cores: say so once, on stderr."""
    import os

    cores = os.cpu_count() or 1
    if threads > cores:
        notice(
            f"warning: --threads {threads} is more than the {cores} CPU cores here: {threads} row blocks "
            f"({threads - 1} worker processes) share them, slower than --threads {cores}; the results are "
            f"those of --threads {threads} on any machine."
        )
