"""Segmenter training on the shared local Ray cluster: Ray Train + Ray Data, resume, evaluate, Ray Tune.

Tiny settings (64 px letterbox, 32 px crops, batches of 2, a few steps): the point is the
plumbing (ingestion, checkpoints, resumption, outputs), not the scores.
"""

from __future__ import annotations

import csv
import json
import time
from dataclasses import replace

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from dstray.config import SegConfig, from_dict, load, save
from dstray.data import encode_png

pytestmark = pytest.mark.ray

TINY = SegConfig(backbone="resnet18", image_size=64, crop_size=32, steps=4, eval_every=2, batch_size=2,
                 real_splits=["train"], synthetic_fraction=0.5, seed=0)
N_SYNTHETIC = 4


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory) -> str:
    """A tiny generated dataset in the layout of `dstray generate` (data/ + _shards/), schema of design.md."""
    from dstray.dst.synth import SCHEMA

    out = tmp_path_factory.mktemp("generated")
    (out / "data").mkdir()
    (out / "_shards").mkdir()
    g = torch.Generator().manual_seed(7)
    rows = []
    for i in range(N_SYNTHETIC):
        h, w = 40 + 8 * i, 56
        image = torch.rand(1, h, w, generator=g)
        mask = torch.zeros(1, h, w)
        mask[:, 10:20, 12 + i:30] = 1.0
        image[mask.bool()] *= 0.3  # a dark defect
        rows.append({"sample_id": f"0-{i:08d}", "index": i, "defect_type": "crack", "image": encode_png(image),
                     "mask": encode_png(mask), "height": h, "width": w, "background_id": "bg", "reference_id": "ref",
                     "generator": "histmatch", "model_digest": "", "seed": i, "bbox": [10, 12 + i, 20, 30],
                     "area_px": int(mask.sum()), "dstray_version": "test"})
    pq.write_table(pa.Table.from_pylist(rows, schema=SCHEMA), out / "data" / "part-00000.parquet")
    (out / "_shards" / "00000.json").write_text(json.dumps({"written": N_SYNTHETIC, "rejected": 0}))
    return str(out)


def _history(path) -> list[dict]:
    with open(path) as f:
        return list(csv.DictReader(f))


# --------------------------------------------------------------------------- Ray Data -> SegTrainer
def test_shard_source_feeds_the_same_items_as_segsource(ray_cluster, synthetic):
    import ray

    from dstray.distributed.segment import ShardSource, letterbox_batch, synthetic_paths
    from dstray.segdata import SegSource

    cfg = replace(TINY, synthetic=synthetic_paths([synthetic]), real_splits=[], augment=False, batch_size=3)
    local = SegSource(cfg, [], cfg.synthetic, channels=1)
    # The map function of train_seg applied here to the Parquet rows; an in-memory dataset (no read tasks)
    table = pq.read_table(cfg.synthetic[0], columns=["image", "mask"])
    rows = letterbox_batch({k: np.asarray(table.column(k).to_pylist(), dtype=object) for k in ("image", "mask")},
                           size=64, channels=1)
    ds = ray.data.from_items([{k: v[i] for k, v in rows.items()} for i in range(N_SYNTHETIC)])
    source = ShardSource(cfg, ds.iterator(), [], channels=1, seed=0)
    first = source.batch(3, torch.Generator())  # synthetic only: the whole batch comes from the stream
    second = source.batch(3, torch.Generator())  # crosses into a second epoch (4 rows)
    assert source.epoch == 2
    assert first["image"].shape == (3, 1, 64, 64) and first["mask"].dtype == torch.float32
    expected = [local._item("syn", i) for i in range(N_SYNTHETIC)]  # letterboxed exactly as SegSource does
    for batch in (first, second):
        for image, mask, valid in zip(batch["image"], batch["mask"], batch["valid"]):
            match = [e for e in expected if torch.equal(e["image"], image)]
            assert len(match) == 1 and torch.equal(match[0]["mask"], mask) and torch.equal(match[0]["valid"], valid)
    seen = {float(x["image"].sum()) for x in expected}
    assert {float(im.sum()) for im in torch.cat([first["image"], second["image"][:1]])} == seen  # an epoch: each once
    source.close()


# --------------------------------------------------------------------------- train-seg, evaluate, resume
@pytest.fixture(scope="module")
def trained(ray_cluster, synthetic, tmp_path_factory):
    """`dstray train-seg --config FILE ...` (4 steps, 1 worker) through the CLI."""
    from dstray.cli import main

    root = tmp_path_factory.mktemp("seg")
    config = root / "seg.json"
    save(replace(TINY, steps=100, lr=1e-3), config)  # the CLI overrides steps and lr below
    out = root / "out"
    t0 = time.perf_counter()
    rc = main(["train-seg", "--config", str(config), "--steps", "4", "--lr", str(TINY.lr), "--synthetic", synthetic,
               "--out", str(out), "--use-gpu", "false", "--cpus-per-worker", "1"])
    assert rc == 0
    return out, time.perf_counter() - t0


def test_train_seg_writes_model_history_and_eval(trained, synthetic):
    from dstray.segment import load_segmenter

    out, seconds = trained
    model, cfg = load_segmenter(out / "model.pt")
    assert cfg.steps == 4 and cfg.lr == TINY.lr and cfg.synthetic == [f"{synthetic}/data"]  # --config + overrides
    assert torch.load(out / "model.pt", weights_only=True)["steps"] == 4
    history = _history(out / "history.csv")
    assert [int(r["step"]) for r in history] == [2, 4]
    assert {"loss", "f1", "precision", "recall", "iou"} <= set(history[0])
    assert all(0.0 <= float(r["f1"]) <= 1.0 and float(r["loss"]) > 0 for r in history)
    for kind in ("json", "csv", "png"):
        assert (out / "eval" / f"eval.{kind}").stat().st_size > 0
    with torch.no_grad():
        assert model(torch.rand(1, 1, 64, 64))["out"].shape == (1, 2, 64, 64)
    print(f"train-seg 4 steps: {seconds:.1f} s")


def test_evaluate_reads_the_checkpoint(trained, tmp_path, capsys):
    from dstray.cli import main

    out, _ = trained
    assert main(["evaluate", "--model", str(out / "model.pt"), "--split", "test", "--out", str(tmp_path),
                 "--device", "cpu"]) == 0
    printed = capsys.readouterr().out
    assert "precision" in printed and "image level" in printed and "\nall " in printed
    result = json.loads((tmp_path / "eval.json").read_text())
    assert result["n_images"] == 14 and set(result["pixel"]) >= {"precision", "recall", "f1", "iou"}
    assert (tmp_path / "eval.csv").read_text().startswith("set,images,tp") and (tmp_path / "eval.png").exists()
    # the same model on the same split: the score the training run reported at its last checkpoint
    assert result["pixel"]["f1"] == pytest.approx(float(_history(out / "history.csv")[-1]["f1"]), abs=0.02)


def test_rerun_resumes_from_the_last_checkpoint_on_two_workers(trained, synthetic):
    from dstray.distributed.segment import train_seg

    out, _ = trained
    before = _history(out / "history.csv")
    cfg = replace(TINY, steps=6, synthetic=[synthetic])
    result = train_seg(cfg, out=str(out), num_workers=2, use_gpu="false", cpus_per_worker=1)
    assert result.resumed_from == 4 and result.steps == 6 and not result.skipped
    history = _history(out / "history.csv")
    assert [int(r["step"]) for r in history] == [2, 4, 6]  # continued, not restarted
    assert history[:2] == before and [r["num_workers"] for r in history] == ["1", "1", "2"]
    assert torch.load(out / "model.pt", weights_only=True)["steps"] == 6

    t0 = time.perf_counter()
    again = train_seg(cfg, out=str(out), num_workers=2, use_gpu="false")
    assert again.skipped and again.steps == 6 and time.perf_counter() - t0 < 10  # no Train run started
    with pytest.raises(ValueError, match="lr"):
        train_seg(replace(cfg, lr=0.1), out=str(out))


# --------------------------------------------------------------------------- tune
def test_tune_two_trials_writes_table_plot_and_best_config(ray_cluster, synthetic, tmp_path, capsys):
    from dstray.cli import main
    from dstray.distributed.segment import parse_space, tune_seg

    base = replace(TINY, synthetic=[synthetic])
    entries = ["lr=1e-3:1e-2,log", "augment=true,false"]
    space = parse_space(entries, defaults=False)
    t0 = time.perf_counter()
    result = tune_seg(base, out=str(tmp_path), space=space, num_samples=2, max_concurrent=2, use_gpu="false",
                      cpus_per_trial=1, max_failures=1, _fault={"step": 3, "marker": str(tmp_path / "died")})
    seconds = time.perf_counter() - t0
    assert (tmp_path / "died").exists()  # the first trial to reach step 3 really exited ...
    assert len(result.rows) == 2 and all(r["status"] != "error" for r in result.rows), result.rows
    finished = [r for r in result.rows if r["status"] == "done"]
    assert finished and all(r["steps"] == 4 for r in finished)  # ... and resumed from its step-2 checkpoint
    best = load(SegConfig, result.best_config)  # a SegConfig that `train-seg --config` accepts
    assert best.lr == result.best["lr"] and best.augment == result.best["augment"] and best.steps == 4
    assert result.best["best_f1"] == max(r["best_f1"] for r in result.rows)
    table = (tmp_path / "results.csv").read_text().splitlines()
    assert table[0].startswith("trial,lr,augment,best_f1") and len(table) == 3
    assert (tmp_path / "results.md").read_text().count("\n| ") == 3
    assert (tmp_path / "f1_per_trial.png").stat().st_size > 0
    print(f"tune 2 trials: {seconds:.1f} s")

    # The same command again restores the finished search (no new trial) and rewrites the outputs.
    config = tmp_path / "base.json"
    save(base, config)
    t0 = time.perf_counter()
    rc = main(["tune", "--config", str(config), "--out", str(tmp_path), "--num-samples", "2", "--use-gpu", "false",
               "--no-default-space", *[f"--space={e}" for e in entries]])
    assert rc == 0 and "best trial" in capsys.readouterr().out
    assert from_dict(SegConfig, json.loads((tmp_path / "best_config.json").read_text())) == best
    assert np.isfinite(result.best["best_f1"])
    print(f"tune restore: {time.perf_counter() - t0:.1f} s")
