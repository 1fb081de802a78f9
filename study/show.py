"""``python -m study show``: the trials table of a study, best trial marked; or the studies of a storage.

Without ``--study-name`` it shows the storage's only study, or lists the studies
when there are several (``--list`` lists them always). Floats print to 4
significant digits; a parameter that does not apply to a trial is blank.

Usage:
    python -m study show [--storage URL] [--study-name NAME] [--sort] [--csv trials.csv] [--list]
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

import optuna
import pandas as pd

from cifar.cli import ArgParser, UsageError, fail
from study.objectives import best_of
from study.storage import (
    DEFAULT_STORAGE,
    STORAGE_ENV,
    default_storage,
    make_storage,
    resolve_study_name,
)
from study.trials import trials_table


def studies_table(storage) -> pd.DataFrame:
    rows = []
    for s in optuna.get_all_study_summaries(storage, include_best_trial=True):
        rows.append({"study": s.study_name, "trials": s.n_trials,
                     "best val_acc": s.best_trial.value if s.best_trial else None,  # (none: several objectives)
                     "best trial": s.best_trial.number if s.best_trial else None,
                     "preset": s.user_attrs.get("preset", ""), "started": s.datetime_start})
    return pd.DataFrame(rows)


def printable(table: pd.DataFrame, best: int | None, sort: bool) -> str:
    if sort:
        table = table.sort_values("val_acc", ascending=False, na_position="last")
    table = table.assign(best=["*" if n == best else "" for n in table["number"]])
    table = table[["best", *[c for c in table.columns if c != "best"]]]
    # 4 significant digits; blanks where a value does not exist (a parameter that does not apply).
    text = table.to_string(index=False, na_rep="", float_format=lambda v: f"{v:.4g}")
    return text + (f"\n* best trial: {best}" if best is not None else "\nno complete trial yet")


def main(argv: Sequence[str] | None = None) -> int:
    p = ArgParser(prog="python -m study show", description="Show the trials of a study, or list the studies.")
    p.add_argument("--study-name", default=None, help="default: the storage's only study")
    p.add_argument("--storage", default=None,
                   help=f"any SQLAlchemy URL; default: ${STORAGE_ENV}, else {DEFAULT_STORAGE} (a URL with a "
                        "password is best given in the environment: off the command line, out of shell history)")
    p.add_argument("--sort", action="store_true", help="best val_acc first (default: by trial number)")
    p.add_argument("--list", action="store_true", help="list the storage's studies")
    p.add_argument("--csv", default=None, help="also write the trials table to this CSV file")
    try:
        args = p.parse_args(argv)
        args.storage = args.storage or default_storage()
        storage = make_storage(args.storage, heartbeat_interval=None, grace_period=None, create=False)
        names = optuna.get_all_study_names(storage)
        if args.list or (args.study_name is None and len(names) > 1):
            print(studies_table(storage).to_string(index=False, float_format=lambda v: f"{v:.4g}")
                  if names else "(no studies)")
            if not args.list:
                print("several studies: choose one with --study-name")
            return 0
        study = optuna.load_study(study_name=resolve_study_name(storage, args.storage, args.study_name),
                                  storage=storage)
    except UsageError as e:
        return fail(e)
    table = trials_table(study)
    if table.empty:
        print("(no trials)")
        return 0
    complete = [t for t in study.get_trials(deepcopy=False) if t.state.name == "COMPLETE"]
    best = best_of(study).number if complete else None
    with pd.option_context("display.max_rows", None, "display.width", 200, "display.max_columns", None):
        print(f"study {study.study_name!r}, " + (f"objectives {', '.join(study.metric_names)} (val_acc maximised, "
              "the costs minimised); * marks the best val_acc" if len(study.directions) > 1 else
              "metric val_acc (maximised)"))
        print(printable(table, best, args.sort))
    if args.csv:
        table.to_csv(args.csv, index=False)
        print(f"wrote {args.csv}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
