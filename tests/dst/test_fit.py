"""DST fitting (paper §3.1, Alg. 2) on the embedded Magnetic Tile sample (ImageNet Lite0 loss network)."""

import csv
import dataclasses

import numpy as np
import pytest
import torch

from dstray.dst.areas import area_for_seed
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


def test_rgb_backgrounds_with_a_grey_reference_keep_their_hue(dataset, tmp_path):
    """A neutral (grey) reference on tinted RGB backgrounds: DST changes lightness, not hue."""
    from PIL import Image

    from dstray.data import load_dataset, read_image
    from dstray.dst.fit import fit_dst
    from dstray.dst.stylize import stylize

    tint = torch.tensor([1.0, 0.8, 0.55]).view(3, 1, 1)  # an orange-ish tile
    rows = ["image,mask,defect_type,split"]
    ref = dataset.references("crack")[0]
    grey = read_image(ref.image).expand(3, -1, -1)  # R = G = B
    Image.fromarray((grey.permute(1, 2, 0) * 255).round().byte().numpy()).save(tmp_path / "ref.png")
    Image.open(ref.mask).save(tmp_path / "ref_mask.png")
    rows.append("ref.png,ref_mask.png,crack,reference")
    for i, bg in enumerate(dataset.backgrounds()[:16]):
        rgb = (read_image(bg.image).expand(3, -1, -1) * tint).clamp(0, 1)
        Image.fromarray((rgb.permute(1, 2, 0) * 255).round().byte().numpy()).save(tmp_path / f"bg{i}.png")
        rows.append(f"bg{i}.png,,free,background")
    (tmp_path / "splits.csv").write_text("\n".join(rows) + "\n")
    rgb_data = load_dataset(tmp_path)
    cfg = dataclasses.replace(FAST, defect_type="crack", steps=20, heldout=0)
    model = load_dst(fit_dst(cfg, rgb_data, tmp_path / "model", on_log=lambda *a: None))
    assert model.reference_image.shape[0] == 3
    for bg in rgb_data.backgrounds()[:4]:
        s = read_image(bg.image)
        area, _ = area_for_seed(model.sampler(), s.shape[1], s.shape[2], 5)
        out = stylize(model, s, area, mode="patch", patch_size=48)
        inside = area[0] > 0.5

        def chroma(img):
            return torch.stack([(img[0] - img[1])[inside].mean(), (img[2] - img[1])[inside].mean()]) * 255

        assert (chroma(out["image"]) - chroma(out["histmatch"])).abs().max() < 3, (chroma(out["image"]),
                                                                                   chroma(out["histmatch"]))
        assert chroma(out["histmatch"])[1] < -10  # the tile's tint is kept by the relative first step (B < G)
