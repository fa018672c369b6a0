"""Layouts: the MVTec AD layout, and folders that match no layout (or one only in part) named, never guessed."""

import shutil
from collections import Counter

import pytest

from dstray.data import DataError, format_report, inspect_main, load_dataset, validate
from dstray.data.dataset import LAYOUTS, split_spec, with_spec
from dstray.seeds import derive_seed
from tests.helpers import make_mvtec


@pytest.fixture(scope="module")
def mvtec(tmp_path_factory, sample_dataset):
    root = tmp_path_factory.mktemp("mvtec") / "tile"
    return root, make_mvtec(root, sample_dataset, types=["blowhole", "crack"])


def test_mvtec_layout_splits_references_test_and_val(mvtec):
    root, n = mvtec
    ds = load_dataset(root)
    assert ds.layout == "mvtec" and ds.defect_types == ["blowhole", "crack"]
    count = Counter((s.defect_type, s.split) for s in ds.samples)
    assert count["free", "background"] == n["train_good"] == 12
    assert count["free", "test"] + count["free", "val"] == n["test_good"] == 3
    assert count["free", "val"] == round(n["test_good"] / 3)  # the usual carve
    for t, total in n["defects"].items():
        assert count[t, "reference"] == 1
        assert count[t, "test"] + count[t, "val"] == total - 1 and count[t, "val"] == round((total - 1) / 3)
        ref = ds.references(t)[0]
        # the oracle: the seeded draw is the image whose derive_seed(0, "reference", id) is smallest
        ids = [f"test/{t}/{i:03d}.png" for i in range(total)]
        assert ref.id == min(ids, key=lambda i: derive_seed(0, "reference", i))
        assert ref.mask == root / "ground_truth" / t / (ref.image.stem + "_mask.png")
    assert all(s.mask is None for s in ds.samples if s.defect_type == "free")
    assert not validate(ds).problems


def test_references_per_type_by_name_and_on_the_path(mvtec, capsys):
    root, n = mvtec
    ds = load_dataset(root, references_per_type=2, reference_order="name")
    assert [s.id for s in ds.references("crack")] == ["test/crack/000.png", "test/crack/001.png"]
    spec = with_spec(str(root), 2, "name")
    assert split_spec(spec) == (str(root), {"references_per_type": 2, "reference_order": "name"})
    assert [s.id for s in load_dataset(spec).samples] == [s.id for s in ds.samples]
    assert inspect_main(spec) == 0
    out = capsys.readouterr().out
    assert "layout: mvtec" in out and "2 reference(s) per type (the first by file name" in out
    assert "train/good -> background (12)" in out
    with pytest.raises(DataError, match="MVTec AD layout only"):
        load_dataset(with_spec(None, 2))  # the embedded sample has a manifest


@pytest.mark.parametrize("case", ["mask_among_backgrounds", "ground_truth_beside_images", "test_without_truth",
                                  "truth_without_test", "types_without_masks", "parent_of_categories"])
def test_partial_layouts_are_problems_naming_the_accepted_ones(tmp_path, sample_dataset, mvtec, case, capsys):
    bg = sample_dataset.backgrounds()[0]
    ref = sample_dataset.references("crack")[0]
    root = tmp_path / "data"
    if case == "parent_of_categories":
        shutil.copytree(mvtec[0], root / "tile")
        shutil.copytree(mvtec[0], root / "tile2")
    else:
        files = {
            "mask_among_backgrounds": {"good/a.jpg": bg.image, "good/a_mask.png": ref.mask},
            "ground_truth_beside_images": {"images/a.jpg": ref.image, "ground_truth/a_mask.png": ref.mask},
            "test_without_truth": {"train/good/a.jpg": bg.image, "test/crack/000.jpg": ref.image},
            "truth_without_test": {"train/good/a.jpg": bg.image, "ground_truth/crack/000_mask.png": ref.mask},
            "types_without_masks": {"images/crack/a.jpg": ref.image},
        }[case]
        for rel, src in files.items():
            (root / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(src, root / rel)
    with pytest.raises(DataError, match="matches no layout") as info:
        load_dataset(root)
    assert all(layout in info.value.hint for layout in LAYOUTS)
    assert inspect_main(root) == 1
    err = capsys.readouterr().err
    assert "matches no layout" in err and "MVTec AD layout" in err


def test_issue_example_is_no_longer_read_as_50_backgrounds(tmp_path, sample_dataset):
    # the issue's folder: train/good + test/<type> + ground_truth/<type>: defects and masks are not backgrounds
    root = tmp_path / "part"
    n = make_mvtec(root, sample_dataset, types=["crack", "fray"], n_good_train=10, n_good_test=0)
    ds = load_dataset(root)
    assert len(ds.backgrounds()) == 10 == n["train_good"]
    assert sum(s.defect_type != "free" for s in ds.samples) == sum(n["defects"].values())
    assert "layout: mvtec" in format_report(ds, validate(ds))


def _backgrounds_with_a_roi(root, sample_dataset, n: int) -> list:
    """``n`` sample backgrounds copied into ``root`` (the images layout), the first with a ``roi/`` mask (a crack's)."""
    (root / "roi").mkdir(parents=True)
    bgs = sample_dataset.backgrounds()[:n]
    for s in bgs:
        shutil.copyfile(s.image, root / s.image.name)
    shutil.copyfile(sample_dataset.references("crack")[0].mask, root / "roi" / (bgs[0].image.stem + ".png"))
    return bgs


def test_roi_folder_and_manifest_column(tmp_path, sample_dataset):
    root = tmp_path / "bgs"
    bgs = _backgrounds_with_a_roi(root, sample_dataset, 3)
    ds = load_dataset(root)
    assert ds.layout == "images" and len(ds.backgrounds()) == 3  # roi/ is not read as images
    assert {s.image.name: s.roi for s in ds.samples}[bgs[0].image.name] == root / "roi" / (bgs[0].image.stem + ".png")
    assert sum(s.roi is not None for s in ds.samples) == 1
    (root / "splits.csv").write_text("image,mask,defect_type,split,roi\n"
                                     f"{bgs[1].image.name},,free,background,roi/{bgs[0].image.stem}.png\n")
    ds = load_dataset(root)
    assert ds.samples[0].roi == root / "roi" / (bgs[0].image.stem + ".png")


def test_a_bad_background_roi_is_named_by_inspect(tmp_path, sample_dataset):
    root = tmp_path / "bgs"
    bgs = _backgrounds_with_a_roi(root, sample_dataset, 2)
    (root / "roi" / (bgs[1].image.stem + ".png")).write_bytes(b"")
    found = validate(load_dataset(root))
    text = "\n".join(str(p) for p in found.problems)
    assert "region of interest is 596x260 px" in text and "empty" in text, text
    gen = validate(load_dataset(root), job="generate")
    assert not gen.problems and any("cannot be read" in w.message for w in gen.warnings)
