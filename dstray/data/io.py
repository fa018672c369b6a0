"""Reading images and masks, and the PNG bytes of generated datasets.

Images are float32 tensors in [0, 1] of shape (C, H, W): grayscale files stay
single-channel (C=1), RGB files are C=3. An alpha channel is dropped (LA -> L,
RGBA -> RGB); 1-bit files are read as 0 / 255. 16-bit and 32-bit files (modes
I;16, I, F), palette files (mode P) and other modes (CMYK, ...) are rejected with a
:class:`DataError` saying how to convert them: dstray does not guess a scaling.

Masks are float32 (1, H, W) with values exactly 0.0 / 1.0: an 8-bit mask pixel is a
defect pixel when its value is >= ``MASK_THRESHOLD`` (128), so JPEG-ish masks with
values such as 250 or 3 are binarised the expected way. RGB masks are accepted only
when gray (R = G = B).

Every file is fully decoded by Pillow with ``ImageFile.LOAD_TRUNCATED_IMAGES = False``,
so a truncated JPEG or PNG is an error, not a half-grey image.

Size limit: ``read_image(..., max_pixels=N)`` checks width x height from the file header
before decoding and raises a :class:`DataError` (:func:`too_large`) above N pixels; jobs pass
``--max-image-pixels`` (default :data:`MAX_IMAGE_PIXELS`). dstray checks sizes itself, so
Pillow's ``DecompressionBombWarning`` is silenced; files above Pillow's own hard limit
(2 x ``PIL.Image.MAX_IMAGE_PIXELS``, ~179 MP) are a :class:`DataError` too.

Errors name the file: a path, or the ``name`` given with bytes (a background's path
when its bytes came through the Ray object store).

:func:`read_checkpoint` loads a torch checkpoint given as input (a DST ``model.pt``, a
segmenter checkpoint) with ``weights_only=True``; a truncated or foreign file is a
:class:`DataError` naming it and the command that writes a good one.
"""

from __future__ import annotations

import io
import pickle
import warnings
from pathlib import Path
from typing import BinaryIO

import numpy as np
import torch
from PIL import Image, ImageFile, UnidentifiedImageError

from dstray.config import MAX_IMAGE_PIXELS  # noqa: F401  (the size limit's default; re-exported)
from dstray.data.errors import DataError

MASK_THRESHOLD = 128  # 8-bit mask value from which a pixel is a defect pixel
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")

_CHANNELS = {"1": 1, "L": 1, "LA": 1, "RGB": 3, "RGBA": 3}  # accepted modes -> C
_DEEP_MODES = ("I;16", "I", "F")  # 16/32-bit modes (prefix match: I;16B, I;16L, ...)


def _check_mode(source: str | Path, mode: str, what: str) -> int:
    """Channel count of an accepted Pillow mode; DataError naming the fix otherwise."""
    if mode in _CHANNELS:
        return _CHANNELS[mode]
    if mode.startswith(_DEEP_MODES):
        raise DataError(
            source,
            f"{'16-bit' if mode.startswith('I;16') else 'high bit-depth'} {what} (mode {mode}); "
            "dstray reads 8-bit files only",
            "convert it to 8-bit first, scaling to 0-255 as fits your camera "
            "(e.g. `magick FILE -depth 8 FILE`, or numpy: (a >> 8).astype('uint8'))",
        )
    if mode == "P":
        fix = (
            "save the mask as 8-bit grayscale (mode L) PNG, 0 = background, 255 = defect"
            if what == "mask"
            else "convert it to grayscale or RGB, e.g. with Pillow: Image.open(FILE).convert('L').save(FILE)"
        )
        raise DataError(source, f"palette {what} (mode P): pixel values are palette indices", fix)
    raise DataError(
        source,
        f"unsupported {what} mode {mode}",
        "convert it to 8-bit grayscale (L) or RGB, e.g. Image.open(FILE).convert('RGB').save(FILE)",
    )


def too_large(name: str | Path, width: int, height: int, max_pixels: int) -> DataError:
    """The error for an image over the size limit ``max_pixels`` (width x height)."""
    return DataError(
        name,
        f"image {width}x{height} ({width * height / 1e6:.1f} MP) is over the size limit of "
        f"{max_pixels / 1e6:g} MP (--max-image-pixels {max_pixels})",
        "downscale it or cut it into tiles (e.g. `magick FILE -crop 2048x2048 tile_%d.png`), "
        "or raise --max-image-pixels if the memory allows",
    )


def _open(source: str | Path | BinaryIO, what: str, *, decode: bool = True, name: str | Path | None = None,
          max_pixels: int | None = None) -> Image.Image:
    """Open (and by default fully decode) an image file; every failure is a DataError naming the file.

    ``name``: how errors call ``source`` when it is a file object (default ``<image bytes>``).
    ``max_pixels``: width x height above which the image is refused before decoding.
    """
    if name is None:
        name = source if isinstance(source, (str, Path)) else "<image bytes>"
    ImageFile.LOAD_TRUNCATED_IMAGES = False  # truncated files must fail, not decode half grey
    try:
        with warnings.catch_warnings():  # sizes are checked here (max_pixels), not by Pillow's bomb warning
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            im = Image.open(source)
    except FileNotFoundError:
        raise DataError(name, f"{what} file not found", "check the path (manifest paths are relative to its folder)")
    except PermissionError as exc:
        raise DataError(name, f"no permission to read the {what} ({exc.strerror})", "check the file's permissions")
    except IsADirectoryError:
        raise DataError(name, f"a folder, not an {what} file", "give the path of the file")
    except Image.DecompressionBombError as exc:
        raise DataError(name, f"{what} too large for Pillow to open ({exc})",
                        "downscale it or cut it into tiles") from exc
    except Exception as exc:  # UnidentifiedImageError, a header cut short, ...
        if _nbytes(source) == 0:
            raise DataError(name, f"empty {what} file (0 bytes)", "re-copy or re-export the file") from None
        if isinstance(exc, UnidentifiedImageError):
            raise DataError(name, f"not an image file Pillow can read ({what})",
                            "re-export it as PNG or JPEG") from None
        raise DataError(
            name, f"truncated or corrupt {what} ({exc})", "re-copy or re-export the file (a half-written file?)"
        ) from exc
    try:
        _check_mode(name, im.mode, what)
        if max_pixels is not None and im.width * im.height > max_pixels:
            raise too_large(name, im.width, im.height, max_pixels)
        if decode:
            im.load()
    except DataError:
        im.close()
        raise
    except Exception as exc:  # truncated/corrupt data: OSError, SyntaxError, ValueError, ...
        im.close()
        raise DataError(
            name, f"truncated or corrupt {what} ({exc})", "re-copy or re-export the file (a half-written file?)"
        ) from exc
    return im


def _nbytes(source: str | Path | BinaryIO) -> int | None:
    """Size in bytes of a file or an in-memory buffer; None when it cannot be told."""
    try:
        if isinstance(source, (str, Path)):
            return Path(source).stat().st_size
        if isinstance(source, io.BytesIO):
            return source.getbuffer().nbytes
    except OSError:
        pass
    return None


def _to_tensor(a: np.ndarray) -> torch.Tensor:
    """uint8 (H,W) or (H,W,C) -> float32 (C,H,W) in [0,1]."""
    t = torch.from_numpy(a)
    t = t.unsqueeze(0) if t.ndim == 2 else t.permute(2, 0, 1)
    return t.contiguous().float().div_(255.0)


def _image_array(im: Image.Image) -> np.ndarray:
    """Decoded Pillow image of an accepted mode -> uint8 (H,W) or (H,W,3), alpha dropped."""
    if im.mode in ("1", "LA"):
        im = im.convert("L")
    elif im.mode == "RGBA":
        im = im.convert("RGB")
    return np.array(im)


def size_mismatch(mask_path: str | Path, mask_hw: tuple[int, int], image_hw: tuple[int, int]) -> DataError:
    """The error for a mask whose (H, W) differs from its image's."""
    return DataError(
        mask_path,
        f"mask size {mask_hw[1]}x{mask_hw[0]} differs from its image size {image_hw[1]}x{image_hw[0]} (WxH)",
        "a mask must have exactly its image's size; re-export the mask",
    )


def image_shape(path: str | Path | BinaryIO, what: str = "image", *, name: str | Path | None = None
                ) -> tuple[int, int, int]:
    """(C, H, W) of an image (or mask) file, from its header only (no decode; mode checked)."""
    with _open(path, what, decode=False, name=name) as im:
        return _CHANNELS[im.mode], im.height, im.width


def read_image(path: str | Path | BinaryIO, *, name: str | Path | None = None,
               max_pixels: int | None = None) -> torch.Tensor:
    """An image file as a float32 tensor (C, H, W) in [0, 1], C = 1 (grayscale) or 3 (RGB).

    ``path``: a path or a binary file object (then ``name`` is what errors call it).
    ``max_pixels``: refuse (DataError, before decoding) an image of more than this many pixels.
    """
    return _to_tensor(_image_array(_open(path, "image", name=name, max_pixels=max_pixels)))


def read_mask(path: str | Path | BinaryIO, like: torch.Tensor | None = None, *, name: str | None = None) -> torch.Tensor:
    """A mask file (or its bytes in a file object) as float32 (1, H, W) in {0, 1}: 1 where the 8-bit value is
    >= MASK_THRESHOLD.

    ``like``: an image tensor (..., H, W); if given, the mask must have its H and W. ``name``: what errors
    call a file object.
    """
    im = _open(path, "mask", name=name)
    a = _image_array(im)
    if a.ndim == 3:
        if not ((a[..., 0] == a[..., 1]).all() and (a[..., 1] == a[..., 2]).all()):
            raise DataError(
                path, "colour mask (RGB with R, G, B not equal)", "save it as 8-bit grayscale (L) PNG, 0 / 255"
            )
        a = a[..., 0]
    if like is not None and tuple(like.shape[-2:]) != a.shape:
        raise size_mismatch(path, a.shape, tuple(like.shape[-2:]))
    return torch.from_numpy(a >= MASK_THRESHOLD).float().unsqueeze(0)


def to_channels(image: torch.Tensor, channels: int) -> torch.Tensor:
    """(C,H,W) -> (channels,H,W): grayscale repeated to RGB, RGB to grayscale (ITU-R 601-2 luma)."""
    if image.shape[0] == channels:
        return image
    if channels == 3:
        return image.expand(3, -1, -1).clone()
    from torchvision.transforms.v2 import functional as TF

    return TF.rgb_to_grayscale(image)


def encode_png(image: torch.Tensor) -> bytes:
    """PNG bytes (8-bit L or RGB) of an image (C, H, W) or (H, W), C in {1, 3}.

    Float tensors are taken in [0, 1] (clamped, rounded to 8-bit, so a mask {0, 1}
    becomes 0 / 255); uint8 tensors are written as they are.
    """
    t = image.detach().cpu()
    if t.ndim == 2:
        t = t.unsqueeze(0)
    if t.ndim != 3 or t.shape[0] not in (1, 3):
        raise ValueError(f"encode_png expects (C,H,W) with C in {{1,3}} or (H,W), got shape {tuple(image.shape)}")
    if t.dtype != torch.uint8:
        t = t.float().mul(255.0).round_().clamp_(0, 255).to(torch.uint8)
    a = t.permute(1, 2, 0).numpy()
    buf = io.BytesIO()
    Image.fromarray(a[..., 0] if a.shape[2] == 1 else a).save(buf, format="PNG")
    return buf.getvalue()


def decode_png(data: bytes, name: str = "<png bytes>") -> torch.Tensor:
    """The inverse of :func:`encode_png`: PNG (or any image) bytes -> float32 (C, H, W) in [0, 1]."""
    return _to_tensor(_image_array(_open(io.BytesIO(data), "image", name=name)))


def read_checkpoint(source: str | Path | bytes, *, name: str | Path | None = None, what: str = "dstray checkpoint",
                    refit: str = "") -> dict:
    """A torch checkpoint (a dict) read with ``weights_only=True`` from a path or its bytes.

    Every failure is a :class:`DataError` naming the file (``name`` for bytes): missing,
    truncated, not a torch file, pickled objects a safe load refuses (never advice to load it
    unsafely), or not a dict. ``refit`` says how to write a good one (a command).
    """
    import torch

    name = name if name is not None else (source if isinstance(source, (str, Path)) else "<checkpoint bytes>")
    hint = refit or "write it again with the command that made it"
    if isinstance(source, (str, Path)):
        try:
            source = Path(source).read_bytes()
        except FileNotFoundError:
            raise DataError(name, f"{what} not found", hint) from None
        except OSError as exc:
            raise DataError(name, f"cannot read the {what} ({exc.strerror or exc})", hint) from exc
    try:
        ckpt = torch.load(io.BytesIO(source), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:  # torch's message advises weights_only=False: wrong for an input file
        raise DataError(name, f"corrupt or not a {what} (it holds objects a safe load refuses)", hint) from None
    except Exception as exc:  # arbitrary bytes fail anywhere in the unpickler (IndexError, KeyError, ...)
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:160]
        raise DataError(name, f"corrupt or not a {what} ({first})", hint) from None
    if not isinstance(ckpt, dict):
        raise DataError(name, f"not a {what} (it holds a {type(ckpt).__name__}, not a dict)", hint)
    return ckpt
