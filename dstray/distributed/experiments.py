"""The paper's experiments (§4) on a real dataset, cell by cell on Ray; resumable.

``run_experiment("table1" | "fig6" | "samples", ...)``:

1. plans the cells (:func:`dstray.cells.plan`) and drops those already in
   ``RESULTS/<experiment>.jsonl`` with the same settings (and those ``cells`` patterns leave out);
2. makes the generated pools the missing cells need, once per (generator, seed, size), under
   ``RUN/gen/``: DST fits for each seed first (Ray Train, ``RUN/models/seed-<s>/``), then Ray Data;
   a finished fit or pool is reused;
3. trains the missing cells as Ray tasks, ``threads`` CPUs each (the cluster's CPUs divided among
   the cells, at least 1: one thread each when there are more cells than cores; one GPU each on
   GPUs), each in ``RUN/cells/<experiment>/<cell>/`` (a cell killed midway resumes from its last
   checkpoint there), and appends each cell's line to the results file as it finishes
   (:func:`dstray.cells.append_line`): its scores on test and val, settings, wall seconds, machine.
"""

from __future__ import annotations

import fnmatch
import logging
import os
import time
from dataclasses import replace
from pathlib import Path

import ray

from dstray.cells import (Cell, append_line, dataset_name, dst_config, finished, generate_config, machine, models_dir,
                          plan, read_lines, results_dir, settings)
from dstray.config import to_dict
from dstray.distributed.fit import fit_all, format_table
from dstray.distributed.generate import generate
from dstray.distributed.runtime import init_ray, reserve_local_runtime, resolve_use_gpu
from dstray.distributed.seeds import _run_seed
from dstray.presets import ExperimentPreset, experiment_preset
from dstray.seg.train import STATE, check_inputs
from dstray.storage import absolute

log = logging.getLogger("dstray")
SCORES = ("pixel", "macro", "per_type", "image", "threshold", "n_images", "split")  # what a line keeps of a split


def _run_cell(cfg: dict, out: str, threads: int) -> dict:
    """One cell in a Ray task: :func:`dstray.distributed.seeds._run_seed`, with the machine at start and end."""
    start = machine()
    load = start.pop("loadavg")
    resumed = Path(out, STATE).exists()
    result = _run_seed(cfg, out, threads)
    start.update(torch_threads=threads, loadavg_start=load, loadavg_end=[round(x, 2) for x in os.getloadavg()])
    return {**result, "resumed": resumed, "machine": start}


def _prepare_pools(cells: list[Cell], p: ExperimentPreset, data: str | None, run: Path, use_gpu: str) -> None:
    """Fit DST per run seed where a DST pool is needed (seed ``stage_seeds(s)["dst"]``), then generate every pool
    the cells need (once each, seed ``stage_seeds(s)["generate"]``)."""
    pools = list(dict.fromkeys(x for c in cells for x in c.pools))
    for seed in sorted({x.seed for x in pools if x.generator == "dst"}):
        outcomes = fit_all(dst_config(p, seed), data=data, out=str(models_dir(run, seed)), use_gpu=use_gpu)
        print(format_table(outcomes), flush=True)
        failed = [o.defect_type for o in outcomes if o.status == "failed"]
        if failed:
            raise RuntimeError(f"DST fit (seed {seed}) failed for {failed}; see the table above, fix the cause and "
                               "run the same command again")
    for pool in pools:
        log.info("pool %s: %s", pool.name, generate(generate_config(pool, p, data=data, run=run, use_gpu=use_gpu)))


def _record(cell: Cell, p: ExperimentPreset, data_name: str, result: dict) -> dict:
    """The results line of a finished cell."""
    def scores(split: dict | None) -> dict | None:
        return {k: split[k] for k in SCORES if k in split} if split else None

    return {"experiment": cell.experiment, "cell": cell.name, "group": cell.group, "arch": cell.arch,
            "data": cell.data, "seed": cell.seed, "k": cell.k, "samples": cell.samples, "preset": p.name,
            "dataset": data_name, "test": scores(result["test"]), "val": scores(result["val"]),
            "val_f1": result["val"]["pixel"]["f1"], "steps": result["steps"], "threads": result["threads"],
            "seconds": round(result["seconds"], 1), "resumed": result["resumed"], "machine": result["machine"],
            "settings": settings(cell, p, data_name), "finished_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}


def saved(experiment: str, *, data: str | None, out: str, results: str | None = None) -> str:
    """What an interrupted experiment left: its finished cells (lines of the results file)."""
    path = results_dir(absolute(data), results) / f"{experiment}.jsonl"
    lines = len(read_lines(path)) if path.exists() else 0
    return f"{lines} finished cell(s) in {path} (pools and cell checkpoints in {Path(out).resolve()})"


def run_experiment(experiment: str, *, data: str | None, out: str, seeds: list[int], preset: str = "cpu",
                   results: str | None = None, cells: list[str] | None = None, use_gpu: str = "auto",
                   address: str | None = None, _die_after: int | None = None) -> list[dict]:
    """Run the missing cells of ``experiment``; returns the lines appended by this call (in finishing order).

    ``cells``: fnmatch patterns of cell names to run (``buttonlab-*``, ``*-s0``); None = every cell.
    ``_die_after`` (test hook): this process dies (``os._exit``) once it has appended that many lines,
    as a killed driver would, its other cells still running.
    """
    p, data, run = experiment_preset(preset), absolute(data), Path(out).resolve()
    name = dataset_name(data)
    path = results_dir(data, results) / f"{experiment}.jsonl"
    planned = plan(experiment, p, data=data, run=run, seeds=seeds)
    chosen = [c for c in planned if cells is None or any(fnmatch.fnmatch(c.name, pat) for pat in cells)]
    if not chosen:
        raise ValueError(f"--cells {','.join(cells or [])}: no cell of {experiment} matches; its cells are "
                         f"{', '.join(c.name for c in planned[:6])}, ...")
    done = finished(path)
    todo = [c for c in chosen if (c.name, settings(c, p, name)["digest"]) not in done]
    print(f"{experiment}: {len(chosen)} cells, {len(chosen) - len(todo)} already in {path}, {len(todo)} to run",
          flush=True)
    if not todo:
        return []
    for c in todo:  # fail fast, before any work, on a config that cannot run (the pools are checked once made)
        check_inputs(replace(c.seg, synthetic=[]))
    reserve_local_runtime(address)
    run.mkdir(parents=True, exist_ok=True)
    init_ray(address)
    gpu = resolve_use_gpu(use_gpu)
    _prepare_pools(todo, p, data, run, use_gpu)
    cpus = int(ray.cluster_resources().get("CPU", 1))
    threads = 1 if gpu else max(1, cpus // len(todo))
    task = ray.remote(num_cpus=threads, num_gpus=1 if gpu else 0, max_retries=1)(_run_cell)
    pending = {task.remote(to_dict(replace(c.seg, device="cuda" if gpu else "cpu")),
                           str(run / "cells" / experiment / c.name), threads): c for c in todo}
    log.info("%d cell(s), %d thread(s) each, %d CPU(s) in the cluster", len(todo), threads, cpus)
    written, failed = [], {}
    while pending:
        ready, _ = ray.wait(list(pending), num_returns=1)
        cell = pending.pop(ready[0])
        try:
            result = ray.get(ready[0])
        except Exception as exc:  # one failed cell does not lose the others: they finish and are written
            failed[cell.name] = str(exc).strip().splitlines()[-1] if str(exc).strip() else type(exc).__name__
            log.error("cell %s failed: %s", cell.name, failed[cell.name])
            continue
        record = _record(cell, p, name, result)
        append_line(path, record)  # the cell is finished only now
        written.append(record)
        if _die_after is not None and len(written) >= _die_after:
            os._exit(1)
        print(f"  {cell.name}: test F1 {record['test']['pixel']['f1']:.4f}, val F1 {record['val_f1']:.4f} "
              f"({record['seconds'] / 60:.1f} min)", flush=True)
    if failed:
        which = "; ".join(f"{k}: {v}" for k, v in failed.items())
        raise RuntimeError(f"{len(failed)} of {len(todo)} cell(s) failed ({which}); "
                           f"the others are in {path}. Fix the cause and run the same command again: only the "
                           "missing cells run")
    return written

