"""The data policy: which generated rows and defect-free images enter segmentation training, and how many
of each a batch holds. One owner for both training paths (the in-process source of :mod:`dstray.seg.data`,
the Ray Train stream of :mod:`dstray.distributed.train_seg`) and the experiments (:mod:`dstray.cells`).

The levers (:class:`dstray.config.DataPolicy` and three ``SegConfig`` fields; docs/data-policy.md):

- **Rows** (:func:`row_allowed`, :func:`filter_table`): a generated row enters when its type's generator is
  wanted (``policy.generators[type]``, else ``policy.default_generator``: ``mix`` = any, ``none`` = no row,
  or one of ``dst``, ``histmatch``, ``copy``), its area family is wanted (``policy.area_family``: ``any``,
  ``reference`` = warps of the reference masks, ``procedural`` = shapes drawn from the type's measured ranges;
  rows of datasets made before families existed are ``reference``) and, with ``policy.min_visibility`` > 0,
  its label is visible (:func:`dstray.labels.is_visible` at that ratio of its type's reference defect).
- **Counts** (:func:`batch_counts`, the one mixing rule): of a batch of B windows, ``round(synthetic_fraction
  x B)`` are generated rows (all the non-free ones when no real defect image is given; none in the last
  ``policy.real_only_last`` share of the steps), ``round(free_fraction x B)`` are cut from defect-free images
  (``SegConfig.free_splits``; their labels are all background), the rest are real defect images.
- **Types** (:func:`draw_types`): with ``policy.type_shares`` the type of each generated row is drawn by its
  share, then a row of that type; else rows are drawn uniformly (in-process) or in stream order (Ray Train).
- **Loss** (``policy.synthetic_weight``, ``policy.ignore_band``): applied per pixel in :mod:`dstray.seg.data`.

Every check of a policy's values is :func:`check_policy`; both paths call it, so a lever is supported by
both or refused by both with the same message.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

import pyarrow as pa
import torch

from dstray.config import GENERATORS, DataPolicy, SegConfig, from_dict
from dstray.data import MASK_THRESHOLD, decode_png, load_dataset, read_image, read_mask
from dstray.labels import is_visible, visibility

POLICY_GENERATORS = ("mix", "none", *GENERATORS)  # what a data policy may feed a defect type
AREA_FAMILIES = ("any", "reference", "procedural")  # which generated areas a policy takes (rows' ``area_family``)
FAMILY_COLUMN = "area_family"  # the generated rows' column naming the family of their area L
OLD_FAMILY = "reference"  # the family of rows made before the column existed (warped reference masks)


# --------------------------------------------------------------------------- checks
def check_policy(cfg: SegConfig) -> None:
    """The data policy's values and the batch shares of ``cfg``, before any work; ValueError saying what to do."""
    p = cfg.policy
    if not 0.0 <= p.real_only_last < 1.0:
        raise ValueError(f"--policy-real-only-last must be in [0, 1); got {p.real_only_last}")
    if p.synthetic_weight < 0 or p.ignore_band < 0:
        raise ValueError(f"--policy-synthetic-weight and --policy-ignore-band must be >= 0; got {p.synthetic_weight}, "
                         f"{p.ignore_band}")
    if p.min_visibility < 0:
        raise ValueError(f"--policy-min-visibility must be >= 0; got {p.min_visibility}")
    for t, share in (p.type_shares or {}).items():
        if share < 0:
            raise ValueError(f"--policy-type-shares {t}={share}: shares must be >= 0")
    if p.type_shares is not None and not any(v > 0 for v in p.type_shares.values()):
        raise ValueError(f"--policy-type-shares {p.type_shares}: give at least one type a share > 0")
    for t, g in [*(p.generators or {}).items(), ("default", p.default_generator)]:
        if g not in POLICY_GENERATORS:
            raise ValueError(f"--policy-generators {t}={g} / --policy-default-generator: choose one of "
                             f"{', '.join(POLICY_GENERATORS)}")
    if p.area_family not in AREA_FAMILIES:
        raise ValueError(f"--policy-area-family {p.area_family!r}: choose one of {', '.join(AREA_FAMILIES)}")
    for name, value in (("synthetic-fraction", cfg.synthetic_fraction), ("free-fraction", cfg.free_fraction)):
        if not 0.0 <= value <= 1.0:
            raise ValueError(f"--{name} must be in [0, 1]; got {value}")
    if cfg.free_fraction and not cfg.free_splits:
        raise ValueError(f"--free-fraction {cfg.free_fraction}: name the splits whose defect-free rows feed it "
                         "(--free-splits background)")
    counts = batch_counts(cfg, real=bool(cfg.real_splits), synthetic=bool(cfg.synthetic), free=cfg.free_fraction > 0)
    if counts.real < 0 or (counts.free and not cfg.real_splits and not cfg.synthetic):
        raise ValueError(f"--synthetic-fraction {cfg.synthetic_fraction} + --free-fraction {cfg.free_fraction} of a "
                         f"batch of {cfg.batch_size} leave no room for defect images: lower them")


# --------------------------------------------------------------------------- rows
def generator_for(policy: DataPolicy, defect_type: str) -> str:
    """What feeds ``defect_type`` under ``policy``: its named generator, else the default (mix | none | one)."""
    return (policy.generators or {}).get(defect_type, policy.default_generator)


def wanted_generators(policy: DataPolicy, types: list[str]) -> list[str]:
    """The generators ``policy`` draws from for a dataset with defect ``types`` (``mix`` = all of them), in
    :data:`dstray.config.GENERATORS` order: the pools an experiment must make."""
    wanted = {generator_for(policy, t) for t in types}
    if "mix" in wanted:
        return list(GENERATORS)
    return [g for g in GENERATORS if g in wanted]


def row_allowed(policy: DataPolicy, defect_type: str, generator: str, family: str | None = None) -> bool:
    """Whether a generated row of ``defect_type`` made by ``generator`` with an area of ``family`` is let in
    by the policy's generator and family choice (visibility aside: :func:`label_visible`)."""
    want = generator_for(policy, defect_type)
    if want == "none" or (want != "mix" and want != generator):
        return False
    return policy.area_family == "any" or (family or OLD_FAMILY) == policy.area_family


def allowed_indices(table, policy: DataPolicy) -> list[int]:
    """Indices of the rows of a generated table (pyarrow) that :func:`row_allowed` lets in. Tables without
    ``defect_type`` / ``generator`` columns (not made by dstray) pass whole; without ``area_family``, every row
    is of the ``reference`` family."""
    n = table.num_rows
    names = table.column_names
    if "defect_type" not in names or "generator" not in names:
        return list(range(n))
    types, gens = table.column("defect_type").to_pylist(), table.column("generator").to_pylist()
    families = table.column(FAMILY_COLUMN).to_pylist() if FAMILY_COLUMN in names else [OLD_FAMILY] * n
    return [i for i, (t, g, f) in enumerate(zip(types, gens, families)) if row_allowed(policy, t, g, f)]


def reference_visibility(data: str | None) -> dict[str, float]:
    """Per defect type, the mean :func:`dstray.labels.visibility` of its reference defects (H against M's ring)."""
    seen: dict[str, list[float]] = {}
    for s in load_dataset(data).split("reference"):
        if s.mask is not None:
            image = read_image(s.image)
            seen.setdefault(s.defect_type, []).append(visibility(image, read_mask(s.mask, like=image)))
    return {t: sum(v) / len(v) for t, v in seen.items()}


def label_visible(image_png: bytes, mask_png: bytes, defect_type: str, refs: dict[str, float], ratio: float) -> bool:
    """Whether a generated row's label shows a defect (:func:`dstray.labels.is_visible` at ``ratio`` x its type's
    reference visibility ``refs[type]``, :func:`reference_visibility`); a type without a reference: True."""
    if defect_type not in refs:
        return True
    image, mask = decode_png(image_png), (decode_png(mask_png)[:1] >= (MASK_THRESHOLD - 0.5) / 255).float()
    return is_visible(image, mask, refs[defect_type], ratio)[0]


def filter_table(table, policy: DataPolicy | dict, refs: dict[str, float] | None = None):
    """The rows of a generated table (pyarrow) the policy lets in: :func:`allowed_indices`, then, with ``refs``
    (per type, the reference's visibility) and ``policy.min_visibility`` > 0, those whose label is visible.

    The one row rule of both training paths: the in-process source filters each dataset with it, the Ray
    Train stream each Parquet batch (``map_batches``; ``policy`` then comes as a plain dict).
    """
    policy = from_dict(DataPolicy, policy) if isinstance(policy, dict) else policy
    table = table.take(pa.array(allowed_indices(table, policy), type=pa.int64()))  # typed: [] must work too
    if not refs or not policy.min_visibility or table.num_rows == 0:
        return table
    images, masks = table.column("image").to_pylist(), table.column("mask").to_pylist()
    types = (table.column("defect_type").to_pylist() if "defect_type" in table.column_names
             else [""] * table.num_rows)
    keep = [i for i in range(table.num_rows)
            if label_visible(images[i], masks[i], types[i], refs, policy.min_visibility)]
    return table.take(pa.array(keep, type=pa.int64()))


def dropped_by_type(before, after) -> dict[str, int]:
    """Rows per defect type in table ``before`` but not in ``after`` (what a filter left out), for the logs."""
    col = "defect_type"
    if col not in before.column_names:
        return {"": before.num_rows - after.num_rows} if before.num_rows != after.num_rows else {}
    diff = Counter(before.column(col).to_pylist()) - Counter(after.column(col).to_pylist())
    return dict(sorted(diff.items()))


# --------------------------------------------------------------------------- batches
@dataclass(frozen=True)
class BatchCounts:
    """How a batch of windows is made: ``synthetic`` generated rows, ``free`` defect-free images, ``real``
    real defect images (in that order in the batch)."""

    synthetic: int
    free: int
    real: int


def batch_counts(cfg: SegConfig, *, real: bool, synthetic: bool, free: bool, step: int | None = None,
                 batch_size: int | None = None) -> BatchCounts:
    """The one mixing rule (paper §4.2, strategy C, plus the defect-free share); see the module docstring.

    ``real`` / ``synthetic`` / ``free``: whether real defect images, generated rows and defect-free images are
    given; ``step`` = steps done (None = not counted: the mixed phase); ``batch_size`` default ``cfg.batch_size``.
    """
    b = cfg.batch_size if batch_size is None else batch_size
    n_free = round(cfg.free_fraction * b) if free else 0
    if not synthetic:
        return BatchCounts(0, n_free, b - n_free)
    if not real:
        return BatchCounts(b - n_free, n_free, 0)
    if step is not None and cfg.policy.real_only_last and step >= cfg.steps * (1 - cfg.policy.real_only_last):
        return BatchCounts(0, n_free, b - n_free)
    n_syn = round(cfg.synthetic_fraction * b)
    return BatchCounts(n_syn, n_free, b - n_syn - n_free)


def draw_types(shares: dict[str, float], available: list[str], n: int, generator: torch.Generator) -> list[str]:
    """The defect types of ``n`` generated rows drawn by ``shares`` among the ``available`` types (with rows).

    ValueError when no type with a share > 0 has rows. Both training paths call it (same draws, same error).
    """
    names = [t for t in sorted(available) if shares.get(t, 0) > 0]
    if not names:
        raise ValueError(f"--policy-type-shares {shares}: no generated rows of those types (the datasets hold "
                         f"{sorted(available)}); name types that have rows")
    if n == 0:
        return []
    p = torch.tensor([shares[t] for t in names], dtype=torch.float64)
    return [names[k] for k in torch.multinomial(p, n, replacement=True, generator=generator).tolist()]
