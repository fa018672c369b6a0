"""DST fitting (paper §3.1, Alg. 2) on the embedded Magnetic Tile sample (ImageNet Lite0 loss network)."""

import csv
import dataclasses

import numpy as np
import pytest
import torch

from dstray.dst.fit import DSTFitter
from dstray.dst.stylize import load_dst
from tests.helpers import FAST_DST as FAST


def test_fit_lowers_the_heldout_loss_below_y_prime_and_writes_files(fitted, dataset):
    path, logged = fitted
    assert [s for s, _ in logged] == [10, 20, 30]
    rows = list(csv.DictReader(open(path.parent / "losses.csv")))
    assert len(rows) == FAST.steps and set(rows[0]) == {"step", "content", "style", "hist", "tv", "total"}
    assert all(np.isfinite(float(r["total"])) for r in rows)
    held = torch.load(path, weights_only=True)["heldout_losses"]
    untrained = DSTFitter(FAST, dataset).check_heldout()  # identity TransferNet: y' softly pasted
    assert untrained["yprime"] == pytest.approx(held["yprime"])  # the same fixed held-out batches
    assert held["dst"] < untrained["dst"] < held["yprime"], (held, untrained)  # the fit lowered it below y''s


def test_plateau_rule():
    fitter = DSTFitter.__new__(DSTFitter)
    fitter.cfg = dataclasses.replace(FAST, steps=1000, min_steps=50, plateau_patience=40, plateau_tol=0.01)
    falling = [{"step": i + 1, "total": 10.0 * 0.98 ** i} for i in range(200)]
    fitter.history = falling
    assert not fitter.plateaued()
    fitter.history = falling[:60] + [{"step": 61 + i, "total": falling[59]["total"]} for i in range(200)]
    assert fitter.plateaued()
    fitter.history = fitter.history[:40]  # before min_steps: never
    assert not fitter.plateaued()
    fitter.cfg = dataclasses.replace(fitter.cfg, plateau_patience=0)  # off: run to the cap
    fitter.history = falling[:60] + [{"step": 61 + i, "total": 1.0} for i in range(200)]
    assert not fitter.plateaued()


def test_checkpoint_loads_weights_only(fitted):
    path, _ = fitted
    ckpt = torch.load(path, weights_only=True)
    assert {"state_dict", "config", "reference", "defect_type", "steps", "in_channels", "dstray_version",
            "losses"} <= set(ckpt)
    assert ckpt["steps"] == FAST.steps and ckpt["defect_type"] == "blowhole" and ckpt["in_channels"] == 1
    assert ckpt["config"]["patch_size"] == 48 and isinstance(ckpt["config"]["area"], dict)
    assert ckpt["reference"]["image"].shape[1:] == ckpt["reference"]["mask"].shape[1:]
    assert len(ckpt["losses"]) == FAST.steps
    model = load_dst(path)
    assert len(model.digest) == 16 and model.defect_type == "blowhole" and model.reference_id == ckpt["reference"]["id"]


def test_resume_is_exact(dataset, tmp_path):
    cfg = dataclasses.replace(FAST, batch_size=1, patch_size=32)
    straight = DSTFitter(cfg, dataset)
    for _ in range(6):
        straight.step()
    first = DSTFitter(cfg, dataset)
    for _ in range(3):
        first.step()
    torch.save(first.state_dict(), tmp_path / "state.pt")
    resumed = DSTFitter(cfg, dataset)
    resumed.load_state_dict(torch.load(tmp_path / "state.pt", weights_only=True))
    for _ in range(3):
        resumed.step()
    assert resumed.step_count == 6 and resumed.history == straight.history
    for (name, a), b in zip(straight.net.state_dict().items(), resumed.net.state_dict().values()):
        assert torch.equal(a, b), name


def test_whole_mode_step(dataset):
    fitter = DSTFitter(dataclasses.replace(FAST, patch_size=None, whole_size=64, batch_size=2), dataset)
    s, area = fitter.batch()
    assert s.shape == (2, 1, 64, 64) and area.shape == (2, 1, 64, 64) and (area.flatten(1).sum(1) > 0).all()
    terms = fitter.step()
    assert set(terms) == {"content", "style", "hist", "tv", "total"} and np.isfinite(terms["total"])


def test_large_area_fit_windows_stay_patch_size(dataset):
    """Uneven areas span most of a tile: fitting still sees patch-size windows, each holding part of L."""
    fitter = DSTFitter(dataclasses.replace(FAST, defect_type="uneven", batch_size=3), dataset)
    s, area = fitter.batch()
    assert s.shape == (3, 1, 48, 48) and (area.flatten(1).sum(1) > 0).all()
