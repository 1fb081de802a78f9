"""Proxy transfer: rank correlation and regret of a cheaper fidelity, in the report and the benchmark."""

from __future__ import annotations

import importlib.util
import math
from pathlib import Path

import optuna
import pytest

from reports.fidelity import rung_correlations, study_curves

ROOT = Path(__file__).resolve().parents[1]


def test_rung_correlations_against_published_values():
    # SciPy's documented examples: spearmanr([1, 2, 3, 4, 5], [5, 6, 7, 8, 7]) = 0.8207826816681233;
    # kendalltau([12, 2, 1, 12, 2], [1, 4, 7, 1, 0]) = -0.47140452079103173 (tau-b, with ties).
    curves = {k: {"epoch 1": x, "target": y} for k, x, y in zip("abcde", [1, 2, 3, 4, 5], [5, 6, 7, 8, 7])}
    (row,) = rung_correlations(curves, "target")
    assert row["n"] == 5 and row["spearman"] == pytest.approx(0.8207826816681233)
    # The rung's top pick ("e", 5) reaches 7 at the target; the best reaches 8: regret 1.
    assert row["regret"] == pytest.approx(1.0)
    curves = {k: {1: x, 4: y} for k, x, y in zip("abcde", [12, 2, 1, 12, 2], [1, 4, 7, 1, 0])}
    assert rung_correlations(curves, 4)[0]["kendall"] == pytest.approx(-0.47140452079103173)


def test_rung_correlations_need_three_configs_and_spread():
    rows = rung_correlations({"a": {1: 0.3, 2: 0.5}, "b": {1: 0.4, 2: 0.6}, "c": {1: 0.2}}, target=2)
    assert rows[0]["n"] == 2 and math.isnan(rows[0]["spearman"])  # "c" never reached the target


def test_study_curves_keep_the_survivors_only():
    study = optuna.create_study(direction="maximize")
    for value, state in ((0.5, "complete"), (0.3, "pruned"), (0.7, "complete")):
        trial = study.ask()
        trial.report(value / 2, 1)
        trial.report(value, 2)
        if state == "pruned":
            study.tell(trial, state=optuna.trial.TrialState.PRUNED)
        else:
            study.tell(trial, value)
    assert study_curves(study.get_trials()) == {0: {1: 0.25, 2: 0.5}, 2: {1: 0.35, 2: 0.7}}


def test_fidelity_benchmark_analysis():
    spec = importlib.util.spec_from_file_location("fidelity_bench", ROOT / "bench" / "fidelity.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    records = [
        {"name": "baseline-seed0", "fidelity": "target", "val_acc": {1: 0.5, 2: 0.80}},
        {"name": "baseline-seed1", "fidelity": "target", "val_acc": {1: 0.6, 2: 0.82}},
        {"name": "baseline-seed2", "fidelity": "target", "val_acc": {1: 0.4, 2: 0.81}},
        {"name": "config-01", "fidelity": "target", "val_acc": {1: 0.3, 2: 0.70}},
        {"name": "config-02", "fidelity": "target", "val_acc": {1: 0.6, 2: 0.75}},
        {"name": "config-01", "fidelity": "subset", "val_acc": {1: 0.2, 2: 0.50}},
        {"name": "config-02", "fidelity": "subset", "val_acc": {1: 0.3, 2: 0.40}},
        {"name": "baseline-seed0", "fidelity": "subset", "val_acc": {1: 0.3, 2: 0.60}},
    ]
    out = bench.analyse(records, target=2)
    assert out["configs"] == 3  # seed 0 of the baseline and the two configs; seeds 1-2 are the noise floor
    assert out["noise_floor"]["std"] == pytest.approx(0.01)
    rows = {r["fidelity"]: r for r in out["correlations"]}
    # epoch 1: order config-02 (0.6) > baseline (0.5) > config-01 (0.3); at the target baseline > 02 > 01.
    assert rows["epoch 1"]["spearman"] == pytest.approx(0.5) and rows["epoch 1"]["regret"] == pytest.approx(0.05)
    subset = next(k for k in rows if k.startswith("subset"))
    assert rows[subset]["spearman"] == pytest.approx(0.5)  # baseline 0.6 > 01 0.5 > 02 0.4
    assert rows[subset]["regret"] == pytest.approx(0.0)


def test_the_rule_picks_the_earliest_epoch_that_ranks_as_the_target_does():
    from reports.fidelity import first_rung_by_rule

    rows = [{"fidelity": f"epoch {e}", "spearman": rho} for e, rho in ((1, 0.1), (2, 0.65), (3, 0.55))]
    assert first_rung_by_rule(rows) == 2
    assert first_rung_by_rule(rows, threshold=0.7) is None
    assert first_rung_by_rule([{"fidelity": "epoch 1", "spearman": math.nan}]) is None


def test_the_pruners_first_rung_follows_the_rule_on_the_committed_benchmark():
    import json

    from reports.fidelity import first_rung_by_rule
    from study import storage

    result = json.loads((ROOT / "results" / "bench" / "fidelity.json").read_text())
    if len({r["name"] for r in result["runs"] if not r["name"].startswith("baseline-seed")}) < 10:
        pytest.skip("the fidelity benchmark has not finished its 10 configs yet")
    rung = first_rung_by_rule(result["correlations"])
    assert rung == result["first_rung_by_rule"]
    if rung is None:
        assert storage.FIRST_RUNG_SHARE is None and storage.DEFAULT_PRUNER == "none"
    else:
        assert storage.first_rung(result["target_epochs"]) == rung and storage.DEFAULT_PRUNER == "hyperband"
