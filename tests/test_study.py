"""Study: search space, pruning callback, end-to-end studies, resume, workers, faults, bad input."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from cifar.config import TrainConfig, apply_overrides
from cifar.rundir import load_checkpoint
from study.pruning import PruningCallback
from study.run import main
from study.search_space import params_of, suggest_config, trial_config
from study.show import main as show_main
from tests.conftest import make_image_folder, tiny_config

ROOT = Path(__file__).resolve().parents[1]
POSTGRES_ENV = "CIFAR_TEST_POSTGRES_URL"


@pytest.fixture
def study_env(tmp_path):
    """A tiny base config on a tiny image folder, and the paths a study writes to."""
    folder = make_image_folder(tmp_path / "imgs", n_train=60, n_test=9)
    # sgd1024 (the space's SGD) at lr 8.8 per 1024 examples: plain SGD's 0.05 at batch 16.
    cfg = tiny_config(data_dir=str(folder), cache_dir=str(tmp_path / "cache"), val_size=12, batch_size=256,
                      optimizer="sgd1024", lr=8.8)
    config = tmp_path / "base.json"
    cfg.to_json(config)
    db = tmp_path / "study.db"
    return {
        "db": db, "url": f"sqlite:///{db}", "tmp": tmp_path,
        "args": ["--storage", f"sqlite:///{db}", "--config", str(config), "--preset", "smoke",
                 "--runs-dir", str(tmp_path / "runs"),
                 "--results-dir", str(tmp_path / "results")],
    }


def load(env, name="s"):
    return optuna.load_study(study_name=name, storage=env["url"])


# ---------------------------------------------------------------- search space


FAST = TrainConfig.from_json(ROOT / "configs" / "fast.json")


@pytest.mark.parametrize("params, lr, weight_decay, bias_lr_scale", [
    # The base config's own optimizer: multiples of its own values.
    ({"optimizer": "sgd1024", "lr_scale": 2.0, "batch_size": 512, "dropout": 0.2}, 23.0, 0.0153, 64.0),
    # Another optimizer: multiples of its reference values.
    ({"optimizer": "adamw", "lr_scale": 0.5, "batch_size": 256, "dropout": 0.0}, 1e-3, 0.05, 1.0),
])
def test_suggest_config_default_space(params, lr, weight_decay, bias_lr_scale):
    cfg = suggest_config(optuna.trial.FixedTrial(params), FAST)
    assert (cfg.optimizer, cfg.batch_size, cfg.model.dropout) == \
        (params["optimizer"], params["batch_size"], params["dropout"])
    assert (cfg.lr, cfg.weight_decay, cfg.bias_lr_scale) == (pytest.approx(lr), weight_decay, bias_lr_scale)
    assert cfg.model.widths == FAST.model.widths  # not searched in the default space


def test_suggest_config_extended_space():
    params = {"optimizer": "adam", "lr_scale": 1.0, "batch_size": 256, "dropout": 0.1, "wd_scale": 2.0,
              "label_smoothing": 0.05, "lookahead_decay": 0.9, "widths": "48,96,96", "cutout": 8,
              "crop_padding": 4, "warmup_fraction": 0.3}
    cfg = suggest_config(optuna.trial.FixedTrial(params), FAST, space="extended")
    assert cfg.model.widths == (48, 96, 96) and (cfg.data.cutout, cfg.data.crop_padding) == (8, 4)
    assert (cfg.lr, cfg.weight_decay, cfg.label_smoothing, cfg.lookahead_decay, cfg.warmup_fraction) == \
        (2e-3, 0.0, 0.05, 0.9, 0.3)  # adam's reference decay is 0: 2 x 0


@pytest.mark.parametrize("space", ["default", "extended"])
def test_params_of_baseline_round_trips(space):
    assert suggest_config(optuna.trial.FixedTrial(params_of(FAST, space)), FAST, space) == FAST


def test_a_base_config_outside_the_space_is_named():
    # Plain SGD's learning rate depends on the batch size; the space searches sgd1024 instead.
    with pytest.raises(ValueError, match="outside the default search space in optimizer"):
        params_of(TrainConfig.from_json(ROOT / "configs" / "smallcnn.json"))


@pytest.mark.parametrize("sampler", ["tpe", "gp"])
def test_samplers_model_the_learning_rate(sampler):
    """Every parameter keeps one distribution, so the multivariate samplers' joint model
    (Optuna's intersection search space) holds all of them, the learning rate included."""
    from study.search_space import make_sampler

    study = optuna.create_study(sampler=make_sampler("random", 0))
    for _ in range(12):
        trial = study.ask()
        study.tell(trial, suggest_config(trial, FAST, "extended").lr)
    space = optuna.search_space.intersection_search_space(study.get_trials(deepcopy=False))
    assert {"lr_scale", "optimizer", "batch_size", "dropout", "wd_scale"} <= set(space)
    assert len({t.params["optimizer"] for t in study.trials}) > 1
    # The study's own samplers see the same space.
    assert "lr_scale" in make_sampler(sampler, 0).infer_relative_search_space(study, study.trials[-1])


# ---------------------------------------------------------------- pruning


class _AlwaysPrune(optuna.pruners.BasePruner):
    def prune(self, study, trial):
        return True


def test_pruning_callback_reports_and_raises():
    study = optuna.create_study(direction="maximize", pruner=_AlwaysPrune())
    trial = study.ask()
    with pytest.raises(optuna.TrialPruned, match="after epoch 3"):
        PruningCallback(trial).on_epoch_end(3, {"val_acc": 0.5})
    assert trial.storage.get_trial(trial._trial_id).intermediate_values == {3: 0.5}


def test_pruning_callback_never_prunes_after_the_last_epoch():
    study = optuna.create_study(direction="maximize", pruner=_AlwaysPrune())
    trial = study.ask()
    callback = PruningCallback(trial, last_epoch=3)
    with pytest.raises(optuna.TrialPruned, match="after epoch 2"):
        callback.on_epoch_end(2, {"val_acc": 0.4})
    callback.on_epoch_end(3, {"val_acc": 0.5})  # reported, not pruned: the budget is spent
    assert trial.storage.get_trial(trial._trial_id).intermediate_values == {2: 0.4, 3: 0.5}


def test_pruning_callback_lets_good_trials_go_on():
    study = optuna.create_study(direction="maximize", pruner=optuna.pruners.NopPruner())
    trial = study.ask()
    PruningCallback(trial).on_epoch_end(1, {"val_acc": 0.5})  # no exception


# ---------------------------------------------------------------- end to end


def test_study_end_to_end_then_resume(study_env, capsys):
    args = study_env["args"] + ["--study-name", "s", "--target-epochs", "4", "--pruner", "median",
                                "--sampler", "random"]
    assert main(args + ["--n-trials", "8"]) == 0
    out = capsys.readouterr().out
    study = load(study_env)
    states = [t.state for t in study.trials]
    assert len(states) == 8
    assert TrialState.COMPLETE in states and TrialState.PRUNED in states
    assert study.trials[0].user_attrs.get("baseline") is True
    assert study.metric_names == ["val_acc"]
    assert study.user_attrs["budget"] == {"target_epochs": 4,
                                          "verdict": {"candidates": 2, "race_rounds": 2, "looks": [3, 4]}}
    assert all(TrainConfig.from_json(Path(t.user_attrs["run_dir"]) / "config.json").epochs == 4 for t in study.trials)
    first = study.trials[0]
    for key in ("params", "flops", "epochs_run", "train_seconds", "run_dir", "config"):
        assert key in first.user_attrs, key
    base = TrainConfig.from_dict(study.user_attrs["base_config"])
    for t in study.trials:  # the config each trial stored is the one it ran, and what its parameters make
        ran = TrainConfig.from_json(Path(t.user_attrs["run_dir"]) / "config.json")
        assert trial_config(t, base) == suggest_config(optuna.trial.FixedTrial(t.params), base) == ran
    moved = apply_overrides(base, {"data_dir": "/elsewhere"})  # read where the data lies now
    assert trial_config(first, moved).data.data_dir == "/elsewhere"
    legacy = optuna.trial.create_trial(params=first.params, distributions=first.distributions, value=0.5)
    assert trial_config(legacy, base) == trial_config(first, base)  # a trial of an older study: rebuilt
    assert Path(first.user_attrs["run_dir"], "metrics.csv").is_file()
    for t in study.trials:  # each trial's time outside its epochs, by phase: none negative, within its time
        phases = t.user_attrs["phase_seconds"]
        assert set(phases) == {"before_train", "train_setup_and_callbacks", "optuna_report_prune",
                               "curve_and_uploads"} and min(phases.values()) >= 0
        assert phases["curve_and_uploads"] > 0  # a curve was drawn and uploaded for every trial
        assert sum(phases.values()) + t.user_attrs["train_seconds"] <= t.duration.total_seconds() + 0.01
    artifacts = optuna.artifacts.get_all_artifact_meta(first, storage=study._storage)
    assert {a.filename for a in artifacts} == {"curves.png", "config.json"}
    assert "trial   7" in out and "ETA" in out and "best val_acc" in out
    assert "epoch   1/4" not in out  # a line per trial, not per epoch (unless -v)
    results = study_env["tmp"] / "results" / "s"
    best = TrainConfig.from_json(results / "best_trial_config.json")  # at the study's target
    assert (best.epochs, best.data.train_fraction) == (4, 1.0)
    # The last lines name what exists: the results folder, the best config, the report command.
    assert f"results: {results}/" in out and f"luck: {results}/best_trial_config.json" in out
    assert "what to train: the report's winner" in out
    assert "python -m reports build --storage" in out and "optuna-dashboard" in out
    assert (results / "trials.csv").read_text().count("\n") == 9

    # The same command with a larger count resumes the same study; the baseline is not re-enqueued.
    assert main(args + ["--n-trials", "10"]) == 0
    study = load(study_env)
    assert len(study.trials) == 10
    assert sum(bool(t.user_attrs.get("baseline")) for t in study.trials) == 1
    assert [s["step"] for s in study.user_attrs["sessions"]] == ["study", "study"]  # both runs' wall time
    assert all(f"{os.cpu_count()}-core " in s["machine"] for s in study.user_attrs["sessions"])  # and machine

    # Run again with its count reached, the study trains nothing more (the report step of
    # `make study` runs it first, every time).
    assert main(args + ["--n-trials", "10"]) == 0
    assert len(load(study_env).trials) == 10


def test_trials_failing_in_a_row_stop_the_study_with_their_reason(study_env, monkeypatch, capsys):
    def broken(*args, **kwargs):
        raise RuntimeError("Expected all tensors to be on the same device\nsecond line")

    monkeypatch.setattr("study.objective.train", broken)
    code = main(study_env["args"] + ["--study-name", "s", "--n-trials", "20", "--sampler", "random"])
    out, err = capsys.readouterr()
    study = load(study_env)
    # Three in a row, not the whole count of 20; each trial keeps why it failed, in one line.
    assert code == 1 and len(study.trials) == 3
    assert all(t.state == TrialState.FAIL for t in study.trials)
    assert {t.user_attrs["fail_reason"] for t in study.trials} == {
        "RuntimeError: Expected all tensors to be on the same device"}
    assert out.count("(RuntimeError: Expected all tensors to be on the same device)") == 3
    assert err.startswith("error: 3 trials in a row failed, the last with RuntimeError: Expected all tensors")
    assert "run the same command again" in err and "Traceback" not in err + out


def test_spawned_workers_whose_trials_keep_failing_stop_the_study(study_env):
    # tests/broken_train/sitecustomize.py breaks training in every process, spawned workers included.
    env = {**os.environ, "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join([str(ROOT / "tests" / "broken_train"), str(ROOT)])}
    proc = subprocess.run([sys.executable, "-m", "study", "run", *study_env["args"], "--study-name", "s",
                           "--n-trials", "30", "--workers", "2"], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 1, proc.stderr
    assert len(load(study_env).trials) <= 8  # 3 in a row per worker (and what was running), not 30
    lines = proc.stderr.strip().splitlines()
    assert sum(line.startswith("worker ") and "RuntimeError: broken on purpose" in line for line in lines) == 2
    assert lines[-1].startswith("error: in 2 of 2 workers, trials kept failing")
    assert "Traceback" not in proc.stderr


def test_show_marks_the_best_trial_and_lists_studies(study_env, capsys):
    assert main(study_env["args"] + ["--study-name", "s", "--n-trials", "4"]) == 0
    csv_path = study_env["tmp"] / "t.csv"
    capsys.readouterr()
    # No --study-name: the storage's only study.
    assert show_main(["--storage", study_env["url"], "--sort", "--csv", str(csv_path)]) == 0
    out = capsys.readouterr().out
    study = load(study_env)
    assert "metric val_acc" in out and f"* best trial: {study.best_trial.number}" in out
    rows = [line.split() for line in out.splitlines()[2:6]]
    assert rows[0][:2] == ["*", str(study.best_trial.number)]  # sorted: the best first, marked
    assert "nan" not in out.lower()  # a parameter that does not apply is blank
    assert csv_path.read_text().splitlines()[0].startswith("number,state,val_acc")
    # A second study: without a name, the storage's studies are listed.
    assert main(study_env["args"] + ["--study-name", "t", "--n-trials", "1"]) == 0
    capsys.readouterr()
    assert show_main(["--storage", study_env["url"]]) == 0
    listing = capsys.readouterr().out
    assert "several studies: choose one with --study-name" in listing and " s " in f" {listing} "


def test_four_workers_on_sqlite(study_env):
    assert main(study_env["args"] + ["--study-name", "s", "--workers", "4", "--n-trials", "8"]) == 0
    study = load(study_env)
    states = [t.state for t in study.trials]
    assert TrialState.FAIL not in states and TrialState.RUNNING not in states
    assert states.count(TrialState.COMPLETE) + states.count(TrialState.PRUNED) >= 8
    assert len({t.user_attrs["worker"] for t in study.trials}) >= 2  # the trials came from several processes


@pytest.mark.parametrize("extra, kind", [
    (["--sampler", "gp"], "GPSampler"),                    # Gaussian-process sampler
    (["--pruner", "halving"], "SuccessiveHalvingPruner"),  # successive halving
    (["--space", "extended", "--set", "widths=48,96,96"], None),  # the extended space, end to end
])
def test_other_samplers_pruners_and_spaces_run_a_study(study_env, extra, kind, monkeypatch):
    import study.workers as workers

    used = []
    real_load = workers.load_study
    monkeypatch.setattr(workers, "load_study", lambda job, i: used.append(s := real_load(job, i)) or s)
    assert main(study_env["args"] + ["--study-name", "s", "--target-epochs", "3", "--n-trials", "5", *extra]) == 0
    study = load(study_env)
    assert len(study.trials) == 5 and all(t.state in (TrialState.COMPLETE, TrialState.PRUNED) for t in study.trials)
    if kind:
        assert kind in (type(used[0].sampler).__name__, type(used[0].pruner).__name__)
    else:
        assert all({"wd_scale", "label_smoothing", "lookahead_decay", "widths", "cutout", "crop_padding",
                    "warmup_fraction"} <= t.params.keys()
                   for t in study.trials)
        assert len({t.params["widths"] for t in study.trials}) >= 2  # the space was really searched


def test_a_real_divergence_ends_as_a_pruned_trial_and_the_study_goes_on(study_env):
    # A weight decay that SGD's weights cannot survive (lr x decay >> 2: each step multiplies them by
    # about -1e6, so they overflow within a few steps): the baseline trial's loss becomes NaN, for real.
    assert main(study_env["args"] + ["--study-name", "s", "--set", "weight_decay=1e6", "--target-epochs", "6",
                                     "--n-trials", "3"]) == 0
    trials = load(study_env).trials
    assert trials[0].params["optimizer"] == "sgd1024" and trials[0].state == TrialState.PRUNED
    assert "diverged" in trials[0].user_attrs["end"] and "training loss became nan" in trials[0].user_attrs["end"]
    assert len(trials) == 3 and all(t.state.is_finished() for t in trials)  # and the study went on


def slow_study(tmp_path: Path, n_train: int, target_epochs: int) -> tuple[str, list[str]]:
    """A study "s" over enough images that its trials take a moment (for faults mid-trial): URL, arguments."""
    folder = make_image_folder(tmp_path / "imgs", n_train=n_train, n_test=9)
    cfg = tiny_config(data_dir=str(folder), cache_dir=str(tmp_path / "cache"), val_size=60, batch_size=256,
                      optimizer="sgd1024", lr=8.8)
    cfg.to_json(tmp_path / "base.json")
    url = f"sqlite:///{tmp_path / 'study.db'}"
    return url, ["--storage", url, "--config", str(tmp_path / "base.json"), "--preset", "smoke",
                 "--study-name", "s", "--target-epochs", str(target_epochs), "--pruner", "none",
                 "--runs-dir", str(tmp_path / "runs"), "--results-dir", str(tmp_path / "results")]


def test_killed_worker_trial_is_retried_and_resumes_from_its_last_checkpoint(tmp_path):
    # Enough epochs that the trial is still training when the kill lands, on a fast machine too
    # (on one, a 12-epoch trial had ended within half a second of its first checkpoint).
    epochs = 40
    url, args = slow_study(tmp_path, n_train=600, target_epochs=epochs)
    args += ["--heartbeat-interval", "1", "--grace-period", "3"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "study", "run", *args, "--n-trials", "1"], cwd=ROOT,
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    first = tmp_path / "runs" / "s" / "trial-0000"
    deadline = time.time() + 120
    try:
        while time.time() < deadline and not (first / "last.pt").is_file():
            time.sleep(0.2)
        time.sleep(0.3)  # into the next epoch
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    study = optuna.load_study(study_name="s", storage=url)
    assert study.trials[0].state == TrialState.RUNNING  # nobody has noticed yet
    done = load_checkpoint(first / "last.pt")["epoch"]
    assert 1 <= done < epochs
    before = (first / "metrics.csv").read_text().splitlines()[: done + 1]
    time.sleep(4)  # past the grace period
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert main(args + ["--n-trials", "2"]) == 0
    # epochs the dead trial reported after its last.pt train again but are not reported twice
    assert not [w for w in caught if "already reported" in str(w.message)]
    trials = optuna.load_study(study_name="s", storage=url).trials
    assert trials[0].state == TrialState.FAIL
    (retried,) = [t for t in trials if t.system_attrs.get("failed_trial") == 0]
    assert retried.params == trials[0].params and retried.state == TrialState.COMPLETE
    assert retried.user_attrs["resumed_from"]["epochs_done"] == done
    rows = (Path(retried.user_attrs["run_dir"]) / "metrics.csv").read_text().splitlines()
    # The first epochs are the dead trial's own rows, timings included: carried over, not retrained.
    assert rows[: done + 1] == before and len(rows) == epochs + 1
    states = [t.state for t in trials]
    # nothing lost or doubled: the retried failure does not count towards --n-trials 2, its retry and one new trial do
    assert states.count(TrialState.COMPLETE) == 2 and len(states) == 3 and TrialState.RUNNING not in states


# ---------------------------------------------------------------- bad input


def test_existing_study_of_other_direction_is_refused(study_env, capsys):
    optuna.create_study(study_name="s", storage=study_env["url"], direction="minimize")
    before = study_env["db"].read_bytes()
    assert main(study_env["args"] + ["--study-name", "s"]) == 2
    assert "minimizes" in capsys.readouterr().err
    assert study_env["db"].read_bytes() == before


# ---------------------------------------------------------------- PostgreSQL


@pytest.mark.skipif(not os.environ.get(POSTGRES_ENV), reason=f"{POSTGRES_ENV} is not set")
def test_two_workers_on_postgresql(study_env):
    url = os.environ[POSTGRES_ENV]
    name = f"pg-{os.getpid()}-{int(time.time())}"
    args = [a if a != study_env["url"] else url for a in study_env["args"]]
    args += ["--artifact-dir", str(study_env["tmp"] / "artifacts")]  # not the repository's results/
    try:
        assert main(args + ["--study-name", name, "--workers", "2", "--n-trials", "4"]) == 0
        study = optuna.load_study(study_name=name, storage=url)
        states = [t.state for t in study.trials]
        assert TrialState.FAIL not in states
        assert states.count(TrialState.COMPLETE) + states.count(TrialState.PRUNED) >= 4
        assert json.dumps(study.user_attrs["budget"])
    finally:
        optuna.delete_study(study_name=name, storage=url)


def test_ctrl_c_stops_cleanly_and_the_study_resumes(tmp_path):
    # Enough epochs that the trial outlasts the polling below, on a fast machine too.
    url, args = slow_study(tmp_path, n_train=600, target_epochs=30)
    study_env = {"url": url}
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    # A shell that starts jobs in the background (nohup ... &) ignores SIGINT in them, and
    # Python then never raises KeyboardInterrupt: give the study the default, as a terminal would.
    proc = subprocess.Popen([sys.executable, "-m", "study", "run", *args, "--n-trials", "1"], cwd=ROOT,
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.time() + 120
    while time.time() < deadline:
        time.sleep(0.5)
        try:
            trials = load(study_env).trials
        except Exception:
            continue
        if trials and trials[0].intermediate_values:
            break
    proc.send_signal(signal.SIGINT)
    try:
        _, err = proc.communicate(timeout=60)
    finally:
        proc.kill()  # never left running, whatever happened
    assert proc.returncode == 130 and "run the same command again" in err and "Traceback" not in err
    assert load(study_env).trials[0].state == TrialState.FAIL  # not left RUNNING
    # The same command resumes the study at its target.
    assert main(args + ["--n-trials", "2"]) == 0
    assert load(study_env).trials[1].state == TrialState.COMPLETE


def test_workers_share_the_gpus_round_robin(monkeypatch):
    import study.workers as workers

    chosen = []
    monkeypatch.setattr(workers.torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(workers.torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(workers.torch.cuda, "set_device", chosen.append)
    monkeypatch.setattr(workers, "load_study", lambda job, index: None)
    monkeypatch.setattr(workers, "make_objective", lambda job, raw=None: None)
    monkeypatch.setattr(workers, "optimize", lambda study, objective, job: None)
    job = workers.Job(storage="sqlite://", study_name="s", base=TrainConfig(), space="default", sampler="tpe",
                      pruner="none", seed=0, n_trials=1, timeout=None, threads=1, heartbeat_interval=30,
                      grace_period=120, runs_root="runs", artifact_dir="a", workers=4)
    for index in range(4):
        workers.worker(job, index)
    assert chosen == [0, 1, 0, 1]


def test_a_worker_whose_running_trial_was_failed_by_a_heartbeat_check_goes_on(tmp_path, capsys):
    """A live worker's trial failed by another worker (its beat came late on a busy machine) and retried:
    Optuna's tell then raises "Cannot tell a FAIL trial"; the worker says so in one line and goes on."""
    from optuna.storages import RetryHeartbeatStaleTrialCallback

    import study.workers as workers

    study = optuna.create_study(storage=f"sqlite:///{tmp_path / 's.db'}", study_name="s", direction="maximize")

    def objective(trial):
        if trial.number == 0:  # what fail_stale_trials does to a trial whose heartbeat is stale
            study._storage.set_trial_state_values(trial._trial_id, TrialState.FAIL)
            RetryHeartbeatStaleTrialCallback(max_retry=2)(study, study._storage.get_trial(trial._trial_id))
        return trial.suggest_float("x", 0.0, 1.0)

    job = workers.Job(storage="sqlite://", study_name="s", base=TrainConfig(epochs=1), space="default", sampler="tpe",
                      pruner="none", seed=0, n_trials=3, timeout=None, threads=1, heartbeat_interval=30,
                      grace_period=120, runs_root="runs", artifact_dir="a", workers=1)
    workers.optimize(study, objective, job)
    out = capsys.readouterr().out
    assert out.count("failed by another worker's heartbeat check") == 1
    states = [t.state for t in study.trials]
    assert states[0] == TrialState.FAIL and states[1:].count(TrialState.COMPLETE) == 3  # the retry among them
    assert study.trials[1].system_attrs["retry_history"] == [0]


@pytest.mark.parametrize("measured, target, rung", [
    (1, 4, 1),      # a measured rung is the first rung
    (3, 4, 3),
    (None, 4, 2),   # none measured: a pruner asked for by hand starts at half the target
    (None, 10, 5),
])
def test_the_pruners_never_stop_a_trial_before_the_first_rung(measured, target, rung, monkeypatch):
    import random

    from study import pruning

    monkeypatch.setattr(pruning, "measured_first_rung", lambda epochs: (measured, "a test's"))
    assert pruning.first_rung(target) == rung
    rng = random.Random(0)
    for name in ("hyperband", "halving", "median"):
        study = optuna.create_study(direction="maximize", pruner=pruning.make_pruner(name, target))
        stopped_at = []
        for _ in range(40):
            trial, quality = study.ask(), rng.random()
            for epoch in range(1, target + 1):
                trial.report(quality + 0.1 * rng.random(), epoch)
                if epoch < target and trial.should_prune():
                    stopped_at.append(epoch)
                    study.tell(trial, state=optuna.trial.TrialState.PRUNED)
                    break
            else:
                study.tell(trial, quality)
        assert stopped_at and min(stopped_at) == rung, name  # it prunes, and from the first rung on


def test_a_resumed_study_keeps_its_pruner(study_env):
    assert main(study_env["args"] + ["--study-name", "s", "--n-trials", "1", "--pruner", "median"]) == 0
    assert main(study_env["args"] + ["--study-name", "s", "--n-trials", "2"]) == 0
    study = load(study_env)
    assert study.user_attrs["pruner"] == "median" and len(study.trials) == 2


def test_a_commands_minutes_are_on_record_while_it_runs(monkeypatch):
    """The session clock updates one entry in place while the command runs, so a command killed
    mid-way (a session that ends) still counts, up to its last tick."""
    import time as _time

    from study import trials

    monkeypatch.setattr(trials, "CLOCK_SECONDS", 0.05)
    study = optuna.create_study(direction="maximize")
    started = _time.time() - 120  # two minutes in already
    with trials.session_clock(study, "study", started):
        _time.sleep(0.3)
        running = study.user_attrs["sessions"]
        assert len(running) == 1 and running[0]["minutes"] >= 2.0  # on record before the command ends
    trials.record_session(study, "report", _time.time())
    sessions = study.user_attrs["sessions"]
    assert [s["step"] for s in sessions] == ["study", "report"]
    assert trials.job_minutes(study)["study"] >= 2.0


def test_a_resumed_study_retries_at_once_a_trial_whose_worker_here_is_gone(study_env, capsys):  # noqa: F811
    """A trial left RUNNING by a dead process of this machine is failed and retried when the study is
    resumed, without waiting for its heartbeat; one left by another machine waits, and the line says so."""
    import platform
    import subprocess
    import sys

    assert main(study_env["args"] + ["--study-name", "s", "--n-trials", "1", "--pruner", "none"]) == 0
    study = load(study_env)
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True, check=True)
    dead, elsewhere = study.ask(), study.ask()  # two trials left RUNNING
    dead.set_user_attr("worker", f"{platform.node()}:{int(gone.stdout)}")
    elsewhere.set_user_attr("worker", "another-machine:12345")
    capsys.readouterr()
    assert main(study_env["args"] + ["--study-name", "s", "--n-trials", "3", "--pruner", "none"]) == 0
    out = capsys.readouterr().out
    assert f"trial(s) {dead.number} were left running by a worker of this machine that is gone" in out
    assert f"trial(s) {elsewhere.number} are running elsewhere" in out and "120 s after its last beat" in out
    trials = load(study_env).get_trials(deepcopy=False)
    assert trials[dead.number].state == TrialState.FAIL
    retried = [t for t in trials if t.system_attrs.get("failed_trial") == dead.number]
    assert len(retried) == 1 and retried[0].state in (TrialState.COMPLETE, TrialState.PRUNED)
    assert trials[elsewhere.number].state == TrialState.RUNNING  # its heartbeat decides, not us


def test_a_resumed_worker_does_not_draw_the_same_start_up_points_again(tmp_path):
    """The sampler's seed moves on by the trials already finished, so a resume draws new random points."""
    from dataclasses import replace

    import study.workers as workers

    url = f"sqlite:///{tmp_path / 's.db'}"
    optuna.create_study(storage=url, study_name="s", direction="maximize")
    job = workers.Job(storage=url, study_name="s", base=TrainConfig(epochs=1), space="default", sampler="random",
                      pruner="none", seed=0, n_trials=4, timeout=None, threads=1, heartbeat_interval=30,
                      grace_period=120, runs_root="runs", artifact_dir="a", workers=1)

    def draws(n: int) -> list[float]:
        study = workers.load_study(job, 0)
        out = []
        for _ in range(n):
            trial = study.ask()
            out.append(trial.suggest_float("x", 0, 1))
            study.tell(trial, 0.5)
        return out

    first = draws(2)
    assert draws(2) != first  # the same command again (a resume): other points
    fresh = tmp_path / "t.db"
    optuna.create_study(storage=f"sqlite:///{fresh}", study_name="s", direction="maximize")
    job = replace(job, storage=f"sqlite:///{fresh}")
    assert draws(2) == first  # a new study with the same seed: the same points (reproducible)
