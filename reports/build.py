"""Build the baseline-vs-tuned report of a study: retrain, test, compare, write.

The baseline config and the study's best config are retrained on the whole
train split (not the study's subset) with one epoch budget and K seeds, each
evaluated on the test set. Runs are cached by config and seed under
``runs/reports/``, so a rebuild only redoes the figures. Steps: load
(``reports.load``, ``reports.runs``) -> data and words (``reports.content``)
-> figures (``reports.figures``) -> write (``write_report``, the only step
that writes into the report folder).

Usage:
    python -m reports build --study-name cifar-cpu [--storage URL] [--seeds 3] [--epochs 10] [--runs-only]
"""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from cifar.cli import fail
from cifar.data import CifarData, DataError, prepare_data
from reports.content import (
    Runs,
    comparison_frame,
    config_table,
    fixed_and_broken,
    headline_table,
    histories_frame,
    per_class_frame,
    report_sections,
    verdict,
)
from reports.load import load_run, open_study
from reports.render import Section, to_html, to_markdown, write_pngs
from reports.runs import ensure_runs, report_configs
from reports.stats import paired
from study.presets import REPORT_MINUTES
from study.storage import DEFAULT_STORAGE, ArgParser, UsageError
from study.trials import compute_spent, trials_table


def run_figures(runs: Runs, data: CifarData) -> dict:
    """The figures of the retrained runs (plotly; imported here, --runs-only needs none of it)."""
    from reports.figures import confusion_figure, curves_figure, image_grid_figure, per_class_figure

    fixed, broken = fixed_and_broken(runs)
    seed0 = runs["tuned"][0]
    classes = list(seed0.test.per_class_acc)
    preds = seed0.predictions

    def captions(idx, predicted=True):
        return [f"{classes[preds.label[i]]}→{classes[preds.pred[i]]}" if predicted
                else classes[preds.label[i]] for i in idx]

    def grid(idx, title, predicted=True):
        return image_grid_figure(data.test.x[idx].numpy(), captions(idx, predicted), title)

    # Misclassified by seed 0 (whose predictions the captions show), spread over the ordered test set.
    wrong = np.nonzero((preds.pred != preds.label).numpy())[0]
    wrong = wrong[:: max(1, len(wrong) // 16)][:16]
    return {
        "curves": curves_figure(histories_frame(runs)),
        "per_class": per_class_figure(per_class_frame(runs)),
        **{f"confusion_{name}": confusion_figure(np.array(runs[name][0].test.confusion), classes,
                                                 f"Confusion matrix, {name} (seed 0)")
           for name in ("baseline", "tuned")},
        "misclassified_tuned": grid(wrong, "Misclassified by the tuned model (true→predicted, seed 0)"),
        "fixed_by_tuning": grid(fixed[:16], f"{len(fixed)} test images tuning fixed (majority over seeds)",
                                predicted=False),
        "broken_by_tuning": grid(broken[:16], f"{len(broken)} test images tuning broke (majority over seeds)",
                                 predicted=False),
    }


def write_report(out: Path, title: str, sections: list[Section], table: pd.DataFrame, figures: dict,
                 comparison: dict) -> None:
    import plotly.offline

    out.mkdir(parents=True, exist_ok=True)
    table.to_csv(out / "comparison.csv", index=False)
    (out / "comparison.json").write_text(json.dumps(comparison, indent=2, default=str) + "\n")
    (out / "plotly.min.js").write_text(plotly.offline.get_plotlyjs())
    write_pngs(figures, out / "figures")
    (out / "summary.md").write_text(to_markdown(title, sections))
    (out / "report.html").write_text(to_html(title, sections, figures))


def build(study_name: str | None, storage: str, seeds: int, epochs: int | None, out_root: Path,
          runs_root: Path) -> Path:
    from reports.figures import study_figures  # plotly: not needed by --runs-only

    study = open_study(storage, study_name)
    configs, plan = report_configs(study, epochs, seeds)
    data = prepare_data(configs["tuned"].data)  # the figures need it; the runs' training too
    dirs = ensure_runs(configs, seeds, runs_root, data)
    runs = {name: [load_run(d) for d in ds] for name, ds in dirs.items()}

    table = comparison_frame(runs)
    cmp = paired(table[table.config == "baseline"]["test_acc"].tolist(),
                  table[table.config == "tuned"]["test_acc"].tolist())
    figures = {**run_figures(runs, data), **study_figures(study)}
    preset = study.user_attrs.get("preset")
    meta = {"study": study.study_name, **plan, "preset": preset, "seeds": seeds,
            "train_images": len(data.train), "report_minutes": REPORT_MINUTES.get(preset),
            "study_budget": study.user_attrs.get("budget"), "spent": compute_spent(trials_table(study)),
            "device": runs["tuned"][0].dir.read_provenance()["device"]}
    sections = report_sections(cmp, table, config_table(configs["baseline"], configs["tuned"]), meta,
                               list(figures))
    out = out_root / study.study_name
    write_report(out, f"Baseline vs tuned: study {study.study_name}", sections, table, figures,
                 {**cmp.to_dict(), **meta})
    head = headline_table(cmp, table)
    print("\n".join(" | ".join(row) for row in [head.header, *head.rows]) + "\n\n" + verdict(cmp))
    return out


def main(argv: Sequence[str] | None = None) -> int:
    p = ArgParser(prog="python -m reports build", description="Build the baseline-vs-tuned report.")
    p.add_argument("--study-name", default=None, help="default: the storage's only study")
    p.add_argument("--storage", default=DEFAULT_STORAGE)
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--epochs", type=int, default=None, help="default: by the study's preset")
    p.add_argument("--out", default="results/reports", help="the folder each report goes to: <out>/<study>/")
    p.add_argument("--runs-dir", default="runs/reports", help="cache of retrained runs")
    p.add_argument("--runs-only", action="store_true",
                   help="retrain and test the runs into the cache, write no report (needs no plotly)")
    try:
        args = p.parse_args(argv)
        if args.seeds < 2:
            raise UsageError(f"--seeds must be >= 2 for a test, got {args.seeds}")
        if args.epochs is not None and args.epochs <= 0:
            raise UsageError(f"--epochs must be > 0, got {args.epochs}")
        if args.runs_only:
            configs, _ = report_configs(open_study(args.storage, args.study_name), args.epochs, args.seeds)
            ensure_runs(configs, args.seeds, Path(args.runs_dir))
            print(f"runs ready in {args.runs_dir}; build the report from them without --runs-only")
            return 0
        out = build(args.study_name, args.storage, args.seeds, args.epochs, Path(args.out),
                    Path(args.runs_dir))
    except (UsageError, DataError) as e:
        return fail(e)
    print(f"wrote {out}/report.html, summary.md, comparison.csv, figures/")
    return 0


if __name__ == "__main__":
    sys.exit(main())
