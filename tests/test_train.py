"""Training: schedules, optimizers, the loop, checkpoints, resume, determinism, divergence, CLI."""

from __future__ import annotations

import csv
import json
import math
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from cifar.callbacks import StopTraining
from cifar.config import OPTIMIZERS, SCHEDULES, DataConfig, ModelConfig, apply_overrides
from cifar.loop import predict
from cifar.model import SmallCNN
from cifar.optim import LrSchedule, build_optimizer
from cifar.pipeline import Pipeline
from cifar.rundir import load_checkpoint, model_from_checkpoint
from cifar.runtime import resolve_amp
from cifar.train import train
from tests.conftest import make_image_folder, tiny_config

ROOT = Path(__file__).resolve().parents[1]

TIMING = {"epoch_seconds", "elapsed_seconds", "images_per_s"}


def read_rows(path):
    with open(path) as f:
        return [{k: v for k, v in row.items() if k not in TIMING} for row in csv.DictReader(f)]


@pytest.mark.parametrize("kind, step, expected", [
    ("constant", 57, 1.0),     # flat
    ("step", 49, 1.0),         # before the first drop
    ("step", 50, 0.1),         # half way
    ("step", 75, 0.01),        # three quarters
    ("onecycle", 0, 0.1),      # first of 10 warmup steps
    ("onecycle", 9, 1.0),      # peak at the end of warmup
    ("onecycle", 55, 0.5),     # half way down the linear decay
    ("cosine", 55, 0.5),       # half way down the cosine
    ("cosine", 100, 0.0),      # the end
])
def test_lr_schedule(kind, step, expected):
    assert LrSchedule(kind, total_steps=100, warmup_steps=10)(step) == pytest.approx(expected, abs=1e-9)


@pytest.mark.parametrize("name", OPTIMIZERS)
def test_optimizers_decay_weights_only(name):
    model = SmallCNN(tiny_config().model)
    opt = build_optimizer(tiny_config(optimizer=name, weight_decay=0.01), model)
    decayed = {id(p) for g in opt.param_groups if g["weight_decay"] for p in g["params"]}
    # Muon rescales its filters to a fixed norm every step instead of decaying them.
    normed = {id(p) for g in opt.param_groups if g.get("muon") for p in g["params"]}
    assert (normed != set()) == (name == "muon") and not decayed & normed
    assert decayed | normed == {id(p) for p in model.parameters() if p.ndim > 1}


def test_loop_overfits_one_tiny_batch(tiny_data, tmp_path):
    from cifar.data import Split
    one = Split(tiny_data.train.x[:16], tiny_data.train.y[:16])
    data = type(tiny_data)(one, one, one, tiny_data.classes, tiny_data.mean, tiny_data.std, "one batch")
    cfg = tiny_config(epochs=60, lr=0.01, optimizer="adam", schedule="constant", label_smoothing=0.0,
                      data=DataConfig(crop_padding=0, flip=False))
    result = train(cfg, data, tmp_path / "run")
    rows = read_rows(tmp_path / "run" / "metrics.csv")
    assert float(rows[-1]["train_acc"]) == 1.0 and float(rows[-1]["train_loss"]) < 0.05
    assert result.best_val_acc == 1.0


@pytest.mark.parametrize("schedule", SCHEDULES)
def test_training_learns_the_synthetic_task(tiny_data, tmp_path, schedule):
    result = train(tiny_config(epochs=4, schedule=schedule), tiny_data, tmp_path / "run")
    assert result.status == "completed" and result.epochs_run == 4
    assert result.best_val_acc > 0.6  # chance is 1/3


def test_run_directory_contents(tiny_data, tmp_path):
    run = tmp_path / "run"
    result = train(tiny_config(tensorboard=True), tiny_data, run)
    for name in ("config.json", "metrics.csv", "last.pt", "best.pt", "results.json"):
        assert (run / name).is_file(), name
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run / "tensorboard"))
    events.Reload()
    logged = [e.value for e in events.Scalars("val_acc")]
    assert logged == pytest.approx([float(r["val_acc"]) for r in read_rows(run / "metrics.csv")])
    meta = json.loads((run / "config.json").read_text())
    assert meta["config"]["lr"] == 0.05 and meta["provenance"]["torch"] == torch.__version__
    assert meta["provenance"]["device_name"]  # the CPU's model is named, not left empty
    head = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()
    assert meta["provenance"]["git_commit"] == (head or None)  # the code this process loaded
    assert meta["provenance"]["code_changed_since_commit"] in ((True, False) if head else (None,))
    assert json.loads((run / "results.json").read_text())["best_val_acc"] == result.best_val_acc
    header = (run / "metrics.csv").read_text().splitlines()[0].split(",")
    assert header[:6] == ["epoch", "train_loss", "train_acc", "val_loss", "val_acc", "lr"]


FAULTS_OF_REUSE = """
import resource, sys, torch
from cifar.runtime import keep_freed_memory
print(keep_freed_memory(torch.device("cpu")))
torch.ones(64 * 2**20 // 4).sum()  # a first block of 64 MB: its pages are faulted in either way
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(40):  # freed and allocated again, as a training step's activations are
    torch.ones(64 * 2**20 // 4).sum()
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc is Linux's")
def test_kept_freed_memory_is_reused_without_page_faults():
    """glibc as it is maps a freed 64 MB block afresh each time (16,384 page faults of 4 KB);
    keep_freed_memory reuses the heap's, so 40 reallocations fault a small fraction of that. (Kept,
    the heap still grows now and then: 32K-115K faults in all, measured over 20 reallocations and
    over 40 alike, so 40 keep that apart from glibc's 16,384 per reallocation.)"""
    faults = {}
    for mode in ("system", "keep"):
        out = subprocess.run([sys.executable, "-c", FAULTS_OF_REUSE], capture_output=True, text=True, check=True,
                             env={**os.environ, "CIFAR_MALLOC": mode}).stdout.split()
        faults[mode] = int(out[-1])
        assert out[0].startswith("system" if mode == "system" else "glibc")
    assert faults["system"] > 40 * 16_384 * 0.9  # every reallocation faulted its pages in again
    assert faults["keep"] < faults["system"] / 4


def test_checkpoint_round_trip_gives_identical_predictions(tiny_data, tmp_path):
    run = tmp_path / "run"
    train(tiny_config(epochs=1), tiny_data, run)
    ckpt = load_checkpoint(run / "last.pt")
    assert ckpt["format_version"] == 1 and ckpt["epoch"] == 1
    model, cfg = model_from_checkpoint(ckpt)
    again, _ = model_from_checkpoint(load_checkpoint(run / "last.pt"))
    batches = Pipeline(tiny_data.test, cfg, tiny_data.mean, tiny_data.std, torch.device("cpu"), train=False)
    assert torch.equal(predict(model, batches)[0], predict(again, batches)[0])
    # Nothing but plain tensors and containers: weights_only loading works.
    torch.load(run / "best.pt", weights_only=True)


def test_same_seed_same_metrics_other_seed_differs(tiny_data, tmp_path):
    for name, seed in (("a", 1), ("b", 1), ("c", 2)):
        train(tiny_config(seed=seed, dropout=0.2), tiny_data, tmp_path / name)
    a, b, c = (read_rows(tmp_path / n / "metrics.csv") for n in "abc")
    assert a == b and a != c


class _Interrupt:
    def on_epoch_end(self, epoch, metrics):
        if epoch == 2:
            raise KeyboardInterrupt


def test_resume_matches_uninterrupted_run(tiny_data, tmp_path):
    cfg = tiny_config(epochs=4, model=ModelConfig(
        widths=(8, 16), depth=1, stem_width=0, dropout=0.3, num_classes=3))
    train(cfg, tiny_data, tmp_path / "full")
    with pytest.raises(KeyboardInterrupt):
        train(cfg, tiny_data, tmp_path / "cut", callbacks=[_Interrupt()])
    assert len(read_rows(tmp_path / "cut" / "metrics.csv")) == 2
    result = train(cfg, tiny_data, tmp_path / "cut", resume=True)
    assert result.epochs_run == 4
    assert read_rows(tmp_path / "cut" / "metrics.csv") == read_rows(tmp_path / "full" / "metrics.csv")


def test_sigkill_mid_epoch_then_resume_matches_an_uninterrupted_run(tmp_path):
    """A real process killed at an arbitrary moment inside an epoch (not at a callback)."""
    folder = make_image_folder(tmp_path / "imgs", n_train=600, n_test=9)
    cfg = tiny_config(data_dir=str(folder), cache_dir=str(tmp_path / "cache"), val_size=60, batch_size=16,
                      epochs=6, dropout=0.2)
    cfg.to_json(tmp_path / "cfg.json")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}

    def cli(*args):
        return subprocess.Popen([sys.executable, "-m", "cifar.train", *args], cwd=ROOT, env=env,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    assert cli("--config", str(tmp_path / "cfg.json"), "--out", str(tmp_path / "full")).wait() == 0
    proc = cli("--config", str(tmp_path / "cfg.json"), "--out", str(tmp_path / "cut"))
    deadline = time.time() + 120
    try:
        while time.time() < deadline and not (tmp_path / "cut" / "last.pt").is_file():
            time.sleep(0.05)
        # After epoch 1's checkpoint, somewhere inside epoch 2 (an epoch takes about a second here).
        time.sleep(random.Random(0).uniform(0.1, 0.4))
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    done = load_checkpoint(tmp_path / "cut" / "last.pt")["epoch"]
    assert 1 <= done < 6 and not (tmp_path / "cut" / "results.json").exists()
    assert cli("--resume", str(tmp_path / "cut")).wait() == 0
    assert read_rows(tmp_path / "cut" / "metrics.csv") == read_rows(tmp_path / "full" / "metrics.csv")


def test_kills_while_writing_checkpoints_never_leave_a_torn_file(tiny_data, tmp_path):
    """20 kills of a training process that writes checkpoints every epoch, each at the moment a
    checkpoint's temporary file appears (inside a write) or, failing that, at a random moment."""
    rng = random.Random(1)
    cfg = tiny_config(epochs=100000, model=ModelConfig(widths=(64, 128), depth=1, stem_width=0, num_classes=3))
    train(apply_overrides(cfg, {"epochs": 1}), tiny_data, tmp_path / "warm")  # the children start warm
    inside = 0
    for i in range(20):
        run = tmp_path / f"run{i}"
        pid = os.fork()
        if pid == 0:  # the child trains until killed
            try:
                train(cfg, tiny_data, run, checkpoint_seconds=0)
            finally:
                os._exit(0)
        deadline = time.time() + (rng.uniform(0.3, 1.5) if i % 4 == 3 else 5.0)
        while time.time() < deadline and not (run.is_dir() and any(n.startswith(".") for n in os.listdir(run))):
            pass
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        inside += any(n.startswith(".") and ".tmp" in n for n in os.listdir(run)) if run.is_dir() else 0
        for name in ("last.pt", "best.pt"):
            if (run / name).exists():
                model_from_checkpoint(load_checkpoint(run / name))  # raises on a torn or foreign file
    assert inside >= 10, f"only {inside} of 20 kills landed inside a write: the test did not test it"


def test_checkpoints_at_an_interval_hold_what_every_epoch_writing_holds(tiny_data, tmp_path, monkeypatch):
    """An interval longer than the run: last.pt is written after the first epoch and at the end only,
    and both files end up as a run writing them every epoch leaves them (the best epoch's weights)."""
    import cifar.callbacks

    written = []
    real = cifar.callbacks.save_checkpoint
    monkeypatch.setattr(cifar.callbacks, "save_checkpoint",
                        lambda path, state: (written.append((path.name, state["epoch"])), real(path, state)))
    cfg = tiny_config(epochs=4, lr=0.01, seed=1)  # val_acc improves at epochs 1-3, not at 4
    train(cfg, tiny_data, tmp_path / "every", checkpoint_seconds=0)
    every = list(written)
    written.clear()
    train(cfg, tiny_data, tmp_path / "sparse", checkpoint_seconds=3600)
    assert [e for name, e in every if name == "last.pt"] == [1, 2, 3, 4]
    assert [e for name, e in written if name == "last.pt"] == [1, 4]
    for name in ("last.pt", "best.pt"):
        a, b = (load_checkpoint(tmp_path / run / name) for run in ("every", "sparse"))
        assert a["epoch"] == b["epoch"] and a["model"].keys() == b["model"].keys()
        assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
    best_epochs = [e for name, e in every if name == "best.pt"]
    # best.pt's weights waited as a copy while training went on past them: the copy is what is tested
    assert len(best_epochs) >= 2 and best_epochs[-1] < 4, f"best.pt written at epochs {best_epochs}"


def test_checkpointer_after_divergence_writes_the_waiting_best_but_not_last(tmp_path):
    from cifar.callbacks import Checkpointer
    from cifar.rundir import RunDir

    weights = torch.zeros(3)
    state = lambda: {"config": {}, "model": {"w": weights}, "epoch": int(weights[0]), "metrics": [],  # noqa: E731
                     "data_stats": {}, "classes": []}
    run = RunDir(tmp_path)
    keeper = Checkpointer(run, state, every_seconds=3600)
    for epoch, acc in ((1, 0.2), (2, 0.5), (3, 0.4)):
        weights += 1  # training changes the weights in place
        keeper.on_epoch_end(epoch, {"val_acc": acc})
    weights.fill_(float("nan"))  # the diverged epoch
    keeper.finish(at_last_epoch=False)
    assert load_checkpoint(run.last)["epoch"] == 1  # not rewritten with the diverged weights
    best = load_checkpoint(run.best)
    assert best["epoch"] == 2 and torch.equal(best["model"]["w"], torch.full((3,), 2.0))


@pytest.mark.parametrize("clip", [0.0, 0.05])  # off: the norms exceed 0.05, so the bound below means something
def test_grad_clip_bounds_the_gradient_norm_at_every_step(tiny_data, tmp_path, clip):
    norms = []

    def record(optimizer, args, kwargs):
        grads = [p.grad for g in optimizer.param_groups for p in g["params"] if p.grad is not None]
        norms.append(torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads])).item())

    from torch.optim.optimizer import register_optimizer_step_pre_hook

    handle = register_optimizer_step_pre_hook(record)
    try:
        train(tiny_config(epochs=2, grad_clip=clip, lr=0.5), tiny_data, tmp_path / "run")
    finally:
        handle.remove()
    assert len(norms) == 2 * 6  # every step of both epochs
    if clip:
        assert max(norms) <= clip * (1 + 1e-4)
    else:
        assert max(norms) > 0.05


def test_resume_refuses_a_different_config(tiny_data, tmp_path):
    train(tiny_config(epochs=1), tiny_data, tmp_path / "run")
    with pytest.raises(ValueError, match="config differs"):
        train(tiny_config(epochs=1, lr=0.5), tiny_data, tmp_path / "run", resume=True)


def test_divergence_stops_cleanly_and_keeps_checkpoints(tiny_data, tmp_path):
    run = tmp_path / "run"
    train(tiny_config(epochs=1), tiny_data, run)  # creates best.pt we must not lose
    cfg = tiny_config(epochs=3, lr=1e6, optimizer="sgd", momentum=0.0, schedule="constant")
    result = train(cfg, tiny_data, tmp_path / "huge")
    assert result.status == "diverged" and "loss became" in result.message
    saved = json.loads((tmp_path / "huge" / "results.json").read_text())
    assert saved["status"] == "diverged"
    assert (run / "best.pt").is_file()


def test_early_stopping_stops(tiny_data, tmp_path):
    class Flat:
        def on_epoch_end(self, epoch, metrics):
            metrics["val_acc"] = 0.5  # seen by early stopping, which runs after user callbacks

    cfg = tiny_config(epochs=10, early_stop_patience=2)
    result = train(cfg, tiny_data, tmp_path / "run", callbacks=[Flat()])
    assert result.status == "early_stopped" and result.epochs_run == 3


def test_callback_stop_training_is_honoured(tiny_data, tmp_path):
    class StopAtOne:
        def on_epoch_end(self, epoch, metrics):
            raise StopTraining("enough")

    result = train(tiny_config(epochs=5), tiny_data, tmp_path / "run", callbacks=[StopAtOne()])
    assert (result.status, result.message, result.epochs_run) == ("early_stopped", "enough", 1)


def test_amp_resolution_on_cpu(monkeypatch):
    import cifar.runtime as runtime_module

    cpu = torch.device("cpu")
    assert resolve_amp("off", cpu) is None and resolve_amp("auto", cpu) is None
    cuda = torch.device("cuda")  # a descriptor: no GPU needed to ask what auto and explicit modes pick
    assert resolve_amp("auto", cuda) is None  # measured: autocast does not pay for these models on an H200
    assert resolve_amp("bf16", cuda) is torch.bfloat16 and resolve_amp("fp16", cuda) is torch.float16
    with pytest.raises(ValueError, match="needs CUDA"):
        resolve_amp("fp16", cpu)
    # bf16 on a CPU: only where the CPU has it natively; auto stays fp32 either way.
    monkeypatch.setattr(runtime_module, "cpu_has_native_bf16", lambda: False)
    with pytest.raises(ValueError, match="needs native bf16"):
        resolve_amp("bf16", cpu)
    monkeypatch.setattr(runtime_module, "cpu_has_native_bf16", lambda: True)
    assert resolve_amp("bf16", cpu) is torch.bfloat16 and resolve_amp("auto", cpu) is None


def test_bf16_autocast_trains_on_cpu(tiny_data, tmp_path, monkeypatch):
    import cifar.runtime as runtime_module

    monkeypatch.setattr(runtime_module, "cpu_has_native_bf16", lambda: True)  # emulated here if not native
    result = train(tiny_config(epochs=1, amp="bf16"), tiny_data, tmp_path / "run")
    assert result.status == "completed" and math.isfinite(result.best_val_acc)


@pytest.fixture
def small_disk(tmp_path):
    """A 4 MB tmpfs (root can mount one here); the test skips, saying why, where mounting is refused."""
    import subprocess

    mount = tmp_path / "small"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(mount)], capture_output=True,
                          text=True)
    if done.returncode:
        pytest.skip(f"cannot mount a small tmpfs here to fill ({done.stderr.strip()[:80]})")
    yield mount
    subprocess.run(["umount", "-l", str(mount)], check=False)


def test_a_full_disk_keeps_the_last_checkpoint_and_the_run_resumes(tiny_data, small_disk, capsys):
    """A real full file system, not an injected error: the epoch-2 checkpoint finds no space, the run
    ends with one line naming the folder, epoch 1's last.pt stays readable, and with space back the
    run resumes from it and finishes."""
    import os
    import shutil

    from cifar.rundir import DiskFull, RunDir, load_checkpoint
    from cifar.train import train
    from tests.conftest import tiny_config

    cfg = tiny_config(epochs=3)
    out = small_disk / "run"

    class FillTheDisk:  # after epoch 1's checkpoint is written, leave less room than a checkpoint takes
        def on_epoch_end(self, epoch, metrics):
            if epoch == 1:
                free = shutil.disk_usage(small_disk).free
                with open(small_disk / "filler", "wb") as f:
                    f.write(b"\0" * max(0, free - 4096))

    with pytest.raises(DiskFull, match=f"no space left to write last.pt in {out}: the previous last.pt is kept"):
        train(cfg, tiny_data, out, callbacks=[FillTheDisk()], quiet=True, checkpoint_seconds=0)
    assert load_checkpoint(RunDir(out).last)["epoch"] == 1
    assert not [p for p in os.listdir(out) if ".tmp" in p]  # the partial write is gone
    (small_disk / "filler").unlink()
    result = train(cfg, tiny_data, out, resume=True, quiet=True)
    assert result.status == "completed" and [r["epoch"] for r in RunDir(out).read_history()] == [1, 2, 3]


def test_a_full_disk_is_one_line_and_exit_1_in_the_cli(monkeypatch, capsys, tmp_path):
    import cifar.train as train_module
    from cifar.rundir import DiskFull

    def full(*args, **kwargs):
        raise DiskFull(28, f"no space left to write last.pt in {tmp_path}: the previous last.pt is kept")

    monkeypatch.setattr(train_module, "train", full)
    monkeypatch.setattr(train_module, "prepare_data", lambda *a, **k: None)
    assert train_module.main(["--out", str(tmp_path / "r")]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: no space left to write last.pt")
