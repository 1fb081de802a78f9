"""Build the baseline-vs-tuned report of a study: a race on validation, then a test comparison that decides.

The study's top distinct configs (``--candidates``) race its baseline on fresh
seeds at the study's target, the test set sealed (``reports.race``); the winner,
the candidates and the comparison's plan (looks, margin, minimum detectable
effect) are written to the study before the seal is lifted. Then the baseline and
the winner train on the comparison's own fresh seeds in rounds, and the test set
is read look by look until the repeated confidence interval says better, worse
or equivalent, or the seeds run out: undecided (``reports.verdict``). The outcome
is the report's title and first line; ``winner_config.json`` beside it is the
config to train. The verdict is also saved into the study, where
optuna-dashboard shows it (note and figures). Runs are cached by config and seed
under ``runs/reports/``, so a rebuild only redoes the figures and a stopped
report continues.

Usage:
    python -m reports build [--study-name NAME] [--storage URL] [--candidates 3] [--race-rounds 3]
                            [--looks 6,8,10] [--margin 0.003] [--runs-only]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from cifar.cli import ArgParser, UsageError, fail, number
from cifar.data import CifarData, DataError
from reports.content import (
    Runs,
    comparison_frame,
    config_table,
    fixed_and_broken,
    headline_table,
    histories_frame,
    per_class_frame,
    report_sections,
    tuned_label,
    verdict_text,
)
from reports.fidelity import rung_correlations, study_curves
from reports.load import load_run, open_study
from reports.pareto import write_pareto
from reports.render import Section, to_html, to_markdown, write_pngs
from reports.runs import ensure_trained, run_comparison
from reports.select import select_sealed
from reports.stats import expected_max_curve, paired
from study.presets import LOOKS, RACE_ROUNDS, REPORT_CANDIDATES
from study.sequential import Design
from study.storage import DEFAULT_STORAGE, STORAGE_ENV, default_storage
from study.trials import compute_spent, job_minutes, record_session, session_clock, trials_table

WINNER_CONFIG = "winner_config.json"  # the report's winner at the target: what to train next


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
    for name in ("differences", "rung_scatter", "expected_max"):
        if name in figures:
            optuna_dashboard.save_plotly_graph_object(study, figures[name], graph_object_id=name)


def build(study_name: str | None, storage: str, args, out_root: Path, runs_root: Path) -> Path:
    started = time.time()
    study = open_study(storage, study_name)
    if len(study.directions) > 1:  # accuracy against cost: the front and its pick (reports/pareto.py)
        return write_pareto(study, args, out_root, runs_root)
    with session_clock(study, "report", started):
        return _build(study, args, out_root, runs_root, started)


def _build(study, args, out_root: Path, runs_root: Path, started: float) -> Path:
    from reports.figures import (  # plotly
        differences_figure,
        expected_max_figure,
        rung_scatter_figure,
        study_figures,
    )

    baseline, candidates, data, result, plan = select_sealed(study, args, runs_root)
    everyone = [baseline, *candidates]
    tuned = next(c for c in candidates if c.name == result.winner)
    if "first_test_read" not in study.user_attrs:  # from here on the plan is frozen (frozen_plan)
        study.set_user_attr("first_test_read", time.strftime("%Y-%m-%dT%H:%M:%S"))
    verdict, dirs, reads = run_comparison(baseline.config, tuned.config, plan, runs_root, data)
    runs = {name: [load_run(d) for d in dirs[name]] for name in ("baseline", "tuned")}

    table = comparison_frame(runs, verdict.plan.seeds)
    cmp = paired(verdict.baseline, verdict.tuned)
    target = baseline.config.epochs
    trials = study.get_trials(deepcopy=False)
    curves = study_curves(trials)
    fidelity = rung_correlations(curves, target)
    curve = expected_max_curve([t.value for t in trials if t.state.name == "COMPLETE"])
    figures = {**run_figures(runs, data), **study_figures(study),
               "differences": differences_figure(list(cmp.differences), cmp.noise_floor),
               "rung_scatter": rung_scatter_figure(curves, target), "expected_max": expected_max_figure(curve)}
    meta = {"study": study.study_name, "epochs": target, "seeds": len(verdict.baseline),
            "preset": study.user_attrs.get("preset"),
            "baseline_trial": baseline.trial, "best_trial": tuned.trial, "best": tuned.name,
            "winner": tuned.name, "outcome": verdict.outcome,
            "train_images": len(data.train), "train_fraction": baseline.config.data.train_fraction,
            "study_budget": study.user_attrs.get("budget"),
            "spent": compute_spent(trials_table(study)), "device": runs["tuned"][0].dir.read_provenance()["device"],
            "selection_done_at": study.user_attrs["selection"]["at"],
            "first_test_read": study.user_attrs["first_test_read"], "test_reads": reads}
    record_session(study, "report", started)
    meta["job_minutes"] = job_minutes(study)  # every study and report command on record, this one included
    sections = report_sections(verdict, cmp, table, config_table(baseline.config, tuned.config), meta,
                               list(figures), result, everyone, fidelity, curve)
    out = out_root / study.study_name
    title = f"{verdict.outcome.capitalize()}: tuned against baseline, study {study.study_name}"
    write_report(out, title, sections, table, figures,
                 {"verdict": verdict.to_dict(), "paired": cmp.to_dict(), **meta, "race": result.to_dict(),
                  "fidelity": fidelity, "expected_max": curve,
                  "candidates": [{"name": c.name, "trial": c.trial, "study_val_acc": c.val_acc} for c in everyone]})
    tuned.config.to_json(out / WINNER_CONFIG)
    to_dashboard(study, title, sections, figures)
    head = headline_table(cmp, table, tuned_label(tuned))
    print(verdict_text(verdict, tuned_label(tuned)) + "\n\n"
          + "\n".join(" | ".join(row) for row in [head.header, *head.rows]))
    return out


MOST_PAIRS = 10_000  # a comparison's most pairs of seeds: more is a typo


def _looks(text: str) -> tuple[int, ...]:
    try:
        looks = tuple(int(x) for x in text.split(","))
        if max(looks) > MOST_PAIRS:
            raise ValueError(f"at most {MOST_PAIRS} pairs")
        Design(looks)
    except ValueError as e:
        raise argparse.ArgumentTypeError(f"--looks wants increasing pair counts from 2 up, like 6,8,10: {e}") from None
    return looks


def main(argv: Sequence[str] | None = None) -> int:
    p = ArgParser(prog="python -m reports build", description="Build the baseline-vs-tuned report.")
    p.add_argument("--study-name", default=None, help="default: the storage's only study")
    p.add_argument("--storage", default=None,
                   help=f"any SQLAlchemy URL; default: ${STORAGE_ENV}, else {DEFAULT_STORAGE} (a URL with a "
                        "password is best given in the environment: off the command line, out of shell history)")
    p.add_argument("--candidates", type=number(int, 1, 100), default=None,
                   help="the study's top distinct configs that race the baseline on validation (default: the "
                        f"study's, else {REPORT_CANDIDATES})")
    p.add_argument("--race-rounds", type=number(int, 2, 1000), default=None,
                   help="the race's most rounds, one fresh seed each, 2 at least: a spread to plan from "
                        f"(default: the study's, else {RACE_ROUNDS})")
    p.add_argument("--looks", type=_looks, default=None,
                   help="pairs of seeds at each look of the test comparison, e.g. 6,8,10 (default: the "
                        f"study's, else {','.join(map(str, LOOKS))})")
    p.add_argument("--margin", type=number(float, 0, 0.5, above=True), default=None,
                   help="equivalence margin in accuracy, e.g. 0.003 for 0.3 points (default: one run's "
                        "validation noise, measured in the race)")
    p.add_argument("--out", default="results/reports", help="the folder each report goes to: <out>/<study>/")
    p.add_argument("--runs-dir", default="runs/reports", help="cache of retrained runs")
    p.add_argument("--runs-only", action="store_true",
                   help="train the race and the comparison's first look (no test read), write no report "
                        "(needs no plotly)")
    try:
        args = p.parse_args(argv)
        args.storage = args.storage or default_storage()
        if args.runs_only:
            study = open_study(args.storage, args.study_name)
            baseline, candidates, data, result, plan = select_sealed(study, args, Path(args.runs_dir))
            tuned = next(c for c in candidates if c.name == result.winner)
            data.lock_test("--runs-only trains; it never reads the test set")
            ensure_trained({"baseline": baseline.config, "tuned": tuned.config}, plan.seeds[:plan.looks[0]],
                           Path(args.runs_dir), data)
            print(f"runs ready in {args.runs_dir}; build the report from them without --runs-only")
            return 0
        out = build(args.study_name, args.storage, args, Path(args.out), Path(args.runs_dir))
    except (UsageError, DataError) as e:
        return fail(e)
    pick = ", pick.onnx (the pick's model)" if (out / "pick.onnx").is_file() else ""
    print(f"wrote {out}/" + (f"pareto.md, pareto.json{pick}" if (out / "pareto.json").is_file()
                             else f"report.html, summary.md, comparison.csv, figures/, {WINNER_CONFIG} (the config "
                                  "to train)"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
