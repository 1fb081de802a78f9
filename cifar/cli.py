"""What every command line of the project shares: bad input is one line on stderr and exit status 2.

``ArgParser`` is argparse whose errors raise ``UsageError`` instead of printing a
usage block; each ``main`` catches ``UsageError`` (and the library's ValueError)
and prints ``error: <message>``. ``study`` and ``reports`` use the same two.

Usage:
    parser = ArgParser(prog="python -m cifar.evaluate", description="...")
    try:
        args = parser.parse_args(argv)
    except UsageError as e:
        return fail(e)
"""

from __future__ import annotations

import argparse
import dataclasses
import inspect
import re
import sys
import typing
from collections.abc import Sequence


class UsageError(ValueError):
    """Bad command-line input: exit status 2, nothing written."""


class _ShowDefaults(argparse.ArgumentDefaultsHelpFormatter):
    """Appends "(default: ...)" unless the help already says what the default is, or there is none."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if "default" in text or action.default in (None, False, argparse.SUPPRESS):
            return text
        return super()._get_help_string(action)


class ArgParser(argparse.ArgumentParser):
    """argparse whose errors are a UsageError (one line, exit 2) instead of a usage dump;
    every option's help shows its default."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("formatter_class", _ShowDefaults)
        super().__init__(*args, **kwargs)

    def error(self, message: str) -> None:
        raise UsageError(message)


def number(kind: type, low: float, high: float, above: bool = False):
    """An argparse ``type``: an int or float in [low, high] ((low, high] where ``above``), finite.
    Zero, a negative, NaN or a huge value outside the range is one line naming the range."""
    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            value = None
        if value is None or not (low < value if above else low <= value) or not value <= high:  # NaN fails too
            shown = [str(int(x)) if float(x).is_integer() else f"{x:g}" for x in (low, high)]
            raise argparse.ArgumentTypeError(f"wants {'an integer' if kind is int else 'a number'} in "
                                             f"{'(' if above else '['}{shown[0]}, {shown[1]}], got {text!r}")
        return value
    parse.number_range = (kind, low, high, above)  # what tests/test_bad_input.py sweeps
    return parse


def fail(error: Exception | str) -> int:
    """Print ``error`` as one line on stderr; the exit status of bad input."""
    print(f"error: {error}", file=sys.stderr)
    return 2


def field_docs() -> list[tuple[str, str, str, str, str]]:
    """(section, name, type, default, meaning) of every leaf field: the dataclasses and their comments."""
    from cifar import config

    comments = dict(re.findall(r"^    (\w+): .*?#\s*(.+)$", inspect.getsource(config), re.M))
    rows = []
    for section, cls in (("data", config.DataConfig), ("model", config.ModelConfig),
                         ("training", config.TrainConfig)):
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            if dataclasses.is_dataclass(hints[f.name]):
                continue
            default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
            shown = ",".join(map(str, default)) if isinstance(default, tuple) else \
                repr(default) if isinstance(default, str) else str(default)
            kind = getattr(hints[f.name], "__name__", str(hints[f.name])).replace("tuple", "list")
            rows.append((section, f.name, kind, shown, comments.get(f.name, "")))
    return rows


def config_keys_help() -> str:
    """Every config key with its type, default and meaning, from the config dataclasses."""
    lines, section = ["config keys (type, default: meaning):"], None
    for sec, name, kind, default, meaning in field_docs():
        if sec != section:
            lines.append(f" {sec}:")
            section = sec
        lines.append(f"  {name:20s} {kind:6s} {default:12s} {meaning}")
    return "\n".join(lines)


def parse_args(argv: Sequence[str], usage: str, about: str,
               own: tuple[str, ...]) -> tuple[dict[str, str], dict[str, str]]:
    """Split argv into the command's ``own`` options and config overrides: ``--set key=value``
    (as study run takes them), ``--key value`` or ``--key=value``; --help prints every config key."""
    mine, overrides = {}, {}
    args = list(argv)
    while args:
        arg = args.pop(0)
        if arg in ("-h", "--help"):
            raise SystemExit(print(f"{usage}\n\n{about}\n\n{config_keys_help()}") or 0)
        if not arg.startswith("--") or arg == "--":
            raise UsageError(f"unexpected argument {arg!r}; {usage}")
        key, sep, value = arg[2:].partition("=")
        if not sep:
            # A flag with no value (e.g. --deterministic) means true.
            value = args.pop(0) if args and not args[0].startswith("--") else "true"
        if key == "set":
            key, value = split_set(value)
        (mine if key in own else overrides)[key] = value
    return mine, overrides


def split_set(kv: str) -> tuple[str, str]:
    """``KEY=VALUE`` of a --set option."""
    key, sep, value = kv.partition("=")
    if not sep:
        raise UsageError(f"--set takes KEY=VALUE, got {kv!r}")
    return key, value


def add_tta_option(parser: argparse.ArgumentParser, default: int, what: str) -> None:
    """--tta LEVEL, as cifar.evaluate and cifar.export take it."""
    from cifar.tta import TTA_LEVELS

    levels = ", ".join(f"{k} {v}" for k, v in TTA_LEVELS.items())
    parser.add_argument("--tta", type=int, default=default, choices=tuple(TTA_LEVELS), help=f"{what}: {levels}")
