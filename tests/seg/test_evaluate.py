"""Segmenter evaluation on the embedded sample's real test split (eq. 8, Figure 7), checkpoints."""

import json
from dataclasses import replace

import numpy as np
import pytest
import torch

from dstray.data import load_dataset
from dstray.seg.data import SegSource, prepare_sample
from dstray.seg.evaluate import evaluate, overlay, write_eval
from dstray.seg.train import SegTrainer, load_segmenter
from tests.helpers import SMALL_SEG as SMALL


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
    assert result["n_images"] == len(test) == 8
    assert result["image"]["defect_images"] + result["image"]["free_images"] == 8
    assert sum(r["images"] for r in result["per_type"].values()) == result["image"]["defect_images"]
    px = result["pixel"]
    assert px["tp"] + px["fp"] + px["fn"] + px["tn"] > 0 and 0.0 <= px["f1"] <= 1.0
    paths = write_eval(result, tmp_path)
    assert json.loads(paths["json"].read_text())["n_images"] == 8
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
