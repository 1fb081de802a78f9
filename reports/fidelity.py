"""How well a cheaper fidelity ranks configs as the target does: rank correlation and regret.

A pruner decides at its rungs (epochs of the target run) on validation accuracy
there; that is worth something only if the order of configs at a rung is the
order at the target. ``rung_correlations`` measures it over any set of learning
curves: the study's own completed trials (survivors only: pruned trials never
reached the target), or ``bench/fidelity.py``'s configs trained to the target.

Usage:
    rows = rung_correlations({"a": {1: 0.41, 2: 0.60, 4: 0.80}, "b": {...}}, target=4)
    first_rung_by_rule(rows)  # the rule that chose the pruners' first rung (docs/study.md)
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Mapping

from scipy import stats


def rung_correlations(curves: Mapping[Hashable, Mapping[int | str, float]], target: int | str) -> list[dict]:
    """Per fidelity (an epoch, or any other key of the curves) other than the target: the configs
    measured at both, Spearman's rho and Kendall's tau between the two, and the regret at the
    target of the fidelity's top pick (the best target value minus the pick's)."""
    fidelities = sorted({f for c in curves.values() for f in c if f != target}, key=lambda f: (isinstance(f, str), f))
    rows = []
    for f in fidelities:
        keys = [k for k, c in curves.items() if f in c and target in c]
        x = [curves[k][f] for k in keys]
        y = [curves[k][target] for k in keys]
        row = {"fidelity": f, "n": len(keys), "spearman": math.nan, "kendall": math.nan, "regret": math.nan}
        if len(keys) >= 3 and len(set(x)) > 1 and len(set(y)) > 1:
            row["spearman"] = float(stats.spearmanr(x, y).statistic)
            row["kendall"] = float(stats.kendalltau(x, y).statistic)
        if keys:
            row["regret"] = max(y) - y[max(range(len(x)), key=x.__getitem__)]
        rows.append(row)
    return rows


RULE_SPEARMAN = 0.6  # the least rank correlation with the target at which a rung may prune
BEST_FEW = 3         # the target's best configs a rung's halving must keep
KEEP_SHARE = 1 / 3   # what successive halving keeps at a rung (1 / its reduction factor of 3)


def spearman_interval(rho: float, n: int, level: float = 0.95) -> tuple[float, float]:
    """An interval for Spearman's rho: Fisher's z with Bonett & Wright's (2000) standard error,
    sqrt((1 + rho^2 / 2) / (n - 3)); nan below 4 configs."""
    if n < 4 or math.isnan(rho):
        return math.nan, math.nan
    z, se = math.atanh(max(-0.9999, min(0.9999, rho))), math.sqrt((1 + rho**2 / 2) / (n - 3))
    q = stats.norm.ppf(0.5 + level / 2)
    return min(rho, math.tanh(z - q * se)), max(rho, math.tanh(z + q * se))  # a perfect order: up to +-1


def transfer_among_the_best(curves: Mapping[Hashable, Mapping[int | str, float]], target: int | str,
                            best: int = BEST_FEW, keep: float = KEEP_SHARE) -> list[dict]:
    """What a pruner needs, per fidelity: does it rank the configs that matter as the target does?
    Spearman over the better half at the target (with its interval), and whether a halving at that
    fidelity (keeping its top ``keep`` share) would have kept every one of the target's ``best``."""
    rows = []
    for row in rung_correlations(curves, target):
        f = row["fidelity"]
        keys = [k for k, c in curves.items() if f in c and target in c]
        by_target = sorted(keys, key=lambda k: -curves[k][target])
        top = by_target[: max(3, len(keys) // 2)]
        half = rung_correlations({k: curves[k] for k in top}, target)
        rho = next((r["spearman"] for r in half if r["fidelity"] == f), math.nan)
        kept = set(sorted(keys, key=lambda k: -curves[k][f])[: max(1, math.ceil(len(keys) * keep))])
        lost = [k for k in by_target[:best] if k not in kept]
        rows.append({**row, "spearman_ci": spearman_interval(row["spearman"], row["n"]),
                     "top_half_n": len(top), "top_half_spearman": rho,
                     "top_half_ci": spearman_interval(rho, len(top)), "best_removed": [str(k) for k in lost]})
    return rows


def supported_rung(*populations: list[dict], threshold: float = RULE_SPEARMAN) -> int | None:
    """The earliest epoch a pruner may stop trials at, by the rule fixed before the measurement, in
    every population measured (rows of ``transfer_among_the_best``): over all configs Spearman >=
    ``threshold``, over the better half no reversal (Spearman >= 0), and a halving there keeps every
    one of the target's best few. None where no epoch qualifies in all of them."""
    def passing(rows: list[dict]) -> set[int]:
        return {int(str(r["fidelity"]).removeprefix("epoch ")) for r in rows
                if str(r["fidelity"]).startswith("epoch ") and r["spearman"] >= threshold
                and r["top_half_spearman"] >= 0 and not r["best_removed"]}

    ok = set.intersection(*map(passing, populations)) if populations else set()
    return min(ok) if ok else None


def first_rung_by_rule(rows: list[dict], threshold: float = RULE_SPEARMAN) -> int | None:
    """The earliest epoch (fidelities named ``epoch K``, from ``rung_correlations``) whose Spearman
    correlation with the target is at least ``threshold``; None where none is."""
    epochs = sorted(int(r["fidelity"].removeprefix("epoch ")) for r in rows
                    if str(r["fidelity"]).startswith("epoch ") and r["spearman"] >= threshold)
    return epochs[0] if epochs else None


def study_curves(trials) -> dict[int, dict[int, float]]:
    """trial number -> {epoch: val_acc} of the completed trials (the survivors of pruning)."""
    return {t.number: dict(t.intermediate_values) for t in trials
            if t.state.name == "COMPLETE" and t.intermediate_values}
