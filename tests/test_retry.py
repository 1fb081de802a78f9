"""study/retry.py: a dead worker's trial retried once, and its retry never taken for a dead one."""

from __future__ import annotations

import platform
import subprocess
import sys

import optuna
from optuna.distributions import FloatDistribution
from optuna.trial import TrialState


def _dead_pid() -> int:
    done = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True, check=True)
    return int(done.stdout)


def test_a_retry_just_taken_by_a_worker_is_not_failed_by_a_worker_starting_beside_it(tmp_path):
    """A dead process's trial is retried; another worker takes the retry (RUNNING, its objective has not
    written yet); a third worker starts then and looks for trials of dead processes. The retry must
    not look like one: it was, through the inherited ``worker`` attribute, failed again and again until
    its retries ran out, and the trial was lost (bench/load.py, 16 workers on PostgreSQL)."""
    from study.retry import MAX_RETRY, recover_running
    from study.storage import make_storage

    storage = make_storage(f"sqlite:///{tmp_path / 's.db'}", heartbeat_interval=60, grace_period=180)
    study = optuna.create_study(storage=storage, direction="maximize")
    killed = study.ask({"lr": FloatDistribution(0.01, 1.0)})
    killed.report(0.4, 1)
    killed.set_user_attr("worker", f"{platform.node()}:{_dead_pid()}")
    killed.set_user_attr("run_dir", "runs/trial-0000")

    for starting in range(MAX_RETRY + 1):  # worker after worker starts beside the retry
        lines = recover_running(study, grace_period=180)
        if starting == 0:
            assert "trial(s) 0 were left running by a worker of this machine that is gone" in lines[0]
            taken = study.ask()  # the retry, taken by another worker: RUNNING, objective not yet begun
        else:
            assert lines == [f"resuming: trial(s) {taken.number} are running elsewhere or were left by a worker "
                             "that cannot be checked from here: if it is gone, its heartbeat goes stale and the "
                             "trial is failed and retried 180 s after its last beat (one that never beat: 180 s "
                             "after a worker first sees it so)"], lines
    retry = study.trials[taken.number]
    assert retry.state == TrialState.RUNNING and retry.system_attrs["retry_history"] == [0]
    assert retry.params == killed.params and retry.intermediate_values == {1: 0.4}  # the trial, resumable
    assert "worker" not in retry.user_attrs and retry.user_attrs["run_dir"] == "runs/trial-0000"
    assert [t.state for t in study.trials] == [TrialState.FAIL, TrialState.RUNNING]  # retried once, no more


def test_a_trial_that_killed_its_worker_too_often_stays_failed(tmp_path):
    """MAX_RETRY retries, then no more: a config that kills its worker must not take the study with it."""
    from study.retry import MAX_RETRY, RetryKilledTrial

    study = optuna.create_study(storage=f"sqlite:///{tmp_path / 's.db'}")
    trial = study.ask({"x": FloatDistribution(0, 1)})
    retry = RetryKilledTrial()
    for _ in range(MAX_RETRY + 1):
        study.tell(trial, state=TrialState.FAIL)
        retry(study, study.trials[trial.number])
        waiting = study.get_trials(deepcopy=False, states=(TrialState.WAITING,))
        if not waiting:
            break
        trial = study.ask()
    assert len(study.trials) == MAX_RETRY + 1 and study.trials[-1].system_attrs["retry_history"] == [0, 1]
    assert all(t.state == TrialState.FAIL for t in study.trials)


def test_a_retry_measures_its_constraint_again():
    """Optuna keeps a constraint once set: the retry must not carry its predecessor's (its costs are measured
    again before it trains)."""
    from study.retry import RetryKilledTrial

    study = optuna.create_study(directions=["maximize", "minimize"])
    trial = study.ask({"x": FloatDistribution(0, 1)})
    trial.set_constraint("latency", 2.0)
    study.tell(trial, state=TrialState.FAIL)
    RetryKilledTrial()(study, study.trials[0])
    retry = study.trials[1]
    assert retry.system_attrs["retry_history"] == [0] and not retry.constraints


def test_a_retried_trial_counts_once_towards_the_study_and_its_progress(tmp_path, capsys):
    """A killed trial and its retry are one trial of ``n_trials``: the study's stop (``reached``) and each
    progress line ("N/M done", the ETA) count the retry, not the failed trial it replaced."""
    from study.retry import recover_running
    from study.storage import make_storage
    from study.workers import Progress, reached

    storage = make_storage(f"sqlite:///{tmp_path / 's.db'}", heartbeat_interval=60, grace_period=180)
    study = optuna.create_study(storage=storage, direction="maximize")
    killed = study.ask({"lr": FloatDistribution(0.01, 1.0)})
    killed.set_user_attr("worker", f"{platform.node()}:{_dead_pid()}")
    recover_running(study, grace_period=180)
    retry = study.ask()
    retry.set_user_attr("epochs_run", 2)
    study.tell(retry, 0.5)
    assert [t.state for t in study.trials] == [TrialState.FAIL, TrialState.COMPLETE]
    assert reached(study, 1) and not reached(study, 2)
    Progress(3, 1, 2)(study, study.trials[-1])
    assert "1/3 done" in capsys.readouterr().out
