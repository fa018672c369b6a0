"""Issue 12 on the command line, in-process: bad input gives `dstray CMD: error: ...` (exit 2), never a traceback.

Every case here is refused before Ray starts (the pre-flight check), so no cluster is needed.
"""

from __future__ import annotations

import csv
import shutil
from pathlib import Path

import pytest
import torch
from PIL import Image

from dstray.cli import input_error, main
from dstray.data import load_dataset, sample_root


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> dict[str, Path]:
    """Copies of the embedded sample, each with one kind of bad input."""
    base = tmp_path_factory.mktemp("bad-input")
    out = {}
    # an unknown split name (a typo for 'background')
    out["typo"] = root = base / "typo"
    shutil.copytree(sample_root(), root)
    rows = list(csv.DictReader(open(root / "splits.csv", newline="")))
    for row in [r for r in rows if r["split"] == "background"][:2]:
        row["split"] = "backgroud"
    with open(root / "splits.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    # an empty reference mask (fray)
    out["empty"] = root = base / "empty"
    shutil.copytree(sample_root(), root)
    mask = load_dataset(root).references("fray")[0].mask
    with Image.open(mask) as m:
        Image.new("L", m.size, 0).save(mask)
    out["empty_mask"] = mask
    # a file where a folder is expected, and corrupt checkpoints
    out["file"] = base / "a-file.txt"
    out["file"].write_text("not a folder")
    models = base / "models"
    (models / "crack").mkdir(parents=True)
    (models / "crack" / "model.pt").write_bytes(b"PK\x03\x04 half a zip")
    out["models"] = models
    out["corrupt"] = models / "crack" / "model.pt"
    return out


def run(capsys, *argv) -> tuple[int, str]:
    code = main([str(a) for a in argv])
    captured = capsys.readouterr()
    text = captured.out + captured.err
    assert "Traceback" not in text, text
    return code, captured.err


def test_no_traceback_for_any_input_problem(data, tmp_path, capsys):
    cases = [
        # (argv, the command's name, what the message must say)
        (["generate", "--data", data["typo"], "--generator", "histmatch", "--out", tmp_path / "g1"],
         "unknown split 'backgroud'"),
        (["generate", "--data", data["empty"], "--generator", "histmatch", "--out", tmp_path / "g2"],
         f"{data['empty_mask']}: empty reference mask"),
        (["generate", "--generator", "dst", "--models", data["models"], "--type-weights", "crack=1",
          "--out", tmp_path / "g3"], f"{data['corrupt']}: corrupt or not a dstray DST checkpoint"),
        (["generate", "--out", data["file"]], f"--out {data['file']} is a file; give a folder"),
        (["fit-dst", "--data", data["empty"], "--defect-type", "fray", "--out", tmp_path / "f1"],
         f"{data['empty_mask']}: empty reference mask"),
        (["fit-dst", "--all", "--data", data["empty"], "--out", tmp_path / "f2"],
         f"{data['empty_mask']}: empty reference mask"),
        (["fit-dst", "--data", data["typo"], "--defect-type", "crack", "--out", tmp_path / "f3"],
         "did you mean 'background'?"),
        (["fit-dst", "--defect-type", "crack", "--out", data["file"]], "is a file; give a folder"),
        (["stylize", "--model", data["corrupt"], "--image", load_dataset().backgrounds()[0].image,
          "--out", tmp_path / "s"], f"{data['corrupt']}: corrupt or not a dstray DST checkpoint"),
        (["evaluate", "--model", data["corrupt"], "--out", tmp_path / "e"], f"{data['corrupt']}: corrupt or not"),
        (["evaluate", "--model", tmp_path / "nothing.pt", "--out", tmp_path / "e"], "no checkpoint at"),
        (["train-seg", "--real-splits", "train", "--eval-split", "validation", "--out", tmp_path / "t"],
         "split 'validation' has no samples; choose --eval-split"),
        (["train-seg", "--real-splits", "train", "--out", data["file"]], "is a file; give a folder"),
        (["pipeline", "--preset", "smoke", "--data", data["typo"], "--out", tmp_path / "p"],
         "unknown split 'backgroud'"),
        (["generate", "--generator", "histmatch", "--area-family", "procedual", "--out", tmp_path / "g4"],
         "--area-family 'procedual' is not an area family; give one of reference, procedural, mix"),
        (["generate", "--generator", "histmatch", "--contrast", "0.9,0.1", "--out", tmp_path / "g5"],
         "--contrast must be LO,HI with 0 <= LO <= HI <= 1"),
        (["pipeline", "--preset", "smoke", "--area-widen", "0.5", "--out", tmp_path / "p2"],
         "--area-widen must be a number >= 1"),
        (["inspect", data["file"]], None),
    ]
    for argv, expect in cases:
        code, err = run(capsys, *argv)
        if argv[0] == "inspect":
            assert code == 1 and "not a CSV manifest" in err, err
            continue
        assert code == 2 and err.startswith(f"dstray {argv[0]}: error: "), (argv, err)
        assert expect in err, (argv, err)
        assert "weights_only" not in err, err  # torch's advice to load a file unsafely never reaches the user
    # a refused start leaves no output folder behind
    for name in ("g1", "g2", "g3", "g4", "g5", "f1", "f2", "f3", "s", "p", "p2"):
        assert not (tmp_path / name).exists(), name


def test_generate_refusal_lists_every_problem_and_names_the_check(data, capsys):
    code, err = run(capsys, "generate", "--data", data["typo"], "--generator", "histmatch", "--out",
                    data["file"].parent / "never")
    assert code == 2
    assert "stops generate (nothing was started; `dstray inspect" in err
    assert "lines " in err and "known splits: reference, background, train, val, test" in err


def test_flat_own_data_fits_its_one_type_with_the_first_or_the_chosen_reference(tmp_path, capsys):
    """Issue cases 9 and 10: images/ + masks/ + backgrounds/; no --defect-type with one type."""
    root = tmp_path / "road"
    for sub in ("images", "masks", "backgrounds"):
        (root / sub).mkdir(parents=True)
    sample = load_dataset()
    cracks = sorted((s for s in sample.samples if s.defect_type == "crack"), key=lambda s: s.image.name)
    for s in cracks:
        shutil.copyfile(s.image, root / "images" / s.image.name)
        shutil.copyfile(s.mask, root / "masks" / f"{s.image.stem}.png")
    for s in sample.backgrounds()[:4]:
        shutil.copyfile(s.image, root / "backgrounds" / s.image.name)
    fast = ["--steps", "1", "--batch-size", "1", "--patch-size", "32"]
    code, _ = run(capsys, "fit-dst", "--data", root, *fast, "--out", tmp_path / "m1")
    ckpt = torch.load(tmp_path / "m1" / "road" / "model.pt", weights_only=True)
    assert code == 0 and ckpt["defect_type"] == "road"
    assert ckpt["reference"]["id"] == f"images/{cracks[0].image.name}"  # the first by id
    assert len(ckpt["area_masks"]) == len(cracks)  # every reference mask is a shape of L
    chosen = f"images/{cracks[2].image.name}"
    code, _ = run(capsys, "fit-dst", "--data", root, "--reference-id", chosen, *fast, "--out", tmp_path / "m2")
    assert code == 0 and torch.load(tmp_path / "m2" / "road" / "model.pt", weights_only=True)["reference"]["id"] == chosen
    code, err = run(capsys, "fit-dst", "--data", root, "--reference-id", "images/nope.jpg", *fast,
                    "--out", tmp_path / "m3")
    assert code == 2 and "--reference-id images/nope.jpg is not an image id" in err
    assert not (tmp_path / "m3").exists()


def test_errors_from_ray_workers_are_unwrapped_to_their_message():
    """What Ray hands the driver: a task's cause, a Train worker's failure, or only the traceback's text."""

    class RayTaskError(Exception):  # the shapes of ray.exceptions' wrappers, without starting Ray
        __module__ = "ray.exceptions"

        def __init__(self, text, cause=None):
            super().__init__(text)
            self.cause = cause

    class WorkerGroupError(Exception):
        __module__ = "ray.train"

        def __init__(self, failures):
            super().__init__("Training failed due to worker errors:")
            self.worker_failures = failures

    assert input_error(RayTaskError("ray::f()", cause=FileNotFoundError("/d/x.png: image file not found"))) \
        == "/d/x.png: image file not found"
    assert input_error(WorkerGroupError({0: ValueError("/d/m.png: empty reference mask")})) \
        == "/d/m.png: empty reference mask"
    trace = ("\x1b[36mray::MapWorker(MapBatches(ShardGenerator)).submit()\x1b[39m (pid=1)\nTraceback (most recent "
             "call last):\n  File \"x.py\", line 1, in f\ndstray.data.errors.DataError: /m/crack/model.pt: corrupt")
    assert input_error(RayTaskError(trace, cause=RayTaskError("UDF failed to process a data block."))) \
        == "/m/crack/model.pt: corrupt"
    assert input_error(RayTaskError("ray::f()", cause=KeyError("bug"))) is None  # a bug keeps its traceback
    assert input_error(RuntimeError("PytorchStreamReader failed reading zip archive"), model="m.pt") \
        .startswith("m.pt: corrupt or not a dstray checkpoint")
