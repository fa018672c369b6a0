"""Target areas L: where a synthetic defect is generated on a defect-free image.

Wei et al., Algorithm 2, takes an area L of the defect-free sample S; the defect is
generated inside L and L is also the output label (§3.1). The paper does not say how L
is drawn; dstray derives it from the reference mask(s) M of the defect type, so that L
has a real defect's shape (:class:`AreaSampler`).

:meth:`AreaSampler.sample` on an image of height x width:

1. draw one reference mask (uniformly) and apply random flips (``cfg.flip``);
2. *free placement* (the reference does not touch its image border, or
   ``cfg.keep_border_contact`` is false): rotate by an angle uniform in
   ±``cfg.max_rotation`` (nearest neighbour, canvas expanded), crop to the bounding box,
   scale isotropically by a factor uniform in [``scale_min``, ``scale_max``] (nearest),
   and translate uniformly so that L keeps ``cfg.margin`` pixels from every border;
3. *border placement* (the reference touches a border of its image and
   ``keep_border_contact``; many Magnetic Tile breaks, frays and uneven areas do): rotate
   only by multiples of 90° within ±``max_rotation`` (exact), so each touched side stays a
   side; scale as above; then snap every touched side onto the same side of the target
   (no margin there), and place freely along the other sides. A reference that spans its
   image between two opposite sides spans the target along that axis (it is resized to
   the full extent; along the other axis the scale follows isotropically);
4. if the shape is larger than the room left by the margins, it is shrunk isotropically
   to fit (nearest, then re-cropped);
5. with a foreground ``roi``, draws are repeated (steps 1-4) until L lies inside it, at
   most ``max_tries`` times, then ValueError.

Masks are resampled with nearest neighbour and stay exactly {0,1}; very thin shapes
(cracks) may break into pieces when scaled down. All randomness comes from the given
``torch.Generator`` (CPU): the same generator state gives the same L.

:func:`crop_window` / :func:`cut_window` / :func:`paste_window` serve DST's patch mode:
TransferNet runs on a square window around L instead of the whole image.
:func:`area_for_seed` is how every caller turns a per-sample seed into L.
"""

from __future__ import annotations

import math

import torch
import torchvision.transforms.v2.functional as F
from torch import Tensor
from torchvision.transforms import InterpolationMode

from dstray.config import AreaConfig

# sides of a mask, in this order everywhere: top, bottom, left, right
Sides = tuple[bool, bool, bool, bool]


def _check_mask(mask: Tensor, what: str) -> Tensor:
    """A (1,H,W) binary, non-empty mask as bool (H,W); ValueError otherwise."""
    if not isinstance(mask, Tensor) or mask.dim() != 3 or mask.shape[0] != 1:
        shape = tuple(mask.shape) if isinstance(mask, Tensor) else type(mask).__name__
        raise ValueError(f"{what} must be a (1,H,W) tensor; got {shape}")
    if mask.dtype != torch.bool and not bool(((mask == 0) | (mask == 1)).all()):
        raise ValueError(f"{what} must be binary (values 0 and 1 only); binarise it first (e.g. mask >= 0.5)")
    m = mask[0].bool().cpu()
    if not bool(m.any()):
        raise ValueError(f"{what} is empty (no pixel set); a target area needs at least one pixel")
    return m


def bbox(area: Tensor) -> tuple[int, int, int, int]:
    """(y0, x0, y1, x1), end-exclusive, of the set pixels of a (1,H,W) or (H,W) mask."""
    m = area.reshape(area.shape[-2:]).bool()
    rows, cols = m.any(1).nonzero()[:, 0], m.any(0).nonzero()[:, 0]
    if rows.numel() == 0:
        raise ValueError("the area is empty (no pixel set)")
    return int(rows[0]), int(cols[0]), int(rows[-1]) + 1, int(cols[-1]) + 1


def _crop(m: Tensor) -> Tensor:
    y0, x0, y1, x1 = bbox(m)
    return m[y0:y1, x0:x1]


def _sides(m: Tensor) -> Sides:
    return bool(m[0].any()), bool(m[-1].any()), bool(m[:, 0].any()), bool(m[:, -1].any())


def _resize(m: Tensor, h: int, w: int) -> Tensor:
    """Nearest-neighbour resize of a bool (h0,w0) mask, cropped again to its bounding box."""
    if (h, w) == tuple(m.shape):
        return m
    out = F.resize(m[None], [h, w], interpolation=InterpolationMode.NEAREST, antialias=False)[0]
    return _crop(out) if out.any() else out


def _as_generator(generator: torch.Generator | int) -> torch.Generator:
    return torch.Generator().manual_seed(generator) if isinstance(generator, int) else generator


def _uniform(g: torch.Generator, lo: float, hi: float) -> float:
    return lo + (hi - lo) * float(torch.rand((), generator=g))


def _randint(g: torch.Generator, lo: int, hi: int) -> int:
    """Uniform integer in [lo, hi], both included."""
    return int(torch.randint(lo, hi + 1, (), generator=g))


class AreaSampler:
    """Draws target areas L for one defect type from its reference mask(s).

    reference_masks: list of (1,H,W) binary masks M (each may have its own size).
    ``sample(height, width, generator, roi=None) -> (1,height,width)`` float {0,1};
    see the module docstring for the geometry.
    """

    def __init__(self, reference_masks: list[Tensor], cfg: AreaConfig = AreaConfig(), max_tries: int = 100):
        if not reference_masks:
            raise ValueError("AreaSampler needs at least one reference mask")
        if not 0 < cfg.scale_min <= cfg.scale_max:
            raise ValueError(f"need 0 < scale_min <= scale_max; got {cfg.scale_min}, {cfg.scale_max}")
        self.cfg, self.max_tries = cfg, max_tries
        self.masks = [_check_mask(m, f"reference mask {i}") for i, m in enumerate(reference_masks)]
        self.shapes = [_crop(m) for m in self.masks]  # cropped to the bounding box
        self.on_border = [any(_sides(m)) for m in self.masks]
        turns = int(min(abs(cfg.max_rotation), 180) // 90)
        self.quarter_turns = sorted({k % 4 for k in range(-turns, turns + 1)})

    def sample(
        self, height: int, width: int, generator: torch.Generator | int, roi: Tensor | None = None
    ) -> Tensor:
        g, cfg = _as_generator(generator), self.cfg
        if height < 2 * cfg.margin + 1 or width < 2 * cfg.margin + 1:
            raise ValueError(f"a {height}x{width} image leaves no room for an area with margin {cfg.margin}")
        inside = None
        if roi is not None:
            inside = _check_mask(roi, "roi")
            if inside.shape != (height, width):
                raise ValueError(f"roi is {tuple(inside.shape)}, the image {height}x{width}")
        for _ in range(self.max_tries):
            area = self._draw(height, width, g)
            if area is not None and (inside is None or not bool((area & ~inside).any())):
                return area[None].float()
        if inside is None:  # every draw vanished under nearest-neighbour downscaling
            raise ValueError(f"no non-empty area after {self.max_tries} draws; raise AreaConfig.scale_min")
        raise ValueError(
            f"no area fitting the roi after {self.max_tries} draws; the roi may be too small for "
            f"this defect's shape: lower AreaConfig.scale_min or pass a larger roi"
        )

    def _draw(self, height: int, width: int, g: torch.Generator) -> Tensor | None:
        """One L (height,width) bool, or None when the shape vanished under resampling."""
        cfg = self.cfg
        i = _randint(g, 0, len(self.masks) - 1)
        border = cfg.keep_border_contact and self.on_border[i]
        m = self.masks[i] if border else self.shapes[i]
        if cfg.flip and _uniform(g, 0, 1) < 0.5:
            m = m.flip(-1)
        if cfg.flip and _uniform(g, 0, 1) < 0.5:
            m = m.flip(-2)
        if border:
            k = self.quarter_turns[_randint(g, 0, len(self.quarter_turns) - 1)]
            m = torch.rot90(m, k)  # on the whole mask, so the touched sides follow
            sides = _sides(m)
        else:
            angle = _uniform(g, -cfg.max_rotation, cfg.max_rotation)
            m = F.rotate(m[None], angle, interpolation=InterpolationMode.NEAREST, expand=True)[0]
            sides = (False, False, False, False)
        shape = _crop(m) if m.any() else m
        shape = self._fit(shape, _uniform(g, cfg.scale_min, cfg.scale_max), height, width, sides)
        if not shape.any():
            return None
        h, w = shape.shape
        top, bottom, left, right = sides
        y = 0 if top else height - h if bottom else _randint(g, cfg.margin, height - cfg.margin - h)
        x = 0 if left else width - w if right else _randint(g, cfg.margin, width - cfg.margin - w)
        area = torch.zeros(height, width, dtype=torch.bool)
        area[y : y + h, x : x + w] = shape
        return area

    def _fit(self, shape: Tensor, scale: float, height: int, width: int, sides: Sides) -> Tensor:
        """Scale a cropped shape, span opposite touched sides, shrink to the room left by the margins."""
        top, bottom, left, right = sides
        span_h, span_w = top and bottom, left and right
        h, w = shape.shape
        if span_h and not span_w:
            scale = height / h
        elif span_w and not span_h:
            scale = width / w
        room_h = height - self.cfg.margin * ((not top) + (not bottom))
        room_w = width - self.cfg.margin * ((not left) + (not right))
        th, tw = h * scale, w * scale
        shrink = min([1.0] + ([] if span_h else [room_h / th]) + ([] if span_w else [room_w / tw]))
        th = height if span_h else max(1, min(room_h, math.floor(th * shrink + 0.5)))
        tw = width if span_w else max(1, min(room_w, math.floor(tw * shrink + 0.5)))
        shape = _resize(shape, th, tw)
        if shape.any() and (span_h or span_w):  # nearest + re-crop may lose an edge row/column
            shape = _resize(shape, height if span_h else shape.shape[0], width if span_w else shape.shape[1])
        return shape


def crop_window(area: Tensor, size: int, context: int = 4) -> tuple[int, int, int, int]:
    """A square window (top, left, h, w) of side ``size`` containing L, centred on it.

    area (1,H,W). If L's bounding box plus ``context`` pixels on each side does not fit in
    ``size``, the side grows to the next multiple of 4 that does. The window is then
    shifted (not shrunk) to stay in the image, as centred on L as the image allows; along
    a dimension where the image is smaller than the side, it is the whole dimension.
    """
    y0, x0, y1, x1 = bbox(area)
    height, width = area.shape[-2:]
    need = max(y1 - y0, x1 - x0) + 2 * context
    if need > size:
        size = 4 * math.ceil(need / 4)
    h, w = min(size, height), min(size, width)
    top = min(max(y0 - (h - (y1 - y0) + 1) // 2, 0), height - h)
    left = min(max(x0 - (w - (x1 - x0) + 1) // 2, 0), width - w)
    return top, left, h, w


def paste_window(full: Tensor, window: Tensor, box: tuple[int, int, int, int]) -> Tensor:
    """A copy of ``full`` (...,H,W) with ``window`` (...,h,w) written at box=(top, left, h, w)."""
    top, left, h, w = box
    height, width = full.shape[-2:]
    if window.shape[-2:] != (h, w) or top < 0 or left < 0 or top + h > height or left + w > width:
        raise ValueError(f"window {tuple(window.shape)} does not fit box {box} in {tuple(full.shape)}")
    out = full.clone()
    out[..., top : top + h, left : left + w] = window
    return out


def cut_window(image: Tensor, box: tuple[int, int, int, int], shape: tuple[int, int] | None = None,
               pad_mode: str = "replicate") -> Tensor:
    """``image`` (C,H,W) cut to box=(top, left, h, w), padded bottom/right to ``shape`` when smaller.

    ``pad_mode``: ``"replicate"`` for images, ``"zeros"`` for masks.
    """
    top, left, h, w = box
    out = image[:, top:top + h, left:left + w]
    if shape is not None and (h, w) != tuple(shape):
        pad = (0, shape[1] - w, 0, shape[0] - h)
        pad_fn = torch.nn.functional.pad
        out = pad_fn(out, pad) if pad_mode == "zeros" else pad_fn(out[None], pad, mode=pad_mode)[0]
    return out


def area_for_seed(sampler: AreaSampler, height: int, width: int, seed: int) -> tuple[Tensor, torch.Generator]:
    """The area L (1,H,W) of a sample with per-sample ``seed``, and the generator for its later draws.

    The one way L is drawn from a seed: generation (the Parquet row whose ``seed`` column is
    ``seed``), ``dstray stylize --seed`` and the report's Figure-3 row all call this, so the same
    seed, sampler (masks + AreaConfig) and image size give the same L. ValueError when the
    image cannot take an area of this type.
    """
    generator = torch.Generator().manual_seed(seed)
    return sampler.sample(height, width, generator), generator
