"""Issue 12, data layer: what `dstray inspect` and the jobs' pre-flight (one `validate`) say about bad input.

Cases of the issue: 1 mixed channels (warning), 2 unknown split (problem with its manifest line),
3 background smaller than the area (warning), 4 empty reference mask (problem for inspect and both
jobs), 8 size limit (warning, no Pillow warning), 9 flat own-data layout with backgrounds/.
"""

import csv
import shutil
import warnings
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from dstray.config import AreaConfig
from dstray.data import InputProblems, inspect_main, load_dataset, preflight, read_image, sample_root, validate
from dstray.data.io import too_large


def copy_sample(root: Path) -> Path:
    shutil.copytree(sample_root(), root)
    return root


def rewrite_manifest(root: Path, change) -> None:
    """Rewrite root/splits.csv with ``change(row) -> row``."""
    path = root / "splits.csv"
    rows = list(csv.DictReader(open(path, newline="")))
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, list(rows[0]))
        writer.writeheader()
        writer.writerows(change(dict(r)) for r in rows)


def messages(found) -> str:
    return "\n".join(str(p) for p in found)


# --------------------------------------------------------------------------- case 2: unknown split names
def test_unknown_split_is_a_problem_with_its_line_for_inspect_and_every_job(tmp_path, capsys):
    root = copy_sample(tmp_path / "data")
    free = [0]

    def typo(row):
        if row["split"] == "background":
            free[0] += 1
            if free[0] <= 2:
                row["split"] = "backgroud"
        if row["split"] == "test" and row["defect_type"] == "crack":
            row["split"] = "validation"
        return row

    rewrite_manifest(root, typo)
    ds = load_dataset(root)
    found = validate(ds)
    text = messages(found.problems)
    assert "unknown split 'backgroud' on lines " in text and "did you mean 'background'?" in text
    assert "unknown split 'validation' on lines " in text and "did you mean 'val'?" in text
    assert "known splits: reference, background, train, val, test" in text
    assert all(p.path == root / "splits.csv" for p in found.problems)
    # the row numbers are those of the manifest (line 1 is the header)
    lines = (root / "splits.csv").read_text().splitlines()
    bad = [i + 1 for i, line in enumerate(lines) if line.endswith(",backgroud")]
    assert f"lines {bad[0]}, {bad[1]}" in text

    assert inspect_main(root) == 1
    out = capsys.readouterr().out
    assert "backgroud" in out and out.rstrip().splitlines()[-1].startswith("2 problems")
    for job in ("fit-dst", "generate"):  # the same problems stop both jobs
        with pytest.raises(InputProblems, match="unknown split 'backgroud'") as info:
            preflight(ds, job=job, types=["crack"])
        assert "nothing was started" in str(info.value)


# --------------------------------------------------------------------------- case 4: empty reference mask
def test_empty_reference_mask_stops_inspect_fit_and_generate_alike(tmp_path):
    root = copy_sample(tmp_path / "data")
    ref = load_dataset(root).references("fray")[0]
    with Image.open(ref.mask) as m:
        Image.new("L", m.size, 0).save(ref.mask)
    ds = load_dataset(root)
    for job in ("inspect", "fit-dst", "generate"):
        found = validate(ds, job=job, types=["fray"] if job != "inspect" else None)
        assert [p.path for p in found.problems] == [ref.mask], job
        assert "empty reference mask" in found.problems[0].message
    # a job on another type does not read the fray reference: nothing stops it
    assert not validate(ds, job="fit-dst", types=["crack"]).problems


def test_a_jobs_problems_are_always_among_inspects(tmp_path):
    """One validation: whatever stops fit-dst or generate, inspect reports too."""
    root = copy_sample(tmp_path / "data")
    ds = load_dataset(root)
    ref = ds.references("crack")[0]
    ref.image.write_bytes(ref.image.read_bytes()[:300])  # truncated reference
    bg = ds.backgrounds()[0]
    bg.image.unlink()  # missing background
    rewrite_manifest(root, lambda r: dict(r, split="dev") if r["image"].endswith(ds.split("train")[0].id[-12:])
                     else r)
    ds = load_dataset(root)
    inspect = {str(p) for p in validate(ds).problems}
    for job in ("fit-dst", "generate"):
        found = validate(ds, job=job, types=ds.defect_types)
        assert {str(p) for p in found.problems} <= inspect, job
    # a missing background stops fit-dst (it decodes every background) and only warns generate (rejects)
    assert any(bg.id in str(p) for p in validate(ds, job="fit-dst", types=["crack"]).problems)
    gen = validate(ds, job="generate", types=["crack"])
    assert not any(bg.id in str(p) for p in gen.problems)
    assert any("cannot be read" in w.message and "rejects" in w.message and bg.id in w.message for w in gen.warnings)


# --------------------------------------------------------------------------- case 1: mixed channel counts
def test_mixed_channels_are_a_warning_that_says_how_they_are_converted(tmp_path, capsys):
    root = copy_sample(tmp_path / "data")
    bgs = load_dataset(root).backgrounds()
    for bg, mode in zip(bgs[:2], ("RGB", "RGBA")):  # one RGB and one RGBA background among grayscale ones
        gray = (read_image(bg.image)[0].numpy() * 255).astype(np.uint8)
        planes = [gray, gray // 2, 255 - gray] + ([np.full_like(gray, 9)] if mode == "RGBA" else [])
        Image.fromarray(np.dstack(planes)).save(bg.image.with_suffix(".png"))
        bg.image.unlink()
    renamed = {b.id: str(Path(b.id).with_suffix(".png")) for b in bgs[:2]}
    rewrite_manifest(root, lambda r: dict(r, image=renamed.get(r["image"], r["image"])))
    found = validate(load_dataset(root))
    assert not found.problems
    assert len(found.warnings) == 1 and "C=1: 54" in found.warnings[0].message and "C=3: 2" in found.warnings[0].message
    assert "ITU-R 601" in found.warnings[0].message
    assert inspect_main(root) == 0  # a warning does not change the exit code
    assert "warning:" in capsys.readouterr().out


# --------------------------------------------------------------------------- case 3: too small for the area
def test_background_too_small_for_the_area_is_warned_about(tmp_path):
    root = copy_sample(tmp_path / "data")
    bg = load_dataset(root).backgrounds()[0]
    Image.new("L", (16, 16), 128).save(bg.image, format="JPEG")
    Image.new("L", (16, 16), 0).save(bg.mask)  # (the sample's backgrounds have empty masks)
    ds = load_dataset(root)
    found = validate(ds)
    assert not found.problems
    small = [w for w in found.warnings if "too small" in w.message]
    assert {w.message.split("'")[1] for w in small} == {"break", "crack", "fray"}  # (uneven spans its tile)
    crack = next(w for w in small if "'crack'" in w.message)
    assert crack.path == bg.image and "at --area-scale-min 0.75" in crack.message and f"{bg.id}: 16x16" in crack.message
    # the check follows the job's AreaConfig: a smaller scale_min lets a 16x16 background take a crack
    assert [w for w in validate(ds, job="generate", types=["crack"]).warnings if "too small" in w.message]
    tiny = validate(ds, job="generate", types=["crack"], area=AreaConfig(scale_min=0.1, scale_max=0.2))
    assert not [w for w in tiny.warnings if "too small" in w.message]


# --------------------------------------------------------------------------- case 8: the size limit
def test_size_limit_warns_from_the_header_and_pillow_stays_quiet(tmp_path, capsys):
    root = tmp_path / "big"
    root.mkdir()
    Image.new("L", (9500, 9500), 100).save(root / "huge.png")  # 90 MP: above Pillow's bomb warning (89.5 MP)
    Image.new("L", (64, 48), 100).save(root / "small.png")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert inspect_main(root) == 0
        found = validate(load_dataset(root), job="fit-dst", types=[])
    assert not [w for w in caught if "DecompressionBomb" in type(w.message).__name__]
    out = capsys.readouterr().out
    assert "1 background(s) over the size limit of 16 MP (--max-image-pixels)" in out and "huge.png: 9500x9500" in out
    assert found.skip == ["huge.png"] and not found.problems  # fit-dst skips it
    assert "9500x9500 (90.2 MP) is over the size limit" in str(too_large(root / "huge.png", 9500, 9500, 16_000_000))
    # read_image refuses it from the header, before decoding
    with pytest.raises(ValueError, match="huge.png: image 9500x9500 .* over the size limit of 16 MP"):
        read_image(root / "huge.png", max_pixels=16_000_000)
    # the limit is an option: raised, nothing is said
    assert not validate(load_dataset(root), max_image_pixels=None).warnings


# --------------------------------------------------------------------------- case 9: own-data layouts
def _road_dataset(root: Path, sample) -> list[str]:
    """A flat colour-less stand-in of the issue's road-crack data: images/, masks/, backgrounds/."""
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    (root / "backgrounds").mkdir()
    cracks = [s for s in sample.samples if s.defect_type == "crack"]
    for s in cracks:
        shutil.copyfile(s.image, root / "images" / s.image.name)
        shutil.copyfile(s.mask, root / "masks" / (s.image.stem + ".png"))
    for s in sample.backgrounds()[:5]:
        shutil.copyfile(s.image, root / "backgrounds" / s.image.name)
    return sorted(f"images/{s.image.name}" for s in cracks)


def test_flat_layout_with_a_backgrounds_folder(tmp_path, sample_dataset, capsys):
    root = tmp_path / "road-cracks"
    ids = _road_dataset(root, sample_dataset)
    ds = load_dataset(root)
    assert ds.layout == "folders" and ds.defect_types == ["road-cracks"]
    assert [s.id for s in ds.references()] == ids  # every crack image is a candidate reference, sorted by id
    assert len(ds.backgrounds()) == 5 and all(s.id.startswith("backgrounds/") for s in ds.backgrounds())
    found = validate(ds)
    assert not found.problems
    (many,) = [w for w in found.warnings if "references" in w.message]
    assert f"DST learns from the first, {ids[0]}" in many.message and "--reference-id ID" in many.message
    assert f"--defect-type road-cracks" in many.message
    assert inspect_main(root) == 0
    out = capsys.readouterr().out
    assert "flat images/ folder: one defect type (road-cracks)" in out and "--reference-id" in out


def test_background_folders_at_any_level_and_the_fix_when_there_are_none(tmp_path, sample_dataset):
    root = tmp_path / "parts"
    for s in sample_dataset.references()[:2]:
        kind = s.defect_type
        (root / "images" / kind / "OK").mkdir(parents=True, exist_ok=True)
        (root / "masks" / kind).mkdir(parents=True, exist_ok=True)
        shutil.copyfile(s.image, root / "images" / kind / s.image.name)
        shutil.copyfile(s.mask, root / "masks" / kind / s.mask.name)
    bg = sample_dataset.backgrounds()[0].image
    shutil.copyfile(bg, root / "images" / "blowhole" / "OK" / bg.name)  # images/<type>/ok/: background
    ds = load_dataset(root)
    assert [s.id for s in ds.backgrounds()] == [f"images/blowhole/OK/{bg.name}"]
    assert ds.defect_types == ["blowhole", "break"] and not validate(ds).problems

    # no background at all: inspect warns, the jobs refuse, and both say how to mark them
    (root / "images" / "blowhole" / "OK" / bg.name).unlink()
    ds = load_dataset(root)
    assert any("backgrounds/" in w.message for w in validate(ds).warnings)
    with pytest.raises(InputProblems, match="no background .* folder named backgrounds/"):
        preflight(ds, job="fit-dst", types=["blowhole"])

    # images/ and backgrounds/ but no masks/: read as folders, and each defect image lacks its mask
    road = tmp_path / "nomasks"
    _road_dataset(road, sample_dataset)
    shutil.rmtree(road / "masks")
    ds = load_dataset(road)
    assert ds.layout == "folders" and len(ds.backgrounds()) == 5
    problems = validate(ds).problems
    assert len(problems) == 4 and all("has no mask" in p.message and "backgrounds/" in p.message for p in problems)
