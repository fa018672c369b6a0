"""Training and test data of the segmenters: letterbox, joint augmentation, real + synthetic mix.

Paper §4: segmenters are trained on generated samples, on real defect samples, or on
both (Strategy C of §4.2, batches of 8 sampled with replacement); real samples may be
limited to the first N (Figure 6).

- **Letterbox.** Images come in many sizes (Magnetic Tile: 100-630 px wide, aspect up
  to 2.8). Each is resized (bilinear, antialiased; masks ``nearest-exact``) so that
  its long side is ``size``, and centred on a ``size x size`` canvas of zeros. Zero
  padding, not reflection, so that no mirrored defect appears without a label. A
  ``valid`` mask (1 = image, 0 = padding) travels with every sample; the training
  loss and all evaluation counts use valid pixels only. :class:`Letterbox` records
  the geometry and maps a letterboxed map back to the original size (:meth:`invert`).
- **Augmentation** (``cfg.augment``), torchvision.transforms.v2 applied jointly to the
  image and the two masks (``tv_tensors.Mask``: nearest interpolation, no colour
  change): horizontal/vertical flips, a random multiple of 90°, a small rotation,
  a random resized crop, brightness/contrast jitter.
- **Mixing** (:func:`synthetic_count`, :func:`mixed_batch`: the one rule, also used by the
  Ray Train shard source of :mod:`dstray.distributed.train_seg`). A batch of B holds
  ``round(synthetic_fraction * B)`` generated samples when both kinds are given (all B when
  only one kind is), then real samples drawn uniformly with replacement.
- **Determinism.** All draws come from the caller's ``torch.Generator``; the v2
  transforms (which use the global RNG) run inside ``torch.random.fork_rng`` seeded
  from that generator, so the global RNG is left untouched.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pyarrow.parquet as pq
import torch
from torch.nn import functional as F
from torchvision import tv_tensors
from torchvision.transforms import v2

from dstray import storage
from dstray.config import SegConfig
from dstray.data import (MASK_THRESHOLD, DataError, Sample, decode_png, load_dataset, read_image, read_mask,
                         to_channels)

ROTATION_DEGREES = 10.0  # "small rotation" range, ± degrees
CROP_SCALE = (0.5, 1.0)  # area range of the random resized crop
JITTER = 0.2  # brightness and contrast factors drawn in [1 - JITTER, 1 + JITTER]
AUGMENT_P = 0.5  # probability of the small rotation and of the resized crop


# --------------------------------------------------------------------------- letterbox
@dataclass(frozen=True)
class Letterbox:
    """Where an ``height x width`` image sits inside the ``size x size`` letterboxed canvas."""

    height: int  # original size
    width: int
    size: int  # canvas side
    top: int  # position and size of the resized image on the canvas
    left: int
    inner_h: int
    inner_w: int

    @classmethod
    def fit(cls, height: int, width: int, size: int) -> "Letterbox":
        scale = size / max(height, width)
        inner_h, inner_w = max(1, round(height * scale)), max(1, round(width * scale))
        return cls(height, width, size, (size - inner_h) // 2, (size - inner_w) // 2, inner_h, inner_w)

    def apply(self, x: torch.Tensor, mode: str = "bilinear") -> torch.Tensor:
        """(C,H,W) -> (C,size,size): resize into the box, zeros around. ``mode="nearest-exact"`` for masks."""
        inner = _resize(x, (self.inner_h, self.inner_w), mode)
        out = x.new_zeros(x.shape[0], self.size, self.size)
        out[:, self.top:self.top + self.inner_h, self.left:self.left + self.inner_w] = inner
        return out

    def valid(self) -> torch.Tensor:
        """(1,size,size) float: 1 over the image, 0 over the padding."""
        return self.apply(torch.ones(1, self.height, self.width), "nearest-exact")

    def invert(self, x: torch.Tensor, mode: str = "bilinear") -> torch.Tensor:
        """(C,size,size) -> (C,H,W): cut the box out and resize it back to the original size."""
        inner = x[..., self.top:self.top + self.inner_h, self.left:self.left + self.inner_w]
        return _resize(inner, (self.height, self.width), mode)


def _resize(x: torch.Tensor, size: tuple[int, int], mode: str) -> torch.Tensor:
    if tuple(x.shape[-2:]) == tuple(size):
        return x.clone()
    smooth = mode in ("bilinear", "bicubic")
    return F.interpolate(x[None], size=size, mode=mode, antialias=smooth)[0]


def prepare(image: torch.Tensor, mask: torch.Tensor | None, size: int, channels: int) -> dict:
    """Letterbox one sample: ``{"image": (channels,S,S), "mask": (1,S,S), "valid": (1,S,S), "box": Letterbox}``."""
    box = Letterbox.fit(image.shape[-2], image.shape[-1], size)
    mask = torch.zeros_like(image[:1]) if mask is None else mask
    return {"image": box.apply(to_channels(image, channels)), "mask": box.apply(mask, "nearest-exact"),
            "valid": box.valid(), "box": box}


def prepare_sample(sample: Sample, size: int, channels: int) -> dict:
    """A real :class:`Sample` read from disk and letterboxed (see :func:`prepare`); no mask -> all zeros."""
    image = read_image(sample.image)
    mask = read_mask(sample.mask, like=image) if sample.mask is not None else None
    return prepare(image, mask, size, channels)


def prepare_row(image_png: bytes, mask_png: bytes, size: int, channels: int) -> dict:
    """A generated Parquet row (PNG bytes of ``image`` and ``mask``) decoded and letterboxed (:func:`prepare`)."""
    mask = (decode_png(mask_png)[:1] >= (MASK_THRESHOLD - 0.5) / 255).float()  # 8-bit value >= 128
    return prepare(decode_png(image_png), mask, size, channels)


# --------------------------------------------------------------------------- augmentation
class RandomRot90(v2.Transform):
    """Rotate every input by the same random multiple of 90° (exact, no interpolation)."""

    def make_params(self, flat_inputs: list) -> dict:
        return {"k": int(torch.randint(4, ()))}

    def transform(self, inpt, params: dict):
        out = torch.rot90(inpt, params["k"], dims=(-2, -1))
        return tv_tensors.wrap(out, like=inpt) if isinstance(inpt, tv_tensors.TVTensor) else out


def augmentation(size: int) -> v2.Transform:
    """The traditional augmentation, applied jointly to (Image, Mask, Mask) of side ``size``."""
    return v2.Compose([
        v2.RandomHorizontalFlip(),
        v2.RandomVerticalFlip(),
        RandomRot90(),
        v2.RandomApply([v2.RandomRotation(ROTATION_DEGREES)], p=AUGMENT_P),
        v2.RandomApply([v2.RandomResizedCrop(size, scale=CROP_SCALE, antialias=True)], p=AUGMENT_P),
        v2.ColorJitter(brightness=JITTER, contrast=JITTER),
    ])


def augment(item: dict, transform: v2.Transform | None, generator: torch.Generator) -> dict:
    """Apply ``transform`` jointly to ``item``'s image, mask and valid mask, seeded from ``generator``."""
    if transform is None:
        return item
    seed = int(torch.randint(2**62, (), generator=generator))
    with torch.random.fork_rng(devices=[]):  # v2 draws from the global RNG: fork and seed it
        torch.manual_seed(seed)
        out = transform(tv_tensors.Image(item["image"]), tv_tensors.Mask(item["mask"]), tv_tensors.Mask(item["valid"]))
    return {k: v.as_subclass(torch.Tensor) for k, v in zip(("image", "mask", "valid"), out)}


# --------------------------------------------------------------------------- training source
def synthetic_paths(paths: list[str]) -> list[str]:
    """Generated datasets as Parquet locations: an output folder of ``dstray generate`` means its ``data/``."""
    out = []
    for p in paths:
        if not storage.exists(p):
            raise FileNotFoundError(f"synthetic dataset {p} does not exist; give the output folder of "
                                    "`dstray generate` (or its data/ folder, or a Parquet file)")
        data = storage.join(p, "data")
        out.append(data if storage.exists(storage.join(p, "_shards")) and storage.exists(data) else p)
    return out


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


def synthetic_count(batch_size: int, fraction: float, *, real: bool, synthetic: bool) -> int:
    """How many items of a batch are generated samples (paper §4.2, strategy C when both are given).

    All of them when only generated samples are given, none when only real ones, else
    ``round(fraction * batch_size)``.
    """
    if not synthetic:
        return 0
    if not real:
        return batch_size
    return round(fraction * batch_size)


def mixed_batch(synthetic: list[dict], real: list[dict], batch_size: int, generator: torch.Generator,
                transform: v2.Transform | None) -> dict[str, torch.Tensor]:
    """The batch: the ``synthetic`` items, then real items drawn with replacement, each augmented.

    ``batch_size - len(synthetic)`` indices into ``real`` are drawn with ``generator``, then every
    item is augmented jointly (:func:`augment`, seeded from ``generator``) and stacked:
    ``{"image": (B,C,S,S), "mask": (B,1,S,S), "valid": (B,1,S,S)}``.
    """
    picks = torch.randint(len(real) or 1, (batch_size - len(synthetic),), generator=generator).tolist()
    items = [augment(item, transform, generator) for item in [*synthetic, *(real[i] for i in picks)]]
    return {k: torch.stack([item[k] for item in items]) for k in ("image", "mask", "valid")}


class SegSource:
    """Where training batches come from: real samples and/or generated Parquet datasets.

    Real samples are read and letterboxed once (kept in memory); generated rows keep
    their PNG bytes and are decoded per draw.
    """

    def __init__(self, cfg: SegConfig, real: list[Sample] = (), synthetic: list[str | Path] = (),
                 channels: int | None = None) -> None:
        self.cfg = cfg
        self.real_samples = list(real)
        self.synthetic_rows: list[tuple[bytes, bytes]] = []
        for path in synthetic:
            table = pq.read_table(path, columns=["image", "mask"])
            self.synthetic_rows += zip(table.column("image").to_pylist(), table.column("mask").to_pylist())
        if not self.real_samples and not self.synthetic_rows:
            raise DataError(Path(cfg.data or "<embedded sample>"), "no training samples",
                            "give generated datasets (SegConfig.synthetic) and/or real splits (SegConfig.real_splits)")
        if channels is None:  # the channel count of the first training image
            first = read_image(self.real_samples[0].image) if self.real_samples else decode_png(self.synthetic_rows[0][0])
            channels = first.shape[0]
        self.channels = channels
        self.real = [prepare_sample(s, cfg.image_size, channels) for s in self.real_samples]
        self.transform = augmentation(cfg.image_size) if cfg.augment else None

    @classmethod
    def from_config(cls, cfg: SegConfig) -> "SegSource":
        """Real samples of ``cfg`` (:func:`real_samples`) plus the generated datasets ``cfg.synthetic``."""
        return cls(cfg, real_samples(cfg), cfg.synthetic)

    def __len__(self) -> int:
        return len(self.real) + len(self.synthetic_rows)

    def batch(self, batch_size: int, generator: torch.Generator) -> dict[str, torch.Tensor]:
        """``{"image": (B,C,S,S), "mask": (B,1,S,S), "valid": (B,1,S,S)}``: :func:`synthetic_count` generated
        rows drawn with replacement, then real samples (:func:`mixed_batch`)."""
        n_syn = synthetic_count(batch_size, self.cfg.synthetic_fraction, real=bool(self.real),
                                synthetic=bool(self.synthetic_rows))
        rows = torch.randint(len(self.synthetic_rows) or 1, (n_syn,), generator=generator).tolist()
        synthetic = [prepare_row(*self.synthetic_rows[i], self.cfg.image_size, self.channels) for i in rows]
        return mixed_batch(synthetic, self.real, batch_size, generator, self.transform)
