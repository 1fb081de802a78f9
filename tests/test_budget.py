"""Sizing the CPU preset to the machine: the arithmetic, the measurement, and a study created with it."""

from __future__ import annotations

import pytest

from cifar.config import TrainConfig, apply_overrides
from study import budget, pruning
from study.budget import Throughput, size_study
from study.presets import PRESETS
from study.run import main
from tests.conftest import tiny_config
from tests.test_study import load, study_env  # noqa: F401  (fixture)

CPU = PRESETS.get("cpu")
BASE = apply_overrides(TrainConfig.from_json("configs/fast.json"), {"epochs": CPU.target_epochs})
SPLIT = budget.CIFAR10_TRAIN_IMAGES - BASE.data.val_size  # 45,000


def test_size_study_fits_the_minutes():
    # 300 train / 1,200 eval images/s: a 3-epoch run = 5 + 3 x (45,000/300 + 5,000/1,200) = 467.5 s.
    tp = Throughput(train=300.0, eval=1200.0, device="cpu")
    run = 5 + 3 * (SPLIT / 300 + 5000 / 1200)
    assert budget.run_seconds(tp, BASE) == pytest.approx(run)
    # The report at its most: 2 candidates + the baseline over 3 race rounds = 9 runs, then 8 pairs
    # = 16 runs, and 16 test evaluations of 7 views.
    report = 60 + 25 * run + 16 * 10_000 * 7 / 1200
    size = size_study(tp, BASE, 380, 4, 30, 2, 3, 8)
    n = int((380 * 60 - 60 - report) // (pruning.epoch_share(3) * run))
    assert size.report_runs == 25 and size.report_minutes == pytest.approx(report / 60)
    assert size.n_trials == size.fit == n and 4 < n < 30
    assert size.study_minutes + size.report_minutes <= 380


@pytest.mark.parametrize("train, n_trials", [(3000.0, 30), (60.0, 4)])
def test_size_study_keeps_to_the_presets_bounds(train, n_trials):
    size = size_study(Throughput(train=train, eval=4 * train, device="cpu"), BASE, 180, 4, 30, 2, 3, 8)
    assert size.n_trials == n_trials  # a fast machine: the most; a slow one: the fewest worth a study


def test_measure_throughput_times_the_config():
    tp = budget.measure_throughput(tiny_config(), seconds=0.2)
    assert tp.device == "cpu" and tp.train > 0 and tp.eval > 0
    assert Throughput(**budget.to_attr(tp)) == Throughput(round(tp.train, 1), round(tp.eval, 1), "cpu")


# ---------------------------------------------------------------- in a study


def cpu_args(env, n_trials: int | None = None):  # noqa: F811
    """The study fixture's arguments with the cpu preset."""
    args = list(env["args"])
    args[args.index("smoke")] = "cpu"
    return args + ["--study-name", "s", "--target-epochs", "2"] + (["--n-trials", str(n_trials)] if n_trials else [])


def test_a_cpu_study_is_sized_once_and_resumes_with_its_budget(study_env, monkeypatch):  # noqa: F811
    measured = []

    def fake(cfg, seconds=6.0):
        measured.append(cfg.epochs)
        return Throughput(train=20_000.0, eval=80_000.0, device="cpu")  # tiny images: the most trials fit

    monkeypatch.setattr(budget, "measure_throughput", fake)
    assert main(cpu_args(study_env, n_trials=2)) == 0
    attrs = load(study_env).user_attrs["budget"]
    assert measured == [2]  # measured at the target
    assert attrs["target_epochs"] == 2 and attrs["n_trials"] == CPU.n_trials
    assert attrs["throughput"] == {"train": 20_000.0, "eval": 80_000.0, "device": "cpu"}
    assert attrs["target_minutes"] == CPU.minutes
    trial_cfg = TrainConfig.from_json(next((study_env["tmp"] / "runs" / "s").glob("trial-*/config.json")))
    assert (trial_cfg.epochs, trial_cfg.data.train_fraction) == (2, 1.0)

    # Resuming measures nothing and keeps the stored budget, on any machine.
    monkeypatch.setattr(budget, "measure_throughput", lambda *a, **k: pytest.fail("measured again"))
    assert main(cpu_args(study_env, n_trials=3)) == 0
    assert len(load(study_env).trials) == 3
    assert load(study_env).user_attrs["budget"] == attrs
    # A different target for the same study is refused, the study unchanged.
    assert main(cpu_args(study_env, n_trials=4) + ["--target-epochs", "3"]) == 2
    assert len(load(study_env).trials) == 3


@pytest.mark.parametrize("train, target, sized", [
    (3000.0, 4, True),    # a fast machine: the longest target (up to the preset's 4) at which 16 trials fit
    (400.0, 3, True),     # a 2-core machine: the preset's target
    (3000.0, 3, False),   # a target given by hand is kept
])
def test_the_target_is_sized_where_enough_trials_fit(train, target, sized, monkeypatch):
    from study.presets import fit_budget

    monkeypatch.setattr(budget, "measure_throughput",
                        lambda cfg, seconds=6.0: Throughput(train=train, eval=4 * train, device="cpu"))
    cfg, attrs = fit_budget(CPU, BASE, sized_target=sized)
    assert cfg.epochs == target
    looks = attrs["verdict"]["looks"]
    from study.pruning import default_pruner

    n = size_study(Throughput(train, 4 * train, "cpu"), cfg, CPU.minutes, CPU.min_trials, CPU.n_trials,
                   CPU.candidates, CPU.race_rounds, looks[-1], default_pruner(cfg.epochs)).n_trials
    assert attrs["n_trials"] == n and (n >= CPU.good_trials or target == CPU.target_epochs)


@pytest.mark.parametrize("train, looks", [
    (3000.0, [6, 8, 10]),  # time for more seeds: the fewest pairs whose MDE reaches 0.5 points
    (60.0, [6]),           # a slow machine: the first look only, its larger MDE stated
])
def test_the_comparisons_seeds_are_sized_for_the_target_mde(train, looks, monkeypatch):
    import study.presets as presets

    monkeypatch.setattr(budget, "measure_throughput",
                        lambda cfg, seconds=6.0: Throughput(train=train, eval=4 * train, device="cpu"))
    monkeypatch.setattr(presets, "measured_run_std", lambda epochs: (0.003, "a test's 0.3 points"))
    _, attrs = presets.fit_budget(CPU, BASE, sized_target=False)
    verdict = attrs["verdict"]
    assert verdict["looks"] == looks and verdict["run_std"] == 0.003
    assert verdict["planned_mde"] == pytest.approx(presets.design_mde(tuple(looks), 0.003))
    # 10 pairs reach 0.5 points at this noise and 8 do not.
    assert presets.design_mde((6, 8), 0.003) > CPU.target_mde >= presets.design_mde((6, 8, 10), 0.003)


def test_a_study_that_does_not_prune_is_sized_at_whole_target_runs():
    tp = Throughput(train=300.0, eval=1200.0, device="cpu")
    pruned, whole = (size_study(tp, BASE, 400, 4, 30, 2, 3, 8, pruner) for pruner in ("hyperband", "none"))
    run = budget.run_seconds(tp, BASE)
    assert whole.n_trials == int((400 * 60 - 60 - whole.report_minutes * 60) // run) < pruned.n_trials


@pytest.mark.parametrize("pruner", ["hyperband", "halving"])
@pytest.mark.parametrize("epochs", [4, 9, 10])
def test_the_epoch_share_is_what_optunas_pruner_spends(pruner, epochs):
    """``epoch_share`` against the pruner itself: 150 trials of synthetic learning curves (each
    trial's quality drawn at random, its curve rising with the epochs) run under the study's own
    pruner, and the epochs they ran counted."""
    import numpy as np
    import optuna

    from study.pruning import make_pruner

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    rng = np.random.default_rng(0)
    study = optuna.create_study(direction="maximize", pruner=make_pruner(pruner, epochs),
                                sampler=optuna.samplers.RandomSampler(seed=0))
    spent = []
    for _ in range(150):
        trial, quality = study.ask(), rng.uniform(0.3, 0.9)
        for epoch in range(1, epochs + 1):
            trial.report(quality * (1 - 0.5 ** epoch) + rng.normal(0, 0.01), epoch)
            if epoch < epochs and trial.should_prune():
                study.tell(trial, state=optuna.trial.TrialState.PRUNED)
                break
        else:
            study.tell(trial, quality)
        spent.append(epoch)
    assert np.mean(spent) / epochs == pytest.approx(pruning.epoch_share(epochs, pruner), abs=0.06)
