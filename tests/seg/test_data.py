"""Segmentation data: letterbox, joint augmentation, the real + generated training source (small sizes, CPU)."""

from dataclasses import replace

import pyarrow as pa
import pyarrow.parquet as pq
import torch
from torchvision.transforms import v2

from dstray.data import encode_png, load_dataset
from dstray.seg.data import Letterbox, SegSource, augment, augmentation, prepare, real_samples
from tests.helpers import SMALL_SEG as SMALL


def test_letterbox_geometry_and_valid_area():
    box = Letterbox.fit(30, 60, 64)
    assert (box.inner_h, box.inner_w, box.top, box.left) == (32, 64, 16, 0)
    valid = box.valid()
    assert valid.shape == (1, 64, 64) and valid.sum() == 32 * 64 and valid[0, 16:48].all()


def test_letterbox_inverts_exactly_without_scaling_and_for_integer_upscaling():
    torch.manual_seed(0)
    image = torch.rand(3, 40, 64)
    box = Letterbox.fit(40, 64, 64)  # scale 1: pure padding
    assert torch.equal(box.invert(box.apply(image)), image)
    mask = (torch.rand(1, 20, 32) > 0.5).float()
    box = Letterbox.fit(20, 32, 64)  # scale 2 with nearest: exact on masks
    assert torch.equal(box.invert(box.apply(mask, "nearest-exact"), "nearest-exact"), mask)


def test_letterbox_inverts_smooth_images_closely():
    yy, xx = torch.meshgrid(torch.linspace(0, 1, 90), torch.linspace(0, 1, 150), indexing="ij")
    image = (0.5 + 0.25 * torch.sin(4 * xx) * torch.cos(3 * yy))[None]
    box = Letterbox.fit(90, 150, 64)
    back = box.invert(box.apply(image))
    assert back.shape == image.shape and (back - image).abs().mean() < 0.01


def _parquet(path, n=3, size=(40, 50)):
    g = torch.Generator().manual_seed(1)
    images = [encode_png(torch.rand(1, *size, generator=g)) for _ in range(n)]
    masks = [encode_png((torch.rand(1, *size, generator=g) > 0.9).float()) for _ in range(n)]
    pq.write_table(pa.table({"image": images, "mask": masks, "defect_type": ["crack"] * n}), path)
    return str(path)


def test_source_mix_limit_and_determinism(tmp_path):
    cfg = replace(SMALL, synthetic=[_parquet(tmp_path / "gen.parquet")], synthetic_fraction=0.5, real_limit=3,
                  batch_size=4)
    src = SegSource.from_config(cfg)
    assert len(src.real) == 3 and len(src.synthetic_rows) == 3 and src.channels == 1
    a = src.batch(4, torch.Generator().manual_seed(5))
    b = src.batch(4, torch.Generator().manual_seed(5))
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert a["image"].shape == (4, 1, 64, 64) and a["mask"].shape == a["valid"].shape == (4, 1, 64, 64)
    assert set(a["mask"].unique().tolist()) <= {0.0, 1.0} and (a["mask"] * (1 - a["valid"])).sum() == 0
    state = torch.get_rng_state()
    src.batch(4, torch.Generator().manual_seed(6))
    assert torch.equal(state, torch.get_rng_state())  # augmentation leaves the global RNG alone


def test_augmentation_moves_image_and_mask_together():
    image = torch.zeros(1, 64, 64)
    image[:, 10:20, 5:15] = 1.0  # a bright square, exactly labelled
    item = prepare(image, (image > 0.5).float(), 64, 1)
    exact = v2.Compose(augmentation(64).transforms[:3])  # flips + 90°: no interpolation
    for seed in range(6):
        out = augment(item, exact, torch.Generator().manual_seed(seed))
        assert torch.equal(out["mask"], (out["image"] > 0.5).float())
    out = augment(item, augmentation(64), torch.Generator().manual_seed(0))
    assert out["image"].shape == (1, 64, 64) and set(out["mask"].unique().tolist()) <= {0.0, 1.0}


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
