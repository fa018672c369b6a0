"""A generated dataset on disk: the Parquet schema of its rows and rejects, shard files, markers, manifest.

One row per sample (:data:`SCHEMA`, documented in docs/design.md and the README); a shard is
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
])
REJECT_SCHEMA = pa.schema([
    ("sample_id", pa.string()),
    ("index", pa.int64()),
    ("defect_type", pa.string()),
    ("background_id", pa.string()),
    ("reason", pa.string()),
])



def sample_row(p: dict, image: Tensor, area: Tensor, generator: str, model_digest: str) -> dict:
    """The Parquet row (:data:`SCHEMA`) of plan row ``p``, its image (C,H,W) and its area L (1,H,W)."""
    ys, xs = torch.nonzero(area[0], as_tuple=True)
    return {
        "sample_id": p["sample_id"], "index": p["index"], "defect_type": p["defect_type"],
        "image": encode_png(image), "mask": encode_png(area),
        "height": image.shape[1], "width": image.shape[2],
        "background_id": p["background_id"], "reference_id": p["reference_id"],
        "generator": generator, "model_digest": model_digest,
        "seed": p["seed"],
        "bbox": [int(ys.min()), int(xs.min()), int(ys.max()) + 1, int(xs.max()) + 1],
        "area_px": int(area.sum()), "dstray_version": __version__,
    }


def write_shard_files(out: str, shard: int, rows: list[dict], rejects: list[dict], fingerprint: str) -> None:
    """Shard ``shard``'s files under ``out``: its rows, its rejects (if any), then its marker."""
    name = f"part-{shard:05d}.parquet"
    storage.write_bytes(storage.join(out, "data", name), parquet_bytes(pa.Table.from_pylist(rows, SCHEMA)))
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


def check_output(cfg: GenerateConfig, fingerprint: str) -> None:
    """Refuse an output folder that holds another generated dataset; record this one's manifest."""
    manifest = storage.join(cfg.out, "manifest.json")
    if storage.exists(manifest):
        old = json.loads(storage.read_bytes(manifest))
        if old.get("fingerprint") != fingerprint:
            raise ValueError(f"{cfg.out} already holds a different generated dataset "
                             f"(fingerprint {old.get('fingerprint')} != {fingerprint}: other data, models, "
                             "seed, generator or settings). Choose another --out or delete that folder.")
    storage.write_bytes(manifest, json.dumps({"fingerprint": fingerprint, "config": to_dict(cfg),
                                              "dstray_version": __version__}, indent=2).encode())


def summarize(out: str) -> dict:
    """Counts from the shard markers of a generated dataset."""
    markers = [json.loads(storage.read_bytes(storage.join(out, "_shards", n)))
               for n in storage.list_names(storage.join(out, "_shards"))]
    written = sum(m["written"] for m in markers)
    rejected = sum(m["rejected"] for m in markers)
    return {"out": out, "written": written, "rejected": rejected, "shards": len(markers)}
