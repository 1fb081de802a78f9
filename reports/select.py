"""The report's selection, with the process's test set sealed: the race on validation, the selection and
the comparison's plan recorded in the study before the seal is lifted.

The race's seeds and the comparison's looks come from the command line, else from the design the
study's preset stored, else the defaults; once the test set has been read, a rebuild must reproduce
the recorded plan (``frozen_plan``). Both reports use it: the baseline-vs-tuned report (reports/build.py)
with the study's top distinct configs, the Pareto report (reports/pareto.py) with its pick.

Usage:
    baseline, candidates, data, race, plan = select_sealed(study, args, runs_root)
"""

from __future__ import annotations

import time
from pathlib import Path

from cifar.cli import UsageError
from cifar.config import TrainConfig
from cifar.data import prepare_data
from cifar.seal import sealed
from reports.content import race_text
from reports.load import Candidate, candidates_of
from reports.race import RacePlan
from reports.runs import run_race
from reports.verdict import COMPARISON_SEED0, Plan, comparison_seeds, make_plan, power_text
from study.presets import LOOKS, RACE_ALPHA, RACE_ROUNDS, REPORT_CANDIDATES
from study.sequential import Design


def _design(study, args, sized: dict) -> tuple[RacePlan, tuple[int, ...]]:
    """The race's plan and the comparison's looks: given on the command line, else the study's
    (``sized``: the design its preset stored when it was created), else the defaults."""
    rounds = args.race_rounds or sized.get("race_rounds") or RACE_ROUNDS
    args.candidates = args.candidates or sized.get("candidates") or REPORT_CANDIDATES
    looks = tuple(args.looks or sized.get("looks") or LOOKS)
    study_seed = TrainConfig.from_dict(study.user_attrs["base_config"]).seed
    try:
        race = RacePlan(seeds=tuple(range(1, rounds + 1)), min_rounds=min(2, rounds), alpha=RACE_ALPHA)
        Design(looks)
    except ValueError as e:
        raise UsageError(f"study {study.study_name!r}: {e}") from None
    if study_seed in (*race.seeds, *comparison_seeds(looks[-1])):
        raise UsageError(f"study {study.study_name!r} trained its trials at seed {study_seed}, a seed of the race "
                         f"(1-{rounds}) or the comparison ({COMPARISON_SEED0}-): its runs would count twice")
    return race, looks


def frozen_plan(study, plan: Plan, winner: str, trial: int | None = None) -> Plan:
    """The stored plan, which a rebuild must reproduce once the test set has been read: another design
    (looks, margin, candidates, race) after a test read would choose it knowing the test result. ``trial``:
    the winner's trial, which must be the recorded one too (a name like "candidate 1" may change trial)."""
    recorded = study.user_attrs["selection"]
    stored, selected = Plan.from_dict(study.user_attrs["verdict_plan"]), recorded["winner"]
    if not plan.same_design(stored) or winner != selected or trial not in (None, recorded.get("winner_trial")):
        raise UsageError(
            f"study {study.study_name!r} read its test set on {study.user_attrs['first_test_read']} under the plan "
            f"recorded on {stored.recorded_at} (looks {','.join(map(str, stored.looks))}, margin "
            f"{stored.delta:g}, winner {selected}, trial {recorded.get('winner_trial')}); this build would plan looks "
            f"{','.join(map(str, plan.looks))}, margin {plan.delta:g}, winner {winner}, trial {trial}. A new design "
            "after a test read needs a new study")
    return stored


def select_sealed(study, args, runs_root: Path, chosen: tuple[Candidate, list[Candidate]] | None = None):
    """The race, with the process's test set sealed; the selection and the comparison's plan recorded
    in the study before the seal is lifted: (baseline, candidates, data, race, plan). ``chosen``: the
    baseline and the candidates, where the caller picked them (else the study's top distinct configs)."""
    sized = (study.user_attrs.get("budget") or {}).get("verdict") or {}  # empty for an unsized study
    race_plan, looks = _design(study, args, sized)
    baseline, candidates = chosen or candidates_of(study, args.candidates)
    everyone = [baseline, *candidates]
    with sealed("the report selects its winner on validation first"):
        data = prepare_data(baseline.config.data)
        result = run_race({c.name: c.config for c in everyone}, race_plan, runs_root, data)
        noise = (sized["run_std"], sized["run_std_source"]) if "run_std" in sized else None
        plan = make_plan(result, looks, delta=args.margin, noise=noise)
        winner = next(c for c in candidates if c.name == result.winner)
        if "first_test_read" in study.user_attrs:  # frozen: the test set has been read under this plan
            plan = frozen_plan(study, plan, winner.name, winner.trial)
        else:
            study.set_user_attr("selection", {
                "winner": winner.name, "winner_trial": winner.trial, "leader": result.leader,
                "candidates": [{"name": c.name, "trial": c.trial} for c in everyone],
                "race": result.to_dict(), "at": time.strftime("%Y-%m-%dT%H:%M:%S")})
            study.set_user_attr("verdict_plan", plan.to_dict())
    data.unlock_test()
    print(race_text(result) + "\n" + power_text(plan), flush=True)
    return baseline, candidates, data, result, plan
