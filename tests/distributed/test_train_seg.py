"""Segmenter training on the shared local Ray cluster: Ray Train + Ray Data, resume, evaluate.

Tiny settings (64 px letterbox, 32 px crops, batches of 2, a few steps): the point is the
plumbing (ingestion, checkpoints, resumption, outputs), not the scores.
"""

from __future__ import annotations

import json
import time
from dataclasses import replace

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

from dstray.config import save
from dstray.seg.train import read_history
from tests.distributed.conftest import N_SYNTHETIC
from tests.helpers import TINY_SEG as TINY

pytestmark = pytest.mark.ray



# --------------------------------------------------------------------------- Ray Data -> SegTrainer
def test_shard_source_feeds_the_same_items_as_segsource(ray_cluster, synthetic):
    import ray

    from dstray.distributed.train_seg import ShardSource, letterbox_batch
    from dstray.seg.data import SegSource, prepare_row, synthetic_paths

    cfg = replace(TINY, synthetic=synthetic_paths([synthetic]), real_splits=[], augment=False, batch_size=3)
    local = SegSource(cfg, [], cfg.synthetic, channels=1)
    # The map function of train_seg applied here to the Parquet rows; an in-memory dataset (no read tasks)
    table = pq.read_table(cfg.synthetic[0], columns=["image", "mask"])
    rows = letterbox_batch({k: np.asarray(table.column(k).to_pylist(), dtype=object) for k in ("image", "mask")},
                           size=64, channels=1)
    ds = ray.data.from_items([{k: v[i] for k, v in rows.items()} for i in range(N_SYNTHETIC)])
    source = ShardSource(cfg, ds.iterator(), [], channels=1, rank=0)
    first = source.batch(3, torch.Generator())  # synthetic only: the whole batch comes from the stream
    second = source.batch(3, torch.Generator())  # crosses into a second epoch (4 rows)
    assert source.epoch == 2
    assert first["image"].shape == (3, 1, 64, 64) and first["mask"].dtype == torch.float32
    expected = [prepare_row(*local.synthetic_rows[i], 64, 1) for i in range(N_SYNTHETIC)]  # as SegSource does
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
    from dstray.seg.train import load_segmenter

    out, seconds = trained
    model, cfg = load_segmenter(out / "model.pt")
    assert cfg.steps == 4 and cfg.lr == TINY.lr and cfg.synthetic == [f"{synthetic}/data"]  # --config + overrides
    assert torch.load(out / "model.pt", weights_only=True)["steps"] == 4
    history = read_history(out / "history.jsonl")
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
    assert result["pixel"]["f1"] == pytest.approx(float(read_history(out / "history.jsonl")[-1]["f1"]), abs=0.02)


def test_rerun_resumes_from_the_last_checkpoint_on_two_workers(trained, synthetic):
    from dstray.distributed.train_seg import train_seg

    out, _ = trained
    before = read_history(out / "history.jsonl")
    cfg = replace(TINY, steps=6, synthetic=[synthetic])
    result = train_seg(cfg, out=str(out), num_workers=2, use_gpu="false", cpus_per_worker=1)
    assert result.resumed_from == 4 and result.steps == 6 and not result.skipped
    history = read_history(out / "history.jsonl")
    assert [int(r["step"]) for r in history] == [2, 4, 6]  # continued, not restarted
    assert history[:2] == before and [r["num_workers"] for r in history] == [1, 1, 2]
    assert torch.load(out / "model.pt", weights_only=True)["steps"] == 6

    t0 = time.perf_counter()
    again = train_seg(cfg, out=str(out), num_workers=2, use_gpu="false")
    assert again.skipped and again.steps == 6 and time.perf_counter() - t0 < 10  # no Train run started
    with pytest.raises(ValueError, match="lr"):
        train_seg(replace(cfg, lr=0.1), out=str(out))


