"""Print the trials table of any study, optionally exporting it as CSV.

Usage:
    python -m study show --study-name cifar-cpu [--storage URL] [--csv trials.csv]
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

import optuna
import pandas as pd

from cifar.cli import fail
from study.storage import DEFAULT_STORAGE, ArgParser, UsageError, make_storage, resolve_study_name
from study.trials import trials_table


def main(argv: Sequence[str] | None = None) -> int:
    p = ArgParser(prog="python -m study show", description="Show the trials of a study.")
    p.add_argument("--study-name", required=True)
    p.add_argument("--storage", default=DEFAULT_STORAGE)
    p.add_argument("--csv", default=None, help="also write the table to this CSV file")
    try:
        args = p.parse_args(argv)
        storage = make_storage(args.storage, heartbeat_interval=None, grace_period=None, create=False)
        name = resolve_study_name(storage, args.storage, args.study_name)
        study = optuna.load_study(study_name=name, storage=storage)
    except UsageError as e:
        return fail(e)
    table = trials_table(study)
    with pd.option_context("display.max_rows", None, "display.width", 200, "display.max_columns", None):
        print(table.to_string(index=False) if not table.empty else "(no trials)")
    if args.csv:
        table.to_csv(args.csv, index=False)
        print(f"wrote {args.csv}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
