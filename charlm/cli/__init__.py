"""The ``charlm`` command line. Parsing, calling and printing only: no maths here.

Results go to stdout; progress, warnings and errors to stderr. NumPy and the
model code are imported inside the commands, so ``charlm --help`` is instant.
One module per command group registers its commands on the one Typer ``app``.
"""

from __future__ import annotations

import sys

import typer

from charlm.cli import train  # noqa: F401  (each import registers its commands, in help order)

# isort: split
from charlm.cli import generate, inspect  # noqa: F401
from charlm.cli.common import app, err, out

__all__ = ["app", "main", "run"]


def run(argv: list[str] | None = None) -> int:
    """Run the command line on ``argv`` (default: sys.argv[1:]) and return the exit status.

    Click's usage errors (bad or missing option values, unknown options or
    commands) become one line on stderr, ``error: <message> (see 'charlm
    <command> --help')``, with status 2, instead of Typer's boxed panel.
    """
    try:
        from typer._click import exceptions as click_errors  # Typer ≥ 0.22 vendors Click
    except ImportError:  # pragma: no cover - older Typer on top of Click
        from click import exceptions as click_errors

    command = typer.main.get_command(app)
    try:
        status = command.main(args=argv, prog_name="charlm", standalone_mode=False)
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
    except (typer.Abort, KeyboardInterrupt):
        err.print("error: interrupted.", markup=False)
        return 130
    return status if isinstance(status, int) else 0


def main() -> None:
    """Console-script entry point."""
    sys.exit(run())


if __name__ == "__main__":  # pragma: no cover
    main()
