"""DST fit and stylize (paper §3.1, Alg. 2) on the embedded Magnetic Tile sample, random VGG weights."""

import csv
import dataclasses

import numpy as np
import pytest
import torch

from dstray.areas import AreaSampler
from dstray.config import DSTConfig
from dstray.data import load_dataset, read_image
from dstray.dst import (DSTFitter, copy_paste, fit_dst, load_dst, render_figure3_row, stylize,
                        stylize_batch, stylize_file)

# small and fast: 48-px windows, 2 backgrounds a step (the defaults are 96 and 4)
FAST = DSTConfig(defect_type="blowhole", loss_weights="random", batch_size=2, patch_size=48, lr=2e-3, steps=30,
                 log_every=10, checkpoint_every=20, seed=0, device="cpu")


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """One intra-op thread: on a small shared CPU, OpenMP threads waiting on each other cost more than they give."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def dataset():
    return load_dataset()


@pytest.fixture(scope="module")
def fitted(dataset, tmp_path_factory):
    out = tmp_path_factory.mktemp("dst")
    logged = []
    path = fit_dst(FAST, dataset, out, on_log=lambda step, terms: logged.append((step, terms)))
    return path, logged


def _areas(model, backgrounds, seed=0):
    sampler = AreaSampler([model.reference_mask.cpu()])
    g = torch.Generator().manual_seed(seed)
    return [sampler.sample(b.shape[1], b.shape[2], g) for b in backgrounds]


def test_fit_lowers_loss_and_writes_files(fitted):
    path, logged = fitted
    assert [s for s, _ in logged] == [10, 20, 30]
    rows = list(csv.DictReader(open(path.parent / "losses.csv")))
    assert len(rows) == FAST.steps and set(rows[0]) == {"step", "content", "style", "hist", "tv", "total"}
    total = [float(r["total"]) for r in rows]
    assert np.mean(total[-5:]) < 0.8 * np.mean(total[:5]), total


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


def test_copy_paste_baseline(dataset):
    ref = dataset.references("blowhole")[0]
    from dstray.data import read_mask

    h, m = read_image(ref.image), read_mask(ref.mask)
    bg = read_image(dataset.backgrounds()[0].image)
    area = AreaSampler([m]).sample(bg.shape[1], bg.shape[2], 0)
    out = copy_paste(bg, area, h, m, torch.Generator().manual_seed(0))
    outside = (area == 0).expand_as(bg)
    assert out.shape == bg.shape and torch.equal(out[outside], bg[outside])
    assert not torch.equal(out[~outside], bg[~outside])
    assert torch.equal(copy_paste(bg, torch.zeros_like(area), h, m), bg)


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
