"""The realism score: crops around labels, KID, C2ST, the real-vs-real floor, `dstray score`."""

import numpy as np
import pytest
import torch

from dstray.dst.realism import CROP_MIN, CROP_SIZE, c2st, crop_around, kid


def test_crop_around_is_centred_square_and_stays_inside():
    image = torch.arange(200 * 300, dtype=torch.float32).view(1, 200, 300) / (200 * 300)
    mask = torch.zeros(1, 200, 300)
    mask[0, 90:110, 140:180] = 1  # 40 px wide: crop side 60, centred on (100, 160)
    crop = crop_around(image, mask)
    assert crop.shape == (3, CROP_SIZE, CROP_SIZE) and torch.equal(crop[0], crop[1])
    small = torch.zeros(1, 200, 300)
    small[0, 0:4, 296:300] = 1  # a tiny label in a corner: CROP_MIN, shifted inside (no padding needed)
    c = crop_around(image, small)
    want = torch.nn.functional.interpolate(image[None, :, 0:CROP_MIN, 300 - CROP_MIN:], size=(CROP_SIZE, CROP_SIZE),
                                           mode="bilinear", antialias=True, align_corners=False)[0, 0]
    assert torch.allclose(c[0], want, atol=1e-6)
    with pytest.raises(ValueError, match="empty"):
        crop_around(image, torch.zeros(1, 200, 300))


def test_kid_and_c2st_tell_shifted_distributions_apart_and_not_equal_ones():
    rng = np.random.default_rng(0)
    real = rng.normal(size=(40, 64))
    same = rng.normal(size=(60, 64))
    shifted = rng.normal(size=(60, 64)) + 0.8
    assert abs(kid(same, real)) < 0.05 < kid(shifted, real)
    assert 0.3 < c2st(same, real, repeats=5) < 0.7
    assert c2st(shifted, real, repeats=5) > 0.95
    assert np.isnan(c2st(real[:2], real[2:4]))  # too few crops: undefined, not a number to read


def test_score_command_on_the_embedded_sample(tmp_path, capsys):
    from dstray.cli import main
    from dstray.dst.synth import SCHEMA, build_synthesizer, make_rows, prepare
    import pyarrow as pa
    import pyarrow.parquet as pq
    from dstray.config import GenerateConfig

    ctx = prepare(GenerateConfig(generator="histmatch", num_samples=20, out=str(tmp_path / "gen")))
    rows, _ = make_rows(ctx, build_synthesizer(ctx), ctx["plan"])
    (tmp_path / "hm").mkdir()
    pq.write_table(pa.Table.from_pylist(rows, SCHEMA), tmp_path / "hm" / "part-0.parquet")
    assert main(["score", "--generated", f"histmatch={tmp_path / 'hm'}", "--split", "train",
                 "--repeats", "2", "--out", str(tmp_path / "score")]) == 0
    out = capsys.readouterr().out
    assert "real vs real (floor)" in out and "| histmatch |" in out
    assert (tmp_path / "score" / "realism-train.json").exists() and (tmp_path / "score" / "realism-train.md").exists()
    assert main(["score", "--generated", str(tmp_path / "hm"), "--split", "nosuch"]) == 2
