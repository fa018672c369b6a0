"""Helpers shared by the tests (test-only code lives here, not in the package)."""

import contextlib

import numpy as np
import torch
from torch import Tensor

from dstray.config import DSTConfig, SegConfig
from dstray.dst.areas import _as_generator, _check_mask, _randint
from dstray.dst.histmatch import histmatch
from dstray.seg.metrics import SegCounts

# small and fast DST fit: 48-px windows, 2 backgrounds a step (the defaults are 96 and 4), a short warm-up,
# 4 of the sample's 32 backgrounds held out for the check of DST against y'. lr 1e-3 over a 10-step warm-up: with
# lr 2e-3 over 5 steps the first steps overshot and the held-out loss at step 25 depended on the torch thread
# count (blowhole: 3.17 at 1-2 threads, 8.53 at 3, 3.82 at 4, against 3.31 untrained); at 1e-3 / 10 it is
# 3.16-3.22 at 1 to 4 threads.
FAST_DST = DSTConfig(defect_type="blowhole", batch_size=2, patch_size=48, lr=1e-3, steps=30, warmup_steps=10,
                     heldout=4, log_every=10, checkpoint_every=20, seed=1, device="cpu")

# small segmentation runs: random-init ResNet-18 (fast on CPU), 64-px windows, 32-px Buttonlab crops, batches
# of 2, real train + reference images
SMALL_SEG = SegConfig(arch="buttonlab", backbone="resnet18", weights="random", window=64, crop_size=32,
                      batch_size=2, real_splits=["train", "reference"], augment=True, seed=0)

# tiny Ray Train / Tune runs: 4 steps, evaluated every 2, half of each batch generated
TINY_SEG = SegConfig(backbone="resnet18", weights="random", window=64, crop_size=32, steps=4, eval_every=2,
                     batch_size=2, real_splits=["train"], synthetic_fraction=0.5, seed=0)


@contextlib.contextmanager
def torch_threads(n: int):
    """Run the block with ``n`` torch intra-op threads, then restore the caller's count.

    For session fixtures: pytest sets them up before any module fixture (such as ``one_thread``),
    so without this they would run at whatever count the process had then."""
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


# --------------------------------------------------------------------------- user-given areas L
class FixedAreas:
    """User-supplied areas L with the :class:`AreaSampler` interface.

    masks: list of (1,H,W) binary non-empty masks (any sizes). ``sample`` draws uniformly
    among the masks of the requested size (and inside ``roi`` when given).
    """

    def __init__(self, masks: list[Tensor]):
        if not masks:
            raise ValueError("FixedAreas needs at least one mask")
        self.masks = [_check_mask(m, f"area mask {i}") for i, m in enumerate(masks)]

    def sample(
        self, height: int, width: int, generator: torch.Generator | int, roi: Tensor | None = None
    ) -> Tensor:
        fits = [m for m in self.masks if m.shape == (height, width)]
        if roi is not None:
            inside = _check_mask(roi, "roi")
            fits = [m for m in fits if inside.shape == m.shape and not bool((m & ~inside).any())]
        if not fits:
            raise ValueError(
                f"none of the {len(self.masks)} given areas is {height}x{width}"
                + (" and inside the roi" if roi is not None else "")
                + "; give one area mask per image size"
            )
        return fits[_randint(_as_generator(generator), 0, len(fits) - 1)][None].float()


def areas_from_masks(masks: list[Tensor] | Tensor, height: int, width: int) -> Tensor:
    """Validate user-supplied areas L: each binary, non-empty, height x width.

    masks: list of (1,H,W) or a (K,1,H,W) tensor. Returns (K,1,H,W) float {0,1}.
    """
    out = []
    for i, m in enumerate(masks):
        b = _check_mask(m, f"area mask {i}")
        if b.shape != (height, width):
            raise ValueError(f"area mask {i} is {tuple(b.shape)}; the image is {height}x{width}")
        out.append(b[None].float())
    if not out:
        raise ValueError("no area masks given")
    return torch.stack(out)


# --------------------------------------------------------------------------- numpy front end of histmatch
def histmatch_np(
    source: np.ndarray, source_mask: np.ndarray, reference: np.ndarray, reference_mask: np.ndarray
) -> np.ndarray:
    """Numpy front end of :func:`histmatch` for one image.

    source (H,W) or (H,W,C), source_mask (H,W) (bool or nonzero = inside), reference
    (Hr,Wr) or (Hr,Wr,C), reference_mask (Hr,Wr). Values are matched in the source's value
    range (no rescaling). Float input keeps its dtype; integer input returns float64, as
    skimage does.
    """
    src = np.asarray(source)
    if src.ndim not in (2, 3) or np.ndim(reference) != src.ndim:
        raise ValueError(
            "source and reference must both be HxW or HxWxC; got "
            f"{np.shape(source)} and {np.shape(reference)}"
        )
    dtype = src.dtype if src.dtype.kind == "f" else np.float64

    def to_nchw(a: np.ndarray) -> Tensor:
        t = torch.from_numpy(np.ascontiguousarray(a, dtype=dtype))
        return t[None, None] if t.dim() == 2 else t.permute(2, 0, 1)[None]

    def mask_t(a: np.ndarray) -> Tensor:
        return torch.from_numpy(np.asarray(a) != 0)[None, None]

    out = histmatch(to_nchw(src), mask_t(source_mask), to_nchw(reference), mask_t(reference_mask))[0]
    out = out[0] if src.ndim == 2 else out.permute(1, 2, 0)
    return out.numpy()


# --------------------------------------------------------------------------- score tables
def f1_table(counts: dict[str, SegCounts]) -> list[dict]:
    """One row per named set of counts (``{"name": ..., tp, fp, fn, tn, precision, recall, f1, iou}``)."""
    return [{"name": name, **c.scores()} for name, c in counts.items()]


# --------------------------------------------------------------------------- an MVTec AD layout from the sample
def make_mvtec(root, dataset, types=None, n_good_train: int = 12, n_good_test: int = 3):
    """Write the embedded sample as an MVTec AD category under ``root``; returns the expected counts.

    Every image of each defect type goes to ``test/<type>/NNN.png`` (8-bit PNG) with its mask at
    ``ground_truth/<type>/NNN_mask.png``; the first ``n_good_train`` backgrounds to ``train/good/``, the
    next ``n_good_test`` to ``test/good/``. Returns ``{"defects": {type: n}, "train_good": n, "test_good": n}``.
    """
    from pathlib import Path

    from PIL import Image

    root = Path(root)
    types = types or dataset.defect_types
    counts = {"defects": {}, "train_good": 0, "test_good": 0}
    for t in types:
        rows = sorted((s for s in dataset.samples if s.defect_type == t), key=lambda s: s.id)
        (root / "test" / t).mkdir(parents=True, exist_ok=True)
        (root / "ground_truth" / t).mkdir(parents=True, exist_ok=True)
        for i, s in enumerate(rows):
            Image.open(s.image).save(root / "test" / t / f"{i:03d}.png")
            Image.open(s.mask).save(root / "ground_truth" / t / f"{i:03d}_mask.png")
        counts["defects"][t] = len(rows)
    free = sorted((s for s in dataset.samples if s.defect_type == "free"), key=lambda s: s.id)
    for folder, part in (("train", free[:n_good_train]), ("test", free[n_good_train:n_good_train + n_good_test])):
        (root / folder / "good").mkdir(parents=True, exist_ok=True)
        for i, s in enumerate(part):
            Image.open(s.image).save(root / folder / "good" / f"{i:03d}.png")
        counts[f"{folder}_good"] = len(part)
    return counts


# --------------------------------------------------------------------------- a small copy of the embedded sample
def small_sample(root, scale: int = 3):
    """The embedded sample with every image and mask ``scale`` times smaller (masks: a pixel is in the defect
    when any pixel it covers was), under ``root``; generation on it is ~7x cheaper. Returns ``root``."""
    import shutil
    from pathlib import Path

    from PIL import Image

    from dstray.data import sample_root

    src, root = Path(sample_root()), Path(root)
    for p in sorted(src.rglob("*")):
        if p.is_dir():
            continue
        q = root / p.relative_to(src)
        q.parent.mkdir(parents=True, exist_ok=True)
        if p.suffix.lower() not in (".jpg", ".png"):
            shutil.copyfile(p, q)
            continue
        image = Image.open(p)
        size = (max(1, image.width // scale), max(1, image.height // scale))
        if "masks" in p.relative_to(src).parts:
            image.convert("L").resize(size, Image.BOX).point(lambda v: 255 if v > 0 else 0).save(q)
        else:
            image.resize(size, Image.BILINEAR).save(q, **({"quality": 95} if p.suffix.lower() == ".jpg" else {}))
    return root
