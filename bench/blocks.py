"""The measured blocks of the README and docs/: collected from the modules that own them, placed in the pages.

A block sits between ``<!-- results:NAME -->`` and ``<!-- /results:NAME -->`` in
README.md or a page of docs/ (inside a sentence, or on lines of its own when it
has several lines). Its owner, the script that writes the results file it quotes,
declares it in a module-level ``BLOCKS``: NAME -> a function that returns the
block's text from that file. This engine only collects the ``BLOCKS`` of the
modules in ``OWNERS`` and rewrites every block's inside, so a figure in a block
cannot drift from its file; a page naming a block nobody owns, or a block placed
in no page, is an error. ``tests/test_structure.py`` checks that every block is current.

Usage:
    python bench/blocks.py          # rewrite the blocks (make readme)
    python bench/blocks.py --check  # exit 1 naming the stale blocks; write nothing
"""

from __future__ import annotations

import argparse
import importlib
import re
import sys
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

# The modules that own blocks, each with its ``BLOCKS``: the benchmarks, the training side's runs, the report.
OWNERS = ("bench.allocator", "bench.amp", "bench.fidelity", "bench.inference", "bench.load", "bench.memory",
          "bench.pareto_pruning", "bench.pareto_replay", "bench.pipeline", "bench.serve", "bench.step_profile",
          "bench.storage_cost", "bench.study", "bench.time_to_accuracy_blocks", "bench.training_runs",
          "bench.trial_phases", "bench.verdict_calibration", "reports.verdict")
BLOCK = re.compile(r"(<!-- results:(\w+) -->)(.*?)(<!-- /results:\2 -->)", re.S)
MARKER = re.compile(r"<!-- /?results:(\w+) -->")  # either end: a name whose pair is broken shows up here


def collect() -> dict[str, Callable[[], str]]:
    """Every owner's blocks, by name; two owners of one name is an error."""
    blocks: dict[str, Callable[[], str]] = {}
    for owner in OWNERS:
        owned = importlib.import_module(owner).BLOCKS
        if twice := sorted(blocks.keys() & owned.keys()):
            raise SystemExit(f"error: {owner} declares block(s) owned already: {', '.join(twice)}")
        blocks |= owned
    return blocks


def pages() -> list[Path]:
    """The pages that may hold blocks: the README and docs/."""
    return [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def check_placement(blocks: dict, texts: list[str]) -> None:
    """Fail loudly on a block a page names that nobody owns (or whose markers do not pair up), and on an
    owned block placed in no page."""
    named = {m[1] for text in texts for m in MARKER.finditer(text)}
    paired = {m[2] for text in texts for m in BLOCK.finditer(text)}
    if broken := sorted(named - paired):
        raise SystemExit(f"error: block markers without their pair in the pages: {', '.join(broken)}")
    if unowned := sorted(named - blocks.keys()):
        raise SystemExit(f"error: the pages name block(s) no module in OWNERS declares: {', '.join(unowned)}")
    if unplaced := sorted(blocks.keys() - named):
        raise SystemExit(f"error: block(s) placed in no page: {', '.join(unplaced)}")


def inside(make: Callable[[], str]) -> str:
    """A block's inside: its text, on lines of its own when it has several."""
    text = make()
    return f"\n{text}\n" if "\n" in text else text


def render(text: str, blocks: dict) -> tuple[str, list[str]]:
    """``text`` with every block's inside rewritten, and the names of the blocks that changed."""
    stale = []

    def rewrite(m: re.Match) -> str:
        new = inside(blocks[m[2]])
        if new != m[3]:
            stale.append(m[2])
        return m[1] + new + m[4]

    return BLOCK.sub(rewrite, text), stale


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="exit 1 naming the stale blocks; write nothing")
    args = parser.parse_args(argv)
    blocks, texts = collect(), {page: page.read_text() for page in pages()}
    check_placement(blocks, list(texts.values()))
    stale = []
    for page, text in texts.items():
        new, changed = render(text, blocks)
        stale += [f"{page.relative_to(ROOT)}: {name}" for name in changed]
        if changed and not args.check:
            page.write_text(new)
    if args.check:
        print(f"stale blocks (run make readme): {'; '.join(stale)}" if stale else "every block is current")
        return 1 if stale else 0
    return 0


if __name__ == "__main__":
    sys.exit(main())
