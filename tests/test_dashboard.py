"""optuna-dashboard, started for real on loopback, lists the study and its trials."""

from __future__ import annotations

import json
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import optuna

from bench.common import free_port


def get_json(url: str):
    with urllib.request.urlopen(url, timeout=5) as r:
        return json.loads(r.read())


def test_dashboard_lists_study_and_trials(tmp_path):
    url = f"sqlite:///{tmp_path / 'study.db'}"
    study = optuna.create_study(study_name="dash", storage=url, direction="maximize")
    study.optimize(lambda t: t.suggest_float("lr", 1e-3, 1.0, log=True), n_trials=3)
    port = free_port()
    exe = Path(sys.executable).with_name("optuna-dashboard")
    proc = subprocess.Popen([str(exe), url, "--host", "127.0.0.1", "--port", str(port),
                             "--artifact-dir", str(tmp_path / "artifacts"), "--quiet"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline, studies = time.time() + 60, None
        while time.time() < deadline and studies is None:
            try:
                studies = get_json(f"http://127.0.0.1:{port}/api/studies")["study_summaries"]
            except OSError:
                time.sleep(0.5)
        assert studies is not None, proc.stderr.read1().decode() if proc.poll() is not None else "no answer"
        assert [s["study_name"] for s in studies] == ["dash"]
        detail = get_json(f"http://127.0.0.1:{port}/api/studies/{studies[0]['study_id']}")
        assert len(detail["trials"]) == 3
        assert {t["state"] for t in detail["trials"]} == {"Complete"}
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def test_the_dashboard_beside_a_live_sqlite_study_loses_nothing(tmp_path):
    """`python -m study dashboard` polled all through a study whose 4 workers write to the same SQLite
    file: every trial finishes (none failed by a locked database) and the dashboard answered throughout."""
    from tests.conftest import make_image_folder, tiny_config
    from tests.test_study import ROOT

    folder = make_image_folder(tmp_path / "imgs", n_train=60, n_test=9)
    cfg = tiny_config(data_dir=str(folder), cache_dir=str(tmp_path / "cache"), val_size=12, batch_size=256,
                      optimizer="sgd1024", lr=8.8, epochs=3)
    cfg.to_json(tmp_path / "base.json")
    url = f"sqlite:///{tmp_path / 'study.db'}"
    study = [sys.executable, "-m", "study", "run", "--storage", url, "--config", str(tmp_path / "base.json"),
             "--preset", "smoke", "--study-name", "live", "--workers", "4", "--n-trials", "16", "--pruner", "none",
             "--runs-dir", str(tmp_path / "runs"), "--results-dir", str(tmp_path / "results")]
    optuna.create_study(study_name="warm", storage=url)  # the file exists before the dashboard opens it
    port = free_port()
    dashboard = subprocess.Popen([sys.executable, "-m", "study", "dashboard", "--storage", url, "--port", str(port)],
                                 cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    answered = 0
    try:
        for _ in range(120):  # up before the study starts
            try:
                get_json(f"http://127.0.0.1:{port}/api/studies")
                break
            except OSError:
                time.sleep(0.5)
        workers = subprocess.Popen(study, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        while workers.poll() is None:  # read the live study over and over while the workers write
            for summary in get_json(f"http://127.0.0.1:{port}/api/studies")["study_summaries"]:
                get_json(f"http://127.0.0.1:{port}/api/studies/{summary['study_id']}")
                answered += 1
            time.sleep(0.2)
        assert workers.returncode == 0, workers.stderr.read()[-2000:]
    finally:
        dashboard.terminate()
        dashboard.wait(timeout=30)
    trials = optuna.load_study(study_name="live", storage=url).trials
    states = [t.state for t in trials]
    assert len(trials) >= 16 and optuna.trial.TrialState.FAIL not in states
    assert optuna.trial.TrialState.RUNNING not in states and answered > 10
