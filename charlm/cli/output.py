"""How results reach stdout: a console that ends quietly on a closed pipe."""

from __future__ import annotations

from rich.console import Console


class StdoutConsole(Console):
    """Rich's console for results. Rich answers a closed pipe with SystemExit(1); this
    one raises BrokenPipeError, which ``charlm.cli.main`` turns into a quiet exit 0."""

    def on_broken_pipe(self) -> None:
        self.quiet = True
        raise BrokenPipeError


def print_json(value) -> None:
    """``value`` as indented JSON on stdout, non-ASCII characters as they are."""
    import json
    import sys

    sys.stdout.write(json.dumps(value, ensure_ascii=False, indent=2) + "\n")
