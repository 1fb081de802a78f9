"""The verdict: plan the test comparison from the race's validation spread, then add seeds until it decides.

One primary rule, fixed here and written in the report: the group-sequential
repeated confidence interval of the mean test-accuracy difference (tuned -
baseline) over fresh seeds (``study.sequential``) says **better**, **worse**,
**equivalent** (inside +-delta) or, when the seeds run out, **undecided**. Before
any test read the plan is fixed and stored in the study (``plan``): the looks,
the margin, the one-run noise measured on validation in the race, and the
minimum detectable effect at 80% power that these seeds can reach. Two effect
sizes a user can read come beside it, never instead of it: the probability that
the tuned config beats the baseline on a fresh seed (Bouthillier et al. 2021,
"Accounting for Variance in Machine Learning Benchmarks"), and a Bayesian
posterior with a region of practical equivalence (the Bayesian correlated t-test's).

Pairing by seed is kept (the same seed gives both arms the same split and data
order), but the plan does not count on it: over the committed reports the
correlation between the arms' test accuracies on the same seed was -0.03, -0.88
and -0.55, over 3 seeds each, within chance of zero, so a difference is planned
with the variance of two independent runs. A true negative correlation would
widen the intervals and lower the power; the rule's error rate would hold, since
each interval uses the spread it observes.

Last, the committed reference job in the docs' words (the blocks ``bench/blocks.py`` places in the
README and docs/report.md): its minutes and machine, its race, its verdict, read from its report's
comparison.json and its study.

Usage:
    plan = make_plan(race_result, looks=(6, 8, 10), seeds=comparison_seeds(10))
    verdict = compare(plan, lambda seed: (baseline_acc(seed), tuned_acc(seed)))
    print(verdict.outcome, verdict.headline())
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import optuna
from optuna.trial import TrialState
from scipy import optimize, stats

from reports.load import open_study
from reports.race import RaceResult
from study.sequential import POWER, Design, Look, decide, mde, pairs_for_equivalence, pairs_needed

COMPARISON_SEED0 = 1000     # the comparison's seeds start here: fresh for every run of the race and study
MIN_DELTA = 0.001           # the smallest equivalence margin taken from the noise (0.1 points)


def comparison_seeds(n: int) -> tuple[int, ...]:
    return tuple(range(COMPARISON_SEED0, COMPARISON_SEED0 + n))


def pooled_std(groups: Sequence[Sequence[float]]) -> tuple[float, int]:
    """The pooled within-group standard deviation and its degrees of freedom."""
    ss = sum(float(np.sum((np.asarray(g) - np.mean(g)) ** 2)) for g in groups if len(g) > 1)
    df = sum(len(g) - 1 for g in groups if len(g) > 1)
    return (math.sqrt(ss / df) if df else math.nan), df


@dataclass(frozen=True)
class Plan:
    """The comparison as fixed before its first test read (stored in the study)."""
    looks: tuple[int, ...]   # pairs at each look
    seeds: tuple[int, ...]   # the comparison's seeds, in order (as many as the last look)
    alpha: float             # two-sided error over all looks
    delta: float             # equivalence margin, accuracy (stated; from the noise unless given)
    delta_source: str        # where the margin comes from
    run_std: float           # one run's validation noise, pooled over the race's contestants
    run_std_df: int
    diff_std: float          # the planned standard deviation of one seed's difference: run_std * sqrt(2)
    mde: float               # the smallest true difference the last look detects with 80% power
    mde_first: float         # the same at the first look
    recorded_at: str = ""
    equivalence_pairs: float = math.nan  # pairs after which, with no true difference, the interval would
                                         # lie inside the margin (a 50% chance of "equivalent")

    def design(self) -> Design:
        return Design(self.looks, self.alpha, self.delta)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> Plan:
        return cls(**{**d, "looks": tuple(d["looks"]), "seeds": tuple(d["seeds"])})

    def same_design(self, other: Plan) -> bool:
        """The same comparison (looks, seeds, level, margin), whenever and from whatever it was planned."""
        keys = ("looks", "seeds", "alpha", "delta")
        return all(getattr(self, k) == getattr(other, k) for k in keys)


def make_plan(race: RaceResult, looks: Sequence[int], alpha: float = 0.05, delta: float | None = None,
              noise: tuple[float, str] | None = None) -> Plan:
    """The plan from the race's validation accuracies (every contestant's seeds). The equivalence
    margin: ``delta`` where given; else the spread of the difference between two retrains of one
    config (one run's noise x sqrt(2)), from ``noise`` (one run's validation noise measured for the
    target on many seeds, and where from: the study's budget) or, without it, from the race."""
    looks = tuple(int(n) for n in looks)
    run_std, df = pooled_std(list(race.val.values()))
    if math.isnan(run_std):
        raise ValueError("the race ran one seed per contestant: no validation spread to plan from")
    if delta is not None:
        margin, source = float(delta), "given (--margin)"
    elif noise is not None:
        margin = max(MIN_DELTA, round(noise[0] * math.sqrt(2), 4))
        source = f"what retraining one config changes: one run's noise x sqrt(2), {noise[1]}"
    else:
        margin = max(MIN_DELTA, round(run_std * math.sqrt(2), 4))
        source = "what retraining one config changes: one run's noise in the race x sqrt(2)"
    design = Design(looks, alpha, margin)
    diff_std = run_std * math.sqrt(2)
    levels = design.nominal_alphas()
    return Plan(looks, comparison_seeds(looks[-1]), alpha, margin, source,
                run_std, df, diff_std, mde(diff_std, looks[-1], levels[-1]), mde(diff_std, looks[0], levels[0]),
                time.strftime("%Y-%m-%dT%H:%M:%S"), pairs_for_equivalence(0.0, diff_std, levels[-1], margin))


@dataclass
class Verdict:
    plan: Plan
    baseline: list[float]          # test accuracy of each comparison seed
    tuned: list[float]
    looks: list[Look] = field(default_factory=list)
    p_better: tuple[float, float, float] = (math.nan, math.nan, math.nan)  # estimate, 95% interval
    bayes: tuple[float, float, float] = (math.nan, math.nan, math.nan)     # P(worse), P(rope), P(better)
    more_pairs: float = math.nan   # undecided: pairs a decision would need (see ``pairs_to_decide``)

    @property
    def last(self) -> Look:
        return self.looks[-1]

    @property
    def outcome(self) -> str:
        return self.last.outcome or "undecided"

    @property
    def differences(self) -> list[float]:
        return [t - b for b, t in zip(self.baseline, self.tuned)]

    def to_dict(self) -> dict:
        return {"outcome": self.outcome, "plan": self.plan.to_dict(), "baseline": self.baseline,
                "tuned": self.tuned, "differences": self.differences,
                "looks": [lk.to_dict() for lk in self.looks], "p_better": list(self.p_better),
                "bayes": {"worse": self.bayes[0], "equivalent": self.bayes[1], "better": self.bayes[2]},
                "more_pairs": self.more_pairs}


def p_better(tuned: Sequence[float], baseline: Sequence[float], level: float = 0.95) -> tuple[float, float, float]:
    """P(a fresh tuned run beats a fresh baseline run): the share of all (tuned, baseline) run pairs the
    tuned run wins (ties half), the Mann-Whitney estimate, since the seeds' pairing carries no
    information here; with Newcombe's (2006) score-type interval (his method 5: Hanley and McNeil's
    variance with N* = (m + n)/2 - 1), which, unlike a bootstrap, does not collapse onto 1 when every
    tuned run beats every baseline run, as it will when a comparison stops early on a large effect."""
    a, b = np.asarray(tuned, dtype=np.float64), np.asarray(baseline, dtype=np.float64)
    m, n = len(a), len(b)
    est = float(((a[:, None] > b[None, :]) + 0.5 * (a[:, None] == b[None, :])).mean())
    if m < 2 or n < 2:
        return est, math.nan, math.nan
    z2, big_n = stats.norm.ppf(0.5 + level / 2) ** 2, (m + n) / 2 - 1

    def excess(theta: float) -> float:  # (theta - est)^2 - z^2 Var(theta): <= 0 inside the interval
        var = theta * (1 - theta) / (m * n) * (1 + (big_n - 1) * ((1 - theta) / (2 - theta) + theta / (1 + theta)))
        return (theta - est) ** 2 - z2 * var

    # Inside the interval the excess is negative; just off an estimate of 0 or 1 too (the variance is 0 there).
    inner_low, inner_high = max(est - 1e-9, 0.0), min(est + 1e-9, 1.0)
    low = optimize.brentq(excess, 0.0, inner_low) if est > 1e-9 else 0.0
    high = optimize.brentq(excess, inner_high, 1.0) if est < 1 - 1e-9 else 1.0
    return est, float(low), float(high)


def bayes_probs(differences: Sequence[float], rope: float) -> tuple[float, float, float]:
    """(P(worse), P(equivalent), P(better)) of the mean difference under +-``rope``: the posterior of
    the Bayesian correlated t-test (Benavoli et al. 2017, as baycomp's ``CorrelatedTTest``) with
    correlation 0, since seeds are independent runs, not overlapping folds: Student t with n - 1
    degrees of freedom, centred on the mean difference, scale std/sqrt(n). Written with scipy, not
    baycomp: baycomp 1.0.3 installs a top-level ``tests`` package that shadows this project's."""
    d = np.asarray(differences, dtype=np.float64)
    if len(d) < 2:
        return math.nan, math.nan, math.nan
    scale = float(d.std(ddof=1)) / math.sqrt(len(d))
    if scale == 0:
        m = float(d.mean())
        return float(m < -rope), float(-rope <= m <= rope), float(m > rope)
    post = stats.t(len(d) - 1, loc=float(d.mean()), scale=scale)
    left, right = float(post.cdf(-rope)), float(post.sf(rope))
    return left, 1.0 - left - right, right


def pairs_to_decide(look: Look, plan: Plan) -> float:
    """Undecided: the total pairs after which, at the observed mean and spread, a look at the last
    look's level would decide (better or worse at 80% power, or equivalent), the fewer of the two."""
    std = look.std if look.std > 0 else plan.diff_std
    return min(pairs_needed(abs(look.mean), std, look.level), pairs_for_equivalence(look.mean, std, look.level,
                                                                                    plan.delta))


def compare(plan: Plan, train_pair: Callable[[int], tuple[float, float]], effect_sizes: bool = True) -> Verdict:
    """Seeds in rounds up to each look, until a look decides or the last look is done.
    ``train_pair(seed)``: the (baseline, tuned) test accuracy at that seed. ``effect_sizes``: also
    P(tuned > baseline) and the Bayesian view (a simulation of the rule alone leaves them out)."""
    verdict = Verdict(plan, [], [])
    design = plan.design()
    for n in plan.looks:
        for seed in plan.seeds[len(verdict.baseline):n]:
            b, t = train_pair(seed)
            verdict.baseline.append(float(b))
            verdict.tuned.append(float(t))
        verdict.looks.append(decide(verdict.differences, design))
        if verdict.last.outcome:
            break
    if effect_sizes:
        verdict.p_better = p_better(verdict.tuned, verdict.baseline)
        verdict.bayes = bayes_probs(verdict.differences, plan.delta)
    if verdict.outcome == "undecided":
        needed = pairs_to_decide(verdict.last, plan)
        verdict.more_pairs = math.inf if math.isinf(needed) else max(0.0, math.ceil(needed) - verdict.last.n)
    return verdict


def power_text(plan: Plan) -> str:
    """The plan in words, as the report writes it before the test read."""
    return (f"Planned before any test read: baseline and tuned on {plan.looks[-1]} fresh seeds at most, "
            f"looks after {', '.join(map(str, plan.looks))} pairs (O'Brien-Fleming-type alpha spending, "
            f"{plan.alpha:.0%} two-sided over all looks). One run's noise on validation, pooled over the race: "
            f"{100 * plan.run_std:.2f} points ({plan.run_std_df} degrees of freedom), so one seed's difference is "
            f"planned at {100 * plan.diff_std:.2f} points. The smallest true difference the last look detects "
            f"with {POWER:.0%} power: {100 * plan.mde:.2f} points ({100 * plan.mde_first:.2f} at the first look). "
            f"Equivalence margin: +-{100 * plan.delta:.2f} points ({plan.delta_source}); with no true difference "
            f"the interval would lie inside it after about {plan.equivalence_pairs:.0f} pairs.")


# ---------------------------------------------------------------- the reference job in the docs' words

REFERENCE = Path(__file__).resolve().parents[1] / "results" / "reference"  # committed <kind>/<study>/ folders
REFERENCE_JOB = "cifar-cpu-verdict"  # the main job the docs quote: study, race, sequential comparison


def reference_comparison(study: str = REFERENCE_JOB) -> dict:
    """A committed reference job's comparison.json (its report's figures)."""
    return json.loads((REFERENCE / "reports" / study / "comparison.json").read_text())


def reference_study(study: str = REFERENCE_JOB) -> optuna.Study:
    """A committed reference job's study, read through Optuna from its SQLite file."""
    return open_study(f"sqlite:///{REFERENCE / 'studies' / study / 'study.db'}", study)


def job_line(d: dict, study: optuna.Study, whose: str = "our") -> str:
    """The job's minutes by step (every session on record), its machines (the sessions' record) and trials."""
    minutes, budget = d["job_minutes"], d["study_budget"]
    named = sorted({s["machine"] for s in study.user_attrs.get("sessions", [])})
    machine = named[0] if len(named) == 1 else f"{len(named)} machines, " + " and ".join(named)
    measured = (f" (the study, when created, measured the fast recipe at {budget['throughput']['train']:.0f} "
                f"training images/s)" if "throughput" in budget else "")
    finished = len(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED)))
    digits = 0 if sum(minutes.values()) >= 20 else 1
    return (f"{sum(minutes.values()):.{digits}f} min on {whose} {machine}{measured}: the study "
            f"{minutes['study']:.{digits}f} min ({finished} trials at a {d['epochs']}-epoch target), "
            f"the report {minutes['report']:.{digits}f} min")


def headline_line(d: dict) -> str:
    """The job's decision in one sentence: the outcome, the effect with its repeated interval,
    P(tuned beats baseline on a fresh seed) and the MDE planned before the test read."""
    v, plan = d["verdict"], d["verdict"]["plan"]
    last, (p, p_low, p_high) = v["looks"][-1], v["p_better"]
    return (f"**{v['outcome']}**: trial {d['best_trial']} against the baseline, {100 * np.mean(v['tuned']):.2f}% "
            f"against {100 * np.mean(v['baseline']):.2f}% test accuracy over {last['n']} fresh seeds each, "
            f"**{100 * last['mean']:+.2f} points**, repeated 95% interval [{100 * last['low']:+.2f}, "
            f"{100 * last['high']:+.2f}] (look {len(v['looks'])} of {len(plan['looks'])}, equivalence margin "
            f"±{100 * plan['delta']:.2f}); P(tuned beats baseline on a fresh seed) **{p:.2f}** [{p_low:.2f}, "
            f"{p_high:.2f}]; the smallest effect its seeds detect with 80% power, planned before the test read: "
            f"**{100 * plan['mde']:.2f} points**")


def race_line(d: dict) -> str:
    """The race on validation that chose the job's winner."""
    race, trial = d["race"], {c["name"]: f"trial {c['trial']}" for c in d["candidates"]} | {"baseline": "the baseline"}
    out = [r["knocked_out"] for r in race["rounds"] if r["knocked_out"]]
    return (f"on validation over {len(race['rounds'])} fresh seeds ({', '.join(str(r['seed']) for r in race['rounds'])}"
            f"), the study's own runs only the screen: "
            + ", ".join(f"{trial[n]} {100 * np.mean(v):.2f}%" for n, v in sorted(race["val"].items(),
                                                                                 key=lambda kv: -sum(kv[1])))
            + f"; {'knocked out: ' + str(out) if out else 'no one knocked out'}; {trial[race['winner']]} won"
            + (", leading every round" if all(r["leader"] == race["winner"] for r in race["rounds"]) else ""))


BLOCKS = {"verdict_job": lambda: job_line(reference_comparison(), reference_study()),
          "verdict_headline": lambda: headline_line(reference_comparison()),
          "verdict_race": lambda: race_line(reference_comparison())}
