"""The `dstray` command line (no Ray): inspect, config options, stylize."""

from __future__ import annotations

import shutil

import pytest
import torch

from dstray.cli import build_config, build_parser, main
from dstray.config import DSTConfig, GenerateConfig


def test_inspect_clean_sample_and_damaged_copy(tmp_path, capsys):
    from dstray.data import load_dataset, sample_root

    assert main(["inspect"]) == 0
    assert "no problems found" in capsys.readouterr().out
    root = tmp_path / "data"
    shutil.copytree(sample_root(), root)
    ds = load_dataset(root)
    bad = ds.backgrounds()[0].image
    bad.write_bytes(bad.read_bytes()[: len(bad.read_bytes()) // 2])  # a truncated JPEG
    assert main(["inspect", str(root)]) == 1
    assert bad.name in capsys.readouterr().out


def test_options_come_from_the_config_dataclasses():
    args = build_parser().parse_args(["fit-dst", "--out", "x", "--steps", "7", "--patch-size", "none",
                                      "--area-max-rotation", "15", "--loss-weights", "random"])
    cfg = build_config(DSTConfig, args)
    assert cfg.steps == 7 and cfg.patch_size is None and cfg.area.max_rotation == 15
    assert cfg.batch_size == DSTConfig().batch_size  # untouched fields keep their defaults
    args = build_parser().parse_args(["generate", "--type-weights", "crack=2,blowhole=1", "--num-samples", "5"])
    assert build_config(GenerateConfig, args).type_weights == {"crack": 2.0, "blowhole": 1.0}


def test_fit_one_type_then_stylize(tmp_path):
    from dstray.data import load_dataset, read_image

    assert main(["fit-dst", "--defect-type", "crack", "--steps", "2", "--batch-size", "1", "--patch-size", "32",
                 "--out", str(tmp_path / "crack")]) == 0
    ckpt = torch.load(tmp_path / "crack" / "model.pt", weights_only=True)
    assert ckpt["defect_type"] == "crack" and ckpt["steps"] == 2
    bg = load_dataset(None).backgrounds()[0].image
    assert main(["stylize", "--model", str(tmp_path / "crack" / "model.pt"), "--image", str(bg),
                 "--out", str(tmp_path / "out")]) == 0
    for name in ("stylized", "histmatch", "mask", "figure3"):
        assert (tmp_path / "out" / f"{name}.png").exists()
    out, original = read_image(tmp_path / "out" / "stylized.png"), read_image(bg)
    outside = read_image(tmp_path / "out" / "mask.png")[0] == 0
    assert torch.equal(out[:, outside], original[:, outside])  # pixels outside L untouched, to the bit


def test_unknown_defect_type_is_a_clear_error(tmp_path, capsys):
    assert main(["fit-dst", "--defect-type", "scratch", "--steps", "1", "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "scratch" in err and "blowhole" in err
