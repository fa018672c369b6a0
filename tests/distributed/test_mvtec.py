"""An MVTec AD category made from the embedded sample goes through inspect, fit-dst --all, generate and
export --format mvtec, and the export reads back with the same counts (the shared local Ray cluster)."""

from __future__ import annotations

import json
from collections import Counter

import pandas as pd
import pytest

from dstray.cli import main
from dstray.data import load_dataset
from tests.helpers import make_mvtec

pytestmark = pytest.mark.ray

TINY_FIT = ["--steps", "4", "--batch-size", "1", "--patch-size", "32", "--checkpoint-every", "2", "--log-every", "1",
            "--heldout", "4", "--warmup-steps", "2", "--cpus-per-worker", "0.5"]


def test_mvtec_category_inspect_fit_generate_export(ray_cluster, sample_dataset, tmp_path, capsys):
    data = tmp_path / "tile"
    n = make_mvtec(data, sample_dataset, types=["blowhole", "crack"], n_good_train=12, n_good_test=3)

    assert main(["inspect", str(data)]) == 0
    report = capsys.readouterr().out
    assert "layout: mvtec" in report and "train/good -> background (12)" in report
    ds = load_dataset(data)
    assert len(ds.backgrounds()) == 12 and [len(ds.references(t)) for t in ds.defect_types] == [1, 1]

    models, gen, export = tmp_path / "models", tmp_path / "gen", tmp_path / "export"
    assert main(["fit-dst", "--all", "--data", str(data), "--out", str(models), *TINY_FIT]) == 0
    capsys.readouterr()
    assert sorted(p.parent.name for p in models.glob("*/model.pt")) == ["blowhole", "crack"]

    assert main(["generate", "--data", str(data), "--models", str(models), "--generator", "dst", "--num-samples", "6",
                 "--seed", "2", "--num-actors", "1", "--shard-size", "3", "--out", str(gen)]) == 0
    summary = json.loads((gen / "summary.json").read_text())
    assert summary["written"] + summary["rejected"] == 6
    rows = pd.read_parquet(gen / "data")
    assert len(rows) == summary["written"] >= 4
    assert set(rows["reference_id"]) <= {s.id for s in ds.references()}  # the references the models were fit on

    assert main(["export", str(gen), "--format", "mvtec", "--out", str(export), "--category", "tile"]) == 0
    back = load_dataset(export / "tile")
    assert back.layout == "mvtec"
    written = Counter(rows["defect_type"])
    assert Counter(s.defect_type for s in back.samples if s.defect_type != "free") == written
    assert len(back.backgrounds()) == rows["background_id"].nunique()
    assert all(s.mask is not None for s in back.samples if s.defect_type != "free")
    assert n["defects"] == {"blowhole": 4, "crack": 4}
