"""The config-equivalence dump: what the code makes of the project's configs, so a refactor can show
it changed nothing a run depends on.

For each committed config and the defaults: the config, its flat fields, its run key (the run caches'
hash) and the model's parameters and FLOPs; for a grid of trial parameters of the default space over
the fast recipe: the trial's config and run key; the baseline's parameters in every space; every
preset. ``--check`` compares with the committed file and exits 1 naming the first difference;
tests/test_structure.py runs the same comparison. Written once before the structure refactor
(issue "structure, second step") and unchanged by it.

Usage: python bench/equivalence.py [--check]   (writes results/bench/equivalence.json)"""

from __future__ import annotations

import itertools
import json
import sys
from pathlib import Path

import optuna

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from cifar.config import TrainConfig, flatten  # noqa: E402
from cifar.model import model_cost  # noqa: E402
from cifar.rundir import run_key  # noqa: E402
from study.presets import PRESETS  # noqa: E402
from study.search_space import params_of, suggest_config  # noqa: E402

OUT = ROOT / "results" / "bench" / "equivalence.json"
GRID = {"optimizer": ["sgd1024", "adamw", "adam"], "lr_scale": [0.5, 2.0], "batch_size": [256, 1024],
        "dropout": [0.0, 0.2]}


def dump() -> dict:
    configs = {"default": TrainConfig(), **{n: TrainConfig.from_json(ROOT / "configs" / f"{n}.json")
                                            for n in ("smallcnn", "fast", "fast-muon")}}
    out: dict = {name: {"dict": c.to_dict(), "flat": {k: str(v) for k, v in flatten(c).items()},
                        "key": run_key(c), "cost": list(model_cost(c.model))} for name, c in configs.items()}
    trials = {}
    for values in itertools.product(*GRID.values()):
        params = dict(zip(GRID, values))
        c = suggest_config(optuna.trial.FixedTrial(params), configs["fast"])
        trials[json.dumps(params)] = [c.to_dict(), run_key(c)]
    out["trials"] = trials
    out["params_of"] = {s: params_of(configs["fast"], s) for s in ("default", "extended")}  # the spaces then
    out["presets"] = {n: repr(PRESETS.get(n)) for n in PRESETS}
    return json.loads(json.dumps(out, default=str))


def difference(a: object, b: object, where: str = "") -> str | None:
    """The path of the first difference between two JSON values, or None."""
    if isinstance(a, dict) and isinstance(b, dict):
        for k in sorted(set(a) | set(b)):
            if k not in a or k not in b:
                return f"{where}/{k}: only in {'the file' if k in a else 'the code'}"
            if found := difference(a[k], b[k], f"{where}/{k}"):
                return found
        return None
    return None if a == b else f"{where}: {a!r} in the file, {b!r} from the code"


def main(argv: list[str]) -> int:
    now = dump()
    if "--check" in argv:
        found = difference(json.loads(OUT.read_text()), now)
        print(found or "the code makes what results/bench/equivalence.json holds")
        return 1 if found else 0
    OUT.write_text(json.dumps(now, indent=1, sort_keys=True) + "\n")
    print(f"wrote {OUT.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
