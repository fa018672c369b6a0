"""Evaluation at native resolution on the embedded sample (eq. 8, Figure 7): inference, threshold, scores."""

import json
from dataclasses import replace

import numpy as np
import pytest
import torch

from dstray.data import load_dataset, read_image, read_mask
from dstray.seg.data import SegSource
from dstray.seg.evaluate import INFERENCE_PAD, THRESHOLDS, choose_threshold, collect, evaluate, overlay, predict, scores_at, write_eval
from dstray.seg.metrics import SegCounts
from dstray.seg.train import SegTrainer, load_segmenter
from tests.helpers import SMALL_SEG as SMALL


@pytest.mark.parametrize("arch, backbone", [("buttonlab", "efficientnet_lite0"), ("buttonlab", "resnet18"),
                                            ("unet", "efficientnet_lite0")])
def test_full_resolution_inference_returns_the_original_size(arch, backbone):
    cfg = replace(SMALL, arch=arch, backbone=backbone)
    trainer = SegTrainer(cfg, SegSource.from_config(cfg))
    image = read_image(load_dataset().split("test")[0].image)
    for x in (image, image[:, :97, :61]):  # any size: padded to the stride, cropped back
        prob = predict(trainer.model.eval(), x)
        assert prob.shape == x.shape[-2:] and 0 <= prob.min() and prob.max() <= 1


def _key(image: torch.Tensor, offset: int = 0) -> float:
    """The sum of the image's top-left 16 x 16 px; ``offset``: where the image starts in a padded input."""
    return round(float(image[..., offset:offset + 16, offset:offset + 16].sum()), 3)


class Fixed(torch.nn.Module):
    """Predicts a fixed defect probability map per image, looked up by its top-left corner."""

    in_channels = 1

    def __init__(self, maps: dict[float, torch.Tensor]):
        super().__init__()
        self.maps = maps

    def forward(self, x):
        out = []
        for image in x:
            key = _key(image, INFERENCE_PAD)  # predict mirror-pads every side by INFERENCE_PAD px
            p = torch.zeros(image.shape[-2:])
            m = self.maps[key]
            p[INFERENCE_PAD:INFERENCE_PAD + m.shape[0], INFERENCE_PAD:INFERENCE_PAD + m.shape[1]] = m  # padding: 0
            out.append(torch.stack([torch.log1p(-p.clamp(max=1 - 1e-6)), torch.log(p.clamp(min=1e-6))]))
        return {"out": torch.stack(out)}


def _reference_scores(samples, maps, threshold):
    """An independent computation of every score with numpy, image by image."""
    from sklearn.metrics import roc_auc_score

    total, per_type, maxima, labels = SegCounts(), {}, [], []
    flags = []
    for s, p in zip(samples, maps):
        label = read_mask(s.mask)[0].numpy() > 0.5 if s.mask is not None else np.zeros(p.shape, bool)
        pred = p.numpy() >= threshold
        c = SegCounts.from_masks(pred, label)
        total.add(c)
        if s.defect_type != "free":
            per_type.setdefault(s.defect_type, SegCounts()).add(c)
        maxima.append(float(p.max()))
        labels.append(bool(label.any()))
        flags.append(bool(pred.any()))
    macro_f1 = np.mean([c.f1 for c in per_type.values()])
    return total, per_type, macro_f1, roc_auc_score(labels, maxima), labels, flags


def test_scores_threshold_macro_and_auroc_against_an_independent_computation():
    samples = load_dataset().split("test")
    g = torch.Generator().manual_seed(0)
    maps = []
    for s in samples:  # a noisy detector: high near the label, random elsewhere
        label = read_mask(s.mask)[0] if s.mask is not None else torch.zeros(read_image(s.image).shape[-2:])
        maps.append((0.6 * label + 0.5 * torch.rand(label.shape, generator=g)).clamp(0, 1))
    keys = [_key(read_image(s.image)) for s in samples]
    assert len(set(keys)) == len(keys)
    model = Fixed(dict(zip(keys, maps)))
    probs = collect(model, samples)
    threshold, curve = choose_threshold(probs)
    f1s = {t: f for t, f in curve}
    assert threshold in THRESHOLDS and f1s[threshold] == max(f1s.values())
    for t in (threshold, 0.3, 0.75):
        result = scores_at(probs, t, image_score="max", image_threshold=t)  # the max-probability rule
        total, per_type, macro_f1, auroc, labels, flags = _reference_scores(samples, maps, t)
        assert {k: result["pixel"][k] for k in ("tp", "fp", "fn", "tn")} == \
            {"tp": total.tp, "fp": total.fp, "fn": total.fn, "tn": total.tn}
        assert result["pixel"]["f1"] == pytest.approx(total.f1)
        assert {t_: r["f1"] for t_, r in result["per_type"].items()} == pytest.approx(
            {t_: c.f1 for t_, c in per_type.items()})
        assert result["macro"]["f1"] == pytest.approx(macro_f1)
        assert result["image"]["auroc"] == pytest.approx(auroc)
        assert result["image"]["detected"] == sum(f and lab for f, lab in zip(flags, labels))
        assert result["image"]["false_alarms"] == sum(f and not lab for f, lab in zip(flags, labels))
    given = evaluate(model, samples, threshold=0.37)  # a threshold off the grid is scored exactly
    total = _reference_scores(samples, maps, 0.37)[0]
    assert given["threshold"] == 0.37 and given["pixel"]["tp"] == total.tp and given["threshold_source"] == "given"


def test_evaluate_counts_every_pixel_at_native_resolution():
    test = load_dataset().split("test")
    labelled = sum(int(read_mask(s.mask).sum()) for s in test if s.mask is not None)
    pixels = sum(read_image(s.image)[0].numel() for s in test)
    n_defect = sum(1 for s in test if s.mask is not None and read_mask(s.mask).any())

    class Constant(torch.nn.Module):
        in_channels = 1

        def __init__(self, p):
            super().__init__()
            self.p = p

        def forward(self, x):
            return {"out": torch.stack([torch.full_like(x[:, 0], np.log(1 - self.p)),
                                        torch.full_like(x[:, 0], np.log(self.p))], 1)}

    none = evaluate(Constant(0.1), test, threshold=0.5)
    assert (none["pixel"]["tp"], none["pixel"]["fp"], none["pixel"]["fn"]) == (0, 0, labelled)
    everything = evaluate(Constant(0.9), test, threshold=0.5)
    px = everything["pixel"]
    assert (px["tp"], px["fp"], px["fn"], px["tn"]) == (labelled, pixels - labelled, 0, 0)  # every original pixel
    im = everything["image"]
    assert (im["detected"], im["defect_images"], im["false_alarms"]) == (n_defect, n_defect, len(test) - n_defect)
    assert im["auroc"] == 0.5  # one score for all: a coin


def test_the_threshold_chosen_on_val_is_stored_and_used(tmp_path):
    from dstray.seg.train import evaluate_checkpoint, save_checkpoint

    cfg = replace(SMALL, arch="buttonlab", real_splits=["train"])
    trainer = SegTrainer(cfg, SegSource.from_config(cfg))
    trainer.step()
    val = load_dataset().split("val")
    result = evaluate(trainer.model, val)  # threshold chosen on val
    assert result["threshold_source"].startswith("chosen")
    assert trainer.select(result)
    save_checkpoint(tmp_path, trainer, [])
    model, loaded_cfg, threshold = load_segmenter(tmp_path / "model.pt")
    assert loaded_cfg == cfg and not model.training and threshold == result["threshold"]
    ckpt = torch.load(tmp_path / "model.pt", weights_only=True)
    assert {"state_dict", "config", "threshold", "step", "arch", "in_channels"} <= set(ckpt)
    scored, paths = evaluate_checkpoint(tmp_path / "model.pt", out=tmp_path / "test")  # test, at that threshold
    assert scored["threshold"] == threshold and scored["split"] == "test" and scored["n_images"] == 8
    again_val, _ = evaluate_checkpoint(tmp_path / "model.pt", out=tmp_path / "val", split="val")
    assert again_val["pixel"]["f1"] == pytest.approx(result["pixel"]["f1"])  # the score it was selected with
    written = json.loads(paths["json"].read_text())
    assert written["n_images"] == 8 and "macro" in written and "auroc" in written["image"]
    assert paths["csv"].read_text().startswith("set,images,tp") and "macro" in paths["csv"].read_text()
    assert paths["png"].stat().st_size > 0


def test_overlay_colours_and_colour_images_stay_colour():
    gray = np.zeros((1, 4), np.uint8)
    out = overlay(gray, np.array([[1, 0, 1, 0]], bool), np.array([[0, 1, 1, 0]], bool), alpha=1.0)
    assert out[0].tolist() == [[255, 0, 0], [0, 255, 0], [255, 255, 0], [0, 0, 0]]
    colour = np.array([[[10, 200, 30]]], np.uint8)
    assert overlay(colour, np.zeros((1, 1), bool), np.zeros((1, 1), bool)).tolist() == [[[10, 200, 30]]]


def test_write_eval_draws_colour_examples(tmp_path):
    ex = {"id": "a/b.png", "defect_type": "crack", "image": np.zeros((20, 30, 3), np.uint8),
          "label": np.zeros((20, 30), bool), "pred": np.zeros((20, 30), bool), "f1": 1.0}
    scores = SegCounts(tp=1, fp=0, fn=0, tn=3).scores()
    result = {"pixel": scores, "per_type": {"crack": {**scores, "images": 1}}, "macro": scores,
              "image": {"auroc": float("nan")}, "n_images": 1, "threshold": 0.5, "examples": [ex, ex, ex]}
    paths = write_eval(result, tmp_path)
    assert json.loads(paths["json"].read_text())["image"]["auroc"] is None  # strict JSON
    assert paths["png"].stat().st_size > 0


def test_predict_mirrors_every_side_like_numpy_reflect():
    """The network sees the image mirror-padded by INFERENCE_PAD px on every side (numpy's 'reflect', the oracle),
    and to a multiple of its stride at the bottom and right; the probability comes back cropped to the image."""

    class Probe(torch.nn.Module):
        in_channels, stride = 1, 32

        def __init__(self):
            super().__init__()
            self.seen = None

        def forward(self, x):
            self.seen = x[0, 0].clone()
            return {"out": torch.stack([torch.zeros_like(x[:, 0]), x[:, 0] * 4 - 2], 1)}

    image = torch.rand(1, 45, 70, generator=torch.Generator().manual_seed(0))
    probe = Probe()
    prob = predict(probe, image)
    p = INFERENCE_PAD
    h, w = 45 + 2 * p, 70 + 2 * p
    oracle = np.pad(image[0].numpy(), ((p, p + (-h) % 32), (p, p + (-w) % 32)), mode="reflect")
    assert np.array_equal(probe.seen.numpy(), oracle)
    assert prob.shape == (45, 70)
    assert torch.allclose(prob, torch.sigmoid(image[0] * 4 - 2), atol=1e-6)
