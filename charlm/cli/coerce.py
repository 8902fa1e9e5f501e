"""Option and argument values turned into Python values without Pydantic.

From 0.27 on, Typer converts every value (defaults too) through a Pydantic
TypeAdapter that it builds when the command runs, and importing Pydantic and
building the adapters takes longer than the rest of charlm's start-up. charlm's
options are plain: integers and numbers (with a range), text, paths and flags.
For those, each parameter gets a converter of its own in place of Typer's, with
Click's classic messages ("'abc' is not a valid integer.", "-3 is not in the
range x>=1."); anything else (a parser, a clamp, path checks, another type) is
left to Typer. Typer versions without per-parameter converters are left alone.
"""

from __future__ import annotations

from pathlib import Path

from typer._click.exceptions import BadParameter

# (annotation, its name in messages): the types converted here
PLAIN = {int: "integer", float: "float", str: "string", Path: "path", bool: "boolean"}
BOOLEAN = {"1": True, "true": True, "t": True, "yes": True, "y": True, "on": True}
BOOLEAN |= {"0": False, "false": False, "f": False, "no": False, "n": False, "off": False}
# ParameterInfo settings that must have these values for a plain conversion (no path checks, no custom parsing)
PLAIN_SETTINGS = {
    "parser": None,
    "click_type": None,
    "clamp": False,
    "exists": False,
    "file_okay": True,
    "dir_okay": True,
    "writable": False,
    "readable": True,
    "resolve_path": False,
    "allow_dash": False,
    "path_type": None,
}


class PlainValue:
    """Converts a command-line string to ``kind`` (int, float, str, Path or bool) and checks
    the option's min and max; used by Typer as a parameter's runtime converter."""

    def __init__(self, kind: type, low: float | None, high: float | None, many: bool) -> None:
        self.kind, self.low, self.high, self.many = kind, low, high, many

    def coerce(self, value, param, ctx):
        if value is None:
            return () if self.many else None
        if self.many:
            return [self.one(v, param, ctx) for v in value]
        return self.one(value, param, ctx)

    def one(self, value, param, ctx):
        kind = self.kind
        if kind is bool and not isinstance(value, bool):  # a flag's value is a bool already
            text = str(value).strip().lower()
            if text not in BOOLEAN:
                raise BadParameter(f"{value!r} is not a valid boolean.", ctx=ctx, param=param)
            value = BOOLEAN[text]
        elif not isinstance(value, kind) or (isinstance(value, bool) and kind is not bool):
            try:
                value = kind(value.strip() if kind in (int, float) and isinstance(value, str) else value)
            except (TypeError, ValueError):
                raise BadParameter(f"{value!r} is not a valid {PLAIN[kind]}.", ctx=ctx, param=param) from None
        low, high = self.low, self.high
        if (low is not None and value < low) or (high is not None and value > high):
            where = f"{low}<=x<={high}" if low is not None and high is not None else None
            where = where or (f"x>={low}" if low is not None else f"x<={high}")
            raise BadParameter(f"{value} is not in the range {where}.", ctx=ctx, param=param)
        return value


def plain_converter(param) -> PlainValue | None:
    """A PlainValue for a Typer parameter of a plain type, else None (Typer converts it)."""
    descriptor = getattr(param, "type_descriptor", None)
    info = getattr(descriptor, "parameter_info", None)
    if info is None or getattr(descriptor, "file_annotation", None) is not None:
        return None
    kind, many = descriptor.annotation, bool(param.multiple or param.nargs == -1)
    if many:
        args = getattr(kind, "__args__", ())
        if getattr(kind, "__origin__", None) is not list or len(args) != 1:
            return None
        kind = args[0]
    if kind not in PLAIN or any(getattr(info, k, v) != v for k, v in PLAIN_SETTINGS.items()):
        return None
    return PlainValue(kind, getattr(param, "min", None), getattr(param, "max", None), many)


def convert_plainly(params) -> None:
    """Give each plain parameter (see ``plain_converter``) its own converter, where
    Typer keeps one per parameter (``_runtime_param``, built on first use)."""
    for param in params:
        if getattr(param, "_runtime_param", False) is None:
            converter = plain_converter(param)
            if converter is not None:
                param._runtime_param = converter
