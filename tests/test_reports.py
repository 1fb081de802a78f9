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


# Student's sleep data (Cushny and Peebles), R's datasets::sleep: extra hours of sleep under two drugs.
SLEEP_1 = [0.7, -1.6, -0.2, -1.2, -0.1, 3.4, 3.7, 0.8, 0.0, 2.0]
SLEEP_2 = [1.9, 0.8, 1.1, 0.1, -0.1, 4.4, 5.5, 1.6, 4.6, 3.4]


def test_welch_against_published_values():
    # R: t.test(extra ~ group, data = sleep) -> t = -1.8608, df = 17.776, p-value = 0.07939,
    # 95 percent confidence interval -3.3654832 0.2054832 (group 1 minus group 2).
    diff, low, high = welch_interval(SLEEP_1, SLEEP_2)
    assert diff == pytest.approx(1.58)
    assert (low, high) == (pytest.approx(-0.2054832, abs=1e-6), pytest.approx(3.3654832, abs=1e-6))
    cmp = compare(SLEEP_1, SLEEP_2)
    assert cmp.t_statistic == pytest.approx(1.8608, abs=1e-4) and cmp.p_value == pytest.approx(0.07939, abs=1e-5)
    assert not cmp.significant


@pytest.mark.parametrize("baseline, tuned, significant", [
    ([0.80, 0.81, 0.79], [0.85, 0.86, 0.84], True),     # clear gain
    ([0.80, 0.85, 0.75], [0.81, 0.86, 0.74], False),    # difference inside the noise
    ([0.85, 0.86, 0.84], [0.80, 0.81, 0.79], True),     # clear loss is significant too
])
def test_compare_verdicts(baseline, tuned, significant):
    cmp = compare(baseline, tuned)
    assert cmp.significant == significant
    assert (cmp.p_value < 0.05) == significant
    assert cmp.bootstrap_low <= cmp.difference <= cmp.bootstrap_high


def test_compare_needs_two_seeds():
    with pytest.raises(ValueError, match=">= 2 seeds"):
        compare([0.8], [0.9, 0.91])


def test_bootstrap_interval_has_the_normal_width_on_large_samples():
    # 400 draws per side from N(0, 1) and N(0.5, 1): the difference's standard error is
    # sqrt(2/400) = 0.0707, so a 95% interval is about 2 x 1.96 x 0.0707 = 0.277 wide.
    rng = np.random.default_rng(0)
    a, b = rng.normal(0.0, 1.0, 400), rng.normal(0.5, 1.0, 400)
    low, high = bootstrap_interval(a, b)
    se = math.sqrt(np.var(a, ddof=1) / 400 + np.var(b, ddof=1) / 400)
    assert high - low == pytest.approx(2 * 1.96 * se, rel=0.08)
    assert low < b.mean() - a.mean() < high and low > 0
    assert (low, high) == bootstrap_interval(a, b)  # seeded


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


def test_pngs_are_skipped_with_a_message_where_no_browser_is_installed(tmp_path, monkeypatch, capsys):
    import reports.render as render

    monkeypatch.setattr(render.shutil, "which", lambda name: None)
    monkeypatch.delenv("BROWSER_PATH", raising=False)
    fig = per_class_figure(pd.DataFrame({"config": ["baseline"], "class": ["a"], "mean": [0.5], "std": [0.1]}))
    assert render.write_pngs({"per_class": fig}, tmp_path / "figures") is False
    assert "no Chromium found" in capsys.readouterr().out
    assert not (tmp_path / "figures").exists()
