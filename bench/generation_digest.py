"""Check: digests of a generation run through the pure code path (no Ray), to compare two trees.

Fits tiny DST models for every type of the dataset once into ``--models`` (kept: later runs
reuse the files, so two trees generate with the same checkpoints; a new fit would differ as
soon as the fit itself changes), then generates ``--num-samples`` samples per generator (dst,
histmatch, copy) with ``--seed`` through the functions the Ray actors call
(``dstray.dst.synth.prepare`` / ``build_synthesizer`` / ``make_rows`` / ``write_shard``) and
prints the sha256 of the ``image`` and ``mask`` columns and of the shard files.

    python bench/generation_digest.py --models /tmp/dstray-digest/models --out /tmp/dstray-digest

The issue-8 renovation printed the same digests before and after (see its commit message).
"""

from __future__ import annotations

import argparse
import hashlib
import shutil
from pathlib import Path

import pyarrow as pa
import torch

from dstray.config import DSTConfig, GenerateConfig
from dstray.data import load_dataset
from dstray.dst.fit import fit_dst
from dstray.dst.synth import SCHEMA, build_synthesizer, make_rows, prepare, write_shard


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", default=None, help="dataset (default: the embedded sample)")
    p.add_argument("--models", required=True, help="DST models folder (fitted here once, then reused)")
    p.add_argument("--out", required=True, help="scratch folder for the shards")
    p.add_argument("--num-samples", type=int, default=24)
    p.add_argument("--shard-size", type=int, default=8)
    p.add_argument("--seed", type=int, default=11)
    a = p.parse_args()
    torch.set_num_threads(1)
    models = Path(a.models)
    ds = load_dataset(a.data)
    for t in ds.defect_types:
        if not (models / t / "model.pt").exists():
            fit_dst(DSTConfig(defect_type=t, steps=3, batch_size=1, patch_size=32, seed=0, device="cpu"), ds,
                    models / t)
        print(f"model {t}: {hashlib.sha256((models / t / 'model.pt').read_bytes()).hexdigest()[:16]}")
    for g in ("dst", "histmatch", "copy"):
        out = Path(a.out) / f"gen-{g}"
        shutil.rmtree(out, ignore_errors=True)
        cfg = GenerateConfig(data=a.data, models=str(models), generator=g, num_samples=a.num_samples, seed=a.seed,
                             out=str(out))
        ctx = prepare(cfg)
        synth = build_synthesizer(ctx)
        rows, rejects = make_rows(ctx, synth, ctx["plan"], cfg.batch_size)
        table = pa.Table.from_pylist(rows, SCHEMA)
        for col in ("image", "mask"):
            h = hashlib.sha256()
            for blob in table.column(col).to_pylist():
                h.update(blob)
            print(f"{g:9} {col:5} {h.hexdigest()}")
        for shard in range(-(-a.num_samples // a.shard_size)):
            write_shard(ctx, synth, shard, a.shard_size)
        files = sorted((out / "data").glob("*.parquet"))
        h = hashlib.sha256()
        for f in files:
            h.update(f.read_bytes())
        print(f"{g:9} files {h.hexdigest()} ({len(files)} shards, {len(rows)} rows, {len(rejects)} rejects)")


if __name__ == "__main__":
    main()
