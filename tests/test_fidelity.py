"""Proxy transfer: rank correlation and regret of a cheaper fidelity, in the report and the benchmark."""

from __future__ import annotations

import importlib.util
import json
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


def test_the_study_prunes_only_where_a_committed_measurement_supports_a_rung():
    import json

    from reports.fidelity import supported_rung
    from study import pruning

    for path in sorted((ROOT / "results" / "bench").glob("fidelity*.json")):
        result = json.loads(path.read_text())
        target, rung = result["target_epochs"], result["supported_rung"]
        if result["configs"] >= 16:  # the rule's verdict, recomputed from the committed rows (both populations)
            population = result.get("study_population")
            assert supported_rung(result["transfer_among_the_best"],
                                  *([population["transfer_among_the_best"]] if population else [])) == rung
        else:
            assert rung is None and "16 needed" in result["supported_rung_why"]
        assert pruning.measured_first_rung(target)[0] == rung
        assert pruning.default_pruner(target) == ("hyperband" if rung else "none")
    assert pruning.measured_first_rung(99)[0] is None and pruning.default_pruner(99) == "none"  # unmeasured


def test_transfer_among_the_best_finds_a_rung_that_would_remove_the_winner():
    from reports.fidelity import supported_rung, transfer_among_the_best

    # 16 configs; at epoch 1 the target's best ("p", a slow starter) ranks last: a halving there loses it.
    target = {k: 0.60 + 0.01 * i for i, k in enumerate("abcdefghijklmnop")}
    epoch1 = {**{k: 0.30 + 0.01 * i for i, k in enumerate("abcdefghijklmno")}, "p": 0.10}
    epoch2 = {k: v - 0.1 for k, v in target.items()}  # the target's order exactly
    curves = {k: {"epoch 1": epoch1[k], "epoch 2": epoch2[k], "target": target[k]} for k in target}
    rows = {r["fidelity"]: r for r in transfer_among_the_best(curves, "target")}
    assert rows["epoch 1"]["best_removed"] == ["p"] and rows["epoch 2"]["best_removed"] == []
    assert rows["epoch 1"]["top_half_n"] == 8 and rows["epoch 2"]["top_half_spearman"] == pytest.approx(1.0)
    low, high = rows["epoch 2"]["spearman_ci"]
    assert low < rows["epoch 2"]["spearman"] == high == 1.0  # a perfect order: the interval reaches 1
    # Epoch 1 ranks all nine well enough (Spearman >= 0.6) but would lose the winner: epoch 2 is the rung.
    assert rows["epoch 1"]["spearman"] >= 0.6 and supported_rung(list(rows.values())) == 2


def test_a_rung_must_also_keep_the_best_of_the_studys_own_trials(tmp_path):
    import optuna

    from bench.fidelity import study_population, verdict
    from reports.fidelity import supported_rung, transfer_among_the_best

    # The random population: epoch 1 ranks as the target does. The study's own population (good configs
    # only): its winner "9" starts slowest, so a halving at epoch 1 would remove it.
    random = {k: {"epoch 1": 0.3 + 0.02 * k, "target": 0.6 + 0.01 * k} for k in range(16)}
    url = f"sqlite:///{tmp_path / 's.db'}"
    study = optuna.create_study(storage=url, study_name="s", direction="maximize")
    study.set_user_attr("budget", {"target_epochs": 2})
    for k in range(10):
        trial = study.ask()
        trial.report(0.10 if k == 9 else 0.5 + 0.01 * k, 1)
        trial.report(0.80 + 0.001 * k, 2)
        study.tell(trial, 0.80 + 0.001 * k)
    population = study_population(url, "s", 2)
    assert population["trials"] == 10
    mine, theirs = transfer_among_the_best(random, "target"), population["transfer_among_the_best"]
    assert supported_rung(mine) == 1 and theirs[0]["best_removed"] == ["9"]
    assert supported_rung(mine, theirs) is None
    why = verdict(None, 16, 1, population)
    assert "epoch 1 passes the rule" in why and "would remove trial(s) 9" in why
    with pytest.raises(SystemExit, match="did not train at the 3-epoch target"):
        study_population(url, "s", 3)
    trial = study.ask()
    trial.report(0.2, 1)
    study.tell(trial, state=optuna.trial.TrialState.PRUNED)
    with pytest.raises(SystemExit, match="pruned trials"):
        study_population(url, "s", 2)


def test_spearman_interval():
    from reports.fidelity import spearman_interval

    low, high = spearman_interval(0.78, 11)
    assert low < 0.78 < high and 0.2 < low < 0.35 and high > 0.9  # wide at 11 configs
    narrower = spearman_interval(0.78, 40)
    assert low < narrower[0] and narrower[1] < high
    assert all(math.isnan(x) for x in spearman_interval(0.5, 3))


def test_the_study_reads_the_rung_of_the_measurement_at_its_target(tmp_path):
    from study.pruning import measured_first_rung

    def write(name, target, configs, rung):
        (tmp_path / name).write_text(json.dumps({"target_epochs": target, "configs": configs, "supported_rung": rung,
                                                 "supported_rung_why": f"{configs} configs"}))

    write("fidelity.json", 4, 11, None)
    write("fidelity-3ep.json", 3, 16, 1)
    write("fidelity-3ep-more.json", 3, 24, 2)  # two at one target: the one with more configs
    assert measured_first_rung(3, tmp_path) == (2, "fidelity-3ep-more.json: 24 configs")
    assert measured_first_rung(4, tmp_path)[0] is None
    rung, why = measured_first_rung(5, tmp_path)
    assert rung is None and "no fidelity measurement" in why
