"""Target areas L: sampling from reference masks, border contact, ROI, patch windows."""

import csv
from pathlib import Path

import pytest
import torch
from skimage import io

from dstray.config import AreaConfig
from dstray.dst.areas import AreaDoesNotFit, AreaSampler, bbox, crop_window, paste_window
from tests.helpers import FixedAreas, areas_from_masks

MT = Path("/work/shared/data/magnetic-tile")


def _ellipse(h, w, cy, cx, ry, rx):
    yy, xx = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    return ((((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2) <= 1).float()[None]


def interior():  # a blob well inside its 60x80 image
    return _ellipse(60, 80, 30, 40, 8, 14)


def on_bottom():  # a half-disc standing on the bottom edge of its 50x70 image
    return _ellipse(50, 70, 49, 30, 12, 9)


def band():  # spans its 40x90 image from left to right, touching the top
    m = torch.zeros(1, 40, 90)
    m[0, :10, :] = 1
    m[0, 10:14, 20:50] = 1
    return m


def sides(area):
    m = area[0].bool()
    return bool(m[0].any()), bool(m[-1].any()), bool(m[:, 0].any()), bool(m[:, -1].any())


def test_same_seed_same_area_and_different_seeds_differ():
    s = AreaSampler([interior(), on_bottom()])
    a = s.sample(100, 120, torch.Generator().manual_seed(7))
    assert torch.equal(a, s.sample(100, 120, torch.Generator().manual_seed(7)))
    assert torch.equal(a, s.sample(100, 120, 7))  # an int seed works too
    others = [s.sample(100, 120, torch.Generator().manual_seed(k)) for k in range(8, 12)]
    assert any(not torch.equal(a, o) for o in others)
    assert a.shape == (1, 100, 120) and a.dtype == torch.float32
    assert set(a.unique().tolist()) <= {0.0, 1.0} and a.sum() > 0


def test_inside_the_image_with_margin():
    cfg = AreaConfig(margin=5)
    s = AreaSampler([interior()], cfg)
    g = torch.Generator().manual_seed(0)
    for _ in range(30):
        y0, x0, y1, x1 = bbox(s.sample(70, 90, g))
        assert y0 >= 5 and x0 >= 5 and y1 <= 65 and x1 <= 85


@pytest.mark.parametrize("scale", [0.6, 1.0, 1.5])
def test_area_scales_with_scale_squared(scale):
    ref = interior()
    rigid = dict(aspect=0, elastic=0)  # the stretch keeps the area, the elastic bend only on average
    s = AreaSampler([ref], AreaConfig(scale_min=scale, scale_max=scale, max_rotation=0, flip=False, **rigid))
    a = s.sample(120, 160, torch.Generator().manual_seed(1))
    assert float(a.sum()) == pytest.approx(float(ref.sum()) * scale**2, rel=0.15)
    # with rotations and flips the area is kept roughly
    s = AreaSampler([ref], AreaConfig(scale_min=scale, scale_max=scale, **rigid))
    g = torch.Generator().manual_seed(2)
    for _ in range(10):
        assert float(s.sample(120, 160, g).sum()) == pytest.approx(float(ref.sum()) * scale**2, rel=0.2)


def test_too_large_shape_is_shrunk_to_fit_down_to_scale_min_then_refused():
    big = _ellipse(200, 200, 100, 100, 90, 90)  # 181 px across
    s = AreaSampler([big], AreaConfig(margin=3, scale_min=0.2, scale_max=1.0, elastic=0, aspect=0))
    g = torch.Generator().manual_seed(0)
    for _ in range(5):  # fits at scale <= ~0.24: shrunk into the room, never below scale_min
        y0, x0, y1, x1 = bbox(s.sample(50, 60, g))
        assert y0 >= 3 and x0 >= 3 and y1 <= 47 and x1 <= 57 and (y1 - y0 >= 34 or x1 - x0 >= 34)
    strict = AreaSampler([big], AreaConfig(margin=3, scale_min=0.75), name="fray")
    with pytest.raises(AreaDoesNotFit, match=r"background 60x50 cannot take a fray area of at least 1\d\dx1\d\d px"):
        strict.sample(50, 60, g)
    with pytest.raises(ValueError, match="16x16"):  # AreaDoesNotFit is a ValueError: generation's reject path
        strict.sample(16, 16, g)


def test_elastic_bend_varies_the_outline_and_keeps_the_area_on_average():
    ref = interior()
    cfg = AreaConfig(scale_min=1, scale_max=1, max_rotation=0, flip=False, aspect=0)
    s = AreaSampler([ref], cfg)
    areas = [s.sample(120, 160, torch.Generator().manual_seed(k)) for k in range(30)]
    sums = torch.tensor([float(a.sum()) for a in areas])
    assert abs(float(sums.mean()) / float(ref.sum()) - 1) < 0.15
    centred = [a[0, slice(*bbox(a)[::2]), slice(*bbox(a)[1::2])] for a in areas]
    assert len({tuple(c.shape) for c in centred}) > 5  # the outline changes from draw to draw
    rigid = AreaSampler([ref], AreaConfig(scale_min=1, scale_max=1, max_rotation=0, flip=False, aspect=0, elastic=0))
    shapes = {tuple(rigid.sample(120, 160, k)[0].nonzero().amin(0).tolist()) for k in range(5)}  # only moved
    assert all(float(rigid.sample(120, 160, k).sum()) == float(ref.sum()) for k in range(5)) and len(shapes) > 1


def test_thin_line_stays_in_one_piece():
    from scipy.ndimage import label

    line = torch.zeros(1, 120, 60)
    line[0, 10:110, 29:32] = 1  # a 3-px wide, 100-px long "crack"
    s = AreaSampler([line])
    g = torch.Generator().manual_seed(0)
    pieces = [label(s.sample(200, 200, g)[0].numpy())[1] for _ in range(20)]
    assert sum(p == 1 for p in pieces) >= 18, pieces


def test_sample_with_image_warps_the_reference_like_the_label():
    ref_mask = on_bottom()
    ref_image = torch.rand(1, 50, 70)
    cfg = AreaConfig(scale_min=1, scale_max=1, aspect=0, elastic=0)  # quarter turns and flips only: exact
    s = AreaSampler([ref_mask], cfg, reference_images=[ref_image])
    for seed in range(6):
        area, image = s.sample_with_image(80, 100, seed)
        assert torch.equal(area, s.sample(80, 100, seed))  # the same draws, the same L
        assert bool((image[:, area[0] == 0] == 0).all())
        # the pasted pixels are the reference's own pixels of M (in some quarter turn / flip)
        inside = image[0][area[0] > 0]
        want = ref_image[0][ref_mask[0] > 0]
        assert inside.numel() == want.numel()
        assert torch.allclose(inside.sort().values, want.sort().values, atol=1e-5)


def test_border_contact_kept_for_a_border_reference_only():
    g = torch.Generator().manual_seed(3)
    s = AreaSampler([on_bottom()], AreaConfig(margin=4))
    for _ in range(20):
        assert sum(sides(s.sample(80, 100, g))) == 1  # one side, like the reference
    upright = AreaSampler([on_bottom()], AreaConfig(max_rotation=0, flip=False))
    assert sides(upright.sample(80, 100, g)) == (False, True, False, False)
    free = AreaSampler([on_bottom()], AreaConfig(margin=4, keep_border_contact=False))
    interior_sampler = AreaSampler([interior()], AreaConfig(margin=4))
    for _ in range(20):
        for a in (free.sample(80, 100, g), interior_sampler.sample(80, 100, g)):
            y0, x0, y1, x1 = bbox(a)
            assert y0 >= 4 and x0 >= 4 and y1 <= 76 and x1 <= 96


def test_spanning_reference_spans_the_target():
    g = torch.Generator().manual_seed(4)
    s = AreaSampler([band()], AreaConfig(max_rotation=0, flip=False))
    a = s.sample(70, 130, g)
    assert sides(a) == (True, False, True, True)  # full width, on the top
    s = AreaSampler([band()])  # with quarter turns: spans one axis, touches a third side
    for _ in range(10):
        t, b, left, right = sides(s.sample(70, 130, g))
        assert (t and b) or (left and right)
        assert t + b + left + right == 3


def test_roi_is_respected_and_impossible_roi_is_an_error():
    roi = torch.zeros(1, 80, 100)
    roi[0, :, :50] = 1
    s = AreaSampler([interior()], AreaConfig(scale_min=0.5, scale_max=0.8))
    g = torch.Generator().manual_seed(5)
    for _ in range(10):
        a = s.sample(80, 100, g, roi=roi)
        assert not bool((a.bool() & ~roi.bool()).any())
    tiny = torch.zeros(1, 80, 100)
    tiny[0, 40, 40] = 1
    with pytest.raises(ValueError, match="roi"):
        AreaSampler([interior()], max_tries=5).sample(80, 100, g, roi=tiny)


def test_invalid_masks_are_clear_errors():
    with pytest.raises(ValueError, match="binary"):
        AreaSampler([interior() * 0.5])
    with pytest.raises(ValueError, match="empty"):
        AreaSampler([torch.zeros(1, 10, 10)])
    with pytest.raises(ValueError, match=r"\(1,H,W\)"):
        AreaSampler([torch.ones(10, 10)])
    with pytest.raises(ValueError, match="60x80|image is"):
        areas_from_masks([interior()], 50, 80)


def test_fixed_areas():
    a, b = interior(), torch.flip(interior(), [-1])
    fixed = FixedAreas([a, b, on_bottom()])
    g = torch.Generator().manual_seed(0)
    draws = [fixed.sample(60, 80, g) for _ in range(10)]
    assert all(torch.equal(d, a) or torch.equal(d, b) for d in draws)
    assert torch.equal(fixed.sample(60, 80, 3), fixed.sample(60, 80, 3))
    with pytest.raises(ValueError, match="33x33"):
        fixed.sample(33, 33, g)
    assert areas_from_masks([a, b], 60, 80).shape == (2, 1, 60, 80)


def test_crop_window():
    area = torch.zeros(1, 200, 300)
    area[0, 90:110, 140:170] = 1
    top, left, h, w = crop_window(area, 96)
    assert (h, w) == (96, 96)
    assert top <= 90 and top + h >= 110 and left <= 140 and left + w >= 170
    assert abs((top + h / 2) - 100) <= 1 and abs((left + w / 2) - 155) <= 1  # centred
    # near a corner: shifted into the image, still containing L
    corner = torch.zeros(1, 200, 300)
    corner[0, 0:5, 290:300] = 1
    assert crop_window(corner, 64) == (0, 236, 64, 64)
    # L larger than the size: grown to a multiple of 4 with context
    big = torch.zeros(1, 200, 300)
    big[0, 10:111, 50:80] = 1
    top, left, h, w = crop_window(big, 64)
    assert h == w and h % 4 == 0 and h >= 101 + 8 and top <= 10 and top + h >= 111
    # image smaller than the window: the whole dimension
    small = torch.zeros(1, 40, 300)
    small[0, 10:20, 100:110] = 1
    top, left, h, w = crop_window(small, 64)
    assert (top, h, w) == (0, 40, 64) and left <= 100 and left + w >= 110


def test_paste_window_roundtrip():
    full = torch.rand(3, 50, 60)
    box = (10, 20, 16, 16)
    win = full[:, 10:26, 20:36] * 0 + 1
    out = paste_window(full, win, box)
    assert torch.equal(out[:, 10:26, 20:36], win) and out.sum() != full.sum()
    out[:, 10:26, 20:36] = full[:, 10:26, 20:36]
    assert torch.equal(out, full)
    with pytest.raises(ValueError):
        paste_window(full, win, (40, 50, 16, 16))


@pytest.mark.skipif(not (MT / "splits.csv").exists(), reason="Magnetic Tile data not present")
def test_real_magnetic_tile_references():
    rows = [r for r in csv.DictReader(open(MT / "splits.csv")) if r["split"] == "reference"]
    assert len(rows) == 5
    g = torch.Generator().manual_seed(0)
    for r in rows:
        ref = torch.from_numpy(io.imread(MT / r["mask"]) >= 128)[None].float()
        touches = any(sides(ref))
        s = AreaSampler([ref])
        for _ in range(3):
            a = s.sample(260, 240, g)
            assert a.shape == (1, 260, 240) and a.sum() > 0
            assert any(sides(a)) == touches, r["defect_type"]
            top, left, h, w = crop_window(a, 96)
            assert a[0, top : top + h, left : left + w].sum() == a.sum()  # the window holds all of L
