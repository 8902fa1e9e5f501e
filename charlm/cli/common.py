"""What every command shares: the Typer app, the two consoles, one-line errors and the model options."""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from charlm.errors import CharlmError, ConfigError, UsageError

app = typer.Typer(
    name="charlm",
    help="Train a character-level language model on any text, sample from it, and score text.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode="rich",
)
err = Console(stderr=True, soft_wrap=True, highlight=False)
out = Console(soft_wrap=True, highlight=False)

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


def user_errors(fn):
    """Turn charlm's own errors into one line on stderr and a non-zero exit: a
    ConfigError names the flag (exit 2), a CharlmError (its exit_code), an operating-system error such as a full disk (1),
    Ctrl-C outside the training loop (130). A closed stdout pipe stays quiet."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except ConfigError as e:  # a config's own check: name the flag that set it
            fail(f"{flag(e.setting)} {e.problem}", e.exit_code)
        except CharlmError as e:
            fail(str(e), e.exit_code)
        except KeyboardInterrupt:
            fail("interrupted.", 130)
        except BrokenPipeError:
            raise  # Typer exits quietly when the reader of stdout goes away (charlm sample | head)
        except OSError as e:
            where = f"{e.filename}: " if e.filename else ""
            fail(f"{where}{e.strerror or e}. Check the path, its permissions and the free space.")

    return wrapper


MODEL_HELP = (
    "A shipped pretrained model, shakespeare or news, or a checkpoint file or run folder "
    "(then the same as --checkpoint)."
)
CHECKPOINT_HELP = "Checkpoint file or run folder. Default: the best checkpoint of the newest run under ./runs"
# The two ways every model-reading command is told which model to read.
CheckpointOption = Annotated[Path | None, typer.Option("--checkpoint", "-c", help=CHECKPOINT_HELP + ".")]
ModelOption = Annotated[str | None, typer.Option("--model", "-m", metavar="NAME|PATH", help=MODEL_HELP)]


def checkpoint_path(checkpoint: Path | None, model: str | None = None, *, fallback: str | None = None) -> Path:
    """--checkpoint or --model, else the newest run's best checkpoint, else (with
    ``fallback``) that shipped pretrained model, said on stderr."""
    from charlm.corpora import resolve_model, shipped_model
    from charlm.runs import checkpoint_in, newest_checkpoint

    if checkpoint is not None and model is not None:
        raise UsageError("give --checkpoint or --model, not both.")
    if model is not None:
        checkpoint = resolve_model(model)
    if checkpoint is not None:
        return checkpoint_in(checkpoint)
    found = newest_checkpoint()
    if found is None and fallback is not None and (shipped := shipped_model(fallback)) is not None:
        err.print(f"no trained model under ./runs; using the shipped {fallback} model ({shipped})", markup=False)
        return shipped
    if found is None:
        raise CharlmError(
            "no trained model under ./runs. Use a shipped one (-m shakespeare or -m news), "
            "or train one first: charlm train shakespeare"
        )
    err.print(f"using {found}")
    return found


def check_threads(threads: int, batch_size: int) -> None:
    """Row blocks run in parallel, each at least one row of the batch."""
    if threads > batch_size:
        raise UsageError(
            f"--threads {threads} is more than --batch-size {batch_size}: each block needs a row of its own. "
            "Give at most the batch size, or 0 for one block per core."
        )
