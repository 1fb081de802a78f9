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
import sys


class UsageError(ValueError):
    """Bad command-line input: exit status 2, nothing written."""


class ArgParser(argparse.ArgumentParser):
    """argparse whose errors are a UsageError (one line, exit 2) instead of a usage dump;
    every option's help shows its default."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("formatter_class", argparse.ArgumentDefaultsHelpFormatter)
        super().__init__(*args, **kwargs)

    def error(self, message: str) -> None:
        raise UsageError(message)


def fail(error: Exception | str) -> int:
    """Print ``error`` as one line on stderr; the exit status of bad input."""
    print(f"error: {error}", file=sys.stderr)
    return 2
