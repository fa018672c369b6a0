"""The paper's Figure 3, one row per defect type: H and M, S and L, histmatch y', DST ŷ.

Masks are shown beside their images, never drawn over them: an outline over a 2-px crack hides
the defect it labels.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from torch import Tensor


def _rgb(image: Tensor) -> np.ndarray:
    """(C,H,W) in [0,1] -> (H,W,3) float64 in [0, 1] (gray repeated)."""
    a = image.detach().float().cpu().clamp(0, 1)
    return (a.expand(3, -1, -1) if a.shape[0] == 1 else a).permute(1, 2, 0).numpy().astype(np.float64)


def _mask_panel(mask: Tensor) -> np.ndarray:
    """(1,H,W) 0/1 -> (H,W,3): white label on black, as the paper's label images."""
    return np.repeat((mask[0] > 0.5).cpu().numpy()[..., None].astype(np.float64), 3, axis=2)


def render_figure3_row(reference: Tensor, ref_mask: Tensor, background: Tensor, area: Tensor,
                       histmatched: Tensor, output: Tensor, path: str | Path | None = None,
                       gap: int = 4) -> np.ndarray:
    """One row of the paper's Figure 3: H | M | S | L | histmatch y' | DST ŷ.

    Args: images (C,H,W) in [0,1] (colour stays colour), masks (1,H,W). The reference panels
    are resized to the background's height. Returns the row as (H, W, 3) uint8 with white
    gaps of ``gap`` px (twice as wide between the pairs); written as PNG to ``path`` when given.
    """
    from skimage.transform import resize

    h = background.shape[-2]

    def fit(a: np.ndarray) -> np.ndarray:
        return resize(a, (h, max(1, round(a.shape[1] * h / a.shape[0]))), order=1, anti_aliasing=True)

    pairs = [(fit(_rgb(reference)), fit(_mask_panel(ref_mask))), (_rgb(background), _mask_panel(area)),
             (_rgb(histmatched), _rgb(output))]
    white, wide = np.ones((h, gap, 3)), np.ones((h, 3 * gap, 3))
    parts = []
    for a, b in pairs:
        parts += [a, white, b, wide]
    row = np.concatenate(parts[:-1], axis=1)
    row = (row.clip(0, 1) * 255).round().astype(np.uint8)
    if path is not None:
        from PIL import Image

        Image.fromarray(row).save(path)
    return row
