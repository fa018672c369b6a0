"""Area families (issue 23): procedural shapes in ranges measured on the references, ROI shrink, contrast, rows.

Sizes are checked against skimage's ``regionprops`` of the reference and of each drawn L (the
oracle), not against :func:`dstray.dst.shapes.measure`.
"""

import csv
import hashlib

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from PIL import Image
from scipy.ndimage import distance_transform_edt
from skimage.measure import label, regionprops

from dstray.config import AreaConfig, GenerateConfig
from dstray.data import read_image, read_mask
from dstray.dst.areas import AreaDoesNotFit, AreaSampler, area_for_seed, bbox
from dstray.dst.rows import AREA_FAMILY, SCHEMA, area_family_of, multi_schema
from dstray.dst.shapes import band, blob, border_region, curve, kinds_of, measure
from dstray.dst.synth import (Reference, Synthesizer, build_synthesizer, check_output, contrast_of, prepare,
                              write_shard)
from dstray.export import export, read_rows
from tests.dst.test_regions import H, W, generate_rows, make_data

TYPES = ("blowhole", "break", "crack", "fray", "uneven")
WIDEN = 2.0


def _ref(dataset, t):
    return read_mask(dataset.references(t)[0].mask)


def _largest(mask: np.ndarray):
    return max(regionprops(label(mask, connectivity=2)), key=lambda r: r.area)


def _sides(a: np.ndarray):
    return bool(a[0].any()), bool(a[-1].any()), bool(a[:, 0].any()), bool(a[:, -1].any())


def test_the_reference_family_draws_the_areas_it_drew_before(dataset):
    """The digest of the reference family's draws, computed on the code before families existed (commit aa3d4c4)."""
    h = hashlib.sha256()
    for t in TYPES:
        r = dataset.references(t)[0]
        m, im = read_mask(r.mask), read_image(r.image)
        s = AreaSampler([m], AreaConfig(family="reference"), reference_images=[im], name=t)
        for seed in range(2):
            h.update(area_for_seed(s, 240, 260, seed)[0].numpy().tobytes())
        a, warped = s.sample_with_image(240, 260, 5)
        h.update(a.numpy().tobytes())
        h.update(warped.numpy().tobytes())
    assert h.hexdigest()[:16] == "aad1cca7fb95b4ee"


def test_several_defects_of_the_reference_family_draw_the_areas_they_drew_before(dataset):
    """Defects 2.. of a sample go in the room the others leave; without a ROI the image stays what stands in for it,
    so their areas are those of the code before families (digest computed at commit aa3d4c4)."""
    masks = {t: [_ref(dataset, t)] for t in TYPES}
    synth = Synthesizer("histmatch", {}, masks)
    h = hashlib.sha256()
    for seed in range(4):
        background = read_image(dataset.backgrounds()[seed].image)
        for _, area, *_ in synth.sample_areas(["fray", "crack", "uneven", "break"], background, seed):
            h.update(area.numpy().tobytes())
    assert h.hexdigest()[:16] == "2f5cdfe5f6373d60"


def test_the_kind_rule_on_the_magnetic_tile_references(dataset):
    kinds = {t: kinds_of(measure(_ref(dataset, t))) for t in TYPES}
    assert kinds == {"blowhole": ("blob",), "break": ("border",), "crack": ("curve",), "fray": ("blob",),
                     "uneven": ("band",)}


@pytest.mark.parametrize("family", ["procedural", "mix"])
def test_same_seed_same_area_binary_non_empty_and_seeds_differ(dataset, family):
    s = AreaSampler([_ref(dataset, "crack"), _ref(dataset, "blowhole")], AreaConfig(family=family))
    a = s.sample(200, 240, 7)
    assert torch.equal(a, s.sample(200, 240, torch.Generator().manual_seed(7)))
    assert a.shape == (1, 200, 240) and a.dtype == torch.float32
    assert set(a.unique().tolist()) == {0.0, 1.0}
    draws = [s.draw(200, 240, k) for k in range(12)]
    assert len({d.mask.numpy().tobytes() for d in draws}) == 12
    families = {d.family for d in draws}
    assert families == ({"procedural"} if family == "procedural" else {"procedural", "reference"})


@pytest.mark.parametrize("t", TYPES)
def test_every_procedural_area_is_within_the_widened_ranges_of_its_reference(dataset, t):
    ref = _ref(dataset, t)
    r = _largest(ref[0].numpy() > 0.5)
    elongation = r.axis_major_length / r.axis_minor_length
    sampler = AreaSampler([ref], AreaConfig(family="procedural", widen=WIDEN, margin=3), name=t)
    touched = []
    for seed in range(16):
        a = sampler.sample(400, 600, seed)[0].numpy() > 0.5
        p = _largest(a)
        sides = _sides(a)
        touched.append(any(sides))
        if t == "uneven":  # a band: one side to a wavy boundary across the image, coverage widened
            coverage = ref[0].numpy().mean()
            assert coverage / WIDEN * 0.9 <= a.mean() <= coverage * WIDEN * 1.1
            assert (sides[0] and sides[1]) != (sides[2] and sides[3]) and sum(sides) == 3, sides
            continue
        assert r.area / WIDEN**2 * 0.9 <= p.area <= r.area * WIDEN**2 * 1.1, (seed, p.area)
        if t in ("blowhole", "fray"):  # blobs: elongation widened, a margin from every side
            assert p.axis_major_length / p.axis_minor_length <= elongation * WIDEN * 1.15
            y0, x0, y1, x1 = bbox(torch.from_numpy(a))
            assert y0 >= 3 and x0 >= 3 and y1 <= 397 and x1 <= 597
        if t == "break":  # stands on exactly one side
            assert sum(sides) == 1
        if t == "crack":  # thin: at most the widened width (2 x 6 px) across
            assert 2 * distance_transform_edt(np.pad(a, 1)).max() <= 12 * 1.1 + 1
    if t == "crack":  # a curve starts at a side in about 70 % of the draws (the reference touches one)
        assert 0.4 <= np.mean(touched) <= 0.95


def test_drawing_functions_are_seeded_and_shrink_with_the_same_noise():
    g = lambda: torch.Generator().manual_seed(3)  # noqa: E731
    for draw in (lambda f: blob(g(), 400 * f * f, 2.0, 30.0, 0.2), lambda f: border_region(g(), 400 * f * f, 3.0, 0.2),
                 lambda f: curve(g(), 80 * f, 6 * f, 0.6, anchored=True)):
        big, small = draw(1.0), draw(0.5)
        assert np.array_equal(big, draw(1.0)) and big.any() and small.any()
        assert small.sum() < big.sum() / 2.5
    anchored = curve(g(), 80, 5, 0.6, anchored=True)
    assert anchored[0].any()  # starts on row 0
    b = band(g(), 100, 150, 0.3, 0.1)
    assert b.shape[1] == 150 and b.all(0).any() and b[:, :].any(0).all()  # every column reached from row 0
    assert 0.25 <= b.sum() / (100 * 150) <= 0.35


def test_procedural_areas_keep_to_a_roi_and_shrink_into_it(dataset):
    roi = torch.zeros(1, 300, 400)
    roi[0, 100:180, 150:260] = 1  # an 110 x 80 px box away from every side
    for t in TYPES:
        ref = _ref(dataset, t)
        sampler = AreaSampler([ref], AreaConfig(family="procedural"), name=t)
        low = _largest(ref[0].numpy() > 0.5).area / WIDEN**2
        for seed in range(6):
            a = sampler.sample(300, 400, seed, roi=roi)
            assert not bool((a.bool() & ~roi.bool()).any())
            if t != "uneven":
                assert float(a.sum()) >= low * 0.85, (t, seed)
        if t == "uneven":  # the band spans the roi's box, from one of its sides
            y0, x0, y1, x1 = bbox(a[0] > 0.5)
            assert (y0, y1) == (100, 180) or (x0, x1) == (150, 260)
    tiny = torch.zeros(1, 300, 400)
    tiny[0, 140:146, 200:206] = 1
    with pytest.raises(ValueError, match=r"region of interest .* 36 px .*\(--area-widen 2\)"):
        AreaSampler([_ref(dataset, "fray")], AreaConfig(family="procedural"), max_tries=5).sample(300, 400, 0, roi=tiny)
    with pytest.raises(AreaDoesNotFit, match=r"background 50x40 cannot take a procedural fray area: its blob takes "
                       r"at least \d+x\d+ px .* raise --area-widen"):
        AreaSampler([_ref(dataset, "fray")], AreaConfig(family="procedural"), name="fray").sample(40, 50, 0)


def test_a_roi_box_stands_in_for_the_image_for_the_reference_family_too(dataset):
    """An area too large for the ROI is drawn smaller (down to scale_min) and border shapes stand on the ROI's box."""
    roi = torch.zeros(1, 300, 400)
    roi[0, 75:225, 100:300] = 1  # a centred quarter of the image: it touches no side of it
    for t in ("break", "crack", "uneven"):
        sampler = AreaSampler([_ref(dataset, t)], name=t)
        a = sampler.sample(300, 400, 1, roi=roi)
        y0, x0, y1, x1 = bbox(a[0] > 0.5)
        assert not bool((a.bool() & ~roi.bool()).any())
        assert y0 == 75 or y1 == 225 or x0 == 100 or x1 == 300  # on a side of the roi's box


def test_later_defects_stand_on_the_roi_box_not_on_the_room_the_first_left(dataset):
    roi = torch.zeros(1, 300, 400)
    roi[0, 60:240, 80:320] = 1
    masks = {t: [_ref(dataset, t)] for t in ("uneven", "break")}
    for family in ("reference", "procedural"):
        synth = Synthesizer("histmatch", {}, masks, area=AreaConfig(family=family))
        for seed in range(3):
            (_, band_area, *_), (_, chip, *_) = synth.sample_areas(["uneven", "break"], torch.rand(1, 300, 400),
                                                                   seed, roi)
            y0, x0, y1, x1 = bbox(chip[0] > 0.5)
            assert y0 == 60 or y1 == 240 or x0 == 80 or x1 == 320, (family, seed)  # a side of the roi's box
            assert not bool((chip.bool() & (band_area.bool() | ~roi.bool())).any())


def test_a_centred_quarter_roi_with_1_to_3_defects_writes_most_samples(tmp_path, dataset):
    """Issue 23's MVTec-like case: the tile in the middle of the image. Before the ROI's box stood in for the image,
    crack and uneven (border shapes) never fitted: this run wrote 4 of 12 samples; now it writes at least 10."""
    roi = np.zeros((H, W), bool)
    roi[H // 4:H // 4 + H // 2, W // 4:W // 4 + W // 2] = True
    data = make_data(tmp_path / "d", dataset, roi=roi, types=("blowhole", "crack", "uneven"))
    for family in ("reference", "procedural"):
        rows, rejects, _ = generate_rows(data, tmp_path / family, num_samples=12, seed=0, defects_per_image="1-3",
                                         area=AreaConfig(family=family))
        assert len(rows) + len(rejects) == 12 and len(rows) >= 10, (family, [r["reason"] for r in rejects])
        types = {t for r in rows for t in r["defect_type"].split(",")}
        assert {"crack", "uneven"} <= types


def test_copy_pastes_the_reference_box_into_a_procedural_area(dataset):
    r = dataset.references("blowhole")[0]
    m, im = read_mask(r.mask), read_image(r.image)
    s = AreaSampler([m], AreaConfig(family="procedural"), reference_images=[im])
    area, pixels = s.sample_with_image(200, 240, 4)
    assert torch.equal(area, s.sample(200, 240, 4))
    assert bool((pixels[:, area[0] == 0] == 0).all()) and float(pixels[:, area[0] > 0].mean()) > 0


def test_contrast_fades_the_defect_inside_l_and_keeps_the_background_outside_bit_for_bit(dataset):
    t = "crack"
    r = dataset.references(t)[0]
    image = read_image(r.image)
    ref = {t: Reference(r.id, image, read_mask(r.mask, like=image))}
    masks = {t: [read_mask(r.mask)]}
    full = Synthesizer("histmatch", ref, masks)
    faint = Synthesizer("histmatch", ref, masks, contrast=[0.1, 0.5])
    background = read_image(dataset.backgrounds()[0].image)
    seen = set()
    for seed in range(3):
        area, _ = full.sample_area(t, background, seed)
        filled = full.fill([(t, background, area, None, seed)])[0]
        out = faint.fill([(t, background, area, None, seed)])[0]
        c = contrast_of(seed, [0.1, 0.5])
        seen.add(round(c, 6))
        inside = area[0] > 0.5
        assert 0.1 <= c <= 0.5
        assert torch.equal(out[:, ~inside], background[:, ~inside])
        torch.testing.assert_close(out[:, inside], (c * filled + (1 - c) * background)[:, inside])
    assert len(seen) == 3
    with pytest.raises(ValueError, match="--contrast must be LO,HI with 0 <= LO <= HI <= 1"):
        Synthesizer("histmatch", ref, masks, contrast=[0.8, 0.2])


def test_bad_family_widen_and_contrast_are_clear_errors(tmp_path):
    with pytest.raises(ValueError, match="--area-family 'procedual' is not an area family; give one of reference"):
        prepare(GenerateConfig(generator="histmatch", area=AreaConfig(family="procedual"), out=str(tmp_path / "a")))
    with pytest.raises(ValueError, match="--area-widen must be a number >= 1"):
        prepare(GenerateConfig(generator="histmatch", area=AreaConfig(widen=0.5), out=str(tmp_path / "b")))
    with pytest.raises(ValueError, match="--contrast must be LO,HI"):
        prepare(GenerateConfig(generator="histmatch", contrast=[0.5], out=str(tmp_path / "c")))


def test_rows_carry_their_area_family_and_older_rows_read_as_reference(tmp_path, dataset):
    assert SCHEMA.field(AREA_FAMILY).type == "string" and AREA_FAMILY in multi_schema(["a"]).names
    data = make_data(tmp_path / "d", dataset, types=("blowhole", "crack"))
    rows, rejects, _ = generate_rows(data, tmp_path / "mix", num_samples=8, seed=1, area=AreaConfig(family="mix"))
    assert not rejects and {r[AREA_FAMILY] for r in rows} == {"reference", "procedural"}
    rows, _, _ = generate_rows(data, tmp_path / "multi", num_samples=4, seed=1, defects_per_image="2",
                               area=AreaConfig(family="procedural"))
    assert all(r[AREA_FAMILY] == "procedural,procedural" for r in rows)
    drawn = np.zeros((H, W), np.uint8)
    drawn[40:60, 50:140] = 255
    (tmp_path / "areas").mkdir()
    Image.fromarray(drawn).save(tmp_path / "areas" / "exp1_num_11276.png")
    rows, _, _ = generate_rows(data, tmp_path / "drawn", num_samples=2, seed=1, areas=str(tmp_path / "areas"))
    assert {r[AREA_FAMILY] for r in rows} == {"drawn"}
    assert area_family_of({"sample_id": "x"}) == "reference" and area_family_of({AREA_FAMILY: "drawn"}) == "drawn"


def test_a_dataset_written_before_the_column_reads_as_the_reference_family(tmp_path):
    cfg = GenerateConfig(generator="histmatch", num_samples=3, seed=2, type_weights={"blowhole": 1.0},
                         out=str(tmp_path / "gen"))
    ctx = prepare(cfg)
    check_output(cfg, ctx["fingerprint"], ctx["classes"])
    write_shard(ctx, build_synthesizer(ctx), 0, 3)
    part = tmp_path / "gen" / "data" / "part-00000.parquet"
    pq.write_table(pq.read_table(part).drop_columns([AREA_FAMILY]), part)  # as an older dstray wrote it
    assert len(read_rows(cfg.out)) == 3
    export(cfg.out, tmp_path / "x")
    with open(tmp_path / "x" / "manifest.csv") as f:
        assert [r["area_family"] for r in csv.DictReader(f)] == ["reference"] * 3
