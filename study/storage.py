"""Where studies live: the storage, its URL (masked wherever shown), and the study's name in it.

A study lives in an RDB storage (SQLite file by default, any SQLAlchemy URL,
PostgreSQL when several machines share it) with heartbeats: a worker killed
mid-trial leaves a RUNNING trial that the next trial start marks FAIL after the
grace period and re-enqueues with the same parameters (study/retry.py). A
database server that goes away for a while is waited out (``PatientStorage``).
A bad URL is a ``UsageError``: one line, exit status 2.

Usage:
    storage = make_storage("sqlite:///results/study.db")
    name = resolve_study_name(storage, url, None)        # the storage's only study
"""

from __future__ import annotations

import functools
import json
import os
import re
import sys
import threading
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import optuna
from optuna.storages import RDBStorage

from cifar.cli import UsageError
from study.retry import RetryKilledTrial

__all__ = ["DEFAULT_STORAGE", "STORAGE_ENV", "default_storage", "redact", "has_password", "check_storage_url",
           "make_storage", "PatientStorage", "PATIENCE_S", "lost_connection", "resolve_study_name", "artifact_dir_for",
           "crowding_warning", "holds_no_study"]

DEFAULT_STORAGE = "sqlite:///results/study.db"
STORAGE_ENV = "CIFAR_STORAGE"  # a storage URL from the environment: off the command line and shell history


def default_storage() -> str:
    """The storage URL when ``--storage`` is not given: $CIFAR_STORAGE, else the SQLite default."""
    return os.environ.get(STORAGE_ENV) or DEFAULT_STORAGE


def redact(url: str) -> str:
    """The URL with its password replaced by ***, for every line that shows it (parsed or not)."""
    from sqlalchemy.engine import make_url

    try:
        parsed = make_url(url)
    except Exception:  # noqa: BLE001 (a malformed URL: mask anything between user: and @)
        return re.sub(r"(://[^:/@]*:)[^@]*@", r"\1***@", url)
    return parsed.render_as_string(hide_password=True) if parsed.password else url


def has_password(url: str) -> bool:
    return redact(url) != url


def check_storage_url(url: str, create: bool = True):
    """The parsed URL, checked without connecting: malformed, or a SQLite file that cannot be."""
    import sqlalchemy
    from sqlalchemy.engine import make_url

    try:
        parsed = make_url(url)
    except sqlalchemy.exc.ArgumentError:
        raise UsageError(f"malformed storage URL {redact(url)!r}; e.g. sqlite:///results/study.db or "
                         "postgresql://user@host/db") from None
    if parsed.get_backend_name() == "sqlite":
        db = parsed.database or ""
        if db and db != ":memory:":
            if not create and not Path(db).is_file():
                raise UsageError(f"no study database at {db}")
            if not Path(db).parent.is_dir():
                raise UsageError(f"directory of the SQLite file {db} does not exist")
    return parsed


def holds_no_study(url: str) -> bool:
    """Whether ``url`` (checked as ``check_storage_url`` does) is a SQLite database that does not exist yet:
    a study there is new, so what a new study needs can be checked before the file is created."""
    parsed = check_storage_url(url)
    db = parsed.database or ""
    return parsed.get_backend_name() == "sqlite" and (db in ("", ":memory:") or not Path(db).exists())


PATIENCE_S = 120.0  # how long a call waits out an unreachable database server before it gives up


def _lost_in(error: BaseException) -> BaseException | None:
    """The lost or refused connection (not bad data) in ``error``'s chain, or None. Optuna's RDBStorage
    wraps SQLAlchemy's error in a StorageInternalError, and a query that failed on a dropped connection
    may be followed in its session by a fallback query that fails again (PendingRollbackError)."""
    import sqlalchemy

    seen = set()
    while isinstance(error, (optuna.exceptions.StorageInternalError, sqlalchemy.exc.SQLAlchemyError)) and (
            id(error) not in seen):
        if isinstance(error, (sqlalchemy.exc.OperationalError, sqlalchemy.exc.InterfaceError)) or getattr(
                error, "connection_invalidated", False):
            return error
        seen.add(id(error))
        error = error.__cause__ or (None if error.__suppress_context__ else error.__context__)
    return None


def _db_message(error: BaseException) -> str:
    """The first line the database driver gave for ``error`` (its name where it gave none)."""
    text = str(getattr(cause := _lost_in(error) or error.__cause__ or error, "orig", None) or cause).strip()
    return text.splitlines()[0] if text else type(cause).__name__


def lost_connection(error: BaseException) -> bool:
    """A lost or refused connection to the server anywhere in ``error``'s chain: worth waiting out."""
    return _lost_in(error) is not None


def _patient(method: Callable, name: str) -> Callable:
    @functools.wraps(method)
    def call(self: PatientStorage, *args: Any, **kwargs: Any) -> Any:
        started, wait, retried = time.monotonic(), 0.5, False
        while True:
            try:
                result = method(self, *args, **kwargs)
            except optuna.exceptions.UpdateFinishedTrialError:
                # A retried write whose first try committed before its answer was lost: already done.
                if not (retried and name == "set_trial_state_values"
                        and self.get_trial(args[0]).state == (kwargs["state"] if "state" in kwargs else args[1])):
                    raise
                result = True
            except Exception as e:
                if not lost_connection(e) or time.monotonic() - started + wait > self.patience:
                    if retried:  # given up: the next outage is announced again
                        PatientStorage._down_since = None
                    raise
                self._outage(_db_message(e))
                retried = True
                time.sleep(wait)
                wait = min(2 * wait, 5.0)
                continue
            if retried:
                self._outage(None)
            return result
    return call


class PatientStorage(RDBStorage):
    """An RDB storage that waits out a server outage (a restart, a failover): a call that finds the
    server gone retries with backoff for ``patience`` seconds, then gives up as RDBStorage would (the
    heartbeat retries the trial), saying once when it waits and once when the server is back.
    RDBStorage's pool pre-ping only replaces connections that died while idle."""

    patience = PATIENCE_S
    _lock, _down_since = threading.Lock(), None

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self._silent_since: dict[int, float] = {}  # RUNNING trials without a heartbeat: when first seen so
        super().__init__(*args, **kwargs)

    def _get_stale_trial_ids(self, study_id: int) -> list[int]:
        """Optuna's stale trials, and the RUNNING trials with no heartbeat at all that this process has
        seen so for longer than the grace period. Those are a patient retry's leftovers: a trial whose
        creation, or whose taking from the queue, committed before its answer was lost, so the retry
        created or took another, and no worker beats for the first. Optuna's check skips trials without
        a heartbeat row, so such a trial would stay RUNNING for ever (an enqueued one never ran). Seen
        twice by this process's clock, not by comparing machines' clocks; a live trial beats at once."""
        from optuna.storages._rdb import models
        from optuna.storages._rdb.storage import _create_scoped_session

        stale = RDBStorage._get_stale_trial_ids(self, study_id)
        with _create_scoped_session(self.scoped_session) as session:
            silent = {row[0] for row in session.query(models.TrialModel.trial_id)
                      .outerjoin(models.TrialHeartbeatModel)
                      .filter(models.TrialModel.study_id == study_id,
                              models.TrialModel.state == optuna.trial.TrialState.RUNNING,
                              models.TrialHeartbeatModel.trial_heartbeat_id.is_(None)).all()}
        now, grace = time.monotonic(), 2 * self.heartbeat_interval if self.grace_period is None else self.grace_period
        self._silent_since = {t: self._silent_since.get(t, now) for t in silent}
        return stale + sorted(t for t, since in self._silent_since.items() if now - since > grace)

    def _outage(self, why: str | None) -> None:
        """``why``: the server is gone (said once per outage); None: it answered again."""
        with PatientStorage._lock:
            down = PatientStorage._down_since
            if why is not None and down is None:
                PatientStorage._down_since = time.monotonic()
                print(f"storage unreachable ({why}); worker {os.getpid()} waits up to {self.patience:.0f} s "
                      "for it", file=sys.stderr, flush=True)
            elif why is None and down is not None:
                PatientStorage._down_since = None
                print(f"storage back after {time.monotonic() - down:.0f} s; worker {os.getpid()} goes on",
                      file=sys.stderr, flush=True)


for _name in ("create_new_study", "delete_study", "set_study_user_attr", "set_study_system_attr",
              "get_study_id_from_name", "get_study_name_from_id", "get_study_directions", "get_study_user_attrs",
              "get_study_system_attrs", "get_all_studies", "create_new_trial", "set_trial_param", "get_trial_param",
              "get_trial_id_from_study_id_trial_number", "set_trial_state_values", "set_trial_intermediate_value",
              "set_trial_user_attr", "set_trial_system_attr", "get_trial_user_attrs", "get_trial_system_attrs",
              "get_trial", "get_all_trials", "get_n_trials", "get_best_trial", "record_heartbeat",
              "_get_stale_trial_ids", "_get_trials", "_create_new_trial", "_set_trial_param", "_get_best_trial_id"):
    # (the private ones: what Optuna's _CachedStorage, which every Study wraps around an RDB storage, calls)
    setattr(PatientStorage, _name, _patient(PatientStorage.__dict__.get(_name, getattr(RDBStorage, _name)), _name))


def make_storage(url: str, heartbeat_interval: int | None = 60, grace_period: int | None = 180,
                 create: bool = True) -> RDBStorage:
    """An RDB storage with heartbeats, patient with a database server (``PatientStorage``); one-line
    errors for bad URLs and servers unreachable at the start."""
    import sqlalchemy

    parsed = check_storage_url(url, create)
    engine_kwargs: dict[str, Any] = {}
    if parsed.get_backend_name() == "sqlite":
        # Wait for the lock instead of failing: several workers write to one file.
        engine_kwargs["connect_args"] = {"timeout": 120}
    else:
        engine_kwargs["pool_pre_ping"] = True
    # Heartbeats and their retry callback are experimental in Optuna; they are what we rely on.
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    retry = RetryKilledTrial() if heartbeat_interval else None  # resumes from its predecessor's last.pt
    try:
        kind = RDBStorage if parsed.get_backend_name() == "sqlite" else PatientStorage  # a file has no outage
        return kind(url, engine_kwargs=engine_kwargs, heartbeat_interval=heartbeat_interval,
                          grace_period=grace_period, heartbeat_stale_trial_callback=retry)
    except sqlalchemy.exc.NoSuchModuleError:
        raise UsageError(f"no SQLAlchemy driver for {parsed.drivername!r} in {redact(url)!r}") from None
    except ImportError:
        raise UsageError(f"the database driver for {parsed.drivername!r} is not installed") from None
    except (sqlalchemy.exc.OperationalError, sqlalchemy.exc.DatabaseError) as e:
        raise UsageError(f"cannot open storage {parsed.render_as_string(hide_password=True)}: "
                         f"{_db_message(e)}") from None


# bench/load.py: where SQLite's errors start on this machine class
LOAD_RESULTS = Path(__file__).resolve().parents[1] / "results" / "bench" / "load.json"


def crowding_warning(url: str, study: optuna.Study, workers: int, results: Path = LOAD_RESULTS) -> str | None:
    """One line where more processes would write one SQLite file (this job's workers and the trials
    running elsewhere) than the committed load benchmark found free of errors; None otherwise."""
    if not url.startswith("sqlite") or not results.is_file():
        return None
    summary = (measured := json.loads(results.read_text())).get("cost_summary") or {}
    errors_from, tried = summary.get("sqlite_errors_from"), summary.get("sqlite_most_tried")
    limit = errors_from - 1 if errors_from else tried
    writers = workers + len(study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)))
    if not limit or writers <= limit:
        return None
    seen = (f"errors start at {errors_from} processes" if errors_from else f"no more than {tried} were measured")
    return (f"warning: {writers} workers on one SQLite file, where {seen} (bench/load.py on a "
            f"{measured.get('machine', 'machine')}): use PostgreSQL for more (--storage postgresql://...)")


def resolve_study_name(storage: RDBStorage, url: str, name: str | None) -> str:
    """``name`` if the storage holds it; without a name, the storage's only study."""
    names = optuna.get_all_study_names(storage)
    if name is None:
        if len(names) != 1:
            raise UsageError(f"{redact(url)} holds {len(names)} studies ({', '.join(names) or 'none'}): "
                             "choose one with --study-name")
        return names[0]
    if name not in names:
        raise UsageError(f"no study {name!r} in {redact(url)}; it has: {', '.join(names) or 'none'}")
    return name


def artifact_dir_for(storage_url: str) -> Path:
    """Artifacts sit next to a SQLite file; otherwise under results/artifacts."""
    db = Path(storage_url.removeprefix("sqlite:///"))
    return db.with_name(f"{db.stem}-artifacts") if storage_url.startswith("sqlite:///") else Path("results/artifacts")
