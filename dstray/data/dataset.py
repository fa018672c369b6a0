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
LAYOUTS = (  # what --data accepts (README "Your data", docs/your-data.md)
    "a folder with splits.csv, or a CSV manifest (columns image,mask,defect_type,split[,roi])",
    "images/<type>/name.ext + masks/<type>/name.png, defect-free images in backgrounds/ (or good/, ok/, free/)",
    "the MVTec AD layout: CATEGORY/train/good/, CATEGORY/test/<defect>/NNN.png, "
    "CATEGORY/ground_truth/<defect>/NNN_mask.png",
    "a folder of defect-free images only (no masks, no label folders)",
)
LAYOUTS_HINT = "the layouts --data accepts: " + "; ".join(f"({i}) {t}" for i, t in enumerate(LAYOUTS, 1))
ROI_FOLDER = "roi"  # per-background regions of interest: ROOT/roi/<background name>.png (beside backgrounds/)
# names of folders and file-name endings that hold labels, never defect-free images
LABEL_FOLDERS = ("masks", "mask", "ground_truth", "groundtruth", "gt", "labels", "label", "annotations")
LABEL_SUFFIXES = ("_mask", "-mask", "_gt", "_label", "_labels")


@dataclass(frozen=True)
class Sample:
    """One image of a dataset."""

    id: str  # stable id: image path relative to the dataset root, '/'-separated
    image: Path  # absolute path
    mask: Path | None  # absolute path, None for defect-free images without mask
    defect_type: str  # lower-case type name, "free" for defect-free
    split: str  # "reference" | "background" | "train" | "val" | "test" (validate reports any other name)
    line: int | None = field(default=None, compare=False)  # manifest line of the row (None for folder layouts)
    roi: Path | None = field(default=None, compare=False)  # background: where a defect may go (mask), None = anywhere


@dataclass
class DefectDataset:
    """The samples of a dataset with their types and splits made explicit."""

    root: Path  # dataset folder (the manifest's folder)
    samples: list[Sample]
    layout: str  # "manifest" | "folders" | "mvtec" | "images"
    defect_types: list[str]  # sorted, without "free"
    source: Path | None = None  # the manifest CSV (layout "manifest"), else None
    options: dict = field(default_factory=dict)  # layout options used (mvtec: references_per_type, reference_order)

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


def load_dataset(path: str | Path | None = None, *, references_per_type: int | None = None,
                 reference_order: str | None = None) -> DefectDataset:
    """List a dataset (layout detected, see the module docstring); None = the embedded sample.

    ``references_per_type`` / ``reference_order``: the MVTec AD layout's K references per type and how
    they are chosen (``draw`` | ``name``; :mod:`dstray.data.mvtec`); they may also ride on the path,
    ``PATH?references-per-type=K&reference-order=name`` (:func:`split_spec`), so every job, Ray workers
    included, lists the same dataset from the one ``--data`` string.

    Raises DataError for structural problems (no such path, missing manifest columns, no images, a
    folder that matches no layout or one only in part: never guessed); problems of the files
    themselves are found by ``validate``.
    """
    p, options = split_spec(path)
    options = {**options, **{k: v for k, v in (("references_per_type", references_per_type),
                                                 ("reference_order", reference_order)) if v is not None}}
    p = Path(p).expanduser() if p is not None else sample_root()
    p = Path(os.path.abspath(p))
    if not p.exists():
        raise DataError(p, "no such file or folder", LAYOUTS_HINT)
    if p.is_file():
        if p.suffix.lower() != ".csv":
            raise DataError(p, "not a CSV manifest", LAYOUTS_HINT)
        ds = _load_manifest(p)
    elif (p / MANIFEST_NAME).is_file():
        ds = _load_manifest(p / MANIFEST_NAME)
    else:
        from dstray.data import mvtec

        partial = mvtec.partial_mvtec(p)
        if partial:
            raise DataError(p, f"matches no layout: {partial}", LAYOUTS_HINT)
        if mvtec.is_mvtec(p):
            k, order = int(options.get("references_per_type", 1)), options.get("reference_order", "draw")
            samples = mvtec.mvtec_samples(p, k, order, _image_files,
                                          lambda f, m, t, sp: Sample(_rel_id(f, p), f, m, _type_name(t), sp))
            return dataclasses.replace(_dataset(p, samples, "mvtec"),
                                       options={"references_per_type": k, "reference_order": order})
        if (p / "images").is_dir() and not (p / "masks").is_dir():
            types = [d.name for d in sorted((p / "images").iterdir())
                     if d.is_dir() and d.name.lower() not in BACKGROUND_FOLDERS and _image_files(d)]
            if types:
                raise DataError(p, f"matches no layout: images/{types[0]}/ holds defect images but there is no "
                                   "masks/ folder beside images/ for their labels", LAYOUTS_HINT)
        if (p / "images").is_dir() and ((p / "masks").is_dir() or _background_folders(p)):
            ds = _load_folders(p)
        else:
            ds = _load_images(p)
    if options:
        raise DataError(p, f"--references-per-type / --reference-order apply to the MVTec AD layout only; this "
                           f"folder has the '{ds.layout}' layout", "leave them out")
    return ds


SPEC_KEYS = {"references-per-type": "references_per_type", "reference-order": "reference_order"}


def split_spec(path: str | Path | None) -> tuple[str | Path | None, dict]:
    """``PATH?references-per-type=K&reference-order=name`` -> (PATH, options); a path without ``?`` as given.

    A ``?`` that is part of an existing file or folder's name is left alone.
    """
    if path is None or "?" not in str(path) or Path(str(path)).expanduser().exists():
        return path, {}
    base, _, query = str(path).partition("?")
    options = {}
    for item in filter(None, query.split("&")):
        key, _, value = item.partition("=")
        if key not in SPEC_KEYS or not value:
            raise DataError(base, f"unknown dataset option {item!r} after '?'",
                            f"options: {', '.join(k + '=...' for k in SPEC_KEYS)}")
        options[SPEC_KEYS[key]] = int(value) if key == "references-per-type" and value.isdigit() else value
    return base, options


def with_spec(path: str | None, references_per_type: int | None = None, reference_order: str | None = None) -> str:
    """``path`` with the MVTec AD options appended (``PATH?references-per-type=K...``); None = the embedded sample."""
    base, options = split_spec(path)
    options.update({k: v for k, v in (("references_per_type", references_per_type),
                                      ("reference_order", reference_order)) if v is not None})
    if not options:
        return path
    names = {v: k for k, v in SPEC_KEYS.items()}
    return f"{base if base is not None else sample_root()}?" + "&".join(f"{names[k]}={v}" for k, v in options.items())


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

    The hash is not :func:`dstray.seeds.derive_seed`, on purpose: ordering by ``derive_seed(seed, "val",
    id)`` would move 52 of the full Magnetic Tile dataset's 79 ``val`` images (checked), and every
    number measured on its ``val`` / ``test`` so far would stop being comparable.
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
            roi = resolve(row["roi"]) if (row.get("roi") or "").strip() else None  # optional column
            defect_type, split = _type_name(row["defect_type"]), row["split"].strip().lower()
            samples.append(Sample(_rel_id(image, root), image, mask, defect_type, split, line=reader.line_num,
                                  roi=roi))
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
    rois = _rois(root)
    for folder in _background_folders(root):  # ROOT/backgrounds/ next to images/
        files = _image_files(folder)
        _refuse_labels(root, files, folder)
        samples += [Sample(_rel_id(f, root), f, None, FREE, "background", roi=rois.get(f.stem)) for f in files]
    return _dataset(root, samples, "folders")


def _rois(root: Path) -> dict[str, Path]:
    """``ROOT/roi/<name>.png`` by background file stem (``<name>_roi.png`` accepted too)."""
    out = {}
    for f in reversed(_image_files(root / ROI_FOLDER)) if (root / ROI_FOLDER).is_dir() else []:
        out[f.stem[: -len("_roi")] if f.stem.endswith("_roi") else f.stem] = f
    return out


def _refuse_labels(root: Path, files: list[Path], folder: Path) -> None:
    """DataError when files meant to be defect-free images look like masks or sit in a label folder."""
    label = [f for f in files if f.stem.lower().endswith(LABEL_SUFFIXES)
             or any(part.lower() in LABEL_FOLDERS for part in f.relative_to(folder).parts[:-1])]
    if label:
        shown = ", ".join(_rel_id(f, root) for f in label[:3]) + (" ..." if len(label) > 3 else "")
        raise DataError(root, (f"matches no layout: {len(label)} of the {len(files)} files read as "
                               f"defect-free images look like masks or labels ({shown}); a defect-free image "
                               "has no mask, and masks go in masks/<type>/ beside images/<type>/"), LAYOUTS_HINT)


def _load_images(root: Path) -> DefectDataset:
    files = _image_files(root)
    if not files:
        raise DataError(root, f"no image files found (extensions: {' '.join(IMAGE_EXTENSIONS)})", LAYOUTS_HINT)
    rois = _rois(root)
    files = [f for f in files if ROI_FOLDER not in f.relative_to(root).parts[:1]]
    _refuse_labels(root, files, root)
    samples = [Sample(_rel_id(f, root), f, None, FREE, "background", roi=rois.get(f.stem)) for f in files]
    return _dataset(root, samples, "images")
