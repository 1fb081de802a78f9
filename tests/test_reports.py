"""Reports: exact statistics and data functions, figures build, a whole report in a real browser."""

from __future__ import annotations

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
from scipy import stats as scipy_stats

from reports.build import main as build_main
from reports.figures import confusion_figure, curves_figure, image_grid_figure, per_class_figure
from reports.stats import bootstrap_interval, compare, mean_std, welch_interval
from study.run import main as study_main
from study.trials import compute_spent, trials_table
from tests.test_study import study_env  # noqa: F401  (fixture)

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync"]


# ---------------------------------------------------------------- statistics


def test_mean_std_uses_sample_std():
    assert mean_std([1.0, 2.0, 3.0]) == (2.0, 1.0)


def test_welch_interval_matches_hand_computation():
    a, b = [0.80, 0.82, 0.81], [0.85, 0.86, 0.84, 0.87]
    diff, low, high = welch_interval(a, b)
    va, vb = np.var(a, ddof=1) / 3, np.var(b, ddof=1) / 4
    df = (va + vb) ** 2 / (va**2 / 2 + vb**2 / 3)
    half = scipy_stats.t.ppf(0.975, df) * math.sqrt(va + vb)
    assert diff == pytest.approx(np.mean(b) - np.mean(a))
    assert (low, high) == (pytest.approx(diff - half), pytest.approx(diff + half))


@pytest.mark.parametrize("baseline, tuned, significant", [
    ([0.80, 0.81, 0.79], [0.85, 0.86, 0.84], True),     # clear gain
    ([0.80, 0.85, 0.75], [0.81, 0.86, 0.74], False),    # difference inside the noise
    ([0.85, 0.86, 0.84], [0.80, 0.81, 0.79], True),     # clear loss is significant too
])
def test_compare_verdicts(baseline, tuned, significant):
    cmp = compare(baseline, tuned)
    assert cmp.significant == significant
    assert cmp.p_value == pytest.approx(scipy_stats.ttest_ind(tuned, baseline, equal_var=False).pvalue)
    assert cmp.bootstrap_low <= cmp.difference <= cmp.bootstrap_high


def test_compare_needs_two_seeds():
    with pytest.raises(ValueError, match=">= 2 seeds"):
        compare([0.8], [0.9, 0.91])


def test_bootstrap_is_seeded():
    assert bootstrap_interval([1.0, 2.0, 3.0], [2.0, 3.0, 5.0]) == bootstrap_interval([1.0, 2.0, 3.0],
                                                                                      [2.0, 3.0, 5.0])


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


def test_whole_report_from_tiny_study(study_env, tmp_path, capsys):  # noqa: F811
    assert study_main(study_env["args"] + ["--study-name", "r", "--n-trials", "3"]) == 0
    # No --study-name: the storage's only study is the one.
    argv = ["--storage", study_env["url"], "--seeds", "2", "--epochs", "2",
            "--out", str(tmp_path / "reports"), "--runs-dir", str(tmp_path / "report-runs")]
    # --runs-only trains the runs (on a GPU machine, say) and writes no report ...
    assert build_main(argv + ["--runs-only"]) == 0
    assert not (tmp_path / "reports").exists()
    assert list((tmp_path / "report-runs").glob("*/test_predictions.pt"))
    # ... and the report is then built from them without retraining.
    capsys.readouterr()
    assert build_main(argv) == 0
    assert "all 4 runs cached" in capsys.readouterr().out
    out = tmp_path / "reports" / "r"
    for name in ("report.html", "summary.md", "comparison.csv", "comparison.json", "plotly.min.js"):
        assert (out / name).is_file(), name
    table = pd.read_csv(out / "comparison.csv")
    assert sorted(table["config"]) == ["baseline", "baseline", "tuned", "tuned"]
    pngs = {p.stem for p in (out / "figures").glob("*.png")}
    assert {"curves", "per_class", "history", "intermediate", "confusion_tuned", "fixed_by_tuning"} <= pngs
    page = (out / "report.html").read_text()
    assert "https://" not in page.split("<body>")[0]  # plotly.js comes from the file beside it
    summary = (out / "summary.md").read_text()
    assert "95% CI" in summary and "test accuracy" in summary

    # A rebuild reuses the cached runs.
    capsys.readouterr()
    start = time.perf_counter()
    assert build_main(argv) == 0
    assert time.perf_counter() - start < 30
    assert "all 4 runs cached" in capsys.readouterr().out

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


@pytest.mark.parametrize("setup, message", [
    ("unknown", "no study 'r'"),                          # nothing of that name
    ("two_studies", "choose one with --study-name"),      # no name, and no single study
    ("no_complete", "has no complete trial"),             # only a failed trial
])
def test_bad_input_exits_2(study_env, setup, message, capsys):  # noqa: F811
    if setup == "no_complete":
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


def test_one_seed_is_refused(capsys):
    assert build_main(["--study-name", "r", "--seeds", "1"]) == 2
    assert "--seeds must be >= 2" in capsys.readouterr().err
