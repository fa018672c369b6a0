"""Segmentation data, training and evaluation on the embedded sample (small sizes, CPU)."""

import json
from dataclasses import replace

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from torchvision.transforms import v2

from dstray.config import SegConfig
from dstray.data import encode_png, load_dataset, read_image
from dstray.segdata import Letterbox, SegSource, augment, augmentation, prepare, prepare_sample
from dstray.segment import (SegTrainer, evaluate, load_segmenter, masked_cross_entropy, overlay,
                            train_seg_local, write_eval)

SMALL = SegConfig(arch="buttonlab", backbone="resnet18", image_size=64, crop_size=32, batch_size=2,
                  real_splits=["train", "reference"], augment=True, seed=0)


# --------------------------------------------------------------------------- letterbox
def test_letterbox_geometry_and_valid_area():
    box = Letterbox.fit(30, 60, 64)
    assert (box.inner_h, box.inner_w, box.top, box.left) == (32, 64, 16, 0)
    valid = box.valid()
    assert valid.shape == (1, 64, 64) and valid.sum() == 32 * 64 and valid[0, 16:48].all()


def test_letterbox_inverts_exactly_without_scaling_and_for_integer_upscaling():
    torch.manual_seed(0)
    image = torch.rand(3, 40, 64)
    box = Letterbox.fit(40, 64, 64)  # scale 1: pure padding
    assert torch.equal(box.invert(box.apply(image)), image)
    mask = (torch.rand(1, 20, 32) > 0.5).float()
    box = Letterbox.fit(20, 32, 64)  # scale 2 with nearest: exact on masks
    assert torch.equal(box.invert(box.apply(mask, "nearest-exact"), "nearest-exact"), mask)


def test_letterbox_inverts_smooth_images_closely():
    yy, xx = torch.meshgrid(torch.linspace(0, 1, 90), torch.linspace(0, 1, 150), indexing="ij")
    image = (0.5 + 0.25 * torch.sin(4 * xx) * torch.cos(3 * yy))[None]
    box = Letterbox.fit(90, 150, 64)
    back = box.invert(box.apply(image))
    assert back.shape == image.shape and (back - image).abs().mean() < 0.01


# --------------------------------------------------------------------------- training source
def _parquet(path, n=3, size=(40, 50)):
    g = torch.Generator().manual_seed(1)
    images = [encode_png(torch.rand(1, *size, generator=g)) for _ in range(n)]
    masks = [encode_png((torch.rand(1, *size, generator=g) > 0.9).float()) for _ in range(n)]
    pq.write_table(pa.table({"image": images, "mask": masks, "defect_type": ["crack"] * n}), path)
    return str(path)


def test_source_mix_limit_and_determinism(tmp_path):
    cfg = replace(SMALL, synthetic=[_parquet(tmp_path / "gen.parquet")], synthetic_fraction=0.5, real_limit=3,
                  batch_size=4)
    src = SegSource.from_config(cfg)
    assert len(src.real) == 3 and len(src.synthetic_rows) == 3 and src.channels == 1
    a = src.batch(4, torch.Generator().manual_seed(5))
    b = src.batch(4, torch.Generator().manual_seed(5))
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert a["image"].shape == (4, 1, 64, 64) and a["mask"].shape == a["valid"].shape == (4, 1, 64, 64)
    assert set(a["mask"].unique().tolist()) <= {0.0, 1.0} and (a["mask"] * (1 - a["valid"])).sum() == 0
    state = torch.get_rng_state()
    src.batch(4, torch.Generator().manual_seed(6))
    assert torch.equal(state, torch.get_rng_state())  # augmentation leaves the global RNG alone


def test_augmentation_moves_image_and_mask_together():
    image = torch.zeros(1, 64, 64)
    image[:, 10:20, 5:15] = 1.0  # a bright square, exactly labelled
    item = prepare(image, (image > 0.5).float(), 64, 1)
    exact = v2.Compose(augmentation(64).transforms[:3])  # flips + 90°: no interpolation
    for seed in range(6):
        out = augment(item, exact, torch.Generator().manual_seed(seed))
        assert torch.equal(out["mask"], (out["image"] > 0.5).float())
    out = augment(item, augmentation(64), torch.Generator().manual_seed(0))
    assert out["image"].shape == (1, 64, 64) and set(out["mask"].unique().tolist()) <= {0.0, 1.0}


# --------------------------------------------------------------------------- loss
def test_masked_cross_entropy_matches_torch_where_everything_counts():
    torch.manual_seed(0)
    logits, target = torch.randn(2, 2, 8, 8), (torch.rand(2, 1, 8, 8) > 0.7).float()
    ours = masked_cross_entropy(logits, target, torch.ones_like(target), defect_weight=3.0)
    ref = torch.nn.functional.cross_entropy(logits, target[:, 0].long(), weight=torch.tensor([1.0, 3.0]))
    torch.testing.assert_close(ours, ref)
    assert masked_cross_entropy(logits, target, torch.zeros_like(target)) == 0


# --------------------------------------------------------------------------- trainer
def test_loss_falls_when_overfitting_a_fixed_batch():
    cfg = replace(SMALL, augment=False, batch_size=2, real_limit=2)
    trainer = SegTrainer(cfg, SegSource.from_config(cfg))
    fixed = trainer.source.batch(2, torch.Generator().manual_seed(0))
    trainer.source.batch = lambda n, g: fixed
    losses = [trainer.step()["loss"] for _ in range(30)]
    assert np.mean(losses[-5:]) < 0.5 * np.mean(losses[:5])


def test_resume_is_exact():
    src = SegSource.from_config(SMALL)
    straight = SegTrainer(SMALL, src)
    for _ in range(4):
        straight.step()
    first = SegTrainer(SMALL, src)
    for _ in range(2):
        first.step()
    state = {k: v for k, v in first.state_dict().items()}
    resumed = SegTrainer(replace(SMALL, seed=123), src)  # different init, overwritten by the state
    resumed.load_state_dict(state)
    for _ in range(2):
        resumed.step()
    assert resumed.steps == 4
    for (name, a), b in zip(straight.model.state_dict().items(), resumed.model.state_dict().values()):
        assert torch.equal(a, b), name


@pytest.mark.parametrize("arch", ["buttonlab", "unet"])
def test_checkpoint_load_and_evaluate(tmp_path, arch):
    cfg = replace(SMALL, arch=arch, real_splits=["train"])
    trainer = SegTrainer(cfg, SegSource.from_config(cfg))
    trainer.step()
    path = trainer.save(tmp_path / "model.pt")
    ckpt = torch.load(path, weights_only=True)
    assert {"state_dict", "config", "steps", "arch", "in_channels", "optimizer"} <= set(ckpt)
    model, loaded_cfg = load_segmenter(path)
    assert loaded_cfg == cfg and not model.training
    test = load_dataset().split("test")
    result = evaluate(model, test, cfg)
    assert result["n_images"] == len(test) == 14
    assert result["image"]["defect_images"] + result["image"]["free_images"] == 14
    assert sum(r["images"] for r in result["per_type"].values()) == result["image"]["defect_images"]
    px = result["pixel"]
    assert px["tp"] + px["fp"] + px["fn"] + px["tn"] > 0 and 0.0 <= px["f1"] <= 1.0
    paths = write_eval(result, tmp_path)
    assert json.loads(paths["json"].read_text())["n_images"] == 14
    assert paths["csv"].read_text().startswith("set,images,tp") and paths["png"].stat().st_size > 0


class Constant(torch.nn.Module):
    """Predicts the same class everywhere."""

    in_channels = 1

    def __init__(self, defect: bool):
        super().__init__()
        self.defect = defect

    def forward(self, x):
        logits = torch.zeros(x.shape[0], 2, *x.shape[-2:])
        logits[:, int(self.defect)] = 1.0
        return {"out": logits}


def test_evaluate_counts_by_hand():
    test = load_dataset().split("test")
    cfg = replace(SMALL, batch_size=4)
    items = [prepare_sample(s, cfg.image_size, 1) for s in test]
    labelled = sum(int(it["mask"].sum()) for it in items)
    valid = sum(int(it["valid"].sum()) for it in items)
    n_defect = sum(bool(it["mask"].any()) for it in items)
    none = evaluate(Constant(False), test, cfg)
    assert (none["pixel"]["tp"], none["pixel"]["fp"], none["pixel"]["fn"]) == (0, 0, labelled)
    assert none["image"]["detected"] == none["image"]["false_alarms"] == 0
    everything = evaluate(Constant(True), test, cfg)
    px = everything["pixel"]
    assert (px["tp"], px["fp"], px["fn"], px["tn"]) == (labelled, valid - labelled, 0, 0)  # padding never counts
    assert everything["image"] == {"defect_images": n_defect, "detected": n_defect, "free_images": len(test) - n_defect,
                                   "false_alarms": len(test) - n_defect, "detection_rate": 1.0,
                                   "false_alarm_rate": 1.0}
    assert px["precision"] == pytest.approx(labelled / valid) and px["recall"] == 1.0


def test_overlay_colours():
    gray = np.zeros((1, 4), np.uint8)
    out = overlay(gray, np.array([[1, 0, 1, 0]], bool), np.array([[0, 1, 1, 0]], bool), alpha=1.0)
    assert out[0].tolist() == [[255, 0, 0], [0, 255, 0], [255, 255, 0], [0, 0, 0]]


def test_train_seg_local_runs_and_resumes(tmp_path):
    cfg = replace(SMALL, steps=2, eval_every=1, eval_split="reference", real_splits=["train"])
    out = train_seg_local(cfg, tmp_path)
    assert out["steps"] == 2 and len(out["history"]) == 2 and (tmp_path / "eval.png").exists()
    again = train_seg_local(replace(cfg, steps=3), tmp_path)
    assert again["steps"] == 3 and len(again["history"]) == 1
    with pytest.raises(ValueError, match="different config"):
        train_seg_local(replace(cfg, steps=4, lr=1e-4), tmp_path)


def test_real_limit_takes_every_reference_then_train_samples_across_types():
    from dstray.segdata import real_samples

    ds = load_dataset(None)
    n_refs = len(ds.references())
    picked = real_samples(replace(SMALL, real_splits=["reference", "train"], real_limit=n_refs + 3))
    assert [s.split for s in picked[:n_refs]] == ["reference"] * n_refs  # every type's reference comes first
    assert {s.defect_type for s in picked[:n_refs]} == set(ds.defect_types)
    extra = picked[n_refs:]
    assert len(extra) == 3 and all(s.split == "train" for s in extra)
    assert len({s.defect_type for s in extra}) == 3  # spread over types, not the first 3 of one type
    assert real_samples(replace(SMALL, real_splits=["reference", "train"], real_limit=None)) == \
        ds.split("reference") + ds.split("train")
