"""The MVTec AD layout (the one anomalib reads), listed as dstray samples; and what a partial one lacks.

::

    CATEGORY/train/good/*.png                    defect-free: split ``background`` (S of the paper)
    CATEGORY/test/good/*.png                     defect-free test images: ``test`` (a third carved into ``val``)
    CATEGORY/test/<defect>/NNN.png               defects: K per type ``reference``, the rest ``test`` / ``val``
    CATEGORY/ground_truth/<defect>/NNN_mask.png  their masks (``NNN.png`` is accepted too)

Which K images of a type become ``reference`` (the real defects DST learns from, and whose masks
the areas L are drawn from): ``order="draw"`` (default) takes the K whose ids come first under a
seeded hash (:func:`dstray.seeds.derive_seed` of :data:`REFERENCE_SEED`, ``"reference"`` and the
id: the same on every load, machine and run); ``order="name"`` takes the first K by file name.
The rest of the type is ``test``; the dataset's usual carve then moves a seeded third of each
type's ``test`` images (``good`` included) to ``val`` (:func:`dstray.data.dataset.carve_val`).
"""

from __future__ import annotations

from pathlib import Path

from dstray.data.errors import DataError
from dstray.seeds import derive_seed

REFERENCE_SEED = 0  # seed of the draw of the reference images of an MVTec AD category
REFERENCE_ORDERS = ("draw", "name")  # how the K references of a type are chosen
GOOD = "good"


def is_mvtec(root: Path) -> bool:
    """Whether ``root`` has the MVTec AD folders (``train/good/`` or ``test/``, no ``images/``); check
    :func:`partial_mvtec` first, which names what a partial one lacks."""
    return not (root / "images").is_dir() and ((root / "train" / GOOD).is_dir() or (root / "test").is_dir())


def partial_mvtec(root: Path) -> str | None:
    """What makes ``root`` look like the MVTec AD layout only in part, or None."""
    names = {d.name.lower(): d for d in _dirs(root)}
    has = {k: k in names for k in ("train", "test", "ground_truth", "images", "masks")}
    if has["ground_truth"] and has["images"]:
        return ("ground_truth/ beside images/: neither the MVTec AD layout (train/good, test/<defect>, "
                "ground_truth/<defect>) nor images/ + masks/")
    if has["ground_truth"] and not has["test"]:
        return "ground_truth/ without test/: the MVTec AD layout keeps the defect images in test/<defect>/"
    if has["test"] and not has["ground_truth"]:
        defects = [d.name for d in _dirs(names["test"]) if d.name.lower() != GOOD]
        if defects:
            return (f"test/{defects[0]}/ without ground_truth/: the masks of test/<defect>/NNN.png go in "
                    "ground_truth/<defect>/NNN_mask.png")
    if has["train"] and not (names["train"] / GOOD).is_dir() and not has["images"]:
        return "train/ without train/good/: the MVTec AD layout keeps the defect-free training images in train/good/"
    if has["train"] and (has["images"] or has["masks"]):
        return "train/ beside images/ or masks/: mixes the MVTec AD layout with images/ + masks/"
    categories = [d.name for d in _dirs(root) if (d / "train").is_dir() and (d / "test").is_dir()]
    if categories:
        return (f"a folder of {len(categories)} MVTec AD categories ({', '.join(categories[:4])}"
                f"{' ...' if len(categories) > 4 else ''}): give one category folder, e.g. {root / categories[0]}")
    return None


def mvtec_samples(root: Path, references_per_type: int, order: str, image_files, make) -> list:
    """The samples of an MVTec AD category (see the module docstring).

    ``image_files(folder)``: sorted image files under a folder; ``make(path, mask, type, split)``: a Sample.
    """
    if references_per_type < 1:
        raise DataError(root, f"--references-per-type must be at least 1; got {references_per_type}",
                        "DST needs one reference (a real defect with its mask) per type")
    if order not in REFERENCE_ORDERS:
        raise DataError(root, f"--reference-order must be one of {', '.join(REFERENCE_ORDERS)}; got {order!r}")
    samples = []
    train = root / "train"
    for d in _dirs(train):
        if d.name.lower() != GOOD:
            raise DataError(d, "a defect folder under train/ (the MVTec AD layout has train/good/ only)",
                            "move its images to test/<defect>/ with their masks in ground_truth/<defect>/")
    samples += [make(f, None, "free", "background") for f in image_files(train / GOOD)] if (train / GOOD).is_dir() else []
    test, truth = root / "test", root / "ground_truth"
    for d in _dirs(test):
        files = image_files(d)
        if d.name.lower() == GOOD:
            samples += [make(f, None, "free", "test") for f in files]
            continue
        masks = {}
        for m in reversed(image_files(truth / d.name)) if (truth / d.name).is_dir() else []:
            masks[m.stem[: -len("_mask")] if m.stem.endswith("_mask") else m.stem] = m
        rows = [make(f, masks.get(f.stem), d.name, "test") for f in files]
        if order == "draw":
            picked = sorted(rows, key=lambda s: derive_seed(REFERENCE_SEED, "reference", s.id))[:references_per_type]
        else:
            picked = rows[:references_per_type]
        chosen = {s.id for s in picked}
        samples += [_with_split(s, "reference") if s.id in chosen else s for s in rows]
    if not samples:
        raise DataError(root, "no image files in train/good/ or test/",
                        "the MVTec AD layout: CATEGORY/train/good/*.png, CATEGORY/test/<defect>/NNN.png, "
                        "CATEGORY/ground_truth/<defect>/NNN_mask.png")
    return samples


def _with_split(sample, split: str):
    import dataclasses

    return dataclasses.replace(sample, split=split)


def _dirs(folder: Path) -> list[Path]:
    return sorted(d for d in folder.iterdir() if d.is_dir() and not d.name.startswith(".")) if folder.is_dir() else []
