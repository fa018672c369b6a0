"""Stylizing with a fitted DST model, the copy-paste baseline and the Figure-3 row."""

import dataclasses

import numpy as np
import pytest
import torch

from dstray.data import read_image
from dstray.dst.areas import AreaSampler
from dstray.dst.figures import render_figure3_row
from dstray.dst.fit import DSTFitter
from dstray.dst.stylize import load_dst, stylize, stylize_batch, stylize_file
from dstray.dst.synth import copy_paste
from tests.helpers import FAST_DST as FAST


def _areas(model, backgrounds, seed=0):
    sampler = AreaSampler([model.reference_mask.cpu()])
    g = torch.Generator().manual_seed(seed)
    return [sampler.sample(b.shape[1], b.shape[2], g) for b in backgrounds]


@pytest.mark.parametrize("mode", ["whole", "patch"])
def test_stylize_background_exact_outside_area(fitted, dataset, mode):
    model = load_dst(fitted[0])
    bgs = [read_image(s.image) for s in dataset.backgrounds()[:2]]
    for bg, area in zip(bgs, _areas(model, bgs)):
        out = stylize(model, bg, area, mode=mode, patch_size=64)
        y, y_match = out["image"], out["histmatch"]
        assert y.shape == bg.shape and 0 <= y.min() and y.max() <= 1
        outside = (area == 0).expand_as(bg)
        assert torch.equal(y[outside], bg[outside]) and torch.equal(y_match[outside], bg[outside])
        assert not torch.equal(y[~outside], bg[~outside])


def test_stylize_batch_matches_single(fitted, dataset):
    model = load_dst(fitted[0])
    bgs = [read_image(s.image) for s in dataset.backgrounds()[:3]]
    areas = _areas(model, bgs, seed=1)
    batch = stylize_batch(model, bgs, areas, mode="patch", patch_size=64)
    for bg, area, y in zip(bgs, areas, batch["image"]):  # independent of what else is in the batch
        assert torch.allclose(y, stylize(model, bg, area, mode="patch", patch_size=64)["image"], atol=1e-5)
    same = [bgs[0], bgs[0].flip(-1)]
    whole = stylize_batch(model, same, areas[:1] * 2, mode="whole")
    assert torch.allclose(whole["image"][0], stylize(model, same[0], areas[0], mode="whole")["image"], atol=1e-5)


def test_copy_paste_baseline(dataset):
    ref = dataset.references("blowhole")[0]
    from dstray.data import read_mask

    h, m = read_image(ref.image), read_mask(ref.mask)
    bg = read_image(dataset.backgrounds()[0].image)
    area, warped = AreaSampler([m], reference_images=[h]).sample_with_image(bg.shape[1], bg.shape[2], 0)
    out = copy_paste(bg, area, warped)
    outside = (area == 0).expand_as(bg)
    assert out.shape == bg.shape and torch.equal(out[outside], bg[outside])
    assert not torch.equal(out[~outside], bg[~outside])
    # deep inside L the pasted pixels are the reference's own (dark blowhole pixels, not the tile)
    core = torch.nn.functional.max_pool2d(-(area[None]), 9, stride=1, padding=4)[0] < 0
    assert torch.allclose(out[core.expand_as(out)], warped[core.expand_as(warped)])
    assert torch.equal(copy_paste(bg, torch.zeros_like(area), warped), bg)


def test_figure3_row_and_stylize_file(fitted, dataset, tmp_path):
    model = load_dst(fitted[0])
    bg = read_image(dataset.backgrounds()[0].image)
    area = _areas(model, [bg])[0]
    out = stylize(model, bg, area, mode="whole")
    row = render_figure3_row(model.reference_image, model.reference_mask, bg, area, out["histmatch"], out["image"],
                             path=tmp_path / "row.png")
    assert row.dtype == np.uint8 and row.ndim == 3 and row.shape[0] == bg.shape[1] and row.shape[2] == 3
    assert row.shape[1] > 3 * bg.shape[2] and (tmp_path / "row.png").stat().st_size > 0
    written = stylize_file(fitted[0], dataset.backgrounds()[1].image, tmp_path / "out", seed=3, mode="patch")
    assert sorted(p.name for p in written) == ["figure3.png", "histmatch.png", "mask.png", "stylized.png"]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_fit_and_stylize(dataset, fitted):
    fitter = DSTFitter(dataclasses.replace(FAST, device="cuda"), dataset)
    first = [fitter.step()["total"] for _ in range(3)]
    assert all(np.isfinite(first)) and fitter.net.conv1[1].weight.is_cuda
    model = load_dst(fitted[0], device="cuda")
    bg = read_image(dataset.backgrounds()[0].image)
    area = _areas(model, [bg])[0]
    for mode in ("whole", "patch"):
        y = stylize(model, bg, area, mode=mode)["image"]
        assert y.is_cuda
        outside = (area == 0).expand_as(bg).cuda()
        assert torch.equal(y[outside], bg.cuda()[outside])
