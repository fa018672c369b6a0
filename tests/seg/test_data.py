"""Segmentation data: windows at native resolution, the centring rule, padding, Buttonlab's crop, the mix."""

import math
from dataclasses import replace

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from dstray.data import encode_png, load_dataset
from dstray.seg.data import (SegSource, augment, cut_window, draw_crop, make_item, mirror_index, mirror_pad,
                             mixed_batch, pad_to_multiple, real_samples)
from tests.helpers import SMALL_SEG as SMALL


def _item(height, width, defects=(), channels=1, seed=0):
    image = torch.rand(channels, height, width, generator=torch.Generator().manual_seed(seed))
    mask = torch.zeros(1, height, width)
    for y, x in defects:
        mask[0, y, x] = 1
    return make_item(image, mask, channels)


def test_mirror_padding_any_amount():
    assert mirror_index(4, 2, 2).tolist() == [2, 1, 0, 1, 2, 3, 2, 1]
    assert mirror_index(3, 5, 0).tolist() == [1, 0, 1, 2, 1, 0, 1, 2]  # longer than the axis: keeps reflecting
    assert mirror_index(1, 2, 1).tolist() == [0, 0, 0, 0]
    x = torch.arange(12.0).view(1, 3, 4)
    padded = mirror_pad(x, 1, 2, 3, 0)
    assert padded.shape == (1, 6, 7) and torch.equal(padded[:, 1:4, 3:], x)
    image = torch.rand(2, 1, 30, 33)
    padded = pad_to_multiple(image, 16)
    assert padded.shape == (2, 1, 32, 48) and torch.equal(padded[..., :30, :33], image)


def test_window_at_native_resolution_and_padding_marked_invalid():
    g = torch.Generator().manual_seed(0)
    item = _item(40, 100, defects=[(20, 50)])
    w = cut_window(item, 64, g, centred=False, augment_it=False)
    top, left, h, wd = w["box"]
    assert (h, wd) == (40, 64) and top == 0
    assert w["image"].shape == w["mask"].shape == w["valid"].shape == (1, 64, 64)
    assert w["valid"].sum() == 40 * 64 and w["valid"][0, 12:52].all()  # the image part, centred vertically
    # the image part is the image itself, pixel for pixel (no resizing); padding mirrors it, without labels
    assert torch.equal(w["image"][0, 12:52], item["image"][0, :, left:left + 64].float() / 255)
    assert torch.equal(w["image"][0, 11], w["image"][0, 13])  # mirrored
    assert w["mask"][w["valid"] == 0].sum() == 0


def test_a_window_with_context_shows_the_border_with_mirrored_image_beyond_it_and_no_label_there():
    import numpy as np

    item = _item(50, 70, defects=[(0, 0), (49, 69)])
    c, size = 16, 40
    seen_corner = False
    for seed in range(40):
        w = cut_window(item, size, torch.Generator().manual_seed(seed), centred=seed % 2 == 0, augment_it=False,
                       context=c)
        top, left, h, wd = w["box"]  # on the image padded by c: numpy's reflect padding is the oracle
        oracle = np.pad(item["image"][0].numpy(), c, mode="reflect")[top:top + h, left:left + wd] / 255
        assert np.array_equal(w["image"][0].numpy(), oracle.astype(np.float32))
        inside = np.pad(np.ones((50, 70)), c)[top:top + h, left:left + wd]
        assert np.array_equal(w["valid"][0].numpy(), inside)  # the loss sees the image only
        assert w["mask"][w["valid"] == 0].sum() == 0 and w["mask"].sum() == item["mask"][0].numpy()[
            max(top - c, 0):max(top - c + h, 0), max(left - c, 0):max(left - c + wd, 0)].sum()
        seen_corner |= bool(w["valid"][0, 0, 0] == 0)
    assert seen_corner  # windows do reach past the image
    # no context: the window lies on the image, as before
    w = cut_window(item, size, torch.Generator().manual_seed(0), centred=False, augment_it=False)
    assert w["valid"].all()


def test_a_window_with_context_is_augmented_with_its_valid_part():
    item = _item(50, 70, defects=[(0, 0)])
    for seed in range(12):
        w = cut_window(item, 40, torch.Generator().manual_seed(seed), centred=True, augment_it=True, context=16)
        assert w["mask"].sum() == 1 and w["valid"].sum() < 40 * 40  # the corner pixel: mirrored image beside it
        assert w["mask"][w["valid"] == 0].sum() == 0


def test_a_centred_window_has_its_defect_pixel_at_the_centre():
    item = _item(300, 400, defects=[(150, 123)])
    for seed in range(5):
        w = cut_window(item, 64, torch.Generator().manual_seed(seed), centred=True, augment_it=False)
        top, left, h, wd = w["box"]
        dy, dx = 150 - (top + 32), 123 - (left + 32)
        assert max(abs(dy), abs(dx)) <= 64 // 8  # at the centre, up to the jitter
        assert w["mask"][0, 150 - top, 123 - left] == 1
    corner = _item(300, 400, defects=[(2, 397)])  # near the border: clipped, the pixel stays inside
    w = cut_window(corner, 64, torch.Generator().manual_seed(0), centred=True, augment_it=False)
    assert w["box"][:2] == (0, 336) and w["mask"].sum() == 1


def test_at_least_half_of_the_defect_windows_are_centred_on_a_defect_pixel():
    cfg = replace(SMALL, window=32, center_fraction=0.5, augment=False)
    defect = [_item(200, 200, defects=[(100, 100)], seed=i) for i in range(3)]  # one pixel in 40000
    free = [_item(200, 200, seed=10 + i) for i in range(2)]
    for seed in range(20):
        b = mixed_batch([], defect + free, 7, torch.Generator().manual_seed(seed), cfg)
        n_defect = int(b["has_defect"].sum())
        assert int(b["centred"].sum()) == math.ceil(0.5 * n_defect)
        assert not (b["centred"] & ~b["has_defect"]).any()
        for i in b["centred"].nonzero()[:, 0]:
            assert b["mask"][i].sum() == 1  # the window holds the defect pixel (a uniform one rarely does)
    all_centred = mixed_batch([], defect, 4, torch.Generator().manual_seed(0), replace(cfg, center_fraction=1.0))
    assert all_centred["centred"].all() and (all_centred["mask"].flatten(1).sum(1) == 1).all()


def test_augmentation_moves_image_and_mask_together_exactly():
    image = torch.zeros(1, 20, 30)
    image[:, 3:8, 5:9] = 1.0  # a bright rectangle, exactly labelled
    mask = (image > 0.5).float()
    for seed in range(8):
        out_image, out_mask = augment(image, mask, torch.Generator().manual_seed(seed))
        assert out_mask.sum() == mask.sum()
        bright = out_image > out_image.mean()
        assert torch.equal(bright.float(), out_mask)  # jitter changes the values, never where they are


def test_buttonlab_crop_is_even_and_inside_the_image_part_of_every_window():
    valid = torch.zeros(3, 1, 64, 64)
    valid[0, :, 11:53, :] = 1  # 42 rows of image, odd top: the crop starts on an even row after it
    valid[1, :, :, 5:59] = 1
    valid[2] = 1
    for seed in range(20):
        top, left, h, w = draw_crop(valid, 32, torch.Generator().manual_seed(seed))
        assert all(v % 2 == 0 for v in (top, left, h, w)) and (h, w) == (32, 32)
        assert valid[:, :, top:top + h, left:left + w].min() == 1
    top, left, h, w = draw_crop(valid, 60, torch.Generator().manual_seed(0))  # larger than the common part
    assert (h, w) == (40, 52) and valid[:, :, top:top + h, left:left + w].min() == 1


def _parquet(path, n=3, size=(40, 50)):
    g = torch.Generator().manual_seed(1)
    images = [encode_png(torch.rand(1, *size, generator=g)) for _ in range(n)]
    masks = [encode_png((torch.rand(1, *size, generator=g) > 0.9).float()) for _ in range(n)]
    pq.write_table(pa.table({"image": images, "mask": masks, "defect_type": ["crack"] * n}), path)
    return str(path)


def test_source_mix_limit_and_determinism(tmp_path):
    cfg = replace(SMALL, synthetic=[_parquet(tmp_path / "gen.parquet")], synthetic_fraction=0.5, real_limit=3,
                  batch_size=4, window_context=0)  # no context: a 40x50 row fits a 64 window whole
    src = SegSource.from_config(cfg)
    assert len(src.real) == 3 and len(src.synthetic_rows) == 3 and src.channels == 1
    assert src.real[0]["image"].dtype == torch.uint8  # kept at native resolution, 8 bits
    a = src.batch(4, torch.Generator().manual_seed(5))
    b = src.batch(4, torch.Generator().manual_seed(5))
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert a["image"].shape == (4, 1, 64, 64) and a["mask"].shape == a["valid"].shape == (4, 1, 64, 64)
    assert (a["valid"][:2].sum((1, 2, 3)) == 40 * 50).all()  # the two generated 40x50 rows, padded
    assert set(a["mask"].unique().tolist()) <= {0.0, 1.0} and (a["mask"] * (1 - a["valid"])).sum() == 0
    state = torch.get_rng_state()
    src.batch(4, torch.Generator().manual_seed(6))
    assert torch.equal(state, torch.get_rng_state())  # every draw from the caller's generator


def test_real_limit_takes_every_reference_then_train_samples_across_types():
    ds = load_dataset(None)
    n_refs = len(ds.references())
    picked = real_samples(replace(SMALL, real_splits=["reference", "train"], real_limit=n_refs + 3))
    assert [s.split for s in picked[:n_refs]] == ["reference"] * n_refs  # every type's reference comes first
    assert {s.defect_type for s in picked[:n_refs]} == set(ds.defect_types)
    extra = picked[n_refs:]
    assert len(extra) == 3 and all(s.split == "train" for s in extra)
    assert len({s.defect_type for s in extra}) == 3  # spread over types, not the first 3 of one type
    assert real_samples(replace(SMALL, real_splits=["reference", "train"], real_limit=None)) == \
        ds.split("reference") + ds.split("train")


@pytest.mark.parametrize("channels", [1, 3])
def test_items_keep_their_channels(channels):
    item = _item(10, 12, defects=[(1, 2)], channels=channels)
    assert item["image"].shape == (channels, 10, 12) and item["defect"].tolist() == [[1, 2]]
