"""Training data of the segmenters: windows at the images' own resolution, augmentation, real + synthetic mix.

Paper §4: segmenters are trained on generated samples, on real defect samples, or on
both (Strategy C of §4.2, batches of 8 sampled with replacement); real samples may be
limited to the first N (Figure 6).

- **Items.** A training image is kept at its own resolution: ``{"image": (C,H,W) uint8,
  "mask": (1,H,W) bool, "defect": (K,2) int64 (y, x) of its defect pixels}``
  (:func:`make_item`). Real samples are read once (:func:`read_item`); generated Parquet rows
  keep their PNG bytes and are decoded when drawn (:func:`row_item`).
- **Windows** (:func:`cut_window`). Each batch item is a ``window x window`` square cut from
  its image without any resizing. Where the image is smaller than the window in a direction,
  the whole extent is taken and the window is padded by mirroring the image (so that batch
  norm sees image statistics), the image part centred; a ``valid`` mask (1 = image,
  0 = padding) travels with it and padding never counts in the loss. A window is either
  *centred* on a defect pixel drawn uniformly among the image's defect pixels (± ``window/8``
  jitter, clipped to the image) or placed uniformly at random.
- **Centring rule** (:func:`mixed_batch`). Of the batch items whose image has a defect,
  ``ceil(center_fraction * n)`` (drawn at random) get a centred window; the others, and
  defect-free images, a uniform one. Defects cover about 1 % of Magnetic Tile's pixels:
  uniform windows alone would rarely show one.
- **Augmentation** (``cfg.augment``), applied to the cut before padding, image and mask
  together: horizontal / vertical flips, a random multiple of 90 degrees (all exact, no
  interpolation), brightness and contrast jitter of the image.
- **Mixing** (:func:`synthetic_count`, :func:`mixed_batch`: the one rule, also used by the
  Ray Train shard source of :mod:`dstray.distributed.train_seg`). A batch of B holds
  ``round(synthetic_fraction * B)`` generated samples when both kinds are given (all B when
  only one kind is), then real samples drawn uniformly with replacement.
- **Buttonlab's crop** (:func:`draw_crop`): one crop per batch, on the even grid, inside the
  part of the window that is image in every item of the batch.
- **Determinism.** Every draw comes from the caller's ``torch.Generator``; the global RNG is
  never used.
"""

from __future__ import annotations

import logging
import math
from collections import Counter
from pathlib import Path

import pyarrow.parquet as pq
import torch
from torch.nn import functional as F

from dstray import storage
from dstray.config import SegConfig
from dstray.dst.visibility import is_visible, visibility
from dstray.data import (MASK_THRESHOLD, DataError, Sample, decode_png, load_dataset, read_image, read_mask,
                         to_channels)

POLICY_GENERATORS = ("mix", "none", "dst", "histmatch", "copy")  # what a data policy may feed a defect type
JITTER = 0.2  # brightness and contrast factors drawn in [1 - JITTER, 1 + JITTER]
CENTRE_JITTER = 8  # a centred window's centre is within window // CENTRE_JITTER px of its defect pixel


# --------------------------------------------------------------------------- items
def make_item(image: torch.Tensor, mask: torch.Tensor | None, channels: int) -> dict:
    """A training image at its own resolution.

    image (C,H,W) float in [0,1]; mask (1,H,W) {0,1} or None (defect-free) ->
    ``{"image": (channels,H,W) uint8, "mask": (1,H,W) bool, "defect": (K,2) int64}``.
    """
    image = to_channels(image, channels)
    mask = torch.zeros_like(image[:1], dtype=torch.bool) if mask is None else mask[:1] > 0.5
    return {"image": (image * 255).round().to(torch.uint8), "mask": mask, "defect": mask[0].nonzero()}


def read_item(sample: Sample, channels: int) -> dict:
    """A real :class:`Sample` read from disk (:func:`make_item`); no mask -> defect-free."""
    image = read_image(sample.image)
    mask = read_mask(sample.mask, like=image) if sample.mask is not None else None
    return make_item(image, mask, channels)


def row_item(image_png: bytes, mask_png: bytes, channels: int) -> dict:
    """A generated Parquet row (PNG bytes of ``image`` and ``mask``) decoded (:func:`make_item`)."""
    mask = (decode_png(mask_png)[:1] >= (MASK_THRESHOLD - 0.5) / 255).float()  # 8-bit value >= 128
    return make_item(decode_png(image_png), mask, channels)


# --------------------------------------------------------------------------- padding
def mirror_index(n: int, before: int, after: int) -> torch.Tensor:
    """Indices into a length-``n`` axis for ``before`` / ``after`` mirrored positions (any amount).

    Reflection without repeating the edge (``[2, 1, | 0, 1, 2, 3, | 2, 1]`` for n = 4), repeated
    for pads longer than the axis; a length-1 axis is repeated.
    """
    idx = torch.arange(-before, n + after)
    if n == 1:
        return torch.zeros_like(idx)
    period = 2 * (n - 1)
    idx = idx.remainder(period)
    return torch.where(idx >= n, period - idx, idx)


def mirror_pad(x: torch.Tensor, top: int, bottom: int, left: int, right: int) -> torch.Tensor:
    """(..., H, W) -> (..., top + H + bottom, left + W + right), padded by mirroring (:func:`mirror_index`)."""
    rows = mirror_index(x.shape[-2], top, bottom).to(x.device)
    cols = mirror_index(x.shape[-1], left, right).to(x.device)
    return x.index_select(-2, rows).index_select(-1, cols)


def pad_to_multiple(x: torch.Tensor, stride: int) -> torch.Tensor:
    """(..., H, W) mirrored at the bottom and right up to multiples of ``stride`` (inference on whole images)."""
    return mirror_pad(x, 0, -x.shape[-2] % stride, 0, -x.shape[-1] % stride)


# --------------------------------------------------------------------------- windows
def window_box(item: dict, size: int, generator: torch.Generator, centred: bool) -> tuple[int, int, int, int]:
    """Where a ``size`` window falls on ``item``'s image: ``(top, left, h, w)``, h = min(size, H), w = min(size, W).

    ``centred`` (and the image has a defect): centred on a defect pixel drawn uniformly, moved by
    up to ``size // CENTRE_JITTER`` px, then clipped to the image (the pixel stays inside).
    Otherwise uniform over the image.
    """
    _, height, width = item["image"].shape
    h, w = min(size, height), min(size, width)
    defect = item["defect"]
    if centred and len(defect):
        y, x = defect[int(torch.randint(len(defect), (), generator=generator))].tolist()
        j = size // CENTRE_JITTER
        dy, dx = (torch.randint(-j, j + 1, (2,), generator=generator)).tolist()
        top = min(max(y - h // 2 + dy, 0), height - h)
        left = min(max(x - w // 2 + dx, 0), width - w)
    else:
        top = int(torch.randint(height - h + 1, (), generator=generator))
        left = int(torch.randint(width - w + 1, (), generator=generator))
    return top, left, h, w


def augment(image: torch.Tensor, mask: torch.Tensor, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Flips, a multiple of 90 degrees (image and mask together), brightness/contrast jitter (image only).

    image (C,h,w) float in [0,1], mask (1,h,w) -> the same (h and w swapped by an odd rotation).
    """
    flip_h, flip_v = torch.randint(2, (2,), generator=generator).tolist()
    k = int(torch.randint(4, (), generator=generator))
    if flip_h:
        image, mask = image.flip(-1), mask.flip(-1)
    if flip_v:
        image, mask = image.flip(-2), mask.flip(-2)
    image, mask = torch.rot90(image, k, (-2, -1)), torch.rot90(mask, k, (-2, -1))
    brightness, contrast = (1 + JITTER * (2 * torch.rand(2, generator=generator) - 1)).tolist()
    mean = image.mean()
    image = ((image - mean) * contrast + mean * brightness).clamp(0, 1)
    return image, mask


def cut_window(item: dict, size: int, generator: torch.Generator, *, centred: bool, augment_it: bool) -> dict:
    """One training window of ``item`` (see the module docstring).

    Returns ``{"image": (C,size,size) float [0,1], "mask": (1,size,size) {0,1}, "valid": (1,size,size) {0,1},
    "box": (top, left, h, w) on the image}``. The image part (``h x w``, or ``w x h`` after an odd
    rotation) is centred in the window; the rest mirrors it and has ``valid`` 0 and ``mask`` 0.
    """
    top, left, h, w = box = window_box(item, size, generator, centred)
    image = item["image"][:, top:top + h, left:left + w].float() / 255
    mask = item["mask"][:, top:top + h, left:left + w].float()
    if augment_it:
        image, mask = augment(image, mask, generator)
    h, w = image.shape[-2:]
    pad = ((size - h) // 2, size - h - (size - h) // 2, (size - w) // 2, size - w - (size - w) // 2)
    valid = torch.zeros(1, size, size)
    valid[:, pad[0]:pad[0] + h, pad[2]:pad[2] + w] = 1.0
    return {"image": mirror_pad(image, *pad), "mask": mirror_pad(mask, *pad) * valid, "valid": valid, "box": box}


def draw_crop(valid: torch.Tensor, crop_size: int, generator: torch.Generator) -> tuple[int, int, int, int]:
    """Buttonlab's crop ``(top, left, h, w)`` for a batch: even, inside the image part of every window.

    valid (B,1,S,S). The crop is ``crop_size`` (rounded down to even) or the extent of the part
    valid in every item if that is smaller, placed uniformly on the even grid inside that part.
    If that part is under 2 px in a direction, the crop spans the window in that direction
    (padding carries no loss anyway).
    """
    inside = valid.amin(0)[0] > 0  # (S,S): image in every window of the batch
    size = valid.shape[-2], valid.shape[-1]
    spans = []
    for axis, n in zip((1, 0), size):
        hits = inside.any(axis).nonzero()
        lo, hi = (int(hits.min()), int(hits.max()) + 1) if len(hits) else (0, n)
        lo = lo + lo % 2  # first even position inside
        if hi - lo < 2:
            lo, hi = 0, n
        extent = min(crop_size, hi - lo) // 2 * 2
        start = lo + 2 * int(torch.randint((hi - lo - extent) // 2 + 1, (), generator=generator))
        spans.append((start, extent))
    (top, h), (left, w) = spans
    return top, left, h, w


# --------------------------------------------------------------------------- training source
def real_samples(cfg: SegConfig) -> list[Sample]:
    """The real training samples of ``cfg``: the splits ``cfg.real_splits`` of ``cfg.data``, in order.

    With ``cfg.real_limit = N`` only N are kept, taken round-robin over defect types (in the
    order of the splits, then of the manifest, within a type), so that a small N still covers
    every type: with ``real_splits = ["reference", "train"]`` and N = references + k, that is
    every reference plus k train samples spread over the types (paper Fig. 6).
    """
    if not cfg.real_splits:
        return []
    ds = load_dataset(cfg.data)
    real = [s for name in cfg.real_splits for s in ds.split(name)]
    if cfg.real_limit is None or cfg.real_limit >= len(real):
        return real
    queues: dict[str, list[Sample]] = {}
    for s in real:
        queues.setdefault(s.defect_type, []).append(s)
    picked, order = [], sorted(queues)
    while len(picked) < cfg.real_limit:
        for t in order:
            if queues[t] and len(picked) < cfg.real_limit:
                picked.append(queues[t].pop(0))
    return picked


def synthetic_count(cfg: SegConfig, *, real: bool, synthetic: bool, step: int | None = None,
                    batch_size: int | None = None) -> int:
    """How many items of a batch are generated samples (paper §4.2, strategy C when both are given): the one rule.

    All of them when only generated samples are given, none when only real ones, else
    ``round(cfg.synthetic_fraction * batch_size)`` (``batch_size`` default ``cfg.batch_size``). In the
    last ``cfg.policy.real_only_last`` share of the steps (``step`` = steps done; None = not counted),
    none when real samples are given.
    """
    batch_size = cfg.batch_size if batch_size is None else batch_size
    if not synthetic:
        return 0
    if not real:
        return batch_size
    if step is not None and cfg.policy.real_only_last and step >= cfg.steps * (1 - cfg.policy.real_only_last):
        return 0
    return round(cfg.synthetic_fraction * batch_size)


def label_band(mask: torch.Tensor, width: int) -> torch.Tensor:
    """Pixels within ``width`` px (chessboard distance) of a label's edge, on either side: (B,1,S,S) bool.

    mask (B,1,S,S) in {0,1}; ``width`` 0 -> nothing.
    """
    if width <= 0:
        return torch.zeros_like(mask, dtype=torch.bool)
    k = 2 * width + 1
    dilated = F.max_pool2d(mask, k, stride=1, padding=width)
    eroded = -F.max_pool2d(-mask, k, stride=1, padding=width)
    return (dilated > 0.5) & ~(eroded > 0.5)


def loss_weight(batch: dict, n_synthetic: int, cfg: SegConfig) -> torch.Tensor:
    """Per-pixel loss weight of a batch (B,1,S,S): ``valid``; the first ``n_synthetic`` items (generated)
    times ``cfg.policy.synthetic_weight`` and 0 in the band of ``cfg.policy.ignore_band`` px around their labels."""
    weight = batch["valid"].clone()
    if n_synthetic:
        syn = weight[:n_synthetic] * cfg.policy.synthetic_weight
        band = label_band(batch["mask"][:n_synthetic], cfg.policy.ignore_band)
        weight[:n_synthetic] = syn.masked_fill(band, 0.0)
    return weight


def mixed_batch(synthetic: list[dict], real: list[dict], batch_size: int, generator: torch.Generator,
                cfg: SegConfig) -> dict[str, torch.Tensor]:
    """The batch: the ``synthetic`` items, then real items drawn with replacement, each cut to a window.

    ``batch_size - len(synthetic)`` indices into ``real`` are drawn with ``generator``; of the
    items with a defect, ``ceil(cfg.center_fraction * n)`` drawn at random get a centred window;
    every window is cut (:func:`cut_window`, augmented when ``cfg.augment``) and stacked:
    ``{"image": (B,C,S,S), "mask": (B,1,S,S), "valid": (B,1,S,S), "weight": (B,1,S,S) (:func:`loss_weight`),
    "centred": (B,) bool, "has_defect": (B,) bool}`` with S = ``cfg.window``.
    """
    picks = torch.randint(len(real) or 1, (batch_size - len(synthetic),), generator=generator).tolist()
    items = [*synthetic, *(real[i] for i in picks)]
    has_defect = torch.tensor([len(it["defect"]) > 0 for it in items], dtype=torch.bool)
    defect_idx = has_defect.nonzero()[:, 0]
    n_centred = math.ceil(cfg.center_fraction * len(defect_idx))
    centred = torch.zeros(len(items), dtype=torch.bool)
    centred[defect_idx[torch.randperm(len(defect_idx), generator=generator)[:n_centred]]] = True
    windows = [cut_window(it, cfg.window, generator, centred=bool(c), augment_it=cfg.augment)
               for it, c in zip(items, centred)]
    batch = {k: torch.stack([w[k] for w in windows]) for k in ("image", "mask", "valid")}
    return {**batch, "weight": loss_weight(batch, len(synthetic), cfg), "centred": centred, "has_defect": has_defect}


class SegSource:
    """Where training batches come from: real samples and/or generated Parquet datasets.

    Real samples are read once and kept at their own resolution (uint8); generated rows keep
    their PNG bytes and are decoded per draw.
    """

    def __init__(self, cfg: SegConfig, real: list[Sample] = (), synthetic: list[str | Path] = (),
                 channels: int | None = None) -> None:
        self.cfg = cfg
        self.real_samples = list(real)
        self.synthetic_rows: list[tuple[bytes, bytes]] = []
        types: list[str] = []
        for path in synthetic:
            table = pq.read_table(path)
            keep = policy_rows(table, cfg.policy)
            images, masks = table.column("image").to_pylist(), table.column("mask").to_pylist()
            self.synthetic_rows += [(images[i], masks[i]) for i in keep]
            names = table.column("defect_type").to_pylist() if "defect_type" in table.column_names else None
            types += [names[i] for i in keep] if names else [""] * len(keep)
        self.dropped: dict[str, int] = {}  # rows the visibility check left out, per type
        if cfg.policy.min_visibility > 0 and self.synthetic_rows:
            self.synthetic_rows, types, self.dropped = visible_rows(self.synthetic_rows, types, cfg)
            logging.getLogger("dstray").info("visibility check (--policy-min-visibility %s): %d generated rows left "
                                             "out %s, %d kept", cfg.policy.min_visibility,
                                             sum(self.dropped.values()), self.dropped, len(self.synthetic_rows))
        self.synthetic_types = types
        self._by_type = {t: [i for i, x in enumerate(types) if x == t] for t in sorted(set(types))}
        if not self.real_samples and not self.synthetic_rows:
            raise DataError(Path(cfg.data or "<embedded sample>"), "no training samples",
                            "give generated datasets (SegConfig.synthetic) and/or real splits (SegConfig.real_splits)")
        if channels is None:  # the channel count of the first training image
            first = read_image(self.real_samples[0].image) if self.real_samples else decode_png(self.synthetic_rows[0][0])
            channels = first.shape[0]
        self.channels = channels
        self.real = [read_item(s, channels) for s in self.real_samples]

    @classmethod
    def from_config(cls, cfg: SegConfig) -> "SegSource":
        """Real samples of ``cfg`` (:func:`real_samples`) plus the generated datasets ``cfg.synthetic``."""
        return cls(cfg, real_samples(cfg), cfg.synthetic)

    def __len__(self) -> int:
        return len(self.real) + len(self.synthetic_rows)

    def batch(self, batch_size: int, generator: torch.Generator, step: int | None = None) -> dict[str, torch.Tensor]:
        """:func:`mixed_batch` of :func:`synthetic_count` generated rows drawn with replacement and real samples.

        Rows are drawn uniformly, or with ``cfg.policy.type_shares`` a type by its share, then a row of it.
        """
        n_syn = synthetic_count(self.cfg, real=bool(self.real), synthetic=bool(self.synthetic_rows), step=step,
                                batch_size=batch_size)
        shares = self.cfg.policy.type_shares
        if shares:
            names = [t for t in self._by_type if shares.get(t, 0) > 0]
            if not names:
                raise ValueError(f"--policy-type-shares {shares}: no generated rows of those types "
                                 f"(the datasets hold {sorted(self._by_type)})")
            p = torch.tensor([shares[t] for t in names], dtype=torch.float64)
            picks = torch.multinomial(p, n_syn, replacement=True, generator=generator).tolist() if n_syn else []
            rows = [self._by_type[names[k]][int(torch.randint(len(self._by_type[names[k]]), (),
                                                                generator=generator))] for k in picks]
        else:
            rows = torch.randint(len(self.synthetic_rows) or 1, (n_syn,), generator=generator).tolist()
        synthetic = [row_item(*self.synthetic_rows[i], self.channels) for i in rows]
        return mixed_batch(synthetic, self.real, batch_size, generator, self.cfg)


def reference_visibility(cfg: SegConfig) -> dict[str, float]:
    """Per defect type, the mean :func:`dstray.dst.visibility.visibility` of its reference defects (H against M's ring)."""
    seen: dict[str, list[float]] = {}
    for s in load_dataset(cfg.data).split("reference"):
        if s.mask is not None:
            image = read_image(s.image)
            seen.setdefault(s.defect_type, []).append(visibility(image, read_mask(s.mask, like=image)))
    return {t: sum(v) / len(v) for t, v in seen.items()}


def visible_rows(rows: list[tuple[bytes, bytes]], types: list[str], cfg: SegConfig):
    """The rows whose label shows a defect (:func:`dstray.dst.visibility.is_visible` at ``cfg.policy.min_visibility``
    x the type's reference); returns ``(rows, types, dropped per type)``. A type without a reference keeps its rows."""
    refs = reference_visibility(cfg)
    seen = [label_visible(*row, t, refs, cfg.policy.min_visibility) for row, t in zip(rows, types)]
    dropped = Counter(t for t, ok in zip(types, seen) if not ok)
    return [r for r, ok in zip(rows, seen) if ok], [t for t, ok in zip(types, seen) if ok], dict(dropped)


def label_visible(image_png: bytes, mask_png: bytes, defect_type: str, refs: dict[str, float], ratio: float) -> bool:
    """Whether a generated row's label shows a defect (:func:`dstray.dst.visibility.is_visible` at ``ratio`` x its
    type's reference visibility ``refs[type]``, :func:`reference_visibility`); a type without a reference: True."""
    if defect_type not in refs:
        return True
    image, mask = decode_png(image_png), (decode_png(mask_png)[:1] >= (MASK_THRESHOLD - 0.5) / 255).float()
    return is_visible(image, mask, refs[defect_type], ratio)[0]


def policy_rows(table, policy) -> list[int]:
    """Indices of the rows of a generated table that ``policy.generators`` lets in (every row when it is None).

    A type's entry: ``mix`` (any generator), ``none`` (no row), or a generator name (rows of it only);
    types it does not name: ``policy.default_generator``. Tables without ``defect_type``/``generator`` columns pass whole.
    """
    n = table.num_rows
    named = policy.generators or {}
    if (not named and policy.default_generator == "mix") or "defect_type" not in table.column_names \
            or "generator" not in table.column_names:
        return list(range(n))
    for t, g in [*named.items(), ("(default)", policy.default_generator)]:
        if g not in POLICY_GENERATORS:
            raise ValueError(f"--policy-generators {t}={g}: choose one of {', '.join(POLICY_GENERATORS)}")
    types, gens = table.column("defect_type").to_pylist(), table.column("generator").to_pylist()
    keep = []
    for i, (t, g) in enumerate(zip(types, gens)):
        want = named.get(t, policy.default_generator)
        if want == "mix" or want == g:
            keep.append(i)
    return keep
