"""The `dstray` command line (no Ray): inspect, config options, stylize."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch

from dstray.cli import build_parser, main
from dstray.cli.args import build_config
from dstray.config import DSTConfig, GenerateConfig
from dstray.dst.synth import _model_path


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
    args = build_parser().parse_args(["generate", "--area-family", "mix", "--area-widen", "3", "--contrast", "0.2,0.8"])
    cfg = build_config(GenerateConfig, args)
    assert (cfg.area.family, cfg.area.widen, cfg.contrast) == ("mix", 3.0, [0.2, 0.8])


def test_fit_one_type_then_stylize(tmp_path):
    from dstray.data import load_dataset, read_image

    assert main(["fit-dst", "--defect-type", "crack", "--steps", "2", "--batch-size", "1", "--patch-size", "32",
                 "--out", str(tmp_path / "models")]) == 0
    ckpt = torch.load(tmp_path / "models" / "crack" / "model.pt", weights_only=True)  # the layout of --all
    assert ckpt["defect_type"] == "crack" and ckpt["steps"] == 2
    bg = load_dataset(None).backgrounds()[0].image
    assert main(["stylize", "--model", str(tmp_path / "models" / "crack" / "model.pt"), "--image", str(bg),
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


def test_defect_type_rules_of_fit_dst(tmp_path, capsys):
    # --defect-type fits one type in-process: together with --all / --types it is an error (before any Ray work)
    for extra in (["--all"], ["--types", "crack,fray"]):
        assert main(["fit-dst", "--defect-type", "crack", *extra, "--out", str(tmp_path)]) == 2
        assert "--defect-type" in capsys.readouterr().err
    # no --defect-type on a dataset with several types: an error that lists them
    assert main(["fit-dst", "--steps", "1", "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert all(t in err for t in ("blowhole", "break", "crack", "fray", "uneven"))


def test_fit_dst_without_defect_type_fits_a_single_type_dataset(tmp_path):
    import csv

    from dstray.data import sample_root

    rows = list(csv.DictReader(open(sample_root() / "splits.csv")))
    keep = [r for r in rows if r["defect_type"].lower() in ("crack", "free")]
    manifest = tmp_path / "crack.csv"
    with open(manifest, "w", newline="") as f:
        writer = csv.DictWriter(f, list(rows[0]))
        writer.writeheader()
        writer.writerows({k: (str(sample_root() / v) if k in ("image", "mask") and v else v) for k, v in r.items()}
                         for r in keep)
    assert main(["fit-dst", "--data", str(manifest), "--steps", "1", "--batch-size", "1", "--patch-size", "32",
                 "--out", str(tmp_path / "models")]) == 0
    # one models layout: fit-dst of one type, fit-dst --all and generate --models all use MODELS/<type>/model.pt
    written = tmp_path / "models" / "crack" / "model.pt"
    assert torch.load(written, weights_only=True)["defect_type"] == "crack"
    assert Path(_model_path(str(tmp_path / "models"), "crack")) == written  # where generate looks
    assert sorted(p.name for p in (tmp_path / "models").iterdir()) == ["crack"]


def test_fit_dst_presets_are_the_shared_dst_sizes():
    from dstray.presets import dst_preset

    p = build_parser()
    for name in ("smoke", "demo", "cpu", "paper"):
        args = p.parse_args(["fit-dst", "--out", "x", "--preset", name])
        assert build_config(DSTConfig, args, base=dst_preset(args.preset)) == dst_preset(name)
    args = p.parse_args(["fit-dst", "--out", "x", "--preset", "demo", "--steps", "7"])
    assert build_config(DSTConfig, args, base=dst_preset(args.preset)) == dst_preset("demo", steps=7)
    assert p.parse_args(["fit-dst", "--out", "x"]).preset == "cpu"  # the DSTConfig defaults


def test_run_subcommands_parse():
    p = build_parser()
    args = p.parse_args(["pipeline", "--preset", "smoke", "--seed", "3"])
    assert (args.preset, args.seed, args.use_gpu, args.no_baseline) == ("smoke", 3, "auto", False)
    assert p.parse_args(["pipeline"]).preset == "demo"  # the README's first command
    args = p.parse_args(["pipeline", "--area-family", "procedural", "--area-widen", "1.5", "--contrast", "0.3,1"])
    assert (args.area_family, args.area_widen, args.contrast) == ("procedural", 1.5, [0.3, 1.0])
    with pytest.raises(SystemExit):
        p.parse_args(["pipeline", "--contrast", "0.3"])
    args = p.parse_args(["experiment", "fig6", "--preset", "smoke", "--data", "d"])
    assert (args.experiment, args.preset, args.data, args.out) == ("fig6", "smoke", "d", "runs/experiments")
    assert (args.seeds, args.results, args.cells) == ("0,1,2", None, None)  # 3 seeds per cell, results/<dataset>/
    args = p.parse_args(["experiment", "samples", "--seeds", "0-4", "--results", "r", "--cells", "*-s0"])
    assert (args.experiment, args.seeds, args.results, args.cells) == ("samples", "0-4", "r", "*-s0")
    assert p.parse_args(["experiment", "report"]).experiment == "report"
    args = p.parse_args(["report", "runs/x", "--out", "o"])
    assert (args.run, args.out) == ("runs/x", "o")


def test_report_subcommand_writes_the_page(tmp_path, capsys):
    (tmp_path / "run").mkdir()
    assert main(["report", str(tmp_path / "run"), "--out", str(tmp_path / "page")]) == 0
    assert (tmp_path / "page" / "index.html").exists() and "index.html" in capsys.readouterr().out
    assert main(["report", str(tmp_path / "missing")]) == 2
