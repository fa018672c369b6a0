"""The generation core (plan, generators, rows, shards) without Ray."""

import shutil
import subprocess
import sys

import numpy as np
import torch
from scipy import ndimage

from dstray.config import GenerateConfig
from dstray.data import decode_png, load_dataset, read_image, read_mask
from dstray.dst.stylize import load_dst, stylize_file
from dstray.dst.synth import build_synthesizer, make_rows, prepare


def test_the_generation_core_does_not_import_ray():
    code = "import sys, dstray.dst.synth; assert 'ray' not in sys.modules, sorted(m for m in sys.modules if 'ray' in m)"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_stylize_with_a_rows_seed_draws_that_rows_area(fitted, tmp_path):
    """`dstray stylize --seed S` on a row's background gives the row's label L (and its image)."""
    path, _ = fitted
    (tmp_path / "models" / "blowhole").mkdir(parents=True)
    shutil.copy(path, tmp_path / "models" / "blowhole" / "model.pt")
    cfg = GenerateConfig(models=str(tmp_path / "models"), generator="dst", num_samples=4, seed=5,
                         type_weights={"blowhole": 1.0}, out=str(tmp_path / "gen"))
    ctx = prepare(cfg)
    rows, rejects = make_rows(ctx, build_synthesizer(ctx), ctx["plan"])
    assert len(rows) == 4 and not rejects
    for row in rows:
        out = tmp_path / row["sample_id"]
        stylize_file(path, ctx["backgrounds"][row["background_id"]], out, seed=row["seed"], mode=cfg.mode,
                     patch_size=cfg.patch_size)
        assert (out / "mask.png").read_bytes() == row["mask"]
        image = decode_png((out / "stylized.png").read_bytes())
        assert (image - decode_png(row["image"])).abs().max() <= 1 / 255 + 1e-6


def test_checkpoints_carry_every_reference_mask_and_old_ones_fall_back(fitted, tmp_path):
    path, _ = fitted
    ckpt = torch.load(path, weights_only=True)
    assert len(ckpt["area_masks"]) == 1 and torch.equal(ckpt["area_masks"][0], ckpt["reference"]["mask"])
    del ckpt["area_masks"]  # a checkpoint written before area_masks was stored
    torch.save(ckpt, tmp_path / "old.pt")
    model = load_dst(tmp_path / "old.pt")
    assert len(model.area_masks) == 1 and torch.equal(model.area_masks[0], model.reference_mask)


def test_dst_strength_blends_t_of_y_prime_with_y_prime_inside_l_only(fitted, tmp_path):
    """--dst-strength 0.25,0.75: inside L a T(y') + (1 - a) y' with the sample's a; outside L the background, bit for bit.

    One per-defect seed rule (:func:`dstray.seeds.defect_seed`): a single-defect sample's L and its strength are
    drawn from the sample's own seed, in the generation rows (:func:`make_rows`) as in ``Synthesizer.__call__``.
    """
    from dstray.data import encode_png
    from dstray.dst.stylize import stylize_batch
    from dstray.dst.synth import strength_of
    from dstray.seeds import defect_seed

    path, _ = fitted
    (tmp_path / "models" / "blowhole").mkdir(parents=True)
    shutil.copy(path, tmp_path / "models" / "blowhole" / "model.pt")
    cfg = GenerateConfig(models=str(tmp_path / "models"), generator="dst", num_samples=3, seed=2,
                         type_weights={"blowhole": 1.0}, out=str(tmp_path / "gen"), dst_strength=[0.25, 0.75])
    ctx = prepare(cfg)
    synth = build_synthesizer(ctx)
    rows, rejects = make_rows(ctx, synth, ctx["plan"])
    assert len(rows) == 3 and not rejects
    model = synth.models["blowhole"]
    strengths = set()
    for p, row in zip(ctx["plan"], rows):
        background = read_image(ctx["backgrounds"][p["background_id"]])
        assert defect_seed(p["seed"], 0) == p["seed"]
        area, _ = synth.sample_area("blowhole", background, p["seed"])
        image = synth.fill([("blowhole", background, area, None, p["seed"])])[0]
        assert encode_png(image) == row["image"] and encode_png(area) == row["mask"]  # the rows' rule
        alone, alone_area = synth("blowhole", background, p["seed"])
        assert torch.equal(alone, image) and torch.equal(alone_area, area)  # and the one-sample call's
        ref = stylize_batch(model, [background], [area], mode=cfg.mode, patch_size=cfg.patch_size)
        a = strength_of(p["seed"], cfg.dst_strength)
        strengths.add(round(a, 6))
        assert 0.25 <= a <= 0.75
        inside = area[0] > 0.5
        expected = a * ref["image"][0] + (1 - a) * ref["histmatch"][0]
        torch.testing.assert_close(image[:, inside], expected.clamp(0, 1)[:, inside])
        assert torch.equal(image[:, ~inside], background[:, ~inside])
    assert len(strengths) == 3  # each sample its own strength


def _oracle_visibility(image: np.ndarray, mask: np.ndarray) -> float:
    """dstray's visibility measure written again with scipy: |mean(L) - mean(6-px ring)| / (std(ring) + 1/255)."""
    inside = mask[0] > 0.5
    grey = image[0] if image.shape[0] == 1 else np.tensordot([0.299, 0.587, 0.114], image[:3], 1)
    around = ndimage.binary_dilation(inside, np.ones((13, 13), bool)) & ~inside
    return float(abs(grey[inside].mean() - grey[around].mean()) / (grey[around].std() + 1 / 255))


def test_min_visibility_turns_invisible_samples_into_rejects_and_keeps_the_others_as_they_were(tmp_path):
    ratio = 1.0
    base = dict(generator="histmatch", num_samples=24, seed=3, out=str(tmp_path / "gen"))
    free = prepare(GenerateConfig(**base))
    everything, none_rejected = make_rows(free, build_synthesizer(free), free["plan"])
    assert len(everything) == 24 and not none_rejected
    ctx = prepare(GenerateConfig(**base, min_visibility=ratio))
    assert ctx["fingerprint"] != free["fingerprint"]  # another dataset: a resumed run cannot mix the two
    rows, rejects = make_rows(ctx, build_synthesizer(ctx), ctx["plan"])
    assert len(rows) + len(rejects) == 24 and rows and rejects  # requested = written + rejected
    by_id = {r["sample_id"]: r for r in everything}
    for row in rows:  # a kept sample is the very sample made without the check
        assert row["image"] == by_id[row["sample_id"]]["image"] and row["mask"] == by_id[row["sample_id"]]["mask"]
    refs = {}
    for s in load_dataset(None).references():
        if s.defect_type not in refs:
            image = read_image(s.image).numpy()
            refs[s.defect_type] = _oracle_visibility(image, read_mask(s.mask, like=read_image(s.image)).numpy())
    vis = lambda r: _oracle_visibility(decode_png(r["image"]).numpy(), decode_png(r["mask"]).numpy())  # noqa: E731
    for row in rows:
        assert vis(row) >= ratio * refs[row["defect_type"]] * 0.98, row["sample_id"]
    for rej in rejects:
        assert "label not visible" in rej["reason"] and "--min-visibility 1" in rej["reason"]
        assert vis(by_id[rej["sample_id"]]) < ratio * refs[rej["defect_type"]] * 1.02, rej["sample_id"]
