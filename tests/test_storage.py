"""study/storage.py: a storage URL's password never shows, and the URL may come from the environment."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest

from study.storage import STORAGE_ENV, default_storage, has_password, redact
from tests.test_study import POSTGRES_ENV, study_env  # noqa: F401  (fixture)

ROOT = Path(__file__).resolve().parents[1]
MARKER = "Zq7markerPW"  # a password no file or output of ours may hold


@pytest.mark.parametrize("url, shown", [
    ("postgresql://user:secret@host:5432/db", "postgresql://user:***@host:5432/db"),
    ("postgresql+psycopg://u:p%40ss@h/db", "postgresql+psycopg://u:***@h/db"),  # an escaped @ in the password
    ("sqlite:///results/study.db", "sqlite:///results/study.db"),                # nothing to hide
    ("postgresql://user@host/db", "postgresql://user@host/db"),
    ("not a url://u:pw@x", "not a url://u:***@x"),                               # malformed: masked all the same
])
def test_redact(url, shown):
    assert redact(url) == shown and has_password(url) == (shown != url)


def test_the_storage_may_come_from_the_environment(monkeypatch):
    monkeypatch.delenv(STORAGE_ENV, raising=False)
    assert default_storage() == "sqlite:///results/study.db"
    monkeypatch.setenv(STORAGE_ENV, "sqlite:////tmp/x.db")
    assert default_storage() == "sqlite:////tmp/x.db"


def _with_password(url: str) -> str:
    head, tail = url.split("://", 1)
    user, rest = tail.split("@", 1)
    return f"{head}://{user.split(':')[0]}:{MARKER}@{rest}"


@pytest.mark.skipif(not os.environ.get(POSTGRES_ENV), reason=f"{POSTGRES_ENV} is not set")
def test_a_storage_password_is_in_no_output_and_no_file(study_env, tmp_path):  # noqa: F811
    """The study, its show, its report and the dashboard, each given a URL with a marker password
    (on the command line for study run, from $CIFAR_STORAGE for the rest; the test server takes any
    password): every byte they printed and wrote, the study's attributes and note included, lacks it."""
    url = _with_password(os.environ[POSTGRES_ENV])
    name = f"secret-{os.getpid()}-{int(time.time())}"
    env = {**os.environ, STORAGE_ENV: url, "PYTHONPATH": str(ROOT)}
    args = [a if a != study_env["url"] else url for a in study_env["args"]]
    args += ["--artifact-dir", str(tmp_path / "artifacts"), "--study-name", name, "--n-trials", "3", "--pruner", "none"]
    out = tmp_path / "out"
    commands = [
        [sys.executable, "-m", "study", "run", *args],
        [sys.executable, "-m", "study", "show", "--study-name", name],
        [sys.executable, "-m", "study", "show", "--study-name", "no-such-study"],  # an error line names the URL
        [sys.executable, "-m", "reports", "build", "--study-name", name, "--candidates", "1", "--out", str(out),
         "--runs-dir", str(tmp_path / "report-runs")],
    ]
    printed, codes = [], []
    try:
        for cmd in commands:
            done = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
            printed += [done.stdout, done.stderr]
            codes.append(done.returncode)
        assert codes == [0, 0, 2, 0], printed  # each ran (the unknown study: one line, exit 2)
        assert (out / name / "report.html").is_file()
        assert "***" in "".join(printed)  # the URL was shown, masked
        dashboard = subprocess.Popen([sys.executable, "-m", "study", "dashboard", "--port", "8797"], cwd=tmp_path,
                                     env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        time.sleep(8)
        dashboard.terminate()
        printed.append(dashboard.communicate(timeout=30)[0])
        study = optuna.load_study(study_name=name, storage=url)
        import optuna_dashboard

        system = study._storage.get_study_system_attrs(study._study_id)  # where the dashboard keeps notes
        stored = [repr(study.user_attrs), repr(system), optuna_dashboard.get_note(study) or "",
                  *(repr(t.user_attrs) for t in study.trials)]
    finally:
        optuna.delete_study(study_name=name, storage=url)
    assert not [p for p in printed if MARKER in p]
    assert not [s for s in stored if MARKER in s]
    written = [p for p in tmp_path.rglob("*") if p.is_file() and MARKER.encode() in p.read_bytes()]
    assert written == []
