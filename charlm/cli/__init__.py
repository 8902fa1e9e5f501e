"""The ``charlm`` command line. Parsing, calling and printing only: no maths here.

Results go to stdout; progress, warnings and errors to stderr. NumPy and the
model code are imported inside the commands, and rich when a console is first
used, so ``charlm --help`` is instant. One module per command group registers its
commands on the one Typer ``app``; those modules evaluate their annotations when
the commands are defined (no ``from __future__ import annotations``), since Typer
reads every option's annotation at each start and would compile them from strings.
"""

import os
import sys
from typing import Annotated

import typer
from typer._click import exceptions as click_errors  # Typer ≥ 0.26 carries its own Click

from charlm.cli import train  # noqa: F401  (each import registers its commands, in help order)

# isort: split
from charlm.cli import generate, scoring  # noqa: F401

# isort: split
from charlm.cli import inspect  # noqa: F401
from charlm.cli.common import app, err, out

__all__ = ["app", "main", "package_version", "run"]


def package_version() -> str:
    """The installed package's version (its metadata), else the source tree's."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("charlm")
    except PackageNotFoundError:  # run from a source tree that is not installed
        from charlm import __version__

        return __version__


def _print_version(value: bool) -> None:
    if value:
        out.print(f"charlm {package_version()}", markup=False, highlight=False)
        raise typer.Exit()


@app.callback()
def _charlm(
    version: Annotated[
        bool,
        typer.Option("--version", is_eager=True, callback=_print_version, help="Print charlm's version and exit."),
    ] = False,
) -> None:
    """The group's own options (its help text is the app's)."""


def run(argv: list[str] | None = None) -> int:
    """Run the command line on ``argv`` (default: sys.argv[1:]) and return the exit status.

    Click's usage errors (bad or missing option values, unknown options or
    commands) become one line on stderr, ``error: <message> (see 'charlm
    <command> --help')``, with status 2, instead of Typer's boxed panel. The
    command is invoked directly rather than through Click's ``main``, which would
    turn a closed stdout into status 1: a BrokenPipeError reaches ``main`` here.
    """
    args = sys.argv[1:] if argv is None else list(argv)
    command = typer.main.get_command(app)
    try:
        with command.make_context("charlm", args) as ctx:
            status = command.invoke(ctx)
    except typer.Exit as e:  # --help, --version, or a command's own exit status
        return e.exit_code
    except click_errors.NoArgsIsHelpError as e:  # bare 'charlm': the help is the answer
        text = e.format_message()
        if text.strip():
            out.print(text, markup=False, highlight=False)
        return 2
    except click_errors.UsageError as e:
        where = e.ctx.command_path if e.ctx is not None else "charlm"
        message = " ".join(e.format_message().split())
        err.print(f"error: {message} (see '{where} --help')", markup=False)
        return 2
    except click_errors.ClickException as e:
        err.print(f"error: {' '.join(e.format_message().split())}", markup=False)
        return e.exit_code
    except (typer.Abort, KeyboardInterrupt, EOFError):
        err.print("error: interrupted.", markup=False)
        return 130
    return status if isinstance(status, int) else 0


def main() -> None:
    """Console-script entry point. When the reader of stdout goes away (``charlm sample |
    head``) the command ends quietly with status 0: stdout is pointed at /dev/null, as the
    Python documentation advises, so that the final flush at exit finds no broken pipe."""
    try:
        status = run()
        sys.stdout.flush()
    except BrokenPipeError:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        status = 0
    sys.exit(status)


if __name__ == "__main__":  # pragma: no cover
    main()
