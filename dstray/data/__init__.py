"""Data layer: dataset layouts, image/mask IO, validation, the embedded sample.

See ``docs/design.md`` (module ``data``) for the contract.
"""

from dstray.data.dataset import FREE, DefectDataset, Sample, load_dataset, sample_root
from dstray.data.errors import DataError, Problem
from dstray.data.io import MASK_THRESHOLD, decode_png, encode_png, image_shape, read_image, read_mask, to_channels
from dstray.data.report import format_report, inspect_main
from dstray.data.validate import validate

__all__ = [
    "FREE",
    "MASK_THRESHOLD",
    "DataError",
    "DefectDataset",
    "Problem",
    "Sample",
    "decode_png",
    "encode_png",
    "format_report",
    "image_shape",
    "inspect_main",
    "load_dataset",
    "read_image",
    "read_mask",
    "sample_root",
    "to_channels",
    "validate",
]
