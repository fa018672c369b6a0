"""The ``dstray inspect DATA`` report: what a dataset holds and every problem in it.

:func:`format_report` gives counts per defect type x split, the range of image sizes,
the channel counts, then every problem; :func:`inspect_main` loads, validates, prints
the report and returns the exit code (0: no problems, 1: problems or not loadable).
"""

from __future__ import annotations

import os
import sys
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from dstray.data.dataset import FREE, DefectDataset, load_dataset
from dstray.data.errors import DataError, Problem
from dstray.data.validate import validate
from dstray.data.io import image_shape


def _shape_or_none(path: Path) -> tuple[int, int, int] | None:
    try:
        return image_shape(path)
    except DataError:
        return None


def _table(rows: list[list[str]]) -> list[str]:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return ["  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths))) for r in rows]


def _show(path: Path, root: Path) -> str:
    """A path relative to the dataset root when it lies inside it; "(dataset)" for the root."""
    rel = os.path.relpath(path, root)
    if rel == ".":
        return "(dataset)"
    return path.as_posix() if rel.startswith("..") else Path(rel).as_posix()


def format_report(ds: DefectDataset, problems: list[Problem]) -> str:
    """The inspect report of ``ds`` and its ``problems`` (from :func:`validate`), as text."""
    lines = [f"dataset {ds.root} (layout: {ds.layout}, {len(ds)} images)", ""]

    counts = Counter((s.defect_type, s.split) for s in ds.samples)
    types = ds.defect_types + ([FREE] if any(s.defect_type == FREE for s in ds.samples) else [])
    splits = ds.splits
    rows = [["type", *splits, "total"]]
    for t in types:
        row = [counts[t, sp] for sp in splits]
        rows.append([t, *map(str, row), str(sum(row))])
    totals = [sum(counts[t, sp] for t in types) for sp in splits]
    rows.append(["total", *map(str, totals), str(len(ds))])
    lines += _table(rows) + [""]

    with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:
        shapes = [sh for sh in pool.map(_shape_or_none, (s.image for s in ds.samples)) if sh is not None]
    if shapes:
        hs, ws = [sh[1] for sh in shapes], [sh[2] for sh in shapes]
        n_sizes = len({sh[1:] for sh in shapes})
        lines.append(f"image sizes: width {min(ws)}-{max(ws)} px, height {min(hs)}-{max(hs)} px ({n_sizes} distinct)")
        names = {1: "grayscale", 3: "RGB"}
        channels = Counter(sh[0] for sh in shapes)
        lines.append("channels:    " + ", ".join(f"C={c} ({names[c]}): {n}" for c, n in sorted(channels.items())))
    else:
        lines.append("image sizes: no readable image")
    lines.append("")

    for p in problems:
        lines.append(f"{_show(p.path, ds.root)}: {p.message}")
    lines.append(f"{len(problems)} problem{'s' if len(problems) != 1 else ''}" if problems else "no problems found")
    return "\n".join(lines)


def inspect_main(path: str | Path | None = None) -> int:
    """``dstray inspect DATA``: load, validate, print the report; 0 if no problems, else 1."""
    try:
        ds = load_dataset(path)
    except DataError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    problems = validate(ds)
    print(format_report(ds, problems))
    return 1 if problems else 0
