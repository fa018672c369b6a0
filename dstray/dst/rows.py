"""A generated dataset on disk: the Parquet schema of its rows and rejects, shard files, markers, manifest.

One row per sample (:data:`SCHEMA`, documented in docs/design.md and docs/data-and-bad-input.md); a
dataset written before a column existed lacks it: readers take ``area_family`` as ``reference``
(:func:`area_family_of`). A shard is
``data/part-XXXXX.parquet`` (+ ``rejects/part-XXXXX.parquet``) and its marker
``_shards/XXXXX.json``, written last. A shard's bytes depend on its rows only.
"""

from __future__ import annotations

import io
import json

import pyarrow as pa
import pyarrow.parquet as pq
import torch
from torch import Tensor

from dstray import __version__, storage
from dstray.config import GenerateConfig, to_dict
from dstray.data import encode_png

SCHEMA = pa.schema([
    ("sample_id", pa.string()),
    ("index", pa.int64()),
    ("defect_type", pa.string()),
    ("image", pa.binary()),
    ("mask", pa.binary()),
    ("height", pa.int32()),
    ("width", pa.int32()),
    ("background_id", pa.string()),
    ("reference_id", pa.string()),
    ("generator", pa.string()),
    ("model_digest", pa.string()),
    ("seed", pa.int64()),
    ("bbox", pa.list_(pa.int32())),
    ("area_px", pa.int64()),
    ("dstray_version", pa.string()),
    ("area_family", pa.string()),  # where L came from: reference | procedural | drawn (comma-separated per area)
])
AREA_FAMILY = "area_family"
AREA_FAMILY_BEFORE = "reference"  # the family of every row of a dataset written before the column existed
CLASS_MASK = "class_mask"  # column of multi-defect datasets: PNG, 8-bit L, 0 = background, k = classes[k - 1]


def multi_schema(classes: list[str]) -> pa.Schema:
    """:data:`SCHEMA` plus ``class_mask``, with the class names (value k = ``classes[k - 1]``) in its metadata."""
    return SCHEMA.append(pa.field(CLASS_MASK, pa.binary())).with_metadata({"dstray.classes": json.dumps(classes)})


REJECT_SCHEMA = pa.schema([
    ("sample_id", pa.string()),
    ("index", pa.int64()),
    ("defect_type", pa.string()),
    ("background_id", pa.string()),
    ("reason", pa.string()),
])



def area_family_of(row: dict) -> str:
    """A row's ``area_family``; ``reference`` for a row of a dataset written before the column existed."""
    return row.get(AREA_FAMILY) or AREA_FAMILY_BEFORE


def sample_row(p: dict, image: Tensor, area: Tensor, generator: str, model_digest: str,
               area_family: str = "reference") -> dict:
    """The Parquet row (:data:`SCHEMA`) of plan row ``p``, its image (C,H,W), its area L (1,H,W) and the family
    L came from (``reference`` | ``procedural`` | ``drawn``)."""
    ys, xs = torch.nonzero(area[0], as_tuple=True)
    return {
        "sample_id": p["sample_id"], "index": p["index"], "defect_type": p["defect_type"],
        "image": encode_png(image), "mask": encode_png(area),
        "height": image.shape[1], "width": image.shape[2],
        "background_id": p["background_id"], "reference_id": p["reference_id"],
        "generator": generator, "model_digest": model_digest,
        "seed": p["seed"],
        "bbox": [int(ys.min()), int(xs.min()), int(ys.max()) + 1, int(xs.max()) + 1],
        "area_px": int(area.sum()), "dstray_version": __version__, AREA_FAMILY: area_family,
    }


def multi_row(p: dict, image: Tensor, areas: list, classes: list[str], generator: str, digests: dict) -> dict:
    """The row (:func:`multi_schema`) of a sample with several areas ``[(type, L, _, family), ...]``: ``mask`` is
    their union, ``class_mask`` holds each area's class (1 + its type's index in ``classes``); ``defect_type``,
    ``reference_id``, ``model_digest`` and ``area_family`` list the areas' values, comma-separated, in the
    areas' order."""
    union = torch.zeros_like(areas[0][1])
    classes_px = torch.zeros_like(areas[0][1])
    for t, area, *_ in areas:
        union = torch.maximum(union, area)
        classes_px[area > 0.5] = classes.index(t) + 1
    types = [t for t, *_ in areas]
    families = ",".join(a[3] if len(a) > 3 else AREA_FAMILY_BEFORE for a in areas)
    row = sample_row(p, image, union, generator, ",".join(digests.get(t, "") for t in types), families)
    refs = p.get("reference_ids") or [p["reference_id"]]
    return row | {"defect_type": ",".join(types), "reference_id": ",".join(refs),
                  CLASS_MASK: encode_png(classes_px.to(torch.uint8))}


def write_shard_files(out: str, shard: int, rows: list[dict], rejects: list[dict], fingerprint: str,
                      classes: list[str] | None = None) -> None:
    """Shard ``shard``'s files under ``out``: its rows, its rejects (if any), then its marker.

    ``classes``: a multi-defect dataset's class names (:func:`multi_schema`); None: :data:`SCHEMA`.
    """
    name = f"part-{shard:05d}.parquet"
    schema = multi_schema(classes) if classes else SCHEMA
    storage.write_bytes(storage.join(out, "data", name), parquet_bytes(pa.Table.from_pylist(rows, schema)))
    if rejects:
        storage.write_bytes(storage.join(out, "rejects", name),
                            parquet_bytes(pa.Table.from_pylist(rejects, REJECT_SCHEMA)))
    marker = {"shard": shard, "written": len(rows), "rejected": len(rejects), "fingerprint": fingerprint}
    storage.write_bytes(storage.join(out, "_shards", f"{shard:05d}.json"), json.dumps(marker).encode())


def parquet_bytes(table: pa.Table) -> bytes:
    """``table`` as the bytes of one Parquet file (a shard's file depends on its rows only)."""
    sink = io.BytesIO()
    pq.write_table(table, sink)
    return sink.getvalue()


def check_output(cfg: GenerateConfig, fingerprint: str, classes: list[str] | None = None) -> None:
    """Refuse an output folder that holds another generated dataset; record this one's manifest.

    ``classes``: the dataset's defect types in class order (``class_mask`` value k = ``classes[k - 1]``).
    """
    manifest = storage.join(cfg.out, "manifest.json")
    if storage.exists(manifest):
        old = json.loads(storage.read_bytes(manifest))
        if old.get("fingerprint") != fingerprint:
            raise ValueError(f"{cfg.out} already holds a different generated dataset "
                             f"(fingerprint {old.get('fingerprint')} != {fingerprint}: other data, models, "
                             "seed, generator or settings). Choose another --out or delete that folder.")
    record = {"fingerprint": fingerprint, "config": to_dict(cfg), "dstray_version": __version__}
    storage.write_bytes(manifest, json.dumps(record | ({"classes": classes} if classes else {}), indent=2).encode())


def summarize(out: str) -> dict:
    """Counts from the shard markers of a generated dataset."""
    markers = [json.loads(storage.read_bytes(storage.join(out, "_shards", n)))
               for n in storage.list_names(storage.join(out, "_shards"))]
    written = sum(m["written"] for m in markers)
    rejected = sum(m["rejected"] for m in markers)
    return {"out": out, "written": written, "rejected": rejected, "shards": len(markers)}
