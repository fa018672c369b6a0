"""Dataset layouts: what images there are, their masks, defect types and splits.

:func:`load_dataset` reads one of three layouts into a :class:`DefectDataset`. It only
lists files (fast); checking the files themselves is :func:`dstray.data.validate`.

1. ``manifest``: a CSV with columns ``image,mask,defect_type,split`` (paths relative to
   the CSV's folder; ``mask`` may be empty for defect-free rows). Give the folder that
   holds ``splits.csv`` or the path of any CSV of that format.
2. ``folders``: ``ROOT/images/<type>/name.ext`` with masks ``ROOT/masks/<type>/name.png``
   (matched by file stem; ``name_mask.png`` is accepted too). Flat ``ROOT/images/*.ext`` +
   ``ROOT/masks/*.png`` also works: one defect type, named after ROOT's folder. Defect-free
   images go in a folder named ``backgrounds``, ``background``, ``free``, ``good`` or ``ok``
   (any case) at any level: next to ``images/`` (``ROOT/backgrounds/``), as a type folder
   (``images/good/``) or deeper (``images/crack/ok/``). There is no split file: every defect
   image becomes split ``reference`` (each is a candidate for the one real defect DST learns
   from, and every reference mask of a type is a shape L is drawn from) and every defect-free
   image split ``background``.
3. ``images``: a folder (searched recursively) of defect-free images and no masks:
   all of them split ``background``, type ``free``.

Type and split names are lower-cased; ``good`` / ``ok`` are read as ``free``. A sample's
id is its image path relative to the dataset root, '/'-separated: stable across runs.
Split names are :data:`SPLITS` only; :func:`dstray.data.validate` reports any other
(``backgroud``, ``validation``) with its manifest lines, and no job starts on such a dataset.

**The reference of a type.** DST learns from one reference H, M: ``--reference-id ID`` or,
by default, the type's first reference in dataset order (:meth:`DefectDataset.references`:
manifest row order; folder layouts list files sorted by path, i.e. by id). ``fit-dst``
fits on it, ``generate --generator dst`` uses the model's own, ``histmatch`` / ``copy``
use the first; the area sampler draws L from the masks of *every* reference of the type.

**The ``val`` split.** Thresholds, checkpoints, Tune trials and DST settings are chosen on
``val``; figures are reported on ``test``, which selection never sees. A dataset that has
a ``test`` split but no ``val`` split gets one carved out of ``test`` once, the same way on
every load (:func:`carve_val`): per defect type (``free`` included), the
``round(VAL_FRACTION * n)`` test samples whose ids have the smallest
``sha256("dstray-val:{VAL_SEED}:{id}")`` become ``val``. No other split is touched, so the
fixed splits of a dataset are never reshuffled. A dataset with its own ``val`` rows keeps them.
"""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import os
from dataclasses import dataclass, field
from pathlib import Path

from dstray.data.errors import DataError
from dstray.data.io import IMAGE_EXTENSIONS

FREE = "free"  # the defect type of defect-free images
FREE_NAMES = ("free", "good", "ok")  # type names read as defect-free (case-insensitive)
BACKGROUND_FOLDERS = (*FREE_NAMES, "background", "backgrounds")  # folders of defect-free images, at any level
MANIFEST_NAME = "splits.csv"
MANIFEST_COLUMNS = ("image", "mask", "defect_type", "split")
SPLITS = ("reference", "background", "train", "val", "test")  # the known split names, in report order
SPLIT_ORDER = SPLITS  # (former name)
VAL_FRACTION = 1 / 3  # share of each type's test samples carved into ``val`` when a dataset has no val split
VAL_SEED = 0  # seed of that carve (part of the hash that orders the samples)
LAYOUTS_HINT = (
    "give a folder with splits.csv, a CSV manifest (image,mask,defect_type,split), "
    "a folder with images/ and masks/ subfolders, or a folder of defect-free images"
)


@dataclass(frozen=True)
class Sample:
    """One image of a dataset."""

    id: str  # stable id: image path relative to the dataset root, '/'-separated
    image: Path  # absolute path
    mask: Path | None  # absolute path, None for defect-free images without mask
    defect_type: str  # lower-case type name, "free" for defect-free
    split: str  # "reference" | "background" | "train" | "val" | "test" (validate reports any other name)
    line: int | None = field(default=None, compare=False)  # manifest line of the row (None for folder layouts)


@dataclass
class DefectDataset:
    """The samples of a dataset with their types and splits made explicit."""

    root: Path  # dataset folder (the manifest's folder)
    samples: list[Sample]
    layout: str  # "manifest" | "folders" | "images"
    defect_types: list[str]  # sorted, without "free"
    source: Path | None = None  # the manifest CSV (layout "manifest"), else None

    def __len__(self) -> int:
        return len(self.samples)

    @property
    def splits(self) -> list[str]:
        """Split names present, the usual ones first (reference, background, train, test)."""
        names = {s.split for s in self.samples}
        return [n for n in SPLIT_ORDER if n in names] + sorted(names - set(SPLIT_ORDER))

    def split(self, name: str) -> list[Sample]:
        """The samples of split ``name``; DataError if the dataset has no such split."""
        if name not in self.splits:
            raise DataError(self.root, f"no split '{name}' in this dataset", f"splits: {', '.join(self.splits)}")
        return [s for s in self.samples if s.split == name]

    def references(self, defect_type: str | None = None) -> list[Sample]:
        """The reference samples (H, M of the paper), all or of one defect type, in dataset order.

        The first of a type is the one DST learns from unless ``--reference-id`` names another.
        DataError if ``defect_type`` is not a type of the dataset or has no reference.
        """
        if defect_type is None:
            return [s for s in self.samples if s.split == "reference"]
        if defect_type not in self.defect_types:
            known = ", ".join(self.defect_types) or "none"
            raise DataError(self.root, f"unknown defect type '{defect_type}'", f"known defect types: {known}")
        refs = [s for s in self.samples if s.split == "reference" and s.defect_type == defect_type]
        if not refs:
            raise DataError(
                self.root,
                f"defect type '{defect_type}' has no reference sample",
                "mark one of its images with split 'reference' (DST learns from it)",
            )
        return refs

    def backgrounds(self) -> list[Sample]:
        """The defect-free images to synthesize defects on (split "background", S of the paper)."""
        return [s for s in self.samples if s.split == "background"]

    def get(self, sample_id: str) -> Sample:
        """The sample with id ``sample_id``."""
        for s in self.samples:
            if s.id == sample_id:
                return s
        raise DataError(self.root, f"no sample with id '{sample_id}'", "ids are image paths relative to the root")

    def without(self, ids) -> DefectDataset:
        """The same dataset without the samples whose id is in ``ids`` (e.g. backgrounds a job skips)."""
        ids = set(ids)
        if not ids:
            return self
        return dataclasses.replace(self, samples=[s for s in self.samples if s.id not in ids])


def sample_root() -> Path:
    """Folder of the embedded sample (a small subset of Magnetic Tile, with its splits.csv)."""
    return Path(__file__).resolve().parent.parent / "sample" / "magnetic-tile"


def load_dataset(path: str | Path | None = None) -> DefectDataset:
    """List a dataset (layout detected, see the module docstring); None = the embedded sample.

    Raises DataError only for structural problems (no such path, missing manifest
    columns, no images); problems of the files themselves are found by ``validate``.
    """
    p = Path(path).expanduser() if path is not None else sample_root()
    p = Path(os.path.abspath(p))
    if not p.exists():
        raise DataError(p, "no such file or folder", LAYOUTS_HINT)
    if p.is_file():
        if p.suffix.lower() != ".csv":
            raise DataError(p, "not a CSV manifest", LAYOUTS_HINT)
        return _load_manifest(p)
    if (p / MANIFEST_NAME).is_file():
        return _load_manifest(p / MANIFEST_NAME)
    if (p / "images").is_dir() and ((p / "masks").is_dir() or _background_folders(p)):
        return _load_folders(p)
    return _load_images(p)


def _background_folders(root: Path) -> list[Path]:
    """Sub-folders of ``root`` named like a folder of defect-free images (``backgrounds``, ``good``...)."""
    return sorted(d for d in root.iterdir() if d.is_dir() and d.name.lower() in BACKGROUND_FOLDERS)


def _type_name(name: str) -> str:
    name = name.strip().lower()
    return FREE if name in FREE_NAMES else name


def carve_val(samples: list[Sample], fraction: float = VAL_FRACTION, seed: int = VAL_SEED) -> list[Sample]:
    """``samples`` with part of the ``test`` split moved to ``val`` (see the module docstring).

    Unchanged when a sample is already in ``val`` or none is in ``test``. Stratified by
    defect type; deterministic (a hash of ``seed`` and the sample id orders each type).
    """
    if any(s.split == "val" for s in samples) or not any(s.split == "test" for s in samples):
        return samples
    by_type: dict[str, list[Sample]] = {}
    for s in samples:
        if s.split == "test":
            by_type.setdefault(s.defect_type, []).append(s)
    to_val: set[str] = set()
    for group in by_type.values():
        group = sorted(group, key=lambda s: hashlib.sha256(f"dstray-val:{seed}:{s.id}".encode()).hexdigest())
        to_val.update(s.id for s in group[: round(fraction * len(group))])
    return [dataclasses.replace(s, split="val") if s.split == "test" and s.id in to_val else s for s in samples]


def _dataset(root: Path, samples: list[Sample], layout: str, source: Path | None = None) -> DefectDataset:
    samples = carve_val(samples)
    types = sorted({s.defect_type for s in samples} - {FREE})
    return DefectDataset(root=root, samples=samples, layout=layout, defect_types=types, source=source)


def _rel_id(path: Path, root: Path) -> str:
    return Path(os.path.relpath(path, root)).as_posix()


def _load_manifest(csv_path: Path) -> DefectDataset:
    root = csv_path.parent

    def resolve(rel: str) -> Path:  # manifest paths: relative to its folder, '/' or '\' separated
        return Path(os.path.normpath(root / rel.strip().replace("\\", "/")))

    with open(csv_path, newline="", encoding="utf-8-sig") as f:  # -sig: a BOM from Excel is ignored
        reader = csv.DictReader(f)
        header = [c.strip() for c in reader.fieldnames or []]
        missing = [c for c in MANIFEST_COLUMNS if c not in header]
        if missing:
            raise DataError(
                csv_path,
                f"manifest lacks column(s) {', '.join(missing)} (header: {','.join(header) or 'empty'})",
                f"its first line must name the columns {','.join(MANIFEST_COLUMNS)}",
            )
        reader.fieldnames = header
        samples = []
        for row in reader:
            empty = [c for c in ("image", "defect_type", "split") if not (row[c] or "").strip()]
            if empty:
                raise DataError(
                    csv_path,
                    f"line {reader.line_num}: empty {', '.join(empty)}",
                    "every row needs an image, a defect_type and a split (mask may be empty for defect-free rows)",
                )
            image = resolve(row["image"])
            mask = resolve(row["mask"]) if (row["mask"] or "").strip() else None
            defect_type, split = _type_name(row["defect_type"]), row["split"].strip().lower()
            samples.append(Sample(_rel_id(image, root), image, mask, defect_type, split, line=reader.line_num))
    if not samples:
        raise DataError(csv_path, "manifest has no rows", "add one row per image")
    return _dataset(root, samples, "manifest", source=csv_path)


def _image_files(folder: Path) -> list[Path]:
    """Image files under ``folder`` (recursive, sorted; hidden files and folders skipped)."""
    return sorted(
        f
        for f in folder.rglob("*")
        if f.suffix.lower() in IMAGE_EXTENSIONS
        and not any(part.startswith(".") for part in f.relative_to(folder).parts)
        and f.is_file()
    )


def _load_folders(root: Path) -> DefectDataset:
    images, masks = root / "images", root / "masks"
    files = _image_files(images)
    if not files:
        raise DataError(
            images, "no image files", f"expected images/<type>/name.ext with ext in {' '.join(IMAGE_EXTENSIONS)}"
        )
    by_stem: dict[tuple[str, str], Path] = {}  # (folder relative to masks/, stem) -> mask file
    for m in reversed(_image_files(masks) if masks.is_dir() else []):  # reversed: the first in sorted order wins
        by_stem[(m.parent.relative_to(masks).as_posix(), m.stem)] = m
        if m.stem.endswith("_mask"):
            by_stem[(m.parent.relative_to(masks).as_posix(), m.stem[: -len("_mask")])] = m
    samples = []
    for f in files:
        rel = f.relative_to(images)
        mask = by_stem.get((rel.parent.as_posix(), f.stem))
        if any(part.lower() in BACKGROUND_FOLDERS for part in rel.parts[:-1]):  # images/good/, images/crack/ok/
            samples.append(Sample(_rel_id(f, root), f, mask, FREE, "background"))
            continue
        defect_type = _type_name(rel.parts[0] if len(rel.parts) > 1 else root.name)
        samples.append(Sample(_rel_id(f, root), f, mask, defect_type, "reference"))
    for folder in _background_folders(root):  # ROOT/backgrounds/ next to images/
        samples += [Sample(_rel_id(f, root), f, None, FREE, "background") for f in _image_files(folder)]
    return _dataset(root, samples, "folders")


def _load_images(root: Path) -> DefectDataset:
    files = _image_files(root)
    if not files:
        raise DataError(root, f"no image files found (extensions: {' '.join(IMAGE_EXTENSIONS)})", LAYOUTS_HINT)
    samples = [Sample(_rel_id(f, root), f, None, FREE, "background") for f in files]
    return _dataset(root, samples, "images")
