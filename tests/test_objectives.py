"""study/objectives.py: a study of val_acc and inference costs (several objectives), its pruning and its report."""

from __future__ import annotations

import json

import optuna
import pytest

from cifar.config import TrainConfig
from study.objectives import Constraint, parse_constraint, parse_objectives, study_objectives
from study.pruning import ParetoHalving
from study.run import main
from tests.test_study import load, study_env  # noqa: F401  (fixture)


def test_objectives_and_constraints_parse_or_say_why():
    assert parse_objectives("val_acc, latency,params") == ("val_acc", "latency", "params")
    assert parse_constraint("latency_ms<=4.5") == parse_constraint("latency<=4.5") == Constraint("latency", 4.5)
    assert Constraint("flops", 10).violation({"flops": 12}) == 2  # > 0: infeasible
    for bad in ("latency", "val_acc,val_acc", "val_acc,speed", ""):
        with pytest.raises(ValueError):
            parse_objectives(bad)
    for bad in ("latency<5", "latency<=-1", "latency<=nan", "val_acc<=1", "latency<=x"):
        with pytest.raises(ValueError, match="NAME<=LIMIT"):
            parse_constraint(bad)
    with pytest.raises(ValueError, match="cannot prune"):
        study_objectives("val_acc,latency", None, None, "hyperband")
    with pytest.raises(ValueError, match="among --objectives"):
        study_objectives("val_acc,flops", "latency<=3", None, None)
    assert study_objectives(None, None, None, None) == (("val_acc",), None)


def test_a_study_of_val_acc_and_costs_runs_unpruned_and_says_so(study_env, capsys):  # noqa: F811
    args = study_env["args"] + ["--study-name", "mo", "--n-trials", "3", "--objectives", "val_acc,latency,params",
                                "--constraint", "params<=3000", "--pruner", "pareto-third", "--target-epochs", "3"]
    assert main(args) == 0
    out = capsys.readouterr().out
    study = load(study_env, "mo")
    assert [d.name for d in study.directions] == ["MAXIMIZE", "MINIMIZE", "MINIMIZE"]
    assert study.metric_names == ["val_acc", "latency", "params"] and study.user_attrs["pruner"] == "pareto-third"
    complete = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    assert len(complete) == 3
    for t in complete:
        costs = t.user_attrs["costs"]
        assert t.values[1] == costs["latency"] == costs["latency_detail"]["batch_1"]["median_ms"] > 0
        assert t.values[2] == costs["params"] == t.user_attrs["params"]
        assert t.constraints == {"params": costs["params"] - 3000}  # what the sampler reads
        assert not t.intermediate_values  # Optuna cannot take reports in such a study: the curve is ours
        assert sorted(t.user_attrs["val_acc_curve"]) == ["1", "2", "3"]
    assert "latency" in out and "best val_acc" in out
    assert "what to deploy: the report's pick within its cost limit" in out and "winner_config" not in out
    # Resumed without the options, it keeps its own; with other objectives it is refused.
    assert main(study_env["args"] + ["--study-name", "mo", "--n-trials", "3", "--target-epochs", "3"]) == 0
    assert main(study_env["args"] + ["--study-name", "mo", "--objectives", "val_acc"]) == 2
    assert "maximizes and minimizes and minimizes" in capsys.readouterr().err
    from cifar.config import TrainConfig
    from reports.build import main as report_main
    from study.search_space import suggest_config
    from study.show import main as show_main

    assert show_main(["--storage", study_env["url"], "--study-name", "mo"]) == 0
    shown = capsys.readouterr().out
    assert "objectives val_acc, latency, params" in shown and "latency" in shown.splitlines()[1]
    # A trial as a cheap, accurate config would end (a real config, faked values): on the front, within half
    # the baseline's latency (the constraint is on params; the front's axis is latency), so it is the pick.
    study, base = load(study_env, "mo"), load(study_env, "mo").trials[0]
    dist = base.distributions
    cheap = {**base.params, "dropout": 0.1}
    config = suggest_config(optuna.trial.FixedTrial(cheap), TrainConfig.from_dict(study.user_attrs["base_config"]))
    costs = {**base.user_attrs["costs"], "latency": base.values[1] * 0.4}
    study.add_trial(optuna.trial.create_trial(values=[0.99, costs["latency"], costs["params"]], params=cheap,
                                              distributions=dist, user_attrs={"config": config.to_dict(),
                                                                              "costs": costs}))
    out = study_env["tmp"] / "r"
    argv = ["--storage", study_env["url"], "--study-name", "mo", "--out", str(out), "--race-rounds", "2",
            "--looks", "3,4", "--runs-dir", str(study_env["tmp"] / "report-runs")]
    assert report_main(argv) == 0
    summary = json.loads((out / "mo" / "pareto.json").read_text())
    assert summary["objectives"] == ["val_acc", "latency", "params"] and summary["cost"] == "latency"
    assert summary["limit_from"] == "half the baseline's" and summary["limit"] == base.values[1] / 2
    pick = len(study.trials) - 1  # the trial just added
    assert summary["pick_under_limit"]["trial"] == pick and pick in {r["trial"] for r in summary["front"]}
    verdict = summary["comparison"]["verdict"]
    assert verdict["outcome"] in ("better", "worse", "equivalent", "undecided") and (out / "mo" / "pick.onnx").is_file()
    assert load(study_env, "mo").user_attrs["selection"]["winner_trial"] == pick  # recorded before the test read
    from optuna_dashboard._custom_plot_data import get_plotly_graph_objects

    shown = load(study_env, "mo")  # in optuna-dashboard: the report as the note, the hypervolume history
    assert "hypervolume_history" in get_plotly_graph_objects(shown._storage.get_study_system_attrs(shown._study_id))
    text = (out / "mo" / "pareto.md").read_text()
    assert f"trial {pick} (the pick, latency" in text and "pick.onnx" in capsys.readouterr().out
    study.set_user_attr("pick_tta", 2)  # as if the test set had been read for this trial at another TTA level
    assert report_main(argv) == 2
    assert "a new pick after a test read needs a new study" in capsys.readouterr().err


def test_pareto_halving_ranks_a_trial_only_among_trials_that_cost_no_more():
    rule = ParetoHalving(max_epochs=9, costs=("latency",))
    assert rule.rungs() == [2, 6]  # a quarter of the target, then x3 (MOASHA's grace period, one epoch of four)
    assert ParetoHalving(4, ("latency",)).rungs() == [1, 3] and ParetoHalving(2, ("latency",)).rungs() == [1]
    expensive = [(0.9, {"latency": 10.0})] * 5
    assert rule.keeps(0.5, {"latency": 1.0}, expensive)  # better models, all dearer: no rival
    cheap_rivals = [(0.8, {"latency": 1.0}), (0.7, {"latency": 0.5}), (0.6, {"latency": 1.0})]
    assert not rule.keeps(0.5, {"latency": 1.0}, cheap_rivals)  # last of 4 that cost no more
    assert rule.keeps(0.9, {"latency": 1.0}, cheap_rivals)  # first of 4: in the top quarter
    assert rule.keeps(0.1, {"latency": 1.0}, cheap_rivals[:1])  # 2 compete: fewer than 3, both go on
    front_only = ParetoHalving(max_epochs=9, costs=("latency",), beaten=1)  # --pruner pareto-front
    assert front_only.keeps(0.85, {"latency": 1.0}, cheap_rivals) and front_only.keeps(0.5, {"latency": 1.0}, expensive)
    assert not front_only.keeps(0.75, {"latency": 1.0}, cheap_rivals)  # one cheaper trial was more accurate
    from study.pruning import cost_rule

    names = ("pareto", "pareto-front", "pareto-front-own", "pareto-third")
    rules = {name: cost_rule(name, 4, ("latency",)) for name in names}
    assert [(r.beaten, r.ranked_by) for r in rules.values()] == [(1, "own"), (1, "plain"), (1, "own"), (None, "plain")]
    assert cost_rule("hyperband", 4, ("latency",)) is None
    # A study's sizing counts whole runs for a rule that keeps the rung's front (what it stops depends on the
    # draws), the halving schedule's share for the top third.
    from study.pruning import epoch_share, halving_share

    assert epoch_share(4, "pareto") == epoch_share(4, "pareto-front") == 1.0
    assert epoch_share(4, "pareto-third") == halving_share(4, 1) < 1
    # A study made before its rule was recorded ran --pruner pareto's earlier rule, the top third at plain costs.
    from study.pruning import rule_conflict, stored_rule

    before, now = {"pruner": "pareto"}, {"pruner": "pareto", "pruner_rule": [1, "own"]}
    assert stored_rule(before) == (None, "plain") and stored_rule(now) == (1, "own")
    assert stored_rule({"pruner": "hyperband", "pruner_rule": None}) is None
    why = rule_conflict(before, "pareto")
    assert why and "resume it with one that ranks by plain costs (pareto-front, pareto-third)" in why
    assert rule_conflict(before, "pareto-third") is None and rule_conflict(now, "pareto-front-own") is None


def test_pareto_halving_on_synthetic_curves_saves_epochs_and_keeps_the_front():
    """300 trials of synthetic learning curves: a trial's final accuracy is mostly its hyperparameters'
    luck and a little its cost (a larger model), its curve rises towards it (its ranking at a rung follows
    its final one, with noise): the rule's decisions against running every trial to the end."""
    import math
    import random

    from reports.pareto import hypervolume

    rng, rule, epochs = random.Random(0), ParetoHalving(max_epochs=9, costs=("latency",)), 9
    seen: dict[int, list[tuple[float, dict]]] = {}
    spent, kept, everything = 0, [], []
    for _ in range(300):
        cost = rng.uniform(1, 10)
        final = 0.55 + 0.3 * rng.random() + 0.05 * math.log10(cost)
        curve = {e: final * (1 - 0.5 ** (e + 1)) + rng.gauss(0, 0.005) for e in range(1, epochs + 1)}
        everything.append((curve[epochs], cost))
        for e in range(1, epochs + 1):
            spent += 1
            if e in rule.rungs():
                peers = seen.setdefault(e, [])
                go_on = rule.keeps(curve[e], {"latency": cost}, peers)
                peers.append((curve[e], {"latency": cost}))
                if not go_on:
                    break
        else:
            kept.append((curve[epochs], cost))
    saved = 1 - spent / (300 * epochs)
    ref = (min(a for a, _ in everything), 10.0)
    ratio = hypervolume(kept, ref) / hypervolume(everything, ref)
    assert saved > 0.3 and ratio > 0.95, (saved, ratio)


def test_the_front_its_knee_and_its_hypervolume():
    from optuna.distributions import FloatDistribution

    from reports.pareto import front, hypervolume, knee

    def trial(number, acc, latency):
        return optuna.trial.create_trial(values=[acc, latency], params={"x": 0.5},
                                         distributions={"x": FloatDistribution(0, 1)}, user_attrs={})
    points = [(0.80, 1.0), (0.85, 2.0), (0.86, 8.0), (0.70, 3.0), (0.84, 2.5)]  # the last two dominated
    trials = [trial(i, a, c) for i, (a, c) in enumerate(points)]
    shown = front(trials)
    assert [(t.values[0], t.values[1]) for t in shown] == [(0.80, 1.0), (0.85, 2.0), (0.86, 8.0)]
    assert knee(shown).values == [0.85, 2.0]  # most of the accuracy at a quarter of the dearest cost
    assert knee(shown[:2]) is None
    from reports.pareto import hypervolume_history

    for t, when in zip(trials, range(5)):  # completed in this order
        t.datetime_complete = t.datetime_complete.replace(microsecond=when)
    gains = [h for _, h in hypervolume_history(trials)]
    assert gains == sorted(gains) and gains[-1] > 0  # a front only grows
    assert hypervolume([(0.8, 1.0), (0.85, 2.0)], ref=(0.7, 10.0)) == pytest.approx(0.1 * 9 + 0.05 * 8)


def test_a_resume_must_keep_the_objectives_and_the_constraint():
    from types import SimpleNamespace

    attrs = {"objectives": ["val_acc", "latency"], "constraint": "latency<=4"}
    made = SimpleNamespace(study_name="s", user_attrs=attrs,
                           directions=[optuna.study.StudyDirection.MAXIMIZE, optuna.study.StudyDirection.MINIMIZE])
    assert study_objectives(None, None, made, "pareto") == (("val_acc", "latency"), Constraint("latency", 4.0))
    with pytest.raises(ValueError, match="choose another --study-name"):  # the same directions, another cost
        study_objectives("val_acc,flops", None, made, None)
    with pytest.raises(ValueError, match="a new --constraint needs a new --study-name"):
        study_objectives(None, "latency<=2", made, None)


def test_the_pareto_report_needs_a_complete_trial_and_keeps_to_the_constraint():
    from optuna.distributions import FloatDistribution

    from cifar.cli import UsageError
    from reports.pareto import pareto_summary

    study = optuna.create_study(directions=["maximize", "minimize"])
    study.set_metric_names(["val_acc", "latency"])
    study.ask()  # running, nothing complete
    with pytest.raises(UsageError, match="no complete trial yet"):
        pareto_summary(study)
    dist = {"x": FloatDistribution(0, 1)}
    for acc, latency, attrs, limit in [(0.8, 2.0, {"baseline": True}, None), (0.9, 0.5, {}, 1.0), (0.7, 0.4, {}, -1.0)]:
        trial = optuna.trial.create_trial(values=[acc, latency], params={"x": 0.5}, distributions=dist,
                                          user_attrs=attrs,
                                          system_attrs={} if limit is None else {"constraints:latency": limit})
        study.add_trial(trial)
    summary = pareto_summary(study)  # the front: trial 3 (0.7, 0.4), trial 2 (0.9, 0.5), which breaks the constraint
    assert [r["trial"] for r in summary["front"]] == [3, 2] and summary["limit"] == 1.0  # half the baseline's
    assert summary["pick_under_limit"]["trial"] == 3


def test_pareto_halving_leaves_out_a_failed_trial_whose_retry_stands_for_it():
    from study.pruning import CURVE_ATTR

    study = optuna.create_study(directions=["maximize", "minimize"])
    for state in (optuna.trial.TrialState.FAIL, optuna.trial.TrialState.COMPLETE):
        trial = study.ask()
        trial.set_user_attr(CURVE_ATTR, {"1": 0.8})
        trial.set_user_attr("costs", {"latency": 1.0})
        study.tell(trial, [0.8, 1.0] if state == optuna.trial.TrialState.COMPLETE else None, state=state)
    assert ParetoHalving(9, ("latency",)).peers(study, 1, number=99) == [(0.8, {"latency": 1.0})]


def test_a_cost_space_trial_is_scored_and_timed_at_its_tta_level(study_env, capsys):  # noqa: F811
    """The TTA level is searched: a trial's val_acc is its best checkpoint's at that level, its FLOPs count
    every pass, its latency is its graph's with TTA inside; one architecture is timed once per machine."""
    from cifar.data import prepare_data
    from cifar.evaluate import val_accuracy
    from cifar.rundir import RunDir
    from cifar.tta import tta_passes
    from study.search_space import trial_config

    args = study_env["args"] + ["--study-name", "tta", "--objectives", "val_acc,latency,flops", "--space", "cost",
                                "--target-epochs", "1", "--set", "widths=32,64,64", "--set", "depth=1",
                                "--pruner", "pareto-front"]  # a 1-epoch target: no rung, nothing pruned
    assert main(args + ["--n-trials", "1"]) == 0  # the baseline: no TTA
    study = load(study_env, "tta")
    base = study.trials[0]
    assert base.params["tta"] == 0 and base.user_attrs["costs"]["latency_detail"]["cached"] is False
    for tta in (2, 0):  # the baseline's architecture and training, predicting with TTA, then without
        study.enqueue_trial({**base.params, "tta": tta})
    assert main(args + ["--n-trials", "3"]) == 0
    study = load(study_env, "tta")
    t0, t2, again = study.trials[:3]
    assert t2.params["tta"] == 2 and t2.user_attrs["costs"]["tta"] == 2
    assert t2.values[2] == t0.values[2] * tta_passes(2)  # FLOPs per image: six passes
    assert t2.values[1] > t0.values[1] and t2.user_attrs["costs"]["latency_detail"]["tta"] == 2
    assert again.values[1] == t0.values[1] and again.user_attrs["costs"]["latency_detail"]["cached"] is True
    # Its rungs rank the weights it trains by their plain accuracy, so at their plain cost.
    assert t2.user_attrs["rung_costs"] == {"latency": t0.values[1], "flops": t0.values[2]}
    cfg = trial_config(t2, TrainConfig.from_dict(study.user_attrs["base_config"]), "cost")
    data = prepare_data(cfg.data)
    assert t2.values[0] == val_accuracy(t2.user_attrs["run_dir"], data, 2, "cpu")
    history = RunDir(t2.user_attrs["run_dir"]).read_history()
    assert t2.user_attrs["val_acc_plain"] == max(h["val_acc"] for h in history)
    # One trained model is three deployable ones: every complete trial measured at each TTA level.
    for t in (t0, t2, again):
        variants = {v["tta"]: v for v in t.user_attrs["variants"]}
        assert sorted(variants) == [0, 1, 2] and variants[t.params["tta"]]["val_acc"] == t.values[0]
        assert variants[0]["latency"] == t0.values[1] and variants[2]["latency"] == t2.values[1]
        assert variants[1]["flops"] == 2 * variants[0]["flops"] and variants[0]["val_acc"] == max(
            h["val_acc"] for h in RunDir(t.user_attrs["run_dir"]).read_history())
    from reports.pareto import pareto_summary, points_of

    points = points_of(study)
    assert len(points) == 9 and sum(p.own for p in points) == 3
    summary = pareto_summary(study)
    assert summary["models"] == 9 and all(r["trial"] in (0, 1, 2) for r in summary["front"])
    # --pruner pareto ranks a trial at its own TTA level: its rung costs are its costs; a study whose rungs
    # ranked by plain costs does not resume under it (its trials would be ranked by both).
    assert main(args[:-1] + ["pareto", "--n-trials", "4"]) == 2
    assert "ranked its trials at rungs by plain costs (its --pruner pareto-front then)" in capsys.readouterr().err
    own_args = [a if a != "tta" else "tta-own" for a in args[:-1]] + ["pareto"]
    assert main(own_args + ["--n-trials", "1"]) == 0
    load(study_env, "tta-own").enqueue_trial({**base.params, "tta": 2})
    assert main(own_args + ["--n-trials", "2"]) == 0
    own = load(study_env, "tta-own").trials[1]
    assert load(study_env, "tta-own").user_attrs["pruner_rule"] == [1, "own"]
    assert own.params["tta"] == 2 and own.user_attrs["rung_costs"] == {"latency": t2.values[1], "flops": t2.values[2]}
    assert summary["pick_under_limit"] is None  # nothing but the baseline's weights costs half its latency


def test_trials_that_ran_before_variants_get_them_from_the_report(study_env):  # noqa: F811
    """A finished trial cannot take a user attribute: the variants of older trials go into the study, once,
    for trials whose checkpoint is here (validation only)."""
    from cifar.data import prepare_data
    from study.objectives import VARIANTS_ATTR, add_variants, variants_of

    args = study_env["args"] + ["--study-name", "old", "--objectives", "val_acc,latency", "--space", "cost",
                                "--target-epochs", "1", "--set", "widths=32,64,64", "--set", "depth=1"]
    assert main(args + ["--n-trials", "2"]) == 0
    ran = load(study_env, "old")
    older = optuna.create_study(directions=["maximize", "minimize"], study_name="older", storage=study_env["url"])
    for key, value in ran.user_attrs.items():
        older.set_user_attr(key, value)
    for i, t in enumerate(ran.trials):  # as a study made before trials recorded variants; trial 1's weights gone
        attrs = {k: v for k, v in t.user_attrs.items() if k != VARIANTS_ATTR}
        if i == 1:
            attrs["run_dir"] = str(study_env["tmp"] / "elsewhere")
        older.add_trial(optuna.trial.create_trial(values=t.values, params=t.params, distributions=t.distributions,
                                                  user_attrs=attrs))
    base = TrainConfig.from_dict(older.user_attrs["base_config"])
    loads = []
    assert add_variants(older, base, lambda: loads.append(1) or prepare_data(base.data)) == 1 and loads == [1]
    first = older.trials[0]
    assert variants_of(older, first) == variants_of(ran, ran.trials[0])  # the same figures as the trial's own
    assert variants_of(older, older.trials[1]) is None
    assert add_variants(older, base, lambda: loads.append(1)) == 0 and loads == [1]  # done once, no data loaded


def test_a_variant_can_be_the_pick_within_the_limit():
    from optuna.distributions import CategoricalDistribution

    from reports.pareto import pareto_summary

    study = optuna.create_study(directions=["maximize", "minimize"])
    study.set_metric_names(["val_acc", "latency"])
    study.set_user_attr("constraint", "latency<=1.5")
    dist = {"tta": CategoricalDistribution((0, 1, 2))}

    def variants(acc, latency):
        return [{"tta": k, "val_acc": acc + 0.01 * k, "latency": latency * p, "flops": 1, "params": 1,
                 "latency_p90_ms": None} for k, p in ((0, 1), (1, 2), (2, 6))]
    for acc, latency, attrs in [(0.8, 2.0, {"baseline": True}), (0.7, 0.5, {})]:
        study.add_trial(optuna.trial.create_trial(
            values=[acc, latency], params={"tta": 0}, distributions=dist, user_attrs={**attrs, "variants": variants(
                acc, latency)}, system_attrs={"constraints:latency": latency - 1.5}))
    summary = pareto_summary(study)
    front = [(r["trial"], r["tta"]) for r in summary["front"]]
    assert front == [(1, 0), (1, 1), (0, 0), (0, 1), (0, 2)] and summary["limit"] == 1.5  # (1, 2): 0.72 at 3 ms
    assert (summary["pick_under_limit"]["trial"], summary["pick_under_limit"]["tta"]) == (1, 1)  # 0.71 at 1 ms
