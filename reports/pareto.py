"""The report of a study of accuracy against inference cost: its Pareto front, the baseline on it, two picks.

A study of several objectives (study/objectives.py) has no single best trial. This report reads its
complete trials (validation accuracy at the target, and each cost measured before training: latency on
the machine the study ran on, FLOPs, parameters), keeps the non-dominated ones (the front), marks the
baseline (trial 0), and names two picks on validation alone: the knee (the front's point farthest from
the line between its cheapest and its most accurate ends, both axes scaled to the front's range) and
the most accurate trial whose first cost is within the limit (the study's ``--constraint``, else half
the baseline's). The hypervolume is the area the front dominates in (val_acc, first cost) up to the
study's worst corner (the lowest val_acc and the highest cost of its complete trials). The pick
within the limit is then retrained over fresh seeds and compared with the baseline on the test set
by the verdict's procedure (``compare_pick``), and its model exported to ONNX.

Usage:
    summary = pareto_summary(study)                # a dict, also pareto.json
    write_pareto(study, args, Path("results/reports"), Path("runs/reports"))   # pareto.json, .md, pick.onnx
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from cifar.cli import UsageError
from study.objectives import COSTS_ATTR, OBJECTIVES, Constraint, add_variants, p90_ms, parse_constraint, variants_of


def dominates(a: tuple[float, ...], b: tuple[float, ...]) -> bool:
    """``a`` and ``b``: (val_acc, cost, ...); a is no worse everywhere (accuracy up, costs down) and better once."""
    no_worse = a[0] >= b[0] and all(x <= y for x, y in zip(a[1:], b[1:]))
    return no_worse and a != b


@dataclass(frozen=True)
class Point:
    """A deployable model: a complete trial's weights predicting at one TTA level (its own level, or another
    its variants measured: study.objectives.tta_variants), with (val_acc, costs...) as its ``values``."""
    number: int
    tta: int
    values: tuple[float, ...]
    baseline: bool
    feasible: bool
    own: bool          # the level the trial was scored at, as the sampler saw it
    latency_p90_ms: float | None
    flops: float | None
    params: int | None
    trial_params: dict
    state = TrialState.COMPLETE  # front() takes points and trials alike


def constraint_of(study: optuna.Study) -> Constraint | None:
    """The study's ``--constraint``, if it was made with one."""
    text = study.user_attrs.get("constraint")
    return parse_constraint(text) if text else None


def points_of(study: optuna.Study, trials: list[FrozenTrial] | None = None) -> list[Point]:
    """Every deployable model of the complete trials: each TTA variant where measured, else the trial itself."""
    names = list(study.metric_names or study.user_attrs.get("objectives", []))
    limit = constraint_of(study)
    out = []
    for t in trials if trials is not None else study.get_trials(deepcopy=False):
        if t.state != TrialState.COMPLETE:
            continue
        costs, own = t.user_attrs.get(COSTS_ATTR, {}), int(t.params.get("tta", 0))
        base = dict(baseline=bool(t.user_attrs.get("baseline")), trial_params=t.params)
        out.append(Point(t.number, own, tuple(t.values), feasible=all(v <= 0 for v in t.constraints.values()),
                         own=True, latency_p90_ms=p90_ms(costs),
                         flops=costs.get("flops"), params=costs.get("params"), **base))
        for v in variants_of(study, t) or []:
            if v["tta"] != own:
                out.append(Point(t.number, v["tta"], (v["val_acc"], *(v[n] for n in names[1:])), own=False,
                                 feasible=limit is None or limit.violation(v) <= 0, latency_p90_ms=v["latency_p90_ms"],
                                 flops=v["flops"], params=v["params"], **base))
    return out


def front(trials: list) -> list:
    """The complete trials (or points) no other dominates, cheapest first."""
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    kept = [t for t in complete if not any(dominates(tuple(o.values), tuple(t.values)) for o in complete)]
    return sorted(kept, key=lambda t: (t.values[1], -t.values[0], t.number))


def knee(points: list) -> Any:
    """The front's point farthest from the line through its two ends, in (cost, accuracy) scaled to [0, 1]."""
    if len(points) < 3:
        return None
    (c0, a0), (c1, a1) = (points[0].values[1], points[0].values[0]), (points[-1].values[1], points[-1].values[0])
    span_c, span_a = (c1 - c0) or 1.0, (a1 - a0) or 1.0

    def distance(t: FrozenTrial) -> float:  # to the line (0, 0)-(1, 1) in scaled coordinates
        x, y = (t.values[1] - c0) / span_c, (t.values[0] - a0) / span_a
        return (y - x) / 2 ** 0.5
    return max(points[1:-1], key=distance)


def hypervolume(points: list[tuple[float, float]], ref: tuple[float, float]) -> float:
    """Area dominated by (val_acc, cost) points up to ``ref`` (a val_acc below them all, a cost above them all)."""
    area, best = 0.0, ref[0]
    for acc, cost in sorted(points, key=lambda p: p[1]):
        if acc > best and cost < ref[1]:
            area += (acc - best) * (ref[1] - cost)
            best = acc
    return area


def worst_corner(trials: list) -> tuple[float, float]:
    """The hypervolume's reference: the lowest val_acc and the highest first cost of the trials (or points)
    with values."""
    valued = [t.values for t in trials if t.values]
    return min(v[0] for v in valued), max(v[1] for v in valued)


def row(p: Point, names: list[str]) -> dict[str, Any]:
    return {"trial": p.number, "tta": p.tta, "baseline": p.baseline, "own_level": p.own, "val_acc": p.values[0],
            **{n: v for n, v in zip(names[1:], p.values[1:])}, "latency_p90_ms": p.latency_p90_ms,
            "flops": p.flops, "params": p.params, "trial_params": p.trial_params}


def pareto_summary(study: optuna.Study) -> dict[str, Any]:
    names = list(study.metric_names or study.user_attrs.get("objectives", []))
    trials = study.get_trials(deepcopy=False)
    every = points_of(study, trials)
    points, cost = front(every), names[1]
    if not points:
        raise UsageError(f"study {study.study_name!r} has no complete trial yet: run more trials first")
    base = next((p for p in every if p.baseline and p.own), None)  # the baseline as it is deployed: plain
    given = constraint_of(study)
    constrained = given is not None and given.name == cost  # a constraint on another cost: not this axis
    limit = given.limit if constrained else base.values[1] / 2 if base else None
    under = [p for p in points if p.feasible and limit is not None and p.values[1] <= limit and not p.baseline]
    pick = max(under, key=lambda p: (p.values[0], -p.number, -p.tta), default=None)
    the_knee = knee(points)
    return {"study": study.study_name, "objectives": names, "cost": cost, "unit": OBJECTIVES.get(cost).unit,
            "complete": sum(t.state == TrialState.COMPLETE for t in trials), "models": len(every),
            "front": [row(p, names) for p in points], "front_trials": len({p.number for p in points}),
            "baseline": row(base, names) if base else None, "baseline_on_front": bool(base and base in points),
            "knee": row(the_knee, names) if the_knee else None,
            "limit": limit, "limit_from": "the study's --constraint" if constrained else "half the baseline's",
            "pick_under_limit": row(pick, names) if pick else None,
            "hypervolume": hypervolume([(p.values[0], p.values[1]) for p in points], worst_corner(every)),
            "cost_span": points[-1].values[1] / points[0].values[1] if points and points[0].values[1] else None,
            "latency_machine": next((m for t in trials if (m := t.user_attrs.get(COSTS_ATTR, {}).get(
                "latency_detail", {}).get("machine"))), None)}


def pareto_markdown(s: dict[str, Any]) -> str:
    cost, unit = s["cost"], s["unit"]

    def line(r: dict | None, what: str) -> str:
        return (f"- {what}: trial {r['trial']} at TTA level {r['tta']}, val_acc {100 * r['val_acc']:.2f}%, {cost} "
                f"{r[cost]:.4g} {unit}" if r else f"- {what}: none")
    rows = [f"| trial | val_acc | TTA | {cost} ({unit}) | latency p90 (ms) | FLOPs | params |",
            "|---|---|---|---|---|---|---|"]
    rows += [f"| {r['trial']}{' (baseline)' if r['baseline'] else ''} | {100 * r['val_acc']:.2f}% | "
             f"{r['tta']}{'' if r['own_level'] else ' (variant)'} | {r[cost]:.4g} | "
             f"{r['latency_p90_ms'] if r['latency_p90_ms'] is not None else ''} | {r['flops']} | {r['params']} |"
             for r in s["front"]]
    limit = f"{s['limit']:.4g} {unit}" if s["limit"] is not None else "none"
    return "\n".join([
        f"# Accuracy against {cost}: study {s['study']}", "",
        f"{len(s['front'])} of {s['models']} deployable models ({s['front_trials']} of {s['complete']} complete "
        "trials, each at its own TTA level and, where measured, the others: variants, the same weights) are on "
        f"the front (validation accuracy at the target; {cost} measured before training); it spans "
        f"{s['cost_span'] or float('nan'):.1f}x in {cost}; hypervolume "
        f"{s['hypervolume']:.4g}. The baseline is {'on' if s['baseline_on_front'] else 'off'} the front." + (
            f" Latency: ONNX Runtime {m['onnxruntime']} on {m['cpu']} ({m['cpus']} CPUs, {m['node']})."
            if (m := s.get("latency_machine")) else ""), "",
        *rows, "",
        line(s["baseline"], "baseline"), line(s["knee"], "knee"),
        line(s["pick_under_limit"], f"most accurate within {limit} ({s['limit_from']})"), "",
        "Chosen on validation only. The pick within the limit against the baseline, retrained over fresh seeds "
        "and compared on the test set by the verdict's procedure:", "",
        s["comparison"]["text"] + "\n\n" + seeds_table(s) if s.get("comparison") else
        "No trial other than the baseline is on the front within the limit: nothing to compare, the baseline "
        "stays the choice at this limit." if not s["pick_under_limit"] else
        "Not compared yet: the pick's runs are training (the same command continues a stopped report)."])


def seeds_table(s: dict[str, Any]) -> str:
    """The compared pair: test accuracy over the comparison's seeds (mean and spread), beside what each costs."""
    import statistics

    v = s["comparison"]["verdict"]
    rows = ["| model | trial | TTA | test accuracy (mean ± sd over seeds) | seeds | latency median (ms) | "
            "latency p90 (ms) | FLOPs | params |", "|---|---|---|---|---|---|---|---|---|"]
    for name, r, accs in (("baseline", s["baseline"], v["baseline"]), ("pick", s["pick_under_limit"], v["tuned"])):
        rows.append(f"| {name} | {r['trial']} | {r['tta']} | {100 * statistics.mean(accs):.2f}% ± "
                    f"{100 * statistics.stdev(accs) if len(accs) > 1 else float('nan'):.2f} | {len(accs)} | "
                    f"{r.get('latency', float('nan')):.4g} | {r['latency_p90_ms']} | {r['flops']} | {r['params']} |")
    return "\n".join(rows)


def compare_pick(study: optuna.Study, summary: dict[str, Any], args, runs_root: Path, out: Path) -> dict | None:
    """The pick within the limit against the baseline, as the tuned winner is compared (reports.select
    races them on validation with the test set sealed and records the plan; then fresh seeds, look by
    look, reports.verdict); the pick's seed-0 run exported to ONNX (pick.onnx, for ``make serve``)."""
    from cifar.config import TrainConfig
    from cifar.export import main as export_main
    from reports.content import verdict_text
    from reports.load import Candidate
    from reports.runs import run_comparison
    from reports.select import select_sealed
    from study.search_space import trial_config

    pick, base = summary["pick_under_limit"], summary["baseline"]
    if pick is None or base is None:
        return None
    trials, config = study.get_trials(deepcopy=False), TrainConfig.from_dict(study.user_attrs["base_config"])

    def candidate(name: str, number: int) -> Candidate:
        t = trials[number]
        return Candidate(name, number, t.values[0], trial_config(t, config, study.user_attrs.get("space", "default")))
    chosen = (candidate("baseline", base["trial"]), [candidate("candidate 1", pick["trial"])])
    baseline, candidates, data, _, plan = select_sealed(study, args, runs_root, chosen)
    recorded = study.user_attrs.get("pick_tta")  # the selection names the trial; its TTA level is part of the pick
    if recorded is not None and recorded != pick["tta"]:
        raise UsageError(f"study {study.study_name!r} read its test set for trial {pick['trial']} at TTA level "
                         f"{recorded}; this build picks level {pick['tta']}: a new pick after a test read needs a "
                         "new study")
    study.set_user_attr("pick_tta", pick["tta"])
    if "first_test_read" not in study.user_attrs:
        study.set_user_attr("first_test_read", time.strftime("%Y-%m-%dT%H:%M:%S"))
    # Each as it predicts: the test accuracy at its TTA level (the race above ranks them plain, on validation).
    levels = {"baseline": base.get("tta", 0), "tuned": pick.get("tta", 0)}
    verdict, dirs, reads = run_comparison(baseline.config, candidates[0].config, plan, runs_root, data, levels)
    exported = export_main([str(dirs["tuned"][0]), "--out", str(out / "pick.onnx"),
                            "--tta", str(levels["tuned"])]) == 0  # it says why where not
    return {"verdict": verdict.to_dict(), "test_reads": reads, "pick_onnx": exported and str(out / "pick.onnx"),
            "tta": levels, "text": verdict_text(verdict, f"trial {pick['trial']} (the pick, {summary['cost']} "
                                                         f"{pick[summary['cost']]:.4g} against "
                                                         f"{base[summary['cost']]:.4g}, TTA level {levels['tuned']})")}


def hypervolume_history(trials: list[FrozenTrial], study: optuna.Study | None = None) -> list[tuple[int, float]]:
    """(trial number, the hypervolume of the front of the complete trials up to it: of their deployable
    models where ``study`` is given), up to the study's worst corner, in completion order: what the search
    gained trial by trial."""
    done = sorted((t for t in trials if t.state == TrialState.COMPLETE), key=lambda t: t.datetime_complete)
    if not done:
        return []

    def models(upto: list[FrozenTrial]) -> list:
        return points_of(study, upto) if study is not None else upto
    worst = worst_corner(models(done))
    return [(t.number, hypervolume([(u.values[0], u.values[1]) for u in front(models(done[:i + 1]))], worst))
            for i, t in enumerate(done)]


def to_dashboard(study: optuna.Study, text: str) -> None:
    """The report as the study's note, and its hypervolume history as a figure, for optuna-dashboard (which
    draws the Pareto front of a study of several objectives itself)."""
    import optuna_dashboard
    import plotly.graph_objects as go

    history = hypervolume_history(study.get_trials(deepcopy=False), study)
    figure = go.Figure(go.Scatter(x=list(range(1, len(history) + 1)), y=[h for _, h in history], mode="lines+markers",
                                  text=[f"trial {n}" for n, _ in history]))
    figure.update_layout(title="Hypervolume of the front by completed trial", xaxis_title="complete trials",
                         yaxis_title="hypervolume (val_acc x cost)")
    optuna_dashboard.save_note(study, text)
    optuna_dashboard.save_plotly_graph_object(study, figure, graph_object_id="hypervolume_history")


def write_pareto(study: optuna.Study, args, out_root: Path, runs_root: Path) -> Path:
    """pareto.json and pareto.md under ``out_root``/<study>: the front first (so a comparison stopped
    part-way leaves it written), then again with the pick's verdict; the Markdown is printed too."""
    from cifar.config import TrainConfig
    from cifar.data import prepare_data
    from cifar.seal import sealed

    base = TrainConfig.from_dict(study.user_attrs["base_config"])
    with sealed("the Pareto report measures its trials' TTA variants on validation"):
        added = add_variants(study, base, lambda: prepare_data(base.data))
    if added:
        print(f"TTA variants measured on validation for {added} trial(s) that ran before trials recorded them")
    summary, out = pareto_summary(study), out_root / study.study_name
    out.mkdir(parents=True, exist_ok=True)
    summary["comparison"] = None
    for final in (False, True):
        if final:
            summary["comparison"] = compare_pick(study, summary, args, runs_root, out)
        (out / "pareto.json").write_text(json.dumps(summary, indent=2, default=str) + "\n")
        text = pareto_markdown(summary)
        (out / "pareto.md").write_text(text + "\n")
    to_dashboard(study, text)
    print(text, flush=True)
    return out
