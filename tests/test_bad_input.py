"""Bad input for every command line: one line on stderr, exit status 2, nothing written.

``CASES`` is the table of every bad input tried; ``tests/README.md`` shows it
(``python tests/test_bad_input.py`` rewrites that table; a test checks it is current).
Placeholders in an argument: ``{tmp}`` a fresh folder, ``{run}`` a trained tiny run,
``{junk}`` a folder holding no data, ``{db}`` a SQLite study database holding study ``s``.
``study run`` gets a tiny base config on a tiny image folder unless a case gives its own.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# (command, arguments, the message's key phrase, why it is bad)
CASES = [
    ("cifar.train", "--lr -1", "lr must be > 0, got -1.0", "negative learning rate"),
    ("cifar.train", "--lr abc", "cannot read 'abc' as float", "not a number"),
    ("cifar.train", "--batch_size 0", "batch_size must be > 0, got 0", "empty batch"),
    ("cifar.train", "--epochs 0", "epochs must be > 0, got 0", "no epochs"),
    ("cifar.train", "--dropout 1.5", "dropout must be in [0, 1), got 1.5", "dropout out of range"),
    ("cifar.train", "--optimizer lion", "unknown optimizer 'lion'; choose one of sgd", "unknown optimizer"),
    ("cifar.train", "--schedule poly", "unknown schedule 'poly'; choose one of", "unknown schedule"),
    ("cifar.train", "--stem pyramid", "unknown stem 'pyramid'", "unknown stem"),
    ("cifar.train", "--alternating_flip true --pipeline torchvision", "alternating_flip needs pipeline tensor",
     "incompatible options"),
    ("cifar.train", "--colour red", "unknown config key: 'colour'", "unknown key"),
    ("cifar.train", "--lrr 0.1", "unknown config key: 'lrr'; did you mean 'lr'?", "a typo in a key"),
    ("cifar.train", "--set lr", "--set takes KEY=VALUE, got 'lr'", "--set without a value"),
    ("cifar.train", "--config /nonexistent.json", "cannot read config", "missing config file"),
    ("cifar.train", "stray", "unexpected argument 'stray'", "positional junk"),
    ("cifar.train", "--resume /nonexistent", "has no last.pt", "nothing to resume"),
    ("cifar.train", "--resume {run} --lr 0.1", "--resume takes the run's own config", "resume with changes"),
    ("cifar.train", "--data_dir {junk} --out {tmp}/out", "holds no CIFAR-10 data", "no data set there"),
    ("cifar.evaluate", "{tmp}", "no checkpoint at", "not a run directory"),
    ("cifar.evaluate", "{tmp}/garbage", "cannot read checkpoint", "a corrupt best.pt"),
    ("cifar.evaluate", "{run} --tta 5", "argument --tta: invalid choice: 5", "unknown TTA level"),
    ("cifar.evaluate", "", "the following arguments are required: run_dir", "no run directory"),
    ("cifar.export", "{tmp}/missing", "no run directory", "missing run directory"),
    ("cifar.export", "{tmp}", "no checkpoint at", "run directory without best.pt"),
    ("cifar.export", "{run} --tta 7", "argument --tta: invalid choice: 7", "unknown TTA level"),
    ("cifar.serve", "", "the following arguments are required: --model", "no model"),
    ("cifar.serve", "--model {tmp}/none.onnx", "no model file", "missing model file"),
    ("cifar.serve", "--model {tmp}/bad.onnx", "cannot load ONNX model", "a corrupt ONNX file"),
    ("cifar.serve", "--model {tmp}/some.json", "is neither a model.onnx nor a .pt checkpoint", "not a model file"),
    ("cifar.serve", "--model {tmp}/garbage/best.pt", "cannot read checkpoint", "a corrupt checkpoint"),
    ("cifar.serve", "--model {run}/best.pt --port 0", "argument --port: wants an integer in [1, 65535], got '0'",
     "impossible port"),
    ("cifar.serve", "--model {run}/best.pt --max-files 0",
     "argument --max-files: wants an integer in [1, 10000], got '0'",
     "no files allowed"),
    ("study run", "--sampler grid", "invalid choice: 'grid'", "unknown sampler"),
    ("study run", "--pruner wilcoxon", "invalid choice: 'wilcoxon'", "unknown pruner"),
    ("study run", "--preset huge", "invalid choice: 'huge'", "unknown preset"),
    ("study run", "--space galaxy", "invalid choice: 'galaxy'", "unknown search space"),
    ("study run", "--n-trials 0", "argument --n-trials: wants an integer in [1, 1000000], got '0'", "nothing to do"),
    ("study run", "--n-trials -3", "argument --n-trials: wants an integer in [1, 1000000], got '-3'", "negative count"),
    ("study run", "--workers 0", "argument --workers: wants an integer in [1, 1024], got '0'", "no workers"),
    ("study run", "--target-epochs 0", "argument --target-epochs: wants an integer in [1, 10000], got '0'",
     "no target"),
    ("study run", "--set epochs=3", "set the epochs with --target-epochs", "epochs that are not the target's"),
    ("study run", "--heartbeat-interval 5 --grace-period 5", "need --heartbeat-interval < --grace-period",
     "grace period not longer than the heartbeat"),
    ("study run", "--timeout -5", "argument --timeout: wants a number in (0, 100000000], got '-5'", "negative timeout"),
    ("study run", "--timeout nan", "argument --timeout: wants a number in (0, 100000000], got 'nan'", "NaN timeout"),
    ("study run", "--minutes 0", "argument --minutes: wants a number in (0, 1000000], got '0'", "no minutes"),
    ("study run", "--preset smoke --minutes 60", "--minutes sizes the job to this machine, which the smoke preset "
                  "does not do", "minutes on an unsized preset"),
    ("study run", "--objectives val_acc,speed", "unknown objective 'speed'", "unknown objective"),
    ("study run", "--objectives latency", "must start with val_acc", "a cost without val_acc"),
    ("study run", "--objectives val_acc,latency --pruner hyperband", "cannot prune a study of several objectives",
     "a pruner where Optuna cannot prune"),
    ("study run", "--objectives val_acc,flops --constraint latency<=3", "needs it among --objectives",
     "a constraint on no objective"),
    ("study run", "--constraint latency<=3", "needs it among --objectives",
     "a constraint on a new study of val_acc alone (no database left behind)"),
    ("study run", "--pruner pareto", "it needs cost --objectives", "pruning by cost a new study of val_acc alone"),
    ("study run", "--objectives val_acc,latency --constraint latency<3", "NAME<=LIMIT", "malformed constraint"),
    ("study run", "--objectives val_acc,latency --constraint latency<=nan", "NAME<=LIMIT", "NaN constraint"),
    ("study run", "--space cost --objectives val_acc --set widths=32,64,64", "only a study with cost --objectives",
     "the cost space's TTA level without a cost objective"),
    ("study run", "--set lr", "--set takes KEY=VALUE, got 'lr'", "override without a value"),
    ("study run", "--set lr=-1", "lr must be > 0", "bad base override"),
    ("study run", "--set lr=nan", "config key 'lr': 'nan' is not a number in", "NaN base override"),
    ("cifar.train", "--epochs 1e9", "config key 'epochs': cannot read '1e9' as int", "epochs in float notation"),
    ("study run", "--set batch_size=16", "outside the default search space in batch_size", "baseline off the grid"),
    ("study run", "--set data_dir={junk}", "holds no CIFAR-10 data", "no data set there (checked first)"),
    ("study run", "--set val_size=100000", "val_size must be in [0, 60)", "more validation images than data"),
    ("study run", "--storage not-a-url", "malformed storage URL", "malformed URL"),
    ("study run", "--storage postgresql://nobody@127.0.0.1:1/none", "cannot open storage", "unreachable server"),
    ("study run", "--storage sqlite:////nonexistent-dir/x.db", "does not exist", "impossible file"),
    ("study show", "--study-name s --storage sqlite:///{tmp}/none.db", "no study database at", "no database"),
    ("study show", "--study-name nope --storage sqlite:///{db}", "no study 'nope'", "unknown study"),
    ("study show", "--storage postgresql://u:secret@127.0.0.1:1/none", "postgresql://u:***@127.0.0.1:1/none",
     "a password in an unreachable URL: masked"),
    ("study dashboard", "--port 0", "argument --port: wants an integer in [1, 65535], got '0'", "no port"),
    ("study dashboard", "--storage sqlite:///{tmp}/none.db", "no study database at", "no database"),
    ("reports build", "--race-rounds 1", "argument --race-rounds: wants an integer in [2, 1000], got '1'", "one round"),
    ("reports build", "--looks 8,6", "--looks wants increasing pair counts", "looks out of order"),
    ("reports build", "--looks 1", "--looks wants increasing pair counts", "a look of one pair"),
    ("reports build", "--margin 0", "argument --margin: wants a number in (0, 0.5], got '0'", "no margin"),
    ("reports build", "--margin nan", "argument --margin: wants a number in (0, 0.5], got 'nan'", "NaN margin"),
    ("reports build", "--candidates 0", "argument --candidates: wants an integer in [1, 100], got '0'",
     "nothing to select among"),
    ("reports build", "--storage sqlite:///{tmp}/none.db", "no study database at", "no database"),
    ("reports build", "--study-name nope --storage sqlite:///{db}", "no study 'nope'", "unknown study"),
]


def main_of(command: str):
    """The command's main: "study run" is study.run's, "cifar.train" cifar.train's."""
    import importlib

    return importlib.import_module(command.replace(" ", ".")).main


@pytest.fixture(scope="module")
def places(tmp_path_factory, tiny_run):
    import optuna

    from tests.conftest import make_image_folder, tiny_config

    root = tmp_path_factory.mktemp("bad")
    (root / "junk").mkdir()
    (root / "junk" / "x.txt").write_text("x")
    db = root / "study.db"
    study = optuna.create_study(study_name="s", storage=f"sqlite:///{db}", direction="maximize")
    study.tell(study.ask(), 0.5)
    folder = make_image_folder(root / "imgs", n_train=60, n_test=9)
    tiny_config(data_dir=str(folder), cache_dir=str(root / "cache"), val_size=12, batch_size=256,
                optimizer="sgd1024", lr=8.8).to_json(root / "tiny.json")
    return {"run": str(tiny_run), "junk": str(root / "junk"), "db": str(db), "tiny": str(root / "tiny.json")}


@pytest.mark.parametrize("command, args, message, why", CASES, ids=[f"{c[0]}: {c[3]}" for c in CASES])
def test_bad_input_is_one_line_and_exit_2(command, args, message, why, places, tmp_path, capsys):
    (tmp_path / "garbage").mkdir()
    (tmp_path / "garbage" / "best.pt").write_bytes(b"not a checkpoint")
    (tmp_path / "bad.onnx").write_bytes(b"not a model")
    (tmp_path / "some.json").write_text("{}")
    argv = args.format(tmp=tmp_path, **places).split()
    if command == "study run":  # a study's storage and base config, unless the case gives its own
        argv += [] if "--storage" in argv else ["--storage", f"sqlite:///{tmp_path / 'new.db'}"]
        argv += ["--config", places["tiny"]]
    before = sorted(p.name for p in tmp_path.iterdir())
    assert main_of(command)(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err and err.count("\n") == 1, err
    assert "Traceback" not in err
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # nothing created, no database either


# The sweep: every numeric option of every command line (argparse's typed options, and every numeric
# config key that cifar.train takes as --KEY) with each probe. A probe is rejected as above unless
# LEGAL names it, in which case the option's own parsing must accept it (the command is not run).
PROBES = ("0", "-1", "nan", "1000000000000")
COMMANDS = ("cifar.evaluate", "cifar.export", "cifar.serve", "study run", "study show", "study dashboard",
            "reports build")
LEGAL = {("cifar.evaluate", "--tta", "0"), ("cifar.export", "--tta", "0"), ("study run", "--seed", "0")}
LEGAL |= {("cifar.train", f"--{key}", "0") for key in (
    "val_size", "split_seed", "crop_padding", "cutout", "num_workers", "stem_width", "dropout", "momentum",
    "muon_momentum", "weight_decay", "warmup_epochs", "warmup_fraction", "lr_start", "lr_floor",
    "whiten_bias_epochs", "lookahead_decay", "lookahead_start", "label_smoothing", "grad_clip",
    "early_stop_patience", "seed")}


def parser_of(command: str, monkeypatch):
    """The ArgParser that the command's main builds (caught at its parse_args, nothing run)."""
    from cifar.cli import ArgParser

    seen = []

    def grab(self, *args, **kwargs):
        seen.append(self)
        raise SystemExit(0)

    with monkeypatch.context() as m:
        m.setattr(ArgParser, "parse_args", grab)
        with pytest.raises(SystemExit):
            main_of(command)([])
    return seen[0]


def numeric_options(monkeypatch) -> list[tuple[str, str, object]]:
    """(command, option, its parsing) of every numeric option; cifar.train's parse through the config."""
    from cifar.config import TrainConfig, apply_overrides, flatten

    found = []
    for command in COMMANDS:
        for action in parser_of(command, monkeypatch)._actions:
            numeric = action.type in (int, float) or hasattr(action.type, "number_range")
            if numeric and action.option_strings:
                found.append((command, action.option_strings[0], action))
    for key, value in flatten(TrainConfig()).items():
        if isinstance(value, (int, float, tuple)) and not isinstance(value, bool):
            found.append(("cifar.train", f"--{key}", lambda text, key=key: apply_overrides(TrainConfig(), {key: text})))
    return found


def test_every_numeric_option_refuses_zero_negative_nan_and_huge(places, tmp_path, monkeypatch, capsys):
    options = numeric_options(monkeypatch)
    assert len({o for c, o, _ in options if c == "cifar.train"}) >= 35 and len(options) >= 50
    monkeypatch.chdir(tmp_path)  # a command that wrongly ran would write here
    for command, option, parse in options:
        if command != "cifar.train":  # an option typed int or float, unbounded, is a gap the sweep reports
            assert parse.choices or hasattr(parse.type, "number_range"), f"{command} {option}: no range"
        for probe in PROBES:
            if (command, option, probe) in LEGAL:  # accepted by the option's own parsing, not run
                if command == "cifar.train":
                    parse(probe)
                elif parse.choices is not None:
                    assert int(probe) in parse.choices, (command, option, probe)
                else:
                    parse.type(probe)
                continue
            assert main_of(command)([option, probe]) == 2, f"{command} {option} {probe} accepted"
            err = capsys.readouterr().err
            assert err.startswith("error: ") and err.count("\n") == 1 and "Traceback" not in err, err
            assert option.lstrip("-").replace("-", "_") in err.replace("-", "_") or "invalid" in err, err
    assert list(tmp_path.iterdir()) == []


def table() -> str:
    rows = ["| command | arguments | why it is bad | what it gets (exit 2 and one line) |", "|---|---|---|---|"]
    rows += [f"| `python -m {c}` | `{a}` | {w} | `error: ...{m}...` |" for c, a, m, w in CASES]
    return "\n".join(rows)


def sweep_table() -> str:
    with pytest.MonkeyPatch.context() as m:
        options = numeric_options(m)
    rows = ["| command | numeric options | refused: exit 2 and one line | legal, not run |", "|---|---|---|---|"]
    for command in dict.fromkeys(c for c, _, _ in options):
        names = [o for c, o, _ in options if c == command]
        legal = sorted(f"`{o} {p}`" for c, o, p in LEGAL if c == command)
        rows.append(f"| `python -m {command}` | {len(names)}: {', '.join(f'`{o}`' for o in names)} | "
                    f"`{' '.join(PROBES)}` but the legal ones | {', '.join(legal) or 'none'} |")
    return "\n".join(rows)


def test_tests_readme_lists_every_case():
    text = (ROOT / "tests" / "README.md").read_text()
    assert table() in text and len(CASES) >= 30
    assert sweep_table() in text


if __name__ == "__main__":  # rewrite the tables in tests/README.md
    sys.path.insert(0, str(ROOT))
    path = ROOT / "tests" / "README.md"
    head, rest = path.read_text().split("<!-- bad-input -->\n", 1)
    tail = rest.split("<!-- /bad-input -->", 1)[1]
    tail, sweep_tail = tail.split("<!-- numeric-sweep -->\n", 1)[0], tail.split("<!-- /numeric-sweep -->", 1)[1]
    path.write_text(f"{head}<!-- bad-input -->\n{table()}\n<!-- /bad-input -->{tail}<!-- numeric-sweep -->\n"
                    f"{sweep_table()}\n<!-- /numeric-sweep -->{sweep_tail}")
    sys.exit(0)


@pytest.mark.parametrize("command", ["cifar.train", "cifar.evaluate", "cifar.export", "cifar.serve", "study run",
                                     "study show", "reports build"])
def test_every_cli_help_shows_its_defaults(command, capsys):
    with pytest.raises(SystemExit) as done:
        main_of(command)(["--help"])
    assert done.value.code in (0, None)
    out = capsys.readouterr().out
    assert "default" in out
    if command == "cifar.train":  # every config key, with its type, default and meaning
        from cifar.cli import field_docs
        from cifar.config import TrainConfig, flatten

        for name in flatten(TrainConfig()):
            assert f"  {name} " in out, name
        assert all(meaning for *_, meaning in field_docs())
        assert "  epochs               int    14 " in out  # the SmallCNN's, as configs/smallcnn.json
