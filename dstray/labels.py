"""Label geometry shared by both halves of the paper: the ring around an area, the band along a label's edge,
and how visible a labelled area is against its surroundings.

DST (``dstray.dst``) uses the ring for its contrast-preserving first step and the visibility check at
generation (``generate --min-visibility``); segmentation (``dstray.seg``) and the data policy
(:mod:`dstray.policy`) use the band (no loss along a generated label's edge) and the same visibility check
when they pick generated rows. Living here, below both halves, neither half imports the other.

**Visibility** (FreeMask, NeurIPS 2023: synthetic segmentation data helps only once pixels whose label the
image does not support are filtered out). Per image and area::

    visibility = |mean(L) - mean(ring)| / (std(ring) + 1/255)

on the grey level (ITU-R 601 luma for colour), ``ring`` being the pixels within :data:`RING_WIDTH` px
outside the area: how many standard deviations of the surrounding texture the area's mean stands apart (a
standardised mean difference; the 1/255 floor keeps flat backgrounds finite). A generated sample is
*visible* when its visibility is at least ``ratio`` times its type's reference defect's own (H against the
ring around M). An area with no ring (it covers the image) has visibility 0. Images are (C,H,W) floats in
[0, 1], masks (1,H,W) in {0,1}; batched helpers take (N,1,H,W).
"""

from __future__ import annotations

import torch
from torch import Tensor
from torch.nn import functional as F

RING_WIDTH = 6  # px: the surroundings of L (in S) and of M (in H) that set DST's contrast-preserving gain
LUMA = (0.299, 0.587, 0.114)  # ITU-R BT.601 luma weights (the grey level of a colour image)
FLOOR = 1 / 255  # one 8-bit grey level: the smallest texture spread the visibility divides by


def _as_bool(mask: Tensor) -> Tensor:
    return mask if mask.dtype == torch.bool else mask > 0.5


def ring(area: Tensor, width: int = RING_WIDTH) -> Tensor:
    """The pixels within ``width`` px (chessboard distance) outside an area: (N,1,H,W) 0/1 -> bool."""
    inside = _as_bool(area)
    grown = F.max_pool2d(inside.float(), 2 * width + 1, stride=1, padding=width) > 0.5
    return grown & ~inside


def label_band(mask: Tensor, width: int) -> Tensor:
    """Pixels within ``width`` px (chessboard distance) of a label's edge, on either side: (B,1,S,S) bool.

    mask (B,1,S,S) in {0,1}; ``width`` 0 -> nothing.
    """
    if width <= 0:
        return torch.zeros_like(mask, dtype=torch.bool)
    k = 2 * width + 1
    dilated = F.max_pool2d(mask, k, stride=1, padding=width)
    eroded = -F.max_pool2d(-mask, k, stride=1, padding=width)
    return (dilated > 0.5) & ~(eroded > 0.5)


def grey(image: Tensor) -> Tensor:
    """(C,H,W) in [0,1] -> (H,W) grey level (luma for 3 channels, the channel itself for 1)."""
    if image.shape[0] == 3:
        return (image * image.new_tensor(LUMA).view(3, 1, 1)).sum(0)
    return image[0]


def visibility(image: Tensor, mask: Tensor, width: int = RING_WIDTH) -> float:
    """The standardised contrast of the area ``mask`` against its ring (see the module doc); 0 without a ring."""
    g = grey(image.float())
    inside = mask[0] > 0.5
    around = ring(inside[None, None].float(), width)[0, 0]
    if not inside.any() or not around.any():
        return 0.0
    ring_values = g[around]
    return float((g[inside].mean() - ring_values.mean()).abs() / (ring_values.std(unbiased=False) + FLOOR))


def is_visible(image: Tensor, mask: Tensor, reference: float, ratio: float) -> tuple[bool, str]:
    """Whether a generated sample's label shows a defect: ``visibility >= ratio * reference``; and the reason if not."""
    v = visibility(image, mask)
    if v >= ratio * reference:
        return True, ""
    return False, (f"label not visible: contrast {v:.2f} against its surroundings, under {ratio:g} x the reference "
                   f"defect's {reference:.2f}")
