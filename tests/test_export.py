"""`dstray export`: a generated dataset as PNG files, read back with exact counts (no Ray)."""

import csv
from collections import Counter

import numpy as np
import pytest
import torch
from PIL import Image

from dstray.cli import main
from dstray.config import GenerateConfig
from dstray.data import load_dataset
from dstray.dst.synth import build_synthesizer, check_output, prepare, write_shard
from dstray.export import read_rows
from dstray.report.images import CLASS_RGB, class_legend, colour_classes


@pytest.fixture(scope="module")
def generated(tmp_path_factory):
    """Two small generated datasets made by the pure generation code: single-defect, and 1-3 defects a sample."""
    torch.set_num_threads(1)
    out = {}
    for name, k in (("single", "1"), ("multi", "1-3")):
        cfg = GenerateConfig(generator="histmatch", num_samples=10, seed=7, defects_per_image=k,
                             type_weights={"blowhole": 1.0, "crack": 1.0, "fray": 1.0},
                             out=str(tmp_path_factory.mktemp(name)))
        ctx = prepare(cfg)
        check_output(cfg, ctx["fingerprint"], ctx["classes"])
        synth = build_synthesizer(ctx)
        for shard in range(2):
            write_shard(ctx, synth, shard, 5)
        out[name] = cfg.out
    return out


def png(path) -> np.ndarray:
    return np.asarray(Image.open(path))


@pytest.mark.parametrize("kind", ["single", "multi"])
def test_folder_export_reads_back_row_for_row(generated, kind, tmp_path, capsys):
    rows = read_rows(generated[kind])
    assert main(["export", generated[kind], "--format", "folder", "--out", str(tmp_path / "x")]) == 0
    with open(tmp_path / "x" / "manifest.csv") as f:
        listed = list(csv.DictReader(f))
    assert len(listed) == len(rows) == len(list((tmp_path / "x" / "images").glob("*.png")))
    classes = (tmp_path / "x" / "classes.txt").read_text().split()
    assert classes == ["background", "blowhole", "break", "crack", "fray", "uneven"]  # every type with a reference
    for row, item in zip(rows, listed):
        assert item["sample_id"] == row["sample_id"] and item["defect_type"] == row["defect_type"]
        assert (tmp_path / "x" / item["image"]).read_bytes() == row["image"]
        mask = png(tmp_path / "x" / item["mask"]) > 127
        cls = png(tmp_path / "x" / item["class_mask"])
        assert ((cls > 0) == mask).all()
        assert {classes[v] for v in np.unique(cls) if v} == set(row["defect_type"].split(","))
    ds = load_dataset(tmp_path / "x" / "manifest.csv")  # a dstray dataset too
    assert len(ds.split("train")) == len(rows)


def test_mvtec_export_reads_back_with_the_same_counts(generated, tmp_path):
    rows = read_rows(generated["multi"])
    assert main(["export", generated["multi"], "--format", "mvtec", "--out", str(tmp_path / "m"),
                 "--category", "tile"]) == 0
    root = tmp_path / "m" / "tile"
    kinds = Counter(r["defect_type"] if "," not in r["defect_type"] else "combined" for r in rows)
    assert "combined" in kinds and sum(kinds.values()) == len(rows)
    for kind, n in kinds.items():
        assert sorted(p.name for p in (root / "test" / kind).glob("*.png")) == [f"{i:03d}.png" for i in range(n)]
        assert len(list((root / "ground_truth" / kind).glob("*_mask.png"))) == n
    assert len(list((root / "train" / "good").iterdir())) == len({r["background_id"] for r in rows})
    ds = load_dataset(root)  # dstray's own MVTec AD reader
    assert ds.layout == "mvtec"
    assert sum(s.defect_type != "free" for s in ds.samples) == len(rows)
    assert len(ds.backgrounds()) == len({r["background_id"] for r in rows})
    with pytest.raises(ValueError, match="not an empty folder"):
        from dstray.export import export

        export(generated["multi"], tmp_path / "m", format="mvtec")


def test_class_colours():
    cm = np.array([[0, 1, 2], [3, 11, 0]])
    out = colour_classes(cm)
    assert out.shape == (2, 3, 3) and out.dtype == np.uint8
    assert (out[0, 0] == 0).all() and (out[1, 2] == 0).all()
    assert tuple(out[0, 1]) == CLASS_RGB[0] and tuple(out[0, 2]) == CLASS_RGB[1] and tuple(out[1, 0]) == CLASS_RGB[2]
    assert tuple(out[1, 1]) == CLASS_RGB[0]  # the palette repeats after 10 classes
    assert class_legend(["a", "b"]) == [("a", CLASS_RGB[0]), ("b", CLASS_RGB[1])]
