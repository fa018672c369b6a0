"""Find every problem of a dataset before any long job starts: one check for ``inspect`` and the jobs.

:func:`validate` checks all files a job reads (it does not stop at the first bad one) and the
dataset as a whole. It returns a :class:`Validation`: ``problems`` (stop the job; ``dstray
inspect`` exits 1) and ``warnings`` (reported, the job goes on, the exit code is unchanged),
each a :class:`Problem` naming the file and what to do. ``dstray inspect`` is
``validate(ds, job="inspect")``; ``fit-dst`` and ``generate`` call :func:`preflight`, which is
``validate`` for their job plus a refusal (:class:`InputProblems`) listing every problem.
So the three can never disagree: a job's problems are always among inspect's.

What is checked, and what it does to each job (``-`` = the job does not read that file):

=========================================================  =========  ======================  ======================
finding                                                    inspect    fit-dst                 generate
=========================================================  =========  ======================  ======================
unknown split name (not one of :data:`SPLITS`)             problem    problem                 problem
an image listed twice                                      problem    problem                 problem
a defect type without a reference                          problem    problem (its types)     -
reference of a type: unreadable, truncated, missing,       problem    problem (its types)     problem (its types)
16-bit / palette, no mask, mask of another size, empty
mask
background: unreadable, truncated, missing, 16-bit ...     problem    problem                 warning: its samples
                                                                                              are rejects
background over ``--max-image-pixels``                     warning    warning: skipped        warning: rejects
background too small for the type's smallest area L        warning    warning: the fitter     warning: rejects
(at ``scale_min``, upright or turned 90 degrees, with                 skips it
the margins on the sides it does not touch)
no usable background at all                                warning    problem                 problem
train / val / test image or mask unreadable, mask size     problem    -                       -
a defect-free image whose mask marks defect pixels         problem    -                       -
images of different channel counts                         warning    warning: converted      warning: converted
a type with more than one reference                        warning    warning                 warning
any other image over ``--max-image-pixels``                warning    -                       -
a background's own region of interest: unreadable,         problem    -                       warning: its samples
missing, of another size than the background                                                  are rejects
=========================================================  =========  ======================  ======================

Channel counts: DST works in its reference's channel count; a background of another count is
converted to it (:func:`dstray.data.io.to_channels`: RGB -> gray by ITU-R 601 luma, gray ->
RGB by repetition, an alpha channel dropped when read). Background generation checks only
file headers (a truncated background becomes a reject when generation decodes it); inspect
and ``fit-dst`` decode every file they check (``full=False``: headers only, quick).
"""

from __future__ import annotations

import difflib
import logging
import math
import os
from collections import Counter
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from dstray.config import AreaConfig
from dstray.data.dataset import FREE, SPLITS, DefectDataset, Sample
from dstray.data.errors import DataError, InputProblems, Problem
from dstray.data.io import MASK_THRESHOLD, MAX_IMAGE_PIXELS, image_shape, read_image, read_mask, size_mismatch

log = logging.getLogger("dstray")

JOBS = ("inspect", "fit-dst", "generate")  # the callers of validate; each reads its own part of a dataset
_SHOW = 5  # files named in a grouped warning


@dataclass
class Validation:
    """What :func:`validate` found: ``problems`` stop a job, ``warnings`` do not."""

    problems: list[Problem] = field(default_factory=list)  # stop the job (inspect: exit code 1)
    warnings: list[Problem] = field(default_factory=list)  # reported; the job goes on
    skip: list[str] = field(default_factory=list)  # sample ids the job leaves out (fit-dst: oversized backgrounds)
    shapes: dict[str, tuple[int, int, int]] = field(default_factory=dict)  # (C,H,W) of every image read, by id

    def __bool__(self) -> bool:  # "any problem": ``if validate(ds): ...``
        return bool(self.problems)


@dataclass
class _Checked:
    """One sample's findings."""

    problems: list[Problem] = field(default_factory=list)
    shape: tuple[int, int, int] | None = None  # (C,H,W), None if unreadable
    mask_box: tuple | None = None  # reference: mask bounding box (h, w), sides touched (top, bottom, left, right)
    oversize: bool = False


def validate(ds: DefectDataset, *, job: str = "inspect", types: Iterable[str] | None = None,
             reference_id: str | None = None, max_image_pixels: int | None = MAX_IMAGE_PIXELS,
             area: AreaConfig | None = None, full: bool | None = None, workers: int | None = None) -> Validation:
    """Every problem and warning of ``ds`` for ``job`` (see the module docstring's table).

    Args:
        job: ``inspect`` (every file), ``fit-dst`` or ``generate`` (the files the job reads).
        types: the defect types the job works on (default: every type with a reference).
        reference_id: ``fit-dst --reference-id``: checked as the type's reference.
        max_image_pixels: the size limit (width x height); None = no limit.
        area: how L is sampled (for the too-small check; default ``AreaConfig()``).
        full: decode every checked file (default: True, except backgrounds of ``generate``).
        workers: threads decoding files (default: up to 8).
    """
    if job not in JOBS:
        raise ValueError(f"job must be one of {JOBS}; got {job!r}")
    area = area or AreaConfig()
    with_ref = sorted({s.defect_type for s in ds.samples if s.split == "reference" and s.defect_type != FREE})
    types = sorted(types) if types is not None else with_ref
    out = Validation()
    _check_structure(ds, job, types, out)

    # [1] which samples the job reads, and how
    ref_ids = {s.id for s in ds.samples if s.split == "reference" and s.defect_type in types}
    if reference_id is not None:
        chosen = [s for s in ds.samples if s.id == reference_id]
        candidates = ", ".join(sorted(ref_ids)[:_SHOW]) + (" ..." if len(ref_ids) > _SHOW else "")
        if not chosen or chosen[0].defect_type not in types or chosen[0].mask is None:
            what = ("is not an image id of this dataset" if not chosen else
                    f"is a '{chosen[0].defect_type}' image{'' if chosen[0].mask else ' without a mask'}")
            out.problems.append(Problem(ds.root, (
                f"--reference-id {reference_id} {what}; give the id (path relative to the dataset root) of an "
                f"image of type {' / '.join(types) or '?'} with a mask, e.g. {candidates or 'none'}")))
        ref_ids.add(reference_id)
    roles: dict[int, str] = {}
    for i, s in enumerate(ds.samples):
        if s.id in ref_ids:
            roles[i] = "reference"
        elif s.split == "background":
            roles[i] = "background"
        elif job == "inspect":
            roles[i] = "other"
    decode_backgrounds = full if full is not None else job != "generate"
    decode_others = full if full is not None else True

    def check(i: int) -> _Checked:
        role = roles[i]
        decode = decode_backgrounds if role == "background" else decode_others
        return _check_sample(ds.samples[i], role, job, decode, max_image_pixels)

    with ThreadPoolExecutor(max_workers=workers or min(8, os.cpu_count() or 1)) as pool:
        checked = dict(zip(roles, pool.map(check, roles)))

    # [2] per-sample findings; backgrounds of generate only warn (their samples become rejects)
    bad_backgrounds: list[Problem] = []
    oversize: list[Sample] = []
    for i, c in checked.items():
        s = ds.samples[i]
        if c.shape is not None:
            out.shapes[s.id] = c.shape
        if roles[i] == "background" and job == "generate":
            bad_backgrounds += c.problems
        else:
            out.problems += c.problems
        if c.oversize:
            oversize.append(s)
    if bad_backgrounds:
        out.warnings.append(_grouped(
            ds, [p.path for p in bad_backgrounds], "background(s) (or their region of interest) cannot be read",
            "generate writes their samples as rejects with the reason; `dstray inspect` lists each file",
            detail=[str(p) for p in bad_backgrounds]))
    big_bgs = [s for s in oversize if s.split == "background"]
    if big_bgs:
        effect = {"inspect": "fit-dst skips them and generate rejects their samples",
                  "fit-dst": "fit-dst skips them", "generate": "generate rejects their samples"}[job]
        out.warnings.append(_grouped(
            ds, [s.image for s in big_bgs],
            f"background(s) over the size limit of {max_image_pixels / 1e6:g} MP (--max-image-pixels)",
            f"{effect}; downscale or tile them, or raise --max-image-pixels if memory allows",
            detail=[f"{s.id}: {_size(out.shapes.get(s.id))}" for s in big_bgs]))
        if job == "fit-dst":
            out.skip += [s.id for s in big_bgs]
    big_others = [s for s in oversize if s.split != "background"]
    if big_others:
        out.warnings.append(_grouped(
            ds, [s.image for s in big_others], f"image(s) over the size limit of {max_image_pixels / 1e6:g} MP",
            "jobs decode them whole (memory); downscale them or raise --max-image-pixels",
            detail=[f"{s.id}: {_size(out.shapes.get(s.id))}" for s in big_others]))

    # [3] dataset-level findings that need the files
    _check_channels(ds, out)
    usable = _check_room(ds, job, types, area, checked, roles, out)
    if job != "inspect" and types:
        n_bgs = sum(r == "background" for r in roles.values())
        if n_bgs and not usable:
            out.problems.append(Problem(ds.root, f"no usable background among {n_bgs}: every one is unreadable, "
                                                 "over the size limit or too small for the areas (see the warnings); "
                                                 f"{job} has nothing to work on"))
    return out


def preflight(ds: DefectDataset, *, job: str, **kwargs) -> Validation:
    """:func:`validate` for a job before it starts: warnings are logged, problems refuse the start.

    Raises :class:`InputProblems` (a ``ValueError``) listing every problem with its file.
    """
    result = validate(ds, job=job, **kwargs)
    for w in result.warnings:
        log.warning("%s: %s", w.path, w.message)
    if result.problems:
        raise InputProblems(job, ds.root, result.problems)
    return result


# --------------------------------------------------------------------------- dataset-level
def _check_structure(ds: DefectDataset, job: str, types: list[str], out: Validation) -> None:
    """Split names, duplicates, references per type, backgrounds present: from the listing alone."""
    where = ds.source or ds.root
    unknown: dict[str, list[Sample]] = {}
    for s in ds.samples:
        if s.split not in SPLITS:
            unknown.setdefault(s.split, []).append(s)
    for name, rows in unknown.items():
        lines = [str(s.line) for s in rows if s.line is not None]
        at = (f"line{'s' if len(lines) > 1 else ''} {', '.join(lines[:_SHOW])}{' ...' if len(lines) > _SHOW else ''}"
              if lines else f"{len(rows)} image(s)")
        guess = difflib.get_close_matches(name, SPLITS, n=1, cutoff=0.5)
        if name in ("validation", "valid", "dev"):
            guess = ["val"]
        out.problems.append(Problem(where, (
            f"unknown split '{name}' on {at} ({rows[0].id}{f' and {len(rows) - 1} more' if len(rows) > 1 else ''}); "
            f"known splits: {', '.join(SPLITS)}" + (f"; did you mean '{guess[0]}'?" if guess else "")
            + " Fix the split column; no job runs on such a dataset (its rows would be ignored)")))

    for image_id, n in Counter(s.id for s in ds.samples).items():
        if n > 1:
            out.problems.append(Problem(ds.root / image_id, f"listed {n} times; list each image once (in one split)"))

    wanted = ds.defect_types if job == "inspect" else types
    for t in wanted:
        refs = [s for s in ds.samples if s.split == "reference" and s.defect_type == t]
        if not refs:
            out.problems.append(Problem(ds.root, (
                f"defect type '{t}' has no reference sample, so DST cannot be fit for it; "
                "mark one of its images (with a mask) as split 'reference'")))
        elif len(refs) > 1:
            names = ", ".join(s.id for s in refs[:3]) + (" ..." if len(refs) > 3 else "")
            out.warnings.append(Problem(ds.root, (
                f"defect type '{t}' has {len(refs)} references ({names}): DST learns from the first, {refs[0].id}, "
                f"unless you pick one with `dstray fit-dst --defect-type {t} --reference-id ID`; the areas L are "
                f"drawn from all {len(refs)} masks")))

    if ds.defect_types and not ds.backgrounds():
        fix = ("put the defect-free images in a folder named backgrounds/ (or free/, good/, ok/) next to images/"
               if ds.layout == "folders" else
               "give the defect-free images split 'background' and type 'free' in the manifest")
        message = f"no background (defect-free) images, which fit-dst and generate need: {fix}"
        (out.warnings if job == "inspect" else out.problems).append(Problem(ds.root, message))


def _check_channels(ds: DefectDataset, out: Validation) -> None:
    channels: Counter[int] = Counter()
    first_with: dict[int, str] = {}
    for s in ds.samples:
        shape = out.shapes.get(s.id)
        if shape is not None:
            channels[shape[0]] += 1
            first_with.setdefault(shape[0], s.id)
    if len(channels) > 1:
        counts = ", ".join(f"C={c}: {n} (e.g. {first_with[c]})" for c, n in sorted(channels.items()))
        out.warnings.append(Problem(ds.root, (
            f"images have different channel counts ({counts}); DST converts each background to its reference's "
            "channel count (RGB -> gray: ITU-R 601 luma; alpha dropped); convert the files yourself for another "
            "conversion")))


def _low(area: AreaConfig) -> float:
    """The smallest linear scale of an area relative to its reference: ``scale_min`` for the reference family,
    1 / ``widen`` for procedural shapes (the low end of their ranges), the smaller of the two for a mix."""
    widen = 1 / area.widen if area.widen and area.widen >= 1 else area.scale_min
    return {"reference": area.scale_min, "procedural": widen}.get(area.family, min(area.scale_min, widen))


def _need(box: tuple[int, int, tuple[bool, bool, bool, bool]], area: AreaConfig) -> tuple[int, int, int, int] | None:
    """The room (h, w, margin_h, margin_w) the smallest area from a reference mask takes at ``scale_min`` (procedural
    areas: about the reference's box / ``widen``, :func:`_low`).

    ``box``: the mask's bounding box (h, w) and the image sides it touches (top, bottom, left,
    right). With ``keep_border_contact`` a touched side is snapped to the target's border (no
    margin there), and a mask spanning its image between opposite sides is resized to span the
    target: None (it always fits).
    """
    h, w, (top, bottom, left, right) = box
    border = area.keep_border_contact or area.family != "reference"
    if border and ((top and bottom) or (left and right)):
        return None
    mh = area.margin * (2 - (border and top) - (border and bottom))
    mw = area.margin * (2 - (border and left) - (border and right))
    low = _low(area)
    return max(1, math.floor(h * low + 0.5)), max(1, math.floor(w * low + 0.5)), mh, mw


def _check_room(ds: DefectDataset, job: str, types: list[str], area: AreaConfig, checked: dict[int, _Checked],
                roles: dict[int, str], out: Validation) -> int:
    """Warn about backgrounds too small for every area of a type; returns how many backgrounds are usable."""
    needs: dict[str, list[tuple[int, int, int, int]] | None] = {}
    for i, c in checked.items():
        s = ds.samples[i]
        if roles[i] != "reference" or c.mask_box is None or s.defect_type not in types:
            continue
        need = _need(c.mask_box, area)
        if need is None or needs.get(s.defect_type, []) is None:
            needs[s.defect_type] = None
        else:
            needs.setdefault(s.defect_type, []).append(need)
    turn = abs(area.max_rotation) >= 90  # quarter turns are drawn: the area may lie either way
    usable = 0
    small: dict[str, list[tuple[Sample, tuple[int, int, int, int]]]] = {}
    for i, c in checked.items():
        s = ds.samples[i]
        if roles[i] != "background" or c.shape is None or c.problems or c.oversize:
            continue
        _, bh, bw = c.shape
        fits_any = not types
        for t in types:
            ns = needs.get(t)
            if ns is None or not ns:  # always fits, or no readable reference mask (already a problem)
                fits_any = True
                continue
            if any((bh >= nh + mh and bw >= nw + mw) or (turn and bh >= nw + mw and bw >= nh + mh)
                   for nh, nw, mh, mw in ns):
                fits_any = True
            else:
                small.setdefault(t, []).append((s, min(ns, key=lambda n: n[0] * n[1])))
        usable += fits_any
    if area.family == "reference":
        low_name, low_hint = f"--area-scale-min {area.scale_min:g}", "lower --area-scale-min"
    else:
        low_name, low_hint = (f"the low end of its sizes (--area-family {area.family}, --area-widen {area.widen:g})",
                              "raise --area-widen")
    for t, rows in small.items():
        nh, nw, mh, mw = rows[0][1]
        effect = {"inspect": "generate rejects their samples of this type and fit-dst skips them",
                  "fit-dst": "the fitter skips them", "generate": "their samples of this type become rejects"}[job]
        out.warnings.append(_grouped(
            ds, [s.image for s, _ in rows],
            f"background(s) too small for any '{t}' area: the smallest is {nw}x{nh} px (WxH) at {low_name}, plus "
            f"margins of {mw} px across and {mh} px down",
            f"{effect}; use larger backgrounds or {low_hint}",
            detail=[f"{s.id}: {_size(out.shapes.get(s.id))}" for s, _ in rows]))
    return usable


def _size(shape: tuple[int, int, int] | None) -> str:
    return f"{shape[2]}x{shape[1]}" if shape else "?"


def _grouped(ds: DefectDataset, paths: list[Path], what: str, hint: str, detail: list[str]) -> Problem:
    """One warning for many files: the count, the first few, what it means."""
    shown = "; ".join(detail[:_SHOW]) + (f"; ... ({len(detail) - _SHOW} more)" if len(detail) > _SHOW else "")
    path = paths[0] if len(paths) == 1 else ds.root
    return Problem(path, f"{len(paths)} {what}: {hint} [{shown}]")


# --------------------------------------------------------------------------- one sample
def _check_sample(s: Sample, role: str, job: str, decode: bool, max_pixels: int | None) -> _Checked:
    """Findings of one sample (role: reference / background / other) and its image's shape."""
    out = _Checked()
    try:
        out.shape = image_shape(s.image)
        if max_pixels is not None and out.shape[1] * out.shape[2] > max_pixels:
            out.oversize = True  # reported by the caller; never decoded (memory)
        elif decode or role == "reference":
            out.shape = tuple(read_image(s.image).shape)
    except DataError as e:
        out.problems.append(e.to_problem())
        out.shape = None
    if role == "background" and s.roi is not None and job in ("inspect", "generate"):
        try:  # its region of interest: a mask of the background's size (generate: its samples are rejects)
            roi_hw = tuple(image_shape(s.roi, "mask")[1:])
            if out.shape is not None and roi_hw != tuple(out.shape[1:]):
                out.problems.append(Problem(s.roi, (
                    f"region of interest is {roi_hw[1]}x{roi_hw[0]} px, its background {s.id} "
                    f"{out.shape[2]}x{out.shape[1]}; give it the background's size")))
        except DataError as e:
            out.problems.append(e.to_problem())
    if role == "background" and job != "inspect":
        return out  # jobs do not read a background's mask
    if s.mask is None:
        if s.defect_type != FREE:
            out.problems.append(Problem(s.image, (
                f"'{s.defect_type}' image ({s.split}) has no mask; add its mask, same name and size (if it is "
                "defect-free, put it in a folder named backgrounds/, or give it type 'free' in the manifest)")))
        return out
    try:
        if decode or role == "reference":
            mask = read_mask(s.mask)
            mask_hw, defect_px = tuple(mask.shape[-2:]), int(mask.sum())
        else:
            mask_hw, defect_px = tuple(image_shape(s.mask, "mask")[1:]), None
        if out.shape is not None and mask_hw != tuple(out.shape[1:]):
            out.problems.append(size_mismatch(s.mask, mask_hw, tuple(out.shape[1:])).to_problem())
        if defect_px == 0 and role == "reference":  # (an empty train/test mask is allowed: a label)
            out.problems.append(Problem(s.mask, (
                f"empty reference mask: no pixel >= {MASK_THRESHOLD}, so DST has no defect to learn; "
                "mark the defect with 255 (the rest 0) or choose another reference")))
        elif defect_px and role == "reference":
            m = mask[0] > 0.5
            rows, cols = m.any(1).nonzero()[:, 0], m.any(0).nonzero()[:, 0]
            sides = (bool(m[0].any()), bool(m[-1].any()), bool(m[:, 0].any()), bool(m[:, -1].any()))
            out.mask_box = (int(rows[-1] - rows[0]) + 1, int(cols[-1] - cols[0]) + 1, sides)
        if defect_px and s.defect_type == FREE:
            out.problems.append(
                Problem(s.mask, f"mask of a defect-free image marks {defect_px} defect pixels; fix its type or mask"))
    except DataError as e:
        out.problems.append(e.to_problem())
    return out
