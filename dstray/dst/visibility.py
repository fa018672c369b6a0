"""How visible a labelled area is against its surroundings: the check that a generated label shows a defect.

FreeMask (NeurIPS 2023) found synthetic segmentation data helps only once pixels whose label the
image does not support are filtered out. dstray's measure, per image and area:

    visibility = |mean(L) - mean(ring)| / (std(ring) + 1/255)

on the image's grey level (ITU-R 601 luma for colour), ``ring`` being the pixels within
:data:`dstray.dst.histmatch.RING_WIDTH` px outside the area: how many standard deviations of the
surrounding texture the area's mean stands apart (a standardised mean difference; the 1/255 floor
keeps flat backgrounds finite). A generated sample is *visible* when its visibility is at least
``ratio`` times its type's reference defect's own (H against the ring around M): a label that
differs from its surroundings much less than the real defect does is a label of nothing a person
could see. An area with no ring (it covers the image) has visibility 0. Measured on whole images
in [0, 1]: ``image (C,H,W)``, ``mask (1,H,W)`` in {0,1}.
"""

from __future__ import annotations

import torch

from dstray.dst.histmatch import RING_WIDTH, ring

LUMA = (0.299, 0.587, 0.114)  # ITU-R BT.601 luma weights (the grey level of a colour image)
FLOOR = 1 / 255  # one 8-bit grey level: the smallest texture spread the measure divides by


def grey(image: torch.Tensor) -> torch.Tensor:
    """(C,H,W) in [0,1] -> (H,W) grey level (luma for 3 channels, the channel itself for 1)."""
    if image.shape[0] == 3:
        return (image * image.new_tensor(LUMA).view(3, 1, 1)).sum(0)
    return image[0]


def visibility(image: torch.Tensor, mask: torch.Tensor, width: int = RING_WIDTH) -> float:
    """The standardised contrast of the area ``mask`` against its ring (see the module doc); 0 without a ring."""
    g = grey(image.float())
    inside = mask[0] > 0.5
    around = ring(inside[None, None].float(), width)[0, 0]
    if not inside.any() or not around.any():
        return 0.0
    ring_values = g[around]
    return float((g[inside].mean() - ring_values.mean()).abs() / (ring_values.std(unbiased=False) + FLOOR))


def is_visible(image: torch.Tensor, mask: torch.Tensor, reference: float, ratio: float) -> tuple[bool, str]:
    """Whether a generated sample's label shows a defect: ``visibility >= ratio * reference``; and the reason if not."""
    v = visibility(image, mask)
    if v >= ratio * reference:
        return True, ""
    return False, (f"label not visible: contrast {v:.2f} against its surroundings, under {ratio:g} x the reference "
                   f"defect's {reference:.2f}")
