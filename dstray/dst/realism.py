"""Realism score of generated defects: KID and C2ST on ImageNet EfficientNet-Lite0 features.

How alike are generated defects and real ones, per defect type? Each labelled image
(generated sample or real defect image) gives one square crop centred on the bounding box
of its label, of side ``CROP_SCALE`` x the box's longer side (at least ``CROP_MIN`` px; the
square is shifted to stay inside the image and padded by replication only where the image
is smaller), resized to ``CROP_SIZE``. The crops go through the ImageNet-pretrained
EfficientNet-Lite0 (:func:`dstray.weights.efficientnet_lite0`), whose global-average-pooled
penultimate features (1280-d, the classifier's input, as Inception's pool3 in FID / KID) are
compared:

- **KID** (Binkowski et al. 2018, "Demystifying MMD GANs"): the unbiased estimate of
  MMD^2 with the cubic polynomial kernel k(x, y) = (x.y / d + 1)^3, on features centred on
  the real side's mean and divided by the real side's RMS (one scalar, so that features
  which are constant on a few real crops cannot explode). 0 = same distribution; it can
  be slightly negative by chance.
- **C2ST** (Lopez-Paz & Oquab 2017, classifier two-sample test): the accuracy of an
  L2-regularised logistic regression (standardised features) telling generated from real
  crops, 5-fold stratified cross-validation on equally many crops of each side (the larger
  side subsampled), averaged over ``repeats`` subsamplings. 0.5 = indistinguishable,
  1.0 = always told apart.

``floor``: the same two numbers between two random halves of the real crops (averaged over
``repeats`` halvings): what "as real as real" looks like at this sample size. With a few
real crops per type both scores are noisy; compare generators on the same real set and
read differences smaller than the floor's spread as noise.
"""

from __future__ import annotations

import json
import math
from collections import defaultdict
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from dstray.seeds import derive_seed

CROP_SCALE = 1.5  # crop side / the label's bounding-box side
CROP_MIN = 48  # px: smallest crop side (tiny defects keep some surroundings)
CROP_SIZE = 96  # px: crops are resized to this square before the features
C2ST_FOLDS = 5  # stratified cross-validation folds of the two-sample classifier
REPEATS = 10  # subsamplings (C2ST) and random halvings (the real-vs-real floor) averaged


def crop_around(image: Tensor, mask: Tensor) -> Tensor:
    """The square crop around a label: image (C,H,W) in [0,1], mask (1,H,W) -> (3, CROP_SIZE, CROP_SIZE).

    Centred on the mask's bounding box, side max(CROP_MIN, CROP_SCALE x its longer side); shifted
    to stay inside the image, padded by replication only where the image is smaller than the side.
    """
    ys, xs = torch.nonzero(mask[0] > 0.5, as_tuple=True)
    if ys.numel() == 0:
        raise ValueError("crop_around: empty mask")
    y0, y1, x0, x1 = int(ys.min()), int(ys.max()) + 1, int(xs.min()), int(xs.max()) + 1
    side = max(CROP_MIN, math.ceil(CROP_SCALE * max(y1 - y0, x1 - x0)))
    height, width = mask.shape[-2:]
    top = _inside(round((y0 + y1 - side) / 2), side, height)
    left = _inside(round((x0 + x1 - side) / 2), side, width)
    pads = (max(0, -left), max(0, left + side - width), max(0, -top), max(0, top + side - height))
    img = F.pad(image[None].float(), pads, mode="replicate")[0] if any(pads) else image.float()
    crop = img[:, top + pads[2]: top + pads[2] + side, left + pads[0]: left + pads[0] + side]
    crop = F.interpolate(crop[None], size=(CROP_SIZE, CROP_SIZE), mode="bilinear", antialias=True,
                         align_corners=False)[0].clamp(0, 1)
    return crop.expand(3, -1, -1) if crop.shape[0] == 1 else crop


def _inside(start: int, side: int, length: int) -> int:
    return min(max(start, 0), length - side) if side <= length else start


class Features:
    """ImageNet EfficientNet-Lite0: crops (N,3,h,w) in [0,1] -> (N, 1280) float64 numpy (pooled penultimate)."""

    def __init__(self, weights: str = "imagenet", device: str = "cpu"):
        from dstray.weights import IMAGENET_MEAN, IMAGENET_STD, efficientnet_lite0

        self.net = efficientnet_lite0(weights).eval().to(device)
        self.device = device
        self.mean = torch.tensor(IMAGENET_MEAN, device=device).view(1, 3, 1, 1)
        self.std = torch.tensor(IMAGENET_STD, device=device).view(1, 3, 1, 1)

    @torch.no_grad()
    def __call__(self, crops: list[Tensor], batch_size: int = 64) -> np.ndarray:
        out = []
        for i in range(0, len(crops), batch_size):
            x = (torch.stack(crops[i:i + batch_size]).to(self.device) - self.mean) / self.std
            out.append(self.net.forward_head(self.net.forward_features(x), pre_logits=True).double().cpu())
        return torch.cat(out).numpy() if out else np.zeros((0, 1280))


def kid(generated: np.ndarray, real: np.ndarray) -> float:
    """Unbiased MMD^2 with the cubic kernel (x.y/d + 1)^3 on features centred on the real mean and
    divided by the real side's RMS (Binkowski et al. 2018). generated (n,d), real (m,d); n, m >= 2."""
    mu = real.mean(0)
    scale = np.sqrt(((real - mu) ** 2).mean()) or 1.0
    x, y = (generated - mu) / scale, (real - mu) / scale
    d, n, m = x.shape[1], len(x), len(y)

    def k(a, b):
        return (a @ b.T / d + 1.0) ** 3

    kxx, kyy, kxy = k(x, x), k(y, y), k(x, y)
    return float((kxx.sum() - np.trace(kxx)) / (n * (n - 1)) + (kyy.sum() - np.trace(kyy)) / (m * (m - 1))
                 - 2 * kxy.mean())


def c2st(generated: np.ndarray, real: np.ndarray, *, repeats: int = REPEATS, seed: int = 0) -> float:
    """Classifier two-sample test accuracy (0.5 = indistinguishable): logistic regression on standardised
    features, stratified C2ST_FOLDS-fold cross-validation on min(n, m) crops of each side (the larger side
    subsampled), averaged over ``repeats`` subsamplings. NaN with fewer than 3 crops on a side."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold, cross_val_score
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    n = min(len(generated), len(real))
    if n < 3:
        return float("nan")
    rng = np.random.default_rng(derive_seed(seed, "realism-c2st"))
    scores = []
    for _ in range(repeats):
        x = np.concatenate([generated[rng.choice(len(generated), n, replace=False)],
                            real[rng.choice(len(real), n, replace=False)]])
        labels = np.r_[np.zeros(n), np.ones(n)]
        folds = StratifiedKFold(min(C2ST_FOLDS, n), shuffle=True, random_state=int(rng.integers(2**31)))
        clf = make_pipeline(StandardScaler(), LogisticRegression(C=1.0, max_iter=2000))
        scores.append(cross_val_score(clf, x, labels, cv=folds).mean())
    return float(np.mean(scores))


def real_crops(samples: Iterable) -> dict[str, list[Tensor]]:
    """Crops of real defect images (dataset :class:`~dstray.data.Sample` s with a non-empty mask), by type."""
    from dstray.data import read_image, read_mask

    out: dict[str, list[Tensor]] = defaultdict(list)
    for s in samples:
        if s.mask is None or s.defect_type == "free":
            continue
        image = read_image(s.image)
        mask = read_mask(s.mask, like=image)
        if mask.any():
            out[s.defect_type].append(crop_around(image, mask))
    return dict(out)


def generated_crops(location: str) -> dict[str, list[Tensor]]:
    """Crops of a generated dataset (an output folder of ``dstray generate``, its ``data/`` or a Parquet file)."""
    import pyarrow.parquet as pq

    from dstray.data import decode_png
    from dstray.storage import generated_parquet

    out: dict[str, list[Tensor]] = defaultdict(list)
    for path in generated_parquet([location]):
        table = pq.read_table(path, columns=["image", "mask", "defect_type"])
        for image, mask, t in zip(*(table.column(c).to_pylist() for c in ("image", "mask", "defect_type"))):
            m = (decode_png(mask)[:1] > 0.5).float()
            if m.any():
                out[t].append(crop_around(decode_png(image), m))
    return dict(out)


def floor(features: dict[str, np.ndarray], *, repeats: int = REPEATS, seed: int = 0) -> dict[str, dict]:
    """KID and C2ST between two random halves of each type's real features, averaged over ``repeats`` halvings."""
    out = {}
    for t, f in features.items():
        kids, accs = [], []
        for r in range(repeats):
            order = np.random.default_rng(derive_seed(seed, "realism-floor", r)).permutation(len(f))
            a, b = f[order[: len(f) // 2]], f[order[len(f) // 2:]]
            if len(a) >= 2 and len(b) >= 2:
                kids.append(kid(a, b))
                accs.append(c2st(a, b, repeats=1, seed=derive_seed(seed, "realism-floor-c2st", r)))
        out[t] = {"kid": float(np.mean(kids)) if kids else float("nan"),
                  "c2st": float(np.nanmean(accs)) if kids and not all(np.isnan(accs)) else float("nan")}
    return out


def score(generated: dict[str, dict[str, list[Tensor]]], real: dict[str, list[Tensor]], *,
          features: Features | None = None, repeats: int = REPEATS, seed: int = 0) -> dict:
    """Per generator and type: KID and C2ST against the real crops; and the real-vs-real floor.

    generated: name -> type -> crops; real: type -> crops. Returns {"generators": {name: {type: {kid, c2st,
    n_generated, n_real}}}, "floor": {type: {kid, c2st}}, "settings": {...}}.
    """
    features = features or Features()
    real_f = {t: features(c) for t, c in sorted(real.items())}
    result = {"generators": {}, "floor": floor(real_f, repeats=repeats, seed=seed),
              "settings": {"crop_scale": CROP_SCALE, "crop_min": CROP_MIN, "crop_size": CROP_SIZE,
                           "features": "EfficientNet-Lite0 (ImageNet) pooled penultimate, 1280-d",
                           "c2st_folds": C2ST_FOLDS, "repeats": repeats, "seed": seed}}
    for name, crops in generated.items():
        rows = {}
        for t, fr in real_f.items():
            if t not in crops or len(fr) < 2 or len(crops[t]) < 2:
                continue
            fg = features(crops[t])
            rows[t] = {"kid": kid(fg, fr), "c2st": c2st(fg, fr, repeats=repeats, seed=seed),
                       "n_generated": len(fg), "n_real": len(fr)}
        result["generators"][name] = rows
    return result


def format_score(result: dict) -> str:
    """A markdown table: one row per generator (and the real-vs-real floor), KID / C2ST per type."""
    types = sorted(result["floor"])
    head = "| generator | " + " | ".join(f"{t} KID | {t} C2ST" for t in types) + " |"
    lines = [head, "|" + "---|" * (1 + 2 * len(types))]

    def cells(rows: dict) -> str:
        return " | ".join(f"{rows[t]['kid']:.3f} | {rows[t]['c2st']:.2f}" if t in rows else "- | -" for t in types)

    lines.append(f"| real vs real (floor) | {cells(result['floor'])} |")
    for name, rows in result["generators"].items():
        lines.append(f"| {name} | {cells(rows)} |")
    n_real = {t: r["n_real"] for rows in result["generators"].values() for t, r in rows.items()}
    lines.append("")
    lines.append("real crops per type: " + ", ".join(f"{t} {n_real.get(t, '-')}" for t in types))
    return "\n".join(lines)


def write_score(result: dict, out_dir: str | Path, name: str = "realism") -> dict[str, Path]:
    """``{name}.json`` and ``{name}.md`` in ``out_dir``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"json": out / f"{name}.json", "md": out / f"{name}.md"}
    clean = json.loads(json.dumps(result), parse_constant=lambda c: None)
    paths["json"].write_text(json.dumps(clean, indent=2, allow_nan=False) + "\n")
    paths["md"].write_text(format_score(result) + "\n")
    return paths


def score_generated(generated: dict[str, str], *, data: str | None = None, split: str = "test",
                    repeats: int = REPEATS, seed: int = 0) -> dict:
    """``dstray score``: generated datasets (name -> location) against the real defects of ``split``."""
    from dstray.data import load_dataset

    dataset = load_dataset(data)
    real = real_crops(dataset.split(split))
    if not real:
        raise ValueError(f"{dataset.root}: the split {split!r} has no defect image with a non-empty mask to "
                         "compare with; choose --split among " + ", ".join(dataset.splits))
    crops = {name: generated_crops(loc) for name, loc in generated.items()}
    result = score(crops, real, repeats=repeats, seed=seed)
    result["settings"].update(split=split, data=str(dataset.root), generated=dict(generated))
    return result
