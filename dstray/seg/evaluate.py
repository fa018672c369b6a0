"""Evaluate a segmenter on a real split (paper eq. 8 and Figure 7), pure torch.

The whole letterboxed test image goes to both Buttonlab paths (no crop). Counts are taken
**at letterboxed resolution over the valid (non-padded) pixels**, summed over the whole
split (eq. 8, :mod:`dstray.seg.metrics`); per type over the images of that type; image level
as detection rate and false-alarm rate. :func:`write_eval` writes ``eval.json`` (strict
JSON), ``eval.csv`` and ``eval.png`` (the Figure-7 overlays of :func:`overlay`).
"""

from __future__ import annotations

import csv
import json
from collections import defaultdict
from pathlib import Path

import numpy as np
import torch

from dstray.config import SegConfig, resolve_device
from dstray.data import FREE, Sample
from dstray.seg.data import prepare_sample
from dstray.seg.metrics import SegCounts

FIGURE_IMAGES = 8  # images drawn in the Figure-7-style prediction PNG


@torch.no_grad()
def evaluate(model: torch.nn.Module, samples: list[Sample], cfg: SegConfig, device: str | torch.device = "cpu",
             *, figure_images: int = FIGURE_IMAGES) -> dict:
    """Pixel-, type- and image-level scores of ``model`` on real ``samples`` (a whole split).

    Returns ``{"pixel": {tp, fp, fn, tn, precision, recall, f1, iou}, "per_type": {type: {..., "images"}},
    "image": {...}, "n_images", "resolution", "threshold", "examples": [...]}``. Pixel counts are summed
    over the split (eq. 8); per-type counts over the images of each defect type (defect-free images have
    no pixel row: they count as false alarms at image level). ``examples`` (for :func:`write_eval`) holds
    up to ``figure_images`` images, one type after another, as uint8/bool numpy arrays cropped to the image.
    """
    device = resolve_device(device)
    was_training = model.training
    model.eval()
    channels = getattr(model, "in_channels", 3)
    total, per_type = SegCounts(), defaultdict(SegCounts)
    type_images = defaultdict(int)
    image = {"defect_images": 0, "detected": 0, "free_images": 0, "false_alarms": 0}
    chosen = set(_figure_choice(samples, figure_images))
    examples = []
    for start in range(0, len(samples), cfg.batch_size):
        chunk = samples[start:start + cfg.batch_size]
        items = [prepare_sample(s, cfg.image_size, channels) for s in chunk]
        x = torch.stack([it["image"] for it in items]).to(device)
        prob = model(x)["out"].softmax(1)[:, 1:2].cpu()
        for s, it, p in zip(chunk, items, prob):
            pred = (p >= cfg.threshold) & (it["valid"] > 0)
            label = it["mask"] > 0.5
            counts = SegCounts.from_masks(pred, label, it["valid"] > 0)
            total.add(counts)
            has_defect, any_pred = bool(label.any()), bool(pred.any())
            if has_defect:
                per_type[s.defect_type].add(counts)
                type_images[s.defect_type] += 1
                image["defect_images"] += 1
                image["detected"] += any_pred
            else:
                image["free_images"] += 1
                image["false_alarms"] += any_pred
            if s.id in chosen:
                examples.append(_example(s, it, pred, counts))
    model.train(was_training)
    image["detection_rate"] = image["detected"] / image["defect_images"] if image["defect_images"] else float("nan")
    image["false_alarm_rate"] = image["false_alarms"] / image["free_images"] if image["free_images"] else float("nan")
    return {"pixel": total.scores(),
            "per_type": {t: {**c.scores(), "images": type_images[t]} for t, c in sorted(per_type.items())},
            "image": image, "n_images": len(samples), "threshold": cfg.threshold,
            "resolution": f"letterboxed {cfg.image_size}x{cfg.image_size}, valid (non-padded) pixels only",
            "examples": examples}


def _figure_choice(samples: list[Sample], k: int) -> list[str]:
    """Ids of up to k samples taken round-robin over defect types (defect-free last)."""
    by_type = defaultdict(list)
    for s in samples:
        by_type[s.defect_type].append(s.id)
    queues = [by_type[t] for t in sorted(by_type, key=lambda t: (t == FREE, t))]
    out = []
    while len(out) < k and any(queues):
        for q in queues:
            if q and len(out) < k:
                out.append(q.pop(0))
    return out


def _example(sample: Sample, item: dict, pred: torch.Tensor, counts: SegCounts) -> dict:
    box = item["box"]
    cut = (slice(box.top, box.top + box.inner_h), slice(box.left, box.left + box.inner_w))
    gray = item["image"].mean(0)[cut]
    return {"id": sample.id, "defect_type": sample.defect_type, "f1": counts.f1,
            "image": (gray * 255).round().byte().numpy(), "label": (item["mask"][0][cut] > 0.5).numpy(),
            "pred": pred[0][cut].numpy()}


def overlay(gray: np.ndarray, label: np.ndarray, pred: np.ndarray, alpha: float = 0.6) -> np.ndarray:
    """Paper Figure 7 colours over a grayscale image: red = label only, green = prediction only, yellow = both.

    gray (H,W) uint8, label/pred (H,W) bool -> (H,W,3) uint8.
    """
    rgb = np.repeat(gray[..., None].astype(np.float32), 3, axis=2)
    colours = {(1, 0): (255, 0, 0), (0, 1): (0, 255, 0), (1, 1): (255, 255, 0)}
    for (lab, prd), colour in colours.items():
        where = (label == bool(lab)) & (pred == bool(prd))
        rgb[where] = (1 - alpha) * rgb[where] + alpha * np.array(colour, np.float32)
    return rgb.round().astype(np.uint8)


def strict_json(value):
    """NaN (an undefined rate, e.g. no defect-free image in the split) as null: strict JSON for any reader."""
    if isinstance(value, dict):
        return {k: strict_json(v) for k, v in value.items()}
    if isinstance(value, list):
        return [strict_json(v) for v in value]
    if isinstance(value, float) and (value != value or value in (float("inf"), float("-inf"))):
        return None
    return value


def write_eval(result: dict, out_dir: str | Path, name: str = "eval") -> dict[str, Path]:
    """``{name}.json`` (everything but the images), ``{name}.csv`` (one row per pixel set), ``{name}.png``."""
    from matplotlib.figure import Figure  # no pyplot: no GUI backend needed

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"json": out / f"{name}.json", "csv": out / f"{name}.csv", "png": out / f"{name}.png"}
    plain = strict_json({k: v for k, v in result.items() if k != "examples"})
    paths["json"].write_text(json.dumps(plain, indent=2, sort_keys=True, allow_nan=False) + "\n")
    rows = [{"set": "all", "images": result["n_images"], **result["pixel"]}]
    rows += [{"set": t, **r} for t, r in result["per_type"].items()]
    with paths["csv"].open("w", newline="") as f:
        writer = csv.DictWriter(f, ["set", "images", "tp", "fp", "fn", "tn", "precision", "recall", "f1", "iou"])
        writer.writeheader()
        writer.writerows(rows)
    examples = result.get("examples", [])
    cols = min(4, max(1, len(examples)))
    rows_n = max(1, -(-len(examples) // cols))
    fig = Figure(figsize=(3 * cols, 3 * rows_n))
    for i, ex in enumerate(examples):
        ax = fig.add_subplot(rows_n, cols, i + 1)
        ax.imshow(overlay(ex["image"], ex["label"], ex["pred"]))
        ax.set_title(f"{ex['defect_type']}  F1 {ex['f1']:.2f}", fontsize=9)
        ax.axis("off")
    fig.suptitle("red: label only, green: prediction only, yellow: both", fontsize=10)
    fig.savefig(paths["png"], dpi=100)
    return paths


def format_eval(result: dict) -> str:
    """The evaluation table: pixel P/R/F1/IoU overall and per type, then image-level detection and false alarms."""
    head = f"{'set':<12} {'images':>6} {'precision':>9} {'recall':>7} {'F1':>7} {'IoU':>7}"
    lines = [f"{result['n_images']} images, {result['resolution']}, threshold {result['threshold']}", head,
             "-" * len(head)]
    rows = [("all", result["n_images"], result["pixel"])]
    rows += [(t, r.get("images", ""), r) for t, r in result["per_type"].items()]
    for name, n, r in rows:
        lines.append(f"{name:<12} {n:>6} {r['precision']:>9.4f} {r['recall']:>7.4f} {r['f1']:>7.4f} {r['iou']:>7.4f}")
    im = result["image"]
    lines.append(f"image level: {im['detected']}/{im['defect_images']} defect images detected "
                 f"(rate {im['detection_rate']:.3f}); {im['false_alarms']}/{im['free_images']} defect-free images "
                 f"with a false alarm (rate {im['false_alarm_rate']:.3f})")
    return "\n".join(lines)
