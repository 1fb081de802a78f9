"""The sentences the docs quote from bench/time_to_accuracy.py's results files (its ``BLOCKS``).

results/bench/time_to_accuracy.json (the 2-core CPU) and its -cuda-<amp> twins (a lent
H200, one per precision): the recipe against the SmallCNN, each technique's
effect, Muon at the open targets, a whole run with ``low_memory``, and what a
90%-class target costs. Kept beside the script, which is near its size limit;
``bench/blocks.py`` places them in the pages.

Usage:
    from bench.time_to_accuracy_blocks import BLOCKS
    print(BLOCKS["ablation_table"]())
"""

from __future__ import annotations

from bench.common import pct, read_result
from bench.time_to_accuracy import ABLATIONS

GPU_PRECISIONS = {"off": "fp32 (TF32 convolutions)", "bf16": "bf16 autocast", "fp16": "fp16 autocast, scaled"}
# The share of a target run a trial costs under Hyperband, as the gpu preset's main job on a lent H200
# measured it (results/reference/studies/cifar-gpu-013502): its 81 complete and pruned trials ran 630 epochs
# at a 10-epoch target. A finished job: the figure no longer changes.
HYPERBAND_SHARE = 630 / (81 * 10)


def _rows(name: str = "time_to_accuracy") -> dict[str, dict]:
    """A results file's summary rows by run name."""
    return {r["name"]: r for r in read_result(name)["summary"]}


def time_to_accuracy() -> str:
    """The fast recipe against the SmallCNN: accuracy, compute, time, and the targets so far."""
    result = read_result("time_to_accuracy")
    rows = ["| run | epochs | seeds | test acc | with TTA | training PFLOP | train min | images/s | "
            "GFLOP/s (matmul) | peak MB |", "|---|---|---|---|---|---|---|---|---|---|"]
    machines: dict[str, list[str]] = {}
    for r in result["summary"]:
        rows.append(f"| {r['name']} | {r['epochs']} | {len(r['seeds'])} | {pct(r['test_acc'])} | "
                    f"{pct(r['test_acc_tta'])} | {r['train_pflop']:.3f} | {r['train_minutes']:.1f} | "
                    f"{r['images_per_s']:.0f} | {r['train_gflops_per_s']:.0f} ({r['matmul_gflops']:.0f}) | "
                    f"{r['peak_rss_mb'] or 0:.0f} |")
        machines.setdefault(", ".join(r["cpus"]), []).append(r["name"])

    def rows_of(names: list[str]) -> str:
        return "every row" if len(machines) == 1 else ", ".join(names) if len(names) < 5 else "the rest"
    where = "; ".join(f"{cpu} for {rows_of(names)}" for cpu, names in sorted(machines.items(),
                                                                              key=lambda kv: len(kv[1])))
    m = result["machine"]
    rows += ["", f"Machines: {where}; {m['threads']} threads; each row's matmul and the SmallCNN's "
             f"images/s measured before each of its runs (last run: {result['written']}, on {m['cpu']}: fp32 "
             f"matmul {m['matmul_gflops']:.0f} GFLOP/s, SmallCNN {m['baseline_images_per_s']:.0f} images/s). "
             "Targets so far:"]
    rows += [f"- {t['target']}: " + (f"{'met' if t['met'] else 'not met'} (best: {t['best']['name']})"
                                      if isinstance(t["best"], dict) else f"not measured yet ({t['best']})")
             for t in result["targets"]]
    return "\n".join(rows)


def gpu_time_to_accuracy() -> str:
    """The recipe's runs on a lent H200, by precision (time_to_accuracy-cuda-<amp>.json)."""
    rows = ["| run | precision | seeds | test acc | with TTA | training PFLOP | training s, each seed |",
            "|---|---|---|---|---|---|---|"]
    written = []
    for amp, label in GPU_PRECISIONS.items():
        d = read_result(f"time_to_accuracy-cuda-{amp}")
        written.append(d["written"])
        for r in d["summary"]:
            seconds = ", ".join(f"{x['train_seconds']:.1f}" for x in d["runs"] if x["name"] == r["name"])
            rows.append(f"| {r['name']} | {label} | {len(r['seeds'])} | {pct(r['test_acc'])} | "
                        f"{pct(r['test_acc_tta'])} | {r['train_pflop']:.3f} | {seconds} |")
    m = d["machine"]
    rows += ["", f"Machine: one {m['gpu']} with {m['threads']} CPU threads ({m['cpu']}), measured "
             f"{min(written)[:10]}. Training seconds are the epochs' (each with its validation pass; the first "
             "epoch also warms cuDNN up), not the process start, the data's first decode or the test evaluation."]
    return "\n".join(rows)


def baseline_decision() -> str:
    """The fast recipe at 10 epochs against the SmallCNN at 14, on the CPU and the H200."""
    cpu, gpu = _rows(), _rows("time_to_accuracy-cuda-off")
    fast, fast_gpu, small = cpu["fast-10ep"], gpu["fast-10ep"], gpu["smallcnn-14ep"]
    return (f"the fast recipe at 10 epochs reaches {pct(fast['test_acc'])} ({pct(fast['test_acc_tta'])} with TTA) "
            f"on the 2-core CPU and {pct(fast_gpu['test_acc'])} ({pct(fast_gpu['test_acc_tta'])}) on the H200, "
            f"with {fast['train_pflop']:.3f} PFLOP of training; the SmallCNN at its 14 epochs reaches "
            f"{pct(small['test_acc'])} ({pct(small['test_acc_tta'])}) on the H200, with "
            f"{small['train_pflop']:.3f} PFLOP ({100 * fast['train_pflop'] / small['train_pflop']:.0f}% of it for "
            "the fast recipe)")


def ninety_line() -> str:
    """What a 90%-class target costs: the wide variant's runs on the H200 and on 2 cores, and a main job of
    20 trials at ``HYPERBAND_SHARE`` of a target run each plus its report's runs (the gpu preset's)."""
    from study.presets import PRESETS

    cpu_bench, gpu = read_result("time_to_accuracy"), read_result("time_to_accuracy-cuda-off")
    wide, on_cpu = _rows("time_to_accuracy-cuda-off")["fast-wide-10ep"], _rows()["fast-wide-10ep"]
    seconds = [x["train_seconds"] for x in gpu["runs"] if x["name"] == "fast-wide-10ep"]
    machine = next(r["machine_before_run"]["cpu"] for r in cpu_bench["runs"] if r["name"] == "fast-wide-10ep")
    gpu_preset = PRESETS.get("gpu")  # the report at its most: every race round, the comparison's last look
    report_runs = (gpu_preset.candidates + 1) * gpu_preset.race_rounds + 2 * gpu_preset.looks[-1]
    run_minutes = on_cpu["train_minutes"]
    job_hours = (20 * HYPERBAND_SHARE + report_runs) * run_minutes / 60
    return (f"the wide variant of the fast recipe at 10 epochs reaches {pct(wide['test_acc'])} test accuracy, "
            f"{pct(wide['test_acc_tta'])} with TTA, with {wide['train_pflop']:.2f} PFLOP of training per run: "
            f"{min(seconds):.1f}-{max(seconds):.1f} s of training on the H200; on 2 cores, {run_minutes:.0f} min "
            f"of training per run ({on_cpu['train_gflops_per_s']:.0f} GFLOP/s, measured on a 2-core {machine}: "
            f"{pct(on_cpu['test_acc'])}, {pct(on_cpu['test_acc_tta'])} with TTA), so a main job of "
            f"20 trials at that target ({HYPERBAND_SHARE:.2f} of a run each under Hyperband, as in the GPU study) "
            f"and its report's {report_runs} runs would take about {job_hours:.0f} hours there")


def ablation_table() -> str:
    """Each technique's measured effect: the recipe at 6 epochs (2 seeds) minus the run without it (1 seed)."""
    rows = _rows()
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
    out += ["", f"Effect = the full recipe at 6 epochs ({pct(full['test_acc'])}, {pct(full['test_acc_tta'])} "
            f"with TTA, {len(full['seeds'])} seeds) minus the run without the technique (one seed each: a "
            f"difference within about {200 * sd:.1f} points, two standard deviations of such a difference, "
            f"is noise). {len(out) - 2} of the {len(ABLATIONS)} techniques measured so far."]
    return "\n".join(out)


def muon_line() -> str:
    """Muon's runs at the open targets' budgets against the recipe's nearest runs and its own at 11 epochs."""
    result = read_result("time_to_accuracy")
    rows = {r["name"]: r for r in result["summary"]}
    out = []
    for name, other, target in (("fast-muon-11ep", "fast-10ep", "88.0% without TTA within 0.16 PFLOP"),
                                ("fast-wide-muon-11ep", "fast-wide-10ep", "90.5% with TTA within 0.36 PFLOP")):
        r, o = rows[name], rows[other]
        seeds = len(r["seeds"])
        verdict = next(t for t in result["targets"] if t["target"] == target)
        met = "met" if verdict["met"] and verdict["best"]["name"] == name else (
            "not met" if seeds >= 2 else "not decided (one seed so far)")
        out.append(f"{name} ({r['train_pflop']:.4f} PFLOP, {', '.join(r['cpus'])}): "
                   f"{pct(r['test_acc'])}, {pct(r['test_acc_tta'])} with TTA over {seeds} "
                   f"seed{'s' * (seeds > 1)}, against {other}'s {pct(o['test_acc'])}, {pct(o['test_acc_tta'])} "
                   f"({o['train_pflop']:.3f} PFLOP); the target {target}: {met}")
    same = rows["fast-11ep"]  # the recipe's optimizer at Muon's epochs
    out.append(f"configs/fast.json at the same 11 epochs ({', '.join(same['cpus'])}): "
               f"{pct(same['test_acc'])}, {pct(same['test_acc_tta'])} with TTA")
    return "; ".join(out)


def low_memory_line() -> str:
    """A whole fast-10ep run with ``low_memory`` against the same seed without (the file's runs)."""
    runs = {(r["name"], r["seed"]): r for r in read_result("time_to_accuracy")["runs"]}
    lean, usual = runs[("fast-10ep-low-memory", 0)], runs[("fast-10ep", 0)]
    same = lean["test_acc"] == usual["test_acc"] and lean["test_acc_tta"] == usual["test_acc_tta"]
    return (f"fast-10ep with `low_memory` (seed 0, on {lean['machine_before_run']['cpu']}): test accuracy "
            f"{100 * lean['test_acc']:.2f}%, {100 * lean['test_acc_tta']:.2f}% with TTA "
            f"({'the same as' if same else 'against'} fast-10ep's seed 0: {100 * usual['test_acc']:.2f}%, "
            f"{100 * usual['test_acc_tta']:.2f}%); peak memory of the training process "
            f"**{lean['train_peak_rss_mb'] / 1024:.2f} GB**, of the evaluation that follows it "
            f"{lean['eval_peak_rss_mb'] / 1024:.2f} GB (fast-10ep's seed 0: {usual['peak_rss_mb'] / 1024:.2f} GB, "
            f"the larger of the two); {lean['images_per_s']:.0f} training images/s (its cost in speed is "
            f"measured side by side above, not across sessions)")


BLOCKS = {"time_to_accuracy": time_to_accuracy, "gpu_time_to_accuracy": gpu_time_to_accuracy,
          "baseline_decision": baseline_decision, "ninety_line": ninety_line, "ablation_table": ablation_table,
          "muon_line": muon_line, "low_memory_line": low_memory_line}
