"""A colour Figure-3 row for the README: DST on RGB backgrounds with a grey reference keeps the hue.

Magnetic Tile is grayscale, so this builds a colour stand-in (tinted copies of MT
backgrounds, the grey crack reference as RGB with R = G = B), fits a crack DST model on it
in this process and writes Figure-3 rows (H | M | S | L | histmatch y' | DST) with the
mean chroma of L (R-G, B-G, in 8-bit levels) of y' and of DST for each::

    python scripts/colour_figure.py --data ../shared/data/magnetic-tile --out docs/img/colour-figure3.png
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from dstray.config import DSTConfig
from dstray.data import load_dataset, read_image
from dstray.dst.areas import area_for_seed
from dstray.dst.figures import render_figure3_row
from dstray.dst.fit import fit_dst
from dstray.dst.stylize import load_dst, stylize

TINTS = [(1.0, 0.8, 0.55), (0.6, 0.85, 1.0), (0.85, 1.0, 0.7)]  # orange-ish, blue-ish, green-ish parts


def _save(img: torch.Tensor, path: Path) -> None:
    Image.fromarray((img.permute(1, 2, 0) * 255).round().byte().numpy()).save(path)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default=None, help="dataset with a crack reference and backgrounds (default: sample)")
    p.add_argument("--defect-type", default="crack")
    p.add_argument("--backgrounds", type=int, default=24)
    p.add_argument("--steps", type=int, default=150)
    p.add_argument("--out", default="docs/img/colour-figure3.png")
    a = p.parse_args()
    torch.set_num_threads(1)
    src = load_dataset(a.data)
    work = Path(tempfile.mkdtemp(prefix="dstray-colour-"))
    ref = src.references(a.defect_type)[0]
    _save(read_image(ref.image).expand(3, -1, -1), work / "ref.png")
    Image.open(ref.mask).save(work / "ref_mask.png")
    rows = ["image,mask,defect_type,split", f"ref.png,ref_mask.png,{a.defect_type},reference"]
    for i, bg in enumerate(src.backgrounds()[:a.backgrounds]):
        tint = torch.tensor(TINTS[i % len(TINTS)]).view(3, 1, 1)
        _save((read_image(bg.image).expand(3, -1, -1) * tint).clamp(0, 1), work / f"bg{i}.png")
        rows.append(f"bg{i}.png,,free,background")
    (work / "splits.csv").write_text("\n".join(rows) + "\n")
    data = load_dataset(work)
    cfg = DSTConfig(defect_type=a.defect_type, steps=a.steps, heldout=4, min_steps=min(100, a.steps))
    model = load_dst(fit_dst(cfg, data, work / "model", on_log=lambda *_: None))
    figure = []
    for k, bg in enumerate(data.backgrounds()[:len(TINTS)]):
        s = read_image(bg.image)
        area, _ = area_for_seed(model.sampler(), s.shape[1], s.shape[2], 7 + k)
        out = stylize(model, s, area, mode="patch")
        inside = area[0] > 0.5

        def chroma(img):
            return [round(float((img[c] - img[1])[inside].mean() * 255), 1) for c in (0, 2)]

        print(f"tint {TINTS[k]}: chroma of L (R-G, B-G) histmatch {chroma(out['histmatch'])}, "
              f"DST {chroma(out['image'])}")
        figure.append(render_figure3_row(model.reference_image, model.reference_mask, s, area,
                                         out["histmatch"], out["image"]))
    width = max(r.shape[1] for r in figure)
    padded = [np.pad(r, ((0, 6), (0, width - r.shape[1]), (0, 0)), constant_values=255) for r in figure]
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.concatenate(padded)).save(a.out)
    print(f"wrote {a.out}")


if __name__ == "__main__":
    main()
