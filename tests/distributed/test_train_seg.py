"""Segmenter training on the shared local Ray cluster: Ray Train + Ray Data, resume, evaluate.

Tiny settings (64 px windows, 32 px crops, batches of 2, a few steps, random-init ResNet-18): the
point is the plumbing (ingestion, checkpoints, selection on val, resumption, outputs), not the scores.
"""

from __future__ import annotations

import json
import time
from dataclasses import replace

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

    from dstray.distributed.train_seg import ShardSource
    from dstray.seg.data import SegSource, row_item
    from dstray.storage import generated_parquet as synthetic_paths

    cfg = replace(TINY, synthetic=synthetic_paths([synthetic]), real_splits=[], augment=False, batch_size=3,
                  window_context=0)  # no context: each window holds one whole generated image
    local = SegSource(cfg, [], cfg.synthetic, channels=1)
    ds = ray.data.read_parquet(cfg.synthetic).select_columns(["image", "mask"])  # what train_seg streams
    source = ShardSource(cfg, ds.iterator(), [], channels=1, rank=0)
    first = source.batch(3, torch.Generator().manual_seed(0))  # synthetic only: the whole batch comes from the stream
    second = source.batch(3, torch.Generator().manual_seed(1))  # crosses into a second epoch (4 rows)
    assert source.epoch == 2
    assert first["image"].shape == (3, 1, 64, 64) and first["mask"].dtype == torch.float32
    expected = [row_item(*local.synthetic_rows[i], 1) for i in range(N_SYNTHETIC)]  # decoded as SegSource does
    sizes = sorted(int(e["image"].shape[-2]) * int(e["image"].shape[-1]) for e in expected)
    for batch in (first, second):
        for image, mask, valid in zip(batch["image"], batch["mask"], batch["valid"]):
            assert int(valid.sum()) in sizes  # each window holds one whole generated image (all under 64 px)
            rows = valid[0].any(1).nonzero()[:, 0]
            cols = valid[0].any(0).nonzero()[:, 0]
            part = (..., slice(int(rows[0]), int(rows[-1]) + 1), slice(int(cols[0]), int(cols[-1]) + 1))
            match = [e for e in expected if e["image"].shape[-2:] == image[part].shape[-2:]
                     and torch.equal(e["image"].float() / 255, image[part])]
            assert len(match) == 1 and torch.equal(match[0]["mask"].float(), mask[part])
    seen = [int(v.sum()) for v in torch.cat([first["valid"], second["valid"][:1]])]
    assert sorted(seen) == sizes  # an epoch: each row once
    source.close()


def test_the_stream_applies_the_policy_as_segsource_does(ray_cluster, tmp_path):
    """Type shares and the defect-free share in the Ray Train stream: the same draws of types, the same error."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    import ray

    from dstray.config import DataPolicy
    from dstray.data import encode_png, load_dataset
    from dstray.distributed.train_seg import ShardSource
    from dstray.policy import filter_table
    from dstray.seg.data import SegSource

    rows = []
    for i in range(8):  # crack rows have a 10 x 10 label, fray rows a 10 x 20 one
        image, mask = torch.full((1, 40, 40), 0.5), torch.zeros(1, 40, 40)
        mask[:, 10:20, 10:20 if i % 2 == 0 else 30] = 1.0
        rows.append({"image": encode_png(image), "mask": encode_png(mask), "defect_type": ["crack", "fray"][i % 2],
                     "generator": "histmatch"})
    path = tmp_path / "rows.parquet"
    pq.write_table(pa.Table.from_pylist(rows), path)
    free = load_dataset(None).split("background")[:2]
    cfg = replace(TINY, synthetic=[str(path)], real_splits=[], augment=False, window=40, batch_size=4,
                  window_context=0, free_fraction=0.25, policy=DataPolicy(type_shares={"crack": 1.0, "fray": 0.0}))
    ds = ray.data.read_parquet(str(path)).map_batches(filter_table, fn_kwargs={"policy": {}},
                                                      batch_format="pyarrow").select_columns(
        ["image", "mask", "defect_type"])
    stream = ShardSource(cfg, ds.iterator(), [], channels=1, free=free, types=["crack", "fray"])
    local = SegSource(cfg, [], cfg.synthetic, channels=1, free=free)
    for source in (stream, local):
        g = torch.Generator().manual_seed(0)
        for _ in range(4):
            batch = source.batch(4, g, step=0)
            assert batch["has_defect"].tolist() == [True, True, True, False]  # 3 generated, 1 defect-free
            assert [int(a) for a in batch["mask"][:3].sum((1, 2, 3))] == [100] * 3  # crack rows only
    stream.close()
    missing = replace(cfg, policy=DataPolicy(type_shares={"blowhole": 1.0}))
    errors = []
    for source in (ShardSource(missing, ds.iterator(), [], channels=1, types=["crack", "fray"]),
                   SegSource(missing, [], missing.synthetic, channels=1)):
        with pytest.raises(ValueError, match="no generated rows of those types") as exc:
            source.batch(4, torch.Generator().manual_seed(0), step=0)
        errors.append(str(exc.value))
    assert errors[0] == errors[1]


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
               "--out", str(out), "--use-gpu", "false", "--cpus-per-worker", "1", "--threads-per-worker", "1"])
    assert rc == 0
    return out, time.perf_counter() - t0


def test_train_seg_writes_the_selected_model_history_and_both_evaluations(trained, synthetic):
    from dstray.seg.train import load_segmenter

    out, seconds = trained
    model, cfg, threshold = load_segmenter(out / "model.pt")
    assert cfg.steps == 4 and cfg.lr == TINY.lr and cfg.synthetic == [f"{synthetic}/data"]  # --config + overrides
    assert torch.load(out / "state.pt", weights_only=True)["steps"] == 4
    history = read_history(out / "history.jsonl")
    assert [int(r["step"]) for r in history] == [2, 4]
    assert {"loss", "f1", "precision", "recall", "iou", "macro_f1", "threshold", "auroc"} <= set(history[0])
    assert all(0.0 <= float(r["f1"]) <= 1.0 and float(r["loss"]) > 0 for r in history)
    best = max(history, key=lambda r: (r["f1"], -r["step"]))
    assert torch.load(out / "model.pt", weights_only=True)["step"] == best["step"] and threshold == best["threshold"]
    for split in ("val", "test"):
        for kind in ("json", "csv", "png"):
            assert (out / split / f"eval.{kind}").stat().st_size > 0
    val = json.loads((out / "val" / "eval.json").read_text())
    assert val["pixel"]["f1"] == pytest.approx(best["f1"]) and val["n_images"] == 6  # selected with this score
    assert json.loads((out / "test" / "eval.json").read_text())["n_images"] == 8
    with torch.no_grad():
        assert model(torch.rand(1, 1, 64, 64))["out"].shape == (1, 2, 64, 64)
    print(f"train-seg 4 steps: {seconds:.1f} s")


def test_evaluate_reads_the_checkpoint(trained, tmp_path, capsys):
    from dstray.cli import main

    out, _ = trained
    assert main(["evaluate", "--model", str(out / "model.pt"), "--split", "test", "--out", str(tmp_path),
                 "--device", "cpu"]) == 0
    printed = capsys.readouterr().out
    assert "precision" in printed and "image level" in printed and "\nall " in printed and "macro" in printed
    result = json.loads((tmp_path / "eval.json").read_text())
    assert result["n_images"] == 8 and set(result["pixel"]) >= {"precision", "recall", "f1", "iou"}
    assert (tmp_path / "eval.csv").read_text().startswith("set,images,tp") and (tmp_path / "eval.png").exists()
    # the same model on the same split at the same threshold: the score train-seg wrote
    assert result["pixel"] == json.loads((out / "test" / "eval.json").read_text())["pixel"]


def test_rerun_resumes_from_the_last_checkpoint_on_two_workers(trained, synthetic):
    from dstray.distributed.train_seg import train_seg

    out, _ = trained
    before = read_history(out / "history.jsonl")
    cfg = replace(TINY, steps=6, synthetic=[synthetic])
    result = train_seg(cfg, out=str(out), num_workers=2, use_gpu="false", cpus_per_worker=1, threads_per_worker=1)
    assert result.resumed_from == 4 and result.steps == 6 and not result.skipped
    history = read_history(out / "history.jsonl")
    assert [int(r["step"]) for r in history] == [2, 4, 6]  # continued, not restarted
    assert history[:2] == before and [r["num_workers"] for r in history] == [1, 1, 2]
    assert torch.load(out / "state.pt", weights_only=True)["steps"] == 6
    assert result.test["n_images"] == 8 and result.val["threshold"] == result.test["threshold"]

    t0 = time.perf_counter()
    again = train_seg(cfg, out=str(out), num_workers=2, use_gpu="false")
    assert again.skipped and again.steps == 6 and time.perf_counter() - t0 < 10  # no Train run started
    with pytest.raises(ValueError, match="lr"):
        train_seg(replace(cfg, lr=0.1), out=str(out))




# --------------------------------------------------------------------------- seeds as parallel Ray tasks
def test_seeds_run_as_ray_tasks_and_seeds_json_holds_each_seeds_own_scores(ray_cluster, tmp_path):
    from dstray.distributed.seeds import parse_seeds, train_seeds

    assert parse_seeds("0-2,7") == [0, 1, 2, 7]
    with pytest.raises(ValueError, match="distinct"):
        parse_seeds("1,1")
    cfg = replace(TINY, steps=2, eval_every=2, synthetic=[])
    summary = train_seeds(cfg, [0, 1], out=str(tmp_path))
    saved = json.loads((tmp_path / "seeds.json").read_text())
    assert saved["seeds"] == [0, 1] and saved["test"]["seeds"] == [0, 1]
    for s in (0, 1):
        own = json.loads((tmp_path / f"seed-{s}" / "test" / "eval.json").read_text())  # the seed's own run folder
        assert saved["test"]["per_seed"][str(s)]["f1"] == pytest.approx(own["pixel"]["f1"])
        assert torch.load(tmp_path / f"seed-{s}" / "model.pt", weights_only=True)["config"]["seed"] == s
    f1s = [saved["test"]["per_seed"][str(s)]["f1"] for s in (0, 1)]
    assert saved["test"]["mean"]["f1"] == pytest.approx(sum(f1s) / 2)
    assert "seed 1" in summary["table"]
    history = (tmp_path / "seed-0" / "history.jsonl").read_text()
    train_seeds(cfg, [0, 1], out=str(tmp_path))  # again: the finished seeds are not trained again
    assert (tmp_path / "seed-0" / "history.jsonl").read_text() == history
