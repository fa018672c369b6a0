"""The paper's experiments (§4) on a real dataset, run on Ray.

- ``table1``: generators {only real (+ traditional augmentation), copy-paste, histmatch,
  DST} x segmenters {Buttonlab, DeepLab v3+, U-Net}; one real reference per type; every
  generator uses the same backgrounds, the same areas L (same plan and per-sample seeds)
  and the same number of samples; pixel F1 on the real test split (paper Table 1).
- ``fig6``: Buttonlab trained with the references plus 0, 25, 50 or all real ``train``
  samples, without (strategy B) and with (strategy C) generated DST samples (paper Fig. 6).

Both reuse one run folder: DST models (``models/``, Ray Train, fitted once), generated
sets (``gen-<generator>/``, Ray Data) and one folder per segmentation run
(``seg/<name>/``, trained in Ray tasks side by side, one CPU or GPU each). A finished run
is not redone, so an interrupted experiment resumes where it stopped. Results go to
``<experiment>.md`` / ``.csv`` with the sizes and steps used (``<experiment>-settings.json``).
"""

from __future__ import annotations

import csv
import dataclasses
import json
import logging
import time
from pathlib import Path

import ray
import torch

from dstray.config import ARCHS, GENERATORS, GenerateConfig, SegConfig, from_dict, to_dict
from dstray.data import load_dataset
from dstray.distributed.fit import fit_all, format_table
from dstray.distributed.generate import generate
from dstray.distributed.runtime import init_ray, resolve_use_gpu
from dstray.presets import ExperimentPreset, experiment_preset
from dstray.report.tables import markdown_table
from dstray.seeds import stage_seeds
from dstray.seg.train import train_local
from dstray.storage import absolute

log = logging.getLogger("dstray")


def _prepare_generated(data: str | None, run: Path, p: ExperimentPreset, generators, use_gpu: str, seed: int):
    """The DST models (when ``dst`` is among ``generators``) and each generator's samples; the stages seeded
    from the experiment's ``seed`` (:func:`dstray.seeds.stage_seeds`). Returns {generator: data folder}."""
    seeds = stage_seeds(seed)
    if "dst" in generators:
        outcomes = fit_all(dataclasses.replace(p.dst, seed=seeds["dst"]), data=data, out=str(run / "models"),
                           use_gpu=use_gpu)
        print(format_table(outcomes), flush=True)
        failed = [o.defect_type for o in outcomes if o.status == "failed"]
        if failed:
            raise RuntimeError(f"DST fit failed for {failed}; see the table above")
    paths = {}
    for g in generators:
        out = run / f"gen-{g}"
        gen = GenerateConfig(data=data, models=str(run / "models") if g == "dst" else None, generator=g,
                             num_samples=p.num_samples, seed=seeds["generate"], out=str(out), use_gpu=use_gpu,
                             area=p.dst.area)
        summary = generate(gen)
        log.info("generated %s: %s", g, summary)
        paths[g] = str(out / "data")
    return paths


def _run_all(runs: dict[str, SegConfig], run: Path, use_gpu: str) -> dict[str, dict]:
    """Train + evaluate every named SegConfig in Ray tasks (finished ones are read back)."""
    gpu = resolve_use_gpu(use_gpu)

    @ray.remote(num_cpus=1, num_gpus=1 if gpu else 0, max_retries=2)
    def train_one(cfg_dict: dict, out: str) -> dict:
        torch.set_num_threads(1)
        cfg = from_dict(SegConfig, cfg_dict)
        t0 = time.perf_counter()
        result = train_local(dataclasses.replace(cfg, device="cuda" if gpu else "cpu"), out)
        test = result["test"]  # the model selected on val, scored once on test
        final = {"pixel": test["pixel"], "macro": test["macro"], "per_type": test["per_type"], "image": test["image"],
                 "threshold": test["threshold"], "val_f1": result["val"]["pixel"]["f1"],
                 "seconds": round(time.perf_counter() - t0, 1)}
        Path(out, "final.json").write_text(json.dumps(final, indent=2))
        return final

    results, pending = {}, {}
    for name, cfg in runs.items():
        out = run / "seg" / name
        done = out / "final.json"
        if done.exists():
            results[name] = json.loads(done.read_text())
            continue
        pending[train_one.remote(to_dict(cfg), str(out))] = name
    log.info("%d segmentation runs to train, %d already done", len(pending), len(results))
    while pending:
        ready, _ = ray.wait(list(pending), num_returns=1)
        name = pending.pop(ready[0])
        results[name] = ray.get(ready[0])
        log.info("%s: pixel F1 %.4f (%.0f s)", name, results[name]["pixel"]["f1"], results[name]["seconds"])
    return results


def _write(run: Path, name: str, rows: list[dict], columns: list[str], settings: dict) -> Path:
    with open(run / f"{name}.csv", "w", newline="") as f:
        w = csv.DictWriter(f, columns)
        w.writeheader()
        w.writerows(rows)
    text = markdown_table(rows, columns, "{:.4f}".format)
    md = run / f"{name}.md"
    md.write_text(text)
    (run / f"{name}-settings.json").write_text(json.dumps(settings, indent=2, default=str))
    print(text, end="", flush=True)
    return md


def _start(data: str | None, out: str, preset: str, address: str | None):
    """``(preset sizes, run folder, absolute data path, start time)``, with Ray connected."""
    run = Path(out).resolve()
    run.mkdir(parents=True, exist_ok=True)
    init_ray(address)
    return experiment_preset(preset), run, absolute(data), time.perf_counter()


def table1(*, data: str | None, out: str, preset: str = "cpu", use_gpu: str = "auto", seed: int = 0,
           address: str | None = None) -> list[dict]:
    """Paper Table 1 analogue: pixel F1 on the real test split per generator x segmenter."""
    p, run, data, t0 = _start(data, out, preset, address)
    generated = _prepare_generated(data, run, p, GENERATORS, use_gpu, seed)
    runs = {}
    for arch in ARCHS:
        base = dataclasses.replace(p.seg, arch=arch, data=data, seed=stage_seeds(seed)["seg"])
        runs[f"{arch}-only-real"] = dataclasses.replace(base, real_splits=["reference"], augment=True)
        for g in GENERATORS:
            runs[f"{arch}-{g}"] = dataclasses.replace(base, synthetic=[generated[g]], augment=True)
    results = _run_all(runs, run, use_gpu)
    rows = []
    for arch in ARCHS:
        row = {"segmenter": arch}
        for g in ("only-real", *GENERATORS):
            row[g] = results[f"{arch}-{g}"]["pixel"]["f1"]
        rows.append(row)
    settings = {"preset": preset, "data": data or "embedded sample", "seed": seed, "seeds": stage_seeds(seed),
                "dst": to_dict(p.dst),
                "num_samples": p.num_samples, "seg": to_dict(p.seg), "seconds": round(time.perf_counter() - t0),
                "runs": {k: {"f1": v["pixel"]["f1"], "precision": v["pixel"]["precision"],
                             "recall": v["pixel"]["recall"], "macro_f1": (v.get("macro") or {}).get("f1"),
                             "threshold": v.get("threshold"), "val_f1": v.get("val_f1"), "seconds": v["seconds"]}
                         for k, v in results.items()}}
    _write(run, "table1", rows, ["segmenter", "only-real", *GENERATORS], settings)
    return rows


def fig6(*, data: str | None, out: str, preset: str = "cpu", use_gpu: str = "auto", seed: int = 0,
         address: str | None = None) -> list[dict]:
    """Paper Fig. 6 analogue: Buttonlab F1 vs real train samples added, without (B) / with (C) DST samples."""
    p, run, data, t0 = _start(data, out, preset, address)
    generated = _prepare_generated(data, run, p, ("dst",), use_gpu, seed)
    dataset = load_dataset(data)
    n_refs, n_train = len(dataset.references()), len(dataset.split("train"))
    runs, counts = {}, []
    for k in p.real_counts:
        k = n_train if k is None else min(k, n_train)
        counts.append(k)
        base = dataclasses.replace(p.seg, arch="buttonlab", data=data, seed=stage_seeds(seed)["seg"], augment=True,
                                   real_splits=["reference", "train"], real_limit=n_refs + k)
        runs[f"B-real{k}"] = base
        runs[f"C-real{k}"] = dataclasses.replace(base, synthetic=[generated["dst"]])
    results = _run_all(runs, run, use_gpu)
    rows = [{"real_train_added": k, "B_real_only": results[f"B-real{k}"]["pixel"]["f1"],
             "C_real_plus_dst": results[f"C-real{k}"]["pixel"]["f1"]} for k in dict.fromkeys(counts)]
    settings = {"preset": preset, "data": data or "embedded sample", "seed": seed, "seeds": stage_seeds(seed),
                "dst": to_dict(p.dst),
                "num_samples": p.num_samples, "seg": to_dict(p.seg), "references": n_refs,
                "seconds": round(time.perf_counter() - t0),
                "runs": {k: {"f1": v["pixel"]["f1"], "macro_f1": (v.get("macro") or {}).get("f1"),
                             "seconds": v["seconds"]} for k, v in results.items()}}
    _write(run, "fig6", rows, ["real_train_added", "B_real_only", "C_real_plus_dst"], settings)
    return rows
