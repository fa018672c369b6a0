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
  jitter, clipped to the image) or placed uniformly at random. With ``cfg.window_context = c`` the
  image is first mirror-padded by c px on every side, unlabelled (:func:`with_context`): windows may
  then hold a part's border with mirrored image beyond it, the way inference shows every border
  (:data:`dstray.seg.evaluate.INFERENCE_PAD`), instead of the network's zero padding.
- **Centring rule** (:func:`mixed_batch`). Of the batch items whose image has a defect,
  ``ceil(center_fraction * n)`` (drawn at random) get a centred window; the others, and
  defect-free images, a uniform one. Defects cover about 1 % of Magnetic Tile's pixels:
  uniform windows alone would rarely show one.
- **Augmentation** (``cfg.augment``), applied to the cut before padding, image and mask
  together: horizontal / vertical flips, a random multiple of 90 degrees (all exact, no
  interpolation), brightness and contrast jitter of the image.
- **Mixing** (:func:`dstray.policy.batch_counts`, the data policy's one rule, also used by the
  Ray Train shard source of :mod:`dstray.distributed.train_seg`; :func:`mixed_batch`). A batch of B
  holds ``round(synthetic_fraction * B)`` generated samples when both kinds are given (all but the
  defect-free ones when only generated samples are), ``round(free_fraction * B)`` windows of
  defect-free images (``free_splits``, all-background labels), then real defect images drawn
  uniformly with replacement. Which generated rows may be drawn is the policy's too
  (:func:`dstray.policy.filter_table`).
- **Buttonlab's crop** (:func:`draw_crop`): one crop per batch, on the even grid, inside the
  part of the window that is image in every item of the batch.
- **Determinism.** Every draw comes from the caller's ``torch.Generator``; the global RNG is
  never used.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path

import pyarrow.parquet as pq
import torch
from torch.nn import functional as F

from dstray.config import SegConfig
from dstray.data import FREE, MASK_THRESHOLD, DataError, Sample, decode_png, load_dataset, read_image, read_mask, to_channels
from dstray.labels import label_band
from dstray.policy import (BatchCounts, batch_counts, draw_types, dropped_by_type, filter_table, reference_visibility)

JITTER = 0.2  # brightness and contrast factors drawn in [1 - JITTER, 1 + JITTER]
CENTRE_JITTER = 8  # a centred window's centre is within window // CENTRE_JITTER px of its defect pixel
# share of the windows on defect-free images placed flush with one side of the image (drawn at random): the
# borders and rims of a part are where a segmenter that never saw a clean part raises its false alarms
BORDER_WINDOWS = 0.5


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
    Otherwise uniform over the image; on a defect-free image (no defect pixel) the window is then, with
    probability :data:`BORDER_WINDOWS`, moved flush with one side drawn at random (the other coordinate stays).
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
        if not len(defect) and float(torch.rand((), generator=generator)) < BORDER_WINDOWS:
            side = int(torch.randint(4, (), generator=generator))  # top, bottom, left, right
            top = 0 if side == 0 else height - h if side == 1 else top
            left = 0 if side == 2 else width - w if side == 3 else left
    return top, left, h, w


def augment(image: torch.Tensor, mask: torch.Tensor, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Flips, a multiple of 90 degrees (image and mask together), brightness/contrast jitter (image only).

    image (C,h,w) float in [0,1], mask (M,h,w) label planes moved with it -> the same (h and w swapped by an
    odd rotation).
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


def with_context(item: dict, context: int) -> dict:
    """``item`` with its image mirror-padded by ``context`` px on every side (what inference shows the network,
    :data:`dstray.seg.evaluate.INFERENCE_PAD`), unlabelled there: ``{"image": (C,H+2c,W+2c) uint8,
    "mask": (1,H+2c,W+2c) bool (0 in the padding), "inside": (1,H+2c,W+2c) bool (1 on the image), "defect":
    (K,2) shifted by c}``. ``context`` 0 returns ``item`` unchanged."""
    if not context:
        return item
    c = context
    inside = torch.zeros(1, item["image"].shape[-2] + 2 * c, item["image"].shape[-1] + 2 * c, dtype=torch.bool)
    inside[:, c:-c, c:-c] = True
    mask = torch.zeros_like(inside)
    mask[:, c:-c, c:-c] = item["mask"]
    return {"image": mirror_pad(item["image"], c, c, c, c), "mask": mask, "inside": inside,
            "defect": item["defect"] + c}


def cut_window(item: dict, size: int, generator: torch.Generator, *, centred: bool, augment_it: bool,
               context: int = 0) -> dict:
    """One training window of ``item`` (see the module docstring).

    ``context`` (px, ``SegConfig.window_context``): the window is placed on the image mirror-padded by that much
    on every side (:func:`with_context`), so that a part's borders are seen with mirrored image beyond them, as
    inference shows them; the mirrored pixels carry no label and no loss (``valid`` 0).

    Returns ``{"image": (C,size,size) float [0,1], "mask": (1,size,size) {0,1}, "valid": (1,size,size) {0,1},
    "box": (top, left, h, w) on the (padded) image}``. The cut (``h x w``, or ``w x h`` after an odd
    rotation) is centred in the window; the rest mirrors it and has ``valid`` 0 and ``mask`` 0.
    """
    item = with_context(item, context)
    top, left, h, w = box = window_box(item, size, generator, centred)
    image = item["image"][:, top:top + h, left:left + w].float() / 255
    mask = item["mask"][:, top:top + h, left:left + w].float()
    inside = item["inside"][:, top:top + h, left:left + w].float() if "inside" in item else torch.ones_like(mask)
    if augment_it:
        image, planes = augment(image, torch.cat([mask, inside]), generator)
        mask, inside = planes[:1], planes[1:]
    h, w = image.shape[-2:]
    pad = ((size - h) // 2, size - h - (size - h) // 2, (size - w) // 2, size - w - (size - w) // 2)
    valid = torch.zeros(1, size, size)
    valid[:, pad[0]:pad[0] + h, pad[2]:pad[2] + w] = inside
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


def free_samples(cfg: SegConfig) -> list[Sample]:
    """The defect-free images of ``cfg``'s free share: the ``free`` rows of the splits ``cfg.free_splits``, in
    manifest order; none when ``cfg.free_fraction`` is 0."""
    if not cfg.free_fraction:
        return []
    ds = load_dataset(cfg.data)
    return [s for name in cfg.free_splits for s in ds.split(name) if s.defect_type == FREE]


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
                cfg: SegConfig, free: list[dict] = (), n_free: int = 0) -> dict[str, torch.Tensor]:
    """The batch: the ``synthetic`` items, ``n_free`` items of ``free``, then real items, each cut to a window.

    ``n_free`` indices into ``free`` and ``batch_size - len(synthetic) - n_free`` into ``real`` are drawn
    with ``generator`` (with replacement); of the items with a defect, ``ceil(cfg.center_fraction * n)``
    drawn at random get a centred window; every window is cut (:func:`cut_window`, augmented when
    ``cfg.augment``) and stacked: ``{"image": (B,C,S,S), "mask": (B,1,S,S), "valid": (B,1,S,S), "weight":
    (B,1,S,S) (:func:`loss_weight`), "centred": (B,) bool, "has_defect": (B,) bool}`` with S = ``cfg.window``.
    """
    free_picks = torch.randint(len(free) or 1, (n_free,), generator=generator).tolist() if n_free else []
    picks = torch.randint(len(real) or 1, (batch_size - len(synthetic) - n_free,), generator=generator).tolist()
    items = [*synthetic, *(free[i] for i in free_picks), *(real[i] for i in picks)]
    has_defect = torch.tensor([len(it["defect"]) > 0 for it in items], dtype=torch.bool)
    defect_idx = has_defect.nonzero()[:, 0]
    n_centred = math.ceil(cfg.center_fraction * len(defect_idx))
    centred = torch.zeros(len(items), dtype=torch.bool)
    centred[defect_idx[torch.randperm(len(defect_idx), generator=generator)[:n_centred]]] = True
    windows = [cut_window(it, cfg.window, generator, centred=bool(c), augment_it=cfg.augment,
                          context=cfg.window_context) for it, c in zip(items, centred)]
    batch = {k: torch.stack([w[k] for w in windows]) for k in ("image", "mask", "valid")}
    return {**batch, "weight": loss_weight(batch, len(synthetic), cfg), "centred": centred, "has_defect": has_defect}


def source_counts(cfg: SegConfig, source, batch_size: int, step: int | None) -> BatchCounts:
    """:func:`dstray.policy.batch_counts` for a training source (anything with ``real``, ``free`` and
    ``has_synthetic``): the one rule, asked the same way by both sources."""
    return batch_counts(cfg, real=bool(source.real), synthetic=source.has_synthetic, free=bool(source.free),
                        step=step, batch_size=batch_size)


class SegSource:
    """Where training batches come from: real defect images, defect-free images and/or generated Parquet datasets.

    Real and defect-free images are read once and kept at their own resolution (uint8); generated rows (those
    the data policy lets in, :func:`dstray.policy.filter_table`) keep their PNG bytes and are decoded per draw.
    """

    def __init__(self, cfg: SegConfig, real: list[Sample] = (), synthetic: list[str | Path] = (),
                 channels: int | None = None, free: list[Sample] = ()) -> None:
        self.cfg = cfg
        self.real_samples, self.free_samples = list(real), list(free)
        self.synthetic_rows: list[tuple[bytes, bytes]] = []
        types: list[str] = []
        refs = reference_visibility(cfg.data) if cfg.policy.min_visibility > 0 and synthetic else None
        self.dropped: dict[str, int] = {}  # rows the policy's visibility check left out, per type
        for path in synthetic:
            table = pq.read_table(path)
            chosen = filter_table(table, cfg.policy)
            kept = filter_table(chosen, cfg.policy, refs) if refs else chosen
            for t, n in dropped_by_type(chosen, kept).items():
                self.dropped[t] = self.dropped.get(t, 0) + n
            images, masks = kept.column("image").to_pylist(), kept.column("mask").to_pylist()
            self.synthetic_rows += list(zip(images, masks))
            types += kept.column("defect_type").to_pylist() if "defect_type" in kept.column_names \
                else [""] * kept.num_rows
        if refs:
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
        self.free = [read_item(s, channels) for s in self.free_samples]

    @classmethod
    def from_config(cls, cfg: SegConfig) -> "SegSource":
        """Real samples of ``cfg`` (:func:`real_samples`), its defect-free share (:func:`free_samples`) and the
        generated datasets ``cfg.synthetic``."""
        return cls(cfg, real_samples(cfg), cfg.synthetic, free=free_samples(cfg))

    @property
    def has_synthetic(self) -> bool:
        return bool(self.synthetic_rows)

    def __len__(self) -> int:
        return len(self.real) + len(self.free) + len(self.synthetic_rows)

    def batch(self, batch_size: int, generator: torch.Generator, step: int | None = None) -> dict[str, torch.Tensor]:
        """:func:`mixed_batch` of :func:`source_counts` generated rows (drawn with replacement), defect-free and
        real images. Rows are drawn uniformly, or with ``cfg.policy.type_shares`` a type by its share
        (:func:`dstray.policy.draw_types`), then a row of it."""
        counts = source_counts(self.cfg, self, batch_size, step)
        shares = self.cfg.policy.type_shares
        if shares:
            rows = [self._by_type[t][int(torch.randint(len(self._by_type[t]), (), generator=generator))]
                    for t in draw_types(shares, list(self._by_type), counts.synthetic, generator)]
        else:
            rows = torch.randint(len(self.synthetic_rows) or 1, (counts.synthetic,), generator=generator).tolist()
        synthetic = [row_item(*self.synthetic_rows[i], self.channels) for i in rows]
        return mixed_batch(synthetic, self.real, batch_size, generator, self.cfg, self.free, counts.free)
