"""``dstray export``: a generated Parquet dataset as PNG files, in a plain folder or in the MVTec AD layout.

Parquet suits Ray and pandas; a team that trains with its own code (anomalib, smp, detectron2) wants
files. Every row of ``GEN/data/`` becomes exactly one image, one mask (8-bit, 0 / 255) and one class
mask (8-bit, 0 = background, k = the k-th name of ``classes.txt``), listed in a manifest CSV.

``format="folder"``::

    OUT/images/<sample_id>.png  OUT/masks/<sample_id>.png  OUT/class_masks/<sample_id>.png
    OUT/manifest.csv  (image,mask,defect_type,split,class_mask,sample_id,background_id,seed,generator,area_family;
                       split "train", so ``--data OUT/manifest.csv`` reads it as a dstray dataset)
    OUT/classes.txt   (line k = class k; line 0 is "background")

``format="mvtec"`` (what anomalib's MVTec AD and Folder data modules read)::

    OUT/<category>/test/<type>/NNN.png            one folder per defect type; "combined" for a
    OUT/<category>/ground_truth/<type>/NNN_mask.png   sample with several types (as MVTec AD does)
    OUT/<category>/class_masks/<type>/NNN.png
    OUT/<category>/train/good/                    the run's backgrounds, copied (when its --data is readable)
    OUT/<category>/manifest.csv, classes.txt

NNN numbers a type's rows in ``index`` order (3 digits, more when needed). Class names come from
the dataset's ``manifest.json`` (``classes``: every defect type with a reference, sorted); a dataset
written before it had them uses its rows' types, sorted.
"""

from __future__ import annotations

import csv
import io
import json
import shutil
from collections import Counter
from pathlib import Path

FORMATS = ("folder", "mvtec")
COMBINED = "combined"  # MVTec AD's folder name for images with several defect types
MANIFEST_COLUMNS = ("image", "mask", "defect_type", "split", "class_mask", "sample_id", "background_id", "seed",
                    "generator", "area_family")


def read_rows(generated: str, columns: list[str] | None = None) -> list[dict]:
    """The rows of a generated dataset (an output folder of ``dstray generate``, its ``data/`` or a Parquet file),
    in ``index`` order."""
    import pyarrow.parquet as pq

    from dstray import storage

    location = storage.generated_parquet([generated])[0]
    files = ([storage.join(location, n) for n in storage.list_names(location) if n.endswith(".parquet")]
             if not location.endswith(".parquet") else [location])
    rows = []
    for f in files:
        table = pq.read_table(io.BytesIO(storage.read_bytes(f)))
        names = [c for c in (columns or table.column_names) if c in table.column_names]
        rows += table.select(names).to_pylist()
    return sorted(rows, key=lambda r: r["index"]) if rows and "index" in rows[0] else rows


def classes_of(generated: str, rows: list[dict]) -> list[str]:
    """The class names of a generated dataset (class k = names[k - 1]): its manifest's, else its rows' types."""
    from dstray import storage

    manifest = storage.join(generated, "manifest.json")
    if storage.exists(manifest):
        names = json.loads(storage.read_bytes(manifest)).get("classes")
        if names:
            return list(names)
    return sorted({t for r in rows for t in r["defect_type"].split(",")})


def export(generated: str, out: str | Path, *, format: str = "folder", category: str = "generated",
           backgrounds: bool = True) -> dict:
    """Write the rows of ``generated`` as PNG files under ``out`` (see the module docstring).

    ``backgrounds`` (mvtec): copy the run's backgrounds to ``train/good/``. Returns the counts
    ``{"rows", "images", "masks", "class_masks", "train_good", "per_type", "out"}``; ``rows`` equals
    each file count. ValueError for an unknown format or an ``out`` that is a non-empty folder.
    """
    if format not in FORMATS:
        raise ValueError(f"--format must be one of {', '.join(FORMATS)}; got {format!r}")
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ValueError(f"{out}: exists and is not an empty folder; export into a new folder (--out)")
    rows = read_rows(generated)
    if not rows:
        raise ValueError(f"{generated}: no generated rows to export (see its rejects/ and summary.json)")
    classes = classes_of(generated, rows)
    root = out / category if format == "mvtec" else out
    listed, per_type = [], {}
    totals = Counter(_kind(r) for r in rows)
    for r in rows:  # the files of each row; mvtec numbers them per defect folder, in index order
        kind = _kind(r)
        per_type.setdefault(kind, []).append(r)
        if format == "folder":
            rel = {k: f"{k}/{r['sample_id']}.png" for k in ("images", "masks", "class_masks")}
        else:
            n = len(per_type[kind]) - 1
            name = f"{n:0{max(3, len(str(totals[kind] - 1)))}d}"
            rel = {"images": f"test/{kind}/{name}.png", "masks": f"ground_truth/{kind}/{name}_mask.png",
                   "class_masks": f"class_masks/{kind}/{name}.png"}
        _write(root, rel, r["image"], r["mask"], _class_mask(r, classes))
        listed.append(_listing(r, rel, "train" if format == "folder" else "test"))
    train_good = _copy_backgrounds(generated, rows, root / "train" / "good") if format == "mvtec" and backgrounds else 0
    with open(root / "manifest.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=MANIFEST_COLUMNS)
        w.writeheader()
        w.writerows(listed)
    (root / "classes.txt").write_text("\n".join(["background", *classes]) + "\n")
    folders = (("images", "masks", "class_masks") if format == "folder" else ("test", "ground_truth", "class_masks"))
    counts = dict(zip(("images", "masks", "class_masks"),
                      (sum(1 for _ in (root / d).rglob("*.png")) for d in folders)))
    if any(n != len(rows) for n in counts.values()):
        raise RuntimeError(f"{out}: wrote {counts} files for {len(rows)} rows")
    return {"rows": len(rows), **counts, "train_good": train_good, "out": str(root),
            "per_type": {k: len(v) for k, v in per_type.items()}, "classes": classes}


def _kind(r: dict) -> str:
    """A row's defect folder: its type, or ``combined`` when it has several."""
    return COMBINED if "," in r["defect_type"] else r["defect_type"]


def _class_mask(r: dict, classes: list[str]) -> bytes:
    """A row's class mask PNG: its own (multi-defect rows), else its mask valued with its type's class."""
    if r.get("class_mask") is not None:
        return r["class_mask"]
    import torch

    from dstray.data import decode_png, encode_png

    mask = decode_png(r["mask"])[:1] > 0.5
    return encode_png(mask.to(torch.uint8) * (classes.index(r["defect_type"]) + 1))


def _write(root: Path, rel: dict, image: bytes, mask: bytes, class_mask: bytes) -> None:
    for key, blob in (("images", image), ("masks", mask), ("class_masks", class_mask)):
        path = root / rel[key]
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(blob)  # the row's own PNG bytes: nothing re-encoded


def _listing(r: dict, rel: dict, split: str) -> dict:
    from dstray.dst.rows import area_family_of  # "reference" for rows written before the column existed

    return {"image": rel["images"], "mask": rel["masks"], "defect_type": r["defect_type"], "split": split,
            "class_mask": rel["class_masks"], "sample_id": r["sample_id"], "background_id": r["background_id"],
            "seed": r["seed"], "generator": r["generator"], "area_family": area_family_of(r)}


def _copy_backgrounds(generated: str, rows: list[dict], folder: Path) -> int:
    """The backgrounds the rows were made on, copied into ``folder`` (MVTec's train/good); 0 when the run's
    ``--data`` cannot be listed any more."""
    from dstray import storage
    from dstray.data import DataError, load_dataset

    try:
        config = json.loads(storage.read_bytes(storage.join(generated, "manifest.json")))["config"]
        dataset = load_dataset(config.get("data"))
    except (OSError, KeyError, ValueError, DataError):
        return 0
    folder.mkdir(parents=True, exist_ok=True)
    used = sorted({r["background_id"] for r in rows})
    for n, sample_id in enumerate(used):
        src = dataset.get(sample_id).image
        shutil.copyfile(src, folder / f"{n:03d}{src.suffix.lower()}")
    return len(used)
