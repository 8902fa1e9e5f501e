"""Help pages in the usual command-line layout, the same under every Typer charlm allows.

Typer's own help pages change from one minor version to the next: from 0.27 on
they show every type as ``<bool>``, ``<str>`` or ``<int range>`` and a required
argument as ``{corpus}``. charlm writes its help itself, from the parameters
Typer builds and the types its command functions declare, into Click's plain
help formatter::

    Usage: charlm export [OPTIONS] SOURCE DESTINATION
      --hidden INTEGER   Hidden units per layer (H).  [default: 256; 1<=x<=8192]
      --half             Store the weights as float16: ...

Flags take no metavar, arguments are written in capitals, nothing is cut short.
"""

from __future__ import annotations

import inspect
import types
import typing
from pathlib import Path

import typer
from typer.core import TyperCommand, TyperGroup

from charlm.cli.coerce import convert_plainly

# The metavar of an option that takes a value, by the type its function declares.
TYPE_WORDS: dict[type, str] = {int: "INTEGER", float: "FLOAT", str: "TEXT", Path: "PATH"}


def _declared(command) -> dict[str, tuple[type | None, typer.models.ParameterInfo | None]]:
    """Each parameter's declared type (None stripped from an optional, the element type
    of a list) and its typer.Argument/typer.Option, read from the command's function."""
    callback = getattr(command, "callback", None)
    if callback is None:
        return {}
    try:
        hints = typing.get_type_hints(inspect.unwrap(callback), include_extras=True)
    except Exception:  # an annotation that cannot be resolved: plain metavars, no ranges
        return {}
    found = {}
    for name, hint in hints.items():
        info = None
        if typing.get_origin(hint) is typing.Annotated:
            hint, *extras = typing.get_args(hint)
            info = next((x for x in extras if isinstance(x, typer.models.ParameterInfo)), None)
        if typing.get_origin(hint) in (typing.Union, types.UnionType):
            hint = next((a for a in typing.get_args(hint) if a is not type(None)), None)
        if typing.get_origin(hint) is list:
            hint = typing.get_args(hint)[0]
        found[name] = (hint if isinstance(hint, type) else None, info)
    return found


def _range(info) -> str:
    """'1<=x<=16', 'x>=1' or '' from the min and max a typer.Option declares."""
    lo, hi = getattr(info, "min", None), getattr(info, "max", None)
    if lo is not None and hi is not None:
        return f"{lo}<=x<={hi}"
    if lo is not None:
        return f"x>={lo}"
    return f"x<={hi}" if hi is not None else ""


def _is_flag(param, kind: type | None) -> bool:
    return kind is bool or bool(getattr(param, "is_flag", False))


def _argument_name(param) -> str:
    return param.metavar or (param.name or "").upper()


def _dots(param) -> str:
    return "..." if param.nargs != 1 else ""


def _usage_pieces(command, ctx) -> list[str]:
    """[OPTIONS], then each argument: NAME when required, [NAME] when not."""
    params = command.get_params(ctx)
    pieces = ["[OPTIONS]"] if any(p.param_type_name == "option" for p in params) else []
    for p in params:
        if p.param_type_name == "argument":
            name = _argument_name(p)
            pieces.append((name if p.required else f"[{name}]") + _dots(p))
    if isinstance(command, TyperGroup):
        pieces.append("COMMAND [ARGS]...")
    return pieces


def _option_row(param, kind: type | None, info) -> tuple[str, str]:
    """('--hidden INTEGER', 'Hidden units per layer (H).  [default: 256; 1<=x<=8192]')."""
    flag = _is_flag(param, kind)
    term = ", ".join(param.opts)
    if param.secondary_opts:
        term += " / " + ", ".join(param.secondary_opts)
    if not flag:
        term += " " + (param.metavar or TYPE_WORDS.get(kind, "VALUE"))
    notes = []
    show = getattr(param, "show_default", None)
    default = param.default
    if isinstance(show, str):
        notes.append(f"default: {show}")
    elif show is not False and default is not None and not callable(default):
        if flag and param.secondary_opts:  # --train / --no-train: the default is one of the two
            notes.append(f"default: {(param.opts if default else param.secondary_opts)[0].lstrip('-')}")
        elif not flag:
            notes.append(f"default: {default}")
    if rng := _range(info):
        notes.append(rng)
    if param.required:
        notes.append("required")
    text = " ".join((param.help or "").split())
    return term, text + (f"  [{'; '.join(notes)}]" if notes else "")


def _first_paragraph(text: str | None) -> str:
    return " ".join(inspect.cleandoc(text or "").split("\n\n")[0].split())


class HelpMixin:
    """Writes a command's (or the group's) help page and usage line; see the module docstring."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        convert_plainly(self.params)  # not through Pydantic: see charlm.cli.coerce
        for p in self.params:  # error messages name an argument as its help does: 'CORPUS'
            if p.param_type_name == "argument" and p.metavar is None:
                p.metavar = (p.name or "").upper()

    def get_help_option(self, ctx):
        option = super().get_help_option(ctx)
        convert_plainly([] if option is None else [option])
        return option

    def collect_usage_pieces(self, ctx) -> list[str]:
        return _usage_pieces(self, ctx)

    def format_help(self, ctx, formatter) -> None:
        formatter.write_usage(ctx.command_path, " ".join(_usage_pieces(self, ctx)))
        if self.help:
            formatter.write_paragraph()
            with formatter.indentation():
                formatter.write_text(inspect.cleandoc(self.help))
        declared = _declared(self)
        params = [p for p in self.get_params(ctx) if not getattr(p, "hidden", False)]
        arguments = [
            (_argument_name(p) + _dots(p), " ".join((p.help or "").split()))
            for p in params
            if p.param_type_name == "argument"
        ]
        options = [_option_row(p, *declared.get(p.name, (None, None))) for p in params if p.param_type_name == "option"]
        for title, rows in (("Arguments", arguments), ("Options", options)):
            if rows:
                with formatter.section(title):
                    formatter.write_dl(rows)
        if isinstance(self, TyperGroup):
            commands = []
            for name in self.list_commands(ctx):
                sub = self.get_command(ctx, name)
                if sub is not None and not getattr(sub, "hidden", False):
                    commands.append((name, _first_paragraph(sub.help)))
            if commands:
                with formatter.section("Commands"):
                    formatter.write_dl(commands)


class HelpGroup(HelpMixin, TyperGroup):
    """The ``charlm`` group with charlm's help page."""


class HelpCommand(HelpMixin, TyperCommand):
    """A command with charlm's help page."""


class HelpTyper(typer.Typer):
    """A typer.Typer whose group and commands write charlm's help pages; a command
    given a class of its own (``cls=``) gets the help pages mixed in."""

    def __init__(self, **kwargs) -> None:
        super().__init__(cls=HelpGroup, **kwargs)

    def command(self, *args, cls: type | None = None, **kwargs):
        if cls is None:
            cls = HelpCommand
        elif not issubclass(cls, HelpMixin):
            cls = type(cls.__name__, (HelpMixin, cls), {"__doc__": cls.__doc__})
        return super().command(*args, cls=cls, **kwargs)
