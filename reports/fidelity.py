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
