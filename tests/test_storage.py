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


PG_BIN = next(iter(sorted(Path("/usr/lib/postgresql").glob("*/bin"))), None)


class ThrowawayPostgres:
    """A PostgreSQL server of our own in a temporary folder, on a free port, that a test may stop
    and start (initdb and pg_ctl; as root, run as the postgres user, which initdb requires)."""

    def __init__(self):
        import pwd
        import shutil
        import tempfile

        from bench.common import free_port

        self.root = Path(tempfile.mkdtemp(prefix="cifar-pg-"))  # not under pytest's folder: postgres must enter it
        self.as_user = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
        if self.as_user:
            os.chown(self.root, pwd.getpwnam("postgres").pw_uid, -1)
        self.port = free_port()
        self._run(PG_BIN / "initdb", "-D", self.root / "data", "-A", "trust", "-U", "postgres")
        self._cleanup = lambda: shutil.rmtree(self.root, ignore_errors=True)
        self.url = f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def _run(self, *cmd):
        subprocess.run([*self.as_user, *map(str, cmd)], check=True, capture_output=True, timeout=120)

    def start(self):
        self._run(PG_BIN / "pg_ctl", "-D", self.root / "data", "-w", "-l", self.root / "log",
                  "-o", f"-h 127.0.0.1 -p {self.port} -k {self.root}", "start")

    def stop(self):
        self._run(PG_BIN / "pg_ctl", "-D", self.root / "data", "-w", "-m", "fast", "stop")

    def close(self):
        try:
            self.stop()
        except subprocess.CalledProcessError:
            pass  # already stopped
        self._cleanup()


@pytest.mark.skipif(PG_BIN is None, reason="needs PostgreSQL's initdb and pg_ctl (/usr/lib/postgresql/*/bin)")
def test_a_study_waits_out_a_storage_outage(study_env, tmp_path):  # noqa: F811
    """2 workers on a PostgreSQL server of its own; the server stops for 15 s while trials run, then
    starts again: every worker waits (one line when it starts, one when the server is back), the study
    finishes its trials, and no completed trial and no reported epoch is lost."""
    server = ThrowawayPostgres()
    try:
        server.start()
        args = [a if a != study_env["url"] else server.url for a in study_env["args"]]
        args += ["--study-name", "outage", "--n-trials", "10", "--workers", "2", "--target-epochs", "40",
                 "--pruner", "none", "--artifact-dir", str(tmp_path / "artifacts")]
        job = subprocess.Popen([sys.executable, "-m", "study", "run", *args], cwd=tmp_path,
                               env={**os.environ, "PYTHONPATH": str(ROOT)}, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)
        states = []
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline and job.poll() is None:  # stop once a trial is done, others running
            try:
                states = [t.state for t in optuna.load_study(study_name="outage", storage=server.url).trials]
            except (KeyError, ValueError):
                states = []
            if states.count(optuna.trial.TrialState.COMPLETE) >= 1 and optuna.trial.TrialState.RUNNING in states:
                break
            time.sleep(0.2)
        assert job.poll() is None, job.communicate()
        server.stop()
        time.sleep(15)
        server.start()
        out, err = job.communicate(timeout=600)
        trials = optuna.load_study(study_name="outage", storage=server.url).trials
    finally:
        server.close()
    assert job.returncode == 0, out + err
    assert "storage unreachable" in err and "storage back after" in err, err
    assert err.count("storage unreachable") <= 2 and "Traceback" not in err, err  # one line per worker at most
    complete = [t for t in trials if t.state == optuna.trial.TrialState.COMPLETE]
    # Every trial completed, none failed or left running; 2 workers may each start the 10th (the count
    # is looked at after a trial), so 10 or 11.
    assert len(complete) == len(trials) in (10, 11), [t.state for t in trials]
    assert all(sorted(t.intermediate_values) == list(range(1, 41)) for t in complete)  # every epoch kept


@pytest.mark.skipif(PG_BIN is None, reason="needs PostgreSQL's initdb and pg_ctl (/usr/lib/postgresql/*/bin)")
def test_a_storage_call_gives_up_after_its_patience(capsys):
    """A server that stays away: the call waits its patience (one line), then raises as RDBStorage would."""
    from study.storage import lost_connection, make_storage

    server = ThrowawayPostgres()
    try:
        server.start()
        storage = make_storage(server.url, heartbeat_interval=None, grace_period=None)
        storage.get_all_studies()
        server.stop()
        storage.patience, started = 3.0, time.monotonic()
        with pytest.raises(optuna.exceptions.StorageInternalError) as lost:
            storage.get_all_studies()
        waited = time.monotonic() - started
    finally:
        server.close()
    assert lost_connection(lost.value) and 1.5 < waited < 10, waited
    err = capsys.readouterr().err
    assert err.count("storage unreachable") == 1 and "storage back" not in err, err


@pytest.mark.skipif(PG_BIN is None, reason="needs PostgreSQL's initdb and pg_ctl (/usr/lib/postgresql/*/bin)")
def test_a_connection_dropped_under_optunas_fallback_query_is_waited_out(capsys):
    """The connection drops under the trials query of Optuna's ``_get_trials``, whose fallback query
    then fails again in the same session (PendingRollbackError, the lost connection only in its
    context): still an outage to wait out, not an error (the study's outage test once died so)."""
    import psycopg
    import sqlalchemy

    from study.storage import lost_connection, make_storage

    server = ThrowawayPostgres()
    try:
        server.start()
        storage = make_storage(server.url, heartbeat_interval=None, grace_period=None)
        study = optuna.create_study(storage=storage, study_name="dropped")
        for x in range(3):
            study.enqueue_trial({"x": x})
            trial = study.ask({"x": optuna.distributions.IntDistribution(0, 9)})
            study.tell(trial, trial.params["x"])
        dropped = []

        def drop_the_trials_query(conn, cursor, statement, *_):
            if "FROM trials" in statement and not dropped:
                dropped.append(cursor.connection.info.backend_pid)
                with psycopg.connect(server.url, autocommit=True) as admin:
                    admin.execute("SELECT pg_terminate_backend(%s)", [dropped[0]])

        sqlalchemy.event.listen(storage.engine, "before_cursor_execute", drop_the_trials_query)
        study_id = storage.get_study_id_from_name("dropped")
        trials = storage._get_trials(study_id, None, set(), -1)
        with pytest.raises(optuna.exceptions.StorageInternalError) as unpatient:  # what RDBStorage itself does
            dropped.clear()
            optuna.storages.RDBStorage._get_trials(storage, study_id, None, set(), -1)
    finally:
        server.close()
    assert dropped and [t.params["x"] for t in trials] == [0, 1, 2]
    assert "PendingRollbackError" in repr(unpatient.value.__cause__) and lost_connection(unpatient.value)
    err = capsys.readouterr().err
    assert err.count("storage unreachable") == 1 and err.count("storage back") == 1, err
    assert "terminating connection" in err, err  # the line names the dropped connection, not the fallback's error


def test_the_lost_connection_check_ends_on_a_cycle_and_respects_from_none():
    import sqlalchemy

    from study.storage import lost_connection

    lost = sqlalchemy.exc.OperationalError("SELECT 1", {}, Exception("server closed the connection"))
    looped = sqlalchemy.exc.PendingRollbackError("rolled back")
    looped.__cause__ = looped  # `raise e from e`: a chain that points at itself
    assert not lost_connection(looped)
    try:
        try:
            raise lost
        except sqlalchemy.exc.OperationalError:
            raise sqlalchemy.exc.PendingRollbackError("rolled back") from None  # the connection is not the cause
    except sqlalchemy.exc.PendingRollbackError as e:
        assert not lost_connection(e)
    try:
        try:
            raise lost
        except sqlalchemy.exc.OperationalError:
            raise sqlalchemy.exc.PendingRollbackError("rolled back")  # noqa: B904 (what Optuna's fallback query does)
    except sqlalchemy.exc.PendingRollbackError as e:
        assert lost_connection(e)


@pytest.mark.skipif(PG_BIN is None, reason="needs PostgreSQL's initdb and pg_ctl (/usr/lib/postgresql/*/bin)")
@pytest.mark.filterwarnings("ignore:Heartbeat of storage is supposed to be used with Study.optimize")
def test_a_trial_left_running_by_a_lost_answer_is_failed_and_retried():
    """Taking an enqueued trial, and creating one, commit and then lose their answer: the patient retry
    takes or creates another, and the first stays RUNNING with no heartbeat, which Optuna's stale check
    skips. Ours fails it once seen so for longer than the grace period, and the retry re-enqueues it
    with its parameters; the trials that beat are left alone."""
    import sqlalchemy

    from study.storage import make_storage

    server = ThrowawayPostgres()
    try:
        server.start()
        storage = make_storage(server.url, heartbeat_interval=1, grace_period=1)
        study = optuna.create_study(storage=storage, study_name="lost-answer")
        study_id, lose, wrote = storage.get_study_id_from_name("lost-answer"), [], []
        sqlalchemy.event.listen(storage.scoped_session, "after_flush", lambda *_: wrote.append(1))

        def lose_the_answer(session):  # a write committed, then the connection drops before its answer
            if lose and wrote:
                lose.clear()
                raise sqlalchemy.exc.OperationalError("COMMIT", {}, Exception("server closed the connection"))
            wrote.clear()

        sqlalchemy.event.listen(storage.scoped_session, "after_commit", lose_the_answer)
        space = {"x": optuna.distributions.IntDistribution(0, 9)}
        study.enqueue_trial({"x": 7})
        lose.append(1)
        taken = study.ask(space)  # its first try took trial 0; the retry found it taken
        lose.append(1)
        created = study.ask(space)  # its first try created a trial; the retry created another
        late = study.ask(space)  # silent at the first look, beating by the second: alive
        live = [taken._trial_id, created._trial_id, late._trial_id]
        ghosts = [t._trial_id for t in study.get_trials(states=(optuna.trial.TrialState.RUNNING,))
                  if t._trial_id not in live]
        for trial_id in live[:2]:
            storage.record_heartbeat(trial_id)
        first_look = storage._get_stale_trial_ids(study_id)
        time.sleep(1.5)
        for trial_id in live:
            storage.record_heartbeat(trial_id)
        second_look = storage._get_stale_trial_ids(study_id)
        optuna.storages.fail_stale_trials(study)
        retries = study.get_trials(states=(optuna.trial.TrialState.WAITING,))
        states = {t._trial_id: t.state for t in study.get_trials()}
    finally:
        server.close()
    assert len(ghosts) == 2 and taken.number == 1 and created.number == 3, (ghosts, taken.number, created.number)
    assert first_look == [] and second_look == sorted(ghosts), (first_look, second_look, ghosts)
    assert [states[g] for g in ghosts] == [optuna.trial.TrialState.FAIL] * 2
    assert [states[t] for t in live] == [optuna.trial.TrialState.RUNNING] * 3
    assert sorted(t.system_attrs["failed_trial"] for t in retries) == [0, 2]
    assert [t.system_attrs.get("fixed_params") for t in retries] == [{"x": 7}, None]  # the enqueued point kept
