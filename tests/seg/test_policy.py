"""The data policy (how generated samples enter training): schedule, type/generator choice, loss weight, ignore band."""

import argparse
from dataclasses import replace

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from skimage.morphology import dilation, erosion

from dstray.config import DataPolicy, SegConfig
from dstray.data import encode_png
from dstray.labels import label_band
from dstray.policy import allowed_indices, batch_counts, filter_table, reference_visibility
from dstray.seg.data import SegSource, loss_weight
from tests.helpers import SMALL_SEG as SMALL


def _table(path, types, generators):
    g = torch.Generator().manual_seed(0)
    rows = []
    for i, (t, gen) in enumerate(zip(types, generators)):
        image, mask = torch.rand(1, 40, 40, generator=g), torch.zeros(1, 40, 40)
        mask[:, 10:20, 10:20 + i] = 1.0
        image[:, 0, 0] = i / 255  # the row's index, readable after decoding (the corner pixel)
        rows.append({"image": encode_png(image), "mask": encode_png(mask), "defect_type": t, "generator": gen})
    pq.write_table(pa.Table.from_pylist(rows), path)
    return path


def test_the_schedule_ends_on_real_images_only():
    cfg = replace(SMALL, batch_size=8, steps=20, synthetic_fraction=0.5, policy=DataPolicy(real_only_last=0.25))
    counts = [batch_counts(cfg, real=True, synthetic=True, free=False, step=s).synthetic for s in range(20)]
    assert counts == [4] * 15 + [0] * 5
    assert batch_counts(cfg, real=False, synthetic=True, free=False, step=19).synthetic == 8  # nothing real to fall back on
    assert batch_counts(cfg, real=True, synthetic=False, free=False, step=0).synthetic == 0


@pytest.mark.parametrize("width", [0, 1, 3])
def test_the_ignore_band_is_dilation_minus_erosion(width):
    rng = np.random.default_rng(width)
    mask = np.zeros((2, 1, 32, 32), bool)
    mask[0, 0, 5:20, 8:14] = True
    mask[1, 0, rng.integers(0, 32, 40), rng.integers(0, 32, 40)] = True
    mask[1, 0, 0:6, 0:9] = True  # touches the window's edge
    ours = label_band(torch.from_numpy(mask).float(), width).numpy()
    for i in range(2):
        if width == 0:
            assert not ours[i, 0].any()
            continue
        fp = np.ones((2 * width + 1, 2 * width + 1), bool)
        oracle = dilation(mask[i, 0], fp) & ~erosion(mask[i, 0], fp)
        assert np.array_equal(ours[i, 0], oracle)


def test_loss_weight_weights_and_blanks_only_the_generated_items():
    batch = {"valid": torch.ones(3, 1, 16, 16), "mask": torch.zeros(3, 1, 16, 16)}
    batch["mask"][:, :, 4:10, 4:10] = 1.0
    batch["valid"][2, :, :, 12:] = 0.0
    cfg = replace(SMALL, policy=DataPolicy(synthetic_weight=0.5, ignore_band=1))
    w = loss_weight(batch, 2, cfg)
    band = label_band(batch["mask"], 1)
    assert torch.equal(w[2], batch["valid"][2])  # real: untouched
    assert (w[:2][band[:2]] == 0).all() and (w[:2][~band[:2]] == 0.5).all()


def test_policy_rows_keep_what_each_type_is_fed(tmp_path):
    types = ["crack", "crack", "uneven", "uneven", "fray", "fray"]
    gens = ["dst", "copy", "dst", "histmatch", "copy", "dst"]
    table = pq.read_table(_table(tmp_path / "a.parquet", types, gens))
    policy = DataPolicy(generators={"crack": "dst", "uneven": "none"})  # fray unnamed: mix
    assert allowed_indices(table, policy) == [i for i, (t, g) in enumerate(zip(types, gens))
                                          if (t == "crack" and g == "dst") or t == "fray"]
    assert allowed_indices(table, DataPolicy()) == list(range(6))
    from dstray.policy import check_policy
    with pytest.raises(ValueError, match="choose one of"):
        check_policy(replace(SMALL, policy=DataPolicy(generators={"crack": "paint"})))


def test_type_shares_decide_which_rows_are_drawn(tmp_path):
    path = _table(tmp_path / "b.parquet", ["crack", "crack", "fray", "fray"], ["dst"] * 4)
    cfg = replace(SMALL, real_splits=[], synthetic=[str(path)], batch_size=6, augment=False, window=40,
                  window_context=0, policy=DataPolicy(type_shares={"crack": 1.0, "fray": 0.0}))
    src = SegSource(cfg, [], cfg.synthetic, channels=1)
    assert src.synthetic_types == ["crack", "crack", "fray", "fray"]
    g = torch.Generator().manual_seed(3)
    areas = set()
    for _ in range(5):  # the window holds the whole 40 x 40 image: the label's area names the row (100 + 10 i)
        areas |= {int(a) for a in src.batch(6, g, step=0)["mask"].sum((1, 2, 3))}
    assert areas == {100, 110}  # rows 0 and 1 (crack) only, both drawn
    even = replace(cfg, policy=DataPolicy(type_shares={"crack": 1.0, "fray": 1.0}))
    src = SegSource(even, [], even.synthetic, channels=1)
    areas = [int(a) for _ in range(20) for a in src.batch(6, g, step=0)["mask"].sum((1, 2, 3))]
    assert 0.3 < sum(a >= 120 for a in areas) / len(areas) < 0.7  # fray about half the draws


def test_the_policy_comes_from_the_command_line_and_is_recorded():
    from dstray.cli.args import add_config_args, build_config

    p = argparse.ArgumentParser()
    add_config_args(p, SegConfig)
    args = p.parse_args(["--policy-generators", "crack=dst,uneven=none", "--policy-type-shares", "crack=2,fray=1",
                         "--policy-real-only-last", "0.3", "--policy-ignore-band", "2"])
    cfg = build_config(SegConfig, args)
    assert cfg.policy == DataPolicy(generators={"crack": "dst", "uneven": "none"},
                                    type_shares={"crack": 2.0, "fray": 1.0}, real_only_last=0.3, ignore_band=2)
    from dstray.config import from_dict, to_dict
    assert from_dict(SegConfig, to_dict(cfg)).policy == cfg.policy


def test_the_data_search_space_sets_the_policy_of_a_trial():
    pytest.importorskip("ray.tune")
    from dstray.distributed.space import DATA_SPACE, apply_params, parse_space

    space = parse_space(["policy_ignore_band=1,3"], search="data")
    assert set(space) == set(DATA_SPACE) and space["policy_ignore_band"] == "1,3"
    assert {"free_fraction", "policy_area_family", "policy_min_visibility", "policy_gen_*"} <= set(space)
    cfg = apply_params(SegConfig(), {"policy_default_generator": "copy", "synthetic_fraction": 0.25,
                                     "policy_synthetic_weight": 0.3})
    assert cfg.synthetic_fraction == 0.25 and cfg.policy == DataPolicy(default_generator="copy", synthetic_weight=0.3)
    with pytest.raises(ValueError, match="not a SegConfig field"):
        parse_space(["policy_nope=1"], search="data")
    # policy_gen_*: one key per defect type of the dataset, each setting that type's generator
    from dstray.data import load_dataset
    from dstray.distributed.space import check_space

    expanded = check_space(parse_space([], search="data"), replace(SMALL, synthetic=["x"], real_splits=["reference"]))
    assert "policy_gen_*" not in expanded
    assert {k for k in expanded if k.startswith("policy_gen_")} == {f"policy_gen_{t}"
                                                                   for t in load_dataset(None).defect_types}
    trial = apply_params(SegConfig(), {"policy_gen_crack": "none", "policy_gen_fray": "copy", "free_fraction": 0.25})
    assert trial.policy.generators == {"crack": "none", "fray": "copy"} and trial.free_fraction == 0.25
    with pytest.raises(ValueError, match="is not one of"):
        parse_space(["policy_gen_crack=paint"], search="data")


def test_the_default_generator_feeds_the_types_not_named(tmp_path):
    types, gens = ["crack", "crack", "fray", "fray"], ["dst", "copy", "dst", "copy"]
    table = pq.read_table(_table(tmp_path / "c.parquet", types, gens))
    assert allowed_indices(table, DataPolicy(generators={"crack": "mix"}, default_generator="copy")) == [0, 1, 3]


def test_visibility_against_numpy_and_the_invisible_rows_are_dropped(tmp_path):
    from scipy import ndimage

    from dstray.labels import is_visible, visibility

    rng = np.random.default_rng(0)
    image = rng.uniform(0.4, 0.6, (1, 48, 48)).astype(np.float32)
    mask = np.zeros((1, 48, 48), np.float32)
    mask[0, 20:28, 15:30] = 1
    image[0][mask[0] > 0] -= 0.3  # a dark defect
    inside = mask[0] > 0
    ring = ndimage.binary_dilation(inside, np.ones((13, 13), bool)) & ~inside  # 6 px, chessboard
    oracle = abs(image[0][inside].mean() - image[0][ring].mean()) / (image[0][ring].std() + 1 / 255)
    v = visibility(torch.from_numpy(image), torch.from_numpy(mask))
    assert v == pytest.approx(oracle, rel=1e-5) and v > 3
    faint = image.copy()
    faint[0][inside] += 0.29  # almost the background again
    assert not is_visible(torch.from_numpy(faint), torch.from_numpy(mask), v, 0.5)[0]
    assert "label not visible" in is_visible(torch.from_numpy(faint), torch.from_numpy(mask), v, 0.5)[1]
    everything = np.ones((1, 48, 48), np.float32)
    assert visibility(torch.from_numpy(image), torch.from_numpy(everything)) == 0.0  # no ring: nothing to see


def test_min_visibility_drops_the_rows_whose_label_shows_nothing(tmp_path):
    # rows 0-1: the corner-marked random image under a 10 x (10+i) label (nothing drawn there); row 2: a dark label
    g = torch.Generator().manual_seed(0)
    rows = []
    for i, dark in enumerate([False, False, True]):
        image, mask = 0.5 + 0.05 * torch.rand(1, 40, 40, generator=g), torch.zeros(1, 40, 40)
        mask[:, 10:20, 10:20 + i] = 1.0
        if dark:
            image[mask.bool()] = 0.1
        rows.append({"image": encode_png(image), "mask": encode_png(mask), "defect_type": "crack", "generator": "dst"})
    path = tmp_path / "v.parquet"
    pq.write_table(pa.Table.from_pylist(rows), path)
    cfg = replace(SMALL, real_splits=["reference"], synthetic=[str(path)], policy=DataPolicy(min_visibility=0.5))
    src = SegSource(cfg, [], cfg.synthetic, channels=1)
    assert src.dropped == {"crack": 2} and len(src.synthetic_rows) == 1
    # the Ray Train stream applies the same rule in its Ray Data filter (the driver passes the references' visibility)
    from dstray.config import to_dict
    table = pq.read_table(path)
    kept = filter_table(table, to_dict(cfg.policy), reference_visibility(cfg.data))
    assert kept.column("image").to_pylist() == [rows[2]["image"]]
    assert filter_table(table, to_dict(cfg.policy), None).num_rows == 3  # no references given: no check


# --------------------------------------------------------------------------- the defect-free share
def test_batch_counts_hold_the_free_share_through_the_real_only_finish():
    cfg = replace(SMALL, batch_size=8, steps=10, synthetic_fraction=0.25, free_fraction=0.25,
                  policy=DataPolicy(real_only_last=0.2))
    counts = [batch_counts(cfg, real=True, synthetic=True, free=True, step=s) for s in range(10)]
    assert [(c.synthetic, c.free, c.real) for c in counts] == [(2, 2, 4)] * 8 + [(0, 2, 6)] * 2
    assert batch_counts(cfg, real=True, synthetic=False, free=True) == batch_counts(cfg, real=True, synthetic=True,
                                                                                     free=True, step=9)
    assert batch_counts(cfg, real=False, synthetic=True, free=True).synthetic == 6  # generated fill the rest
    assert batch_counts(cfg, real=True, synthetic=True, free=False).free == 0  # no defect-free images given
    from dstray.policy import check_policy
    with pytest.raises(ValueError, match="leave no room for defect images"):
        check_policy(replace(cfg, synthetic=["x"], real_splits=["reference"], synthetic_fraction=0.75,
                             free_fraction=0.5))


def test_the_free_share_draws_whole_background_windows_from_the_free_rows():
    from dstray.data import load_dataset
    from dstray.seg.data import free_samples

    cfg = replace(SMALL, real_splits=["reference"], free_fraction=0.5, batch_size=4, augment=False, window=64)
    free = free_samples(cfg)
    ds = load_dataset(None)
    assert free and [s.id for s in free] == [s.id for s in ds.split("background")]  # every background, in order
    assert free_samples(replace(cfg, free_fraction=0.0)) == []
    src = SegSource.from_config(cfg)
    g = torch.Generator().manual_seed(0)
    touching, n = 0, 0
    for _ in range(40):
        batch = src.batch(4, g, step=0)
        assert batch["has_defect"].tolist() == [False, False, True, True]  # 2 defect-free windows, then 2 references
        assert int(batch["mask"][:2].sum()) == 0 and int(batch["mask"][2:].sum()) > 0
    # the windows on defect-free images: flush with a side about half the time beyond chance (BORDER_WINDOWS)
    from dstray.seg.data import BORDER_WINDOWS, window_box

    item = src.free[0]
    _, height, width = item["image"].shape
    for _ in range(400):
        top, left, h, w = window_box(item, 32, g, centred=False)
        touching += top == 0 or left == 0 or top + h == height or left + w == width
        n += 1
    chance = 1 - (1 - 2 / (height - 31)) * (1 - 2 / (width - 31))
    assert abs(touching / n - (BORDER_WINDOWS + (1 - BORDER_WINDOWS) * chance)) < 0.08


def test_a_free_split_that_selects_is_refused_and_one_without_clean_rows_warns():
    from dstray.seg.checks import check_inputs

    with pytest.raises(ValueError, match="selects"):
        check_inputs(replace(SMALL, free_fraction=0.25, free_splits=["val"]))
    check_inputs(replace(SMALL, free_fraction=0.25, free_splits=["reference"]))  # no clean rows: a warning, no share
    assert SegSource.from_config(replace(SMALL, free_fraction=0.25, free_splits=["reference"])).free == []


# --------------------------------------------------------------------------- area families
def test_the_area_family_lever_picks_rows_by_their_column(tmp_path):
    types, gens = ["crack"] * 4, ["dst", "dst", "histmatch", "histmatch"]
    table = pq.read_table(_table(tmp_path / "f.parquet", types, gens))
    assert allowed_indices(table, DataPolicy(area_family="procedural")) == []  # no column: every row is 'reference'
    assert filter_table(table, DataPolicy(area_family="procedural")).num_rows == 0  # no row left: an empty table
    assert allowed_indices(table, DataPolicy(area_family="reference")) == [0, 1, 2, 3]
    table = table.append_column("area_family", pa.array(["reference", "procedural"] * 2))
    assert allowed_indices(table, DataPolicy(area_family="procedural")) == [1, 3]
    assert allowed_indices(table, DataPolicy(area_family="procedural", default_generator="dst")) == [1]
    assert allowed_indices(table, DataPolicy()) == [0, 1, 2, 3]
    from dstray.policy import check_policy
    with pytest.raises(ValueError, match="--policy-area-family"):
        check_policy(replace(SMALL, policy=DataPolicy(area_family="drawn-by-hand")))
