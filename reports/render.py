"""Rendering: one report document (sections of paragraphs, tables and figures) to Markdown and HTML, and PNGs.

The report's content is built once (``reports.content``) as a list of
``Section``; ``to_markdown`` and ``to_html`` render the same sections, so the
two files cannot say different things. The HTML page embeds the interactive
plotly figures (plotly.js from the file beside it, no network); the Markdown
links the PNGs that ``write_pngs`` renders with kaleido and a system Chromium.

Usage:
    page = to_html("Baseline vs tuned", sections, figures)
    write_pngs(figures, out / "figures")
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import jinja2
import plotly.graph_objects as go


@dataclass
class Paragraph:
    text: str
    strong: bool = False


@dataclass
class Table:
    header: list[str]
    rows: list[list[str]]
    highlight: list[bool] = field(default_factory=list)  # rows shown in bold / highlighted


@dataclass
class FigureRef:
    name: str  # a key of the figures dict handed to the renderers


@dataclass
class Section:
    title: str | None
    blocks: list[Paragraph | Table | FigureRef]


def _md_table(t: Table) -> list[str]:
    bold = t.highlight or [False] * len(t.rows)
    lines = ["| " + " | ".join(t.header) + " |", "|" + "---|" * len(t.header)]
    for row, strong in zip(t.rows, bold):
        cells = [f"**{c}**" if strong and i == 0 else c for i, c in enumerate(row)]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def to_markdown(title: str, sections: list[Section]) -> str:
    lines = [f"# {title}"]
    for s in sections:
        if s.title:
            lines += ["", f"## {s.title}"]
        for b in s.blocks:
            lines.append("")
            if isinstance(b, Paragraph):
                lines.append(b.text)
            elif isinstance(b, Table):
                lines += _md_table(b)
            else:
                lines.append(f"![{b.name}](figures/{b.name}.png)")
    return "\n".join(lines) + "\n"


PAGE = jinja2.Template("""<!DOCTYPE html><html><head><meta charset="utf-8">
<title>{{ title }}</title><script src="plotly.min.js"></script>
<style>body{font-family:sans-serif;max-width:1200px;margin:auto;padding:1em}table{border-collapse:collapse}
td,th{border:1px solid #ccc;padding:4px 8px}tr.diff{background:#fff3c4;font-weight:bold}</style></head>
<body><h1>{{ title }}</h1>
{% for s in sections %}{% if s.title %}<h2>{{ s.title }}</h2>{% endif %}
{% for b in s.blocks %}
{% if b.text is defined %}
<p>{% if b.strong %}<b>{{ b.text }}</b>{% else %}{{ b.text }}{% endif %}</p>
{% elif b.header is defined %}
<table><tr>{% for h in b.header %}<th>{{ h }}</th>{% endfor %}</tr>
{% for row in b.rows %}
<tr{% if b.highlight and b.highlight[loop.index0] %} class="diff"{% endif %}>
{% for c in row %}<td>{{ c }}</td>{% endfor %}</tr>
{% endfor %}</table>
{% else %}
<section><div class="fig" id="fig-{{ b.name }}">{{ figures[b.name] | safe }}</div></section>
{% endif %}
{% endfor %}{% endfor %}</body></html>
""", autoescape=True)


def to_html(title: str, sections: list[Section], figures: dict[str, go.Figure]) -> str:
    divs = {name: fig.to_html(full_html=False, include_plotlyjs=False, div_id=f"plot-{name}")
            for name, fig in figures.items()}
    return PAGE.render(title=title, sections=sections, figures=divs)


def write_pngs(figures: dict[str, go.Figure], folder: Path) -> bool:
    """Render every figure to ``folder/<name>.png``; False (and a message) where no Chromium is installed."""
    import plotly.io

    # kaleido renders with a Chromium; point it at the system one (Debian's `chromium`).
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if not chromium and not os.environ.get("BROWSER_PATH"):
        print("note: no Chromium found (apt-get install chromium), so the report's PNG figures were "
              "not rendered; report.html has every figure", flush=True)
        return False
    if chromium:
        os.environ.setdefault("BROWSER_PATH", chromium)
    folder.mkdir(parents=True, exist_ok=True)
    # One call renders every PNG with one browser (a browser per figure takes ~2 s each).
    plotly.io.write_images(list(figures.values()), [folder / f"{n}.png" for n in figures],
                           width=[f.layout.width or 1000 for f in figures.values()],
                           height=[f.layout.height or 500 for f in figures.values()])
    return True
