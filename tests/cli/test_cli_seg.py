"""Segmentation CLI and Tune search-space parsing, without a Ray runtime."""

from __future__ import annotations

import json

import pytest

from dstray.config import SegConfig, to_dict


def test_parser_has_the_segmentation_subcommands():
    from dstray.cli import build_parser

    p = build_parser()
    args = p.parse_args(["train-seg", "--out", "o", "--num-workers", "2", "--crop-size", "64", "--augment", "false",
                         "--window", "192", "--threshold", "none", "--test-split", "none"])
    assert (args.command, args.num_workers, args.crop_size, args.augment) == ("train-seg", 2, 64, False)
    assert (args.window, args.threshold, args.test_split, args.preset) == (192, None, None, "cpu")
    args = p.parse_args(["tune", "--out", "o", "--space", "lr=1e-4:1e-2,log", "--space", "backbone=resnet18"])
    assert args.space == ["lr=1e-4:1e-2,log", "backbone=resnet18"] and args.max_concurrent == 2
    args = p.parse_args(["evaluate", "--model", "m.pt", "--out", "o"])
    assert args.split is None and args.device == "auto"


def test_config_file_then_cli_overrides(tmp_path):
    from dstray.cli import build_parser
    from dstray.cli.seg import seg_config
    from dstray.config import save

    save(SegConfig(lr=0.5, steps=7, backbone="resnet50"), tmp_path / "c.json")
    args = build_parser().parse_args(["train-seg", "--out", "o", "--config", str(tmp_path / "c.json"), "--steps", "3"])
    cfg = seg_config(args)
    assert (cfg.lr, cfg.steps, cfg.backbone) == (0.5, 3, "resnet50")


def test_the_default_command_is_the_cpu_preset():
    """`dstray train-seg --data D --real-splits reference,train --out SEG` trains the cpu preset, nothing else."""
    from dstray.cli import build_parser
    from dstray.cli.seg import seg_config
    from dstray.presets import seg_preset

    args = build_parser().parse_args(["train-seg", "--data", "D", "--real-splits", "reference,train", "--out", "SEG"])
    assert seg_config(args) == seg_preset("cpu", data="D", real_splits=["reference", "train"])
    assert seg_preset("cpu") == SegConfig()
    cpu = SegConfig()
    assert (cpu.arch, cpu.backbone, cpu.weights, cpu.window, cpu.eval_split, cpu.test_split, cpu.threshold) == \
        ("buttonlab", "efficientnet_lite0", "imagenet", 256, "val", "test", None)
    args = build_parser().parse_args(["tune", "--preset", "smoke", "--out", "o", "--steps", "6"])
    assert seg_config(args) == seg_preset("smoke", steps=6)


def test_space_defaults_overrides_and_domains():
    from ray import tune

    from dstray.distributed.space import DEFAULT_SPACE, parse_space, to_domain

    space = parse_space(["lr=1e-3:1e-1,log", "backbone=resnet18", "augment=default", "crop-size=32:96"])
    assert space["lr"] == "1e-3:1e-1,log" and "augment" not in space
    assert set(space) == set(DEFAULT_SPACE) - {"augment"} | {"backbone", "crop_size"}
    assert to_domain("defect_weight", DEFAULT_SPACE["defect_weight"]).categories == [1.0, 3.0, 10.0, 20.0]
    assert to_domain("dice_weight", DEFAULT_SPACE["dice_weight"]).categories == [0.0, 1.0]  # CE vs CE + Dice
    assert to_domain("window", DEFAULT_SPACE["window"]).categories == [192, 256, 320]
    assert to_domain("backbone", "resnet18") == "resnet18"  # one value: fixed
    assert isinstance(to_domain("lr", space["lr"]), tune.search.sample.Float)
    crop = to_domain("crop_size", space["crop_size"])  # integer field and bounds: randint, inclusive
    assert isinstance(crop, tune.search.sample.Integer) and (crop.lower, crop.upper) == (32, 97)
    choice = to_domain("augment", "true,false")
    assert choice.categories == [True, False]
    assert to_domain("defect_weight", "1,2").categories == [1.0, 2.0]
    assert parse_space([], defaults=False) == {}


@pytest.mark.parametrize("entry, message", [
    ("nope=1,2", "not a SegConfig field"),
    ("lr=", "give a spec"),
    ("lr=1:0.1", "lo < hi"),
    ("lr=0:1,log", "lo > 0"),
    ("lr=a:b", "needs numbers"),
    ("lr=1e-4:1e-2,sqrt", "only ',log'"),
    ("augment=maybe", "not a valid"),
])
def test_space_errors_say_what_to_do(entry, message):
    from dstray.distributed.space import parse_space

    with pytest.raises(ValueError, match=message):
        parse_space([entry])


def test_space_is_checked_against_the_base_config():
    from dstray.distributed.space import check_space, parse_space
    from dstray.weights import WeightsUnavailableError

    base = SegConfig(real_splits=["train"])
    space = check_space(parse_space([]), base)
    assert "synthetic_fraction" not in space  # no generated data: it cannot matter
    with pytest.raises(WeightsUnavailableError, match="resnet18"):
        check_space(parse_space(["backbone=efficientnet_lite0,resnet18"]), base)
    assert "backbone" in check_space(parse_space(["backbone=efficientnet_lite0,resnet18"]),
                                     SegConfig(real_splits=["train"], weights="random"))
    with pytest.raises(ValueError, match="crop_size"):
        check_space(parse_space(["window=64,128", "crop-size=96"]), base)


def test_format_eval_table():
    from dstray.seg.evaluate import format_eval

    scores = {"tp": 1, "fp": 1, "fn": 1, "tn": 9, "precision": 0.5, "recall": 0.5, "f1": 0.5, "iou": 1 / 3}
    result = {"n_images": 3, "resolution": "native", "threshold": 0.5, "pixel": scores, "macro": scores,
              "per_type": {"crack": {**scores, "images": 2}}, "threshold_source": "given",
              "image": {"defect_images": 2, "detected": 1, "free_images": 1, "false_alarms": 0,
                        "detection_rate": 0.5, "false_alarm_rate": 0.0, "auroc": 0.75, "score": "top100",
                        "threshold": 0.25, "auroc_max": 0.5, "fpr_at_95": 1.0}}
    text = format_eval(result)
    assert "all               3    0.5000  0.5000  0.5000  0.3333" in text and "\nmacro " in text
    assert "crack             2" in text and "1/2 defect images detected" in text and "0/1 defect-free" in text
    assert "image level (top100 >= 0.25)" in text and "image AUROC 0.750 (max pixel probability: 0.500)" in text
    assert "false alarms at 95 % detection 1.000" in text and "threshold 0.500 (given)" in text


def test_evaluate_missing_checkpoint_is_a_clear_error(tmp_path):
    from dstray.cli import main

    assert main(["evaluate", "--model", str(tmp_path / "none.pt"), "--out", str(tmp_path)]) == 2


def test_inputs_checked_before_ray(tmp_path):
    from dstray.distributed.train_seg import _check_run_config
    from dstray.storage import generated_parquet as synthetic_paths
    from dstray.seg.train import check_inputs

    with pytest.raises(ValueError, match="no training data"):
        check_inputs(SegConfig())
    import torch

    from dstray.data import encode_png

    for sub, tensor in (("images", torch.rand(1, 8, 8)), ("masks", torch.ones(1, 8, 8))):  # references only
        (tmp_path / "refs" / sub / "crack").mkdir(parents=True)
        (tmp_path / "refs" / sub / "crack" / "a.png").write_bytes(encode_png(tensor))
    with pytest.raises(ValueError, match="'val' has no samples.*carved"):
        check_inputs(SegConfig(real_splits=["reference"], data=str(tmp_path / "refs")))
    with pytest.raises(ValueError, match="'nope'"):
        check_inputs(SegConfig(real_splits=["train"], eval_split="nope"))
    with pytest.raises(FileNotFoundError, match="dstray generate"):
        synthetic_paths([str(tmp_path / "missing")])
    (tmp_path / "gen" / "data").mkdir(parents=True)
    (tmp_path / "gen" / "_shards").mkdir()
    assert synthetic_paths([str(tmp_path / "gen")]) == [str(tmp_path / "gen" / "data")]
    run = str(tmp_path / "run")
    assert _check_run_config(run, SegConfig(steps=5)) == 0
    assert _check_run_config(run, SegConfig(steps=5, lr=0.1)) == 0  # no checkpoint yet: a new run, any settings
    assert _check_run_config(run, SegConfig(steps=5)) == 0
    (tmp_path / "run" / "checkpoint_2026-01-01_00-00-00.000000").mkdir()
    assert _check_run_config(run, SegConfig(steps=50, eval_every=10)) == 1  # more steps: resumable
    with pytest.raises(ValueError, match="backbone"):
        _check_run_config(run, SegConfig(backbone="resnet50"))
    assert json.loads((tmp_path / "run" / "dstray-config.json").read_text()) == to_dict(SegConfig(steps=50,
                                                                                                   eval_every=10))
