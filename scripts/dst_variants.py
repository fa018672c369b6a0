"""Fit DST variants, generate with each, and score their realism against real defects (how DST's defaults
were chosen; see README "DST settings").

    python scripts/dst_variants.py --data ../shared/data/magnetic-tile --out runs/dst-variants \\
        --variant default --variant 'wc3:content_weight=3' --real val,train

Per variant NAME[:field=value,...] (DSTConfig fields; values parsed like the CLI's): fit every defect type in
this process (``fit_dst``, one torch thread; a fitted type is reused), generate ``--num-samples`` with the
pure generation path (same plan and areas for every generator), then print KID / C2ST per type against the
real defects of ``--real`` (comma-separated splits; never the reported test split when choosing).
``--baselines`` also generates and scores histmatch (relative and absolute first step) and copy.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import torch

from dstray.config import DSTConfig, GenerateConfig, field_default, parse_value
from dstray.data import load_dataset
from dstray.dst.fit import fit_dst, fitted_types
from dstray.dst.realism import format_score, generated_crops, real_crops, score, write_score
from dstray.dst.synth import SCHEMA, build_synthesizer, make_rows, prepare


def parse_variant(text: str) -> tuple[str, dict]:
    name, _, spec = text.partition(":")
    changes = {}
    for item in filter(None, spec.split(",")):
        key, _, value = item.partition("=")
        f = next(f for f in dataclasses.fields(DSTConfig) if f.name == key)
        changes[key] = parse_value(value, str(f.type), field_default(DSTConfig, key))
    return name, changes


def generate(data: str, out: Path, generator: str, models: Path | None, n: int, first_step: str) -> Path:
    path = out / "data.parquet"
    if path.exists():
        return path
    cfg = GenerateConfig(data=data, models=str(models) if models else None, generator=generator, num_samples=n,
                         out=str(out), first_step=first_step)
    ctx = prepare(cfg)
    synth = build_synthesizer(ctx)
    rows, rejects = make_rows(ctx, synth, ctx["plan"])
    out.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows, SCHEMA), path)
    print(f"{out.name}: {len(rows)} rows, {len(rejects)} rejects", flush=True)
    return path


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--variant", action="append", default=[], help="NAME[:field=value,...]")
    p.add_argument("--baselines", action="store_true")
    p.add_argument("--num-samples", type=int, default=300)
    p.add_argument("--real", default="val,train", help="real splits to score against")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--score-only", action="store_true")
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    out = Path(a.out)
    ds = load_dataset(a.data)
    generated = {}
    if a.baselines:
        for name, gen, first in (("histmatch", "histmatch", "relative"), ("histmatch-absolute", "histmatch", "absolute"),
                                 ("copy", "copy", "relative")):
            generated[name] = generate(a.data, out / name, gen, None, a.num_samples, first)
    for text in a.variant:
        name, changes = parse_variant(text)
        models = out / name / "models"
        if not a.score_only:
            for t in fitted_types(ds):
                if (models / t / "model.pt").exists():
                    continue
                t0 = time.perf_counter()
                cfg = dataclasses.replace(DSTConfig(), defect_type=t, device="cpu", **changes)
                fit_dst(cfg, ds, models / t, on_log=lambda step, terms: None)
                ckpt = torch.load(models / t / "model.pt", weights_only=True)
                print(f"{name} {t}: {ckpt['steps']} steps ({ckpt['stopped']}), held-out {ckpt['heldout_losses']}, "
                      f"{time.perf_counter() - t0:.0f} s", flush=True)
        if all((models / t / "model.pt").exists() for t in fitted_types(ds)):
            generated[name] = generate(a.data, out / name / "gen", "dst", models, a.num_samples, "relative")
    real = real_crops([s for split in a.real.split(",") for s in ds.split(split)])
    result = score({k: generated_crops(str(v)) for k, v in generated.items()}, real)
    result["settings"]["real_splits"] = a.real
    print(format_score(result), flush=True)
    write_score(result, out, name=f"realism-{a.real.replace(',', '+')}")


if __name__ == "__main__":
    main()
