"""The paper's Figure 3, one row per defect type: reference H (M outlined), S (L outlined), y', ŷ."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from torch import Tensor


def _rgb(image: Tensor) -> np.ndarray:
    """(C,H,W) in [0,1] -> (H,W,3) float64 for skimage."""
    a = image.detach().float().cpu().clamp(0, 1)
    return (a.expand(3, -1, -1) if a.shape[0] == 1 else a).permute(1, 2, 0).numpy().astype(np.float64)


def render_figure3_row(reference: Tensor, ref_mask: Tensor, background: Tensor, area: Tensor,
                       histmatched: Tensor, output: Tensor, path: str | Path | None = None,
                       gap: int = 4) -> np.ndarray:
    """One row of the paper's Figure 3: reference H (M outlined), S (L outlined), histmatch y', DST ŷ.

    Args: images (C,H,W) in [0,1], masks (1,H,W). The reference panel is resized to the
    background's height. Returns the row as (H, W, 3) uint8 (white gaps of ``gap`` px);
    written as PNG to ``path`` when given.
    """
    from skimage.segmentation import mark_boundaries
    from skimage.transform import resize

    h = background.shape[-2]
    ref = mark_boundaries(_rgb(reference), (ref_mask[0] > 0.5).cpu().numpy().astype(int), color=(1, 0, 0))
    ref = resize(ref, (h, max(1, round(ref.shape[1] * h / ref.shape[0]))), order=1, anti_aliasing=True)
    bg = mark_boundaries(_rgb(background), (area[0] > 0.5).cpu().numpy().astype(int), color=(0, 1, 0))
    panels = [ref, bg, _rgb(histmatched), _rgb(output)]
    white = np.ones((h, gap, 3))
    row = np.concatenate([p for panel in panels for p in (panel, white)][:-1], axis=1)
    row = (row.clip(0, 1) * 255).round().astype(np.uint8)
    if path is not None:
        from PIL import Image

        Image.fromarray(row).save(path)
    return row

