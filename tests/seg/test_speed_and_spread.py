"""Issue 15's knobs: frozen encoder stages, channels_last, weight averaging (EMA), the image decision, seed summaries."""

import math
from dataclasses import replace

import numpy as np
import pytest
import torch
from sklearn.metrics import roc_auc_score, roc_curve

from dstray.config import SegConfig
from dstray.seg.baselines import build_segmenter
from dstray.seg.data import SegSource
from dstray.seg.evaluate import IMAGE_SCORES, at_detection, choose_image_score
from dstray.seg.freeze import _stages_of, encoder_bodies, encoder_stages
from dstray.seg.seeds import format_table, summarise
from dstray.seg.train import SegTrainer, load_segmenter
from tests.helpers import SMALL_SEG as SMALL

LITE0 = replace(SMALL, backbone="efficientnet_lite0", weights="imagenet", ema=0.0, channels_last=False)


def _frozen_names(model, n):
    names = []
    for body in encoder_bodies(model):
        prefix = {id(m): k for k, m in model.named_modules()}[id(body)]
        names += [f"{prefix}.{name}." for stage in _stages_of(body)[:n] for name in stage]
    return names


@pytest.mark.parametrize("n", [1, 3, -1])
def test_freeze_stages_freezes_exactly_the_first_stages_and_they_do_not_move(n):
    trainer = SegTrainer(replace(LITE0, freeze_stages=n), SegSource.from_config(LITE0))
    model = trainer.model
    total = encoder_stages(model)
    prefixes = _frozen_names(model, total if n == -1 else n)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    for name, p in model.named_parameters():
        assert p.requires_grad == (not any(name.startswith(pre) for pre in prefixes)), name
    trainer.step()
    trainer.step()
    after = model.state_dict()
    for k, v in after.items():
        frozen = any(k.startswith(pre) for pre in prefixes)
        if frozen:  # weights and batch-norm statistics: bit for bit
            assert torch.equal(before[k], v), k
    moved = [k for k, v in after.items() if not any(k.startswith(p) for p in prefixes) and not torch.equal(before[k], v)]
    assert any(k.startswith("classifier") for k in moved)  # the decoder trains


def test_freeze_all_covers_the_smp_encoders_and_checks_its_range():
    unet = build_segmenter(replace(SMALL, arch="unet", backbone="efficientnet_lite0", weights="imagenet",
                                   freeze_stages=-1))
    enc = {n for n, p in unet.named_parameters() if n.startswith("model.encoder.")}
    assert enc and all(not p.requires_grad for n, p in unet.named_parameters() if n in enc)
    assert any(p.requires_grad for n, p in unet.named_parameters() if n.startswith("model.decoder."))
    with pytest.raises(ValueError, match="freeze-stages must be in"):
        build_segmenter(replace(LITE0, freeze_stages=9))
    random = build_segmenter(replace(SMALL, freeze_stages=-1))  # random weights: nothing frozen
    assert all(p.requires_grad for p in random.parameters())


def test_a_frozen_channels_last_ema_model_saves_and_loads_to_the_same_outputs(tmp_path):
    cfg = replace(LITE0, freeze_stages=-1, channels_last=True, ema=0.9)
    trainer = SegTrainer(cfg, SegSource.from_config(cfg))
    trainer.step()
    trainer.select({"pixel": {"f1": 0.5}, "threshold": 0.4, "image": {"score": "top100", "threshold": 0.2},
                    "macro": {}})
    trainer.save_model(tmp_path / "model.pt")
    model, loaded_cfg, threshold = load_segmenter(tmp_path / "model.pt")
    assert threshold == 0.4 and loaded_cfg.freeze_stages == -1
    x = torch.rand(2, 1, 64, 64)
    trainer.eval_model.eval()
    with torch.no_grad():
        torch.testing.assert_close(model(x)["out"], trainer.eval_model(x)["out"])


def test_ema_is_the_exponential_average_of_the_weights_and_is_what_is_selected():
    decay = 0.8
    cfg = replace(LITE0, freeze_stages=-1, ema=decay)
    trainer = SegTrainer(cfg, SegSource.from_config(cfg))
    name = "classifier.weight"
    oracle = None
    for _ in range(3):
        trainer.step()
        w = trainer.module.state_dict()[name].clone()
        oracle = w if oracle is None else decay * oracle + (1 - decay) * w
    torch.testing.assert_close(trainer.eval_model.state_dict()[name], oracle)
    assert not torch.equal(trainer.eval_model.state_dict()[name], trainer.module.state_dict()[name])
    trainer.select({"pixel": {"f1": 0.1}, "threshold": 0.5, "image": {}, "macro": {}})
    torch.testing.assert_close(trainer.best_state[name], oracle)
    state = trainer.state_dict()  # resumable: the average travels with the state
    twin = SegTrainer(replace(cfg, seed=5), SegSource.from_config(cfg))
    twin.load_state_dict(state)
    torch.testing.assert_close(twin.eval_model.state_dict()[name], oracle)


def test_false_alarms_at_95_percent_detection_match_sklearns_roc_curve():
    rng = np.random.default_rng(0)
    defect = np.r_[np.ones(40, bool), np.zeros(60, bool)]
    scores = np.where(defect, rng.normal(1.0, 1.0, 100), rng.normal(0.0, 1.0, 100))
    threshold, fpr = at_detection(scores, defect)
    fprs, tprs, ts = roc_curve(defect, scores, drop_intermediate=False)
    first = int(np.argmax(tprs >= 0.95))  # sklearn's curve: the first point that reaches 95 % detection
    assert fpr == pytest.approx(fprs[first]) and threshold == pytest.approx(ts[first])
    assert math.isnan(at_detection(scores[~defect], defect[~defect])[1])


def test_the_image_score_chosen_is_the_one_a_stray_pixel_cannot_flip():
    rng = np.random.default_rng(1)
    defect = np.r_[np.ones(20, bool), np.zeros(30, bool)]
    top = np.where(defect, rng.uniform(0.5, 1.0, 50), rng.uniform(0.0, 0.4, 50))  # the mean of the top 100 separates
    stray = rng.uniform(0.9, 1.0, 50)  # every image has some pixel near 1: the maximum is a coin
    scores = {"max": stray, "top100": top, "top1000": top * 0.5 + 0.2 * rng.uniform(size=50),
              "area": rng.uniform(size=50)}
    aucs = {k: roc_auc_score(defect, v) for k, v in scores.items()}
    assert choose_image_score(scores, defect) == max(aucs, key=aucs.get) == "top100"
    assert set(IMAGE_SCORES) == set(scores)


def test_seed_summary_against_numpy_and_the_table_shows_every_seed():
    def run(f1, macro, crack):
        return {"test": {"pixel": {"f1": f1, "precision": 0.5, "recall": 0.5}, "macro": {"f1": macro},
                         "per_type": {"crack": {"f1": crack}}, "image": {"auroc": 0.9, "fpr_at_95": 0.3}},
                "seconds": 60.0}

    runs = {0: run(0.6, 0.4, 0.1), 3: run(0.7, 0.5, 0.3), 7: run(0.65, 0.3, 0.2)}
    s = summarise(runs)
    assert s["seeds"] == [0, 3, 7]
    assert s["mean"]["f1"] == pytest.approx(np.mean([0.6, 0.7, 0.65]))
    assert s["std"]["f1"] == pytest.approx(np.std([0.6, 0.7, 0.65], ddof=1))
    assert s["mean"]["f1/crack"] == pytest.approx(0.2) and s["per_seed"]["3"]["macro_f1"] == 0.5
    table = format_table(s)
    assert "seed 7" in table and "crack" in table and "0.650" in table
    assert math.isnan(summarise({0: run(0.6, 0.4, 0.1)})["std"]["f1"])  # one run: no spread


def test_a_checkpoint_evaluate_cannot_read_is_a_clear_error(tmp_path):
    odd = tmp_path / "model.pt"
    torch.save({"state_dict": {}, "threshold": 0.5}, odd)  # no config: a foreign or older file
    with pytest.raises(ValueError, match="corrupt or not a dstray segmenter checkpoint.*train-seg"):
        load_segmenter(odd)
    odd.write_bytes(b"not a torch file")
    with pytest.raises(ValueError, match=str(odd)):
        load_segmenter(odd)


def test_the_cpu_preset_is_the_fast_one():
    cfg = SegConfig()
    assert (cfg.freeze_stages, cfg.output_stride, cfg.channels_last, cfg.ema, cfg.eval_every) == (5, 32, True, 0.98, 300)
