"""Build the baseline-vs-tuned report of a study: retrain, test, compare, write.

The baseline config and the study's best config are retrained on the whole
train split (not the study's subset) with one epoch budget and K seeds, each
evaluated on the test set. Runs are cached by config and seed under
``runs/reports/``, so a rebuild only redoes the figures. Steps: load -> data
-> figures -> write; only ``write_report`` writes into the report folder.

Usage:
    python -m reports build --study-name cifar-cpu [--storage URL] [--seeds 3] [--epochs 10] [--runs-only]
"""

from __future__ import annotations

import html
import json
import os
import shutil
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from cifar.config import TrainConfig
from cifar.data import prepare_data
from reports.load import load_run, open_study
from reports.runs import REPORT_MINUTES, ensure_runs, report_configs
from reports.stats import compare
from study.storage import DEFAULT_STORAGE, ArgParser, UsageError
from study.trials import compute_spent, trials_table

# ---------------------------------------------------------------- data


def comparison_frame(runs: dict[str, list[dict]]) -> pd.DataFrame:
    rows = []
    for config, items in runs.items():
        for seed, r in enumerate(items):
            rows.append({"config": config, "seed": seed, "test_acc": r["test"]["test_acc"],
                         "test_loss": r["test"]["test_loss"], "best_val_acc": r["results"]["best_val_acc"],
                         "epochs": r["results"]["epochs_run"], "train_seconds": r["results"]["train_seconds"],
                         "params": r["results"]["params"], "flops": r["results"]["flops"]})
    return pd.DataFrame(rows)


def histories_frame(runs: dict[str, list[dict]]) -> pd.DataFrame:
    return pd.concat([r["history"].assign(config=config, seed=seed)
                      for config, items in runs.items() for seed, r in enumerate(items)], ignore_index=True)


def per_class_frame(runs: dict[str, list[dict]]) -> pd.DataFrame:
    rows = [{"config": config, "class": cls, "acc": acc}
            for config, items in runs.items() for r in items for cls, acc in r["test"]["per_class_acc"].items()]
    df = pd.DataFrame(rows)
    return df.groupby(["config", "class"], sort=False)["acc"].agg(["mean", "std"]).reset_index()


def fixed_and_broken(runs: dict[str, list[dict]]) -> tuple[np.ndarray, np.ndarray]:
    """Test images right by majority over seeds: (fixed by tuning, broken by it)."""
    def correct(items):
        return np.stack([(r["predictions"]["pred"] == r["predictions"]["label"]).numpy() for r in items])

    base_ok = correct(runs["baseline"]).mean(0) > 0.5
    tuned_ok = correct(runs["tuned"]).mean(0) > 0.5
    return np.nonzero(~base_ok & tuned_ok)[0], np.nonzero(base_ok & ~tuned_ok)[0]


def config_table(baseline: TrainConfig, tuned: TrainConfig) -> pd.DataFrame:
    def flat(cfg: TrainConfig) -> dict:
        d = cfg.to_dict()
        return {**{k: v for k, v in d.items() if not isinstance(v, dict)}, **d["model"],
                **{k: v for k, v in d["data"].items() if k not in ("data_dir", "cache_dir")}}

    a, b = flat(baseline), flat(tuned)
    return pd.DataFrame([{"field": k, "baseline": str(a[k]), "tuned": str(b[k]), "differs": a[k] != b[k]}
                         for k in a if k not in ("seed",)])


# ---------------------------------------------------------------- write


def _fmt_pct(x: float) -> str:
    return f"{100 * x:.2f}%"


def headline(cmp, table: pd.DataFrame) -> tuple[str, str]:
    """Markdown table and verdict sentence of the comparison."""
    g = table.groupby("config")
    lines = ["| | baseline | tuned |", "|---|---|---|",
             f"| test accuracy (mean ± std, {cmp.n_baseline} and {cmp.n_tuned} seeds) | "
             f"{_fmt_pct(cmp.baseline_mean)} ± {_fmt_pct(cmp.baseline_std)} | "
             f"{_fmt_pct(cmp.tuned_mean)} ± {_fmt_pct(cmp.tuned_std)} |",
             f"| parameters | {int(g['params'].first()['baseline']):,} | {int(g['params'].first()['tuned']):,} |",
             f"| forward MFLOPs / image | {g['flops'].first()['baseline'] / 1e6:.1f} | "
             f"{g['flops'].first()['tuned'] / 1e6:.1f} |",
             f"| training time per run (mean) | {g['train_seconds'].mean()['baseline'] / 60:.1f} min | "
             f"{g['train_seconds'].mean()['tuned'] / 60:.1f} min |"]
    diff = (f"Difference (tuned - baseline): {100 * cmp.difference:+.2f} points, 95% CI "
            f"[{100 * cmp.ci_low:+.2f}, {100 * cmp.ci_high:+.2f}] (Welch), bootstrap "
            f"[{100 * cmp.bootstrap_low:+.2f}, {100 * cmp.bootstrap_high:+.2f}]; Welch's t = "
            f"{cmp.t_statistic:.2f}, p = {cmp.p_value:.3g}.")
    if cmp.significant:
        verdict = f"The {'tuned' if cmp.difference > 0 else 'baseline'} configuration is better; " \
                  "the interval excludes zero."
    else:
        verdict = ("The two differ by less than the seed-to-seed noise: the interval includes zero, "
                   "so this report cannot say that tuning helped.")
    return "\n".join(lines), f"{diff} {verdict}"


def write_report(out: Path, md_table: str, verdict: str, meta: dict, table: pd.DataFrame,
                 configs: pd.DataFrame, figures: dict) -> None:
    import plotly.io
    import plotly.offline

    (out / "figures").mkdir(parents=True, exist_ok=True)
    # kaleido renders the PNGs with a Chromium; point it at the system one (Debian's `chromium`).
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium:
        os.environ.setdefault("BROWSER_PATH", chromium)
    table.to_csv(out / "comparison.csv", index=False)
    (out / "plotly.min.js").write_text(plotly.offline.get_plotlyjs())
    # One call renders every PNG with one browser (a browser per figure takes ~2 s each).
    plotly.io.write_images(list(figures.values()), [out / "figures" / f"{n}.png" for n in figures],
                           width=[f.layout.width or 1000 for f in figures.values()],
                           height=[f.layout.height or 500 for f in figures.values()])
    study_budget = meta["study_budget"] or {}
    budget = (f"Budget: {meta['epochs']} epochs per run on the whole train split "
              f"({meta['train_images']:,} images), seeds 0-{meta['seeds'] - 1}, retrained on {meta['device']}; "
              f"study trials: up to {study_budget.get('max_epochs', '?')} epochs on "
              f"{study_budget.get('train_fraction', 1.0):.1%} of the train split.")
    if "throughput" in study_budget:
        budget += (f" Both were sized to the {study_budget['throughput']['train']:.0f} training images/s measured "
                   f"when the study was created (study target {study_budget['target_minutes']:.0f} min, "
                   f"report target {REPORT_MINUTES.get(meta['preset'], '?')} min).")
    spent = meta["spent"]
    compute = (f"The study: {spent['trials']} trials ({spent['complete']} complete, {spent['pruned']} pruned = "
               f"{spent['pruned_share']:.0%} of finished, {spent['failed']} failed), {spent['trial_epochs']} "
               f"trial-epochs, {spent['train_seconds'] / 3600:.2f} h of training.")
    md = [f"# Baseline vs tuned: study `{meta['study']}`", "", md_table, "", verdict, "", budget, "",
          compute, "", f"Baseline = trial {meta['baseline_trial']}, tuned = trial {meta['best_trial']}.",
          "", "## Configurations (differences in bold)", "", "| field | baseline | tuned |", "|---|---|---|"]
    md += [f"| {'**' + r.field + '**' if r.differs else r.field} | {r.baseline} | {r.tuned} |"
           for r in configs.itertuples()]
    md += ["", "## Figures", ""] + [f"![{n}](figures/{n}.png)" for n in figures]
    (out / "summary.md").write_text("\n".join(md) + "\n")

    rows = "".join(f"<tr class='{'diff' if r.differs else ''}'><td>{html.escape(r.field)}</td>"
                   f"<td>{html.escape(r.baseline)}</td><td>{html.escape(r.tuned)}</td></tr>"
                   for r in configs.itertuples())
    head_html = _md_table_to_html(md_table)
    divs = "".join(f"<section><div class='fig' id='fig-{n}'>"
                   f"{fig.to_html(full_html=False, include_plotlyjs=False, div_id=f'plot-{n}')}</div></section>"
                   for n, fig in figures.items())
    page = f"""<!DOCTYPE html><html><head><meta charset="utf-8">
<title>Baseline vs tuned: {html.escape(meta['study'])}</title><script src="plotly.min.js"></script>
<style>body{{font-family:sans-serif;max-width:1200px;margin:auto;padding:1em}}table{{border-collapse:collapse}}
td,th{{border:1px solid #ccc;padding:4px 8px}}tr.diff{{background:#fff3c4;font-weight:bold}}</style></head>
<body><h1>Baseline vs tuned: study <code>{html.escape(meta['study'])}</code></h1>{head_html}
<p><b>{html.escape(verdict)}</b></p><p>{html.escape(budget)}</p><p>{html.escape(compute)}</p>
<h2>Configurations</h2><table><tr><th>field</th><th>baseline (trial {meta['baseline_trial']})</th>
<th>tuned (trial {meta['best_trial']})</th></tr>{rows}</table><h2>Figures</h2>{divs}</body></html>"""
    (out / "report.html").write_text(page)


def _md_table_to_html(md: str) -> str:
    lines = [line.strip("|").split("|") for line in md.splitlines() if not line.startswith("|---")]
    cells = ["<tr>" + "".join(f"<td>{html.escape(c.strip())}</td>" for c in row) + "</tr>" for row in lines]
    return "<table>" + "".join(cells) + "</table>"


# ---------------------------------------------------------------- main


def build(study_name: str | None, storage: str, seeds: int, epochs: int | None, out_root: Path,
          runs_root: Path) -> Path:
    from reports.figures import (  # plotly: not needed by --runs-only
        confusion_figure,
        curves_figure,
        image_grid_figure,
        per_class_figure,
        study_figures,
    )

    study = open_study(storage, study_name)
    study_name = study.study_name
    configs, plan = report_configs(study, epochs, seeds)
    dirs = ensure_runs(configs, seeds, runs_root)
    runs = {name: [load_run(d) for d in ds] for name, ds in dirs.items()}

    table = comparison_frame(runs)
    cmp = compare(table[table.config == "baseline"]["test_acc"].tolist(),
                  table[table.config == "tuned"]["test_acc"].tolist())
    md_table, verdict = headline(cmp, table)
    trials = trials_table(study)
    fixed, broken = fixed_and_broken(runs)
    data = prepare_data(configs["tuned"].data)
    classes = list(runs["tuned"][0]["test"]["per_class_acc"])
    preds = runs["tuned"][0]["predictions"]

    def captions(idx, predicted=True):
        return [f"{classes[preds['label'][i]]}→{classes[preds['pred'][i]]}" if predicted
                else classes[preds["label"][i]] for i in idx]

    # Misclassified by seed 0 (whose predictions the captions show), spread over the ordered test set.
    wrong = np.nonzero((preds["pred"] != preds["label"]).numpy())[0]
    wrong = wrong[:: max(1, len(wrong) // 16)][:16]
    figures = {
        "curves": curves_figure(histories_frame(runs)),
        "per_class": per_class_figure(per_class_frame(runs)),
        "confusion_baseline": confusion_figure(np.array(runs["baseline"][0]["test"]["confusion"]), classes,
                                               "Confusion matrix, baseline (seed 0)"),
        "confusion_tuned": confusion_figure(np.array(runs["tuned"][0]["test"]["confusion"]), classes,
                                            "Confusion matrix, tuned (seed 0)"),
        "misclassified_tuned": image_grid_figure(data.test.x[wrong].numpy(), captions(wrong),
                                                 "Misclassified by the tuned model (true→predicted, seed 0)"),
        "fixed_by_tuning": image_grid_figure(data.test.x[fixed[:16]].numpy(), captions(fixed[:16], predicted=False),
                                             f"{len(fixed)} test images tuning fixed (majority over seeds)"),
        "broken_by_tuning": image_grid_figure(data.test.x[broken[:16]].numpy(), captions(broken[:16], predicted=False),
                                              f"{len(broken)} test images tuning broke (majority over seeds)"),
        **study_figures(study),
    }
    meta = {"study": study_name, **plan, "preset": study.user_attrs.get("preset"), "seeds": seeds,
            "train_images": len(data.train),
            "study_budget": study.user_attrs.get("budget"), "spent": compute_spent(trials),
            "device": json.loads((runs["tuned"][0]["dir"] / "config.json").read_text())["provenance"]["device"]}
    out = out_root / study_name
    write_report(out, md_table, verdict, meta, table, config_table(configs["baseline"], configs["tuned"]),
                 figures)
    (out / "comparison.json").write_text(json.dumps({**cmp.to_dict(), **meta}, indent=2, default=str) + "\n")
    print(md_table + "\n\n" + verdict)
    return out


def main(argv: Sequence[str] | None = None) -> int:
    p = ArgParser(prog="python -m reports build", description="Build the baseline-vs-tuned report.")
    p.add_argument("--study-name", default=None, help="default: the storage's only study")
    p.add_argument("--storage", default=DEFAULT_STORAGE)
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--epochs", type=int, default=None, help="default: by the study's preset")
    p.add_argument("--out", default="results/reports")
    p.add_argument("--runs-dir", default="runs/reports", help="cache of retrained runs")
    p.add_argument("--runs-only", action="store_true",
                   help="retrain and test the runs into the cache, write no report (needs no plotly)")
    try:
        args = p.parse_args(argv)
        if args.seeds < 2:
            raise UsageError(f"--seeds must be >= 2 for a test, got {args.seeds}")
        if args.epochs is not None and args.epochs <= 0:
            raise UsageError(f"--epochs must be > 0, got {args.epochs}")
        if args.runs_only:
            configs, _ = report_configs(open_study(args.storage, args.study_name), args.epochs, args.seeds)
            ensure_runs(configs, args.seeds, Path(args.runs_dir))
            print(f"runs ready in {args.runs_dir}; build the report from them without --runs-only")
            return 0
        out = build(args.study_name, args.storage, args.seeds, args.epochs, Path(args.out),
                    Path(args.runs_dir))
    except UsageError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"wrote {out}/report.html, summary.md, comparison.csv, figures/")
    return 0


if __name__ == "__main__":
    sys.exit(main())
