"""Build the baseline-vs-tuned report of a study: train at the target, select on validation, then test.

The study's top distinct configs (``--candidates``, default 3) and its baseline
are trained at the study's target with the same seeds (seed 0 of each is the
study's own trial run where it ran to the target); the winner is the candidate
with the highest mean validation accuracy, if it beats the baseline's. Only then
is the test set read, once, for the baseline and the best candidate, and the two
are compared seed by seed (``reports.stats.paired``). The verdict is also saved
into the study, where optuna-dashboard shows it (note and figures). Runs are
cached by config and seed under ``runs/reports/``, so a rebuild only redoes the
figures and a stopped report continues.

Usage:
    python -m reports build [--study-name NAME] [--storage URL] [--seeds 3] [--candidates 3] [--runs-only]
"""

from __future__ import annotations

import json
import sys
import time
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
    selection_text,
    tuned_label,
    verdict,
)
from reports.fidelity import rung_correlations, study_curves
from reports.load import candidates_of, load_run, open_study
from reports.render import Section, to_html, to_markdown, write_pngs
from reports.runs import ensure_tested, ensure_trained, select
from reports.stats import paired
from study.presets import REPORT_CANDIDATES, REPORT_SEEDS
from study.storage import DEFAULT_STORAGE, ArgParser, UsageError
from study.trials import compute_spent, job_minutes, record_session, trials_table


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


def to_dashboard(study, title: str, sections: list[Section], figures: dict) -> None:
    """The report's words as the study's note and its key figures as plotly graph objects, for
    optuna-dashboard to show next to the trials."""
    import optuna_dashboard

    optuna_dashboard.save_note(study, to_markdown(title, sections[:3]))
    for name in ("differences", "rung_scatter"):
        if name in figures:
            optuna_dashboard.save_plotly_graph_object(study, figures[name], graph_object_id=name)


def train_candidates(study, k: int, seeds: int, runs_root: Path, why: str):
    """The baseline and the study's top ``k`` candidates trained at the target, the test set locked
    (``why``: the lock's message): (baseline, candidates, data, run directories by name)."""
    baseline, candidates = candidates_of(study, k)
    everyone = [baseline, *candidates]
    data = prepare_data(baseline.config.data)
    data.lock_test(why)
    dirs = ensure_trained({c.name: c.config for c in everyone}, seeds, runs_root, data,
                          reuse={c.name: c.run_dir for c in everyone})
    return baseline, candidates, data, dirs


def build(study_name: str | None, storage: str, seeds: int, k: int, out_root: Path, runs_root: Path) -> Path:
    from reports.figures import differences_figure, rung_scatter_figure, study_figures  # plotly

    started = time.time()
    study = open_study(storage, study_name)
    baseline, candidates, data, dirs = train_candidates(
        study, k, seeds, runs_root, "the report reads it after selecting the winner on validation")
    everyone = [baseline, *candidates]
    selection = select(dirs)
    data.unlock_test()
    reads = ensure_tested(dirs, ["baseline", selection.best], data)
    runs = {"baseline": [load_run(d) for d in dirs["baseline"]],
            "tuned": [load_run(d) for d in dirs[selection.best]]}

    table = comparison_frame(runs)
    cmp = paired(table[table.config == "baseline"]["test_acc"].tolist(),
                 table[table.config == "tuned"]["test_acc"].tolist())
    target = baseline.config.epochs
    curves = study_curves(study.get_trials(deepcopy=False))
    fidelity = rung_correlations(curves, target)
    figures = {**run_figures(runs, data), **study_figures(study),
               "differences": differences_figure(list(cmp.differences), cmp.noise_floor),
               "rung_scatter": rung_scatter_figure(curves, target)}
    tuned = next(c for c in candidates if c.name == selection.best)  # the best candidate, winner or not
    meta = {"study": study.study_name, "epochs": target, "seeds": seeds, "preset": study.user_attrs.get("preset"),
            "baseline_trial": baseline.trial, "best_trial": tuned.trial, "best": selection.best,
            "winner": selection.winner,
            "train_images": len(data.train), "train_fraction": baseline.config.data.train_fraction,
            "study_budget": study.user_attrs.get("budget"),
            "spent": compute_spent(trials_table(study)), "device": runs["tuned"][0].dir.read_provenance()["device"],
            "selection_done_at": time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(selection.done_at)),
            "test_reads": reads}
    record_session(study, "report", started)
    meta["job_minutes"] = job_minutes(study)  # every study and report command on record, this one included
    sections = report_sections(cmp, table, config_table(baseline.config, tuned.config), meta, list(figures),
                               selection, everyone, fidelity)
    out = out_root / study.study_name
    title = f"Baseline vs tuned: study {study.study_name}"
    write_report(out, title, sections, table, figures,
                 {**cmp.to_dict(), **meta, "validation": selection.val, "fidelity": fidelity,
                  "candidates": [{"name": c.name, "trial": c.trial, "study_val_acc": c.val_acc} for c in everyone]})
    to_dashboard(study, title, sections, figures)
    head = headline_table(cmp, table, tuned_label(selection, tuned))
    print("\n".join(" | ".join(row) for row in [head.header, *head.rows]) + "\n\n" + selection_text(selection)
          + "\n" + verdict(cmp))
    return out


def main(argv: Sequence[str] | None = None) -> int:
    p = ArgParser(prog="python -m reports build", description="Build the baseline-vs-tuned report.")
    p.add_argument("--study-name", default=None, help="default: the storage's only study")
    p.add_argument("--storage", default=DEFAULT_STORAGE)
    p.add_argument("--seeds", type=int, default=REPORT_SEEDS, help="seeds of every config, the same for each")
    p.add_argument("--candidates", type=int, default=REPORT_CANDIDATES,
                   help="the study's top distinct configs to retrain and select among")
    p.add_argument("--out", default="results/reports", help="the folder each report goes to: <out>/<study>/")
    p.add_argument("--runs-dir", default="runs/reports", help="cache of retrained runs")
    p.add_argument("--runs-only", action="store_true",
                   help="train the runs into the cache (no test read), write no report (needs no plotly)")
    try:
        args = p.parse_args(argv)
        if args.seeds < 2:
            raise UsageError(f"--seeds must be >= 2 for a test, got {args.seeds}")
        if args.candidates < 1:
            raise UsageError(f"--candidates must be >= 1, got {args.candidates}")
        if args.runs_only:
            train_candidates(open_study(args.storage, args.study_name), args.candidates, args.seeds,
                             Path(args.runs_dir), "--runs-only trains; it never reads the test set")
            print(f"runs ready in {args.runs_dir}; build the report from them without --runs-only")
            return 0
        out = build(args.study_name, args.storage, args.seeds, args.candidates, Path(args.out),
                    Path(args.runs_dir))
    except (UsageError, DataError) as e:
        return fail(e)
    print(f"wrote {out}/report.html, summary.md, comparison.csv, figures/")
    return 0


if __name__ == "__main__":
    sys.exit(main())
