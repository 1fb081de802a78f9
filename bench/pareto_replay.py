"""Rules for pruning by cost, replayed on the recorded curves of an unpruned study: which would save what.

The unpruned study of bench/pareto_pruning.py ran every trial to its target and recorded its validation
curve (user attribute ``val_acc_curve``), its costs and its TTA variants. Replaying a rule walks its trials
in their order: at each rung a trial is judged against the earlier trials that reached that rung in the
replay (as one worker meets them), and a pruned trial spends the epochs up to its rung. Recorded: the
trial-epochs each rule spends, the front of the trials it completes (their deployable models) and its
hypervolume against running every trial, up to the unpruned study's corner.

The replay assumes the sampler drew the same trials whatever was pruned. That held in the measured pairs
(results/bench/pareto_pruning*.json: the same draws in both arms), and the replay of the rule the pruned
arm ran is checked against it: the same trials pruned, the same trial-epochs. Where a rule prunes a trial
that would have ended on the front, a real sampler's later draws would differ; the replay shows the loss,
not what the search would have found instead. Validation only; nothing is trained.

``BLOCKS``: the docs' sentence of the result.

Usage:
    python bench/pareto_replay.py       # results/bench/pareto_replay.json
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import optuna

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import RESULTS, ROOT, write_result  # noqa: E402
from reports.pareto import front, hypervolume, points_of, worst_corner  # noqa: E402
from study.objectives import variants_of  # noqa: E402
from study.pruning import RUNG_COSTS_ATTR, ParetoHalving, stored_rule  # noqa: E402

STUDIES = ROOT / "results" / "reference" / "studies"


def replay(study: optuna.Study, rule: ParetoHalving, rung_costs: str) -> dict:
    """``rule`` over the study's trials in order; ``rung_costs``: "own" (each trial's own TTA level) or "plain"."""
    done = sorted(study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,)),
                  key=lambda t: t.number)
    reached: dict[int, list[tuple[float, dict]]] = {r: [] for r in rule.rungs()}
    kept, spent, pruned = [], 0, []
    for t in done:
        curve = {int(e): v for e, v in t.user_attrs["val_acc_curve"].items()}
        if rung_costs == "plain":
            costs = {"latency": next(v["latency"] for v in variants_of(study, t) if v["tta"] == 0)}
        else:
            costs = {"latency": t.user_attrs["costs"]["latency"]}
        stop = next((r for r in rule.rungs() if not rule.keeps(curve[r], costs, reached[r])), None)
        for r in rule.rungs():
            if stop is None or r <= stop:
                reached[r].append((curve[r], costs))
        spent += stop or rule.max_epochs
        if stop is None:
            kept.append(t)
        else:
            pruned.append(t.number)
    everyone, corner = points_of(study, done), worst_corner(points_of(study, done))
    shown = front(points_of(study, kept))
    return {"rung_costs": rung_costs, "rule": label(rule), "reduction": rule.reduction, "rungs": rule.rungs(),
            "pruned": pruned,
            "trial_epochs": spent, "epochs_saved": 1 - spent / (len(done) * rule.max_epochs),
            "hypervolume_ratio": hypervolume([(p.values[0], p.values[1]) for p in shown], corner)
            / hypervolume([(p.values[0], p.values[1]) for p in front(everyone)], corner),
            "front": [(p.number, p.tta) for p in shown]}


def label(rule: ParetoHalving) -> str:
    return f"beaten by {rule.beaten} cheaper" if rule.beaten else f"top 1/{rule.reduction}"


def rule_ran(pruned: optuna.Study) -> tuple[str, str]:
    """The (rung costs, rule) the pruned arm ran (study.pruning.COST_PRUNERS); plain (TTA-0) costs where its
    rule ranks by them and its trials recorded them (``rung_costs``), else each trial's own (also the earlier
    form of ``pareto``)."""
    beaten, ranked_by = stored_rule(pruned.user_attrs)
    plain = ranked_by == "plain" and any(RUNG_COSTS_ATTR in t.user_attrs for t in pruned.get_trials(deepcopy=False))
    return ("plain" if plain else "own"), label(ParetoHalving(1, ("latency",), beaten=beaten))


def pareto_replay_line() -> str:
    """A sentence per replay (results/bench/pareto_replay*.json), fewest trials first."""
    found = sorted((json.loads(f.read_text()) for f in RESULTS.glob("pareto_replay*.json")), key=lambda d: d["trials"])
    return " ".join(replay_sentence(d) for d in found)


def replay_sentence(d: dict) -> str:
    rules = "; ".join(f"{r['rung_costs']} costs, {r['rule']} (rungs {', '.join(map(str, r['rungs']))}): "
                      f"{r['epochs_saved']:.0%} saved, hypervolume {r['hypervolume_ratio']:.1%}" for r in d["rules"])
    arm = d["measured_pruned_arm"]
    parted = d.get("draws_part_at")
    check = ("reproduces it: the same" if d["replay_matches_the_measured_arm"] else "does NOT reproduce it" + (
        f", the arms drawing different trials from trial {parted} on" if parted is not None else "") + ": the arm had")
    ran = f" ({d['rule_ran'][0]} costs, {d['rule_ran'][1]})" if "rule_ran" in d else ""
    return (f"Replayed on the {d['trials']} recorded curves of {d['studies']}-unpruned (the replay of the rule its "
            f"pruned arm ran{ran} {check} {len(arm['pruned'])} trials pruned, {arm['trial_epochs']} trial-epochs): "
            f"{rules}.")


BLOCKS = {"pareto_replay_line": pareto_replay_line}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--name", default="cifar-cpu-pareto4x32", help="the measurement whose studies to read")
    p.add_argument("--out", default=str(RESULTS / "pareto_replay.json"))
    args = p.parse_args(argv)
    load = {arm: optuna.load_study(study_name=f"{args.name}-{arm}", storage=f"sqlite:///{STUDIES / args.name}-{arm}.db")
            for arm in ("pruned", "unpruned")}
    study, epochs = load["unpruned"], load["unpruned"].trials[0].user_attrs["epochs_run"]
    ran = load["pruned"].get_trials(deepcopy=False)
    measured = {"pruned": sorted(t.number for t in ran if t.state == optuna.trial.TrialState.PRUNED),
                "trial_epochs": sum(t.user_attrs.get("epochs_run", 0) for t in ran)}
    rules = [replay(study, ParetoHalving(epochs, ("latency",), reduction), costs)
             for costs in ("own", "plain") for reduction in (3, 4, 6)]
    rules += [replay(study, ParetoHalving(epochs, ("latency",), beaten=k), costs)
              for costs in ("own", "plain") for k in (1, 2)]
    ran_rule = rule_ran(load["pruned"])
    check = next(r for r in rules if (r["rung_costs"], r["rule"]) == ran_rule)
    result = {"what": __doc__.split("\n\n")[0], "studies": args.name, "target_epochs": epochs,
              "trials": len(study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))),
              "measured_pruned_arm": measured, "rule_ran": ran_rule,
              "replay_matches_the_measured_arm": check["pruned"] == measured["pruned"]
              and check["trial_epochs"] == measured["trial_epochs"],
              # the first trial the two samplers drew differently (None: all the same); a replay assumes none
              "draws_part_at": next((u.number for t, u in zip(ran, study.get_trials(deepcopy=False))
                                    if t.params != u.params), None),
              "rules": rules}
    write_result(result, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
