"""Benchmark of the DST core (paper §3.1): histogram matching, TransferNet, fitting, stylizing.

Prints, in one run on the same inputs:

1. masked histogram matching, batched torch vs scikit-image (``bench/histmatch_bench.py``'s ``run``);
2. TransferNet forward on MT-sized images (N backgrounds resized to 256x400): whole image
   vs a ``--patch`` window around L, images/s each and the ratio;
3. peak resident memory of a DST fit at the default ``DSTConfig`` for ``--fit-steps``
   steps, in a child process (its VmHWM: ru_maxrss would carry the parent's peak across
   fork+exec), next to the child's RSS after imports;
4. DST fitting steps/s at the default patch size (same child), and stylize images/s
   (histmatch + TransferNet + paste, :func:`dstray.dst.stylize_batch`) in patch and whole mode.

    python bench/bench_core.py [--data PATH] [--device cpu|cuda] [--threads N] [--fit-steps 20]

``--data``: a dataset (folder/manifest) for the backgrounds and the reference; default the
embedded sample. VGG-19 weights are random (seeded) so the run needs no download.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

HERE = Path(__file__).resolve().parent


def _best(fn, repeats: int, device: torch.device) -> float:
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        best = min(best, time.perf_counter() - t0)
    return best


def bench_histmatch(device: str, n: int) -> dict:
    spec = importlib.util.spec_from_file_location("histmatch_bench", HERE / "histmatch_bench.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod.run(n=n, size=256, repeats=3, device=device)


def _inputs(data: str | None, n: int, size: tuple[int, int], seed: int = 0):
    """N backgrounds resized to ``size`` (N,C,H,W), areas L from the blowhole reference, and the model parts."""
    from dstray.dst.areas import AreaSampler
    from dstray.data import load_dataset, read_image, read_mask

    ds = load_dataset(data)
    ref = ds.references("blowhole" if "blowhole" in ds.defect_types else ds.defect_types[0])[0]
    h, m = read_image(ref.image), read_mask(ref.mask)
    bgs = [read_image(s.image) for s in ds.backgrounds()[:n]]
    bgs = (bgs * n)[:n]
    s = torch.stack([F.interpolate(b[None], size=size, mode="bilinear", antialias=True)[0].clamp(0, 1) for b in bgs])
    g = torch.Generator().manual_seed(seed)
    a = torch.stack([AreaSampler([m]).sample(size[0], size[1], g) for _ in range(n)])
    return s, a, h, m


def bench_transfer_net(data: str | None, n: int, patch: int, device: torch.device, repeats: int) -> dict:
    from dstray.dst.areas import crop_window
    from dstray.config import DSTConfig
    from dstray.dst.stylize import DSTModel, stylize_batch
    from dstray.dst.transfer_net import TransferNet

    s, a, h, m = _inputs(data, n, (256, 400))
    torch.manual_seed(0)
    net = TransferNet(s.shape[1]).to(device).eval().requires_grad_(False)
    s, a = s.to(device), a.to(device)
    wins = [crop_window(ai, patch) for ai in a]
    sw = torch.stack([si[:, t:t + hh, l:l + ww] for si, (t, l, hh, ww) in zip(s, wins)])
    aw = torch.stack([ai[:, t:t + hh, l:l + ww] for ai, (t, l, hh, ww) in zip(a, wins)])
    with torch.no_grad():
        t_whole = _best(lambda: net(s, s, a), repeats, device)
        t_patch = _best(lambda: net(sw, sw, aw), repeats, device)
    model = DSTModel(net=net, reference_image=h.to(device), reference_mask=m.to(device), reference_id="bench",
                     config=DSTConfig(), defect_type="blowhole", digest="")
    t_sty_patch = _best(lambda: stylize_batch(model, s, a, mode="patch", patch_size=patch), repeats, device)
    t_sty_whole = _best(lambda: stylize_batch(model, s, a, mode="whole"), repeats, device)
    return {
        "images": n, "image_size": "256x400", "patch": patch,
        "net_whole_img_per_s": n / t_whole, "net_patch_img_per_s": n / t_patch,
        "net_patch_over_whole": t_whole / t_patch,
        "stylize_patch_img_per_s": n / t_sty_patch, "stylize_whole_img_per_s": n / t_sty_whole,
    }


def _peak_rss_mib() -> float:
    """This process's peak resident set (VmHWM, Linux), MiB; ru_maxrss elsewhere."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def fit_child(data: str | None, steps: int, device: str) -> dict:
    """Runs in a child process: RSS after imports, then a default-config fit; peak RSS and steps/s."""
    from dataclasses import replace

    from dstray.config import DSTConfig
    from dstray.data import load_dataset
    from dstray.dst.fit import DSTFitter

    base_mib = _peak_rss_mib()
    cfg = replace(DSTConfig(), defect_type="blowhole", device=device)  # the default config, one type
    fitter = DSTFitter(cfg, load_dataset(data))
    fitter.step()  # warm-up (first batch decodes backgrounds, allocator warm-up)
    dev = fitter.device
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)
    t0 = time.perf_counter()
    for _ in range(steps - 1):
        fitter.step()
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)
    seconds = time.perf_counter() - t0
    return {
        "device": str(dev), "steps": steps, "batch_size": cfg.batch_size, "patch_size": cfg.patch_size,
        "steps_per_s": (steps - 1) / seconds, "backgrounds_per_s": (steps - 1) * cfg.batch_size / seconds,
        "rss_after_imports_mib": base_mib,
        "peak_rss_mib": _peak_rss_mib(),
        "peak_cuda_mib": torch.cuda.max_memory_allocated(dev) / 2**20 if dev.type == "cuda" else 0.0,
        "last_losses": {k: round(v, 4) for k, v in fitter.history[-1].items()},
    }


def _show(title: str, res: dict) -> None:
    print(f"== {title}")
    for k, v in res.items():
        print(f"  {k:>26}: {v:.4g}" if isinstance(v, float) else f"  {k:>26}: {v}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", default=None, help="dataset folder/manifest (default: the embedded sample)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = torch's default)")
    p.add_argument("--n", type=int, default=8, help="images for the TransferNet/stylize timings")
    p.add_argument("--patch", type=int, default=96)
    p.add_argument("--fit-steps", type=int, default=20)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--fit-child", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.fit_child:
        print(json.dumps(fit_child(args.data, args.fit_steps, args.device)))
        return
    device = torch.device(args.device)
    print(f"torch {torch.__version__}, device {device}"
          f"{' (' + torch.cuda.get_device_name(device) + ')' if device.type == 'cuda' else ''}, "
          f"threads {torch.get_num_threads()}, data {args.data or 'embedded sample'}")
    cmd = [sys.executable, str(Path(__file__).resolve()), "--fit-child", "--fit-steps", str(args.fit_steps),
           "--device", args.device, "--threads", str(args.threads)] + (["--data", args.data] if args.data else [])
    fit = json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout.splitlines()[-1])
    hm = bench_histmatch(args.device, n=64)
    _show("1. masked histmatch, 64 images 256x256: torch batched vs skimage", {
        k: hm[k] for k in ("data", "skimage_s", "torch_batched_s", "speedup_vs_skimage", "max_abs_diff_grey_levels")})
    _show(f"2./4. TransferNet forward and stylize, whole vs patch {args.patch}",
          bench_transfer_net(args.data, args.n, args.patch, device, args.repeats))
    _show(f"3./4. DST fit, default DSTConfig, {args.fit_steps} steps (child process)", fit)

if __name__ == "__main__":
    main()
