"""Evaluate a segmenter on a real split at the images' own resolution (paper eq. 8, Figure 7), pure torch.

- **Inference** (:func:`predict`): each whole image, mirror-padded by :data:`INFERENCE_PAD` px on
  every side and to a multiple of the network's stride, goes through the network once (fully convolutional;
  Buttonlab's two paths both see the whole image); the defect probability is cropped back to
  the original ``H x W``. Every count is taken there, against the original mask.
- **Threshold.** Every image's probabilities are binned at the thresholds
  :data:`THRESHOLDS` (plus the one asked for), so that the whole split is scored at all of
  them from one pass (:class:`SplitProbs`). With ``threshold=None`` the threshold of the
  best pixel F1 on this split is chosen (:func:`choose_threshold`): what training does on
  ``val``, storing the threshold with the model; ``test`` is then scored at that threshold.
- **Scores** (:func:`scores_at`): pixel precision / recall / F1 / IoU with counts summed over
  the split (eq. 8, micro); the same per defect type (the images of that type) and their
  unweighted mean over types (``macro``: on Magnetic Tile's test split uneven holds 76 % of
  the defect pixels, blowhole and crack about 1 % together, so the micro F1 alone hides the
  small types); image level: an image is flagged when any pixel reaches the threshold
  (detection rate over images with a defect, false-alarm rate over images without), and the
  image ROC AUC of the maximum pixel probability (threshold-free).

:func:`write_eval` writes ``eval.json`` (strict JSON), ``eval.csv`` and ``eval.png`` (each
example image as it is, colour kept, beside the Figure-7 overlay of :func:`overlay`).
"""

from __future__ import annotations

import csv
import json
import math
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from dstray.config import resolve_device
from dstray.data import FREE, Sample, read_image, read_mask, to_channels
from dstray.seg.data import mirror_pad
from dstray.seg.metrics import SegCounts, macro, roc_auc

FIGURE_IMAGES = 8  # images drawn in the Figure-7-style prediction PNG
# thresholds scored in one pass: 0.01 steps, then finer near 1 (a defect weight > 1 pushes the best one up)
THRESHOLDS = tuple(round(0.01 * i, 2) for i in range(1, 100)) + (0.995, 0.998, 0.999)
DEFAULT_THRESHOLD = 0.5  # used when the split has no defect pixel to choose a threshold on
TOPK = {"top100": 100, "top1000": 1000}  # image scores: the mean of an image's k highest defect probabilities
# image scores, in order of preference on a tie: "max" = the highest pixel probability (a single stray pixel flips it),
# top-k means, "area" = pixels at or over the pixel threshold (the predicted defect area)
IMAGE_SCORES = ("max", *TOPK, "area")
DETECTION_TARGET = 0.95  # the image decision detects this share of the defect images of the split it is chosen on
# px of mirrored image around every side at inference. Training windows show a part's borders the same way
# (SegConfig.window_context, 32 px by default); without this, the top and left borders met the network's zero
# padding at inference only. Chosen on val (3 seeds of references + defect-free tiles, docs/segmentation.md):
# pixel F1 +0.004 to +0.027, image AUROC +0.014 to +0.062 against padding the bottom and right to the stride only
INFERENCE_PAD = 32


@torch.inference_mode()
def predict(model: torch.nn.Module, image: torch.Tensor, device: str | torch.device = "cpu",
            pad: int = INFERENCE_PAD) -> torch.Tensor:
    """Defect probability of one whole image: (C,H,W) in [0,1] -> (H,W) float32 in [0,1], on the CPU.

    The image is converted to the model's channel count, mirror-padded by ``pad`` px on every side (and at
    the bottom and right up to a multiple of ``model.stride``, 32 if it has none), segmented, and the
    probability cropped back to the image.
    """
    height, width = image.shape[-2:]
    x = to_channels(image, getattr(model, "in_channels", 3))
    stride = getattr(model, "stride", 32)
    x = mirror_pad(x, pad, pad + -(height + 2 * pad) % stride, pad, pad + -(width + 2 * pad) % stride)
    out = model(x[None].to(device))["out"].softmax(1)[0, 1]
    return out[pad:pad + height, pad:pad + width].float().cpu()


@dataclass
class SplitProbs:
    """What a split's predictions say at every threshold of ``edges``; one row per image."""

    edges: torch.Tensor  # (G,) float64 thresholds, increasing
    pos: torch.Tensor  # (N,G) int64: label pixels with probability >= edges[j] (true positives)
    neg: torch.Tensor  # (N,G) int64: other pixels with probability >= edges[j] (false positives)
    n_pos: torch.Tensor  # (N,) int64: label pixels
    n_neg: torch.Tensor  # (N,) int64: other pixels
    max_prob: torch.Tensor  # (N,) float64: the image's highest defect probability
    topk: dict[str, torch.Tensor]  # TOPK name -> (N,) float64: the mean of the image's k highest probabilities
    types: list[str]  # defect type of each image ("free" for defect-free ones)
    ids: list[str]
    examples: dict[str, dict] = field(default_factory=dict)  # id -> image, label, prob of the figure's images, in order

    @property
    def has_defect(self) -> torch.Tensor:
        return self.n_pos > 0

    def counts(self, j: int, rows: torch.Tensor | None = None) -> SegCounts:
        """Counts at ``edges[j]`` summed over ``rows`` (a bool mask of images; all when None)."""
        sel = slice(None) if rows is None else rows
        tp, fp = int(self.pos[sel, j].sum()), int(self.neg[sel, j].sum())
        return SegCounts(tp=tp, fp=fp, fn=int(self.n_pos[sel].sum()) - tp, tn=int(self.n_neg[sel].sum()) - fp)

    def index(self, threshold: float) -> int:
        j = int(torch.searchsorted(self.edges, torch.tensor(float(threshold), dtype=torch.float64)))
        if j >= len(self.edges) or abs(float(self.edges[j]) - threshold) > 1e-12:
            raise ValueError(f"threshold {threshold} was not among the thresholds collected")
        return j


def _cumulative(prob: torch.Tensor, edges: torch.Tensor) -> torch.Tensor:
    """(G,) counts of ``prob`` values >= each edge."""
    bins = torch.bucketize(prob.double(), edges, right=True)  # number of edges <= p
    hist = torch.bincount(bins, minlength=len(edges) + 1)
    return hist.flip(0).cumsum(0).flip(0)[1:]


@torch.inference_mode()
def collect(model: torch.nn.Module, samples: list[Sample], device: str | torch.device = "cpu", *,
            thresholds: tuple[float, ...] = (), figure_images: int = FIGURE_IMAGES) -> SplitProbs:
    """Run ``model`` on every sample (:func:`predict`) and bin its probabilities at :data:`THRESHOLDS` + ``thresholds``."""
    device = resolve_device(device)
    was_training = model.training
    model.eval()
    edges = torch.tensor(sorted(set(THRESHOLDS) | {float(t) for t in thresholds}), dtype=torch.float64)
    chosen = _figure_choice(samples, figure_images)
    pos, neg, n_pos, n_neg, max_prob, examples = [], [], [], [], [], {}
    topk: dict[str, list[float]] = {name: [] for name in TOPK}
    try:
        for s in samples:
            image = read_image(s.image)
            label = (read_mask(s.mask, like=image)[0] > 0.5) if s.mask is not None else \
                torch.zeros(image.shape[-2:], dtype=torch.bool)
            prob = predict(model, image, device)
            pos.append(_cumulative(prob[label], edges))
            neg.append(_cumulative(prob[~label], edges))
            n_pos.append(int(label.sum()))
            n_neg.append(label.numel() - n_pos[-1])
            max_prob.append(float(prob.max()))
            flat = prob.flatten().double()
            for name, k in TOPK.items():
                topk[name].append(float(flat.topk(min(k, flat.numel())).values.mean()))
            if s.id in chosen:
                examples[s.id] = {"image": (image * 255).round().byte().permute(1, 2, 0).squeeze(-1).numpy(),
                                  "label": label.numpy(), "prob": prob.numpy(), "defect_type": s.defect_type}
    finally:
        model.train(was_training)
    n = len(samples)
    return SplitProbs(edges=edges, pos=torch.stack(pos) if n else torch.zeros(0, len(edges), dtype=torch.long),
                      neg=torch.stack(neg) if n else torch.zeros(0, len(edges), dtype=torch.long),
                      n_pos=torch.tensor(n_pos, dtype=torch.long), n_neg=torch.tensor(n_neg, dtype=torch.long),
                      max_prob=torch.tensor(max_prob, dtype=torch.float64),
                      topk={k: torch.tensor(v, dtype=torch.float64) for k, v in topk.items()},
                      types=[s.defect_type for s in samples],
                      ids=[s.id for s in samples], examples={i: examples[i] for i in chosen})


def choose_threshold(probs: SplitProbs) -> tuple[float, list[list[float]]]:
    """The threshold of the best pixel F1 over the split (the lowest one on a tie) and the F1 curve ``[[t, f1]...]``.

    A split without any defect pixel has nothing to choose on: :data:`DEFAULT_THRESHOLD`.
    """
    curve = [[float(t), probs.counts(j).f1] for j, t in enumerate(probs.edges.tolist())]
    if int(probs.n_pos.sum()) == 0:
        return DEFAULT_THRESHOLD, curve
    best = max(range(len(curve)), key=lambda j: (curve[j][1], -j))
    return curve[best][0], curve


def image_scores(probs: SplitProbs, j: int) -> dict[str, np.ndarray]:
    """Every :data:`IMAGE_SCORES` of every image, ``area`` at the pixel threshold ``probs.edges[j]``."""
    return {"max": probs.max_prob.numpy(), **{k: v.numpy() for k, v in probs.topk.items()},
            "area": (probs.pos[:, j] + probs.neg[:, j]).double().numpy()}


def at_detection(scores: np.ndarray, defect: np.ndarray, target: float = DETECTION_TARGET) -> tuple[float, float]:
    """The highest score threshold that flags at least ``target`` of the defect images, and the false-alarm rate
    (share of defect-free images at or over it) there: ``(threshold, fpr)``; NaNs when a class is absent."""
    pos, neg = np.sort(scores[defect])[::-1], scores[~defect]
    if not len(pos):
        return float("nan"), float("nan")
    threshold = float(pos[math.ceil(target * len(pos)) - 1])
    return threshold, float((neg >= threshold).mean()) if len(neg) else float("nan")


def choose_image_score(scores: dict[str, np.ndarray], defect: np.ndarray) -> str:
    """The image score of the highest image AUROC on this split (do this on ``val``); ``max`` when undefined."""
    aucs = {name: roc_auc(scores[name], defect) for name in IMAGE_SCORES}
    best = max(IMAGE_SCORES, key=lambda n: (0.0 if math.isnan(aucs[n]) else aucs[n], -IMAGE_SCORES.index(n)))
    return best


def image_level(probs: SplitProbs, j: int, score: str | None = None, threshold: float | None = None) -> dict:
    """Image-level scores: an image is flagged when its ``score`` (:data:`IMAGE_SCORES`) reaches ``threshold``.

    ``score=None``: chosen on this split by image AUROC (:func:`choose_image_score`);
    ``threshold=None``: the one that detects :data:`DETECTION_TARGET` of this split's defect images
    (:func:`at_detection`). ``auroc`` is that score's, ``auroc_max`` the maximum probability's,
    ``fpr_at_95`` the false-alarm rate at 95 % detection on this split (threshold-free).
    """
    defect = probs.has_defect.numpy()
    scores = image_scores(probs, j)
    score = score or choose_image_score(scores, defect)
    if score not in scores:
        raise ValueError(f"unknown image score {score!r}; choose one of {IMAGE_SCORES}")
    t95, fpr95 = at_detection(scores[score], defect)
    threshold = t95 if threshold is None else float(threshold)
    flagged = scores[score] >= threshold if not math.isnan(threshold) else np.zeros(len(defect), bool)
    image = {"score": score, "threshold": threshold, "defect_images": int(defect.sum()),
             "detected": int((flagged & defect).sum()), "free_images": int((~defect).sum()),
             "false_alarms": int((flagged & ~defect).sum())}
    image["detection_rate"] = image["detected"] / image["defect_images"] if image["defect_images"] else float("nan")
    image["false_alarm_rate"] = image["false_alarms"] / image["free_images"] if image["free_images"] else float("nan")
    image.update(auroc=roc_auc(scores[score], defect), auroc_max=roc_auc(scores["max"], defect), fpr_at_95=fpr95)
    return image


def scores_at(probs: SplitProbs, threshold: float, image_score: str | None = None,
              image_threshold: float | None = None) -> dict:
    """Pixel, per-type, macro and image-level scores at ``threshold`` (one of ``probs.edges``); see the module doc.

    Per type: the images of that defect type (an image whose mask is empty still counts for its
    type); defect-free images have no type row (their false positives count in ``pixel``).
    Image level (:func:`image_level`): an image is a defect image when its mask has a defect pixel;
    ``image_score`` / ``image_threshold`` None: chosen on this split.
    """
    j = probs.index(threshold)
    types = np.array(probs.types)
    per_type = {t: probs.counts(j, torch.from_numpy(types == t)) for t in sorted(set(probs.types) - {FREE})}
    image = image_level(probs, j, image_score, image_threshold)
    examples = []
    for i, ex in probs.examples.items():
        pred = ex["prob"].astype(np.float64) >= threshold  # as _cumulative compares
        examples.append({"id": i, "defect_type": ex["defect_type"], "image": ex["image"], "label": ex["label"],
                         "pred": pred, "f1": SegCounts.from_masks(pred, ex["label"]).f1})
    return {"pixel": probs.counts(j).scores(), "macro": macro(per_type),
            "per_type": {t: {**c.scores(), "images": int((types == t).sum())} for t, c in per_type.items()},
            "image": image, "n_images": len(probs.ids), "threshold": float(threshold), "examples": examples}


def evaluate(model: torch.nn.Module, samples: list[Sample], *, threshold: float | None = None,
             device: str | torch.device = "cpu", figure_images: int = FIGURE_IMAGES,
             image_score: str | None = None, image_threshold: float | None = None) -> dict:
    """Scores of ``model`` on real ``samples`` (a whole split) at the images' own resolution.

    ``threshold=None``: chosen on these samples by pixel F1 (do this on ``val`` only; the result
    holds ``"threshold_curve"``); else the given one. ``image_score`` / ``image_threshold``: the
    image decision (:func:`image_level`), chosen on these samples when None. Returns
    :func:`scores_at`'s dict plus ``"threshold_source"`` and ``"resolution"``.
    """
    probs = collect(model, samples, device, thresholds=() if threshold is None else (threshold,),
                    figure_images=figure_images)
    extra = {}
    if threshold is None:
        threshold, curve = choose_threshold(probs)
        extra = {"threshold_source": "chosen on this split (best pixel F1)", "threshold_curve": curve}
    result = scores_at(probs, threshold, image_score, image_threshold)
    stride = getattr(model, "stride", 32)
    return {**result, "threshold_source": "given", **extra,
            "resolution": f"native: whole images, mirror-padded by {INFERENCE_PAD} px and to a multiple of {stride} px, "
                          "scored on the original pixels against the original masks"}


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


def overlay(image: np.ndarray, label: np.ndarray, pred: np.ndarray, alpha: float = 0.6) -> np.ndarray:
    """Paper Figure 7 colours over an image: red = label only, green = prediction only, yellow = both.

    image (H,W) gray or (H,W,3) colour uint8, label/pred (H,W) bool -> (H,W,3) uint8.
    """
    rgb = image.astype(np.float32)
    rgb = np.repeat(rgb[..., None], 3, axis=2) if rgb.ndim == 2 else rgb.copy()
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


CSV_COLUMNS = ["set", "images", "tp", "fp", "fn", "tn", "precision", "recall", "f1", "iou"]


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
    if result.get("macro"):
        rows.append({"set": "macro (mean over types)", **result["macro"]})
    with paths["csv"].open("w", newline="") as f:
        writer = csv.DictWriter(f, CSV_COLUMNS, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    examples = result.get("examples", [])
    pairs = min(2, max(1, len(examples)))  # (image, overlay) pairs per row
    rows_n = max(1, -(-len(examples) // pairs))
    fig = Figure(figsize=(6.4 * pairs, 2.8 * rows_n), layout="constrained")
    for i, ex in enumerate(examples):
        gray = ex["image"].ndim == 2
        ax = fig.add_subplot(rows_n, 2 * pairs, 2 * i + 1)
        ax.imshow(ex["image"], cmap="gray" if gray else None, vmin=0, vmax=255)
        ax.set_title(f"{ex['defect_type']}: {Path(ex['id']).name}", fontsize=8)
        ax.axis("off")
        ax = fig.add_subplot(rows_n, 2 * pairs, 2 * i + 2)
        ax.imshow(overlay(ex["image"], ex["label"], ex["pred"], alpha=0.5))
        ax.set_title(f"F1 {ex['f1']:.2f}", fontsize=8)
        ax.axis("off")
    fig.suptitle(f"threshold {result.get('threshold', float('nan')):.3f}; right of each image: red = label only, "
                 "green = prediction only, yellow = both", fontsize=9)
    fig.savefig(paths["png"], dpi=100)
    return paths


def format_eval(result: dict) -> str:
    """The evaluation table: pixel P/R/F1/IoU overall, per type and macro; then the image level."""
    head = f"{'set':<12} {'images':>6} {'precision':>9} {'recall':>7} {'F1':>7} {'IoU':>7}"
    source = f" ({result['threshold_source']})" if result.get("threshold_source") else ""
    lines = [f"{result['n_images']} images, {result['resolution']}", f"threshold {result['threshold']:.3f}{source}",
             head, "-" * len(head)]
    rows = [("all", result["n_images"], result["pixel"])]
    rows += [(t, r.get("images", ""), r) for t, r in result["per_type"].items()]
    if result.get("macro"):
        rows.append(("macro", "", result["macro"]))
    for name, n, r in rows:
        lines.append(f"{name:<12} {n:>6} {r['precision']:>9.4f} {r['recall']:>7.4f} {r['f1']:>7.4f} {r['iou']:>7.4f}")
    im = result["image"]
    lines.append(f"image level ({im.get('score', 'max')} >= {im.get('threshold', float('nan')):.4g}): "
                 f"{im['detected']}/{im['defect_images']} defect images detected "
                 f"(rate {im['detection_rate']:.3f}); {im['false_alarms']}/{im['free_images']} defect-free images "
                 f"with a false alarm (rate {im['false_alarm_rate']:.3f}); image AUROC {im.get('auroc', float('nan')):.3f} "
                 f"(max pixel probability: {im.get('auroc_max', float('nan')):.3f}); false alarms at 95 % detection "
                 f"{im.get('fpr_at_95', float('nan')):.3f}")
    return "\n".join(lines)
