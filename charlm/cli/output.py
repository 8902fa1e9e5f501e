"""How results and messages reach the terminal: rich consoles made on first use, and
a stdout console that ends quietly on a closed pipe."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any


class LazyConsole:
    """A rich Console, made by ``make`` when first used: importing rich takes longer
    than ``charlm --help`` may, and help pages are written without it."""

    def __init__(self, make: Callable[[], Any]) -> None:
        self._make = make
        self._console = None

    def __getattr__(self, name: str):
        if self._console is None:
            self._console = self._make()
        return getattr(self._console, name)

    def silence(self) -> None:
        """Print nothing from now on (an MPI rank other than 0: rank 0 speaks for the job)."""
        if self._console is None:
            self._console = self._make()
        self._console.quiet = True


def stderr_console():
    """Rich's console for progress, warnings and errors."""
    from rich.console import Console

    return Console(stderr=True, soft_wrap=True, highlight=False)


def stdout_console():
    """Rich's console for results. Rich answers a closed pipe with SystemExit(1); this
    one raises BrokenPipeError, which ``charlm.cli.main`` turns into a quiet exit 0."""
    from rich.console import Console

    class StdoutConsole(Console):
        def on_broken_pipe(self) -> None:
            self.quiet = True
            raise BrokenPipeError

    return StdoutConsole(soft_wrap=True, highlight=False)


def print_json(value) -> None:
    """``value`` as indented JSON on stdout, non-ASCII characters as they are."""
    import json
    import sys

    sys.stdout.write(json.dumps(value, ensure_ascii=False, indent=2) + "\n")
