"""Markdown tables: the results of ``dstray experiment`` and ``dstray tune``."""

from __future__ import annotations

from collections.abc import Callable


def markdown_table(rows: list[dict], columns: list[str], number: Callable[[float], str] = "{:.4g}".format) -> str:
    """A GitHub markdown table of ``rows`` (dicts) in ``columns``; floats through ``number``, the rest ``str``."""
    def cell(v) -> str:
        return number(v) if isinstance(v, float) else str(v)

    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(cell(row.get(c, "")) for c in columns) + " |" for row in rows]
    return "\n".join(lines) + "\n"
