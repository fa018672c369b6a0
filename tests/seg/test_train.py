"""Segmenter training: the loss, SegTrainer, selection on val, resumption, the in-process run (small sizes, CPU)."""

import json
from dataclasses import replace

import numpy as np
import pytest
import torch

from dstray.seg.data import SegSource
from dstray.seg.train import (HISTORY, HISTORY_FIELDS, SegTrainer, check_inputs, masked_cross_entropy, read_history,
                              seg_loss, soft_dice_loss, train_local)
from tests.helpers import SMALL_SEG as SMALL
from tests.helpers import torch_threads


def test_masked_cross_entropy_matches_torch_where_everything_counts():
    torch.manual_seed(0)
    logits, target = torch.randn(2, 2, 8, 8), (torch.rand(2, 1, 8, 8) > 0.7).float()
    ours = masked_cross_entropy(logits, target, torch.ones_like(target), defect_weight=3.0)
    ref = torch.nn.functional.cross_entropy(logits, target[:, 0].long(), weight=torch.tensor([1.0, 3.0]))
    torch.testing.assert_close(ours, ref)
    assert masked_cross_entropy(logits, target, torch.zeros_like(target)) == 0


def test_soft_dice_by_hand_and_only_on_valid_pixels():
    target = torch.tensor([[[[1.0, 0.0], [0.0, 0.0]]]])
    perfect = torch.tensor([[[[-20.0, 20.0], [20.0, 20.0]], [[20.0, -20.0], [-20.0, -20.0]]]])  # p ~ target
    assert soft_dice_loss(perfect, target, torch.ones_like(target)) < 1e-6
    wrong = -perfect  # p ~ 1 - target: 3 false positives, the defect missed
    assert soft_dice_loss(wrong, target, torch.ones_like(target)) == pytest.approx(1 - 1 / (3 + 1 + 1), abs=1e-6)
    valid = torch.tensor([[[[1.0, 0.0], [0.0, 0.0]]]])  # only the defect pixel counts
    assert soft_dice_loss(wrong, target, valid) == pytest.approx(1 - 1 / (0 + 1 + 1), abs=1e-6)
    cfg = replace(SMALL, defect_weight=2.0, dice_weight=0.5)
    torch.testing.assert_close(seg_loss(wrong, target, valid, cfg), masked_cross_entropy(wrong, target, valid, 2.0)
                               + 0.5 * soft_dice_loss(wrong, target, valid))


@pytest.mark.parametrize("arch, dice", [("buttonlab", 0.0), ("unet", 1.0)])
def test_the_loss_falls_on_real_data(arch, dice):
    """Training on the sample's real defect windows lowers the loss on 16 other real windows (fixed, eval mode)
    below 0.8 of the untrained loss within 120 steps (looked at every 20).

    One thread, so that the result does not depend on the tests before it. Buttonlab's eval-mode loss swings
    from one look to the next (its new decoder's batch-norm running statistics follow the last few batches of 4:
    0.40 at step 80 and 0.76 at step 100 in one run), so the test asks for the fall at some look, not at a
    fixed step; the untrained network stays at about 0.70 at every look."""
    cfg = replace(SMALL, arch=arch, backbone="efficientnet_lite0", weights="imagenet", window=64, batch_size=4,
                  defect_weight=3.0, dice_weight=dice, center_fraction=1.0, lr=1e-3,
                  real_splits=["reference", "train"])
    with torch_threads(1):
        trainer = SegTrainer(cfg, SegSource.from_config(cfg))
        held_out = trainer.source.batch(16, torch.Generator().manual_seed(123))

        def loss() -> float:
            trainer.model.eval()
            with torch.no_grad():
                logits = trainer.model(held_out["image"])["out"]
            trainer.model.train()
            return float(seg_loss(logits, held_out["mask"], held_out["valid"], cfg))

        before, looks = loss(), []
        for _ in range(6):
            for _ in range(20):
                trainer.step()
            looks.append(loss())
    assert min(looks) < 0.8 * before, (before, looks)


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


def test_select_keeps_the_best_evaluation():
    trainer = SegTrainer(SMALL, SegSource.from_config(SMALL))
    result = {"pixel": {"f1": 0.2}, "threshold": 0.7, "image": {}, "macro": {}}
    assert trainer.select(result)
    kept = {k: v.clone() for k, v in trainer.best_state.items()}
    trainer.step()
    assert not trainer.select({**result, "pixel": {"f1": 0.1}, "threshold": 0.3})  # worse: the old model stays
    assert trainer.best["threshold"] == 0.7 and trainer.best["step"] == 0
    assert all(torch.equal(kept[k], v) for k, v in trainer.best_state.items())
    assert trainer.select({**result, "pixel": {"f1": 0.3}, "threshold": 0.4}) and trainer.best["step"] == 1


def test_train_local_selects_on_val_reports_test_and_resumes(tmp_path):
    cfg = replace(SMALL, steps=2, eval_every=1, real_splits=["train"])
    out = train_local(cfg, tmp_path)
    assert out["steps"] == 2 and len(out["history"]) == 2
    rows = out["history"]
    best = max(rows, key=lambda r: r["f1"])
    assert rows[-1]["best_f1"] == best["f1"] and rows[-1]["best_step"] == best["step"]
    ckpt = torch.load(tmp_path / "model.pt", weights_only=True)
    assert ckpt["step"] == best["step"] and ckpt["threshold"] == best["threshold"]  # the selected model
    assert out["val"]["pixel"]["f1"] == pytest.approx(best["f1"])  # re-scored at its threshold: the same
    assert out["test"]["n_images"] == 8 and out["test"]["threshold"] == best["threshold"]
    for split in ("val", "test"):
        assert json.loads((tmp_path / split / "eval.json").read_text())["split"] == split
        assert (tmp_path / split / "eval.png").exists()
    again = train_local(replace(cfg, steps=3), tmp_path)
    assert again["steps"] == 3 and len(again["history"]) == 1
    rows = read_history(tmp_path / HISTORY)  # the one history format, whole across the resumption
    assert [r["step"] for r in rows] == [1, 2, 3] and set(rows[0]) == set(HISTORY_FIELDS)
    with pytest.raises(ValueError, match="different config"):
        train_local(replace(cfg, steps=4, lr=1e-4), tmp_path)


def test_inputs_that_would_make_the_scores_dishonest_are_refused():
    with pytest.raises(ValueError, match="selects .* or reports"):
        check_inputs(replace(SMALL, real_splits=["train", "val"]))
    with pytest.raises(ValueError, match="selects .* or reports"):
        check_inputs(replace(SMALL, real_splits=["test"]))
    with pytest.raises(ValueError, match="--crop-size"):
        check_inputs(replace(SMALL, window=64, crop_size=96))
    with pytest.raises(ValueError, match="'nope'"):
        check_inputs(replace(SMALL, test_split="nope"))
    with pytest.raises(Exception, match="resnet18 --weights imagenet.*efficientnet_lite0"):
        check_inputs(replace(SMALL, backbone="resnet18", weights="imagenet"))
    assert check_inputs(replace(SMALL, test_split=None)).test_split is None
