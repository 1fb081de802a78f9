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
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from cifar.cli import UsageError
from study.objectives import COSTS_ATTR, OBJECTIVES, parse_constraint


def dominates(a: tuple[float, ...], b: tuple[float, ...]) -> bool:
    """``a`` and ``b``: (val_acc, cost, ...); a is no worse everywhere (accuracy up, costs down) and better once."""
    no_worse = a[0] >= b[0] and all(x <= y for x, y in zip(a[1:], b[1:]))
    return no_worse and a != b


def front(trials: list[FrozenTrial]) -> list[FrozenTrial]:
    """The complete trials no other complete trial dominates, cheapest first."""
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    kept = [t for t in complete if not any(dominates(tuple(o.values), tuple(t.values)) for o in complete)]
    return sorted(kept, key=lambda t: (t.values[1], -t.values[0], t.number))


def knee(points: list[FrozenTrial]) -> FrozenTrial | None:
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


def worst_corner(trials: list[FrozenTrial]) -> tuple[float, float]:
    """The hypervolume's reference: the lowest val_acc and the highest first cost of the trials with values."""
    valued = [t.values for t in trials if t.values]
    return min(v[0] for v in valued), max(v[1] for v in valued)


def row(t: FrozenTrial, names: list[str]) -> dict[str, Any]:
    costs = t.user_attrs.get(COSTS_ATTR, {})
    latency = costs.get("latency_detail", {}).get("batch_1", {})
    return {"trial": t.number, "baseline": bool(t.user_attrs.get("baseline")), "val_acc": t.values[0],
            **{n: v for n, v in zip(names[1:], t.values[1:])}, "latency_p90_ms": latency.get("p90_ms"),
            "flops": costs.get("flops"), "params": costs.get("params"), "trial_params": t.params}


def pareto_summary(study: optuna.Study) -> dict[str, Any]:
    names = list(study.metric_names or study.user_attrs.get("objectives", []))
    trials = study.get_trials(deepcopy=False)
    points, cost = front(trials), names[1]
    if not points:
        raise UsageError(f"study {study.study_name!r} has no complete trial yet: run more trials first")
    base = next((t for t in trials if t.user_attrs.get("baseline") and t.state == TrialState.COMPLETE), None)
    given = parse_constraint(study.user_attrs["constraint"]) if study.user_attrs.get("constraint") else None
    constrained = given is not None and given.name == cost  # a constraint on another cost: not this axis
    limit = given.limit if constrained else base.values[1] / 2 if base else None
    feasible = [t for t in points if all(v <= 0 for v in t.constraints.values())]  # the study's constraint, if any
    under = [t for t in feasible if limit is not None and t.values[1] <= limit and t is not base]
    pick = max(under, key=lambda t: (t.values[0], -t.number), default=None)
    worst = worst_corner(trials)
    the_knee = knee(points)
    return {"study": study.study_name, "objectives": names, "cost": cost, "unit": OBJECTIVES.get(cost).unit,
            "complete": sum(t.state == TrialState.COMPLETE for t in trials),
            "front": [row(t, names) for t in points], "baseline": row(base, names) if base else None,
            "baseline_on_front": bool(base and base in points),
            "knee": row(the_knee, names) if the_knee else None,
            "limit": limit, "limit_from": "the study's --constraint" if constrained else "half the baseline's",
            "pick_under_limit": row(pick, names) if pick else None,
            "hypervolume": hypervolume([(t.values[0], t.values[1]) for t in points], worst),
            "cost_span": points[-1].values[1] / points[0].values[1] if points and points[0].values[1] else None}


def pareto_markdown(s: dict[str, Any]) -> str:
    cost, unit = s["cost"], s["unit"]

    def line(r: dict | None, what: str) -> str:
        return (f"- {what}: trial {r['trial']}, val_acc {100 * r['val_acc']:.2f}%, {cost} {r[cost]:.4g} {unit}"
                if r else f"- {what}: none")
    rows = [f"| trial | val_acc | {cost} ({unit}) | latency p90 (ms) | FLOPs | params |", "|---|---|---|---|---|---|"]
    rows += [f"| {r['trial']}{' (baseline)' if r['baseline'] else ''} | {100 * r['val_acc']:.2f}% | {r[cost]:.4g} | "
             f"{r['latency_p90_ms'] if r['latency_p90_ms'] is not None else ''} | {r['flops']} | {r['params']} |"
             for r in s["front"]]
    limit = f"{s['limit']:.4g} {unit}" if s["limit"] is not None else "none"
    return "\n".join([
        f"# Accuracy against {cost}: study {s['study']}", "",
        f"{len(s['front'])} of {s['complete']} complete trials are on the front (validation accuracy at the target; "
        f"{cost} measured before training); it spans {s['cost_span'] or float('nan'):.1f}x in {cost}; hypervolume "
        f"{s['hypervolume']:.4g}. The baseline is {'on' if s['baseline_on_front'] else 'off'} the front.", "",
        *rows, "",
        line(s["baseline"], "baseline"), line(s["knee"], "knee"),
        line(s["pick_under_limit"], f"most accurate within {limit} ({s['limit_from']})"), "",
        "Chosen on validation only. The pick within the limit against the baseline, retrained over fresh seeds "
        "and compared on the test set by the verdict's procedure:", "",
        s["comparison"]["text"] if s.get("comparison") else
        "No trial other than the baseline is on the front within the limit: nothing to compare, the baseline "
        "stays the choice at this limit." if not s["pick_under_limit"] else
        "Not compared yet: the pick's runs are training (the same command continues a stopped report)."])


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
    if "first_test_read" not in study.user_attrs:
        study.set_user_attr("first_test_read", time.strftime("%Y-%m-%dT%H:%M:%S"))
    verdict, dirs, reads = run_comparison(baseline.config, candidates[0].config, plan, runs_root, data)
    exported = export_main([str(dirs["tuned"][0]), "--out", str(out / "pick.onnx")]) == 0  # it says why where not
    return {"verdict": verdict.to_dict(), "test_reads": reads, "pick_onnx": exported and str(out / "pick.onnx"),
            "text": verdict_text(verdict, f"trial {pick['trial']} (the pick, {summary['cost']} "
                                          f"{pick[summary['cost']]:.4g} against {base[summary['cost']]:.4g})")}


def hypervolume_history(trials: list[FrozenTrial]) -> list[tuple[int, float]]:
    """(trial number, the hypervolume of the front of the complete trials up to it), up to the study's
    worst corner, in completion order: what the search gained trial by trial."""
    done = sorted((t for t in trials if t.state == TrialState.COMPLETE), key=lambda t: t.datetime_complete)
    if not done:
        return []
    worst = worst_corner(done)
    return [(t.number, hypervolume([(u.values[0], u.values[1]) for u in front(done[:i + 1])], worst))
            for i, t in enumerate(done)]


def to_dashboard(study: optuna.Study, text: str) -> None:
    """The report as the study's note, and its hypervolume history as a figure, for optuna-dashboard (which
    draws the Pareto front of a study of several objectives itself)."""
    import optuna_dashboard
    import plotly.graph_objects as go

    history = hypervolume_history(study.get_trials(deepcopy=False))
    figure = go.Figure(go.Scatter(x=list(range(1, len(history) + 1)), y=[h for _, h in history], mode="lines+markers",
                                  text=[f"trial {n}" for n, _ in history]))
    figure.update_layout(title="Hypervolume of the front by completed trial", xaxis_title="complete trials",
                         yaxis_title="hypervolume (val_acc x cost)")
    optuna_dashboard.save_note(study, text)
    optuna_dashboard.save_plotly_graph_object(study, figure, graph_object_id="hypervolume_history")


def write_pareto(study: optuna.Study, args, out_root: Path, runs_root: Path) -> Path:
    """pareto.json and pareto.md under ``out_root``/<study>: the front first (so a comparison stopped
    part-way leaves it written), then again with the pick's verdict; the Markdown is printed too."""
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
