"""Sizing the CPU preset to the machine: the arithmetic, the measurement, the study and the report."""

from __future__ import annotations

import math

import pytest

from cifar.config import TrainConfig, apply_overrides
from reports.runs import report_configs
from study import budget
from study.budget import Throughput, TrialBudget, report_epochs, size_trials
from study.presets import PRESETS, REPORT_EPOCHS, REPORT_MINUTES
from study.run import main
from tests.conftest import tiny_config
from tests.test_study import load, study_env  # noqa: F401  (fixture)

CPU = PRESETS.get("cpu")
BASE = apply_overrides(TrainConfig(), {"epochs": CPU.max_epochs, "train_fraction": CPU.train_fraction,
                                       "warmup_epochs": 2.0})
SPLIT = budget.CIFAR10_TRAIN_IMAGES - BASE.data.val_size  # 45,000


def study_seconds(tp: Throughput, fit: TrialBudget, n_trials: int = 30) -> float:
    """The study's cost by the module's own model, written out independently."""
    share = {9: 0.7, 3: 0.85, 1: 1.0}[fit.epochs]
    per_epoch = fit.train_fraction * SPLIT / tp.train + BASE.data.val_size / tp.eval
    return budget.STARTUP_S + n_trials * (budget.TRIAL_OVERHEAD_S + share * fit.epochs * per_epoch)


def test_a_fast_machine_keeps_the_whole_preset():
    tp = Throughput(train=2000.0, eval=8000.0, device="cpu")
    fit = size_trials(tp, BASE, 30, CPU.minutes, CPU.min_fraction)
    assert (fit.epochs, fit.train_fraction, fit.warmup_epochs) == (9, 0.15, 2.0)
    assert fit.minutes == pytest.approx(study_seconds(tp, fit) / 60)
    assert fit.minutes < CPU.minutes


def test_a_slower_machine_trains_on_less_data_first():
    tp = Throughput(train=450.0, eval=1600.0, device="cpu")
    fit = size_trials(tp, BASE, 30, CPU.minutes, CPU.min_fraction)
    assert fit.epochs == 9 and CPU.min_fraction <= fit.train_fraction < CPU.train_fraction
    assert fit.warmup_epochs == 2.0
    assert fit.minutes == pytest.approx(CPU.minutes, abs=0.2)  # fills the target, to the share's rounding


def test_a_slow_machine_drops_an_epoch_rung_and_scales_the_warmup():
    tp = Throughput(train=150.0, eval=530.0, device="cpu")
    fit = size_trials(tp, BASE, 30, CPU.minutes, CPU.min_fraction)
    assert fit.epochs == 3 and fit.train_fraction >= CPU.min_fraction
    assert fit.warmup_epochs == pytest.approx(2.0 / 3, abs=1e-3)
    assert fit.minutes == pytest.approx(study_seconds(tp, fit) / 60)
    assert fit.minutes <= CPU.minutes + 0.2


def test_a_hopeless_machine_gets_one_epoch_and_the_floor():
    tp = Throughput(train=5.0, eval=20.0, device="cpu")
    fit = size_trials(tp, BASE, 30, CPU.minutes, CPU.min_fraction)
    assert (fit.epochs, fit.train_fraction) == (1, 0.01)
    assert fit.minutes > CPU.minutes  # it says so: the estimate is over the target


def test_a_small_share_of_the_base_config_is_not_a_reason_to_drop_epochs():
    small = apply_overrides(BASE, {"train_fraction": 0.02})
    fit = size_trials(Throughput(train=2000.0, eval=8000.0, device="cpu"), small, 30, CPU.minutes, CPU.min_fraction)
    assert (fit.epochs, fit.train_fraction) == (9, 0.02)


def test_report_epochs_fill_the_minutes():
    tp = Throughput(train=630.0, eval=2200.0, device="cpu")
    per_epoch = SPLIT / tp.train + BASE.data.val_size / tp.eval
    per_run = (50 * 60 - budget.STARTUP_S) / 6 - budget.TRIAL_OVERHEAD_S - 10_000 / tp.eval
    assert report_epochs(tp, BASE, 6, 50, ceiling=10) == math.floor(per_run / per_epoch) == 6
    assert report_epochs(tp, BASE, 6, 500, ceiling=10) == 10   # the preset's epochs are the ceiling
    assert report_epochs(tp, BASE, 6, 1, ceiling=10) == 1      # and one epoch the floor


def test_measure_throughput_times_the_config():
    tp = budget.measure_throughput(tiny_config(), seconds=0.2)
    assert tp.device == "cpu" and tp.train > 0 and tp.eval > 0
    assert budget.from_attr(budget.to_attr(tp)) == Throughput(round(tp.train, 1), round(tp.eval, 1), "cpu")


# ---------------------------------------------------------------- in a study and its report


def cpu_args(env, n_trials: int = 2):  # noqa: F811
    """The study fixture's arguments with the cpu preset and no budget of its own."""
    args = list(env["args"])
    args[args.index("smoke")] = "cpu"
    i = args.index("--set")
    del args[i:i + 2]
    return args + ["--study-name", "s", "--n-trials", str(n_trials), "--timeout", "600"]


def test_a_cpu_study_is_sized_once_and_resumes_with_its_budget(study_env, monkeypatch):  # noqa: F811
    measured = []

    def fake(cfg, seconds=6.0):
        measured.append(cfg.epochs)
        return Throughput(train=150.0, eval=530.0, device="cpu")

    monkeypatch.setattr(budget, "measure_throughput", fake)
    assert main(cpu_args(study_env)) == 0
    attrs = load(study_env).user_attrs["budget"]
    assert measured == [CPU.max_epochs]
    assert attrs["max_epochs"] == 3 and attrs["throughput"] == {"train": 150.0, "eval": 530.0, "device": "cpu"}
    assert attrs["target_minutes"] == CPU.minutes
    trial_cfg = TrainConfig.from_json(next((study_env["tmp"] / "runs" / "s").glob("trial-*/config.json")))
    assert (trial_cfg.epochs, trial_cfg.data.train_fraction) == (3, attrs["train_fraction"])
    assert trial_cfg.warmup_epochs == attrs["warmup_epochs"]

    # Resuming measures nothing and keeps the stored budget, on any machine.
    monkeypatch.setattr(budget, "measure_throughput", lambda *a, **k: pytest.fail("measured again"))
    assert main(cpu_args(study_env, n_trials=3)) == 0
    assert len(load(study_env).trials) == 3
    assert load(study_env).user_attrs["budget"] == attrs

    # The report sizes its retraining from the same measurement and keeps the warm-up's share.
    configs, plan = report_configs(load(study_env), None, seeds=3)
    want = report_epochs(Throughput(150.0, 530.0, "cpu"), configs["baseline"], 6, REPORT_MINUTES["cpu"],
                         REPORT_EPOCHS["cpu"])
    assert plan["epochs"] == want == configs["tuned"].epochs
    assert configs["baseline"].warmup_epochs == pytest.approx(want * attrs["warmup_epochs"] / 3, abs=1e-3)
    assert configs["baseline"].data.train_fraction == 1.0


def test_a_budget_given_with_set_is_not_measured(study_env, monkeypatch):  # noqa: F811
    monkeypatch.setattr(budget, "measure_throughput", lambda *a, **k: pytest.fail("measured"))
    assert main(cpu_args(study_env) + ["--set", "epochs=2", "--set", "train_fraction=1.0"]) == 0
    attrs = load(study_env).user_attrs["budget"]
    assert attrs == {"max_epochs": 2, "train_fraction": 1.0, "warmup_epochs": tiny_config().warmup_epochs}
    configs, plan = report_configs(load(study_env), None, seeds=3)
    assert plan["epochs"] == REPORT_EPOCHS["cpu"]  # no measurement: the preset's report epochs
    assert configs["tuned"].warmup_epochs == tiny_config().warmup_epochs

