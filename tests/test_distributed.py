"""Distributed training and distributed study trials: 2 gloo processes on the CPU, via torchrun."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from cifar.config import TrainConfig
from cifar.pipeline import ShardSampler
from tests.conftest import make_image_folder, tiny_config

ROOT = Path(__file__).resolve().parents[1]


def torchrun(*args: str, timeout: int = 300) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", *args]
    return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=timeout, env=env)


@pytest.fixture(scope="module")
def ddp_config(tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("ddp")
    folder = make_image_folder(tmp / "imgs", n_train=120, n_test=12)
    cfg = tiny_config(data_dir=str(folder), cache_dir=str(tmp / "cache"), val_size=30, batch_size=64,
                      epochs=4, lr=0.05, eval_batch_size=8)
    path = tmp / "tiny.json"
    cfg.to_json(path)
    return path


def read_csv(path: Path) -> list[dict[str, str]]:
    with path.open() as f:
        return list(csv.DictReader(f))


def test_shards_partition_evaluation_and_equalise_training():
    shards = [list(ShardSampler(11, r, 3, None)) for r in range(3)]
    assert sorted(i for s in shards for i in s) == list(range(11))
    import torch

    train = [list(ShardSampler(11, r, 3, torch.Generator().manual_seed(5))) for r in range(3)]
    assert {len(s) for s in train} == {3}                      # same steps on every rank
    assert len({i for s in train for i in s}) == 9            # disjoint shards of one permutation
    assert train == [list(ShardSampler(11, r, 3, torch.Generator().manual_seed(5))) for r in range(3)]


def test_ddp_training_writes_what_one_process_writes_and_learns(ddp_config, tmp_path):
    single, ddp = tmp_path / "single", tmp_path / "ddp"
    r = subprocess.run([sys.executable, "-m", "cifar.train", "--config", str(ddp_config), "--out", str(single)],
                       cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    r = torchrun("-m", "cifar.train", "--config", str(ddp_config), "--out", str(ddp))
    assert r.returncode == 0, r.stderr[-3000:]
    assert r.stdout.count("completed: best val_acc") == 1        # rank 0 alone prints
    assert sorted(p.name for p in ddp.iterdir()) == sorted(p.name for p in single.iterdir())
    rows_single, rows_ddp = read_csv(single / "metrics.csv"), read_csv(ddp / "metrics.csv")
    assert list(rows_ddp[0]) == list(rows_single[0]) and len(rows_ddp) == len(rows_single) == 4
    assert float(rows_ddp[-1]["train_loss"]) < float(rows_ddp[0]["train_loss"])
    # Validation covers the whole split: accuracies are multiples of 1/30, not of 1/15.
    assert all(abs(float(r["val_acc"]) * 30 - round(float(r["val_acc"]) * 30)) < 1e-6 for r in rows_ddp)
    results = json.loads((ddp / "results.json").read_text())
    reference = json.loads((single / "results.json").read_text())
    assert results["status"] == "completed" and list(results) == list(reference)
    # Learns like one process does (3 classes: chance is 1/3).
    assert results["best_val_acc"] >= max(0.6, reference["best_val_acc"] - 0.2), (results, reference)
    info = json.loads((ddp / "config.json").read_text())
    assert info["provenance"]["processes"] == 2
    assert TrainConfig.from_json(ddp / "config.json") == TrainConfig.from_json(single / "config.json")


def test_ddp_needs_an_out_dir_and_a_divisible_batch(ddp_config, tmp_path):
    r = torchrun("-m", "cifar.train", "--config", str(ddp_config))
    assert r.returncode != 0 and "name the run directory with --out" in r.stderr
    r = torchrun("-m", "cifar.train", "--config", str(ddp_config), "--batch_size", "63", "--out", str(tmp_path / "x"))
    assert r.returncode != 0 and "does not split over 2 processes" in r.stderr


# The study's search space has sgd1024 and batches of 256 to 1024 (the tiny config: plain SGD, 64).
IN_SPACE = ("--set", "optimizer=sgd1024", "--set", "lr=8.8", "--set", "batch_size=256")


def test_ddp_study_trials_prune_on_every_rank(ddp_config, tmp_path):
    db = tmp_path / "s.db"
    r = torchrun("-m", "study", "run", "--storage", f"sqlite:///{db}", "--study-name", "d", "--config",
                 str(ddp_config), "--preset", "smoke", "--target-epochs", "3", *IN_SPACE, "--n-trials", "6",
                 "--pruner", "hyperband",
                 "--runs-dir", str(tmp_path / "runs"), "--results-dir", str(tmp_path / "results"))
    assert r.returncode == 0, r.stderr[-3000:]
    assert "x 2 processes (DDP)" in r.stdout and "done after" in r.stdout
    study = optuna.load_study(study_name="d", storage=f"sqlite:///{db}")
    states = [t.state for t in study.trials]
    assert len(states) == 6 and TrialState.PRUNED in states and TrialState.COMPLETE in states
    assert set(states) <= {TrialState.COMPLETE, TrialState.PRUNED}
    complete = [t for t in study.trials if t.state == TrialState.COMPLETE]
    assert all(t.user_attrs["epochs_run"] == 3 for t in complete)
    assert (tmp_path / "results" / "d" / "best_trial_config.json").is_file()
    # A second run resumes the same study.
    r = torchrun("-m", "study", "run", "--storage", f"sqlite:///{db}", "--study-name", "d", "--config",
                 str(ddp_config), "--preset", "smoke", "--target-epochs", "3", *IN_SPACE, "--n-trials", "7",
                 "--runs-dir", str(tmp_path / "runs"), "--results-dir", str(tmp_path / "results"))
    assert r.returncode == 0, r.stderr[-3000:]
    assert len(optuna.load_study(study_name="d", storage=f"sqlite:///{db}").trials) == 7


def test_ddp_study_refuses_several_workers(ddp_config, tmp_path):
    r = torchrun("-m", "study", "run", "--storage", f"sqlite:///{tmp_path / 's.db'}", "--config", str(ddp_config),
                 "--preset", "smoke", *IN_SPACE, "--workers", "2")
    assert r.returncode != 0 and "--workers must be 1 under torchrun" in r.stderr
