"""Image helpers of the report: arrays to PNG, masks outlined, thumbnails, zooms on L."""

from __future__ import annotations

import io

import numpy as np

LABEL_RGB = (255, 0, 0)  # outline colour of masks / areas (red, as the label in the paper's Fig. 7)
ZOOM_PX = 180  # zoom crops are upscaled (nearest) to about this size
# colours of class_mask values 1, 2, ... (matplotlib's tab10, readable on grey tiles); 0 (background) is black
CLASS_RGB = ((31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189), (140, 86, 75),
             (227, 119, 194), (127, 127, 127), (188, 189, 34), (23, 190, 207))


def png(a: np.ndarray) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(a)).save(buf, format="PNG")
    return buf.getvalue()


def rgb(image) -> np.ndarray:
    """(C,H,W) float tensor/array in [0,1], C in {1,3} -> (H,W,3) uint8."""
    a = image.detach().cpu().numpy() if hasattr(image, "detach") else np.asarray(image)
    a = np.clip(np.asarray(a, np.float32), 0, 1)
    if a.shape[0] == 1:
        a = np.repeat(a, 3, axis=0)
    return (a.transpose(1, 2, 0) * 255).round().astype(np.uint8)


def bool_mask(mask) -> np.ndarray:
    """(1,H,W) / (H,W) tensor or array -> (H,W) bool."""
    a = mask.detach().cpu().numpy() if hasattr(mask, "detach") else np.asarray(mask)
    return np.asarray(a).reshape(a.shape[-2:]) > 0.5


def outline(rgb: np.ndarray, mask: np.ndarray, colour=LABEL_RGB, thickness: int | None = None) -> np.ndarray:
    """A copy of ``rgb`` (H,W,3) uint8 with the border of ``mask`` (H,W) bool drawn just outside it.

    The line is ``thickness`` pixels wide (default: about 1/250 of the longer image side, at
    least 1) so it stays visible when the image is shown small; the defect itself is not covered.
    """
    from scipy.ndimage import binary_dilation
    from skimage.morphology import disk
    from skimage.segmentation import find_boundaries

    out = rgb.copy()
    if not mask.any():
        return out
    if thickness is None:
        thickness = max(1, round(max(mask.shape) / 250))
    ring = find_boundaries(mask, mode="outer") & ~mask
    if thickness > 1:
        ring = binary_dilation(ring, structure=disk(thickness - 1)) & ~mask
    out[ring] = colour
    return out


def colour_classes(class_mask) -> np.ndarray:
    """A class mask (H,W) or (1,H,W) of ints (0 = background, k = class k) -> (H,W,3) uint8: black where 0,
    ``CLASS_RGB[(k - 1) % 10]`` where k (the legend: :func:`class_legend`)."""
    a = class_mask.detach().cpu().numpy() if hasattr(class_mask, "detach") else np.asarray(class_mask)
    a = np.asarray(a).reshape(a.shape[-2:]).astype(np.int64)
    palette = np.array([(0, 0, 0), *CLASS_RGB], np.uint8)
    return palette[np.where(a > 0, (a - 1) % len(CLASS_RGB) + 1, 0)]


def class_legend(classes: list[str]) -> list[tuple[str, tuple[int, int, int]]]:
    """(name, colour) of class k = ``classes[k - 1]``, as :func:`colour_classes` paints it."""
    return [(name, CLASS_RGB[k % len(CLASS_RGB)]) for k, name in enumerate(classes)]


def shrink(rgb: np.ndarray, mask: np.ndarray, max_side: int) -> tuple[np.ndarray, np.ndarray]:
    """Image (area-averaged) and mask (nearest) downscaled so the longer side is at most ``max_side``."""
    from PIL import Image

    h, w = mask.shape
    if max(h, w) <= max_side:
        return rgb, mask
    size = (max(1, round(w * max_side / max(h, w))), max(1, round(h * max_side / max(h, w))))
    small = np.asarray(Image.fromarray(rgb).resize(size, Image.Resampling.BOX))
    small_mask = np.asarray(Image.fromarray(mask.astype(np.uint8) * 255).resize(size, Image.Resampling.NEAREST)) > 127
    return small, small_mask


def zoom(rgb: np.ndarray, window: tuple[int, int, int, int]) -> np.ndarray:
    """The (top, left, h, w) window of ``rgb``, upscaled by an integer factor (nearest) to about ZOOM_PX."""
    top, left, h, w = window
    crop = rgb[top:top + h, left:left + w]
    k = max(1, ZOOM_PX // max(crop.shape[:2]))
    return np.repeat(np.repeat(crop, k, axis=0), k, axis=1)
