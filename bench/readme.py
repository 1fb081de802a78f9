"""Render the measured blocks of the README and docs/ from the committed results files (``make readme``).

A block sits between ``<!-- results:NAME -->`` and ``<!-- /results:NAME -->`` in
README.md or a page of docs/; this script rewrites its inside from the file it names, so a figure
in a block cannot drift from its file. ``tests/test_structure.py`` checks that
every block is current.

Usage:
    python bench/readme.py          # rewrite the blocks
    python bench/readme.py --check  # exit 1 if a block is stale
"""

from __future__ import annotations

import argparse
import csv
import json
import re
import sqlite3
import sys
from datetime import datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.time_to_accuracy import ABLATIONS  # noqa: E402
from reports.stats import mean_std  # noqa: E402

REFERENCE = ROOT / "results" / "reference"  # the committed studies and reports: <kind>/<study>/


def _bench(name: str) -> dict:
    """A benchmark's committed results file, results/bench/<name>.json."""
    return json.loads((ROOT / "results" / "bench" / f"{name}.json").read_text())


def _pct(pair: list) -> str:
    mean, std = pair
    return f"{100 * mean:.2f}%" + (f" ± {100 * std:.2f}" if std is not None else " (1 seed)")


def _cpus(row: dict) -> str:
    """The machines a time-to-accuracy row was measured on."""
    return ", ".join(row.get("cpus") or ["machine not recorded"])


def time_to_accuracy() -> str:
    """The fast recipe against the baseline: accuracy, compute, time (results/bench/time_to_accuracy.json)."""
    result = _bench("time_to_accuracy")
    rows = ["| run | epochs | seeds | test acc | with TTA | training PFLOP | train min | images/s | "
            "GFLOP/s (matmul) | peak MB |", "|---|---|---|---|---|---|---|---|---|---|"]
    for r in result["summary"]:
        rows.append(f"| {r['name']} | {r['epochs']} | {len(r['seeds'])} | {_pct(r['test_acc'])} | "
                    f"{_pct(r['test_acc_tta'])} | {r['train_pflop']:.3f} | {r['train_minutes']:.1f} | "
                    f"{r['images_per_s']:.0f} | {r['train_gflops_per_s']:.0f} ({r['matmul_gflops']:.0f}) | "
                    f"{r['peak_rss_mb'] or 0:.0f} |")
    m = result["machine"]
    machines = {}
    for r in result["summary"]:
        machines.setdefault(_cpus(r), []).append(r["name"])

    def rows_of(names: list[str]) -> str:
        return "every row" if len(machines) == 1 else ", ".join(names) if len(names) < 5 else "the rest"
    by_rows = sorted(machines.items(), key=lambda kv: len(kv[1]))
    where = "; ".join(f"{cpu} for {rows_of(names)}" for cpu, names in by_rows)
    rows += ["", f"Machines: {where}; {m['threads']} threads; each row's matmul and the SmallCNN's "
             f"images/s measured before each of its runs (last run: {result['written']}, on {m['cpu']}: fp32 "
             f"matmul {m['matmul_gflops']:.0f} GFLOP/s, SmallCNN {m['baseline_images_per_s']:.0f} images/s). "
             "Targets so far:"]
    rows += [f"- {t['target']}: " + (f"{'met' if t['met'] else 'not met'} (best: {t['best']['name']})"
                                      if isinstance(t["best"], dict) else f"not measured yet ({t['best']})")
             for t in result["targets"]]
    return "\n".join(rows)


GPU_PRECISIONS = {"off": "fp32 (TF32 convolutions)", "bf16": "bf16 autocast", "fp16": "fp16 autocast, scaled"}


def gpu_time_to_accuracy() -> str:
    """The recipe's runs on a lent H200, by precision (results/bench/time_to_accuracy-cuda-<amp>.json)."""
    rows = ["| run | precision | seeds | test acc | with TTA | training PFLOP | training s, each seed |",
            "|---|---|---|---|---|---|---|"]
    written = []
    for amp, label in GPU_PRECISIONS.items():
        d = _bench(f"time_to_accuracy-cuda-{amp}")
        written.append(d["written"])
        for r in d["summary"]:
            seconds = ", ".join(f"{x['train_seconds']:.1f}" for x in d["runs"] if x["name"] == r["name"])
            rows.append(f"| {r['name']} | {label} | {len(r['seeds'])} | {_pct(r['test_acc'])} | "
                        f"{_pct(r['test_acc_tta'])} | {r['train_pflop']:.3f} | {seconds} |")
    m = d["machine"]
    rows += ["", f"Machine: one {m['gpu']} with {m['threads']} CPU threads ({m['cpu']}), measured "
             f"{min(written)[:10]}. Training seconds are the epochs' (each with its validation pass; the first "
             "epoch also warms cuDNN up), not the process start, the data's first decode or the test evaluation."]
    return "\n".join(rows)


def baseline_decision() -> str:
    """The fast recipe at 10 epochs against the SmallCNN at 14 (time_to_accuracy.json, its -cuda-off twin)."""
    cpu = {r["name"]: r for r in _bench("time_to_accuracy")["summary"]}
    gpu = {r["name"]: r for r in _bench("time_to_accuracy-cuda-off")["summary"]}
    fast, fast_gpu, small = cpu["fast-10ep"], gpu["fast-10ep"], gpu["smallcnn-14ep"]
    return (f"the fast recipe at 10 epochs reaches {_pct(fast['test_acc'])} ({_pct(fast['test_acc_tta'])} with TTA) "
            f"on the 2-core CPU and {_pct(fast_gpu['test_acc'])} ({_pct(fast_gpu['test_acc_tta'])}) on the H200, "
            f"with {fast['train_pflop']:.3f} PFLOP of training; the SmallCNN at its 14 epochs reaches "
            f"{_pct(small['test_acc'])} ({_pct(small['test_acc_tta'])}) on the H200, with "
            f"{small['train_pflop']:.3f} PFLOP ({100 * fast['train_pflop'] / small['train_pflop']:.0f}% of it for "
            "the fast recipe)")


def ninety_line() -> str:
    """What a 90%-class target costs: the wide variant's runs on the H200 (time_to_accuracy-cuda-off.json) and
    on 2 cores (time_to_accuracy.json: its run there where it has one, else an estimate at the fast recipe's
    GFLOP/s there), and a main job of 20 trials at the GPU study's measured share of a target run per trial
    plus its report's runs."""
    from study.presets import PRESETS

    cpu_bench = _bench("time_to_accuracy")
    cpu = {r["name"]: r for r in cpu_bench["summary"]}
    gpu = _bench("time_to_accuracy-cuda-off")
    wide = {r["name"]: r for r in gpu["summary"]}["fast-wide-10ep"]
    seconds = [x["train_seconds"] for x in gpu["runs"] if x["name"] == "fast-wide-10ep"]
    trials = _trials(GPU_STUDY, FINISHED)
    target = _summary(GPU_STUDY)["user_attrs"]["budget"]["target_epochs"]
    share = sum(int(t["epochs_run"]) for t in trials) / len(trials) / target
    gpu_preset = PRESETS.get("gpu")  # the report at its most: every race round, the comparison's last look
    report_runs = (gpu_preset.candidates + 1) * gpu_preset.race_rounds + 2 * gpu_preset.looks[-1]
    if "fast-wide-10ep" in cpu:
        on_cpu = cpu["fast-wide-10ep"]
        machine = next(r["machine_before_run"]["cpu"] for r in cpu_bench["runs"] if r["name"] == "fast-wide-10ep")
        run_minutes = on_cpu["train_minutes"]
        how = (f"{run_minutes:.0f} min of training per run ({on_cpu['train_gflops_per_s']:.0f} GFLOP/s, measured "
               f"on a 2-core {machine}: {_pct(on_cpu['test_acc'])}, {_pct(on_cpu['test_acc_tta'])} with TTA)")
    else:
        fast = cpu["fast-10ep"]
        run_minutes = wide["train_pflop"] * 1e6 / fast["train_gflops_per_s"] / 60
        how = (f"at the {fast['train_gflops_per_s']:.0f} GFLOP/s the fast recipe trains at there, about "
               f"{run_minutes:.0f} min per run (an estimate: the wide variant has not run on a CPU)")
    job_hours = (20 * share + report_runs) * run_minutes / 60
    return (f"the wide variant of the fast recipe at 10 epochs reaches {_pct(wide['test_acc'])} test accuracy, "
            f"{_pct(wide['test_acc_tta'])} with TTA, with {wide['train_pflop']:.2f} PFLOP of training per run: "
            f"{min(seconds):.1f}-{max(seconds):.1f} s of training on the H200; on 2 cores, {how}, so a main job of "
            f"20 trials at that target ({share:.2f} of a run each under Hyperband, as in the GPU study) and its "
            f"report's {report_runs} runs would take about {job_hours:.0f} hours there")


def allocator_line(name: str = "allocator") -> str:
    """glibc's malloc as it is against freed memory kept, interleaved rounds (results/bench/<name>.json)."""
    d = _bench(name)
    system, kept = d["arms"]["system"], d["arms"]["kept"]
    rounds = d["ratio_kept_to_system_per_round"]
    return (f"on a {d['machine']['threads']}-thread {d['machine']['cpu']}, {len(rounds)} interleaved rounds of "
            f"{d['epochs']} epochs of `{d['config']}` on {100 * d['train_fraction']:.0f}% of the split at batch "
            f"{d['batch_size']}: {system['images_per_s_mean']:.0f} training images/s with malloc as it is, "
            f"{kept['images_per_s_mean']:.0f} with freed memory kept ({d['ratio_kept_to_system']:.2f}x; per round "
            f"{min(rounds):.2f}x to {max(rounds):.2f}x); the kernel's share of CPU time "
            f"{100 * system['sys_share_mean']:.1f}% against {100 * kept['sys_share_mean']:.1f}%, "
            f"{system['minor_faults_mean'] / kept['minor_faults_mean']:.0f} times fewer page faults, peak memory "
            f"{kept['peak_rss_mb_max']:.0f} MB against {system['peak_rss_mb_max']:.0f}; "
            f"training at {kept['train_gflops_per_s']:.0f} GFLOP/s, "
            f"{100 * kept['share_of_matmul']:.0f}% of the fp32 matmul measured in the same run "
            f"({d['machine']['matmul_gflops_best']:.0f} GFLOP/s)")


def step_profile_line(name: str = "step_profile") -> str:
    """Where a training step's time goes, layer kind by kind, against the matmul (results/bench/<name>.json)."""
    d = _bench(name)
    m, shares = d["machine"], d["share_of_step"]
    setting = f"`{d['config']}`" + "".join(f" with {k}={v}" for k, v in d.get("overrides", {}).items())
    convs = [row for row in d["layers"] if row.get("forward_gflops_per_s")]
    rates = [(row[f"{p}_gflops_per_s"], row["layer"], p) for row in convs for p in ("forward", "backward")
             if row[f"{p}_gflops_per_s"] and row["share_of_step"] >= 0.05]
    slow, fast = min(rates), max(rates)
    parts = ", ".join(f"{k} {100 * v:.1f}%" for k, v in shares.items() if k != "conv")
    return (f"on a {m['threads']}-thread {m['cpu']}, {setting} at batch {d['batch_size']} ({d['rounds']} rounds of "
            f"{d['steps_per_round']} steps, the fp32 matmul measured before and between them: best "
            f"{m['matmul_gflops_best']:.0f} GFLOP/s): {d['images_per_s']:.0f} training images/s, "
            f"{d['train_gflops_per_s']:.0f} GFLOP/s, **{100 * d['share_of_matmul']:.0f}% of the matmul**; the "
            f"convolutions {100 * shares['conv']:.1f}% of the step, at {d['conv_only_gflops_per_s']:.0f} GFLOP/s "
            f"({100 * d['conv_only_share_of_matmul']:.0f}% of the matmul; the larger ones from "
            f"{slow[0]:.0f} GFLOP/s, the {slow[1].removeprefix('conv ')} {slow[2]} pass, to {fast[0]:.0f}, the "
            f"{fast[1].removeprefix('conv ')} "
            f"{fast[2]} pass), then {parts}")


def xeon_conv_estimate() -> str:
    """The Xeon's convolutions' share of its matmul, estimated from this machine's other layers
    (step_profile.json) and the Xeon's allocator benchmark at batch 1024 (allocator-b1024.json)."""
    here, xeon = _bench("step_profile"), _bench("allocator-b1024")
    rest_share = 1 - here["share_of_step"]["conv"]
    rest_s = rest_share * here["step_s"]
    kept = xeon["arms"]["kept"]
    step_s = xeon["batch_size"] / kept["images_per_s_mean"]
    share = kept["share_of_matmul"]
    bounds = (share / (1 - rest_share), share * step_s / (step_s - rest_s))
    verdict = ("short of 75% even if every other layer cost nothing" if max(bounds) < 0.75
               else "so 75% would need the other layers to cost next to nothing" if max(bounds) < 0.8
               else "so making the other layers cheaper could reach 75%")
    return (f"If the layers other than convolutions took the same share of its step as here "
            f"({100 * rest_share:.1f}%), or the same time ({rest_s:.2f} s of its {step_s:.2f} s), its "
            f"convolutions alone would run at {100 * bounds[0]:.1f}% or {100 * bounds[1]:.1f}% of its matmul: "
            f"{verdict}")


def ablation_table() -> str:
    """Each technique's measured effect: the recipe at 6 epochs (2 seeds) minus the run without it (1 seed)."""
    rows = {r["name"]: r for r in _bench("time_to_accuracy")["summary"]}
    full = rows["fast-6ep"]
    out = ["| without | test acc (seed 0) | effect of the technique | with TTA | effect with TTA |",
           "|---|---|---|---|---|"]
    for name, r in rows.items():
        if name.startswith("fast-6ep-no-"):
            out.append(f"| {name.removeprefix('fast-6ep-no-').replace('_', ' ')} | {100 * r['test_acc'][0]:.2f}% | "
                       f"{100 * (full['test_acc'][0] - r['test_acc'][0]):+.2f} | {100 * r['test_acc_tta'][0]:.2f}% | "
                       f"{100 * (full['test_acc_tta'][0] - r['test_acc_tta'][0]):+.2f} |")
    # One seed against the mean of n: the difference's standard deviation is std x sqrt(1 + 1/n).
    sd = (full["test_acc"][1] or 0) * (1 + 1 / len(full["seeds"])) ** 0.5
    out += ["", f"Effect = the full recipe at 6 epochs ({_pct(full['test_acc'])}, {_pct(full['test_acc_tta'])} "
            f"with TTA, {len(full['seeds'])} seeds) minus the run without the technique (one seed each: a "
            f"difference within about {200 * sd:.1f} points, two standard deviations of such a difference, "
            f"is noise). {len(out) - 2} of the {len(ABLATIONS)} techniques measured so far."]
    return "\n".join(out)


def muon_line() -> str:
    """Muon's runs at the open targets' budgets against the recipe's nearest runs (time_to_accuracy.json)."""
    result = _bench("time_to_accuracy")
    rows = {r["name"]: r for r in result["summary"]}
    out = []
    for name, other, target in (("fast-muon-11ep", "fast-10ep", "88.0% without TTA within 0.16 PFLOP"),
                                ("fast-wide-muon-11ep", "fast-wide-10ep", "90.5% with TTA within 0.36 PFLOP")):
        r, o = rows.get(name), rows[other]
        if r is None:
            out.append(f"{name}: not run yet")
            continue
        seeds = len(r["seeds"])
        verdict = next(t for t in result["targets"] if t["target"] == target)
        met = "met" if verdict["met"] and verdict["best"]["name"] == name else (
            "not met" if seeds >= 2 else "not decided (one seed so far)")
        out.append(f"{name} ({r['train_pflop']:.4f} PFLOP, {_cpus(r)}): "
                   f"{_pct(r['test_acc'])}, {_pct(r['test_acc_tta'])} with TTA over {seeds} "
                   f"seed{'s' * (seeds > 1)}, against {other}'s {_pct(o['test_acc'])}, {_pct(o['test_acc_tta'])} "
                   f"({o['train_pflop']:.3f} PFLOP); the target {target}: {met}")
    if same := rows.get("fast-11ep"):  # the recipe's optimizer at Muon's epochs
        out.append(f"configs/fast.json at the same 11 epochs ({_cpus(same)}): "
                   f"{_pct(same['test_acc'])}, {_pct(same['test_acc_tta'])} with TTA")
    return "; ".join(out)


def low_memory_line() -> str:
    """A whole fast-10ep run with low_memory against the same seed without (time_to_accuracy.json's runs)."""
    runs = {(r["name"], r["seed"]): r for r in _bench("time_to_accuracy")["runs"]}
    lean, usual = runs.get(("fast-10ep-low-memory", 0)), runs[("fast-10ep", 0)]
    if lean is None:
        return "fast-10ep-low-memory: not run yet"
    same = lean["test_acc"] == usual["test_acc"] and lean["test_acc_tta"] == usual["test_acc_tta"]
    return (f"fast-10ep with `low_memory` (seed 0, on {lean['machine_before_run']['cpu']}): test accuracy "
            f"{100 * lean['test_acc']:.2f}%, {100 * lean['test_acc_tta']:.2f}% with TTA "
            f"({'the same as' if same else 'against'} fast-10ep's seed 0: {100 * usual['test_acc']:.2f}%, "
            f"{100 * usual['test_acc_tta']:.2f}%); peak memory of the training process "
            f"**{lean['train_peak_rss_mb'] / 1024:.2f} GB**, of the evaluation that follows it "
            f"{lean['eval_peak_rss_mb'] / 1024:.2f} GB (fast-10ep's seed 0: {usual['peak_rss_mb'] / 1024:.2f} GB, "
            f"the larger of the two); {lean['images_per_s']:.0f} training images/s (its cost in speed is "
            f"measured side by side above, not across sessions)")


def smallcnn_throughput() -> str:
    """Training images/s of the SmallCNN run's epochs (results/smallcnn/metrics.csv)."""
    with (ROOT / "results" / "smallcnn" / "metrics.csv").open() as f:
        rates = [float(r["images_per_s"]) for r in csv.DictReader(f)]
    return f"{min(rates):.0f}-{max(rates):.0f} images/s"


def smallcnn_table() -> str:
    """The SmallCNN run (results/smallcnn/: test_metrics.json, results.json, metrics.csv)."""
    folder = ROOT / "results" / "smallcnn"
    test = json.loads((folder / "test_metrics.json").read_text())
    run = json.loads((folder / "results.json").read_text())
    per_class = test["per_class_acc"]
    worst, best = min(per_class, key=per_class.get), max(per_class, key=per_class.get)
    return "\n".join([
        "| metric | value |", "|---|---|",
        f"| test accuracy (`best.pt`, epoch {test['checkpoint_epoch']}) | **{100 * test['test_acc']:.2f}%** "
        f"({test['n_test']:,} test images) |",
        f"| test loss | {test['test_loss']:.3f} |",
        f"| best val_acc (5,000 held-out training images) | {100 * run['best_val_acc']:.2f}% |",
        f"| training wall time ({run['epochs_run']} epochs, train + validation) | {run['train_seconds']:,.0f} s "
        f"= {run['train_seconds'] / 60:.1f} min |",
        f"| training throughput | {smallcnn_throughput()} |",
        f"| weakest / strongest class | {worst} {100 * per_class[worst]:.1f}% / {best} {100 * per_class[best]:.1f}% |",
    ])


def onnx_accuracy() -> str:
    """onnxruntime against PyTorch on the test set (results/onnx/baseline-seed0-onnx_check.json)."""
    d = json.loads((ROOT / "results" / "onnx" / "baseline-seed0-onnx_check.json").read_text())
    return (f"max |logit difference| {d['max_abs_logit_diff']:.1e} over the {d['n']:,} test images, "
            f"test_acc {100 * d['acc_reference']:.2f}% in PyTorch and {100 * d['acc_candidate']:.2f}% in "
            f"onnxruntime, {d['flipped']} predictions flipped")


def _study_rows(study: str, query: str) -> list[tuple]:
    """The rows of ``query`` on a reference study's SQLite database, read-only."""
    db = REFERENCE / "studies" / study / "study.db"
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as con:
        return con.execute(query).fetchall()


def _study_db(study: str, query: str) -> tuple | None:
    """The first row of ``query`` on a reference study's SQLite database, read-only."""
    rows = _study_rows(study, query)
    return rows[0] if rows else None


FINISHED = ("COMPLETE", "PRUNED")  # trials that ran their course or were pruned (not failed)


def _trials(study: str, states: tuple[str, ...] | None = None) -> list[dict]:
    """A reference study's trials.csv rows, only those in ``states`` where given."""
    with (REFERENCE / "studies" / study / "trials.csv").open() as f:
        return [t for t in csv.DictReader(f) if states is None or t["state"] in states]


def _summary(study: str) -> dict:
    """A reference study's summary.json."""
    return json.loads((REFERENCE / "studies" / study / "summary.json").read_text())


def _comparison(study: str) -> dict:
    """A reference report's comparison.json."""
    return json.loads((REFERENCE / "reports" / study / "comparison.json").read_text())


def _study_budget(study: str = "cifar-cpu-sized") -> dict:
    """A reference study's ``budget`` user attribute: its machine measurement and trial budget."""
    (value,) = _study_db(study, "SELECT value_json FROM study_user_attributes WHERE key = 'budget'")
    return json.loads(value)


def sized_study_minutes(study: str = "cifar-cpu-sized") -> str:
    """First trial start to last trial end of a reference study (its SQLite database), over its
    complete and pruned trials (a failed one may have been closed by hand, long after)."""
    start, end = _study_db(study, "SELECT min(datetime_start), max(datetime_complete) FROM trials "
                                  "WHERE state IN ('COMPLETE', 'PRUNED')")
    fmt = "%Y-%m-%d %H:%M:%S.%f"
    minutes = (datetime.strptime(end, fmt) - datetime.strptime(start, fmt)).total_seconds() / 60
    return f"{minutes:.1f} min"


def sized_study_budget() -> str:
    """What the sized reference study measured and the trial budget it chose (its budget attribute)."""
    b = _study_budget()
    return (f"It measured {b['throughput']['train']:.0f} training and {b['throughput']['eval']:.0f} evaluation "
            f"images/s and sized the trials to {b['max_epochs']} epochs max on {100 * b['train_fraction']:.1f}% "
            f"of the train split ({round(45_000 * b['train_fraction']):,} images)")


def sized_study_throughput() -> str:
    """The training images/s the sized reference study measured when it was created (its budget attribute)."""
    return f"{_study_budget()['throughput']['train']:.0f} training images/s"


def _param(name: str, value: str) -> str:
    """A trial parameter as the tables print it: the optimizer bare, numbers to 3 significant digits."""
    if name == "optimizer":
        return value
    label = {"batch_size": "batch", "lr_scale": "lr x"}.get(name, name)
    try:
        x = float(value)
        return f"{label} {int(x)}" if x.is_integer() and abs(x) >= 1 else f"{label} {x:.3g}"
    except ValueError:
        return f"{label} {value}"


def _estimate(budget: dict) -> str:
    """What the sizing predicted: the study alone in the earlier design, study and report since."""
    if "target_epochs" in budget:
        return f" (the estimate when sized: {budget['estimate_minutes']} min for the study and its report)"
    return f" (estimate when sized: {budget['estimate_minutes']})"


def study_table(study: str, where: str) -> str:
    """A reference study in numbers (its summary.json, trials.csv and database)."""
    summary = _summary(study)
    trials = _trials(study)
    budget = summary["user_attrs"].get("budget") or {}
    most = budget.get("max_epochs") or budget.get("target_epochs") or summary["user_attrs"]["base_config"]["epochs"]
    pruned_at = [int(t["epochs_run"]) for t in trials if t["state"] == "PRUNED"]
    finished = [t for t in trials if t["state"] in FINISHED]
    epochs = sum(int(t["epochs_run"]) for t in finished)
    failed = [t["number"] for t in trials if t["state"] == "FAIL"]
    base, best = trials[0], next(t for t in trials if int(t["number"]) == summary["best_trial"])

    def params(t: dict) -> str:  # the study's own parameters, in its order (the lr is a multiplier in newer ones)
        return ", ".join(_param(k, t[k]) for k in summary["best_params"] if t.get(k, "") != "")

    by_epoch = ", ".join(f"{pruned_at.count(e)} at epoch {e}" for e in sorted(set(pruned_at)))
    return "\n".join([
        "| | |", "|---|---|",
        f"| wall time | **{sized_study_minutes(study)}** (first trial start to last end in its database) for "
        f"{len(finished)} complete or pruned trials" + (_estimate(budget) if "estimate_minutes" in budget else "")
        + f", {where} |",
        f"| trials | {summary['trials']}: {summary['complete']} complete, **{summary['pruned']} pruned** "
        f"({by_epoch}), {summary['fail']} failed" + (f" (trial {', '.join(failed)}, see below)" if failed else "")
        + " |",
        f"| compute | {epochs} trial-epochs: {epochs / len(finished):.2f} per complete or pruned trial against "
        f"{most} without pruning (ratio {epochs / len(finished) / most:.2f}) |",
        f"| baseline (trial 0) | val_acc {float(base.get('val_acc') or base['value']):.4f} ({params(base)}) |",
        f"| best (trial {summary['best_trial']}) | **val_acc {summary['best_value']:.4f}**: {params(best)} |",
    ])


def report_result(study: str) -> str:
    """Baseline against tuned on the test set, as a reference report measured it (its comparison.json)."""
    d = _comparison(study)
    return (f"baseline **{100 * d['baseline_mean']:.2f}% ± {100 * d['baseline_std']:.2f}**, tuned "
            f"**{100 * d['tuned_mean']:.2f}% ± {100 * d['tuned_std']:.2f}** ({d['n_baseline']} seeds each, "
            f"{d['epochs']} epochs per run on {d['train_images']:,} images), difference "
            f"**{100 * d['difference']:+.2f} points**, 95% CI [{100 * d['ci_low']:+.2f}, {100 * d['ci_high']:+.2f}] "
            f"(Welch), p = {d['p_value']:.2g}")


TARGET_STUDY = "cifar-cpu-main"  # the reference main job of the final design: study, then report
FIRST_STUDY = "cifar-cpu-target"  # the first main job of the target-budget design, before the sizing fixes
VERDICT_STUDY = "cifar-cpu-verdict"  # the main job of the verdict design: study, race, sequential comparison
GPU_STUDY = "cifar-gpu-013502"  # the gpu preset's main job on a lent H200 (bench/gpu.sh), stopped at 81 trials

# The machine of reference jobs made before a study's sessions recorded it (``sessions[i]["machine"]``),
# as `lscpu` named it in the session that ran each job.
MACHINES = {"cifar-cpu-target": "2-core AMD EPYC", "cifar-cpu-main": "2-core Intel(R) Xeon(R) Processor"}


def job_machine(study: str) -> str:
    """The machines a reference job ran on: its sessions' record (the study's database: summary.json is
    written before the report's session is), plus the note above for sessions that predate the record."""
    row = _study_db(study, "SELECT value_json FROM study_user_attributes WHERE key = 'sessions'")
    sessions = json.loads(row[0]) if row else []
    named = {s["machine"] for s in sessions if s.get("machine")}
    if not named or any(not s.get("machine") for s in sessions):
        named.add(MACHINES[study])
    return named.pop() if len(named) == 1 else f"{len(named)} machines, " + " and ".join(sorted(named))


def _finished(study: str) -> int:
    """A reference study's complete and pruned trials (not a failed one, which the job may not have run)."""
    summary = _summary(study)
    return summary["complete"] + summary["pruned"]


def job_line(study: str = TARGET_STUDY, whose: str = "our") -> str:
    """The README's figure for the main job: its minutes by step (every session on record) and the machine."""
    d = _comparison(study)
    minutes, budget = d["job_minutes"], d["study_budget"]
    measured = (f" (the study, when created, measured the fast recipe at {budget['throughput']['train']:.0f} "
                f"training images/s)" if "throughput" in budget else "")
    digits = 0 if sum(minutes.values()) >= 20 else 1
    return (f"{sum(minutes.values()):.{digits}f} min on {whose} {job_machine(study)}{measured}: the study "
            f"{minutes['study']:.{digits}f} min ({_finished(study)} trials at a {d['epochs']}-epoch target), "
            f"the report {minutes['report']:.{digits}f} min")


def verdict_headline(study: str = VERDICT_STUDY) -> str:
    """A reference job's decision in one sentence: the outcome, the effect with its repeated interval,
    P(tuned beats baseline on a fresh seed) and the MDE planned before the test read (its comparison.json)."""
    d = _comparison(study)
    v, plan = d["verdict"], d["verdict"]["plan"]
    last, (p, p_low, p_high) = v["looks"][-1], v["p_better"]
    mean = lambda xs: 100 * sum(xs) / len(xs)  # noqa: E731
    return (f"**{v['outcome']}**: trial {d['best_trial']} against the baseline, {mean(v['tuned']):.2f}% against "
            f"{mean(v['baseline']):.2f}% test accuracy over {last['n']} fresh seeds each, "
            f"**{100 * last['mean']:+.2f} points**, repeated 95% interval [{100 * last['low']:+.2f}, "
            f"{100 * last['high']:+.2f}] (look {len(v['looks'])} of {len(plan['looks'])}, equivalence margin "
            f"±{100 * plan['delta']:.2f}); P(tuned beats baseline on a fresh seed) **{p:.2f}** [{p_low:.2f}, "
            f"{p_high:.2f}]; the smallest effect its seeds detect with 80% power, planned before the test read: "
            f"**{100 * plan['mde']:.2f} points**")


def race_line(study: str = VERDICT_STUDY) -> str:
    """The race on validation that chose a reference job's winner (its comparison.json)."""
    d = _comparison(study)
    race, trial = d["race"], {c["name"]: f"trial {c['trial']}" for c in d["candidates"]}
    trial["baseline"] = "the baseline"
    mean = lambda xs: f"{100 * sum(xs) / len(xs):.2f}%"  # noqa: E731
    out = [r["knocked_out"] for r in race["rounds"] if r["knocked_out"]]
    return (f"on validation over {len(race['rounds'])} fresh seeds ({', '.join(str(r['seed']) for r in race['rounds'])}"
            f"), the study's own runs only the screen: "
            + ", ".join(f"{trial[n]} {mean(v)}" for n, v in sorted(race["val"].items(), key=lambda kv: -sum(kv[1])))
            + f"; {'knocked out: ' + str(out) if out else 'no one knocked out'}; {trial[race['winner']]} won"
            + (", leading every round" if all(r["leader"] == race["winner"] for r in race["rounds"]) else ""))


def gpu_pace(study: str = GPU_STUDY) -> str:
    """The GPU study's minutes for 100 trials at its measured pace (its complete and pruned trials)."""
    minutes = _comparison(study)["job_minutes"]["study"]
    n = _finished(study)
    return f"at the study's pace ({n} trials in {minutes:.1f} min) 100 trials take {100 / n * minutes:.1f} min"


def trial_overhead(study: str = GPU_STUDY) -> str:
    """The study's pace, then per trial what is not training (sampling, storage, model build, checkpoints,
    the curve and its upload) as a share of the trial's time (trials.csv: its seconds against its epochs')."""
    trials = _trials(study, FINISHED)
    shares = sorted(1 - float(t["train_seconds"]) / float(t["seconds"]) for t in trials)
    fixed = {int(t["number"]): float(t["seconds"]) - float(t["train_seconds"]) for t in trials}
    ran = _study_rows(study, "SELECT t.number, a.value_json FROM trials t JOIN trial_user_attributes a "
                             "ON a.trial_id = t.trial_id AND a.key = 'worker' ORDER BY t.number")  # which worker
    firsts = {w: n for n, w in reversed(ran)}.values()  # each worker's first trial
    first = sorted(fixed[n] for n in firsts if n in fixed)
    later = sorted(v for n, v in fixed.items() if n not in firsts)
    return (f"{gpu_pace(study)}; per trial, what is not training took "
            f"**{100 * sum(shares) / len(shares):.1f}%** of its time on average (median "
            f"{100 * shares[len(shares) // 2]:.1f}%, at most {100 * shares[-1]:.1f}%): "
            f"{later[len(later) // 2]:.2f} s per trial (median), {first[0]:.1f}-{first[-1]:.1f} s for the first "
            f"trial of each of its {len(first)} workers")


def _tta(study: str) -> dict[str, tuple[float, float]]:
    """Mean and std of test accuracy with TTA per arm, from the report's comparison.csv."""
    with (REFERENCE / "reports" / study / "comparison.csv").open() as f:
        rows = list(csv.DictReader(f))
    out = {}
    for arm in ("baseline", "tuned"):
        v = [float(r["test_acc_tta"]) for r in rows if r["config"] == arm and r["test_acc_tta"] != ""]
        if v:
            out[arm] = mean_std(v)
    return out


def _ci(d: dict) -> str:
    """A report's paired-t 95% interval in points; "undefined" where the differences have no spread."""
    low, high = d["ci_low"], d["ci_high"]
    return "undefined" if low is None or low != low else f"[{100 * low:+.2f}, {100 * high:+.2f}]"


def selection_line(study: str = TARGET_STUDY) -> str:
    """Which candidate the report selected on validation, and the baseline's and its validation means."""
    d = _comparison(study)

    def mean(v: list) -> str:
        m, sd = mean_std(v)
        return f"{100 * m:.2f}% ± {100 * sd:.2f}"

    trial = {c["name"]: c["trial"] for c in d["candidates"]}
    others = ", ".join(f"trial {trial[n]} {mean(v)}" for n, v in d["validation"].items()
                       if n not in ("baseline", d["best"]))
    kept = ("it beats the baseline there, so it is the winner" if d["winner"] != "baseline"
            else "it does not beat the baseline there, so the baseline stays")
    return (f"on validation ({d['seeds']} seeds each, {d['epochs']} epochs), the baseline scored "
            f"{mean(d['validation']['baseline'])} and the best candidate, trial {d['best_trial']}, "
            f"{mean(d['validation'][d['best']])} (the others: {others}); {kept}")


def paired_result(study: str = TARGET_STUDY) -> str:
    """The report's paired test comparison of the baseline and the best candidate (comparison.json, .csv)."""
    d = _comparison(study)
    tta = _tta(study)
    text = (f"baseline **{100 * d['baseline_mean']:.2f}% ± {100 * d['baseline_std']:.2f}**, trial {d['best_trial']} "
            f"**{100 * d['tuned_mean']:.2f}% ± {100 * d['tuned_std']:.2f}** ({d['n']} seeds each, the same seeds, "
            f"{d['epochs']} epochs per run on {d['train_images']:,} images); difference **{100 * d['difference']:+.2f} "
            f"points** (per seed {', '.join(f'{100 * x:+.2f}' for x in d['differences'])}; better on {d['wins']} of "
            f"{d['n']}), paired-t 95% CI {_ci(d)}, exact sign-flip p = {d['sign_flip_p']:.3g} (the smallest {d['n']} "
            f"seeds allow: {d['smallest_sign_flip_p']:.3g}); "
            f"{'significant' if d['significant'] else 'not significant'}")
    if tta:
        text += (f". With TTA: baseline {100 * tta['baseline'][0]:.2f}% ± {100 * tta['baseline'][1]:.2f}, trial "
                 f"{d['best_trial']} {100 * tta['tuned'][0]:.2f}% ± {100 * tta['tuned'][1]:.2f}")
    return text


def paired_short(study: str = TARGET_STUDY) -> str:
    """The README's one-line test result of the reference report."""
    d = _comparison(study)
    return (f"test accuracy {100 * d['baseline_mean']:.2f}% for the baseline, {100 * d['tuned_mean']:.2f}% for "
            f"trial {d['best_trial']} ({d['n']} seeds each), {100 * d['difference']:+.2f} points, paired-t 95% CI "
            f"{_ci(d)}")


def study_rungs(study: str = TARGET_STUDY) -> str:
    """Each epoch against the target over the study's own completed trials (the report's ``fidelity``)."""
    rows = _comparison(study)["fidelity"]
    parts = [f"epoch {r['fidelity']}: Spearman {_num(r['spearman'])}, Kendall {_num(r['kendall'])}, regret "
             f"{_num(100 * r['regret'])} points" for r in rows]
    return (f"over the study's {rows[0]['n'] if rows else 0} trials that reached the target (survivors of "
            f"pruning only, a biased sample): " + "; ".join(parts))


def pipeline_table() -> str:
    """The data pipeline against compute alone and the conventional pipeline (results/bench/pipeline.json)."""
    d = _bench("pipeline")
    ips, alone = d["train_images_per_s"], d["pipeline_alone_batches_per_s"]
    return "\n".join([
        "| | measured | aimed at |", "|---|---|---|",
        f"| training images/s, (a) project pipeline | {ips['pipeline']:.0f} | |",
        f"| training images/s, (b) compute only (pre-made normalised tensors) | {ips['compute_only']:.0f} | |",
        f"| training images/s, (c) conventional torchvision-transforms DataLoader "
        f"({alone['conventional_workers']} workers) | {ips['conventional']:.0f} | |",
        f"| (a) / (b) | **{d['ratio_pipeline_to_compute_only']:.3f}** | >= 0.95 |",
        f"| pipeline alone, augmented normalised batches/s: project vs conventional | {alone['pipeline']:.0f} vs "
        f"{alone['conventional']:.1f} = **{d['ratio_pipeline_alone_to_conventional']:.1f}x** | >= 5x |",
        f"| (b) achieved GFLOP/s (3 x forward FLOPs per trained image) | {d['compute_only_gflops']:.0f} | |",
        f"| fp32 matmul GFLOP/s (4096², best of 10) | {d['matmul_fp32_gflops']:.0f} | |",
        f"| (b) / matmul | **{d['ratio_compute_gflops_to_matmul']:.2f}** | >= 0.70 |",
        f"| peak RSS of a real training run (`cifar.train`, 1 epoch on 5%) | "
        f"**{d['peak_training_rss_mb']:.0f} MB** | < 2 GB |",
    ])


def inference_table() -> str:
    """PyTorch against onnxruntime on the CPU (results/bench/inference.json)."""
    d = _bench("inference")
    ips = d["images_per_s"]
    return "\n".join([
        "| images/s | PyTorch (eager) | onnxruntime | ratio |", "|---|---|---|---|",
        f"| batch 1 | {ips['pytorch_batch1']:.0f} ({d['latency_ms_batch1_pytorch']:.1f} ms) | "
        f"{ips['onnxruntime_batch1']:.0f} ({d['latency_ms_batch1_onnxruntime']:.1f} ms) | "
        f"**{d['ratio_onnxruntime_to_pytorch_batch1']:.1f}x** |",
        f"| batch 256 | {ips['pytorch_batch256']:.0f} | {ips['onnxruntime_batch256']:.0f} | "
        f"**{d['ratio_onnxruntime_to_pytorch_batch256']:.1f}x** |",
    ])


def serve_line() -> str:
    """The prediction service under bounded load (results/bench/serve.json)."""
    d = _bench("serve")
    lat = d["latency_ms"]
    return (f"**{d['requests_per_s']:.0f} requests/s, latency p50 {lat['p50']:.0f} ms, p99 {lat['p99']:.0f} ms**, "
            f"{d['errors']} errors")


def _auto_pick(device: str) -> str:
    """What ``--amp auto`` picks on a device kind today (the code's choice, not the one the file recorded)."""
    import torch

    from bench.amp import AUTO_NAMES
    from cifar.runtime import resolve_amp

    return AUTO_NAMES[resolve_amp("auto", torch.device(device))]


def amp_rows() -> str:
    """fp32 against mixed precision, on this CPU and on a lent H200 (results/bench/amp-*.json)."""
    rows = []
    for name, machine in (("amp-cpu", "the slower 2-core CPU (AVX2, no native bf16)"), ("amp-cuda", "lent H200")):
        d = _bench(name)
        ips = d["train_images_per_s"]
        fp16 = (f"{ips['fp16']:,.0f} img/s ({d['ratio_fp16_to_fp32']:.2f}x)" if "fp16" in ips else "n/a")
        note = "" if d["native_bf16"] else ", emulated"
        rows.append(f"| {machine} | `{d['command']}` | {ips['fp32']:,.0f} img/s | {ips['bf16']:,.0f} img/s "
                    f"({d['ratio_bf16_to_fp32']:.2f}x{note}) | {fp16} | {_auto_pick(d['machine']['device'])} |")
    return "\n".join(["| machine | command | fp32 | bf16 | fp16 | what `auto` picks |",
                      "|---|---|---|---|---|---|", *rows])


def study_bench_table(name: str) -> str:
    """TPE + Hyperband against random sampling without pruning (results/bench/<name>.json)."""
    d = _bench(name)
    tpe, rnd = d["arms"]["tpe_hyperband"], d["arms"]["random_no_pruning"]
    gap, ratio = 100 * (tpe["best_val_acc"] - rnd["best_val_acc"]), d["ratio_mean_epochs_pruned_to_unpruned"]
    worst = max(tpe["overhead_share_max"], rnd["overhead_share_max"])
    return "\n".join([
        "| | TPE + Hyperband | random, no pruning | target |", "|---|---|---|---|",
        f"| best val_acc | {tpe['best_val_acc']:.4f} | {rnd['best_val_acc']:.4f} | TPE >= random: "
        f"{'met' if gap >= 0 else f'**missed by {-gap:.2f} points**'} (one run each) |",
        f"| trials finished (pruned) | {tpe['trials_finished']} ({tpe['trials_pruned']}) | "
        f"{rnd['trials_finished']} ({rnd['trials_pruned']}) | |",
        f"| epochs spent | {tpe['epochs_spent']} | {rnd['epochs_spent']} | |",
        f"| mean epochs per trial | {tpe['mean_epochs_per_trial']:.2f} | {rnd['mean_epochs_per_trial']:.3g} | "
        f"ratio **{ratio:.2f}**, target <= 0.5: {'met' if ratio <= 0.5 else '**missed**'} |",
        f"| overhead, share of trial time (mean / max) | {100 * tpe['overhead_share_mean']:.2f}% / "
        f"{100 * tpe['overhead_share_max']:.2f}% | {100 * rnd['overhead_share_mean']:.2f}% / "
        f"{100 * rnd['overhead_share_max']:.2f}% | < 2%: {'met' if worst < 0.02 else '**missed**'} |",
        "", f"Arms ran {tpe['wall_seconds'] / 60:.1f} and {rnd['wall_seconds'] / 60:.1f} min (`{d['command']}`).",
    ])


def memory_line() -> str:
    """Peak memory of training each way (the default, the pooling kernel, low_memory), where it goes, and
    what low_memory costs (results/bench/memory.json)."""
    d = _bench("memory")
    epochs, saved, biggest = d["training_epoch_mb"], d["saved_for_backward"], max(d["saved_for_backward"], key=int)

    def per_batch(table: dict, way: str) -> str:
        return ", ".join(f"{v[way] / 1024:.2f} GB at batch {k}" for k, v in table.items())

    def saved_mb(way: str) -> str:
        return ", ".join(f"{v[way]['total_mb'] / 1024:.2f} GB at batch {k}" for k, v in saved.items())

    kinds = ", ".join(f"{kind} {mb:.0f} MB" for kind, mb in saved[biggest]["max_pool2d"]["largest_mb"].items())
    steps, rounds = d["step_images_per_s"][biggest], d["low_memory_rounds"]
    speeds = rounds["images_per_s_mean"]
    return (f"on a {d['threads']}-thread {d['machine']}, one epoch on 10% of the split (`{d['config']}`), "
            f"peak resident memory: {per_batch(epochs, 'max_pool2d')}; with the low-memory pooling kernel only "
            f"{per_batch(epochs, 'kernel')}; with `low_memory` **{per_batch(epochs, 'low_memory')}** (with "
            f"glibc's malloc left at its defaults: {per_batch(epochs, 'low_memory_glibc_default')}). "
            f"`import torch` alone: {d['import_torch_mb'] / 1024:.2f} GB, with the data set: "
            f"{d['import_torch_and_data_mb'] / 1024:.2f} GB. The activations autograd keeps for one backward "
            f"pass: {saved_mb('max_pool2d')} (with the kernel: {saved_mb('kernel')}; with `low_memory`: "
            f"{saved_mb('low_memory')}); the largest kinds at batch {biggest} (per image: dtype, channels x height "
            f"x width): {kinds}. The kernel's training steps at batch {biggest}, alternating with max_pool2d's: "
            f"{steps['kernel']:.0f} against {steps['max_pool2d']:.0f} images/s ({steps['kernel_ratio']:.2f}x). "
            f"`low_memory` against the default, {rounds['rounds']} alternating runs each at batch "
            f"{rounds['batch']}: {speeds['low_memory']:.0f} against {speeds['max_pool2d']:.0f} training images/s "
            f"({rounds['ratio']:.2f}x), peaks up to {rounds['peak_mb_max']['low_memory'] / 1024:.2f} against "
            f"{rounds['peak_mb_max']['max_pool2d'] / 1024:.2f} GB")


def trial_phases_line() -> str:
    """Where a short study's trials spend their time outside the epochs (results/bench/trial_phases.json)."""
    d = _bench("trial_phases")
    m, first = d["median_seconds"], d["first_trial_seconds"]
    return (f"on a {d['threads']}-thread {d['machine']}, a `{d['preset']}` study of {d['trials_finished']} trials on "
            f"{100 * d['train_fraction']:.0f}% of the split at a {d['target_epochs']}-epoch target (a trial "
            f"{d['trial_seconds_median']:.1f} s, its epochs {d['epochs_seconds_median']:.1f} s; medians): "
            f"{m['outside_epochs']:.3f} s a trial outside its epochs, of which {m['before_train']:.3f} s before "
            f"`train()`, {m['train_setup_and_callbacks']:.3f} s in `train()` around the epochs, "
            f"{m['optuna_report_prune']:.3f} s in Optuna's report and prune calls, {m['curve_and_uploads']:.3f} s "
            f"on the curve and its upload, {m['optuna_outside_objective']:.3f} s in Optuna outside the objective; "
            f"the first trial {first['outside_epochs']:.2f} s, {first['before_train']:.2f} s of it before `train()`")


def study_bench_trials() -> str:
    """How many trials each arm of the CPU study benchmark finished (results/bench/study.json)."""
    arms = _bench("study")["arms"]
    counts = sorted(a["trials_finished"] for a in arms.values())
    return f"{counts[0]} to {counts[-1]} trials"


def full_trial_minutes() -> str:
    """Minutes per unpruned trial in the CPU study benchmark (results/bench/study.json, random arm)."""
    arm = _bench("study")["arms"]["random_no_pruning"]
    return f"{arm['wall_seconds'] / arm['trials_finished'] / 60:.1f} minutes"


def _num(x: float) -> str:
    """A correlation to 2 decimals; "n/a" where it is undefined (fewer than 3 configs, or ties)."""
    return "n/a" if x != x else f"{x:.2f}"


def _rho_ci(pair: list) -> str:
    return "" if pair[0] != pair[0] else f" [{pair[0]:.2f}, {pair[1]:.2f}]"


def fidelity_table(name: str = "fidelity") -> str:
    """Each cheaper fidelity (an epoch of the target run, a complete shorter run) against the target:
    rank correlations over all configs and over the better half, with 95% intervals, whether a halving
    there keeps the target's best 3, and the regret (results/bench/<name>.json)."""
    d = _bench(name)
    target, floor = d["target_epochs"], d["noise_floor"]
    rows = ["| fidelity | configs | Spearman [95% CI] | Kendall | better half: Spearman [95% CI] | "
            "a halving there removes (of the best 3) | regret at the target (points) |",
            "|---|---|---|---|---|---|---|"]
    for r in d["transfer_among_the_best"]:
        rows.append(f"| {r['fidelity']} | {r['n']} | {_num(r['spearman'])}{_rho_ci(r['spearman_ci'])} | "
                    f"{_num(r['kendall'])} | {_num(r['top_half_spearman'])}{_rho_ci(r['top_half_ci'])} | "
                    f"{', '.join(r['best_removed']) or 'none'} | {100 * r['regret']:.2f} |")
    best, worst = d["ranking_at_target"][0], d["ranking_at_target"][-1]
    m, speeds = d["machine"], [r["images_per_s"] for r in d["runs"] if r.get("images_per_s")]
    spread = (f"{100 * floor['std']:.2f} points over {len(floor['baseline_val_acc'])} seeds"
              if floor["std"] is not None else "not measured yet (one seed so far)")
    done = f"{len(d['runs'])} of the {d['planned']} planned runs done" if len(d["runs"]) < d["planned"] else ""
    progress = f"**In progress: {done}.** " if done else ""
    rows += ["", progress + f"{d['configs'] - 1} configs and the baseline at the target ({target} epochs, "
             f"validation accuracy "
             f"{100 * worst[0]:.2f}% to {100 * best[0]:.2f}%; one seed each, the baseline's seed 0); "
             f"the baseline's one-run standard deviation at the target (the noise floor): {spread}. "
             f"Machine: {m['cpu']}, {m['threads']} threads, the SmallCNN at "
             f"{m['baseline_images_per_s']:.0f} images/s when the benchmark started; its runs trained at "
             f"{min(speeds):.0f} to {max(speeds):.0f} images/s (several sessions, machines and loads); written "
             f"{d['written']}. The rule's verdict: {d['supported_rung_why']}."]
    return "\n".join(rows)


def fidelity_line() -> str:
    """The README's sentence on which epochs may prune (results/bench/fidelity.json)."""
    d = _bench("fidelity")
    corr = ", ".join(f"{r['fidelity']} {_num(r['spearman'])}" for r in d["correlations"])
    best = "; ".join(
        f"{r['fidelity']} {_num(r['top_half_spearman'])}"
        + (f", its halving would remove {' and '.join(r['best_removed'])}" if r["best_removed"] else "")
        for r in d["transfer_among_the_best"])
    return (f"over {d['configs'] - 1} configs and the baseline trained to the {d['target_epochs']}-epoch target, "
            f"each epoch's Spearman correlation with the target is {corr}; but among the better half "
            f"({d['transfer_among_the_best'][0]['top_half_n']} configs) it is {best} (of the target's best 3). "
            f"The rule's verdict: {d['supported_rung_why']}")


def fidelity_population(name: str = "fidelity-3ep") -> str:
    """The rule over a finished study's own trials (results/bench/<name>.json's ``study_population``),
    and where the target's best trial stood at each epoch."""
    import optuna

    from reports.fidelity import study_curves

    d = _bench(name)
    pop = d["study_population"]
    curves = study_curves(optuna.load_study(study_name=pop["study"], storage=pop["storage"]).trials)
    target = d["target_epochs"]
    best = max(curves, key=lambda k: curves[k][target])
    ranks = "; ".join(
        f"{sorted(curves, key=lambda k: -curves[k][e]).index(best) + 1} of {len(curves)} at epoch {e} "
        f"({100 * curves[best][e]:.2f}% against {100 * max(c[e] for c in curves.values()):.2f}% for its leader)"
        for e in range(1, target))
    return (f"{d['supported_rung_why']}. The target's best, trial {best} "
            f"({100 * curves[best][target]:.2f}% at epoch {target}), ranked {ranks}")


STORAGE_USE = {"rdb-postgresql": "many workers, many machines (the default for a shared study)",
               "rdb-sqlite": "one machine, a few workers (the default: a file, nothing to run)",
               "journal-file": "one machine, no database (a file of operations; NFS needs care)",
               "journal-redis": "several machines where Redis runs and PostgreSQL does not",
               "grpc-postgresql": "very many workers: one proxy process holds the database connections"}


def load_faults_line() -> str:
    """The load benchmark's faults parts in one sentence each (results/bench/load.json)."""
    d = _bench("load")

    def part(f: dict, where: str) -> str:
        return (f"{f['workers']} `study run` processes on one {where} study of {f['trials_requested']} trials "
                f"({f['epochs']} epochs each on a tiny synthetic folder), {f['kills']} SIGKILLed past a trial's "
                f"first epoch and started again: {f['lost']} trials lost, {f['duplicated']} duplicated, "
                f"{f['stuck']} left running or waiting, {len(f['exit_codes_nonzero'])} workers stopped by an error; "
                f"{f['live_trials_failed_by_a_late_beat']} trials of live workers failed on a late heartbeat; "
                f"{f['retried']} retried ({f['retried_while_alive']} of them while their worker lived on), "
                f"{f['resumed_from_checkpoint']} resumed from the predecessor's checkpoint, "
                f"{f['started_over_with_a_checkpoint']} of a dead trial started over beside its checkpoint; "
                f"{f['seconds'] / 60:.1f} min; each worker's peak resident memory {f['peak_rss_mb']['median']:.0f} MB "
                f"(median; PyTorch's shared libraries counted in every process)")

    return f"{part(d['faults'], 'PostgreSQL')}; and {part(d['faults-sqlite'], 'SQLite')}; on a {d['machine']}"


def storage_cost_table() -> str:
    """Each storage's seconds per trial and trials per second, alone and shared; where SQLite's errors start."""
    d = _bench("load")
    c, n = d["cost_summary"], d["cost_summary"]["processes"]
    rate = {(r["storage"], r["processes"]): r["trials_per_second"] for r in d["cost"]}
    rows = [f"| storage | use it for | s per trial, 1 process | s per trial, {n} at once | trials/s, 1 process | "
            f"trials/s, {n} at once | errors at {n} |", "|---|---|---|---|---|---|---|"]
    for kind, r in c["storages"].items():
        rows.append(f"| {kind} | {STORAGE_USE[kind]} | {r['alone_s']:.3f} | {r['shared_s']:.3f} | "
                    f"{rate[kind, 1]:.1f} | {rate[kind, n]:.1f} | {r['errors_shared']} |")
    sqlite = [r for r in d["cost"] if r["storage"] == "rdb-sqlite"]
    by_n = "; ".join(f"{r['processes']}: {r['errors']} errors, {r['seconds_per_trial_median']:.2f} s per trial"
                     for r in sqlite)
    start = (f"errors start at {c['sqlite_errors_from']} processes" if c["sqlite_errors_from"] else
             f"no errors up to {c['sqlite_most_tried']} processes (each waits up to 120 s for the write lock)")
    rows += ["", f"A trial's storage calls without training (ask with 4 parameters, a report and a pruning check "
             f"per epoch, 3 user attributes, tell), the median over every trial of every process, on a "
             f"{d['machine']}: {n} processes share its cores, so a shared figure holds the CPU's share too. "
             f"SQLite by processes ({by_n}): {start}."]
    return "\n".join(rows)


BLOCKS = {"time_to_accuracy": lambda: f"\n{time_to_accuracy()}\n",
          "gpu_time_to_accuracy": lambda: f"\n{gpu_time_to_accuracy()}\n", "baseline_decision": baseline_decision,
          "allocator_line": allocator_line, "allocator_b1024_line": lambda: allocator_line("allocator-b1024"),
          "allocator_b1024_epyc_line": lambda: allocator_line("allocator-b1024-epyc"),
          "smallcnn_throughput": smallcnn_throughput,
          "ablation_table": lambda: f"\n{ablation_table()}\n", "fidelity_table": lambda: f"\n{fidelity_table()}\n",
          "fidelity_3ep_table": lambda: f"\n{fidelity_table('fidelity-3ep')}\n",
          "fidelity_line": fidelity_line, "fidelity_3ep_population": fidelity_population,
          "load_faults_line": load_faults_line, "storage_cost_table": lambda: f"\n{storage_cost_table()}\n",
          "muon_line": muon_line,
          "smallcnn_table": lambda: f"\n{smallcnn_table()}\n",
          "onnx_accuracy": onnx_accuracy, "sized_study_minutes": sized_study_minutes,
          "sized_study_throughput": sized_study_throughput, "sized_study_budget": sized_study_budget,
          "sized_study_table": lambda: f"\n{study_table('cifar-cpu-sized', 'this CPU')}\n",
          "h200_study_table": lambda: f"\n{study_table('cifar-cpu', 'on the H200')}\n",
          "report_cifar_cpu": lambda: report_result("cifar-cpu"),
          "pipeline_table": lambda: f"\n{pipeline_table()}\n", "inference_table": lambda: f"\n{inference_table()}\n",
          "serve_line": serve_line, "study_bench_cpu": lambda: f"\n{study_bench_table('study')}\n",
          "study_bench_h200": lambda: f"\n{study_bench_table('study-h200')}\n",
          "amp_table": lambda: f"\n{amp_rows()}\n", "memory_line": memory_line,
          "low_memory_line": low_memory_line,
          "report_cifar_cpu_sized": lambda: report_result("cifar-cpu-sized"),
          "full_trial_minutes": full_trial_minutes, "study_bench_trials": study_bench_trials,
          "target_study_table": lambda: f"\n{study_table(TARGET_STUDY, 'this CPU')}\n",
          "target_job": job_line, "target_selection": selection_line, "target_report": paired_result,
          "target_rungs": study_rungs, "target_report_short": paired_short,
          "first_study_table": lambda: f"\n{study_table(FIRST_STUDY, 'this CPU')}\n",
          "first_job": lambda: job_line(FIRST_STUDY), "first_selection": lambda: selection_line(FIRST_STUDY),
          "first_report": lambda: paired_result(FIRST_STUDY), "first_rungs": lambda: study_rungs(FIRST_STUDY),
          "gpu_study_table": lambda: f"\n{study_table(GPU_STUDY, 'on the H200')}\n",
          "gpu_job": lambda: job_line(GPU_STUDY, "a lent"), "gpu_selection": lambda: selection_line(GPU_STUDY),
          "gpu_report": lambda: paired_result(GPU_STUDY), "gpu_rungs": lambda: study_rungs(GPU_STUDY),
          "gpu_overhead": trial_overhead, "gpu_report_short": lambda: paired_short(GPU_STUDY),
          "ninety_line": ninety_line, "gpu_pace": gpu_pace,
          "verdict_job": lambda: job_line(VERDICT_STUDY), "verdict_headline": verdict_headline,
          "verdict_race": race_line,
          "trial_phases_line": trial_phases_line, "step_profile_line": step_profile_line,
          "step_profile_wide_line": lambda: step_profile_line("step_profile-wide"),
          "xeon_conv_estimate": xeon_conv_estimate,
          # Written by bench/verdict_calibration.py itself; placed here.
          "verdict_tradeoff": lambda: "\n" + _bench("verdict_calibration")["tradeoff_table"] + "\n",
          "verdict_calibration": lambda: _bench("verdict_calibration")["summary"]}


def render(text: str) -> str:
    """``text`` with every block's inside rewritten from its file (a block may sit inside a sentence)."""
    for name, make in BLOCKS.items():
        pattern = re.compile(rf"(<!-- results:{name} -->)(.*?)(<!-- /results:{name} -->)", re.S)
        if pattern.search(text):
            block = make()
            text = pattern.sub(lambda m, block=block: m.group(1) + block + m.group(3), text)
    return text


def pages() -> list[Path]:
    """The pages that may hold blocks: the README and docs/."""
    return [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="exit 1 if a block is stale; write nothing")
    args = parser.parse_args(argv)
    stale = []
    for page in pages():
        text = page.read_text()
        new = render(text)
        if new != text:
            stale.append(page.name)
            if not args.check:
                page.write_text(new)
    if args.check:
        print(f"stale blocks in {', '.join(stale)}: run make readme" if stale else "every block is current")
        return 1 if stale else 0
    return 0


if __name__ == "__main__":
    sys.exit(main())
