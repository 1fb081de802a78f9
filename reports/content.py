"""The report's content: DataFrames of the retrained runs, and the sections that say what they show.

Data first (``comparison_frame``, ``histories_frame``, ``per_class_frame``,
``fixed_and_broken``, ``config_table``), then words: ``report_sections`` builds
the document once, which ``reports.render`` turns into Markdown and HTML.
Nothing here reads files or writes.

Usage:
    table = comparison_frame(runs)
    sections = report_sections(cmp, table, configs, meta, figure_names)
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from cifar.config import TrainConfig, flatten
from reports.load import Candidate, LoadedRun
from reports.render import FigureRef, Paragraph, Section, Table
from reports.runs import DATA_LOCATION, Selection
from reports.stats import Paired

Runs = dict[str, list[LoadedRun]]  # "baseline" / "tuned" -> one run per seed
NOT_COMPARED = ("seed", *DATA_LOCATION)  # config fields that are not part of a configuration


def comparison_frame(runs: Runs) -> pd.DataFrame:
    rows = []
    for config, items in runs.items():
        for seed, r in enumerate(items):
            rows.append({"config": config, "seed": seed, "test_acc": r.test.test_acc,
                         "test_acc_tta": r.test.test_acc_tta,
                         "test_loss": r.test.test_loss, "best_val_acc": r.results.best_val_acc,
                         "epochs": r.results.epochs_run, "train_seconds": r.results.train_seconds,
                         "params": r.results.params, "flops": r.results.flops})
    return pd.DataFrame(rows)


def histories_frame(runs: Runs) -> pd.DataFrame:
    return pd.concat([r.history.assign(config=config, seed=seed)
                      for config, items in runs.items() for seed, r in enumerate(items)], ignore_index=True)


def per_class_frame(runs: Runs) -> pd.DataFrame:
    rows = [{"config": config, "class": cls, "acc": acc}
            for config, items in runs.items() for r in items for cls, acc in r.test.per_class_acc.items()]
    df = pd.DataFrame(rows)
    return df.groupby(["config", "class"], sort=False)["acc"].agg(["mean", "std"]).reset_index()


def fixed_and_broken(runs: Runs) -> tuple[np.ndarray, np.ndarray]:
    """Test images right by majority over seeds: (fixed by tuning, broken by it)."""
    def correct(items: list[LoadedRun]) -> np.ndarray:
        return np.stack([(r.predictions.pred == r.predictions.label).numpy() for r in items])

    base_ok = correct(runs["baseline"]).mean(0) > 0.5
    tuned_ok = correct(runs["tuned"]).mean(0) > 0.5
    return np.nonzero(~base_ok & tuned_ok)[0], np.nonzero(base_ok & ~tuned_ok)[0]


def fmt(v) -> str:
    """A config or table value: floats to 4 significant digits, lists comma-separated."""
    if isinstance(v, float):
        return f"{v:.4g}"
    if isinstance(v, (tuple, list)):
        return ",".join(map(fmt, v))
    return str(v)


def config_table(baseline: TrainConfig, tuned: TrainConfig) -> pd.DataFrame:
    """Every compared field of the two configs, the ones that differ first."""
    a, b = flatten(baseline), flatten(tuned)
    rows = [{"field": k, "baseline": fmt(a[k]), "tuned": fmt(b[k]), "differs": a[k] != b[k]}
            for k in a if k not in NOT_COMPARED]
    return pd.DataFrame(sorted(rows, key=lambda r: not r["differs"]))


def differences(baseline: TrainConfig, other: TrainConfig) -> str:
    """The fields where ``other`` differs from ``baseline``, as key=value."""
    a, b = flatten(baseline), flatten(other)
    return " ".join(f"{k}={fmt(b[k])}" for k in a if k not in NOT_COMPARED and a[k] != b[k]) or "(the baseline)"


# ---------------------------------------------------------------- words


def _pct(x: float) -> str:
    return f"{100 * x:.2f}%"


def headline_table(cmp: Paired, table: pd.DataFrame, tuned: str = "tuned") -> Table:
    g = table.groupby("config")
    params, flops, seconds = g["params"].first(), g["flops"].first(), g["train_seconds"].mean()
    tta_mean, tta_std = g["test_acc_tta"].mean(), g["test_acc_tta"].std()
    return Table(["", "baseline", tuned], [
        [f"test accuracy (mean ± std, seeds 0-{cmp.n - 1})",
         f"{_pct(cmp.baseline_mean)} ± {_pct(cmp.baseline_std)}", f"{_pct(cmp.tuned_mean)} ± {_pct(cmp.tuned_std)}"],
        ["the same with test-time augmentation (mirror + translate)",
         *(f"{_pct(tta_mean[c])} ± {_pct(tta_std[c])}" for c in ("baseline", "tuned"))],
        ["parameters", f"{int(params['baseline']):,}", f"{int(params['tuned']):,}"],
        ["forward MFLOPs / image", f"{flops['baseline'] / 1e6:.1f}", f"{flops['tuned'] / 1e6:.1f}"],
        ["training time per run (mean)", f"{seconds['baseline'] / 60:.1f} min", f"{seconds['tuned'] / 60:.1f} min"],
    ])


def verdict(cmp: Paired) -> str:
    """What the paired comparison shows, in words, with every figure it rests on."""
    per_seed = ", ".join(f"{100 * d:+.2f}" for d in cmp.differences)
    ci = ("undefined (the differences have no spread)" if math.isnan(cmp.ci_low)
          else f"[{100 * cmp.ci_low:+.2f}, {100 * cmp.ci_high:+.2f}]")
    text = (f"Difference (tuned - baseline, same seeds): {100 * cmp.difference:+.2f} points "
            f"(per seed: {per_seed}; tuned better on {cmp.wins} of {cmp.n}); paired-t 95% CI {ci}"
            f"{'' if math.isnan(cmp.p_value) else f', p = {cmp.p_value:.3g}'}; exact sign-flip p = "
            f"{cmp.sign_flip_p:.3g} (the smallest {cmp.n} seeds can give: {cmp.smallest_sign_flip_p:.3g})")
    if cmp.bootstrap_low is not None:
        text += f"; bootstrap [{100 * cmp.bootstrap_low:+.2f}, {100 * cmp.bootstrap_high:+.2f}]"
    text += f". One run's noise (baseline seed-to-seed std): {100 * cmp.noise_floor:.2f} points."
    if cmp.significant:
        return (f"{text} The {'tuned' if cmp.difference > 0 else 'baseline'} configuration is better; "
                "the interval excludes zero.")
    return (f"{text} The interval includes zero or is undefined, so this comparison cannot say that "
            "tuning changed test accuracy.")


def budget_text(meta: dict) -> str:
    budget = meta["study_budget"] or {}
    share = meta.get("train_fraction", 1.0)
    where = "the whole train split" if share == 1.0 else f"{share:.0%} of the train split"
    text = (f"Budget: every run is the study's target, {meta['epochs']} epochs on {where} "
            f"({meta['train_images']:,} images), seeds 0-{meta['seeds'] - 1}, on {meta['device']}. The study's "
            f"trials ran the same target; the pruner could stop them at an earlier epoch.")
    if "throughput" in budget:
        text += (f" The study was sized to the {budget['throughput']['train']:.0f} training images/s measured "
                 f"when it was created: {budget['n_trials']} trials by default, the main job estimated at "
                 f"{budget['estimate_minutes']:.0f} min (target {budget['target_minutes']:.0f} min).")
    return text


def spent_text(spent: dict, job: dict[str, float]) -> str:
    return (f"The study: {spent['trials']} trials ({spent['complete']} complete, {spent['pruned']} pruned = "
            f"{spent['pruned_share']:.0%} of finished, {spent['failed']} failed), {spent['trial_epochs']} "
            f"trial-epochs, {spent['train_seconds'] / 3600:.2f} h of training. Wall time on record: study "
            f"{job.get('study', 0):.1f} min, report {job.get('report', 0):.1f} min (every command, resumed ones "
            "included, up to this report).")


def candidates_table(selection: Selection, candidates: list[Candidate]) -> Table:
    """Every config the report trained, with its validation accuracy over the seeds; the winner marked."""
    rows, marks = [], []
    for c in candidates:
        mean, std = selection.mean_std(c.name)
        mark = "winner" if c.name == selection.winner else ""
        rows.append([c.name, str(c.trial), _pct(c.val_acc), f"{_pct(mean)} ± {_pct(std)}", mark,
                     differences(candidates[0].config, c.config)])
        marks.append(bool(mark))
    return Table(["config", "trial", "study val_acc (seed 0)", f"val_acc, {len(selection.val['baseline'])} seeds",
                  "", "differs from the baseline in"], rows, highlight=marks)


def tuned_label(selection: Selection, tuned: Candidate) -> str:
    """The headline's name for the compared config: the winner, or the best candidate that lost."""
    role = "tuned" if selection.winner == tuned.name else "best candidate (lost on validation)"
    return f"{role}: {tuned.name}, trial {tuned.trial}"


def selection_text(selection: Selection) -> str:
    base, _ = selection.mean_std("baseline")
    best, _ = selection.mean_std(selection.best)
    if selection.winner == "baseline":
        return (f"Selection (validation only, before any test read): no candidate beat the baseline's mean "
                f"validation accuracy ({_pct(base)}; the best, {selection.best}, {_pct(best)}). The baseline stays; "
                f"the test comparison below is the baseline against {selection.best}, reported as such.")
    return (f"Selection (validation only, before any test read): {selection.winner} has the highest mean "
            f"validation accuracy, {_pct(best)} against the baseline's {_pct(base)}, so it is the tuned config; "
            "the test set was then read once, for the baseline and the winner.")


def fidelity_table(rows: list[dict], target: int) -> Table:
    def num(v: float) -> str:
        return "" if math.isnan(v) else f"{v:.3f}"

    return Table(["epoch", "completed trials", "Spearman", "Kendall", f"regret at epoch {target} (points)"],
                 [[str(r["fidelity"]), str(r["n"]), num(r["spearman"]), num(r["kendall"]),
                   "" if math.isnan(r["regret"]) else f"{100 * r['regret']:.2f}"] for r in rows])


def report_sections(cmp: Paired, table: pd.DataFrame, configs: pd.DataFrame, meta: dict,
                    figure_names: list[str], selection: Selection, candidates: list[Candidate],
                    fidelity: list[dict]) -> list[Section]:
    """The whole report, once: headline and verdict, selection, budget, configurations, figures."""
    tuned = next(c for c in candidates if c.name == selection.best)
    return [
        Section(None, [headline_table(cmp, table, tuned_label(selection, tuned)), Paragraph(verdict(cmp), strong=True),
                       Paragraph(selection_text(selection)), Paragraph(budget_text(meta)),
                       Paragraph(spent_text(meta["spent"], meta["job_minutes"]))]),
        Section("Candidates, selected on validation", [candidates_table(selection, candidates)]),
        Section("Did the study's early epochs rank the configs as the target does?", [
            Paragraph("Rank correlation between each epoch and the target over the study's completed trials "
                      "(survivors of pruning only, so a biased sample), and the regret of each epoch's top pick."),
            fidelity_table(fidelity, meta["epochs"])]),
        Section("Configurations (the fields that differ first, highlighted)", [Table(
            ["field", f"baseline (trial {meta['baseline_trial']})", f"tuned: {tuned.name} (trial {tuned.trial})"],
            [[r.field, r.baseline, r.tuned] for r in configs.itertuples()],
            highlight=configs["differs"].tolist())]),
        Section("Test reads", [Paragraph("; ".join(
            f"{r['config']}: {len(r['runs'])} runs at {r['at']}" for r in meta["test_reads"])
            + f" (selection done at {meta['selection_done_at']}).")]),
        Section("Figures", [FigureRef(n) for n in figure_names]),
    ]
