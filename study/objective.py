"""The objective: an Optuna trial becomes a config, trained by ``cifar.train`` with pruning.

Each trial trains in its own run directory, reports ``val_acc`` every epoch
(pruning on it), records what it cost as user attributes, and uploads its
learning curve and config as artifacts that optuna-dashboard shows. It returns
the best validation accuracy; the test set is never read here.

Usage:
    objective = Objective(base_cfg, data, runs_root, artifact_store, space="default")
    study.optimize(objective, n_trials=30)
"""

from __future__ import annotations

import os
import platform
import shutil
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import optuna  # noqa: E402
from optuna.artifacts import upload_artifact  # noqa: E402
from optuna.trial import TrialState  # noqa: E402

from cifar.config import TrainConfig  # noqa: E402
from cifar.data import CifarData  # noqa: E402
from cifar.evaluate import plot_curves, val_accuracy  # noqa: E402
from cifar.model import model_cost  # noqa: E402
from cifar.rundir import RunDir, load_checkpoint  # noqa: E402
from cifar.train import train  # noqa: E402
from study.objectives import COSTS_ATTR, VARIANTS_ATTR, Constraint, measure_costs, tta_variants, values  # noqa: E402
from study.pruning import CURVE_ATTR, RUNG_COSTS_ATTR, PruningCallback, cost_rule  # noqa: E402
from study.search_space import CONFIG_ATTR, inference_tta, suggest_config  # noqa: E402


class Objective:
    def __init__(self, base: TrainConfig, data: CifarData, runs_root: Path, artifact_store=None,
                 space: str = "default", verbose: bool = False, objectives: tuple[str, ...] = ("val_acc",),
                 constraint: Constraint | None = None, pruner: str = "none", latency_cache: Path | None = None):
        self.base, self.data, self.runs_root = base, data, Path(runs_root)
        self.artifact_store, self.space, self.verbose = artifact_store, space, verbose
        self.objectives, self.constraint, self.pruner = objectives, constraint, pruner
        self.latency_cache = latency_cache  # an architecture's latency measured once (cifar.latency.cached_cost)

    def __call__(self, trial: optuna.Trial) -> float | tuple[float, ...]:
        try:
            return self.run(trial, trial)
        except Exception as e:
            if not isinstance(e, optuna.TrialPruned):  # Optuna keeps no reason for a failed trial: we do
                trial.set_user_attr("fail_reason", f"{type(e).__name__}: {e}".splitlines()[0][:300])
            raise

    def run(self, trial: optuna.trial.BaseTrial, uploads_to: optuna.Trial | None) -> float | tuple[float, ...]:
        """One trial. ``trial`` may be a TorchDistributedTrial that every rank of a torchrun job
        calls in step; ``uploads_to`` is the storage's trial for the artifacts (rank 0), else None."""
        entered = time.perf_counter()
        cfg = suggest_config(trial, self.base, self.space)
        trial.set_user_attr(CONFIG_ATTR, cfg.to_dict())  # what reports and summaries read (trial_config)
        run_dir = RunDir(self.runs_root / f"trial-{trial.number:04d}")
        params, flops = model_cost(cfg.model)
        trial.set_user_attr("run_dir", str(run_dir))
        trial.set_user_attr("worker", f"{platform.node()}:{os.getpid()}")  # which machine and process ran it
        trial.set_user_attr("params", params)
        trial.set_user_attr("flops", flops)
        several = len(self.objectives) > 1  # costs measured before training, as the sampler's constraint reads them
        tta = inference_tta(trial.params)  # the TTA level it predicts with (cost space), which its costs count
        costs = measure_costs(cfg, self.objectives, tta, self.latency_cache) if several else {}
        if several:
            trial.set_user_attr(COSTS_ATTR, costs)
        if self.constraint:
            trial.set_constraint(self.constraint.name, self.constraint.violation(costs))
        pareto = cost_rule(self.pruner, cfg.epochs, self.objectives[1:]) if several else None
        if several:  # a rung judges the weights being trained by their plain accuracy: at their plain cost
            by_own = pareto is not None and pareto.ranked_by == "own"  # (or, where the rule says, their own)
            rung = measure_costs(cfg, self.objectives, 0, self.latency_cache) if tta and not by_own else costs
            trial.set_user_attr(RUNG_COSTS_ATTR, {n: rung[n] for n in self.objectives[1:]})
        pruning = PruningCallback(trial, last_epoch=cfg.epochs, reports=not several, pareto=pareto,
                                  costs=rung if several else None)
        resume = self._take_over(trial, cfg, run_dir, pruning)
        start = time.perf_counter()
        try:
            result = train(cfg, self.data, run_dir.path, callbacks=[pruning], resume=resume,
                           quiet=not self.verbose)
        except optuna.TrialPruned as e:
            trial.set_user_attr("end", str(e))
            raise
        finally:
            # Time in train() minus time in Optuna's calls = training proper.
            train_call = time.perf_counter() - start
            trial.set_user_attr("train_call_seconds", round(train_call, 3))
            trial.set_user_attr("pruning_seconds", round(pruning.seconds, 3))
            recorded = time.perf_counter()
            epochs = self._record(trial, run_dir, uploads_to)
            if not resume:  # where a trial's time outside its epochs goes (bench/trial_phases.py's block)
                trial.set_user_attr("phase_seconds", {
                    "before_train": round(start - entered, 3),
                    "train_setup_and_callbacks": round(train_call - epochs - pruning.seconds, 3),
                    "optuna_report_prune": round(pruning.seconds, 3),
                    "curve_and_uploads": round(time.perf_counter() - recorded, 3)})
        trial.set_user_attr("end", f"{result.status}: {result.message}")
        if result.status == "diverged":
            # A diverged trial says something about its region of the space: keep it, pruned.
            raise optuna.TrialPruned(result.message)
        if not several:
            return result.best_val_acc
        score = result.best_val_acc
        if tta:  # scored as it will predict: its best checkpoint on validation at its TTA level
            score = val_accuracy(run_dir.path, self.data, tta, cfg.device)
            trial.set_user_attr("val_acc_plain", result.best_val_acc)
        if "tta" in trial.params:  # the same weights at the other TTA levels too: deployable models for free
            trial.set_user_attr(VARIANTS_ATTR, tta_variants(run_dir.path, self.data, cfg, self.objectives,
                                                            {0: result.best_val_acc, tta: score}, self.latency_cache))
        return values(score, costs, self.objectives)

    def _take_over(self, trial: optuna.trial.BaseTrial, cfg: TrainConfig, run_dir: RunDir,
                   pruning: PruningCallback) -> bool:
        """A trial retried after its worker died continues from its predecessor's last.pt.

        The heartbeat's retry callback re-enqueues a stale trial with the same parameters, its
        number in ``retry_history`` and its reported epochs; the predecessor's run directory is
        copied into this trial's and training resumes there (epochs after last.pt's that the
        predecessor reported train again, and are not reported again). Not under torchrun
        (TorchDistributedTrial), where the other ranks could not know; there a retried trial
        starts again.
        """
        if not isinstance(trial, optuna.Trial):
            return False
        running = trial.study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
        frozen = next((t for t in running if t.number == trial.number), None)
        if frozen:  # the retry callback copied the predecessor's reports (or its curve) into this trial
            curve = frozen.user_attrs.get(CURVE_ATTR, {})
            pruning.inherited = set(frozen.intermediate_values) | {int(e) for e in curve}
        history = frozen.system_attrs.get("retry_history", []) if frozen else []
        if not history:
            return False
        before = RunDir(self.runs_root / f"trial-{history[-1]:04d}")
        if not before.last.is_file() or before.read_config() != cfg:
            return False
        shutil.copytree(before.path, run_dir.path, dirs_exist_ok=True)
        epoch = load_checkpoint(before.last)["epoch"]
        trial.set_user_attr("resumed_from", {"trial": history[-1], "run_dir": str(before), "epochs_done": epoch})
        return True

    def _record(self, trial: optuna.trial.BaseTrial, run_dir: RunDir, uploads_to: optuna.Trial | None) -> float:
        """What the trial cost, and its curve and config as dashboard artifacts; its epochs' seconds."""
        history = run_dir.read_history() if run_dir.history.is_file() else []
        seconds = history[-1]["elapsed_seconds"] if history else 0.0
        trial.set_user_attr("epochs_run", len(history))
        trial.set_user_attr("train_seconds", round(seconds, 2))
        if self.artifact_store is None or uploads_to is None or not history:
            return seconds
        fig = plot_curves(history)
        fig.savefig(run_dir.curves, dpi=80)
        plt.close(fig)
        files = ((run_dir.curves, "image/png"), (run_dir.config, "application/json"))
        for path, mime in files:
            upload_artifact(artifact_store=self.artifact_store, file_path=str(path),
                            study_or_trial=uploads_to, mimetype=mime)
        return seconds
