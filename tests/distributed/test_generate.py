"""Ray Data generation on the shared local cluster: exact, reproducible, resumable."""

from __future__ import annotations

import json
import shutil

import pandas as pd
import pyarrow.parquet as pq
import pytest

from dstray.config import GenerateConfig
from dstray.data import decode_png, load_dataset, sample_root

pytestmark = pytest.mark.ray


def _generate(out, **kw):
    from dstray.distributed.generate import generate

    cfg = GenerateConfig(**{"generator": "histmatch", "num_samples": 10, "seed": 3, "num_actors": 2,
                            "out": str(out), **kw})
    return generate(cfg, shard_size=4)


def test_exact_rows_schema_and_reproducible(ray_cluster, tmp_path):
    s1 = _generate(tmp_path / "a")
    assert (s1["requested"], s1["written"], s1["rejected"]) == (10, 10, 0)
    table = pq.read_table(tmp_path / "a" / "data")
    assert table.num_rows == 10
    assert sorted(table.column("index").to_pylist()) == list(range(10))
    assert table.column("sample_id").to_pylist() == sorted(set(table.column("sample_id").to_pylist()))
    df = pd.read_parquet(tmp_path / "a" / "data")
    row = df.iloc[0]
    image, mask = decode_png(row["image"]), decode_png(row["mask"])
    assert image.shape[1:] == mask.shape[1:] == (row["height"], row["width"])
    assert int(mask.sum()) == row["area_px"] > 0
    y0, x0, y1, x1 = row["bbox"]
    assert mask[0, y0:y1, x0:x1].sum() == mask.sum()
    # The pixels outside L are the background's, to the bit (PNG is lossless; JPEG decoding is stable).
    from dstray.data import read_image

    ds = load_dataset(None)
    bg = read_image(next(s.image for s in ds.backgrounds() if s.id == row["background_id"]))
    outside = mask[0] == 0
    assert (decode_png(row["image"])[:, outside] == (bg[:, outside] * 255).round() / 255).all()
    types = set(df["defect_type"])
    assert types == set(ds.defect_types)  # balanced across the 5 types: 2 each
    assert df["defect_type"].value_counts().tolist() == [2] * 5

    # Same seed and inputs: byte-identical images, in another folder.
    _generate(tmp_path / "b")
    other = pd.read_parquet(tmp_path / "b" / "data").set_index("sample_id")
    for _, r in df.iterrows():
        assert other.loc[r["sample_id"], "image"] == r["image"]
        assert other.loc[r["sample_id"], "mask"] == r["mask"]


def test_readable_with_ray_data(ray_cluster, tmp_path):
    import ray

    _generate(tmp_path, generator="copy", num_samples=6)
    ds = ray.data.read_parquet(str(tmp_path / "data"))
    assert ds.count() == 6
    assert set(ds.schema().names) >= {"sample_id", "image", "mask", "bbox", "model_digest", "dstray_version"}


def test_rerun_is_noop_and_interrupted_run_finishes(ray_cluster, tmp_path):
    _generate(tmp_path)
    before = {p.name: p.read_bytes() for p in (tmp_path / "data").iterdir()}
    again = _generate(tmp_path)
    assert again["produced_this_run"] == 0 and again["written"] == 10
    assert {p.name: p.read_bytes() for p in (tmp_path / "data").iterdir()} == before
    # Simulate an interruption: one shard's marker and file are gone.
    (tmp_path / "_shards" / "00001.json").unlink()
    (tmp_path / "data" / "part-00001.parquet").unlink()
    resumed = _generate(tmp_path)
    assert resumed["produced_this_run"] == 4 and resumed["written"] == 10
    assert pq.read_table(tmp_path / "data").num_rows == 10
    assert {p.name: p.read_bytes() for p in (tmp_path / "data").iterdir()} == before


def test_other_settings_in_same_folder_are_refused(ray_cluster, tmp_path):
    _generate(tmp_path)
    with pytest.raises(ValueError, match="different generated dataset"):
        _generate(tmp_path, seed=4)


def test_bad_backgrounds_are_rejected_not_fatal(ray_cluster, tmp_path):
    """Issue 12: per-sample problems are rejects with their reason; the job finishes and says so."""
    import numpy as np
    from PIL import Image

    from dstray.data import read_image

    root = tmp_path / "data"
    shutil.copytree(sample_root(), root)
    ds = load_dataset(root)
    bgs = sorted(ds.backgrounds(), key=lambda s: s.id)
    bgs[0].image.write_bytes(bgs[0].image.read_bytes()[:200])  # truncated JPEG
    bgs[1].image.unlink()  # missing
    bgs[2].image.write_bytes(b"")  # zero bytes
    Image.new("L", (4, 4), 80).save(bgs[3].image, format="JPEG")  # too small for any area
    Image.new("L", (700, 700), 80).save(bgs[4].image, format="JPEG")  # over --max-image-pixels 400000
    gray = (read_image(bgs[5].image)[0].numpy() * 255).astype(np.uint8)
    Image.fromarray(np.dstack([gray, 255 - gray, gray // 2])).save(bgs[5].image, format="JPEG")  # RGB among gray
    gray = (read_image(bgs[6].image)[0].numpy() * 255).astype(np.uint8)
    Image.fromarray(np.dstack([gray] * 3 + [gray])).save(bgs[6].image, format="PNG")  # RGBA (PNG bytes, .jpg name)
    summary = _generate(tmp_path / "out", data=str(root), num_samples=len(bgs),  # every background once
                        max_image_pixels=400_000)
    assert summary["requested"] == summary["written"] + summary["rejected"] == len(bgs)
    rejects = pd.read_parquet(tmp_path / "out" / "rejects").set_index("background_id")["reason"]
    expect = {0: "truncated", 1: "file not found", 2: "empty image file (0 bytes)", 3: "4x4",
              4: "over the size limit of 0.4 MP (--max-image-pixels 400000)"}
    assert set(rejects.index) == {bgs[i].id for i in expect}
    for i, text in expect.items():
        reason = rejects[bgs[i].id]
        assert text in reason and str(bgs[i].image) in reason, reason  # the file, named (not "<png bytes>")
    rows = pd.read_parquet(tmp_path / "out" / "data").set_index("background_id")
    for i in (5, 6):  # converted to the references' channel count (gray), not fatal
        assert decode_png(rows.loc[bgs[i].id, "image"]).shape[0] == 1
    assert json.loads((tmp_path / "out" / "summary.json").read_text())["rejected"] == len(expect)


def test_type_weights_choose_and_drop_types(ray_cluster, tmp_path):
    _generate(tmp_path, num_samples=8, type_weights={"crack": 3.0, "blowhole": 1.0, "fray": 0.0})
    counts = pd.read_parquet(tmp_path / "data")["defect_type"].value_counts().to_dict()
    assert counts == {"crack": 6, "blowhole": 2}
    with pytest.raises(ValueError, match="not defect types"):
        _generate(tmp_path / "x", type_weights={"scratch": 1.0})


def test_relative_paths_resolve_against_the_driver(ray_cluster, tmp_path, monkeypatch):
    """Actors run in other working directories: a relative --out must still land here."""
    monkeypatch.chdir(tmp_path)
    summary = _generate("relative/out", num_samples=4, generator="copy")
    assert summary["written"] == 4
    assert pq.read_table(tmp_path / "relative" / "out" / "data").num_rows == 4
