"""Benchmark: batched torch masked histogram matching vs scikit-image per region.

The first step of DST (Wei et al., Algorithm 2) on a batch of Magnetic-Tile-sized
grayscale backgrounds: each image's area L is matched to a reference defect region M.
Compares, on the same inputs, ``dstray.dst.histmatch.histmatch`` on the whole batch, the
same function called one sample at a time, and skimage's ``match_histograms`` on the
extracted pixels of each region (put back). Real MT images/masks are used when
``/work/shared/data/magnetic-tile`` exists, random images and blobs otherwise.

    python bench/histmatch_bench.py [--n 64] [--size 256] [--device cpu] [--threads 1] [--data random]
"""

from __future__ import annotations

import argparse
import csv
import time
from pathlib import Path

import numpy as np
import torch
from skimage import io, transform
from skimage.exposure import match_histograms

from dstray.dst.histmatch import histmatch

MT = Path("/work/shared/data/magnetic-tile")


def _blob(rng: np.random.Generator, size: int) -> np.ndarray:
    yy, xx = np.mgrid[:size, :size]
    cy, cx = rng.uniform(0.3, 0.7, 2) * size
    ry, rx = rng.uniform(0.05, 0.3, 2) * size
    return ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1


def _inputs(n: int, size: int, data: str = "auto", seed: int = 0):
    """sources (n,size,size) float32, masks (n,size,size) bool, reference + mask (HxW)."""
    rng = np.random.default_rng(seed)
    masks = np.stack([_blob(rng, size) for _ in range(n)])
    if data != "random" and (MT / "splits.csv").exists():
        rows = list(csv.DictReader(open(MT / "splits.csv")))
        free = [r for r in rows if r["split"] == "background"][:n]
        ref = next(r for r in rows if r["split"] == "reference" and r["defect_type"] == "fray")
        # decoded 8-bit backgrounds (values k/255, what DST matches), cropped/reflect-padded to size
        def window(a: np.ndarray) -> np.ndarray:
            a = np.pad(a, [(0, max(0, size - a.shape[0])), (0, max(0, size - a.shape[1]))], mode="reflect")
            return a[:size, :size]

        src = np.stack([window(io.imread(MT / free[i % len(free)]["image"])) for i in range(n)])
        src = src.astype(np.float32) / 255
        defect_masks = [r for r in rows if r["split"] in ("train", "reference")]
        for i in range(0, n, 2):  # half the areas are real defect masks, resized
            m = io.imread(MT / defect_masks[i % len(defect_masks)]["mask"]) >= 128
            masks[i] = transform.resize(m, (size, size), order=0) > 0.5
        masks[masks.reshape(n, -1).sum(1) == 0] = _blob(rng, size)
        ref_image = io.imread(MT / ref["image"]).astype(np.float32) / 255
        return src, masks, ref_image, io.imread(MT / ref["mask"]) >= 128, "magnetic-tile"
    src = rng.random((n, size, size), dtype=np.float32)
    return src, masks, rng.random((size, size), dtype=np.float32) ** 2, _blob(rng, size), "random"


def _best(fn, repeats: int) -> tuple[float, object]:
    best, out = float("inf"), None
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - t0)
    return best, out


def run(n: int = 64, size: int = 256, repeats: int = 3, device: str = "cpu", data: str = "auto") -> dict:
    """Time the three implementations on the same inputs; returns seconds, ratios, max diffs.

    data: "auto" (Magnetic Tile when present, else random) or "random".
    """
    src, masks, ref, ref_mask, data = _inputs(n, size, data)

    def skimage_regions():
        out = src.copy()
        for i in range(n):
            out[i][masks[i]] = match_histograms(src[i][masks[i]], ref[ref_mask])
        return out

    s = torch.from_numpy(src)[:, None].to(device)
    m = torch.from_numpy(masks)[:, None].to(device)
    r = torch.from_numpy(ref)[None, None].to(device)
    rm = torch.from_numpy(ref_mask)[None, None].to(device)
    t_sk, out_sk = _best(skimage_regions, repeats)
    t_batch, out_batch = _best(lambda: histmatch(s, m, r, rm), repeats)
    def torch_loop():
        return torch.cat([histmatch(s[i : i + 1], m[i : i + 1], r, rm) for i in range(n)])

    t_loop, out_loop = _best(torch_loop, repeats)
    out_batch = out_batch[:, 0].cpu().numpy()
    return {
        "data": data,
        "device": device,
        "n": n,
        "size": size,
        "torch_threads": torch.get_num_threads(),
        "skimage_s": t_sk,
        "torch_batched_s": t_batch,
        "torch_loop_s": t_loop,
        "speedup_vs_skimage": t_sk / t_batch,
        "batched_vs_loop": t_loop / t_batch,
        "max_abs_diff": float(np.abs(out_batch - out_sk).max()),
        "max_abs_diff_grey_levels": float(np.abs(out_batch - out_sk).max() * 255),
        "loop_equals_batched": bool(np.array_equal(out_loop[:, 0].cpu().numpy(), out_batch)),
        "mean_area_px": float(masks.reshape(n, -1).sum(1).mean()),
    }


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=64)
    p.add_argument("--size", type=int, default=256)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--device", default="cpu")
    p.add_argument("--data", default="auto", choices=["auto", "random"])
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = torch's default)")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    res = run(n=args.n, size=args.size, repeats=args.repeats, device=args.device, data=args.data)
    for k, v in res.items():
        print(f"{k:>26}: {v:.4g}" if isinstance(v, float) else f"{k:>26}: {v}")
