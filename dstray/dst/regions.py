"""Where a defect may go: regions of interest, target areas the user drew, room left beside other defects.

- A **region of interest** (ROI) is a mask of a background: every area L generated on it lies
  wholly inside the ROI (:meth:`dstray.dst.areas.AreaSampler.sample` with ``roi``). One mask for
  every background (``generate --roi MASK``) is resized to each background (:func:`fit_roi`,
  nearest neighbour); a background's own ROI (a manifest column ``roi`` or ``roi/<name>.png``
  beside ``backgrounds/``) is used as it is and must have the background's size.
- **User target areas** (``generate --areas DIR``, one mask per background, by file name): each
  connected region (8-connected, :func:`skimage.measure.label`) is an L as drawn (:func:`regions`);
  DST fills and blends it; nothing is sampled but which region(s) a sample uses.
- **Several defects per image**: the room for defect ``j`` is the ROI minus the earlier areas
  grown by :data:`GAP` px (:func:`free_room`), so the areas never overlap or touch.
"""

from __future__ import annotations

import io

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

GAP = 1  # pixels kept between two defects of one image (so each stays its own connected region)


def fit_roi(roi: Tensor, height: int, width: int) -> Tensor:
    """``roi`` (1,h,w) {0,1} resized to (1,height,width) by nearest neighbour (unchanged when sizes agree)."""
    if tuple(roi.shape[-2:]) == (height, width):
        return roi.float()
    return (F.interpolate(roi[None].float(), size=(height, width), mode="nearest")[0] > 0.5).float()


def read_roi(blob: bytes, name: str, height: int, width: int, *, scale: bool) -> Tensor:
    """A ROI mask file's bytes as (1,height,width) {0,1}; ``scale``: resize it when its size differs, else
    a ValueError that names the file and both sizes."""
    from dstray.data import read_mask

    roi = read_mask(blob) if isinstance(blob, str) else read_mask(io.BytesIO(blob), name=f"roi {name}")
    if not scale and tuple(roi.shape[-2:]) != (height, width):
        raise ValueError(f"roi {name} is {roi.shape[-1]}x{roi.shape[-2]} px, its background {width}x{height}; "
                         "give each background a roi of its own size (or one --roi mask, which is scaled)")
    return fit_roi(roi, height, width)


def regions(mask: Tensor) -> list[Tensor]:
    """The connected regions (8-connected) of a (1,H,W) mask, each (1,H,W) {0,1}, in label order (top to bottom)."""
    from skimage.measure import label

    labels = label(mask[0].numpy() > 0.5, connectivity=2)
    return [torch.from_numpy(labels == k).float()[None] for k in range(1, int(labels.max()) + 1)]


def free_room(roi: Tensor | None, taken: Tensor, gap: int = GAP) -> Tensor:
    """Where another defect may go: ``roi`` (or the whole image) minus ``taken`` (1,H,W) grown by ``gap`` px."""
    from scipy.ndimage import binary_dilation

    grown = binary_dilation(taken[0].numpy() > 0.5, iterations=gap, structure=np.ones((3, 3), bool))
    room = torch.from_numpy(~grown).float()[None]
    return room if roi is None else room * (roi > 0.5)


def copy_into(image: Tensor, mask: Tensor, area: Tensor) -> Tensor:
    """The reference defect's bounding box (``image`` (C,h,w), ``mask`` (1,h,w)) resized into L's
    (``area`` (1,H,W)): (C,H,W), zero outside L's box. The copy generator's pixels for a drawn L."""
    from dstray.dst.windows import bbox

    y0, x0, y1, x1 = bbox(mask)
    v0, u0, v1, u1 = bbox(area)
    patch = F.interpolate(image[None, :, y0:y1, x0:x1].float(), size=(v1 - v0, u1 - u0), mode="bilinear",
                          align_corners=False)[0]
    out = torch.zeros(image.shape[0], *area.shape[-2:])
    out[:, v0:v1, u0:u1] = patch.clamp(0, 1)
    return out * area


def gather_rois(roi: str | None, backgrounds: list) -> tuple[bytes | None, dict[str, bytes]]:
    """The run's ROI files as bytes (they travel to the actors): ``--roi`` (checked here: a bad file stops the
    run), and each background's own ROI (``Sample.roi``; an unreadable one makes its samples rejects)."""
    from dstray.data import DataError, read_mask

    blob = None
    if roi is not None:
        read_mask(roi)  # DataError naming the file: missing, not an image, colour ...
        with open(roi, "rb") as f:
            blob = f.read()
        if not bool(read_mask(io.BytesIO(blob)).any()):
            raise DataError(roi, "empty region of interest (no pixel >= 128): no defect could go anywhere",
                            "mark where defects may go with 255 (the rest 0)")
    own = {}
    for b in backgrounds:
        if b.roi is not None:
            try:
                with open(b.roi, "rb") as f:
                    own[b.id] = f.read()
            except OSError:
                own[b.id] = str(b.roi)  # read again (and failing, naming the file) when its samples are made
    return blob, own


def gather_areas(folder: str, backgrounds: list) -> dict[str, bytes]:
    """``--areas DIR``: the target-area mask of each background that has one (``DIR/<name>.png`` or
    ``<name>_mask.png`` for background file ``<name>.ext``), as bytes; ValueError when none matches."""
    from pathlib import Path

    from dstray.data.io import IMAGE_EXTENSIONS

    root = Path(folder)
    if not root.is_dir():
        raise ValueError(f"--areas {folder}: no such folder; give a folder with one mask per background, named "
                         "like the background (<name>.png or <name>_mask.png)")
    files = {}
    for f in sorted(root.iterdir(), reverse=True):  # <name>.png wins over <name>_mask.png
        if f.suffix.lower() in IMAGE_EXTENSIONS:
            files[f.stem[: -len("_mask")] if f.stem.endswith("_mask") else f.stem] = f
    out = {b.id: files[b.image.stem].read_bytes() for b in backgrounds if b.image.stem in files}
    if not out:
        names = ", ".join(b.image.stem for b in backgrounds[:3])
        raise ValueError(f"--areas {folder}: no mask matches a background's file name (backgrounds e.g. {names}; "
                         f"masks: {', '.join(sorted(files)[:3]) or 'none'}); name each mask like its background")
    return out
