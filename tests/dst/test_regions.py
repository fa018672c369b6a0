"""Where defects go: regions of interest, the user's own target areas, several defects per image (no Ray)."""

import csv
import io
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

from dstray.config import GenerateConfig
from dstray.data import decode_png, sample_root
from dstray.dst.plan import parse_defects_per_image, plan_samples
from dstray.dst.rows import CLASS_MASK
from dstray.dst.synth import build_synthesizer, make_rows, prepare

BACKGROUND = "images/Free/exp1_num_11276.jpg"  # 473x360 px, the sample's largest background
H, W = 360, 473
QUARTER = np.zeros((H, W), bool)
QUARTER[: H // 2, : (W + 1) // 2] = True  # the top-left quarter (180 x 237 px)


def _png(a: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(a.astype(np.uint8) * 255).save(buf, format="PNG")
    return buf.getvalue()


def make_data(root, dataset, *, roi: np.ndarray | None = None, types=("blowhole", "crack")):
    """A manifest dataset: the references of ``types`` and one background (with its own ``roi`` if given)."""
    rows = []
    for t in types:
        ref = dataset.references(t)[0]
        for src in (ref.image, ref.mask):
            rel = src.relative_to(sample_root())
            (root / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(src, root / rel)
        rows.append([ref.image.relative_to(sample_root()).as_posix(), ref.mask.relative_to(sample_root()).as_posix(),
                     t, "reference", ""])
    (root / BACKGROUND).parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(sample_root() / BACKGROUND, root / BACKGROUND)
    if roi is not None:
        (root / "roi.png").write_bytes(_png(roi))
    rows.append([BACKGROUND, "", "free", "background", "roi.png" if roi is not None else ""])
    with open(root / "splits.csv", "w", newline="") as f:
        csv.writer(f).writerows([["image", "mask", "defect_type", "split", "roi"], *rows])
    return root


def generate_rows(data, tmp_path, **kw):
    cfg = GenerateConfig(data=str(data), generator=kw.pop("generator", "histmatch"), out=str(tmp_path / "gen"), **kw)
    ctx = prepare(cfg)
    return (*make_rows(ctx, build_synthesizer(ctx), ctx["plan"]), ctx)


def mask_of(row) -> np.ndarray:
    return decode_png(row["mask"])[0].numpy() > 0.5


def background() -> np.ndarray:
    return np.asarray(Image.open(sample_root() / BACKGROUND).convert("L"))


def test_every_area_lies_inside_a_background_roi_of_a_quarter(tmp_path, dataset):
    data = make_data(tmp_path / "d", dataset, roi=QUARTER)
    rows, rejects, _ = generate_rows(data, tmp_path, num_samples=200, seed=3, type_weights={"blowhole": 1.0})
    assert len(rows) == 200 and not rejects
    for row in rows:
        m = mask_of(row)
        assert m.any() and not (m & ~QUARTER).any(), row["sample_id"]
    # the areas use the quarter, not one corner of it
    ys, xs = np.nonzero(np.any([mask_of(r) for r in rows], axis=0))
    assert ys.max() > H // 4 and xs.max() > W // 4


def test_one_roi_mask_is_scaled_to_each_background(tmp_path, dataset):
    data = make_data(tmp_path / "d", dataset)
    big = np.kron(QUARTER, np.ones((2, 2), bool))  # the same quarter at twice the size
    (tmp_path / "roi2x.png").write_bytes(_png(big))
    rows, rejects, _ = generate_rows(data, tmp_path, num_samples=20, seed=4, roi=str(tmp_path / "roi2x.png"))
    assert len(rows) == 20 and not rejects
    assert all(not (mask_of(r) & ~QUARTER).any() for r in rows)


def test_a_roi_too_small_makes_rejects_that_say_which_background_and_why(tmp_path, dataset):
    tiny = np.zeros((H, W), bool)
    tiny[100:106, 200:206] = True  # 6x6 px: no crack (114 px long) fits, and no blowhole (15x11)
    data = make_data(tmp_path / "d", dataset, roi=tiny)
    rows, rejects, _ = generate_rows(data, tmp_path, num_samples=4, seed=1)
    assert not rows and len(rejects) == 4
    for r in rejects:
        assert BACKGROUND in r["reason"] and "region of interest" in r["reason"]
        assert "36 px" in r["reason"] and "6x6 px box" in r["reason"]


def test_drawn_target_areas_are_used_as_drawn(tmp_path, dataset):
    data = make_data(tmp_path / "d", dataset)
    drawn = np.zeros((H, W), bool)
    drawn[40:60, 50:140] = True  # a seam
    drawn[200:230, 300:320] = True  # a spot
    areas = tmp_path / "areas"
    areas.mkdir()
    (areas / "exp1_num_11276.png").write_bytes(_png(drawn))
    rows, rejects, _ = generate_rows(data, tmp_path, num_samples=6, seed=2, areas=str(areas))
    assert len(rows) == 6 and not rejects
    seam, spot = np.zeros_like(drawn), np.zeros_like(drawn)
    seam[40:60, 50:140], spot[200:230, 300:320] = True, True
    used = [("seam" if (mask_of(r) == seam).all() else "spot" if (mask_of(r) == spot).all() else "?") for r in rows]
    assert "?" not in used and len(set(used)) == 2
    bg = background()
    for r in rows:  # outside L the image is the background, bit for bit
        image = (decode_png(r["image"])[0].numpy() * 255).round().astype(np.uint8)
        assert (image[~mask_of(r)] == bg[~mask_of(r)]).all()
    rows, _, _ = generate_rows(data, tmp_path / "2", num_samples=2, seed=2, areas=str(areas), defects_per_image="2")
    assert all((mask_of(r) == drawn).all() for r in rows)


def test_several_defects_per_image_class_masks_and_no_overlap(tmp_path, dataset):
    data = make_data(tmp_path / "d", dataset)
    rows, rejects, ctx = generate_rows(data, tmp_path, num_samples=12, seed=5, defects_per_image="1-3")
    assert ctx["classes"] == ["blowhole", "crack"]
    assert len(rows) + len(rejects) == 12 and len(rows) >= 8
    seen = set()
    bg = background()
    for r, p in zip(rows, [p for p in ctx["plan"] if p["index"] in {r["index"] for r in rows}]):
        types = r["defect_type"].split(",")
        assert types == p["defect_types"] and 1 <= len(types) <= 3
        seen.add(len(types))
        classes = decode_png(r[CLASS_MASK])[0].numpy() * 255
        classes = classes.round().astype(int)
        assert ((classes > 0) == mask_of(r)).all()  # the binary mask is the union
        assert set(np.unique(classes)) - {0} == {ctx["classes"].index(t) + 1 for t in types}
        image = (decode_png(r["image"])[0].numpy() * 255).round().astype(np.uint8)
        assert (image[~mask_of(r)] == bg[~mask_of(r)]).all()
    assert len(seen) >= 2
    # the areas of one sample never overlap or touch (checked on the areas themselves)
    synth = build_synthesizer(ctx)
    bgt = torch.from_numpy(bg.copy()).float()[None] / 255
    for seed in range(6):
        areas = synth.sample_areas(["crack", "blowhole", "crack"], bgt, seed)
        for i in range(3):
            for j in range(i + 1, 3):
                assert not (areas[i][1].bool() & areas[j][1].bool()).any()
    # the same plan makes the same bytes
    again, _, _ = generate_rows(data, tmp_path / "again", num_samples=12, seed=5, defects_per_image="1-3")
    assert [r[CLASS_MASK] for r in again] == [r[CLASS_MASK] for r in rows]


def test_single_defect_plans_are_unchanged_and_ranges_parse():
    kw = dict(num_samples=9, seed=1, defect_types=["a", "b"], background_ids=["x", "y"], reference_ids={"a": "1", "b": "2"})
    assert plan_samples(**kw) == plan_samples(**kw, defects_per_image=(1, 1))
    assert all("defect_types" not in r for r in plan_samples(**kw))
    assert parse_defects_per_image("2") == (2, 2) and parse_defects_per_image("1-3") == (1, 3)
    for bad in ("0", "3-1", "x", "1-"):
        with pytest.raises(ValueError, match="count K >= 1 or a range LO-HI"):
            parse_defects_per_image(bad)
