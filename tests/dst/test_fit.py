"""DST fitting (paper §3.1, Alg. 2) on the embedded Magnetic Tile sample (ImageNet Lite0 loss network)."""

import csv
import dataclasses

import numpy as np
import pytest
import torch

from dstray.dst.areas import area_for_seed
from dstray.dst.fit import DSTFitter, fit_loop
from dstray.dst.schedule import plateaued
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
    cfg = dataclasses.replace(FAST, steps=1000, min_steps=50, plateau_patience=40, plateau_tol=0.01)
    # with held-out backgrounds: early stopping on the best held-out loss
    improving = [{"step": k, "dst": 3.0 - 0.01 * k} for k in range(0, 121, 20)]
    assert not plateaued(cfg, 120, [], improving, heldout=True)  # still improving
    flat = [{"step": k, "dst": 2.0 if k >= 60 else 3.0} for k in range(0, 121, 20)]
    assert plateaued(cfg, 120, [], flat, heldout=True)  # the best (2.0) was first reached at step 60: 60 >= 40
    assert not plateaued(cfg, 99, [], flat, heldout=True)  # 39 steps
    assert plateaued(cfg, 100, [], flat, heldout=True)
    # without held-out backgrounds: the smoothed training loss
    falling = [{"step": i + 1, "total": 10.0 * 0.98 ** i} for i in range(200)]
    assert not plateaued(cfg, 200, falling, [], heldout=False)
    stalled = falling[:60] + [{"step": 61 + i, "total": falling[59]["total"]} for i in range(200)]
    assert plateaued(cfg, 260, stalled, [], heldout=False)
    assert not plateaued(cfg, 40, stalled, [], heldout=False)  # before min_steps: never
    assert not plateaued(dataclasses.replace(cfg, plateau_patience=0), 260, stalled, [], heldout=False)  # off


def test_the_last_weights_are_checked_when_the_fit_ends_between_two_checks(dataset):
    cfg = dataclasses.replace(FAST, steps=6, heldout_every=4, checkpoint_every=100, calibration_batches=1)
    fitter = DSTFitter(cfg, dataset)
    fit_loop(fitter)
    assert [h["step"] for h in fitter.heldout_history] == [0, 4, 6]


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


@pytest.mark.parametrize("defect_type", ["break", "crack", "fray", "uneven"])  # blowhole: the `fitted` fixture
def test_every_type_ends_below_y_prime_on_heldout_backgrounds(dataset, tmp_path, defect_type):
    cfg = dataclasses.replace(FAST, defect_type=defect_type, heldout_every=10)
    fitter = DSTFitter(cfg, dataset)
    fit_loop(fitter)
    held = fitter.heldout_losses
    assert held["dst"] < held["yprime"], (defect_type, fitter.heldout_history)
