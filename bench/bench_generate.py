"""Benchmark: generation throughput of the Ray Data pipeline against a plain loop, side by side.

Prints, in one run on the same inputs (same plan, same models, same cores):

1. images/s of ``dstray generate`` (Ray Data, actor pool, Parquet shards) and of a plain
   single-process loop doing the same work (decode, area, histmatch + TransferNet, PNG
   encode, Parquet write) with torch's threads on the same cores; their ratio (aim >= 0.8);
2. the plain loop in patch vs whole-image mode (ratio);
3. the peak resident memory of one generation actor (VmHWM; aim <= 1.5 GiB on CPU).

DST models are fitted for a few steps first (throughput does not depend on how well they
are trained). Ray start-up is excluded (Ray is started before timing); actor start-up and
model loading are included, as they are part of every job.

    python bench/bench_generate.py [--data PATH] [--num-samples 96] [--generator dst]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import tempfile
import time
from pathlib import Path

os.environ.setdefault("RAY_AUTH_MODE", "disabled")

from dstray.config import GENERATORS  # noqa: E402


def fit_models(data: str | None, out: Path, steps: int) -> None:
    from dstray.config import DSTConfig
    from dstray.data import load_dataset
    from dstray.dst.fit import fit_dst

    ds = load_dataset(data)
    for t in sorted({s.defect_type for s in ds.references()}):
        fit_dst(DSTConfig(defect_type=t, steps=steps, batch_size=2, patch_size=48, loss_weights="random"), ds, out / t)


def plain_loop(cfg, shard_size: int) -> float:
    """The same work in one process; returns seconds."""
    from dstray.dst.synth import build_synthesizer, prepare, write_shard

    t0 = time.perf_counter()
    ctx = prepare(cfg)
    synth = build_synthesizer(ctx)
    for shard in range(-(-cfg.num_samples // shard_size)):
        write_shard(ctx, synth, shard, shard_size)
    return time.perf_counter() - t0


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", default=None, help="dataset (default: the embedded sample)")
    p.add_argument("--num-samples", type=int, default=96)
    p.add_argument("--generator", default="dst", choices=GENERATORS)
    p.add_argument("--shard-size", type=int, default=16)
    p.add_argument("--fit-steps", type=int, default=2)
    a = p.parse_args()

    import ray
    import torch

    from dstray.config import GenerateConfig
    from dstray.distributed.generate import generate

    work = Path(tempfile.mkdtemp(prefix="dstray-bench-"))
    if a.generator == "dst":
        fit_models(a.data, work / "models", a.fit_steps)
    base = GenerateConfig(data=a.data, models=str(work / "models"), generator=a.generator,
                          num_samples=a.num_samples, seed=0, use_gpu="false")
    cores = os.cpu_count()
    print(f"torch {torch.__version__}, ray {ray.__version__}, {cores} cores, data {a.data or 'embedded sample'}, "
          f"generator {a.generator}, {a.num_samples} samples, shard {a.shard_size}")

    plain_patch = plain_loop(dataclasses.replace(base, mode="patch", out=str(work / "plain-patch")), a.shard_size)
    plain_whole = plain_loop(dataclasses.replace(base, mode="whole", out=str(work / "plain-whole")), a.shard_size)

    ray.init(num_cpus=cores, include_dashboard=False, logging_level="WARNING")
    t0 = time.perf_counter()
    summary = generate(dataclasses.replace(base, mode="patch", out=str(work / "ray-patch"), num_actors=cores),
                       shard_size=a.shard_size)
    ray_patch = time.perf_counter() - t0
    ray.shutdown()

    n = a.num_samples
    rows = {
        "plain loop, patch mode (img/s)": n / plain_patch,
        "plain loop, whole-image mode (img/s)": n / plain_whole,
        "patch / whole (plain loop)": plain_whole / plain_patch,
        f"Ray Data, patch mode, {cores} actors (img/s)": n / ray_patch,
        "Ray Data / plain loop (patch)": plain_patch / ray_patch,
        "peak RSS of one generation actor (MiB)": summary["actor_peak_rss_mib"],
    }
    for k, v in rows.items():
        print(f"{k:>44}: {v:.3f}")
    print(json.dumps({"summary": summary}, default=str))


if __name__ == "__main__":
    main()
