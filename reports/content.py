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
from collections.abc import Sequence

import numpy as np
import pandas as pd

from cifar.config import DATA_LOCATION, TrainConfig, flatten
from cifar.tta import REPORTED, TTA_LEVELS
from reports.load import Candidate, LoadedRun
from reports.race import BASELINE, RaceResult
from reports.render import FigureRef, Paragraph, Section, Table
from reports.stats import Paired
from reports.verdict import Verdict, power_text
from study.sequential import POWER, mde

Runs = dict[str, list[LoadedRun]]  # "baseline" / "tuned" -> one run per seed
NOT_COMPARED = ("seed", *DATA_LOCATION)  # config fields that are not part of a configuration


def comparison_frame(runs: Runs, seeds: Sequence[int]) -> pd.DataFrame:
    """One row per run of the test comparison (``seeds``: the comparison's seeds, in order)."""
    rows = []
    for config, items in runs.items():
        for seed, r in zip(seeds, items):
            rows.append({"config": config, "seed": seed, "test_acc": r.test.test_acc,
                         "test_acc_tta": r.test.acc_at(REPORTED),
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
        [f"test accuracy (mean ± std, {cmp.n} fresh seeds)",
         f"{_pct(cmp.baseline_mean)} ± {_pct(cmp.baseline_std)}", f"{_pct(cmp.tuned_mean)} ± {_pct(cmp.tuned_std)}"],
        [f"the same with test-time augmentation ({TTA_LEVELS[REPORTED]})",
         *(f"{_pct(tta_mean[c])} ± {_pct(tta_std[c])}" for c in ("baseline", "tuned"))],
        ["parameters", f"{int(params['baseline']):,}", f"{int(params['tuned']):,}"],
        ["forward MFLOPs / image", f"{flops['baseline'] / 1e6:.1f}", f"{flops['tuned'] / 1e6:.1f}"],
        ["training time per run (mean)", f"{seconds['baseline'] / 60:.1f} min", f"{seconds['tuned'] / 60:.1f} min"],
    ])


def paired_text(cmp: Paired) -> str:
    """The paired statistics of the seeds the verdict read, in words (descriptive: the verdict's rule
    is the sequential interval, ``verdict_text``; these are fixed-sample figures beside it)."""
    per_seed = ", ".join(f"{100 * d:+.2f}" for d in cmp.differences)
    ci = ("undefined (the differences have no spread)" if math.isnan(cmp.ci_low)
          else f"[{100 * cmp.ci_low:+.2f}, {100 * cmp.ci_high:+.2f}]")
    text = (f"Difference (tuned - baseline, same seeds): {100 * cmp.difference:+.2f} points "
            f"(per seed: {per_seed}; tuned better on {cmp.wins} of {cmp.n}); paired-t 95% CI {ci}"
            f"{'' if math.isnan(cmp.p_value) else f', p = {cmp.p_value:.3g}'}; exact sign-flip p = "
            f"{cmp.sign_flip_p:.3g} (the smallest {cmp.n} seeds can give: {cmp.smallest_sign_flip_p:.3g})")
    if cmp.bootstrap_low is not None:
        text += f"; bootstrap [{100 * cmp.bootstrap_low:+.2f}, {100 * cmp.bootstrap_high:+.2f}]"
    return (f"{text}. One run's noise (baseline seed-to-seed std): {100 * cmp.noise_floor:.2f} points. These "
            "fixed-sample figures ignore the looks before the last; the verdict above accounts for them.")


OUTCOME_WORDS = {
    "better": "the tuned config is better than the baseline",
    "worse": "the tuned config is worse than the baseline",
    "equivalent": "the tuned config and the baseline are equivalent",
    "undecided": "the seeds ran out before the comparison decided",
}


def verdict_text(v: Verdict, tuned: str, minutes_per_run: float | None = None) -> str:
    """The report's first line: the outcome, the effect with its interval, P(tuned > baseline), the MDE;
    undecided, also what these seeds could detect and what a decision would cost."""
    last, plan = v.last, v.plan
    lo, hi = v.p_better[1:]
    p_int = "" if math.isnan(lo) else f" [{lo:.2f}, {hi:.2f}]"
    ci = ("undefined (no spread)" if math.isnan(last.low)
          else f"[{100 * last.low:+.2f}, {100 * last.high:+.2f}]")
    text = (f"Verdict: {v.outcome.upper()}: {OUTCOME_WORDS[v.outcome]} on test accuracy ({tuned}). "
            f"Difference {100 * last.mean:+.2f} points over {last.n} fresh seeds each, "
            f"{100 * (1 - last.level):.2f}% repeated confidence interval {ci} (look {len(v.looks)} of "
            f"{len(plan.looks)}, 95% over all looks); equivalence margin +-{100 * plan.delta:.2f} points. "
            f"P(tuned beats baseline on a fresh seed) = {v.p_better[0]:.2f}{p_int}. Bayesian second opinion: "
            f"P(better) {v.bayes[2]:.2f}, P(equivalent) {v.bayes[1]:.2f}, P(worse) {v.bayes[0]:.2f}. "
            f"Minimum detectable effect planned before the test read ({POWER:.0%} power, all {plan.looks[-1]} seeds): "
            f"{100 * plan.mde:.2f} points.")
    if v.outcome == "undecided":
        seen = mde(last.std, last.n, last.level)
        total = 2 * v.more_pairs * (minutes_per_run or 0)
        cost = (f" ({total:.0f} min at this machine's {minutes_per_run:.1f} min a run)" if total >= 1 and
                not math.isinf(v.more_pairs) else "")
        more = ("no number of seeds: the observed difference is zero and the spread too wide"
                if math.isinf(v.more_pairs) else f"about {v.more_pairs:.0f} more pairs of runs{cost}")
        text += (f" At the spread observed, these {last.n} seeds could detect {100 * seen:.2f} points; a decision "
                 f"at this difference and spread would need {more}.")
    return text



def budget_text(meta: dict) -> str:
    budget = meta["study_budget"] or {}
    share = meta.get("train_fraction", 1.0)
    where = "the whole train split" if share == 1.0 else f"{share:.0%} of the train split"
    text = (f"Budget: every run is the study's target, {meta['epochs']} epochs on {where} "
            f"({meta['train_images']:,} images), on {meta['device']}. The study's "
            f"trials ran the same target; the pruner could stop them at an earlier epoch.")
    if "throughput" in budget:
        text += (f" The study was sized to the {budget['throughput']['train']:.0f} training images/s measured "
                 f"when it was created: {budget['n_trials']} trials by default, the main job estimated at "
                 f"{budget['estimate_minutes']:.0f} min (target {budget['target_minutes']:.0f} min).")
    return text


def more_trials_text(curve: list[tuple[int, float]], mde: float) -> str:
    """Does the study need more trials? The expected best of n trials at n = N and N/2, against the
    smallest effect the comparison can detect."""
    if len(curve) < 2:
        return "Too few completed trials to tell whether more trials would help."
    big_n, best = curve[-1]
    half_n, half = curve[len(curve) // 2 - 1]
    gain = best - half
    verdict = ("less than the smallest effect the test comparison detects, so more trials are unlikely to find a "
               "gain this report could show" if gain < mde else
               "as much as the smallest effect the test comparison detects: the study may still gain from more trials")
    return (f"Does the study need more trials? Over its {big_n} completed trials, the expected best validation "
            f"accuracy of {half_n} trials is {_pct(half)} and of {big_n} trials {_pct(best)} (Tang et al. 2020's "
            f"unbiased estimator; the sampler's trials are not independent draws and pruned trials are left out, "
            f"so read it as a trend): doubling the trials gained {100 * gain:.2f} points, {verdict} "
            f"({100 * mde:.2f} points).")


def spent_text(spent: dict, job: dict[str, float]) -> str:
    return (f"The study: {spent['trials']} trials ({spent['complete']} complete, {spent['pruned']} pruned = "
            f"{spent['pruned_share']:.0%} of finished, {spent['failed']} failed), {spent['trial_epochs']} "
            f"trial-epochs, {spent['train_seconds'] / 3600:.2f} h of training. Wall time on record: study "
            f"{job.get('study', 0):.1f} min, report {job.get('report', 0):.1f} min (every command, resumed ones "
            "included, up to this report).")


def race_table(race: RaceResult, candidates: list[Candidate]) -> Table:
    """Every contestant: its study screen, its race seeds' validation accuracy, when it left; the winner marked."""
    left = {name: (i, p) for i, r in enumerate(race.rounds, 1) for name, p in r["knocked_out"].items()}
    rows, marks = [], []
    for c in candidates:
        vals = race.val[c.name]
        std = race.std(c.name)
        spread = "" if math.isnan(std) else f" ± {_pct(std)}"
        status = ("winner" if c.name == race.winner else
                  f"out after round {left[c.name][0]} (p = {left[c.name][1]:.3f})" if c.name in left else
                  "reference" if c.name == BASELINE else "survived, lower mean")
        rows.append([c.name, str(c.trial), _pct(c.val_acc), f"{_pct(float(np.mean(vals)))}{spread} ({len(vals)})",
                     status, differences(candidates[0].config, c.config)])
        marks.append(c.name == race.winner)
    return Table(["config", "trial", "study screen val_acc (seed 0)", "race val_acc (seeds)", "",
                  "differs from the baseline in"], rows, highlight=marks)


def tuned_label(tuned: Candidate) -> str:
    """The headline's name for the compared config: the race's winner."""
    return f"tuned: {tuned.name}, trial {tuned.trial}"


def race_text(race: RaceResult) -> str:
    base = race.mean(BASELINE)
    best = race.mean(race.winner)
    lead = ("and leads the baseline" if best > base else "but trails the baseline")
    return (f"Selection (validation only, the test set sealed): {len(race.val) - 1} candidates and the baseline raced "
            f"over {len(race.seeds)} fresh seeds ({', '.join(map(str, race.seeds))}); the study's own seed-0 run of "
            f"each was only the screen that admitted it. {race.winner} won with {_pct(best)} mean validation "
            f"accuracy {lead} ({_pct(base)}). The winner, the candidates and the comparison's plan were written to "
            "the study before the first test read.")


def fidelity_table(rows: list[dict], target: int) -> Table:
    def num(v: float) -> str:
        return "" if math.isnan(v) else f"{v:.3f}"

    return Table(["epoch", "completed trials", "Spearman", "Kendall", f"regret at epoch {target} (points)"],
                 [[str(r["fidelity"]), str(r["n"]), num(r["spearman"]), num(r["kendall"]),
                   "" if math.isnan(r["regret"]) else f"{100 * r['regret']:.2f}"] for r in rows])


def report_sections(v: Verdict, cmp: Paired, table: pd.DataFrame, configs: pd.DataFrame, meta: dict,
                    figure_names: list[str], race: RaceResult, candidates: list[Candidate],
                    fidelity: list[dict], curve: list[tuple[int, float]]) -> list[Section]:
    """The whole report, once: the verdict first, then the plan, selection, budget, configurations, figures."""
    tuned = next(c for c in candidates if c.name == race.winner)
    return [
        Section(None, [Paragraph(verdict_text(v, tuned_label(tuned), float(table["train_seconds"].mean()) / 60),
                                 strong=True),
                       headline_table(cmp, table, tuned_label(tuned)), Paragraph(power_text(v.plan)),
                       Paragraph(paired_text(cmp)), Paragraph(race_text(race)), Paragraph(budget_text(meta)),
                       Paragraph(spent_text(meta["spent"], meta["job_minutes"])),
                       Paragraph(more_trials_text(curve, v.plan.mde))]),
        Section("Candidates, raced on validation", [race_table(race, candidates)]),
        Section("The looks of the test comparison", [looks_table(v)]),
        Section("Did the study's early epochs rank the configs as the target does?", [
            Paragraph("Rank correlation between each epoch and the target over the study's completed trials "
                      "(survivors of pruning only, so a biased sample), and the regret of each epoch's top pick."),
            fidelity_table(fidelity, meta["epochs"])]),
        Section("Configurations (the fields that differ first, highlighted)", [Table(
            ["field", f"baseline (trial {meta['baseline_trial']})", f"tuned: {tuned.name} (trial {tuned.trial})"],
            [[r.field, r.baseline, r.tuned] for r in configs.itertuples()],
            highlight=configs["differs"].tolist())]),
        Section("Test reads", [Paragraph(
            f"Selection and plan written to the study at {meta['selection_done_at']}; the first test read at "
            f"{meta['first_test_read']}, after which the plan is frozen (a rebuild with another design is "
            f"refused); {sum(r['evaluated_now'] for r in meta['test_reads'])} runs evaluated on the test set by "
            f"this build, {len(meta['test_reads'])} read.")]),
        Section("Figures", [FigureRef(n) for n in figure_names]),
    ]


def looks_table(v: Verdict) -> Table:
    def pts(x: float) -> str:
        return "" if math.isnan(x) else f"{100 * x:+.2f}"

    return Table(["look", "pairs", "mean difference (points)", "interval level", "interval (points)", "outcome"],
                 [[str(i), str(lk.n), pts(lk.mean), f"{100 * (1 - lk.level):.2f}%", f"[{pts(lk.low)}, {pts(lk.high)}]",
                   lk.outcome or "go on"] for i, lk in enumerate(v.looks, 1)])
