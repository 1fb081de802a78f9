"""Reports: exact statistics and data functions, figures build, a whole report in a real browser."""

from __future__ import annotations

import json
import math
import re
import shutil
import subprocess
import tempfile
import time

import numpy as np
import optuna
import pandas as pd
import plotly.graph_objects as go
import pytest

from reports.build import main as build_main
from reports.figures import confusion_figure, curves_figure, image_grid_figure, per_class_figure
from reports.stats import bootstrap_interval, mean_std, paired, sign_flip_p
from study.run import main as study_main
from study.trials import compute_spent, trials_table
from tests.test_study import study_env  # noqa: F401  (fixture)

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync"]


# ---------------------------------------------------------------- statistics


def test_mean_std_uses_sample_std():
    assert mean_std([1.0, 2.0, 3.0]) == (2.0, 1.0)


# Student's sleep data (Cushny and Peebles), R's datasets::sleep: extra hours of sleep of the same
# ten patients under two drugs, a paired design.
SLEEP_1 = [0.7, -1.6, -0.2, -1.2, -0.1, 3.4, 3.7, 0.8, 0.0, 2.0]
SLEEP_2 = [1.9, 0.8, 1.1, 0.1, -0.1, 4.4, 5.5, 1.6, 4.6, 3.4]
# Darwin's Zea mays: height differences (eighths of an inch) of 15 pairs of crossed and self-fertilised plants.
DARWIN = [49, -67, 8, 16, 6, 23, 28, 41, 14, 29, 56, 24, 75, 60, -48]


def test_paired_t_against_published_values():
    # R: with(sleep, t.test(extra[group == 1], extra[group == 2], paired = TRUE)) ->
    # t = -4.0621, df = 9, p-value = 0.002833, 95 percent CI -2.4598858 -0.7001142, mean difference -1.58.
    cmp = paired(SLEEP_2, SLEEP_1)  # "tuned" = drug 1, "baseline" = drug 2
    assert cmp.difference == pytest.approx(-1.58)
    assert cmp.t_statistic == pytest.approx(-4.0621, abs=1e-4) and cmp.p_value == pytest.approx(0.002833, abs=1e-6)
    assert (cmp.ci_low, cmp.ci_high) == (pytest.approx(-2.4598858, abs=1e-6), pytest.approx(-0.7001142, abs=1e-6))
    assert cmp.significant and (cmp.wins, cmp.losses) == (0, 9)  # one patient tied


def test_sign_flip_p_against_published_values():
    # Fisher (The Design of Experiments, 1935, section 21): of the 2^15 sign patterns of Darwin's
    # differences, 1,726 give a sum at least as far from zero as the observed one: p = 0.0527.
    assert sign_flip_p(DARWIN) == pytest.approx(1726 / 2**15)
    # Sleep: the nine non-zero differences all share a sign and the observed sum is the largest
    # possible; 2 signs x 2 (the tied patient's sign is free) of 2^10 patterns: p = 4/1024.
    assert sign_flip_p([a - b for a, b in zip(SLEEP_1, SLEEP_2)]) == pytest.approx(4 / 1024)


@pytest.mark.parametrize("baseline, tuned, significant", [
    ([0.80, 0.81, 0.79, 0.80], [0.85, 0.87, 0.84, 0.84], True),    # clear gain
    ([0.80, 0.85, 0.75, 0.80], [0.81, 0.84, 0.76, 0.79], False),   # difference inside the noise
    ([0.85, 0.86, 0.84, 0.85], [0.80, 0.80, 0.79, 0.81], True),    # clear loss is significant too
])
def test_paired_verdicts(baseline, tuned, significant):
    cmp = paired(baseline, tuned)
    assert cmp.significant == significant
    assert (cmp.p_value < 0.05) == significant
    assert cmp.sign_flip_p >= cmp.smallest_sign_flip_p == 2 / 16
    assert cmp.noise_floor == pytest.approx(np.std(baseline, ddof=1))


def test_zero_spread_is_never_significant():
    # Each seed gains exactly 5 points (in floats the differences differ by rounding only).
    cmp = paired([0.80, 0.81, 0.79], [0.85, 0.86, 0.84])
    assert not cmp.significant and math.isnan(cmp.ci_low) and math.isnan(cmp.p_value)
    assert cmp.wins == 3 and cmp.sign_flip_p == pytest.approx(0.25)
    assert not paired([0.8, 0.8], [0.8, 0.8]).significant


def test_paired_needs_the_same_seeds_on_both_sides():
    with pytest.raises(ValueError, match=">= 2 seeds"):
        paired([0.8], [0.9])
    with pytest.raises(ValueError, match="same seeds"):
        paired([0.8, 0.81], [0.9, 0.91, 0.92])


def test_bootstrap_only_from_ten_seeds():
    assert paired(SLEEP_2[:9], SLEEP_1[:9]).bootstrap_low is None
    cmp = paired(SLEEP_2, SLEEP_1)
    assert cmp.bootstrap_low < cmp.difference < cmp.bootstrap_high < 0


def test_bootstrap_interval_has_the_normal_width_on_large_samples():
    # 400 differences from N(0.5, 1): the mean's standard error is 1/20 = 0.05, so a 95%
    # interval is about 2 x 1.96 x 0.05 = 0.196 wide.
    d = np.random.default_rng(0).normal(0.5, 1.0, 400)
    low, high = bootstrap_interval(d)
    assert high - low == pytest.approx(2 * 1.96 * np.std(d, ddof=1) / 20, rel=0.08)
    assert low < d.mean() < high and low > 0
    assert (low, high) == bootstrap_interval(d)  # seeded


# ---------------------------------------------------------------- data from a study


@pytest.fixture
def small_study():
    study = optuna.create_study(direction="maximize")
    for value, epochs, state in ((0.5, 3, "complete"), (0.3, 1, "pruned"), (0.7, 3, "complete")):
        trial = study.ask({"lr": optuna.distributions.FloatDistribution(1e-3, 1.0, log=True)})
        for epoch in range(1, epochs + 1):
            trial.report(value * epoch / epochs, epoch)
        trial.set_user_attr("epochs_run", epochs)
        trial.set_user_attr("train_seconds", 10.0 * epochs)
        if state == "pruned":
            study.tell(trial, state=optuna.trial.TrialState.PRUNED)
        else:
            study.tell(trial, value)
    return study


def test_trials_frame_and_spent(small_study):
    trials = trials_table(small_study)
    assert trials["state"].tolist() == ["COMPLETE", "PRUNED", "COMPLETE"]
    assert trials["epochs_run"].tolist() == [3, 1, 3]
    spent = compute_spent(trials)
    assert spent == {"trials": 3, "complete": 2, "pruned": 1, "failed": 0, "pruned_share": pytest.approx(1 / 3),
                     "trial_epochs": 7, "train_seconds": 70.0}


# ---------------------------------------------------------------- figures


def test_figures_build():
    hist = pd.DataFrame([{"config": c, "seed": s, "epoch": e, "train_loss": 1 / e, "val_loss": 1 / e,
                          "train_acc": 0.5, "val_acc": 0.5} for c in ("baseline", "tuned") for s in (0, 1)
                         for e in (1, 2)])
    assert len(curves_figure(hist).data) == 8  # 2 configs x (loss, acc) x (train, val)
    per_class = pd.DataFrame({"config": ["baseline", "tuned"], "class": ["a", "a"], "mean": [0.5, 0.6],
                              "std": [0.01, 0.02]})
    assert len(per_class_figure(per_class).data) == 2
    assert isinstance(confusion_figure(np.eye(3) * 5, ["a", "b", "c"], "cm"), go.Figure)
    grid = image_grid_figure(np.zeros((3, 3, 32, 32), dtype=np.uint8), ["x", "y", "z"], "t")
    assert len(grid.data) == 3


# ---------------------------------------------------------------- the whole report


REPORT_ARGS = ["--candidates", "2", "--race-rounds", "2", "--looks", "3,4"]  # tiny: 2 rounds, looks at 3, 4 pairs


def test_whole_report_from_tiny_study(study_env, tmp_path, capsys):  # noqa: F811
    assert study_main(study_env["args"] + ["--study-name", "r", "--n-trials", "4", "--pruner", "none"]) == 0
    # No --study-name: the storage's only study is the one.
    argv = ["--storage", study_env["url"], *REPORT_ARGS,
            "--out", str(tmp_path / "reports"), "--runs-dir", str(tmp_path / "report-runs")]
    # --runs-only trains the race and the first look (on a GPU machine, say), reads no test set and
    # writes no report ...
    assert build_main(argv + ["--runs-only"]) == 0
    assert not (tmp_path / "reports").exists()
    runs = list((tmp_path / "report-runs").glob("*/results.json"))
    assert len(runs) == 3 * 2 + 2 * 3  # 3 contestants x 2 race rounds (none knocked out before 2), 3 pairs
    assert not list((tmp_path / "report-runs").glob("*/test_predictions.pt"))
    assert not [p for p in runs if p.parent.name.endswith("-seed0")]  # the study's seed 0 is a screen only
    # ... and the report is then built from them, training only what a later look needs.
    capsys.readouterr()
    assert build_main(argv) == 0
    printed = capsys.readouterr().out
    assert "Verdict: " in printed and "Planned before any test read" in printed
    out = tmp_path / "reports" / "r"
    for name in ("report.html", "summary.md", "comparison.csv", "comparison.json", "plotly.min.js",
                 "winner_config.json"):
        assert (out / name).is_file(), name
    comparison = json.loads((out / "comparison.json").read_text())
    verdict = comparison["verdict"]
    assert verdict["outcome"] in ("better", "worse", "equivalent", "undecided")
    pairs = len(verdict["baseline"])
    assert pairs in (3, 4) and len(verdict["looks"]) == (1 if pairs == 3 else 2)
    table = pd.read_csv(out / "comparison.csv")
    assert sorted(table["config"]) == ["baseline"] * pairs + ["tuned"] * pairs
    assert sorted(table["seed"].unique()) == list(range(1000, 1000 + pairs))  # the comparison's own seeds
    # The race ran every contestant on validation; the winner is the best surviving mean.
    race = comparison["race"]
    assert set(race["val"]) == {c["name"] for c in comparison["candidates"]}
    survivors = [n for n in race["val"] if n != "baseline"
                 and not any(n in r["knocked_out"] for r in race["rounds"])]
    assert race["winner"] == max(survivors, key=lambda n: np.mean(race["val"][n]))
    # What to train: the race's winner, at the target.
    from cifar.config import TrainConfig

    winner = TrainConfig.from_json(out / "winner_config.json")
    study = optuna.load_study(study_name="r", storage=study_env["url"])
    assert winner.epochs == study.user_attrs["budget"]["target_epochs"]
    assert study.user_attrs["selection"]["winner"] == race["winner"] == comparison["winner"]
    # The plan was in the study before the first test read, and is frozen after it.
    assert study.user_attrs["verdict_plan"]["recorded_at"] <= study.user_attrs["first_test_read"]
    assert study.user_attrs["selection"]["at"] <= study.user_attrs["first_test_read"]
    plan = dict(study.user_attrs["verdict_plan"])
    assert set(comparison["job_minutes"]) == {"study", "report"}  # the main job's time, on record
    assert len(list((tmp_path / "report-runs").glob("*/test_predictions.pt"))) == 2 * pairs
    pngs = {p.stem for p in (out / "figures").glob("*.png")}
    assert {"curves", "per_class", "history", "intermediate", "confusion_tuned", "fixed_by_tuning",
            "differences", "rung_scatter"} <= pngs
    page = (out / "report.html").read_text()
    assert "https://" not in page.split("<body>")[0]  # plotly.js comes from the file beside it
    summary = (out / "summary.md").read_text()
    assert summary.splitlines()[0].startswith(f"# {verdict['outcome'].capitalize()}: tuned against baseline")
    assert "Verdict: " + verdict["outcome"].upper() in summary and "Selection (validation only" in summary
    # The verdict is in the study too, where optuna-dashboard shows it.
    import optuna_dashboard

    assert "Verdict: " in optuna_dashboard.get_note(study)
    for graph in ("differences", "rung_scatter"):  # saved with save_plotly_graph_object under these ids
        assert any(f"{graph}:" in key for key in study._storage.get_study_system_attrs(study._study_id)), graph

    # A rebuild reuses the cached runs: no run trained, the same verdict.
    capsys.readouterr()
    start = time.perf_counter()
    assert build_main(argv) == 0
    assert time.perf_counter() - start < 30
    assert "] training " not in capsys.readouterr().out  # ensure_trained's "[i/n] training NAME" lines
    assert json.loads((out / "comparison.json").read_text())["verdict"]["differences"] == verdict["differences"]
    assert study.user_attrs["verdict_plan"] == plan  # the rebuild kept the stored plan, its time included
    # Another design after the test read is refused, the study's plan unchanged.
    for other in (["--looks", "3,5"], ["--margin", "0.2"]):
        capsys.readouterr()
        assert build_main(argv + other) == 2
        assert "needs a new study" in capsys.readouterr().err
    assert study.user_attrs["verdict_plan"] == plan

    if CHROMIUM is None:
        pytest.skip("chromium is not installed (apt-get install chromium); the browser check needs it")
    profile = tempfile.mkdtemp()
    url = (out / "report.html").as_uri()
    proc = subprocess.run([CHROMIUM, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", "--enable-logging=stderr",
                           "--v=0", "--virtual-time-budget=20000", "--dump-dom", url],
                          capture_output=True, text=True, timeout=120)
    console_errors = [line for line in proc.stderr.splitlines()
                      if "CONSOLE" in line and ("Error" in line or "error" in line)]
    assert console_errors == []
    plots = re.findall(r'id="plot-([a-z_]+)"', proc.stdout)
    assert len(plots) >= 10
    for name in plots:  # every figure drew its SVG
        block = proc.stdout.split(f'id="plot-{name}"', 1)[1][:20000]
        assert "main-svg" in block, name
    shot = tmp_path / "report.png"
    subprocess.run([CHROMIUM, *CHROMIUM_FLAGS, f"--user-data-dir={tempfile.mkdtemp()}", "--window-size=1300,2400",
                    "--virtual-time-budget=20000", f"--screenshot={shot}", url],
                   capture_output=True, timeout=120, check=True)
    assert shot.stat().st_size > 20_000


def _bypass_evaluate_run(dirs):  # select by test accuracy, evaluating the run directories
    from cifar.evaluate import evaluate_run

    return {n: evaluate_run(d[0]).test_acc for n, d in dirs.items()}


def _bypass_prepare_data(dirs):  # a fresh copy of the data, whose test split nobody locked
    from cifar.data import prepare_data
    from cifar.rundir import RunDir

    return prepare_data(RunDir(next(iter(dirs.values()))[0]).read_config().data).test.y.sum()


def _bypass_saved_metrics(dirs):  # read what an earlier report's test evaluation left in a run
    from cifar.rundir import RunDir

    return {n: RunDir(d[0]).read_test_metrics().test_acc for n, d in dirs.items()}


@pytest.mark.parametrize("bypass", [
    _bypass_evaluate_run,    # the test evaluation of cifar.evaluate, on the race's run directories
    _bypass_prepare_data,    # a fresh prepare_data: its test split is born locked inside the seal
    _bypass_saved_metrics,   # a run's saved test metrics (a rebuilt report's runs have them)
])
def test_selection_cannot_reach_the_test_set(study_env, tmp_path, monkeypatch, bypass):  # noqa: F811
    """Each known way to select by test accuracy fails inside the race: TestSetLocked."""
    import reports.runs as runs
    from cifar.data import TestSetLocked

    assert study_main(study_env["args"] + ["--study-name", "r", "--n-trials", "3", "--pruner", "none"]) == 0
    argv = ["--storage", study_env["url"], *REPORT_ARGS, "--out", str(tmp_path / "reports"),
            "--runs-dir", str(tmp_path / "runs")]
    assert build_main(argv) == 0  # every run now has test metrics on disk for the third bypass to find
    real = runs.ensure_trained
    tried = []

    def cheating(configs, seeds, runs_root, data):
        dirs = real(configs, seeds, runs_root, data)
        if len(configs) > 2:  # a race round (the comparison trains two configs)
            tried.append(bypass.__name__)
            bypass(dirs)
        return dirs

    monkeypatch.setattr(runs, "ensure_trained", cheating)
    with pytest.raises(TestSetLocked, match="sealed|locked"):
        build_main(argv)
    assert tried


def test_an_early_test_read_of_the_reports_data_fails(study_env, tmp_path, monkeypatch):  # noqa: F811
    """The report's own data object read before the selection is recorded: TestSetLocked."""
    import reports.select as select
    from cifar.data import TestSetLocked

    assert study_main(study_env["args"] + ["--study-name", "r", "--n-trials", "3", "--pruner", "none"]) == 0
    real = select.run_race

    def early(configs, plan, runs_root, data):
        _ = data.test.x  # before the race is done
        return real(configs, plan, runs_root, data)

    monkeypatch.setattr(select, "run_race", early)
    with pytest.raises(TestSetLocked):
        build_main(["--storage", study_env["url"], *REPORT_ARGS, "--out", str(tmp_path / "reports"),
                    "--runs-dir", str(tmp_path / "runs")])


def test_a_locked_test_set_cannot_be_read(tiny_data):
    from cifar.data import TestSetLocked

    tiny_data.lock_test("selection is not done")
    try:
        assert len(tiny_data.test) > 0  # its size is no secret
        with pytest.raises(TestSetLocked, match="selection is not done"):
            _ = tiny_data.test.x
    finally:
        tiny_data.unlock_test()
    assert tiny_data.test.x.shape[1:] == (3, 32, 32)


@pytest.mark.parametrize("setup, message", [
    ("unknown", "no study 'r'"),                          # nothing of that name
    ("two_studies", "choose one with --study-name"),      # no name, and no single study
    ("no_complete", "has no complete trial"),             # only a failed trial
    ("only_baseline", "no complete trial with a config other than the baseline's"),  # nothing to select
])
def test_bad_input_exits_2(study_env, setup, message, capsys):  # noqa: F811
    if setup == "only_baseline":
        assert study_main(study_env["args"] + ["--study-name", "r", "--n-trials", "1"]) == 0
        capsys.readouterr()
    elif setup == "no_complete":
        study = optuna.create_study(study_name="r", storage=study_env["url"], direction="maximize")
        study.tell(study.ask(), state=optuna.trial.TrialState.FAIL)
    else:
        optuna.create_study(study_name="other", storage=study_env["url"])
    if setup == "two_studies":
        optuna.create_study(study_name="third", storage=study_env["url"])
    name = [] if setup == "two_studies" else ["--study-name", "r"]
    assert build_main(name + ["--storage", study_env["url"]]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1


def test_pngs_are_skipped_with_a_message_where_no_browser_is_installed(tmp_path, monkeypatch, capsys):
    import reports.render as render

    monkeypatch.setattr(render.shutil, "which", lambda name: None)
    monkeypatch.delenv("BROWSER_PATH", raising=False)
    fig = per_class_figure(pd.DataFrame({"config": ["baseline"], "class": ["a"], "mean": [0.5], "std": [0.1]}))
    assert render.write_pngs({"per_class": fig}, tmp_path / "figures") is False
    assert "no Chromium found" in capsys.readouterr().out
    assert not (tmp_path / "figures").exists()


def test_a_report_run_stopped_part_way_continues_from_its_last_epoch(tiny_data, tmp_path):
    from cifar.rundir import RunDir, run_dir_for
    from cifar.train import train
    from reports.runs import ensure_trained
    from tests.conftest import tiny_config

    cfg = tiny_config(epochs=3)
    path = run_dir_for(cfg, tmp_path)

    class Stop:
        def on_epoch_end(self, epoch, metrics):
            if epoch == 2:
                raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train(cfg, tiny_data, path, callbacks=[Stop()], quiet=True)
    stopped = RunDir(path).read_history()
    assert [r["epoch"] for r in stopped] in ([1], [1, 2]) and not RunDir(path).results.is_file()
    ensure_trained({"baseline": cfg}, [0], tmp_path, tiny_data)
    history = RunDir(path).read_history()
    assert [r["epoch"] for r in history] == [1, 2, 3]
    assert history[0]["elapsed_seconds"] == stopped[0]["elapsed_seconds"]  # epoch 1 was not trained again


def test_a_run_trained_elsewhere_without_its_weights_is_trained_again_only_to_be_tested(tiny_data, tmp_path):
    from cifar.rundir import RunDir
    from reports.runs import ensure_tested, ensure_trained, val_acc
    from tests.conftest import tiny_config

    dirs = ensure_trained({"baseline": tiny_config(epochs=2)}, [0, 1], tmp_path, tiny_data)
    moved = RunDir(dirs["baseline"][1])
    recorded = moved.read_results().best_val_acc
    for weights in (moved.best, moved.last):  # what travels between machines: the small files only
        weights.unlink()
    ensure_trained({"baseline": tiny_config(epochs=2)}, [0, 1], tmp_path, tiny_data)  # trained: nothing to do
    assert not moved.best.is_file()
    assert val_acc(dirs["baseline"][1]) == recorded  # selection reads the small files
    (read,) = ensure_tested(dirs, ["baseline"], tiny_data)
    assert read["evaluated_now"] == 2 and read["retrained_for_test"] == 1
    assert moved.best.is_file() and moved.predictions.is_file()
    assert moved.read_results().best_val_acc == recorded  # the same config and seed trains the same run


# ---------------------------------------------------------------- more trials?


@pytest.mark.parametrize("values", [
    [0.81, 0.84, 0.79, 0.86, 0.83],        # distinct
    [0.80, 0.80, 0.82, 0.85, 0.85, 0.70],  # ties
])
def test_expected_max_is_the_mean_best_over_every_subset(values):
    """Tang et al.'s estimator against its definition: the mean, over every n-subset of the observed
    values, of the subset's best (counted by brute force)."""
    import itertools

    from reports.stats import expected_max, expected_max_curve

    for n in range(1, len(values) + 1):
        subsets = list(itertools.combinations(values, n))
        assert expected_max(values, n) == pytest.approx(sum(map(max, subsets)) / len(subsets))
    curve = expected_max_curve(values)
    assert curve[0][1] == pytest.approx(np.mean(values)) and curve[-1][1] == max(values)
    assert all(b >= a for (_, a), (_, b) in zip(curve, curve[1:]))  # more trials never expect less
    with pytest.raises(ValueError, match="1 <= n"):
        expected_max(values, len(values) + 1)


def test_more_trials_text_weighs_the_gain_against_the_mde():
    from reports.content import more_trials_text

    flat = [(1, 0.850), (2, 0.851), (3, 0.8515), (4, 0.852)]
    assert "unlikely" in more_trials_text(flat, 0.006)
    rising = [(1, 0.80), (2, 0.82), (3, 0.84), (4, 0.86)]
    assert "may still gain" in more_trials_text(rising, 0.006)
