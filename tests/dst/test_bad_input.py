"""Issue 12, generation core (no Ray): a bad background is a reject with its reason, never a dead job.

Cases: 1 RGB / RGBA backgrounds among grayscale ones (converted), 3 a background too small for any
area, 5 missing / empty / truncated files named in the reason, 8 the size limit, a fill that fails
for one sample, 7 corrupt or foreign DST checkpoints.
"""

import argparse
import io
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from dstray.config import GenerateConfig
from dstray.data import DataError, decode_png, load_dataset, read_image, sample_root
from dstray.dst.stylize import load_dst
from dstray.dst.synth import build_synthesizer, make_rows, prepare


@pytest.fixture(scope="module")
def bad_backgrounds(tmp_path_factory):
    """The embedded sample with seven backgrounds spoiled, one way each; {what: background}."""
    root = tmp_path_factory.mktemp("bad") / "data"
    shutil.copytree(sample_root(), root)
    bgs = sorted(load_dataset(root).backgrounds(), key=lambda s: s.id)
    spoiled = dict(zip(("rgb", "rgba", "tiny", "missing", "empty", "huge", "truncated"), bgs))
    gray = lambda s: (read_image(s.image)[0].numpy() * 255).astype(np.uint8)  # noqa: E731
    g = gray(spoiled["rgb"])
    Image.fromarray(np.dstack([g, g // 2, 255 - g])).save(spoiled["rgb"].image, format="JPEG")
    g = gray(spoiled["rgba"])
    Image.fromarray(np.dstack([g, g, g, np.full_like(g, 7)])).save(spoiled["rgba"].image, format="PNG")
    Image.new("L", (4, 4), 90).save(spoiled["tiny"].image, format="JPEG")
    spoiled["missing"].image.unlink()
    spoiled["empty"].image.write_bytes(b"")
    Image.new("L", (700, 700), 90).save(spoiled["huge"].image, format="JPEG")
    spoiled["truncated"].image.write_bytes(spoiled["truncated"].image.read_bytes()[:300])
    return root, spoiled


def _ctx(root, fitted, tmp_path, **kw):
    path, _ = fitted
    (tmp_path / "models" / "blowhole").mkdir(parents=True, exist_ok=True)
    shutil.copy(path, tmp_path / "models" / "blowhole" / "model.pt")
    cfg = GenerateConfig(data=str(root), models=str(tmp_path / "models"), generator="dst", num_samples=32, seed=0,
                         type_weights={"blowhole": 1.0}, max_image_pixels=400_000, out=str(tmp_path / "gen"), **kw)
    return prepare(cfg)


def _as_the_actor_sees_it(ctx):
    """Backgrounds as file bytes (what comes out of the object store); an unreadable file stays its path."""
    out = {}
    for i, p in ctx["backgrounds"].items():
        try:
            out[i] = Path(p).read_bytes()
        except OSError:
            out[i] = p
    return dict(ctx, backgrounds=out)


def test_bad_backgrounds_become_rejects_that_name_the_file(bad_backgrounds, fitted, tmp_path, caplog):
    root, spoiled = bad_backgrounds
    ctx = _ctx(root, fitted, tmp_path)
    assert "cannot be read" in caplog.text and "rejects" in caplog.text  # the pre-flight said so first
    synth = build_synthesizer(ctx)
    for c in (ctx, _as_the_actor_sees_it(ctx)):  # from paths (plain loop) and from bytes (Ray actors)
        rows, rejects = make_rows(c, synth, c["plan"])
        assert len(rows) + len(rejects) == len(c["plan"]) == 32  # requested = written + rejected
        reasons = {r["background_id"]: r["reason"] for r in rejects}
        expect = {"tiny": "4x4", "missing": "file not found", "empty": "empty image file (0 bytes)",
                  "huge": "700x700 (0.5 MP) is over the size limit of 0.4 MP (--max-image-pixels 400000)",
                  "truncated": "truncated"}
        assert set(reasons) == {spoiled[k].id for k in expect}
        for what, text in expect.items():
            reason = reasons[spoiled[what].id]
            assert text in reason and str(spoiled[what].image) in reason, (what, reason)
            assert "<png bytes>" not in reason and "<image bytes>" not in reason
        # RGB and RGBA backgrounds are converted to the model's channel count (1), not fatal
        for what in ("rgb", "rgba"):
            (row,) = [r for r in rows if r["background_id"] == spoiled[what].id]
            assert decode_png(row["image"]).shape[0] == 1


def test_a_fill_that_fails_for_one_sample_rejects_only_that_sample(bad_backgrounds, fitted, tmp_path):
    root, spoiled = bad_backgrounds
    ctx = _ctx(root, fitted, tmp_path)
    synth = build_synthesizer(ctx)
    victim = spoiled["rgb"]
    size = tuple(read_image(victim.image).shape[1:])

    class OneBadSample:
        """The real synthesizer, except that filling the victim's background raises."""

        def __getattr__(self, name):
            return getattr(synth, name)

        def fill(self, items, batch_size=8):
            if any(tuple(item[1].shape[1:]) == size for item in items):  # item: (type, background, ...)
                raise RuntimeError("CUDA out of memory (simulated)")
            return synth.fill(items, batch_size)

    rows, rejects = make_rows(ctx, OneBadSample(), ctx["plan"], batch_size=8)
    assert len(rows) + len(rejects) == 32 and len(rejects) == 5 + 1  # the five bad files, and the victim
    bad = [r for r in rejects if r["background_id"] == victim.id]
    assert len(bad) == 1 and "RuntimeError: CUDA out of memory (simulated)" in bad[0]["reason"]
    assert str(victim.image) in bad[0]["reason"]


# --------------------------------------------------------------------------- case 7: corrupt checkpoints
def test_corrupt_or_foreign_checkpoints_are_named_with_the_fix(fitted, tmp_path):
    path, _ = fitted
    good = Path(path).read_bytes()
    cases = {
        "truncated": good[: len(good) // 2],
        "not torch": b"this is not a checkpoint",
        "unsafe pickle": _saved(argparse.Namespace(a=1)),
        "foreign dict": _saved({"weights": torch.zeros(2)}),
    }
    for what, blob in cases.items():
        bad = tmp_path / what.replace(" ", "-") / "model.pt"
        bad.parent.mkdir()
        bad.write_bytes(blob)
        with pytest.raises(DataError) as info:
            load_dst(bad)
        message = str(info.value)
        assert message.startswith(f"{bad}: ") and "dstray DST checkpoint" in message, (what, message)
        assert "re-fit it with `dstray fit-dst" in message and "weights_only" not in message, (what, message)
    # generate's pre-flight: the model's path and the command that re-fits the models folder
    root = tmp_path / "data"
    shutil.copytree(sample_root(), root)
    models = tmp_path / "models"
    (models / "blowhole").mkdir(parents=True)
    (models / "blowhole" / "model.pt").write_bytes(cases["truncated"])
    cfg = GenerateConfig(data=str(root), models=str(models), type_weights={"blowhole": 1.0}, out=str(tmp_path / "o"))
    with pytest.raises(DataError, match=r"blowhole/model.pt: corrupt or not a dstray DST checkpoint .*"
                                        r"re-fit it with `dstray fit-dst --all --data .* --out .*models`"):
        prepare(cfg)


def _saved(obj) -> bytes:
    buf = io.BytesIO()
    torch.save(obj, buf)
    return buf.getvalue()


def test_chunks_bound_memory_and_change_no_byte(fitted, tmp_path, monkeypatch):
    """Case 8: large backgrounds are filled a chunk at a time (memory), with the same rows as in one go."""
    import dstray.dst.synth as synth_module

    ctx = _ctx(sample_root(), fitted, tmp_path)
    synth = build_synthesizer(ctx)
    whole = make_rows(ctx, synth, ctx["plan"][:10])
    monkeypatch.setattr(synth_module, "CHUNK_PIXELS", 200_000)  # about one Magnetic Tile background a chunk
    chunked = make_rows(ctx, synth, ctx["plan"][:10])
    assert chunked == whole and len(whole[0]) == 10
