"""Data layer: dataset layouts, image/mask IO, validation, the embedded sample.

See ``docs/design.md`` (module ``data``) for the contract.
"""

from dstray.data.dataset import FREE, SPLITS, DefectDataset, Sample, load_dataset, sample_root
from dstray.data.errors import DataError, InputProblems, Problem
from dstray.data.io import (
    MASK_THRESHOLD,
    MAX_IMAGE_PIXELS,
    decode_png,
    encode_png,
    image_shape,
    read_checkpoint,
    read_image,
    read_mask,
    to_channels,
)
from dstray.data.report import format_report, inspect_main
from dstray.data.validate import Validation, preflight, validate

__all__ = [
    "FREE",
    "MASK_THRESHOLD",
    "MAX_IMAGE_PIXELS",
    "SPLITS",
    "DataError",
    "DefectDataset",
    "InputProblems",
    "Problem",
    "Sample",
    "Validation",
    "decode_png",
    "encode_png",
    "format_report",
    "image_shape",
    "inspect_main",
    "load_dataset",
    "preflight",
    "read_checkpoint",
    "read_image",
    "read_mask",
    "sample_root",
    "to_channels",
    "validate",
]
