"""Pixel-level segmentation counts and scores, the paper's eq. (8).

``precision = TP / (TP + FP)``, ``recall = TP / (TP + FN)``,
``F1 = 2 precision recall / (precision + recall)`` (Wei et al., §4, eq. 8), and
``IoU = TP / (TP + FP + FN)``. Counts are summed over every pixel of a whole test
split before the scores are taken (micro average), never averaged per image.

0/0 convention: when there is nothing to find and nothing was predicted
(``TP + FP + FN == 0``), precision, recall, F1 and IoU are all 1.0 (a perfect empty
answer); otherwise a zero denominator gives 0.0 (no prediction: precision 0; no label:
recall 0). F1 is computed as ``2TP / (2TP + FP + FN)``, equal to eq. (8) wherever
eq. (8) is defined.

Also here: the macro mean over defect types (:func:`macro`; small types weigh as much as
large ones) and the image-level ROC AUC (:func:`roc_auc`, Mann-Whitney with average ranks).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import torch


@dataclass
class SegCounts:
    """Confusion counts of the defect class over a set of pixels."""

    tp: int = 0
    fp: int = 0
    fn: int = 0
    tn: int = 0

    @classmethod
    def from_masks(cls, pred, label, valid=None) -> "SegCounts":
        """Counts of boolean-like arrays/tensors of one shape; ``valid`` (same shape) restricts the pixels."""
        pred, label = _bool(pred), _bool(label)
        valid = np.ones_like(pred) if valid is None else _bool(valid)
        return cls(tp=int((pred & label & valid).sum()), fp=int((pred & ~label & valid).sum()),
                   fn=int((~pred & label & valid).sum()), tn=int((~pred & ~label & valid).sum()))

    def add(self, other: "SegCounts") -> "SegCounts":
        """Add ``other`` in place and return self."""
        self.tp += other.tp
        self.fp += other.fp
        self.fn += other.fn
        self.tn += other.tn
        return self

    def __add__(self, other: "SegCounts") -> "SegCounts":
        return SegCounts(**asdict(self)).add(other)

    @property
    def empty(self) -> bool:
        """True when there is no defect pixel in the label nor in the prediction."""
        return self.tp + self.fp + self.fn == 0

    @property
    def precision(self) -> float:
        return 1.0 if self.empty else _div(self.tp, self.tp + self.fp)

    @property
    def recall(self) -> float:
        return 1.0 if self.empty else _div(self.tp, self.tp + self.fn)

    @property
    def f1(self) -> float:
        return 1.0 if self.empty else _div(2 * self.tp, 2 * self.tp + self.fp + self.fn)

    @property
    def iou(self) -> float:
        return 1.0 if self.empty else _div(self.tp, self.tp + self.fp + self.fn)

    def scores(self) -> dict[str, float | int]:
        """Counts and scores as a flat, JSON-able dict."""
        return {**asdict(self), "precision": self.precision, "recall": self.recall, "f1": self.f1, "iou": self.iou}


def _div(a: int, b: int) -> float:
    return a / b if b else 0.0


def _bool(x) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().numpy()
    return np.asarray(x).astype(bool)


SCORES = ("precision", "recall", "f1", "iou")


def macro(per_type: dict[str, "SegCounts"]) -> dict[str, float]:
    """Each score averaged over the types (unweighted: every defect type counts the same); NaN without types."""
    if not per_type:
        return {k: float("nan") for k in SCORES}
    return {k: float(np.mean([getattr(c, k) for c in per_type.values()])) for k in SCORES}


def roc_auc(scores, labels) -> float:
    """Area under the ROC curve of ``scores`` for the binary ``labels`` (1 = positive); NaN if one class is absent.

    The probability that a random positive scores above a random negative, ties counting one
    half (Mann-Whitney U over average ranks), which equals the trapezoidal ROC area.
    """
    scores, labels = np.asarray(scores, dtype=np.float64), np.asarray(labels).astype(bool)
    n_pos, n_neg = int(labels.sum()), int((~labels).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    order = np.argsort(scores, kind="mergesort")
    ranks = np.empty(len(scores))
    sorted_scores = scores[order]
    i = 0
    while i < len(scores):  # average ranks (1-based) over runs of equal scores
        j = i
        while j + 1 < len(scores) and sorted_scores[j + 1] == sorted_scores[i]:
            j += 1
        ranks[order[i:j + 1]] = (i + j) / 2 + 1
        i = j + 1
    u = ranks[labels].sum() - n_pos * (n_pos + 1) / 2
    return float(u / (n_pos * n_neg))
