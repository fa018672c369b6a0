"""Several seeds of one segmenter config as parallel Ray tasks (``dstray train-seg --seeds 0,1,2,3,4``).

Each seed is one in-process run (:func:`dstray.seg.train.train_local`, the same loop as every
other run) inside a Ray task that holds ``threads`` CPUs and runs torch on that many threads;
as many run at once as the cluster has CPUs for. ``threads`` defaults to the cluster's CPUs
divided among the seeds (at least 1): one thread each on a 2-core machine. A seed's run goes to
``OUT/seed-<s>/`` (``model.pt``, ``history.jsonl``, ``val/`` and ``test/eval.*``) and resumes
there: running the same command again finishes only the seeds (and steps) not yet done.
``train-seg --seeds`` trains seed s with ``SegConfig.seed = s`` (raw); ``pipeline --seeds`` with
the segmenter stage's seed of the run seed s, ``stage_seeds(s)["seg"]`` (``seed_of``), so that its
row s is the segmenter of ``pipeline --seed s``. ``seeds.json`` records the seed each run got.
``OUT/seeds.json`` holds :func:`dstray.seg.seeds.summarise` of every seed on ``test`` and
``val``, with the config; the terminal gets :func:`dstray.seg.seeds.format_table`.

Bit-reproducibility: the same seed with the same thread count gives the same weights and scores;
another thread count changes the order of floating-point reductions and so the numbers (the
README's "Reproducibility").
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import ray

from dstray.config import SegConfig, from_dict, to_dict
from dstray.distributed.runtime import init_ray
from dstray.seg.evaluate import strict_json
from dstray.seg.seeds import format_table, summarise
from dstray.seg.train import check_inputs

log = logging.getLogger("dstray")
SUMMARY = "seeds.json"


def parse_seeds(text: str) -> list[int]:
    """``"0,1,2"`` or ``"0-4"`` -> [0, 1, 2(, 3, 4)]; duplicates are an error."""
    seeds: list[int] = []
    try:
        for part in filter(None, (p.strip() for p in str(text).split(","))):
            lo, sep, hi = part.partition("-")
            seeds += list(range(int(lo), int(hi) + 1)) if sep and lo else [int(part)]
    except ValueError:
        raise ValueError(f"--seeds {text!r}: give integers, e.g. 0,1,2 or 0-4") from None
    if not seeds or len(set(seeds)) != len(seeds):
        raise ValueError(f"--seeds {text!r}: give distinct integers, e.g. 0,1,2 or 0-4")
    return seeds


def _state_step(folder: Path) -> int | None:
    """The step of a seed's run folder (its ``state.pt``, written at each evaluation); None without one."""
    import torch

    path = folder / "state.pt"
    if not path.exists():
        return None
    return int(torch.load(path, map_location="cpu", weights_only=True, mmap=True)["steps"])


def saved(out: str, seeds: list[int], *, steps: int) -> str:
    """What an interrupted ``--seeds`` run left: each seed's step (its folder's last checkpoint)."""
    parts = [f"seed {s} at step {step} of {steps}" for s in seeds
             if (step := _state_step(Path(out, f"seed-{s}"))) is not None]
    return (", ".join(parts) + f" in {Path(out).resolve()}") if parts else "no checkpoint yet"


def _run_seed(cfg: dict, out: str, threads: int) -> dict:
    """One seed, in a Ray task: train, select on val, score on test; returns the scores (no images) and seconds."""
    import torch

    from dstray.seg.train import train_local

    torch.set_num_threads(threads)
    start = time.perf_counter()
    result = train_local(from_dict(SegConfig, cfg), out)
    return {"val": result["val"], "test": result["test"], "steps": result["steps"], "threads": threads,
            "seconds": time.perf_counter() - start}


def train_seeds(cfg: SegConfig, seeds: list[int], *, out: str, threads: int = 0, address: str | None = None,
                on_seed: Callable[[int, dict], None] | None = None,
                seed_of: Callable[[int], int] | None = None) -> dict:
    """Run ``cfg`` once per seed as parallel Ray tasks; write and return ``OUT/seeds.json``'s content.

    ``{"config", "seeds", "seg_seeds", "threads", "test": summarise(test), "val": summarise(val), "table": str}``.
    Seed s trains with ``SegConfig.seed = seed_of(s)`` (default: s itself), in ``OUT/seed-<s>/``;
    ``seg_seeds`` maps each s to that seed. ``on_seed(seed, result)`` is called as each seed finishes.
    """
    cfg = check_inputs(cfg)  # fail fast, on the driver, before any task starts
    for s in seeds:  # what an earlier run of this command left
        step = _state_step(Path(out, f"seed-{s}"))
        if step is not None:
            log.info("seed %d: %s", s, f"already trained {step} of {cfg.steps} steps" if step >= cfg.steps
                     else f"resumed from step {step} of {cfg.steps}")
    init_ray(address)
    cpus = int(ray.cluster_resources().get("CPU", 1))
    threads = threads or max(1, cpus // len(seeds))
    task = ray.remote(num_cpus=threads, max_retries=1)(_run_seed)
    own = {s: seed_of(s) if seed_of else s for s in seeds}
    pending = {task.remote(to_dict(replace(cfg, seed=own[s])), str(Path(out, f"seed-{s}").resolve()), threads): s
               for s in seeds}
    log.info("%d seed(s) of %s/%s, %d thread(s) each, %d CPU(s) in the cluster", len(seeds), cfg.arch, cfg.backbone,
             threads, cpus)
    runs: dict[int, dict] = {}
    while pending:
        done, _ = ray.wait(list(pending), num_returns=1)
        seed = pending.pop(done[0])
        runs[seed] = ray.get(done[0])
        if on_seed is not None:
            on_seed(seed, runs[seed])
    summary = {"config": to_dict(replace(cfg, seed=-1)), "seeds": seeds,
               "seg_seeds": {str(s): own[s] for s in seeds}, "threads": threads,
               "test": summarise(runs, "test") if cfg.test_split else None, "val": summarise(runs, "val")}
    summary["table"] = format_table(summary["test"] or summary["val"])
    Path(out).mkdir(parents=True, exist_ok=True)
    Path(out, SUMMARY).write_text(json.dumps(strict_json(summary), indent=2, allow_nan=False) + "\n")
    return summary
