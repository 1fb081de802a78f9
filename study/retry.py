"""A trial whose worker died, retried: the heartbeat's retry callback, and what a resumed study finds.

A worker killed mid-trial leaves a RUNNING trial. The next trial start of any worker fails it once its
heartbeat is older than the grace period, and ``RetryKilledTrial`` enqueues it again with its
parameters and reported epochs (study/objective.py resumes it from its predecessor's last.pt). A study
resumed on the machine whose worker died need not wait that long: ``recover_running`` retries at once
the trials whose process is gone.

Usage:
    storage = RDBStorage(url, heartbeat_interval=60, grace_period=180,
                         heartbeat_stale_trial_callback=RetryKilledTrial())
    for line in recover_running(study, grace_period=180): print(line)
"""

from __future__ import annotations

import copy
import os
import platform
import warnings

import optuna
from optuna.storages import RetryHeartbeatStaleTrialCallback
from optuna.trial import TrialState

MAX_RETRY = 2  # a trial that killed its worker three times stays failed: its config may be what kills it
PROCESS_ATTRS = ("worker",)  # user attributes that name the process that ran a trial, not the trial


class RetryKilledTrial(RetryHeartbeatStaleTrialCallback):
    """Optuna's retry (the same parameters, the reported epochs inherited) without the user attributes
    that name the dead process: a retry that carried its predecessor's ``worker`` looked, between its
    start and its objective's first write, like a trial of a dead process, and a worker starting then
    failed it again (``recover_running``) until its retries ran out: the trial was lost (bench/load.py,
    16 workers)."""

    def __init__(self, max_retry: int = MAX_RETRY):
        with warnings.catch_warnings():  # experimental in Optuna since 2.8; what the studies rely on
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            super().__init__(max_retry=max_retry, inherit_intermediate_values=True)

    def __call__(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        trial = copy.copy(trial)
        trial.user_attrs = {k: v for k, v in trial.user_attrs.items() if k not in PROCESS_ATTRS}
        # its constraints are measured again with its costs (Optuna keeps a value once set)
        trial.system_attrs = {k: v for k, v in trial.system_attrs.items() if not k.startswith("constraints:")}
        super().__call__(study, trial)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: alive
        return True
    return True


def recover_running(study: optuna.Study, grace_period: int) -> list[str]:
    """What a resumed study finds: trials left RUNNING. One whose worker ran on this machine and whose
    process is gone is failed and retried at once, with its parameters and reported epochs (as the
    heartbeat would after ``grace_period``); any other waits for the heartbeat. Lines to print."""
    running = study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
    dead, waiting = [], []
    for t in running:
        host, _, pid = str(t.user_attrs.get("worker", "")).rpartition(":")
        if host == platform.node() and pid.isdigit() and not _alive(int(pid)):
            dead.append(t)
        else:
            waiting.append(t)
    retry = RetryKilledTrial()
    for t in list(dead):
        try:
            study._storage.set_trial_state_values(t._trial_id, TrialState.FAIL)
        except optuna.exceptions.UpdateFinishedTrialError:  # another worker starting beside us took it
            dead.remove(t)
            continue
        retry(study, study._storage.get_trial(t._trial_id))
    lines = []
    if dead:
        lines.append(f"resuming: trial(s) {', '.join(str(t.number) for t in dead)} were left running by a worker "
                     "of this machine that is gone: failed and retried now, from their last checkpoint")
    if waiting:
        lines.append(f"resuming: trial(s) {', '.join(str(t.number) for t in waiting)} are running elsewhere or were "
                     f"left by a worker that cannot be checked from here: if it is gone, its heartbeat goes stale "
                     f"and the trial is failed and retried {grace_period} s after its last beat (one that never beat: "
                     f"{grace_period} s after a worker first sees it so)")
    return lines
