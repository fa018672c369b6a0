"""dstray.data: layouts, image/mask IO, validation and the inspect report, on real files."""

import csv
import io
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from dstray.data import (
    MASK_THRESHOLD,
    DataError,
    decode_png,
    encode_png,
    format_report,
    inspect_main,
    load_dataset,
    read_image,
    read_mask,
    sample_root,
    validate,
)


def write_manifest(root: Path, rows: list[tuple[str, str, str, str]]) -> Path:
    path = root / "splits.csv"
    with open(path, "w", newline="") as f:
        csv.writer(f).writerows([("image", "mask", "defect_type", "split"), *rows])
    return path


def copy_sample(sample, root: Path) -> tuple[str, str]:
    """Copy one sample's image and mask into root; their relative paths."""
    img, mask = sample.image.relative_to(sample_root()), sample.mask.relative_to(sample_root())
    for rel in (img, mask):
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(sample_root() / rel, root / rel)
    return img.as_posix(), mask.as_posix()


# --------------------------------------------------------------------------- layouts
def test_embedded_sample(sample_dataset):
    ds = sample_dataset
    assert ds.layout == "manifest" and ds.root == sample_root() and len(ds) == 56
    assert ds.defect_types == ["blowhole", "break", "crack", "fray", "uneven"]
    assert ds.splits == ["reference", "background", "train", "val", "test"]
    assert [len(ds.split(s)) for s in ds.splits] == [5, 32, 5, 6, 8]  # val: 1 of 2 per type, 1 of 4 free
    assert len(ds.backgrounds()) == 32 and all(s.defect_type == "free" for s in ds.backgrounds())
    ref = ds.references("crack")
    assert len(ref) == 1 and ref[0].id == "images/Crack/exp4_num_88149.jpg" and ref[0].mask.is_file()
    assert sum(s.defect_type == "free" for s in ds.split("test")) == 3
    assert ds.get(ref[0].id) == ref[0]
    assert not validate(ds).problems and not validate(ds).warnings
    # the CSV's own path gives the same dataset
    assert load_dataset(sample_root() / "splits.csv").samples == ds.samples


def test_unknown_type_and_split(sample_dataset):
    with pytest.raises(DataError, match="unknown defect type 'foo'.*blowhole, break, crack, fray, uneven"):
        sample_dataset.references("foo")
    with pytest.raises(DataError, match="no split 'validation'.*reference, background, train, val, test"):
        sample_dataset.split("validation")


def test_folder_layout(tmp_path, sample_dataset):
    root = tmp_path / "tiles"
    for s in sample_dataset.references() + sample_dataset.backgrounds()[:3]:
        kind = "Good" if s.defect_type == "free" else s.defect_type.capitalize()
        (root / "images" / kind).mkdir(parents=True, exist_ok=True)
        (root / "masks" / kind).mkdir(parents=True, exist_ok=True)
        shutil.copyfile(s.image, root / "images" / kind / s.image.name)
        if kind != "Good":  # defect-free images need no mask
            shutil.copyfile(s.mask, root / "masks" / kind / s.mask.name)
    ds = load_dataset(root)
    assert ds.layout == "folders" and ds.defect_types == sample_dataset.defect_types
    assert len(ds.references()) == 5 and len(ds.backgrounds()) == 3
    ref = ds.references("fray")[0]
    assert ref.id == "images/Fray/exp2_num_136286.jpg" and ref.mask == root / "masks/Fray/exp2_num_136286.png"
    assert all(s.mask is None and s.defect_type == "free" for s in ds.backgrounds())
    assert not validate(ds).problems and not validate(ds).warnings

    flat = tmp_path / "Crack"  # flat layout: the type is the folder's name
    (flat / "images").mkdir(parents=True)
    (flat / "masks").mkdir()
    ref = sample_dataset.references("crack")[0]
    shutil.copyfile(ref.image, flat / "images" / ref.image.name)
    shutil.copyfile(ref.mask, flat / "masks" / (ref.image.stem + "_mask.png"))  # MVTec-style name
    ds = load_dataset(flat)
    assert ds.defect_types == ["crack"] and ds.references("crack")[0].mask.name.endswith("_mask.png")


def test_images_only_layout(tmp_path, sample_dataset):
    for s in sample_dataset.backgrounds()[:4]:
        (tmp_path / "sub").mkdir(exist_ok=True)
        shutil.copyfile(s.image, tmp_path / "sub" / s.image.name)
    (tmp_path / "notes.txt").write_text("not an image")
    ds = load_dataset(tmp_path)
    assert ds.layout == "images" and ds.defect_types == [] and len(ds.backgrounds()) == 4
    assert all(s.id.startswith("sub/") and s.mask is None for s in ds.samples)
    assert not validate(ds).problems and not validate(ds).warnings


def test_structural_errors(tmp_path):
    with pytest.raises(DataError, match="no such file or folder"):
        load_dataset(tmp_path / "nope")
    with pytest.raises(DataError, match="no image files"):
        load_dataset(tmp_path)
    (tmp_path / "splits.csv").write_text("image,defect_type\na.png,crack\n")
    with pytest.raises(DataError, match="lacks column.*mask, split") as info:
        load_dataset(tmp_path)
    assert info.value.path == tmp_path / "splits.csv" and "image,mask,defect_type,split" in info.value.hint


# --------------------------------------------------------------------------- image and mask IO
def test_grayscale_and_rgb(tmp_path, sample_dataset):
    gray = read_image(sample_dataset.backgrounds()[0].image)
    assert gray.dtype == torch.float32 and gray.ndim == 3 and gray.shape[0] == 1
    assert 0 <= gray.min() and gray.max() <= 1
    a = (gray[0].numpy() * 255).round().astype(np.uint8)
    rgb = np.stack([a, 255 - a, a // 2], axis=-1)
    Image.fromarray(rgb).save(tmp_path / "rgb.png")
    Image.fromarray(np.dstack([rgb, np.full_like(a, 7)])).save(tmp_path / "rgba.png")
    t = read_image(tmp_path / "rgb.png")
    assert t.shape == (3, *gray.shape[1:])
    assert torch.equal(t[0], gray[0]) and torch.allclose(t[1], 1 - gray[0], atol=1e-6)
    assert torch.equal(read_image(tmp_path / "rgba.png"), t)  # alpha dropped
    ds = load_dataset(tmp_path)
    found = validate(ds)
    assert not found.problems and "C=3 (RGB): 2" in format_report(ds, found)


def test_read_mask_threshold(tmp_path):
    values = np.array([[0, 1, 127, 128], [129, 200, 254, 255]], dtype=np.uint8)
    Image.fromarray(values).save(tmp_path / "m.png")
    m = read_mask(tmp_path / "m.png")
    assert MASK_THRESHOLD == 128 and m.dtype == torch.float32 and m.shape == (1, 2, 4)
    assert m[0].tolist() == [[0, 0, 0, 1], [1, 1, 1, 1]]
    assert read_mask(tmp_path / "m.png", like=torch.zeros(3, 2, 4)).shape == (1, 2, 4)
    with pytest.raises(DataError, match="mask size 4x2 differs from its image size 5x2"):
        read_mask(tmp_path / "m.png", like=torch.zeros(1, 2, 5))
    Image.fromarray(values >= 128).save(tmp_path / "bits.png")  # a bool array is a 1-bit image
    assert torch.equal(read_mask(tmp_path / "bits.png"), m)
    Image.fromarray(values).convert("RGB").save(tmp_path / "gray_rgb.png")  # gray stored as RGB
    assert torch.equal(read_mask(tmp_path / "gray_rgb.png"), m)
    Image.fromarray(np.dstack([values, 0 * values, 0 * values])).save(tmp_path / "red.png")
    with pytest.raises(DataError, match="red.png: colour mask"):
        read_mask(tmp_path / "red.png")


def test_png_round_trip_is_exact():
    g = torch.Generator().manual_seed(0)
    for c in (1, 3):
        data = torch.randint(0, 256, (c, 17, 23), generator=g, dtype=torch.uint8)
        image = data.float() / 255
        png = encode_png(image)
        assert png[:8] == b"\x89PNG\r\n\x1a\n"
        assert Image.open(io.BytesIO(png)).mode == ("L" if c == 1 else "RGB")
        assert torch.equal(decode_png(png), image)
        assert torch.equal(decode_png(encode_png(data)), image)  # uint8 input too
    mask = (torch.rand(1, 9, 9, generator=g) > 0.5).float()
    assert torch.equal(decode_png(encode_png(mask)), mask)


# --------------------------------------------------------------------------- damaged copy
def test_damaged_copy_all_problems_found(tmp_path, sample_dataset, capsys):
    ds = sample_dataset
    rows = []
    # a healthy reference, so "crack" is fine
    img, mask = copy_sample(ds.references("crack")[0], tmp_path)
    rows.append((img, mask, "crack", "reference"))
    # 1. a truncated JPEG (its first half)
    img, mask = copy_sample(ds.split("train")[0], tmp_path)
    data = (tmp_path / img).read_bytes()
    (tmp_path / img).write_bytes(data[: len(data) // 2])
    rows.append((img, mask, "crack", "train"))
    truncated = Path(img).name
    # 2. a mask of another size than its image
    img, mask = copy_sample(ds.split("test")[0], tmp_path)
    with Image.open(tmp_path / mask) as m:
        m.resize((m.width + 3, m.height)).save(tmp_path / mask)
    rows.append((img, mask, "crack", "test"))
    resized = Path(mask).name
    # 3. an empty reference mask
    img, mask = copy_sample(ds.references("fray")[0], tmp_path)
    with Image.open(tmp_path / mask) as m:
        size = m.size
    Image.new("L", size, 0).save(tmp_path / mask)
    rows.append((img, mask, "fray", "reference"))
    empty = Path(mask).name
    # 4. a missing file
    rows.append(("images/Free/gone.jpg", "", "free", "background"))
    # 5. a 16-bit PNG and 6. a palette PNG
    a = (read_image(ds.backgrounds()[0].image)[0].numpy() * 255).astype(np.uint16)
    Image.fromarray(a * 257).save(tmp_path / "deep.png")
    Image.fromarray(a.astype(np.uint8)).convert("P").save(tmp_path / "palette.png")
    rows += [("deep.png", "", "free", "background"), ("palette.png", "", "free", "background")]
    # 7. a defect type without reference
    img, mask = copy_sample(ds.split("train")[1], tmp_path)
    rows.append((img, mask, "break", "train"))
    write_manifest(tmp_path, rows)

    problems = validate(load_dataset(tmp_path)).problems
    text = [str(p) for p in problems]
    expected = {
        truncated: "truncated",
        resized: "mask size",
        empty: "empty reference mask",
        "gone.jpg": "not found",
        "deep.png": "16-bit",
        "palette.png": "palette",
        str(tmp_path): "'break' has no reference",
    }
    for name, what in expected.items():
        assert any(name in t and what in t for t in text), (name, what, text)
    assert len(problems) == len(expected)

    assert inspect_main(tmp_path) == 1
    out = capsys.readouterr().out
    assert f"{len(expected)} problems" in out.splitlines()[-1]
    for name in [truncated, resized, empty, "gone.jpg", "deep.png", "palette.png"]:
        assert name in out


def test_inspect_clean_sample(capsys):
    assert inspect_main(None) == 0
    out = capsys.readouterr().out
    assert "blowhole" in out and "C=1 (grayscale): 56" in out and out.rstrip().endswith("no problems found")


def test_val_carve_is_stratified_deterministic_and_disjoint(tmp_path):
    ds = load_dataset()
    val, test = ds.split("val"), ds.split("test")
    assert not {s.id for s in val} & {s.id for s in test}
    # val + test = the manifest's test rows; every type keeps test samples; the same carve on every load
    manifest_test = {line.split(",")[0] for line in (sample_root() / "splits.csv").read_text().splitlines()
                     if line.endswith(",test")}
    assert {s.id for s in val + test} == manifest_test
    for t in ds.defect_types + ["free"]:
        assert sum(s.defect_type == t for s in test) >= 1
    assert [s.id for s in load_dataset().split("val")] == [s.id for s in val]
    # a dataset with its own val rows keeps them: nothing is carved
    shutil.copytree(sample_root() / "images", tmp_path / "images")
    shutil.copytree(sample_root() / "masks", tmp_path / "masks")
    lines = (sample_root() / "splits.csv").read_text().splitlines()
    own = [ln[: -len(",test")] + ",val" if ln.endswith(",test") and ",crack," in ln else ln for ln in lines]
    (tmp_path / "splits.csv").write_text("\n".join(own) + "\n")
    mine = load_dataset(tmp_path)
    assert {s.defect_type for s in mine.split("val")} == {"crack"} and len(mine.split("test")) == 12
