"""The ``dstray inspect DATA`` report: what a dataset holds, every problem and every warning in it.

:func:`format_report` gives counts per defect type x split, the range of image sizes,
the channel counts, then the problems and the warnings of :func:`dstray.data.validate`;
:func:`inspect_main` loads, validates, prints the report and returns the exit code
(0: no problems, warnings or not; 1: problems, or the dataset cannot be listed).
"""

from __future__ import annotations

import os
import sys
from collections import Counter
from pathlib import Path

from dstray.data.dataset import FREE, DefectDataset, load_dataset
from dstray.data.errors import DataError, Problem
from dstray.data.io import MAX_IMAGE_PIXELS
from dstray.data.validate import Validation, validate


def _table(rows: list[list[str]]) -> list[str]:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return ["  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths))) for r in rows]


def _show(path: Path, root: Path) -> str:
    """A path relative to the dataset root when it lies inside it; "(dataset)" for the root."""
    rel = os.path.relpath(path, root)
    if rel == ".":
        return "(dataset)"
    return path.as_posix() if rel.startswith("..") else Path(rel).as_posix()


def format_report(ds: DefectDataset, found: Validation | list[Problem]) -> str:
    """The inspect report of ``ds`` and what :func:`validate` found (or a list of problems), as text."""
    found = found if isinstance(found, Validation) else Validation(problems=list(found))
    lines = [f"dataset {ds.root} (layout: {ds.layout}, {len(ds)} images)"]
    if ds.layout == "folders" and not any("/" in s.id[len("images/"):] for s in ds.samples
                                          if s.id.startswith("images/") and s.split != "background"):
        types = ", ".join(ds.defect_types) or "none"
        lines.append(f"flat images/ folder: one defect type ({types}), named after the dataset folder; "
                     "use images/<type>/ for several types")
    if ds.layout == "mvtec":
        k, order = ds.options.get("references_per_type", 1), ds.options.get("reference_order", "draw")
        n = Counter((s.defect_type == FREE, s.split) for s in ds.samples)
        lines.append(f"MVTec AD layout: train/good -> background ({n[True, 'background']}); test/good -> test "
                     f"({n[True, 'test']}) and val ({n[True, 'val']}); test/<defect> -> {k} reference(s) per type "
                     f"({'a seeded draw' if order == 'draw' else 'the first by file name'}; --references-per-type, "
                     f"--reference-order), the rest test ({n[False, 'test']}) and val ({n[False, 'val']})")
    if any(s.roi is not None for s in ds.samples):
        lines.append(f"regions of interest: {sum(s.roi is not None for s in ds.samples)} background(s) have their own "
                     "(a defect's area L lies wholly inside it)")
    lines.append("")

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

    shapes = list(found.shapes.values())
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

    for p in found.problems:
        lines.append(f"{_show(p.path, ds.root)}: {p.message}")
    for w in found.warnings:
        lines.append(f"warning: {_show(w.path, ds.root)}: {w.message}")
    n, k = len(found.problems), len(found.warnings)
    verdict = f"{n} problem{'s' if n != 1 else ''}" if n else "no problems found"
    lines.append(verdict + (f", {k} warning{'s' if k != 1 else ''}" if k else ""))
    return "\n".join(lines)


def inspect_main(path: str | Path | None = None, *, max_image_pixels: int | None = MAX_IMAGE_PIXELS,
                 references_per_type: int | None = None, reference_order: str | None = None) -> int:
    """``dstray inspect DATA``: load, validate, print the report; 1 if any problem, else 0 (warnings do not count).

    ``references_per_type`` / ``reference_order``: the MVTec AD layout's options (:func:`load_dataset`).
    """
    try:
        ds = load_dataset(path, references_per_type=references_per_type, reference_order=reference_order)
    except DataError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    found = validate(ds, job="inspect", max_image_pixels=max_image_pixels)
    print(format_report(ds, found))
    return 1 if found.problems else 0
