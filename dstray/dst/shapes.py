"""Procedural target areas L: defects that vary in size, length, orientation and place.

The warped reference (:mod:`dstray.dst.areas`, family ``reference``) gives every sample of a
type the one reference shape at 0.75-1.25x its size, but real defects of a type vary far more
(issue 23; measured on Magnetic Tile: blowholes of 26-430 px, cracks 13-300 px long, frays of
170-66000 px). The ``procedural`` family draws L from a few seeded shape kinds instead, each
sized within ranges **measured on the type's reference mask and widened** by a factor ``widen``:

- ``blob``: an ellipse with low-frequency radial noise (blowhole, fray);
- ``curve``: a thin random walk with a width that tapers (crack), starting at a side of the
  image for a reference that touches one (in :data:`CURVE_BORDER_SHARE` of the draws);
- ``border``: a half-blob standing on a side of the image (break);
- ``band``: the region between one side and a wavy, low-frequency boundary that spans the image
  (uneven).

The kind of a reference follows its geometry (:func:`kinds_of`): spans two opposite sides of its
image -> band; elongation >= :data:`CURVE_ELONGATION` -> curve; touches a side -> border; else
blob; a reference of elongation in [:data:`BORDERLINE_ELONGATION`, :data:`CURVE_ELONGATION`) gets
its kind *and* curve (each half of the draws). The ranges (:func:`ranges`): a linear size in
[ref / widen, ref x widen] (so area in [A / widen^2, A x widen^2]), elongation, width, roughness and
a band's coverage and waviness likewise in [ref / widen, ref x widen]; orientation free (blobs,
free curves) or set by the side a shape stands on (any side the reference's can be turned to).

Every drawing function (:func:`blob`, :func:`curve`, :func:`border_region`, :func:`band`) takes its
sizes and a ``torch.Generator`` and returns a bool ndarray (h, w) cut to the shape (an anchored
shape's side is row 0); the noise it draws has a fixed size, so the same generator state drawn at
a smaller size gives the same shape smaller (how a shape too large for its room is shrunk).
:class:`Procedural` is what :class:`dstray.dst.areas.AreaSampler` calls: one shape, fitted to the
room, turned to its side. Of :class:`dstray.config.AreaConfig`, ``margin`` applies as for the reference
family, ``max_rotation`` (its quarter turns) and ``flip`` set the sides a shape may stand on; a free
shape's orientation is always uniform, and ``scale_*``, ``aspect``, ``elastic*`` and
``keep_border_contact`` belong to the warp of the reference family only. Pure numpy/scipy/skimage and
torch; no Ray.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

KINDS = ("blob", "curve", "border", "band")
CURVE_ELONGATION = 8.0  # major / minor axis at and above which a reference is thin: a curve (MT crack: 20.7)
BORDERLINE_ELONGATION = 6.0  # from here up to CURVE_ELONGATION a reference gets its kind and curve, half each
CURVE_BORDER_SHARE = 0.7  # share of curves that start at a side when the reference touches one (MT cracks: ~70 %)
MAX_COVERAGE = 0.75  # a band never covers more of its image than this, whatever widen says
MIN_WIDTH = 1.5  # px: the thinnest curve drawn
TOP, BOTTOM, LEFT, RIGHT = range(4)  # sides, in this order everywhere: (top, bottom, left, right)
_ROT90 = {TOP: 0, LEFT: 1, BOTTOM: 2, RIGHT: 3}  # np.rot90 turns that put a shape drawn on the top onto a side
_TURN = {TOP: LEFT, LEFT: BOTTOM, BOTTOM: RIGHT, RIGHT: TOP}  # a quarter turn, counter-clockwise
_OPPOSITE = {TOP: BOTTOM, BOTTOM: TOP, LEFT: RIGHT, RIGHT: LEFT}

Sides = tuple[bool, bool, bool, bool]


class TooLarge(ValueError):
    """The shape does not fit its room even at the low end of its size range; ``need`` is its (h, w) there."""

    def __init__(self, message: str, need: tuple[int, int]):
        super().__init__(message)
        self.need = need


# --------------------------------------------------------------------------- measuring a reference
@dataclass(frozen=True)
class Geometry:
    """What a reference mask measures (pixels, degrees); shape terms of its largest connected region.

    ``area`` px; ``major``/``minor``: ellipse axis lengths (skimage ``regionprops``); ``orientation``:
    of the major axis, degrees; ``length``: a curve's length (skeleton, at least ``major``);
    ``width``: widest extent across (2 x the largest inscribed radius); ``fill``: area / (length x
    width), how much a curve tapers; ``solidity``: area / convex area; ``sides``: the sides of its
    image it touches; ``side``: the side it stands on (the longest contact; None if none); ``base``
    and ``depth``: its extent along and away from that side; ``coverage``: its share of the image;
    ``wave``: std / mean of its depth from ``side`` along that side (a band's boundary); ``image``:
    (H, W) of its image.
    """

    area: float
    major: float
    minor: float
    orientation: float
    length: float
    width: float
    fill: float
    solidity: float
    sides: Sides
    side: int | None
    base: float
    depth: float
    coverage: float
    wave: float
    image: tuple[int, int]

    @property
    def elongation(self) -> float:
        return self.major / max(self.minor, 1.0)

    @property
    def spans(self) -> bool:
        """True when it touches two opposite sides of its image."""
        top, bottom, left, right = self.sides
        return (top and bottom) or (left and right)


def measure(mask) -> Geometry:
    """The :class:`Geometry` of a reference mask: (1,H,W) or (H,W), tensor or ndarray, binary, non-empty."""
    from scipy.ndimage import distance_transform_edt
    from skimage.measure import label, regionprops
    from skimage.morphology import skeletonize

    m = np.asarray(mask.cpu() if isinstance(mask, torch.Tensor) else mask).astype(bool)
    m = m[0] if m.ndim == 3 else m
    if m.ndim != 2 or not m.any():
        raise ValueError(f"measure needs a non-empty (H,W) or (1,H,W) mask; got shape {m.shape}, {int(m.sum())} px set")
    labels = label(m, connectivity=2)
    p = max(regionprops(labels), key=lambda r: r.area)
    region = labels == p.label
    height, width = region.shape
    sides = (bool(region[0].any()), bool(region[-1].any()), bool(region[:, 0].any()), bool(region[:, -1].any()))
    contact = [int(region[0].sum()), int(region[-1].sum()), int(region[:, 0].sum()), int(region[:, -1].sum())]
    if (sides[TOP] and sides[BOTTOM]) or (sides[LEFT] and sides[RIGHT]):  # a band: it stands on a perpendicular side
        spanned = (LEFT, RIGHT) if sides[LEFT] and sides[RIGHT] else (TOP, BOTTOM)
        choices = [k for k in range(4) if k not in spanned]
        if any(sides[k] for k in choices):
            side = max((k for k in choices if sides[k]), key=lambda k: contact[k])
        else:  # a stripe across the middle: the side nearer to its centre
            cy, cx = p.centroid
            side = (TOP if cy < height / 2 else BOTTOM) if spanned == (LEFT, RIGHT) else (LEFT if cx < width / 2 else RIGHT)
    else:
        side = max(range(4), key=lambda k: contact[k]) if any(sides) else None
    y0, x0, y1, x1 = p.bbox
    if side in (TOP, BOTTOM) or side is None:
        base, depth = float(x1 - x0), float(y1 - y0)
        rows = np.argwhere(region.any(0))[:, 0]
        per = region[:, rows].sum(0) if side is not None else np.ones(1)
    else:
        base, depth = float(y1 - y0), float(x1 - x0)
        rows = np.argwhere(region.any(1))[:, 0]
        per = region[rows].sum(1)
    widest = 2.0 * float(distance_transform_edt(np.pad(region, 1)).max())
    length = max(float(p.axis_major_length), float(skeletonize(region).sum()) + widest)
    area = float(p.area)
    return Geometry(
        area=area, major=float(p.axis_major_length), minor=float(p.axis_minor_length),
        orientation=math.degrees(float(p.orientation)), length=length, width=widest,
        fill=min(1.0, area / (length * widest)), solidity=float(p.solidity), sides=sides, side=side,
        base=base, depth=depth, coverage=float(m.mean()), wave=float(per.std() / max(per.mean(), 1.0)),
        image=(height, width))


def kinds_of(geometry: Geometry) -> tuple[str, ...]:
    """The shape kind(s) of a reference (the rule of the module docstring): band, curve, border, blob."""
    if geometry.spans:
        return ("band",)
    if geometry.elongation >= CURVE_ELONGATION:
        return ("curve",)
    kind = "border" if geometry.side is not None else "blob"
    return (kind, "curve") if geometry.elongation >= BORDERLINE_ELONGATION else (kind,)


def roughness_of(geometry: Geometry) -> float:
    """The radial-noise amplitude of a reference's outline, from its solidity (area / convex area): 0.06 + 4 x
    (1 - solidity), within [0.08, 0.4] (MT: blowhole 0.23, fray 0.16, break 0.4)."""
    return min(0.4, max(0.08, 0.06 + 4.0 * (1.0 - geometry.solidity)))


@dataclass(frozen=True)
class Ranges:
    """The (lo, hi) ranges a procedural shape of a reference is drawn in (px, px^2, ratios)."""

    area: tuple[float, float]  # px^2: [A / widen^2, A x widen^2] (blob, border region; a curve's follows from
    #                              its length and width)
    elongation: tuple[float, float]  # blob: major / minor
    ratio: tuple[float, float]  # border region: base / depth
    length: tuple[float, float]  # curve, px
    width: tuple[float, float]  # curve: widest extent, px
    roughness: tuple[float, float]  # radial noise amplitude (blob, border region)
    coverage: tuple[float, float]  # band: share of the image
    wave: tuple[float, float]  # band: std / mean of its depth


def ranges(geometry: Geometry, widen: float) -> Ranges:
    """Every quantity of ``geometry`` widened to [ref / widen, ref x widen]: linear sizes, so the area to
    [A / widen^2, A x widen^2]; elongation at least 1, curve width at least :data:`MIN_WIDTH`, roughness at
    most 0.5, coverage at most :data:`MAX_COVERAGE`."""
    if widen < 1:
        raise ValueError(f"widen must be >= 1 (1 = the reference's own sizes only); got {widen}")
    w, g = widen, geometry

    def span(x: float, lo: float = 0.0, hi: float = math.inf) -> tuple[float, float]:
        return min(hi, max(lo, x / w)), min(hi, max(lo, x * w))

    ratio = g.base / max(g.depth, 1.0)
    return Ranges(area=(g.area / w**2, g.area * w**2), elongation=span(g.elongation, lo=1.0), ratio=span(ratio, lo=0.25),
                  length=span(g.length, lo=4.0), width=span(g.width, lo=MIN_WIDTH),
                  roughness=span(roughness_of(g), hi=0.5), coverage=span(g.coverage, hi=MAX_COVERAGE),
                  wave=span(max(g.wave, 0.02)))


# --------------------------------------------------------------------------- random draws (torch.Generator only)
def _uniform(g: torch.Generator, lo: float, hi: float) -> float:
    return lo + (hi - lo) * float(torch.rand((), generator=g, dtype=torch.float64))


def _log_uniform(g: torch.Generator, lo: float, hi: float) -> float:
    return math.exp(_uniform(g, math.log(lo), math.log(hi)))


def _randint(g: torch.Generator, lo: int, hi: int) -> int:
    """Uniform integer in [lo, hi], both included."""
    return int(torch.randint(lo, hi + 1, (), generator=g))


def _noise(g: torch.Generator, n: int) -> np.ndarray:
    """``n`` values uniform in [-1, 1]."""
    return (torch.rand(n, generator=g, dtype=torch.float64) * 2 - 1).numpy()


def _harmonics(g: torch.Generator, ks: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray]:
    """Amplitudes (uniform in [-1, 1] / k) and phases of the harmonics ``ks``."""
    amp = _noise(g, len(ks)) / np.asarray(ks, dtype=np.float64)
    phase = (torch.rand(len(ks), generator=g, dtype=torch.float64) * 2 * math.pi).numpy()
    return amp, phase


def _crop(m: np.ndarray, keep_top: bool = False) -> np.ndarray:
    """``m`` cut to its bounding box (from row 0 when ``keep_top``)."""
    rows, cols = np.flatnonzero(m.any(1)), np.flatnonzero(m.any(0))
    if rows.size == 0:
        return m[:0, :0]
    return m[0 if keep_top else rows[0]:rows[-1] + 1, cols[0]:cols[-1] + 1]


# --------------------------------------------------------------------------- the shape kinds
_BLOB_HARMONICS = tuple(range(2, 17))  # 2 (an oval) to 16 (a ragged edge)


def _radial(g: torch.Generator, roughness: float):
    """A closed outline's radial factor 1 + sum_k a_k cos(k t + p_k) over :data:`_BLOB_HARMONICS`, a_k ~ 1/k,
    scaled so that sum_k |a_k| = ``roughness`` (< 1: the outline stays star-shaped around the centre)."""
    amp, phase = _harmonics(g, _BLOB_HARMONICS)
    amp = amp * roughness / max(float(np.abs(amp).sum()), 1e-9)
    ks = np.asarray(_BLOB_HARMONICS, dtype=np.float64)
    return lambda t: 1.0 + (amp[:, None, None] * np.cos(ks[:, None, None] * t[None] + phase[:, None, None])).sum(0)


def _render_ellipse(a: float, b: float, angle: float, radial, half: bool = False, skew: float = 0.0) -> np.ndarray:
    """Pixels whose ellipse-normalised radius is inside ``radial`` (a function of the polar angle)."""
    reach = max(a, b) * 1.35 + 2
    r = int(math.ceil(reach))
    ys = np.arange(0 if half else -r, r + 1, dtype=np.float64) + (0.5 if half else 0.0)
    xs = np.arange(-r - int(abs(skew) * r) - 1, r + int(abs(skew) * r) + 2, dtype=np.float64)
    y, x = np.meshgrid(ys, xs, indexing="ij")
    x = x - skew * y
    c, s = math.cos(angle), math.sin(angle)
    u, v = (c * x + s * y) / a, (-s * x + c * y) / b
    return np.hypot(u, v) <= radial(np.arctan2(v, u))


def _sized(render, area: float) -> np.ndarray:
    """``render(factor)`` at factor 1, then once more scaled so that its area is ``area`` (rasterisation, noise)."""
    m = render(1.0)
    got = int(m.sum())
    if got and abs(got / area - 1) > 0.02:
        m = render(math.sqrt(area / got))
    return m


def blob(g: torch.Generator, area: float, elongation: float, angle: float, roughness: float) -> np.ndarray:
    """An ellipse of ``area`` px and major/minor ``elongation``, its major axis at ``angle`` degrees, with
    low-frequency radial noise of amplitude ``roughness``: bool (h, w) cut to the shape."""
    radial = _radial(g, roughness)
    a, b = math.sqrt(area * elongation / math.pi), math.sqrt(area / (math.pi * elongation))
    return _crop(_sized(lambda f: _render_ellipse(a * f, b * f, math.radians(angle), radial), area))


def border_region(g: torch.Generator, area: float, ratio: float, roughness: float) -> np.ndarray:
    """A half-blob of ``area`` px standing on row 0 (its base), base / depth ``ratio``, slanted by up to 25
    degrees, with radial noise ``roughness``: bool (h, w), row 0 is the side it stands on."""
    radial = _radial(g, roughness)
    skew = math.tan(math.radians(_uniform(g, -25, 25)))
    a = math.sqrt(area * ratio / math.pi)  # half-ellipse: base 2a, depth b, area pi a b / 2
    b = 2 * a / ratio
    return _crop(_sized(lambda f: _render_ellipse(a * f, b * f, 0.0, radial, half=True, skew=skew), area),
                 keep_top=True)


_CURVE_BENDS = (1, 2, 3)
_CURVE_JITTER = 24  # points of the fine wobble along a curve


def curve(g: torch.Generator, length: float, width: float, fill: float, anchored: bool) -> np.ndarray:
    """A thin random walk ``length`` px long, ``width`` px at its widest, tapering so that its area is about
    ``fill`` x length x width: a heading that bends smoothly (three harmonics, up to ~50 degrees) plus a fine
    wobble. ``anchored``: it starts on row 0 heading into the image (within 50 degrees of straight down) and
    is widest there; else it starts anywhere at any heading and is widest in its middle. bool (h, w)."""
    heading0 = _uniform(g, -50, 50) if anchored else _uniform(g, -180, 180)
    bend, phase = _harmonics(g, _CURVE_BENDS)
    bend = bend * _uniform(g, 0.3, 0.9)
    wobble = _noise(g, _CURVE_JITTER) * 0.25
    n = max(8, int(math.ceil(length * 2)))
    s = np.linspace(0.0, 1.0, n)
    heading = (math.radians(heading0) + math.pi / 2
               + (bend[:, None] * np.sin(math.pi * np.asarray(_CURVE_BENDS)[:, None] * s[None] + phase[:, None])).sum(0)
               + np.interp(s, np.linspace(0, 1, _CURVE_JITTER), wobble))
    step = length / (n - 1)
    x = np.concatenate([[0.0], np.cumsum(np.cos(heading[:-1]) * step)])
    y = np.concatenate([[0.0], np.cumsum(np.sin(heading[:-1]) * step)])
    if anchored:
        y = np.abs(y)  # stays on the image side of its start
    tip = min(1.0, max(0.2, 2 * fill - 1 if anchored else (fill - 2 / math.pi) / (1 - 2 / math.pi)))
    profile = 1 - (1 - tip) * s if anchored else tip + (1 - tip) * np.sin(math.pi * s)
    radius = np.maximum(0.75, width / 2 * profile)
    pad = int(math.ceil(radius.max())) + 1
    x0, y0 = math.floor(x.min()) - pad, (0 if anchored else math.floor(y.min()) - pad)
    h, w = int(math.ceil(y.max())) - y0 + pad + 1, int(math.ceil(x.max())) - x0 + pad + 1
    canvas = np.zeros((h, w), bool)
    for cx, cy, r in zip(x - x0, y - y0, radius):
        i0, i1 = max(0, int(cy - r) - 1), min(h, int(cy + r) + 2)
        j0, j1 = max(0, int(cx - r) - 1), min(w, int(cx + r) + 2)
        yy, xx = np.ogrid[i0:i1, j0:j1]
        canvas[i0:i1, j0:j1] |= (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r
    return _crop(canvas, keep_top=anchored)


_BAND_WAVES = (1, 2, 3)


def band(g: torch.Generator, depth: int, width: int, coverage: float, wave: float) -> np.ndarray:
    """The region between row 0 and a wavy boundary across all ``width`` columns of a ``depth`` x ``width``
    image: mean depth ``coverage`` x ``depth``, the boundary a sum of 1-3 half-waves across the width whose
    std is ``wave`` x its mean depth. bool (h, width), h <= depth, every column at least one pixel deep."""
    amp, phase = _harmonics(g, _BAND_WAVES)
    t = np.linspace(0.0, 1.0, width)
    raw = (amp[:, None] * np.sin(math.pi * np.asarray(_BAND_WAVES)[:, None] * t[None] + phase[:, None])).sum(0)
    raw = (raw - raw.mean()) / max(float(raw.std()), 1e-9)
    mean = coverage * depth
    edge = np.clip(np.round(mean * (1 + wave * raw)), 1, depth).astype(int)
    return np.arange(int(edge.max()))[:, None] < edge[None, :]


# --------------------------------------------------------------------------- one procedural area
def _on_side(m: np.ndarray, side: int) -> np.ndarray:
    """A shape drawn on the top side, turned onto ``side``."""
    return np.ascontiguousarray(np.rot90(m, _ROT90[side]))


def sides_of(side: int, turns: list[int], flip: bool) -> list[int]:
    """The sides a reference's ``side`` may become under the allowed quarter turns ``turns`` and flips."""
    out = set()
    for q in turns:
        k = side
        for _ in range(q % 4):
            k = _TURN[k]
        out |= {k, _OPPOSITE[k]} if flip else {k}
    return sorted(out)


class Procedural:
    """Procedural shapes for the reference masks of one defect type.

    masks: the type's reference masks, each (1,H,W) or (H,W) binary; ``widen``: the range factor;
    ``turns``: the quarter turns allowed (``AreaConfig.max_rotation``), ``flip``: flips allowed;
    ``name``: the type, for messages. :meth:`draw` draws one shape for a room.
    """

    def __init__(self, masks: list, widen: float = 2.0, turns: list[int] = (0, 1, 2, 3), flip: bool = True,
                 name: str = "defect"):
        self.geometries = [measure(m) for m in masks]
        self.kinds = [kinds_of(geo) for geo in self.geometries]
        self.ranges = [ranges(geo, widen) for geo in self.geometries]
        self.widen, self.turns, self.flip, self.name = widen, list(turns), flip, name

    def draw(self, g: torch.Generator, frame: tuple[int, int],
             margins: tuple[int, int, int, int] = (0, 0, 0, 0)) -> tuple[int, np.ndarray, Sides]:
        """One shape: ``(reference index, bool (h, w), the sides of the frame it is snapped to)``.

        ``frame`` (H, W): the image, or the box of the region of interest, the shape is placed in;
        ``margins`` (top, bottom, left, right): pixels a shape keeps from each side of the frame unless it
        stands on that side. A shape larger than its room is drawn again smaller (same noise), down to the
        low end of its size range; :class:`TooLarge` when even that does not fit.
        """
        i = _randint(g, 0, len(self.geometries) - 1)
        geo, rng, kinds = self.geometries[i], self.ranges[i], self.kinds[i]
        kind = kinds[_randint(g, 0, len(kinds) - 1)] if len(kinds) > 1 else kinds[0]
        side = None
        if geo.side is not None and (kind in ("band", "border") or _uniform(g, 0, 1) < CURVE_BORDER_SHARE):
            allowed = sides_of(geo.side, self.turns, self.flip)
            side = allowed[_randint(g, 0, len(allowed) - 1)]
        mt, mb, ml, mr = margins
        fh, fw = frame
        # the room in the shape's own drawing, where the side it stands on is the top (row 0)
        if side is None:
            room_h, room_w, frame_along = fh - mt - mb, fw - ml - mr, fw
        elif side in (TOP, BOTTOM):
            room_h, room_w, frame_along = fh - (mb if side == TOP else mt), fw - ml - mr, fw
        else:
            room_h, room_w, frame_along = fw - (mr if side == LEFT else ml), fh - mt - mb, fh
        frame_depth = fh if side in (None, TOP, BOTTOM) else fw
        sub = int(torch.randint(0, 2**62, (), generator=g))  # the shape's own noise: the same at any size

        if kind == "band":
            cover, wave = _uniform(g, *rng.coverage), _log_uniform(g, *rng.wave)
            depth = max(1, room_h)
            m = band(torch.Generator().manual_seed(sub), depth, frame_along, cover * frame_depth / depth, wave)
            sides = [False] * 4
            for k in (side, *((LEFT, RIGHT) if side in (TOP, BOTTOM) else (TOP, BOTTOM))):
                sides[k] = True
            return i, _on_side(m, side), tuple(sides)  # type: ignore[return-value]

        if kind == "curve":
            length, width = _log_uniform(g, *rng.length), _log_uniform(g, *rng.width)
            size, low = length, rng.length[0]

            def render(f: float) -> np.ndarray:
                return curve(torch.Generator().manual_seed(sub), length * f, max(MIN_WIDTH, width * f), geo.fill,
                             anchored=side is not None)
        elif kind == "border":
            area, ratio, rough = _log_uniform(g, *rng.area), _log_uniform(g, *rng.ratio), _uniform(g, *rng.roughness)
            size, low = math.sqrt(area), math.sqrt(rng.area[0])

            def render(f: float) -> np.ndarray:
                return border_region(torch.Generator().manual_seed(sub), area * f * f, ratio, rough)
        else:
            area, elong = _log_uniform(g, *rng.area), _log_uniform(g, *rng.elongation)
            angle, rough = _uniform(g, 0, 180), _uniform(g, *rng.roughness)
            size, low = math.sqrt(area), math.sqrt(rng.area[0])

            def render(f: float) -> np.ndarray:
                return blob(torch.Generator().manual_seed(sub), area * f * f, elong, angle, rough)

        f = 1.0
        for _ in range(6):  # shrink towards the low end until the shape fits its room
            m = render(f)
            fit = min(room_h / max(m.shape[0], 1), room_w / max(m.shape[1], 1))
            if fit >= 1 and m.any():
                sides = [False] * 4
                if side is not None:
                    sides[side] = True
                return i, (_on_side(m, side) if side is not None else m), tuple(sides)  # type: ignore[return-value]
            if f * size <= low * 1.0001:
                break
            f = max(low / size, f * min(fit, 0.99) * 0.97)
        h, w = render(low / size).shape
        need = (w, h) if side in (LEFT, RIGHT) else (h, w)
        raise TooLarge(f"its {kind} takes at least {need[1]}x{need[0]} px (WxH) at the low end of its size range "
                       f"(--area-widen {self.widen:g}), margins included; the room is {fw}x{fh} px", need=need)
