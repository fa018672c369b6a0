"""Windows around a target area L: DST's patch mode runs TransferNet on a square window around L.

:func:`crop_window` picks the window, :func:`cut_window` cuts it (padded when the image is
smaller), :func:`paste_window` writes it back; :func:`bbox` is L's bounding box.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor


def bbox(area: Tensor) -> tuple[int, int, int, int]:
    """(y0, x0, y1, x1), end-exclusive, of the set pixels of a (1,H,W) or (H,W) mask."""
    m = area.reshape(area.shape[-2:]).bool()
    rows, cols = m.any(1).nonzero()[:, 0], m.any(0).nonzero()[:, 0]
    if rows.numel() == 0:
        raise ValueError("the area is empty (no pixel set)")
    return int(rows[0]), int(cols[0]), int(rows[-1]) + 1, int(cols[-1]) + 1


def crop_window(area: Tensor, size: int, context: int = 4) -> tuple[int, int, int, int]:
    """A square window (top, left, h, w) of side ``size`` containing L, centred on it.

    area (1,H,W). If L's bounding box plus ``context`` pixels on each side does not fit in
    ``size``, the side grows to the next multiple of 4 that does. The window is then
    shifted (not shrunk) to stay in the image, as centred on L as the image allows; along
    a dimension where the image is smaller than the side, it is the whole dimension.
    """
    y0, x0, y1, x1 = bbox(area)
    height, width = area.shape[-2:]
    need = max(y1 - y0, x1 - x0) + 2 * context
    if need > size:
        size = 4 * math.ceil(need / 4)
    h, w = min(size, height), min(size, width)
    top = min(max(y0 - (h - (y1 - y0) + 1) // 2, 0), height - h)
    left = min(max(x0 - (w - (x1 - x0) + 1) // 2, 0), width - w)
    return top, left, h, w


def paste_window(full: Tensor, window: Tensor, box: tuple[int, int, int, int]) -> Tensor:
    """A copy of ``full`` (...,H,W) with ``window`` (...,h,w) written at box=(top, left, h, w)."""
    top, left, h, w = box
    height, width = full.shape[-2:]
    if window.shape[-2:] != (h, w) or top < 0 or left < 0 or top + h > height or left + w > width:
        raise ValueError(f"window {tuple(window.shape)} does not fit box {box} in {tuple(full.shape)}")
    out = full.clone()
    out[..., top : top + h, left : left + w] = window
    return out


def cut_window(image: Tensor, box: tuple[int, int, int, int], shape: tuple[int, int] | None = None,
               pad_mode: str = "replicate") -> Tensor:
    """``image`` (C,H,W) cut to box=(top, left, h, w), padded bottom/right to ``shape`` when smaller.

    ``pad_mode``: ``"replicate"`` for images, ``"zeros"`` for masks.
    """
    top, left, h, w = box
    out = image[:, top:top + h, left:left + w]
    if shape is not None and (h, w) != tuple(shape):
        pad = (0, shape[1] - w, 0, shape[0] - h)
        pad_fn = torch.nn.functional.pad
        out = pad_fn(out, pad) if pad_mode == "zeros" else pad_fn(out[None], pad, mode=pad_mode)[0]
    return out
