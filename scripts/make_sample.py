"""Build the embedded sample (``dstray/sample/magnetic-tile``) from the full Magnetic Tile split.

    python scripts/make_sample.py --src /work/shared/data/magnetic-tile --out dstray/sample/magnetic-tile

Keeps every reference, the first 32 backgrounds, 2 test images per defect type plus 4
defect-free test images, and 1 train image per defect type: the first N by sorted
image path within each (type, split) group, no reshuffling. Files are copied byte for
byte (no re-encoding); ``splits.csv`` keeps the source format and row order.
"""

from __future__ import annotations

import argparse
import csv
import shutil
from collections import defaultdict
from pathlib import Path

FREE = "free"
BACKGROUNDS = 32
TEST_PER_TYPE = 2
TEST_FREE = 4
TRAIN_PER_TYPE = 1

README = """\
# Embedded sample: Magnetic Tile (subset)

A small subset of the Magnetic Tile surface defect dataset, copied byte for byte from
the dstray split of it (`scripts/make_sample.py`; same `splits.csv` format). It lets
`load_dataset()` (no path), the tests and the demos run without downloading anything.

| split      | rows |
|------------|------|
{table}

Grayscale JPEG images, PNG masks (0 = background, 255 = defect; binarised at 128).

Source and citation: Huang, Qiu, Yuan, "Surface defect saliency of magnetic tile",
The Visual Computer, 2020. The authors welcome the dataset's use and ask that this
paper be cited.
"""


def quota(defect_type: str, split: str) -> int | None:
    """How many rows of a (type, split) group to keep; None = all."""
    if split == "reference":
        return None
    if split == "background":
        return BACKGROUNDS
    if split == "test":
        return TEST_FREE if defect_type == FREE else TEST_PER_TYPE
    if split == "train":
        return TRAIN_PER_TYPE
    return 0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--src", type=Path, required=True, help="folder of the full dataset (with splits.csv)")
    parser.add_argument("--out", type=Path, required=True, help="output folder (replaced)")
    args = parser.parse_args()

    with open(args.src / "splits.csv", newline="") as f:
        reader = csv.DictReader(f)
        header, rows = reader.fieldnames, list(reader)

    groups = defaultdict(list)
    for row in rows:
        groups[row["defect_type"], row["split"]].append(row["image"])
    keep = set()
    for (defect_type, split), images in groups.items():
        keep.update(sorted(images)[: quota(defect_type, split)])
    kept = [row for row in rows if row["image"] in keep]

    if args.out.exists():
        shutil.rmtree(args.out)
    for row in kept:
        for rel in (row["image"], row["mask"]):
            if rel:
                (args.out / rel).parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(args.src / rel, args.out / rel)
    with open(args.out / "splits.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=header, lineterminator="\n")
        writer.writeheader()
        writer.writerows(kept)

    counts = defaultdict(int)
    for row in kept:
        counts[row["split"]] += 1
    table = "\n".join(f"| {split:<10} | {n:>4} |" for split, n in counts.items())
    (args.out / "README.md").write_text(README.format(table=table))
    print(f"{len(kept)} rows -> {args.out}: " + ", ".join(f"{s} {n}" for s, n in counts.items()))


if __name__ == "__main__":
    main()
