"""HTML building blocks of the report: the page (PNGs embedded as data: URIs), tables, cells."""

from __future__ import annotations

import base64
import html
import io
import json
import logging
import math
from collections.abc import Callable
from pathlib import Path

import numpy as np

from dstray.report.images import png

log = logging.getLogger("dstray")

CSS = """
body { font-family: sans-serif; margin: 1.5em 2em; color: #222; max-width: 1400px; }
h1 { font-size: 1.5em; } h2 { font-size: 1.25em; border-bottom: 1px solid #ccc; margin-top: 2em; }
h3 { font-size: 1.05em; }
table { border-collapse: collapse; margin: 0.5em 0 1em 0; }
th, td { border: 1px solid #ccc; padding: 3px 8px; text-align: right; }
th { background: #f2f2f2; } td.l, th.l { text-align: left; }
pre { background: #f7f7f7; border: 1px solid #ddd; padding: 0.6em; overflow-x: auto; font-size: 0.85em; }
.notrun { color: #777; font-style: italic; } .error { color: #b00; }
.note { color: #555; font-size: 0.9em; }
table.fig3 td { text-align: center; vertical-align: top; font-size: 0.8em; }
table.fig3 img { height: 180px; }
table.fig3 td.row img { height: auto; width: 100%; max-width: 1100px; }
.sheet { display: flex; flex-wrap: wrap; gap: 8px; }
.sheet figure { margin: 0; max-width: 300px; text-align: center; font-size: 0.78em; }
.sheet img { max-width: 300px; max-height: 150px; }
table.headline td, table.headline th { font-size: 1.1em; padding: 4px 12px; }
details summary { cursor: pointer; color: #333; }
img.wide { max-width: 100%; }
nav a { margin-right: 1em; }
"""


class Page:
    """Writes the report's PNGs next to index.html and returns their embedded <img> tags."""

    def __init__(self, out: Path):
        self.out = out

    def img(self, name: str, image: np.ndarray | bytes, alt: str, cls: str = "") -> str:
        """``image``: (H,W) / (H,W,3) uint8 array, or PNG bytes kept as they are."""
        data = image if isinstance(image, bytes) else png(image)
        (self.out / name).write_bytes(data)
        klass = f' class="{cls}"' if cls else ""
        return (f'<img{klass} alt="{esc(alt)}" title="{esc(alt)}" '
                f'src="data:image/png;base64,{base64.b64encode(data).decode("ascii")}">')

    def figure(self, name: str, fig, alt: str) -> str:
        """A matplotlib Figure as an embedded PNG."""
        buf = io.BytesIO()
        fig.savefig(buf, format="png", dpi=100)
        return self.img(name, buf.getvalue(), alt, cls="wide")


def guard(title: str, build: Callable[[], str]) -> str:
    """A section's HTML; a section that fails says why instead of failing the whole report."""
    try:
        return build()
    except Exception as exc:  # noqa: BLE001 - one unreadable part must not lose the rest of the report
        log.warning("report section %r failed", title, exc_info=True)
        return f'<p class="error">could not render this section: {esc(type(exc).__name__)}: {esc(str(exc))}</p>'


def esc(text) -> str:
    return html.escape(str(text), quote=True)


def not_run(what: str) -> str:
    return f'<p class="notrun">not run: {esc(what)}</p>'


def fmt(v) -> str:
    """A value for a table cell: bools yes/no, ints as is, floats to 4 significant digits, NaN as n/a."""
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        if math.isnan(v) or math.isinf(v):
            return "n/a" if math.isnan(v) else str(v)
        return f"{v:.1f}" if abs(v) >= 1000 else f"{v:.4g}"
    if v is None:
        return "-"
    if isinstance(v, (dict, list)):
        return json.dumps(v)
    return str(v)


def score(v) -> str:
    """A score in [0, 1] (precision, recall, F1, IoU, rates) to 3 decimals."""
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "n/a"
    return f"{float(v):.3f}"


def table(header: list[str], rows: list[list], left: int = 1) -> str:
    """An HTML table; the first ``left`` columns are left-aligned. Cells are escaped."""
    def cell(tag, i, v):
        klass = ' class="l"' if i < left else ""
        return f"<{tag}{klass}>{esc(v)}</{tag}>"
    head = "".join(cell("th", i, h) for i, h in enumerate(header))
    body = "".join("<tr>" + "".join(cell("td", i, v) for i, v in enumerate(r)) + "</tr>" for r in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def kv(rows: list[list]) -> str:
    """A two-column key/value table without a header row."""
    body = "".join(f'<tr><th class="l">{esc(k)}</th><td class="l">{esc(v)}</td></tr>' for k, v in rows)
    return f"<table>{body}</table>"


def read_json(path: Path):
    return json.loads(path.read_text(encoding="utf-8"))
