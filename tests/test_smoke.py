"""End to end: the real command lines, as a user runs them, on a tiny image folder."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def run(*args: str, env_extra: dict | None = None) -> subprocess.CompletedProcess:
    import os

    env = {**os.environ, "OMP_NUM_THREADS": "1", **(env_extra or {})}
    return subprocess.run([sys.executable, "-m", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300)


def test_train_resume_evaluate_cli(image_folder, tmp_path):
    out = tmp_path / "run"
    common = ["--widths", "8,16", "--depth", "1", "--stem_width", "0", "--num_classes", "3",
              "--val_size", "6", "--batch_size", "8", "--cache_dir", str(tmp_path / "cache")]
    env = {"CIFAR10_DIR": str(image_folder)}
    first = run("cifar.train", "--epochs", "2", "--out", str(out), *common, env_extra=env)
    assert first.returncode == 0, first.stderr
    assert "epoch   2/2" in first.stdout and "completed" in first.stdout
    rows = (out / "metrics.csv").read_text().splitlines()
    assert len(rows) == 3

    # Resuming a finished run trains nothing more and keeps its metrics.
    again = run("cifar.train", "--resume", str(out), env_extra=env)
    assert again.returncode == 0, again.stderr
    assert (out / "metrics.csv").read_text().splitlines() == rows

    evaluated = run("cifar.evaluate", str(out), env_extra=env)
    assert evaluated.returncode == 0, evaluated.stderr
    assert json.loads((out / "test_metrics.json").read_text())["n_test"] == 9
    assert (out / "plots" / "confusion.png").is_file()


def test_bad_input_is_one_line_exit_2(tmp_path):
    bad = run("cifar.train", "--lr", "-1")
    assert bad.returncode == 2 and bad.stderr.strip() == "error: lr must be > 0, got -1.0"


def test_the_main_job_with_default_names_changes_no_tracked_file(image_folder, tmp_path):
    """A study and its report with the default storage, study name and output folders, on a copy
    of the tree: every file they write is ignored by git, and no committed file changes."""
    import os
    import shutil

    from tests.conftest import tiny_config

    copy = tmp_path / "tree"
    tracked = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, text=True,
                             check=True).stdout.split("\0")
    for name in filter(None, tracked):
        if (ROOT / name).is_file():
            (copy / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, copy / name)
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@t", "-c", "init.defaultBranch=main"]
    for cmd in (["init", "-q"], ["add", "-A"], ["commit", "-qm", "tree"]):
        subprocess.run(git + cmd, cwd=copy, check=True, capture_output=True)
    config = tmp_path / "tiny.json"
    tiny_config(val_size=6, batch_size=256, optimizer="sgd1024", lr=8.8).to_json(config)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CIFAR10_DIR": str(image_folder)}
    outputs = []
    # No pruning: trial 1 completes, so the report has a candidate besides the baseline.
    for args in (["study", "run", "--preset", "smoke", "--config", str(config), "--n-trials", "2",
                  "--pruner", "none"],
                 ["reports", "build", "--candidates", "1"]):
        done = subprocess.run([sys.executable, "-m", *args], cwd=copy, env=env, capture_output=True, text=True,
                              timeout=300)
        assert done.returncode == 0, done.stderr[-2000:]
        outputs.append(done.stdout)
    # The study's last lines name paths that exist, and the report's last line its report.html.
    named = re.findall(r"results: (\S+)/|luck: (\S+best_trial_config.json)", outputs[0])
    assert len(named) == 2 and all((copy / path).exists() for pair in named for path in pair if path)
    # ... and the recommendation it names is what the report wrote.
    winner = re.search(r"the report's winner, (\S+winner_config.json)", outputs[0]).group(1)
    assert (copy / winner).is_file()
    assert outputs[1].strip().splitlines()[-1].startswith("wrote results/reports/cifar-smoke/report.html")
    assert (copy / "results" / "studies" / "cifar-smoke" / "summary.json").is_file()
    assert (copy / "results" / "reports" / "cifar-smoke" / "summary.md").is_file()
    status = subprocess.run(["git", "status", "--porcelain"], cwd=copy, capture_output=True, text=True).stdout
    assert status == ""


def test_make_help_and_make_study_without_data(tmp_path):
    """A newcomer's first commands: make help lists the targets; make study without data stops at
    once with one line and exit status 2, creating no study database."""
    helped = subprocess.run(["make", "-s", "help"], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert helped.returncode == 0 and "make study" in helped.stdout and "make test" in helped.stdout
    (tmp_path / "nodata").mkdir()
    (tmp_path / "nodata" / "notes.txt").write_text("not CIFAR-10")
    db = tmp_path / "s.db"
    done = subprocess.run(["make", "-s", "study", f"CIFAR10_DIR={tmp_path / 'nodata'}", f"STORAGE=sqlite:///{db}"],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
    ours = [line for line in done.stderr.splitlines() if not line.startswith("make")]
    assert done.returncode == 2 and len(ours) == 1 and ours[0].startswith("error: ") and "CIFAR10_DIR" in ours[0]
    assert not db.exists()
