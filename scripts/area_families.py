"""Contact sheets of the target-area families: per defect type, procedural areas beside the reference family.

For each type, ``--per-type`` samples with ``--area-family procedural`` and half as many with the
reference family (the reference masks warped), each on a background of the dataset, filled by the
``histmatch`` generator (no model needed). Each sample is a pair of tiles cut around its label L
(1.5x its box, at least 128 px, within the image): the image, and the same with L's outline in red
and L's size in pixels. Also prints, per type, the geometry measured on its reference, its kind(s)
and the widened ranges (the table of docs/areas.md); with ``--stats N``, the area, elongation and
border contact of the real defects of each type (every split but the references' and backgrounds')
beside those of N areas of each family drawn on the dataset's backgrounds::

    python scripts/area_families.py --data ../shared/data/magnetic-tile --out docs/img --stats 100
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw
from scipy.ndimage import binary_erosion

from dstray.config import AreaConfig
from dstray.data import load_dataset, read_image, read_mask
from dstray.dst.areas import AreaSampler
from dstray.dst.shapes import kinds_of, measure, ranges
from dstray.dst.synth import Reference, Synthesizer
from dstray.dst.windows import bbox
from dstray.seeds import derive_seed

TILE = 128  # px, side of one tile
PAIRS = 4  # samples per row


def _tile(image: torch.Tensor, area: torch.Tensor) -> tuple[Image.Image, Image.Image]:
    """The image (C,H,W) and its outlined copy, cut around ``area`` (1,H,W) and resized to fit TILE x TILE."""
    _, height, width = image.shape
    y0, x0, y1, x1 = bbox(area[0] > 0.5)
    side = min(max(height, width), max(TILE, int(1.5 * max(y1 - y0, x1 - x0))))
    cy, cx = (y0 + y1) // 2, (x0 + x1) // 2
    top, left = min(max(0, cy - side // 2), max(0, height - side)), min(max(0, cx - side // 2), max(0, width - side))
    crop = image[:, top:top + side, left:left + side].mean(0)
    scale = TILE / max(crop.shape)
    size = (max(1, round(crop.shape[0] * scale)), max(1, round(crop.shape[1] * scale)))
    grey = F.interpolate(crop[None, None], size=size, mode="bilinear", align_corners=False, antialias=True)[0, 0]
    m = F.interpolate(area[None, :, top:top + side, left:left + side], size=size, mode="area")[0, 0].numpy() >= 0.5
    grey = (grey.clamp(0, 1).numpy() * 255).round().astype(np.uint8)
    rgb = np.stack([grey] * 3, -1)
    rgb[m & ~binary_erosion(m, border_value=0)] = (255, 40, 40)
    out = []
    for im in (np.stack([grey] * 3, -1), rgb):
        canvas = Image.new("RGB", (TILE, TILE), (24, 24, 24))
        canvas.paste(Image.fromarray(im), ((TILE - size[1]) // 2, (TILE - size[0]) // 2))
        out.append(canvas)
    draw, text = ImageDraw.Draw(out[1]), f"{int(area.sum())} px"
    draw.rectangle((0, TILE - 13, 6 * len(text) + 6, TILE), fill=(0, 0, 0))
    draw.text((3, TILE - 12), text, fill=(255, 230, 80))
    return out[0], out[1]


def _palette() -> Image.Image:
    """A 'P' image whose palette is 254 grey levels, the outline's red and the label's yellow (small PNGs)."""
    colours = [(round(255 * k / 253),) * 3 for k in range(254)] + [(255, 40, 40), (255, 230, 80)]
    pal = Image.new("P", (1, 1))
    pal.putpalette([c for rgb in colours for c in rgb])
    return pal


def sheet(data, defect_type: str, per_type: int, seed: int, widen: float) -> Image.Image:
    """Rows of procedural samples, then one row of the reference family, with a title line per part."""
    refs = data.references(defect_type)
    image = read_image(refs[0].image)
    reference = Reference(refs[0].id, image, read_mask(refs[0].mask, like=image))
    masks = {defect_type: [read_mask(r.mask) for r in refs]}
    backgrounds = data.backgrounds()
    parts = []
    for family, n in (("procedural", per_type), ("reference", PAIRS)):
        synth = Synthesizer("histmatch", {defect_type: reference}, masks, area=AreaConfig(family=family, widen=widen))
        tiles = []
        for k in range(n):
            sample_seed = derive_seed(seed, "area-families", defect_type, family, k)
            for attempt in range(len(backgrounds)):  # a background too small for the area: the next one
                pick = derive_seed(seed, "area-families-background", defect_type, k, attempt) % len(backgrounds)
                background = read_image(backgrounds[pick].image)
                try:
                    area, _ = synth.sample_area(defect_type, background, sample_seed)
                    break
                except ValueError:
                    continue
            filled = synth.fill([(defect_type, background, area, None, sample_seed)])[0]
            tiles += _tile(filled, area)
        parts.append((f"{defect_type}: {family}" + (f" (widen {widen:g})" if family == "procedural" else
                                                   " (the reference mask warped)"), tiles))
    rows = sum((len(t) + 2 * PAIRS - 1) // (2 * PAIRS) for _, t in parts)
    out = Image.new("RGB", (2 * PAIRS * TILE, rows * TILE + 16 * len(parts)), (12, 12, 12))
    draw, y = ImageDraw.Draw(out), 0
    for title, tiles in parts:
        draw.text((4, y + 2), title, fill=(230, 230, 230))
        y += 16
        for i in range(0, len(tiles), 2 * PAIRS):
            for j, t in enumerate(tiles[i:i + 2 * PAIRS]):
                out.paste(t, (j * TILE, y))
            y += TILE
    return out


def describe(data, defect_type: str, widen: float) -> str:
    """One markdown row: the reference's geometry, its kind(s) and the widened ranges."""
    geo = measure(read_mask(data.references(defect_type)[0].mask))
    r = ranges(geo, widen)
    kinds = kinds_of(geo)
    sides = "".join(s for s, t in zip("TBLR", geo.sides) if t) or "-"
    if "band" in kinds:
        drawn = f"coverage {r.coverage[0]:.0%}-{r.coverage[1]:.0%}, wave {r.wave[0]:.2f}-{r.wave[1]:.2f}"
    elif "curve" in kinds:
        drawn = f"length {r.length[0]:.0f}-{r.length[1]:.0f} px, width {r.width[0]:.1f}-{r.width[1]:.1f} px"
    elif "border" in kinds:
        drawn = f"area {r.area[0]:.0f}-{r.area[1]:.0f} px, base/depth {r.ratio[0]:.1f}-{r.ratio[1]:.1f}"
    else:
        drawn = f"area {r.area[0]:.0f}-{r.area[1]:.0f} px, elongation {r.elongation[0]:.1f}-{r.elongation[1]:.1f}"
    return (f"| {defect_type} | {geo.area:.0f} | {geo.major:.0f} x {geo.minor:.0f} | {geo.elongation:.1f} | "
            f"{geo.width:.0f} | {sides} | {geo.coverage:.0%} | {' + '.join(kinds)} | {drawn} |")


def _stats(masks) -> str:
    """``area median [min, max], elongation median [min, max], touching a side %`` of the largest region of each."""
    from skimage.measure import label, regionprops

    areas, elong, border = [], [], []
    for m in masks:
        m = np.asarray(m)
        p = max(regionprops(label(m, connectivity=2)), key=lambda r: r.area)
        areas.append(p.area)
        elong.append(p.axis_major_length / max(p.axis_minor_length, 1.0))
        border.append(bool(m[0].any() or m[-1].any() or m[:, 0].any() or m[:, -1].any()))
    a, e = np.asarray(areas), np.asarray(elong)
    return (f"{np.median(a):.0f} [{a.min():.0f}, {a.max():.0f}] | {np.median(e):.1f} [{e.min():.1f}, {e.max():.1f}] | "
            f"{100 * np.mean(border):.0f} % | {len(a)}")


def stats(data, defect_type: str, n: int, seed: int, widen: float) -> list[str]:
    """Markdown rows: the real defects of a type, then ``n`` areas of each family on the dataset's backgrounds."""
    real = [read_mask(s.mask)[0].numpy() > 0.5 for s in data.samples
            if s.defect_type == defect_type and s.split not in ("reference", "background") and s.mask is not None]
    real = [m for m in real if m.any()]
    rows = [f"| {defect_type} | real ({len(real)} images) | {_stats(real)} |"] if real else []
    masks = [read_mask(r.mask) for r in data.references(defect_type)]
    backgrounds = data.backgrounds()
    for family in ("reference", "procedural"):
        sampler = AreaSampler(masks, AreaConfig(family=family, widen=widen), name=defect_type)
        drawn = []
        for k in range(n):
            b = backgrounds[derive_seed(seed, "area-stats", defect_type, k) % len(backgrounds)]
            with Image.open(b.image) as im:
                width, height = im.size
            try:
                drawn.append(sampler.sample(height, width, derive_seed(seed, "area-stats", family, k))[0].numpy() > 0.5)
            except ValueError:  # a background too small: a reject in generation
                pass
        rows.append(f"| {defect_type} | {family} | {_stats(drawn)} |")
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default=None, help="dataset with references and backgrounds (default: the embedded sample)")
    p.add_argument("--out", default="docs/img", help="folder for areas-<type>.png")
    p.add_argument("--per-type", type=int, default=8, help="procedural samples per type")
    p.add_argument("--widen", type=float, default=AreaConfig().widen)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--types", default=None, help="comma-separated types (default: every type with a reference)")
    p.add_argument("--stats", type=int, default=0, metavar="N", help="also compare N areas of each family per type "
                   "with the real defects (area, elongation, border contact)")
    a = p.parse_args()
    torch.set_num_threads(1)
    data = load_dataset(a.data)
    types = a.types.split(",") if a.types else sorted({s.defect_type for s in data.references()})
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    print("| type | area px | major x minor px | elongation | width px | sides | coverage | kind | drawn in |")
    print("|---|---|---|---|---|---|---|---|---|")
    for t in types:
        print(describe(data, t, a.widen))
        path = out / f"areas-{t}.png"
        sheet(data, t, a.per_type, a.seed, a.widen).quantize(palette=_palette(), dither=Image.Dither.NONE).save(
            path, optimize=True)  # a fixed palette: every grey level, the outline's red and the text's yellow
        print(f"  wrote {path} ({path.stat().st_size // 1024} KB)")
    if a.stats:
        print("\n| type | areas | area px, median [min, max] | elongation | touching a side | n |")
        print("|---|---|---|---|---|---|")
        for t in types:
            print("\n".join(stats(data, t, a.stats, a.seed, a.widen)))


if __name__ == "__main__":
    main()
