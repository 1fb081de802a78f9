"""Structure: layering, module size and docstrings, public imports, the README's tree and search-space table,
the docs' measured blocks."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

from cifar.registry import Registry
from study.search_space import reference_table, space_table

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("cifar", "study", "reports")
MODULES = sorted(p for pkg in PACKAGES for p in (ROOT / pkg).glob("*.py"))
BENCH = sorted((ROOT / "bench").glob("*.py"))
MAX_LINES = 300
# What each package may not import (the layering: cifar <- study <- reports).
FORBIDDEN = {"cifar": ("study", "reports", "optuna"), "study": ("reports",), "reports": ("study.run",)}


def imports_of(path: Path) -> list[tuple[str, list[str]]]:
    """(module, names) of every import statement in a file, at any depth."""
    out = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out += [(a.name, []) for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module:
            out.append((node.module, [a.name for a in node.names]))
    return out


@pytest.mark.parametrize("path", [*MODULES, *BENCH], ids=lambda p: f"{p.parent.name}/{p.name}")
def test_module_is_small_and_says_what_it_owns(path):
    assert len(path.read_text().splitlines()) <= MAX_LINES
    assert ast.get_docstring(ast.parse(path.read_text())), "opens with a docstring"


@pytest.mark.parametrize("path", MODULES, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_layering(path):
    package = path.parent.name
    for module, _ in imports_of(path):
        for banned in FORBIDDEN[package]:
            assert module != banned and not module.startswith(banned + "."), f"{package} imports {module}"


def module_graph(package: str) -> dict[str, set[str]]:
    """module -> the modules of the same package it imports (anywhere in it, type-only imports too)."""
    own = {p.stem for p in (ROOT / package).glob("*.py")}
    graph = {}
    for path in (ROOT / package).glob("*.py"):
        named = [m.split(".")[1:2] + [f"{m.split('.', 1)[1]}.{n}" if "." in m else n for n in names]
                 for m, names in imports_of(path) if m.split(".")[0] == package]
        graph[path.stem] = {n.split(".")[0] for ns in named for n in ns} & own - {path.stem}
    return graph


def cycle_in(graph: dict[str, set[str]]) -> list[str] | None:
    """One import circle of ``graph`` (depth-first, colouring), or None."""
    state: dict[str, int] = {}  # 1: on the path, 2: done

    def visit(node: str, path: list[str]) -> list[str] | None:
        state[node] = 1
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            if not state.get(nxt) and (found := visit(nxt, path + [nxt])):
                return found
        state[node] = 2
        return None

    return next((c for n in sorted(graph) if not state.get(n) and (c := visit(n, [n]))), None)


@pytest.mark.parametrize("package", [*PACKAGES, "bench"])
def test_no_import_circle_inside_a_package(package):
    """cifar/config.py, the leaf, declares the choice names that the registries check at import."""
    assert cycle_in({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]  # the check can fail
    assert cycle_in(module_graph(package)) is None


@pytest.mark.parametrize("path", [*MODULES, *BENCH, *sorted((ROOT / "tests").glob("*.py"))],
                         ids=lambda p: f"{p.parent.name}/{p.name}")
def test_no_private_name_imported_from_another_package(path):
    own = path.parent.name
    for module, names in imports_of(path):
        if module.split(".")[0] in PACKAGES and module.split(".")[0] != own:
            assert not [n for n in names if n.startswith("_")], f"private import from {module}"


def doc_block(page: str, start: str, end: str) -> str:
    text = (ROOT / page).read_text()
    return text.split(start, 1)[1].split(end, 1)[0]


def test_readme_structure_lists_every_module_and_only_those():
    tree = doc_block("docs/structure.md", "```\n", "```")
    listed, package = set(), None
    for line in tree.splitlines():
        if m := re.match(r"([a-z]+)/\s", line):
            package = m.group(1)
        elif m := re.match(r"  ([a-z_]+\.py)\s", line):
            listed.add(f"{package}/{m.group(1)}")
    actual = {f"{p.parent.name}/{p.name}" for p in MODULES if p.name not in ("__init__.py", "__main__.py")}
    assert listed == actual


def test_readme_search_space_table_is_the_declared_one():
    block = doc_block("docs/study.md", "<!-- space-table", "<!-- /space-table -->")
    assert block.split("\n", 1)[1].strip() == space_table()
    assert doc_block("docs/study.md", "<!-- reference-table", "<!-- /reference-table -->").split(
        "\n", 1)[1].strip() == reference_table()


def test_registry_lists_the_choices_for_an_unknown_name():
    r = Registry("colour", {"red": 1, "blue": 2})
    assert r.get("blue") == 2 and r.names == ("red", "blue") and "red" in r
    with pytest.raises(ValueError, match=r"^unknown colour 'green'; choose one of red, blue$"):
        r.get("green")


@pytest.mark.parametrize("lookup, message", [
    ("cifar.optim:OPTIMIZERS", "unknown optimizer 'lion'; choose one of sgd, sgd1024, muon, adam, adamw, rmsprop"),
    ("cifar.optim:SCHEDULES", "unknown schedule 'lion'; choose one of onecycle, cosine, step, constant"),
    ("cifar.model:BLOCKS", "unknown block 'lion'; choose one of plain, residual"),
    ("cifar.pipeline:PIPELINES", "unknown pipeline 'lion'; choose one of tensor, torchvision"),
    ("study.search_space:SAMPLERS", "unknown sampler 'lion'; choose one of tpe, random, gp"),
    ("study.pruning:PRUNERS", "unknown pruner 'lion'; choose one of hyperband, halving, median, none"),
    ("study.search_space:SPACES", "unknown search space 'lion'; choose one of default, extended"),
    ("study.presets:PRESETS", "unknown preset 'lion'; choose one of smoke, cpu, gpu"),
])
def test_every_string_choice_is_a_registry(lookup, message):
    import importlib

    module, name = lookup.split(":")
    with pytest.raises(ValueError, match=re.escape(message)):
        getattr(importlib.import_module(module), name).get("lion")


def test_measured_blocks_are_current():
    from bench import blocks

    owned = blocks.collect()
    pages = {p: p.read_text() for p in blocks.pages()}
    blocks.check_placement(owned, list(pages.values()))  # every block owned, every owned block placed
    for path, text in pages.items():
        assert blocks.render(text, owned) == (text, []), f"a block in {path} differs from its results file: " \
            "run make readme"


PLACED, UNPLACED = "<!-- results:a -->x<!-- /results:a -->", "<!-- results:b --><!-- /results:b -->"


@pytest.mark.parametrize("pages, message", [
    ([PLACED, UNPLACED, "<!-- results:c -->x<!-- /results:c -->"], "no module in OWNERS declares: c"),  # unowned
    ([PLACED], "placed in no page: b"),                                  # owned, in no page
    (["<!-- results:a -->x", UNPLACED], "without their pair in the pages: a"),  # a marker without its end
])
def test_a_block_nobody_owns_or_nowhere_placed_is_an_error(pages, message):
    from bench import blocks

    with pytest.raises(SystemExit, match=message):
        blocks.check_placement({"a": str, "b": str}, pages)


DOC_PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md")), ROOT / "results" / "README.md",
             ROOT / "tests" / "README.md"]


@pytest.mark.parametrize("page", DOC_PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_relative_link_resolves(page):
    text = page.read_text()
    anchors = {re.sub(r"[^a-z0-9 -]", "", h.lower()).strip().replace(" ", "-")
               for h in re.findall(r"^#+ (.+)$", text, re.M)}
    for target in re.findall(r"\]\(([^)\s]+)\)", text):
        if target.startswith(("http://", "https://", "mailto:")):
            continue
        path, _, anchor = target.partition("#")
        if path:
            assert (page.parent / path).exists(), f"{page.name}: {target}"
        elif anchor:
            assert anchor in anchors, f"{page.name}: #{anchor}"


def test_readme_is_a_front_page():
    assert len((ROOT / "README.md").read_text().splitlines()) <= 120


def test_the_code_makes_what_the_equivalence_dump_holds():
    """Configs, run keys, model costs, trial configs and presets as the committed dump (bench/equivalence.py,
    written by the code before the structure refactor): a refactor changed nothing a run depends on."""
    import importlib.util
    import json

    spec = importlib.util.spec_from_file_location("equivalence", ROOT / "bench" / "equivalence.py")
    equivalence = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(equivalence)
    committed = json.loads(equivalence.OUT.read_text())
    assert equivalence.difference(committed, equivalence.dump()) is None
    committed["fast"]["key"] = "0" * 40  # the check can fail
    assert equivalence.difference(committed, equivalence.dump()).startswith("/fast/key")
