"""study/objectives.py: a study of val_acc and inference costs (several objectives), and its bad inputs."""

from __future__ import annotations

import optuna
import pytest

from study.objectives import Constraint, parse_constraint, parse_objectives, study_objectives
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
                                "--constraint", "params<=3000"]
    assert main(args) == 0
    out = capsys.readouterr().out
    study = load(study_env, "mo")
    assert [d.name for d in study.directions] == ["MAXIMIZE", "MINIMIZE", "MINIMIZE"]
    assert study.metric_names == ["val_acc", "latency", "params"] and study.user_attrs["pruner"] == "none"
    complete = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    assert len(complete) == 3
    for t in complete:
        costs = t.user_attrs["costs"]
        assert t.values[1] == costs["latency"] == costs["latency_detail"]["batch_1"]["median_ms"] > 0
        assert t.values[2] == costs["params"] == t.user_attrs["params"]
        assert t.constraints == {"params": costs["params"] - 3000}  # what the sampler reads
        assert not t.intermediate_values  # Optuna cannot take reports in such a study
    assert "latency" in out and "best val_acc" in out
    # Resumed without the options, it keeps its own; with other objectives it is refused.
    assert main(study_env["args"] + ["--study-name", "mo", "--n-trials", "3"]) == 0
    assert main(study_env["args"] + ["--study-name", "mo", "--objectives", "val_acc"]) == 2
    assert "maximizes and minimizes and minimizes" in capsys.readouterr().err
    from reports.build import main as report_main
    from study.show import main as show_main

    assert show_main(["--storage", study_env["url"], "--study-name", "mo"]) == 0
    shown = capsys.readouterr().out
    assert "objectives val_acc, latency, params" in shown and "latency" in shown.splitlines()[1]
    assert report_main(["--storage", study_env["url"], "--study-name", "mo", "--out", str(study_env["tmp"] / "r")]) == 2
    err = capsys.readouterr().err
    assert "several objectives" in err and err.count("\n") == 1
