"""Find every problem of a dataset before any long job starts.

:func:`validate` checks all files (it does not stop at the first bad one) and the
dataset as a whole, and returns a list of :class:`Problem` (file + what is wrong +
what to do). Checked:

- every image and mask exists and decodes fully (truncated files fail), in an accepted
  mode (8-bit L or RGB; 16-bit, palette and other modes are reported);
- every mask has its image's size;
- every defect image has a mask; a reference mask has at least one defect pixel
  (value >= MASK_THRESHOLD); a defect-free image's mask, if any, has none (an empty
  mask on a train/test defect image is not reported: Magnetic Tile has one);
- every defect type has a reference (DST cannot be fit for it otherwise);
- no image is listed twice; all images share one channel count (TransferNet has one).

``full=False`` reads only file headers (size, mode) except for reference masks,
which are always decoded: quick, but truncated files go unnoticed.
"""

from __future__ import annotations

import os
from collections import Counter
from concurrent.futures import ThreadPoolExecutor

from dstray.data.dataset import FREE, DefectDataset, Sample
from dstray.data.errors import DataError, Problem
from dstray.data.io import MASK_THRESHOLD, image_shape, read_image, read_mask, size_mismatch


def validate(ds: DefectDataset, *, full: bool = True, workers: int | None = None) -> list[Problem]:
    """All problems of ``ds``: dataset-level ones first, then per sample in dataset order.

    Files are decoded in a thread pool of ``workers`` threads (default: up to 8).
    """
    problems = []
    for image_id, n in Counter(s.id for s in ds.samples).items():
        if n > 1:
            problems.append(Problem(ds.root / image_id, f"listed {n} times; list each image once (in one split)"))
    for t in ds.defect_types:
        if not any(s.split == "reference" and s.defect_type == t for s in ds.samples):
            problems.append(
                Problem(
                    ds.root,
                    f"defect type '{t}' has no reference sample, so DST cannot be fit for it; "
                    "mark one of its images (with a mask) as split 'reference'",
                )
            )

    workers = workers or min(8, os.cpu_count() or 1)
    with ThreadPoolExecutor(max_workers=workers) as pool:
        results = list(pool.map(lambda s: _check_sample(s, full), ds.samples))
    channels: Counter[int] = Counter()
    first_with: dict[int, Sample] = {}
    for s, (sample_problems, c) in zip(ds.samples, results):
        problems.extend(sample_problems)
        if c is not None:
            channels[c] += 1
            first_with.setdefault(c, s)
    if len(channels) > 1:
        counts = ", ".join(f"C={c}: {n} (e.g. {first_with[c].id})" for c, n in sorted(channels.items()))
        problems.append(
            Problem(
                ds.root,
                f"images have different channel counts ({counts}); "
                "convert them all to grayscale (L) or all to RGB",
            )
        )
    return problems


def _check_sample(s: Sample, full: bool) -> tuple[list[Problem], int | None]:
    """Problems of one sample and its image's channel count (None if unreadable)."""
    out: list[Problem] = []
    hw = c = None
    try:
        c, *hw = read_image(s.image).shape if full else image_shape(s.image)
    except DataError as e:
        out.append(e.to_problem())
    if s.mask is None:
        if s.defect_type != FREE:
            out.append(
                Problem(s.image, f"'{s.defect_type}' image ({s.split}) has no mask; add its mask, same name and size")
            )
        return out, c
    try:
        if full or s.split == "reference":
            mask = read_mask(s.mask)
            mask_hw, defect_px = tuple(mask.shape[-2:]), int(mask.sum())
        else:
            mask_hw, defect_px = tuple(image_shape(s.mask, "mask")[1:]), None
        if hw is not None and mask_hw != tuple(hw):
            out.append(size_mismatch(s.mask, mask_hw, tuple(hw)).to_problem())
        if defect_px == 0 and s.split == "reference":  # (an empty train/test mask is allowed: a label)
            out.append(
                Problem(
                    s.mask,
                    f"empty reference mask: no pixel >= {MASK_THRESHOLD}, so DST has no defect to learn; "
                    "mark the defect with 255 (the rest 0) or choose another reference",
                )
            )
        if defect_px and s.defect_type == FREE:
            out.append(
                Problem(s.mask, f"mask of a defect-free image marks {defect_px} defect pixels; fix its type or mask")
            )
    except DataError as e:
        out.append(e.to_problem())
    return out, c
