"""The segmentation loss (paper eq. 7 and a soft Dice term), pure torch.

- :func:`masked_cross_entropy`: cross-entropy over weighted pixels, defect pixels weighted ``cfg.defect_weight``;
- :func:`soft_dice_loss`: 1 - soft Dice of the defect class over the batch;
- :func:`seg_loss`: their sum, the training loss. The per-pixel weight is the batch's ``weight``
  (:func:`dstray.seg.data.loss_weight`: padding 0, generated windows times the policy's weight, 0 in the
  ignore band).
"""

from __future__ import annotations

import torch
from torch.nn import functional as F

from dstray.config import SegConfig

DICE_SMOOTH = 1.0  # added to the soft Dice numerator and denominator (a batch without defect pixels gives loss ~0)


# --------------------------------------------------------------------------- loss
def masked_cross_entropy(logits: torch.Tensor, target: torch.Tensor, weight: torch.Tensor,
                         defect_weight: float = 1.0) -> torch.Tensor:
    """Cross-entropy over the pixels where ``weight`` is 1 (paper eq. 7), defect pixels weighted.

    logits (N,K,H,W); target (N,1,H,W) in {0,1}; weight (N,1,H,W) in {0,1}. Normalised like
    ``F.cross_entropy(weight=...)``: sum(w * ce) / sum(w), w = weight * (defect_weight if defect else 1).
    Pixels with weight 0 get exactly zero gradient; no weighted pixel -> loss 0.
    """
    label = target[:, 0] > 0.5
    ce = F.cross_entropy(logits, label.long(), reduction="none")
    w = weight[:, 0] * torch.where(label, defect_weight, 1.0)
    return (w * ce).sum() / w.sum().clamp_min(torch.finfo(w.dtype).eps)


def soft_dice_loss(logits: torch.Tensor, target: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """1 - soft Dice of the defect class over the whole batch, pixels where ``weight`` is 1.

    logits (N,K,H,W), class 1 = defect; target and weight (N,1,H,W) in {0,1}.
    ``1 - (2 sum(p t) + s) / (sum(p) + sum(t) + s)`` with p the defect probability, s = :data:`DICE_SMOOTH`.
    """
    p = logits.softmax(1)[:, 1] * weight[:, 0]
    t = (target[:, 0] > 0.5).float() * weight[:, 0]
    return 1 - (2 * (p * t).sum() + DICE_SMOOTH) / (p.sum() + t.sum() + DICE_SMOOTH)


def seg_loss(logits: torch.Tensor, target: torch.Tensor, valid: torch.Tensor, cfg: SegConfig) -> torch.Tensor:
    """The training loss: weighted cross-entropy (+ ``cfg.dice_weight`` x soft Dice), valid pixels only."""
    loss = masked_cross_entropy(logits, target, valid, cfg.defect_weight)
    if cfg.dice_weight:
        loss = loss + cfg.dice_weight * soft_dice_loss(logits, target, valid)
    return loss
