"""Target areas L: where a synthetic defect is generated on a defect-free image.

Wei et al., Algorithm 2, takes an area L of the defect-free sample S; the defect is
generated inside L and L is also the output label (§3.1). The paper does not say how L
is drawn; dstray derives it from the reference mask(s) M of the defect type, so that L
has a real defect's shape, varied by one smooth random warp (:class:`AreaSampler`).

:meth:`AreaSampler.sample` on an image of height x width:

1. draw one of the type's reference masks (uniformly);
2. draw its warp: flips (``cfg.flip``), a rotation, a scale uniform in
   [``scale_min``, ``scale_max``], an anisotropic stretch (width/height ratio times a factor
   log-uniform in [1/(1+``aspect``), 1+``aspect``]) and an elastic deformation (a
   ``elastic_points`` x ``elastic_points`` grid of control-point displacements, uniform in
   ±``elastic`` x the shape's size, interpolated bicubically: a smooth, thin-plate-like
   bend that changes the outline without tearing it);
3. apply it to the mask's signed distance field (bilinear resampling, L = where the warped
   field is > 0): outlines stay smooth at any scale and angle, and thin shapes (cracks)
   keep their continuity better than under nearest-neighbour resampling of the mask;
4. *free placement* (the reference does not touch its image border, or
   ``cfg.keep_border_contact`` is false): any angle in ±``max_rotation``; L is placed
   uniformly so that it keeps ``cfg.margin`` pixels from every border;
5. *border placement* (the reference touches a border of its image and
   ``keep_border_contact``; many Magnetic Tile breaks, frays and uneven areas do): only
   multiples of 90° within ±``max_rotation``, so each touched side stays a side; the elastic
   displacement across a touched side fades to zero there (the defect keeps its base on the
   border); every touched side is snapped onto the same side of the target, and L is placed
   freely along the others. A reference that spans its image between two opposite sides
   spans the target along that axis (its scale is then set by that span, not drawn);
6. if L does not fit the room left by the margins it is drawn again smaller, down to
   ``scale_min``; a background that cannot take the shape even at ``scale_min`` raises
   :class:`AreaDoesNotFit` (generation records the sample as a reject, with that message);
7. with a region of interest ``roi`` (a (1,H,W) mask), the ROI's bounding box stands in for the
   image: L is sized to its room (drawn smaller down to ``scale_min`` when too large for it), a
   touched side is snapped to a side of the box, a spanning shape spans the box, and L is placed
   within it; draws are repeated until L lies wholly inside the ROI, at most ``max_tries`` times,
   then ValueError saying how large the ROI is (:mod:`dstray.dst.regions`). Without a ROI the
   draws are the same as before ROIs existed (a seed gives the same L).

**Families** (``AreaConfig.family``): the above is the ``reference`` family. ``procedural`` draws L
from seeded shape kinds (blob, curve, border region, band) sized in the ranges measured on the
reference masks and widened by ``AreaConfig.widen`` (:mod:`dstray.dst.shapes`), with the same
margins, ROI box and placement; ``mix`` draws one coin per sample (half and half) before the rest.
:meth:`AreaSampler.draw` returns the family with L (:class:`Area`); the reference family's draws for
a seed are the same as before families existed (tested against a digest).

``sample_with_image`` also returns the reference *image* warped by the same transform (the
copy-paste baseline pastes it, so pixels and label agree); it consumes the same random
draws, so for one seed ``sample`` and ``sample_with_image`` give the same L. A procedural L has
no warp: its pixels are the reference defect's box resized into L's box
(:func:`dstray.dst.regions.copy_into`, as for the user's drawn areas). All randomness
comes from the given ``torch.Generator`` (CPU): the same generator state gives the same L.

:func:`crop_window` / :func:`cut_window` / :func:`paste_window` (:mod:`dstray.dst.windows`, re-exported
here) serve DST's patch mode: TransferNet runs on a square window around L instead of the whole image.
:func:`area_for_seed` is how every caller turns a per-sample seed into L.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from dstray.config import AREA_FAMILIES, AreaConfig
from dstray.dst.regions import copy_into
from dstray.dst.shapes import Procedural, TooLarge
from dstray.dst.windows import bbox, crop_window, cut_window, paste_window  # noqa: F401 (the windows around L)

# sides of a mask, in this order everywhere: top, bottom, left, right
Sides = tuple[bool, bool, bool, bool]
_NORMALS = {0: (0.0, -1.0), 1: (0.0, 1.0), 2: (-1.0, 0.0), 3: (1.0, 0.0)}  # outward normal (x, y) per side
_CANVAS_PAD = 3  # pixels kept around a shape's bounding box before warping (outline not cut)
_MAX_CANVAS = 16_000_000  # a warped shape larger than this many pixels is redrawn (absurd scale)


class AreaDoesNotFit(ValueError):
    """The image is too small to take an area of this defect type at ``scale_min`` (procedural: at the low end
    of its size range)."""


class Area(NamedTuple):
    """One drawn area: L (1,H,W) float {0,1}; the reference image warped like L (C,H,W), zero outside L, or
    None; the family it came from (``reference`` | ``procedural``)."""

    mask: Tensor
    image: Tensor | None
    family: str


def check_area_config(cfg: AreaConfig) -> None:
    """ValueError saying what is wrong with an :class:`AreaConfig` and what to give instead."""
    if not 0 < cfg.scale_min <= cfg.scale_max:
        raise ValueError(f"need 0 < scale_min <= scale_max; got {cfg.scale_min}, {cfg.scale_max}")
    if cfg.aspect < 0 or cfg.elastic < 0 or cfg.elastic_points < 2:
        raise ValueError(f"need aspect >= 0, elastic >= 0 and elastic_points >= 2; got {cfg.aspect}, "
                         f"{cfg.elastic}, {cfg.elastic_points}")
    if cfg.family not in AREA_FAMILIES:
        raise ValueError(f"--area-family {cfg.family!r} is not an area family; give one of {', '.join(AREA_FAMILIES)}")
    if not (isinstance(cfg.widen, (int, float)) and math.isfinite(cfg.widen) and cfg.widen >= 1):
        raise ValueError(f"--area-widen must be a number >= 1 (1: the reference's own sizes; 2: half to twice "
                         f"them); got {cfg.widen!r}")


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


def _sides(m: Tensor) -> Sides:
    return bool(m[0].any()), bool(m[-1].any()), bool(m[:, 0].any()), bool(m[:, -1].any())


def signed_distance(mask: Tensor) -> Tensor:
    """(H,W) bool -> (H,W) float32: + distance to the outside for pixels in the mask, - distance to
    the mask outside it, both minus 0.5 px, so the zero level runs between a mask pixel and its
    neighbour outside (Euclidean distance transform)."""
    from scipy.ndimage import distance_transform_edt

    m = mask.numpy()
    inside, outside = distance_transform_edt(m), distance_transform_edt(~m)
    return torch.from_numpy(np.where(m, inside - 0.5, 0.5 - outside).astype(np.float32))


def _as_generator(generator: torch.Generator | int) -> torch.Generator:
    return torch.Generator().manual_seed(generator) if isinstance(generator, int) else generator


def _uniform(g: torch.Generator, lo: float, hi: float) -> float:
    return lo + (hi - lo) * float(torch.rand((), generator=g))


def _randint(g: torch.Generator, lo: int, hi: int) -> int:
    """Uniform integer in [lo, hi], both included."""
    return int(torch.randint(lo, hi + 1, (), generator=g))


class _Shape:
    """One reference mask prepared for warping: its signed distance field (and image) on a canvas
    around its bounding box, and the sides of its image it touches."""

    def __init__(self, mask: Tensor, image: Tensor | None):
        height, width = mask.shape
        y0, x0, y1, x1 = bbox(mask)
        self.sides = _sides(mask)
        top, bottom, left, right = self.sides
        p = _CANVAS_PAD
        cy0, cy1 = (y0 if top else max(0, y0 - p)), (y1 if bottom else min(height, y1 + p))
        cx0, cx1 = (x0 if left else max(0, x0 - p)), (x1 if right else min(width, x1 + p))
        canvas = [signed_distance(mask)[None, cy0:cy1, cx0:cx1]]
        if image is not None:
            canvas.append(image[:, cy0:cy1, cx0:cx1].float())
        self.canvas = torch.cat(canvas)  # (1 [+ C], h, w): distance field first
        self.size = (y1 - y0, x1 - x0)  # bounding box (h, w) of the mask itself


class AreaSampler:
    """Draws target areas L for one defect type from its reference mask(s).

    reference_masks: list of (1,H,W) binary masks M (each may have its own size);
    reference_images: optional matching list of (C,H,W) images H (for :meth:`sample_with_image`);
    name: the defect type, for error messages.
    ``sample(height, width, generator, roi=None) -> (1,height,width)`` float {0,1};
    see the module docstring for the geometry.
    """

    def __init__(self, reference_masks: list[Tensor], cfg: AreaConfig = AreaConfig(), max_tries: int = 100,
                 reference_images: list[Tensor] | None = None, name: str = "defect"):
        if not reference_masks:
            raise ValueError("AreaSampler needs at least one reference mask")
        check_area_config(cfg)
        if reference_images is not None and len(reference_images) != len(reference_masks):
            raise ValueError(f"{len(reference_images)} reference images for {len(reference_masks)} masks")
        self.cfg, self.max_tries, self.name = cfg, max_tries, name
        masks = [_check_mask(m, f"reference mask {i}") for i, m in enumerate(reference_masks)]
        images = reference_images or [None] * len(masks)
        for i, (m, im) in enumerate(zip(masks, images)):
            if im is not None and tuple(im.shape[-2:]) != tuple(m.shape):
                raise ValueError(f"reference image {i} is {tuple(im.shape[-2:])}, its mask {tuple(m.shape)}")
        self.shapes = [_Shape(m, im) for m, im in zip(masks, images)]
        self.references = list(zip(masks, images))  # as given: copy's pixels for a procedural L
        self.has_images = reference_images is not None
        turns = int(min(abs(cfg.max_rotation), 180) // 90)
        self.quarter_turns = sorted({k % 4 for k in range(-turns, turns + 1)})
        self.procedural = (Procedural(masks, cfg.widen, self.quarter_turns, cfg.flip, name)
                           if cfg.family != "reference" else None)

    def sample(self, height: int, width: int, generator: torch.Generator | int,
               roi: Tensor | None = None) -> Tensor:
        return self.draw(height, width, generator, roi).mask

    def sample_with_image(self, height: int, width: int, generator: torch.Generator | int,
                          roi: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """``(L (1,H,W), the reference image warped like L (C,H,W), zero outside L)``; same draws as ``sample``.

        A procedural L has no warp: its pixels are the reference defect's box resized into L's box
        (:func:`dstray.dst.regions.copy_into`, as for the user's drawn areas)."""
        area = self.draw(height, width, generator, roi, with_image=True)
        return area.mask, area.image

    def draw(self, height: int, width: int, generator: torch.Generator | int, roi: Tensor | None = None, *,
             with_image: bool = False, box: tuple[int, int, int, int] | None = None) -> Area:
        """One :class:`Area` (L, the reference pixels for it when ``with_image``, its family); what ``sample``
        and ``sample_with_image`` return parts of. ``roi`` (1,H,W): L lies wholly inside it, placed within its
        bounding box, which also stands in for the image (sides, spans, the room) unless ``box`` (y0, x0, y1,
        x1) is given: the room left beside other defects is a ``roi`` whose stand-in is the user's ROI's box,
        or the image."""
        if with_image and not self.has_images:
            raise ValueError("sample_with_image needs the reference images (AreaSampler(reference_images=...))")
        g, cfg = _as_generator(generator), self.cfg
        if height < 2 * cfg.margin + 1 or width < 2 * cfg.margin + 1:
            raise AreaDoesNotFit(f"a {width}x{height} image leaves no room for a {self.name} area with margin "
                                 f"{cfg.margin}")
        inside = within = None
        frame = (0, 0, height, width)
        if roi is not None:
            inside = _check_mask(roi, "roi")
            if inside.shape != (height, width):
                raise ValueError(f"roi is {tuple(inside.shape)}, the image {height}x{width}")
            within = bbox(inside)
            frame = tuple(box) if box is not None else within
        family = cfg.family
        if family == "mix":  # one coin per sample, before its draws
            family = "procedural" if _uniform(g, 0, 1) < 0.5 else "reference"
        for _ in range(self.max_tries):
            if family == "procedural":
                drawn = self._draw_procedural(height, width, g, with_image, frame, inside, within)
            else:
                drawn = self._draw(height, width, g, with_image, inside, frame, within)
            if drawn is not None and (inside is None or not bool((drawn[0] & ~inside).any())):
                return Area(drawn[0][None].float(), drawn[1] if with_image else None, family)
        if inside is None:  # every draw vanished (a tiny shape at a small scale)
            raise ValueError(f"no non-empty {self.name} area after {self.max_tries} draws; raise --area-scale-min")
        y0, x0, y1, x1 = within
        low = (f"--area-scale-min {cfg.scale_min:g}; draw a larger roi or lower --area-scale-min" if family == "reference"
               else f"the low end of its size range (--area-widen {cfg.widen:g}); draw a larger roi or raise "
               "--area-widen")
        raise ValueError(
            f"no {self.name} area lies wholly inside the region of interest in {self.max_tries} draws: the roi has "
            f"{int(inside.sum())} px ({100 * float(inside.float().mean()):.1f} % of the {width}x{height} image, within "
            f"a {x1 - x0}x{y1 - y0} px box), too small or too thin for this defect's shapes at {low}"
        )

    def _draw_procedural(self, height: int, width: int, g: torch.Generator, with_image: bool,
                         frame: tuple[int, int, int, int], inside: Tensor | None, within=None):
        """One procedural (L (height,width) bool, the reference pixels for it or None), or None when it does not
        fit the ROI's box (:class:`dstray.dst.shapes.Procedural`); AreaDoesNotFit without a ROI."""
        fy0, fx0, fy1, fx1 = frame
        m = self.cfg.margin
        margins = (max(0, m - fy0), max(0, fy1 - (height - m)), max(0, m - fx0), max(0, fx1 - (width - m)))
        try:
            i, cut, sides = self.procedural.draw(g, (fy1 - fy0, fx1 - fx0), margins)
        except TooLarge as exc:
            if inside is not None:
                return None
            raise AreaDoesNotFit(f"background {width}x{height} cannot take a procedural {self.name} area: {exc}; use "
                                 "larger backgrounds or raise --area-widen (a lower low end)") from exc
        placed = self._place(torch.from_numpy(cut)[None].float(), height, width, sides, g, frame, within)
        if placed is None or not with_image:
            return placed
        mask, image = self.references[i]
        return placed[0], copy_into(image, mask[None].float(), placed[0][None].float())

    def _draw(self, height: int, width: int, g: torch.Generator, with_image: bool, inside: Tensor | None = None,
              frame: tuple[int, int, int, int] | None = None, within: tuple[int, int, int, int] | None = None):
        """One (L (height,width) bool, warped image or None), or None when the shape vanished (or, with a
        ROI ``inside``, does not fit ``frame``, the box standing in for the image, or cannot be placed
        ``within`` the ROI's box)."""
        cfg = self.cfg
        fy0, fx0, fy1, fx1 = frame or (0, 0, height, width)
        shape = self.shapes[_randint(g, 0, len(self.shapes) - 1)]
        border = cfg.keep_border_contact and any(shape.sides)
        fx = cfg.flip and _uniform(g, 0, 1) < 0.5
        fy = cfg.flip and _uniform(g, 0, 1) < 0.5
        if border:
            theta = 90.0 * self.quarter_turns[_randint(g, 0, len(self.quarter_turns) - 1)]
        else:
            theta = _uniform(g, -cfg.max_rotation, cfg.max_rotation)
        scale = _uniform(g, cfg.scale_min, cfg.scale_max)
        stretch = math.exp(_uniform(g, -math.log1p(cfg.aspect), math.log1p(cfg.aspect)))
        ctrl = (torch.rand((2, cfg.elastic_points, cfg.elastic_points), generator=g, dtype=torch.float64) * 2 - 1)
        ctrl = ctrl * cfg.elastic
        linear = _linear(theta, fx, fy, stretch)
        sides = _turned_sides(shape.sides, linear) if border else (False,) * 4
        top, bottom, left, right = sides
        span_h, span_w = top and bottom, left and right
        # the room: the frame (image or ROI box) less the margins from the image border, none on a snapped side
        room_h = (fy1 if bottom else min(fy1, height - cfg.margin)) - (fy0 if top else max(fy0, cfg.margin))
        room_w = (fx1 if right else min(fx1, width - cfg.margin)) - (fx0 if left else max(fx0, cfg.margin))
        frame = (fy0, fx0, fy1, fx1)
        for _ in range(4):  # shrink towards scale_min until the warped shape fits the room
            warped = _warp(shape.canvas if with_image else shape.canvas[:1], linear * scale, ctrl, sides)
            if warped is None:
                return None
            cut = _crop_to_shape(warped)
            if cut is None:
                return None
            h, w = cut.shape[-2:]
            if span_h or span_w:
                return self._place(_span(cut, fy1 - fy0 if span_h else None, fx1 - fx0 if span_w else None, room_h,
                                         room_w), height, width, sides, g, frame, within)
            fit = min(room_h / h, room_w / w)
            if fit >= 1:
                return self._place(cut, height, width, sides, g, frame, within)
            if scale * fit < cfg.scale_min:
                if inside is not None:  # another rotation may fit the ROI's box
                    return None
                raise self._does_not_fit(shape, linear, height, width)
            scale = max(cfg.scale_min, scale * fit * 0.97)
        if inside is not None:
            return None
        raise self._does_not_fit(shape, linear, height, width)

    def _does_not_fit(self, shape: _Shape, linear: Tensor, height: int, width: int) -> AreaDoesNotFit:
        h, w = shape.size
        corners = torch.tensor([[0, 0], [w, 0], [0, h], [w, h]], dtype=torch.float64) @ (linear * self.cfg.scale_min).T
        need = (corners.max(0).values - corners.min(0).values).round().int().tolist()
        return AreaDoesNotFit(
            f"background {width}x{height} cannot take a {self.name} area of at least {need[0]}x{need[1]} px "
            f"(the reference shape at --area-scale-min {self.cfg.scale_min}, margin {self.cfg.margin} px); "
            "use larger backgrounds or lower --area-scale-min")

    def _place(self, cut: Tensor, height: int, width: int, sides: Sides, g: torch.Generator,
               frame: tuple[int, int, int, int] | None = None, within: tuple[int, int, int, int] | None = None):
        """``cut`` (K,h,w) (its area: ``cut[0] > 0``) snapped to the ``sides`` of ``frame`` (the image, or the box
        standing in for it), uniformly along the others within ``frame`` and ``within`` (the ROI's box) with
        ``margin`` px from the image border."""
        cfg = self.cfg
        area_cut = cut[0] > 0
        if not bool(area_cut.any()):
            return None
        h, w = area_cut.shape
        top, bottom, left, right = sides
        fy0, fx0, fy1, fx1 = frame or (0, 0, height, width)
        py0, px0, py1, px1 = fy0, fx0, fy1, fx1
        if within is not None:
            py0, px0, py1, px1 = max(py0, within[0]), max(px0, within[1]), min(py1, within[2]), min(px1, within[3])
        ys = (max(cfg.margin, py0), min(height - cfg.margin, py1) - h)
        xs = (max(cfg.margin, px0), min(width - cfg.margin, px1) - w)
        if (ys[0] > ys[1] and not (top or bottom)) or (xs[0] > xs[1] and not (left or right)):
            return None
        y = fy0 if top else fy1 - h if bottom else _randint(g, *ys)
        x = fx0 if left else fx1 - w if right else _randint(g, *xs)
        area = torch.zeros(height, width, dtype=torch.bool)
        area[y:y + h, x:x + w] = area_cut
        image = None
        if cut.shape[0] > 1:
            image = torch.zeros(cut.shape[0] - 1, height, width)
            image[:, y:y + h, x:x + w] = cut[1:].clamp(0, 1) * area_cut
        return area, image


def _linear(theta: float, fx: bool, fy: bool, stretch: float) -> Tensor:
    """2x2 map (x, y) -> (x', y') of a reference offset: flips, stretch (x by sqrt, y by 1/sqrt), rotation."""
    t = math.radians(theta)
    c, s = round(math.cos(t), 12), round(math.sin(t), 12)  # exact for quarter turns
    rot = torch.tensor([[c, -s], [s, c]], dtype=torch.float64)
    diag = torch.diag(torch.tensor([math.sqrt(stretch) * (-1 if fx else 1), (-1 if fy else 1) / math.sqrt(stretch)],
                                   dtype=torch.float64))
    return rot @ diag


def _turned_sides(sides: Sides, linear: Tensor) -> Sides:
    """Which sides of the target the touched sides of the reference become under ``linear`` (quarter turns, flips)."""
    out = [False] * 4
    for k, touched in enumerate(sides):
        if touched:
            n = linear @ torch.tensor(_NORMALS[k], dtype=torch.float64)
            x, y = float(n[0]), float(n[1])
            out[(0 if y < 0 else 1) if abs(y) > abs(x) else (2 if x < 0 else 3)] = True
    return tuple(out)  # type: ignore[return-value]


def _warp(canvas: Tensor, linear: Tensor, ctrl: Tensor, sides: Sides) -> Tensor | None:
    """Resample ``canvas`` (K,h,w) under ``linear`` (2x2, scale included) and the elastic ``ctrl`` field.

    The output canvas holds the whole transformed input (plus room for the displacement).
    Displacements are ``ctrl`` (2,P,P) times the output's longer side, interpolated bicubically;
    their component across each touched side of ``sides`` fades linearly to zero at that side.
    Bilinear sampling; None for an absurdly large output.
    """
    h, w = canvas.shape[-2:]
    centre = torch.tensor([(w - 1) / 2, (h - 1) / 2], dtype=torch.float64)
    corners = torch.tensor([[-0.5, -0.5], [w - 0.5, -0.5], [-0.5, h - 0.5], [w - 0.5, h - 0.5]],
                           dtype=torch.float64) - centre
    moved = corners @ linear.T
    lo, hi = moved.min(0).values, moved.max(0).values
    extent = float((hi - lo).max())
    pad = int(math.ceil(extent * float(ctrl.abs().max()))) + 1
    out_w, out_h = int(math.ceil(float(hi[0] - lo[0]))) + 2 * pad, int(math.ceil(float(hi[1] - lo[1]))) + 2 * pad
    if out_w * out_h > _MAX_CANVAS:
        return None
    xs = lo[0] - pad + torch.arange(out_w, dtype=torch.float64) + 0.5
    ys = lo[1] - pad + torch.arange(out_h, dtype=torch.float64) + 0.5
    qy, qx = torch.meshgrid(ys, xs, indexing="ij")
    disp = F.interpolate(ctrl[None], size=(out_h, out_w), mode="bicubic", align_corners=True)[0] * extent
    top, bottom, left, right = sides
    if top or bottom:
        v = torch.linspace(0, 1, out_h, dtype=torch.float64)[:, None]
        disp[1] *= torch.minimum(v if top else torch.ones_like(v), (1 - v) if bottom else torch.ones_like(v))
    if left or right:
        u = torch.linspace(0, 1, out_w, dtype=torch.float64)[None, :]
        disp[0] *= torch.minimum(u if left else torch.ones_like(u), (1 - u) if right else torch.ones_like(u))
    src = torch.stack([qx - disp[0], qy - disp[1]], -1) @ torch.linalg.inv(linear).T + centre
    grid = torch.stack([(2 * src[..., 0] + 1) / w - 1, (2 * src[..., 1] + 1) / h - 1], -1).float()
    # the distance field is 0 (not inside) beyond its canvas; the image repeats its border pixels there
    field = F.grid_sample(canvas[None, :1], grid[None], mode="bilinear", padding_mode="zeros", align_corners=False)
    if canvas.shape[0] == 1:
        return field[0]
    image = F.grid_sample(canvas[None, 1:], grid[None], mode="bilinear", padding_mode="border", align_corners=False)
    return torch.cat([field, image], 1)[0]


def _crop_to_shape(warped: Tensor) -> Tensor | None:
    """The warped canvas cut to the bounding box of its shape (distance field > 0); None if empty."""
    m = warped[0] > 0
    if not bool(m.any()):
        return None
    y0, x0, y1, x1 = bbox(m)
    return warped[:, y0:y1, x0:x1]


def _span(cut: Tensor, height: int | None, width: int | None, room_h: int, room_w: int) -> Tensor:
    """Resize a cut shape to span ``height`` and/or ``width``; the other axis scales alike, within its room."""
    h, w = cut.shape[-2:]
    if height is not None and width is not None:
        size = (height, width)
    elif height is not None:
        size = (height, max(1, min(room_w, round(w * height / h))))
    else:
        size = (max(1, min(room_h, round(h * width / w))), width)
    return F.interpolate(cut[None], size=size, mode="bilinear", align_corners=False)[0]


def area_for_seed(sampler: AreaSampler, height: int, width: int, seed: int,
                  roi: Tensor | None = None) -> tuple[Tensor, torch.Generator]:
    """The area L (1,H,W) of a sample with per-sample ``seed``, and the generator for its later draws.

    The one way L is drawn from a seed: generation (the Parquet row whose ``seed`` column is
    ``seed``), ``dstray stylize --seed`` and the report's Figure-3 row all call this, so the same
    seed, sampler (masks + AreaConfig) and image size give the same L. ValueError when the
    image cannot take an area of this type (or none lies inside ``roi``, (1,H,W)).
    """
    generator = torch.Generator().manual_seed(seed)
    return sampler.sample(height, width, generator, roi=roi), generator
