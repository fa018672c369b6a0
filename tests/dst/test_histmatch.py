"""Masked histogram matching against scikit-image's match_histograms (the oracle)."""

import csv
from pathlib import Path

import numpy as np
import pytest
import torch
from skimage import io
from skimage.exposure import match_histograms

from dstray.dst.histmatch import histmatch, match_features, match_to_sorted, sort_reference
from tests.helpers import histmatch_np

MT = Path("/work/shared/data/magnetic-tile")
GREY = 1 / 255


def _oracle(src, src_mask, ref, ref_mask):
    """skimage on the extracted pixels (1-D per channel), put back. HxWxC float arrays."""
    out = src.copy()
    for c in range(src.shape[-1]):
        out[..., c][src_mask] = match_histograms(src[..., c][src_mask], ref[..., c][ref_mask])
    return out


def _nchw(a):
    return torch.from_numpy(np.ascontiguousarray(a)).permute(2, 0, 1)[None]


def _blob(rng, h, w):
    """A random elliptic blob mask (h, w) bool."""
    yy, xx = np.mgrid[:h, :w]
    cy, cx = rng.uniform(0.2, 0.8) * h, rng.uniform(0.2, 0.8) * w
    ry, rx = rng.uniform(0.1, 0.4) * h, rng.uniform(0.1, 0.4) * w
    return ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1


@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("kind", ["uint8-levels", "continuous"])
def test_whole_image_equals_skimage(channels, kind):
    rng = np.random.default_rng(channels)
    if kind == "uint8-levels":  # many ties, like 8-bit images
        src = (rng.integers(0, 256, (37, 45, channels)) / 255).astype(np.float32)
        ref = (rng.normal(120, 30, (29, 33, channels)).clip(0, 255).round() / 255).astype(np.float32)
    else:
        src = rng.random((37, 45, channels), dtype=np.float32)
        ref = rng.random((29, 33, channels), dtype=np.float32) ** 3
    exp = match_histograms(src, ref, channel_axis=-1)
    ones = lambda a: torch.ones(1, 1, *a.shape[:2])  # noqa: E731
    got = histmatch(_nchw(src), ones(src), _nchw(ref), ones(ref))[0].permute(1, 2, 0).numpy()
    assert np.abs(got - exp).max() <= GREY


@pytest.mark.parametrize("channels", [1, 3])
def test_masked_equals_skimage_on_pixels_and_outside_is_untouched(channels):
    rng = np.random.default_rng(10 + channels)
    src = (rng.integers(0, 256, (48, 40, channels)) / 255).astype(np.float32)
    ref = rng.random((30, 35, channels), dtype=np.float32)
    sm, rm = _blob(rng, 48, 40), _blob(rng, 30, 35)
    exp = _oracle(src, sm, ref, rm)
    s = _nchw(src)
    got = histmatch(s, torch.from_numpy(sm)[None, None].float(), _nchw(ref), torch.from_numpy(rm)[None, None])
    assert np.abs(got[0].permute(1, 2, 0).numpy() - exp).max() <= GREY
    outside = ~torch.from_numpy(sm).expand(channels, -1, -1)
    assert torch.equal(got[0][outside], s[0][outside])


def test_batch_of_different_masks_equals_one_by_one():
    rng = np.random.default_rng(3)
    n = 5
    src = torch.from_numpy(rng.random((n, 2, 24, 30), dtype=np.float32))
    ref = torch.from_numpy(rng.random((n, 2, 20, 22), dtype=np.float32))
    sm = torch.from_numpy(np.stack([_blob(rng, 24, 30) for _ in range(n)]))[:, None]
    rm = torch.from_numpy(np.stack([_blob(rng, 20, 22) for _ in range(n)]))[:, None]
    sm[2] = False  # an empty source mask leaves that sample unchanged
    sm[0] = False
    sm[0, 0, 3, 4] = True  # one pixel: size classes 1 .. 10 in one batch
    sm[3] = True
    rm[1] = False
    rm[1, 0, 5, 5] = True  # a one-pixel reference
    batch = histmatch(src, sm, ref, rm)
    one = [histmatch(src[i : i + 1], sm[i : i + 1], ref[i : i + 1], rm[i : i + 1]) for i in range(n)]
    assert torch.equal(batch, torch.cat(one))
    assert torch.equal(batch[2], src[2])
    assert torch.equal(batch[0, :, 3, 4], ref[0][rm[0].expand(2, -1, -1)].view(2, -1).max(-1).values)
    assert torch.equal(batch[1][sm[1].expand(2, -1, -1)].view(2, -1).unique(dim=-1), ref[1, :, 5, 5, None])
    # one shared reference (1,C,...) broadcast over the batch, also precomputed
    shared = histmatch(src, sm, ref[:1], rm[:1])
    assert torch.equal(shared, histmatch(src, sm, sort_reference(ref[:1], rm[:1])))
    assert torch.equal(shared[4], histmatch(src[4:], sm[4:], ref[:1], rm[:1])[0])


def test_empty_reference_mask_is_a_clear_error():
    src, m = torch.rand(1, 1, 8, 8), torch.ones(1, 1, 8, 8)
    with pytest.raises(ValueError, match="reference mask is empty"):
        histmatch(src, m, src, torch.zeros(1, 1, 8, 8))


def test_numpy_equals_torch_and_keeps_float_dtype():
    rng = np.random.default_rng(4)
    for shape in [(20, 26), (20, 26, 3)]:
        src, ref = rng.random(shape), rng.random(shape) ** 2
        sm, rm = _blob(rng, 20, 26), _blob(rng, 20, 26)
        for dtype in (np.float32, np.float64):
            got = histmatch_np(src.astype(dtype), sm, ref.astype(dtype), rm)
            assert got.dtype == dtype and got.shape == shape
            def t(a):
                return torch.from_numpy(a.astype(dtype).reshape(20, 26, -1)).permute(2, 0, 1)[None]

            def tm(a):
                return torch.from_numpy(a)[None, None]

            via_torch = histmatch(t(src), tm(sm), t(ref), tm(rm))
            assert np.array_equal(got, via_torch[0].permute(1, 2, 0).numpy().reshape(shape))
    u8 = (rng.random((10, 10)) * 255).astype(np.uint8)
    assert histmatch_np(u8, u8 > 100, u8, u8 < 100).dtype == np.float64


def test_match_to_sorted_and_features():
    rng = np.random.default_rng(5)
    vals, ref = rng.random((3, 50)), rng.random((3, 70))
    got = match_to_sorted(torch.from_numpy(vals), torch.from_numpy(np.sort(ref, -1)))
    exp = np.stack([match_histograms(v, r) for v, r in zip(vals, ref)])
    assert np.abs(got.numpy() - exp).max() < 1e-12
    feats = torch.rand(2, 64, 9, 11, requires_grad=True)
    mask = torch.rand(2, 1, 9, 11) > 0.6
    ref_feats, ref_mask = torch.rand(1, 64, 7, 8) * 5, torch.rand(1, 1, 7, 8) > 0.5
    target = match_features(feats, mask, ref_feats, ref_mask)
    assert not target.requires_grad
    assert torch.equal(target, match_features(feats, mask, sort_reference(ref_feats, ref_mask)))
    inside = target.permute(1, 0, 2, 3)[:, mask[:, 0]]  # (C, pixels in L)
    assert inside.min() >= ref_feats.min() and inside.max() <= ref_feats.max()


def _references():
    rows = list(csv.DictReader(open(MT / "splits.csv")))
    refs = [r for r in rows if r["split"] == "reference"]
    frees = [r for r in rows if r["split"] == "background"][:3]
    return refs, frees


@pytest.mark.skipif(not (MT / "splits.csv").exists(), reason="Magnetic Tile data not present")
def test_real_magnetic_tile_images():
    refs, frees = _references()
    for ref_row, free_row in zip(refs, frees):
        ref = io.imread(MT / ref_row["image"]).astype(np.float32)[..., None] / 255
        rm = io.imread(MT / ref_row["mask"]) >= 128
        src = io.imread(MT / free_row["image"]).astype(np.float32)[..., None] / 255
        whole = np.ones(src.shape[:2], bool)
        # whole image against the whole reference
        got = histmatch_np(src, whole, ref, np.ones(ref.shape[:2], bool))
        assert np.abs(got - match_histograms(src, ref, channel_axis=-1)).max() <= GREY
        # a blob of the background matched to the real defect region
        sm = _blob(np.random.default_rng(0), *src.shape[:2])
        got = histmatch_np(src, sm, ref, rm)
        assert np.abs(got - _oracle(src, sm, ref, rm)).max() <= GREY
        assert np.array_equal(got[~sm], src[~sm])


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_cuda_equals_cpu():
    g = torch.Generator().manual_seed(0)
    src, ref = torch.rand(4, 3, 64, 64, generator=g), torch.rand(1, 3, 40, 48, generator=g)
    sm, rm = torch.rand(4, 1, 64, 64, generator=g) > 0.7, torch.rand(1, 1, 40, 48, generator=g) > 0.5
    cpu = histmatch(src, sm, ref, rm)
    gpu = histmatch(src.cuda(), sm.cuda(), ref.cuda(), rm.cuda())
    assert gpu.is_cuda and (gpu.cpu() - cpu).abs().max() <= 1e-6
    assert torch.equal(gpu.cpu()[~sm.expand_as(src)], src[~sm.expand_as(src)])


def test_8bit_histogram_path_equals_sorted_path():
    """Decoded 8-bit images take the histogram fast path; it must equal the general sorted path."""
    rng = np.random.default_rng(21)
    n, ch = 5, 3
    src = torch.from_numpy(rng.integers(0, 256, (n, ch, 33, 41)) / 255).float()  # exact k/255: fast path
    masks = torch.stack([torch.from_numpy(_blob(rng, 33, 41)) for _ in range(n)])[:, None]
    masks[2] = False  # an empty area is left unchanged
    ref = torch.from_numpy(rng.random((1, ch, 30, 30)) ** 2).float()
    ref_mask = torch.from_numpy(_blob(rng, 30, 30))[None, None]
    fast = histmatch(src, masks, ref, ref_mask)
    # float64 copies of float32 k/255 are not k/255 in float64, so this call takes the sorted path
    slow = histmatch(src.double(), masks, ref.double(), ref_mask).float()
    assert torch.allclose(fast, slow, atol=1e-6, rtol=0)
    assert torch.equal(fast[~masks.expand_as(src)], src[~masks.expand_as(src)])
    assert torch.equal(fast[2], src[2])
