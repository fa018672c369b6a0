"""Fit the DST model of every defect type in parallel with Ray Train.

One ``TorchTrainer`` run per defect type (one worker each, one GPU each when the cluster
has GPUs), all launched at once from small Ray tasks, so the types train concurrently
across the cluster's GPUs (or CPUs). Each run:

- checkpoints to ``storage_path/dst-<type>`` every ``checkpoint_every`` steps
  (``storage_path`` is a local folder or a pyarrow URI such as ``s3://bucket/dstray``);
- resumes from its newest sealed checkpoint on storage when the same command runs again, and
  when a worker or its node dies (``FailureConfig(max_failures)``: Ray Train restarts the worker
  group, the loop reads :func:`dstray.distributed.faults.latest_checkpoint` and continues from
  that step, not from 0; a lost ``_fit_one`` task is retried by Ray and resumes the same way);
- writes the final model to ``out/<type>/model.pt`` (what ``dstray generate --models`` reads)
  and its loss history to ``out/<type>/losses.csv``, as the in-process fit does.

The worker loop is :func:`dstray.dst.fit.fit_loop`, reporting to Ray Train.

A type whose ``out/<type>/model.pt`` was fit with the same settings is skipped. A type that
fails is reported with its error while the others finish.
"""

from __future__ import annotations

import io
import json
import logging
import tempfile
import time
from dataclasses import dataclass, replace
from pathlib import Path

import ray
import torch
from ray.train import CheckpointConfig, RunConfig, ScalingConfig
from ray.train.torch import TorchTrainer

from dstray import storage
from dstray.config import MAX_IMAGE_PIXELS, DSTConfig, changed_fields, check_resumable, from_dict, to_dict
from dstray.data import load_dataset, preflight
from dstray.distributed.faults import (Faults, failure_config, faults_config, fit_trainer, latest_checkpoint,
                                       memory_guard, prune_checkpoints, report_checkpoint)
from dstray.distributed.runtime import (die_once_at, init_ray, ray_storage_path, reserve_local_runtime,
                                        resolve_use_gpu)
from dstray.dst.fit import TERMS, DSTFitter, fit_loop, fitted_types, write_losses_csv

log = logging.getLogger("dstray")


@dataclass
class FitOutcome:
    """One row of the table printed at the end of ``fit-dst --all``."""

    defect_type: str
    status: str  # "fitted" | "skipped" | "failed"
    steps: int = 0
    losses: dict | None = None
    seconds: float = 0.0
    checkpoint: str = ""
    error: str = ""


def dst_train_loop(config: dict) -> None:
    """Ray Train worker loop for one defect type: :func:`dstray.dst.fit.fit_loop` reporting to Ray Train."""
    cfg = from_dict(DSTConfig, config["dst"])
    cfg = replace(cfg, device=str(ray.train.torch.get_device()))
    fitter = DSTFitter(cfg, load_dataset(config["data"]).without(config.get("skip", ())))  # skip: from preflight
    # [1] resume after a worker failure or a re-run: the newest sealed checkpoint on storage (faults.py)
    found = latest_checkpoint(config["run_dir"]) if config.get("run_dir") else None
    checkpoint = found or ray.train.get_checkpoint()
    if checkpoint:
        with checkpoint.as_directory() as d:
            saved = torch.load(Path(d) / "model.pt", map_location="cpu", weights_only=True)["config"]
            check_resumable(saved, cfg, checkpoint.path, hint="give another --storage-path (or --out) to fit "
                            "with new settings, or delete that checkpoint folder")
            fitter.load_state_dict(torch.load(Path(d) / "state.pt", map_location=cfg.device, weights_only=True))
        print(f"[dst-{cfg.defect_type}] resumed from step {fitter.step_count}", flush=True)
    faults = Faults(config.get("faults"), f"dst-{cfg.defect_type}")

    def log_terms(step: int, terms: dict[str, float]) -> None:
        ray.train.report({"step": step, **terms})  # [2] report metrics

    def checkpoint_terms(step: int, terms: dict[str, float]) -> None:
        with tempfile.TemporaryDirectory() as d:  # [2] report metrics + a checkpoint (sealed, named after its step)
            torch.save(fitter.state_dict(), Path(d) / "state.pt")
            fitter.save(Path(d) / "model.pt")
            report_checkpoint({"step": step, **terms}, d, step)
        faults.after_checkpoint(step)  # tests

    die = die_once_at(config["fault_step"], config["fault_marker"]) if config.get("fault_step") else None  # tests

    def on_step(step: int) -> None:
        faults.at_step(step)
        if die is not None:
            die(step)

    with memory_guard():
        fit_loop(fitter, on_log=log_terms, on_checkpoint=checkpoint_terms, on_step=on_step)


@ray.remote(num_cpus=0)
def _fit_one(cfg_dict: dict, data: str | None, out: str, storage_path: str, use_gpu: bool,
             cpus_per_worker: float, max_failures: int, extra: dict) -> dict:
    """Run one TorchTrainer to completion (a light Ray task; the worker holds the resources)."""
    defect_type = cfg_dict["defect_type"]
    t0 = time.perf_counter()
    run_dir = storage.join(storage_path, f"dst-{defect_type}")
    trainer = TorchTrainer(
        dst_train_loop,
        train_loop_config={"dst": cfg_dict, "data": data, "run_dir": run_dir, **extra},
        scaling_config=ScalingConfig(num_workers=1, use_gpu=use_gpu,
                                     resources_per_worker={"CPU": cpus_per_worker, **({"GPU": 1} if use_gpu else {})}),
        run_config=RunConfig(
            name=f"dst-{defect_type}",  # stable name: re-running resumes this run
            storage_path=storage_path,
            failure_config=failure_config(max_failures),
            checkpoint_config=CheckpointConfig(num_to_keep=2),
        ),
    )
    try:
        result = fit_trainer(trainer, stage=f"fit-dst ({defect_type})", max_failures=max_failures,
                             lower="--batch-size or --patch-size, or fit fewer types at once (a larger "
                                   "--cpus-per-worker)")
    except Exception as exc:  # one type failing must not stop the others
        return to_dict(FitOutcome(defect_type, "failed", seconds=time.perf_counter() - t0,
                                  error=f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"))
    prune_checkpoints(run_dir, {Path(c.path).name for c, _ in result.best_checkpoints or []})
    with result.checkpoint.as_directory() as d:
        blob = (Path(d) / "model.pt").read_bytes()
    target = storage.join(out, defect_type, "model.pt")
    storage.write_bytes(target, blob)  # what the in-process fit writes: model.pt and losses.csv
    history = torch.load(io.BytesIO(blob), map_location="cpu", weights_only=True)["losses"]
    write_losses_csv(history, storage.join(out, defect_type, "losses.csv"))
    losses = {k: round(float(v), 5) for k, v in (result.metrics or {}).items() if k != "step"}
    storage.write_bytes(storage.join(out, defect_type, "fit.json"), json.dumps(
        {"config": cfg_dict, "metrics": result.metrics, "checkpoint": result.checkpoint.path}, indent=2).encode())
    return to_dict(FitOutcome(defect_type, "fitted", steps=int((result.metrics or {}).get("step", 0)), losses=losses,
                              seconds=time.perf_counter() - t0, checkpoint=target))


def fit_all(base: DSTConfig, *, data: str | None, out: str, types: list[str] | None = None,
            storage_path: str | None = None, use_gpu: str = "auto", cpus_per_worker: float = 1.0,
            max_failures: int = 2, address: str | None = None, max_image_pixels: int | None = MAX_IMAGE_PIXELS,
            faults: dict | None = None, _extra: dict | None = None) -> list[FitOutcome]:
    """Fit every defect type (or ``types``) concurrently; returns one outcome per type.

    The inputs are checked first (:func:`dstray.data.preflight`, as ``dstray inspect`` does): a
    problem refuses the start before Ray starts; backgrounds over ``max_image_pixels`` are skipped.
    It says what it found: the types already fitted, and the step each other type resumes from.
    ``faults``: test hooks (:class:`dstray.distributed.faults.Faults`).
    """
    reserve_local_runtime(address)
    data = storage.absolute(data)  # Train workers run in other working directories
    storage.require_folder(out, "--out")
    dataset = load_dataset(data)
    types = types or fitted_types(dataset)
    for t in types:
        dataset.references(t)  # raises a clear error for an unknown type
    found = preflight(dataset, job="fit-dst", types=types, reference_id=base.reference_id,
                      max_image_pixels=max_image_pixels, area=base.area)
    storage_path = ray_storage_path(out, storage_path)

    outcomes, todo = [], []
    init_ray(address)
    gpu = resolve_use_gpu(use_gpu)
    for t in types:
        cfg = replace(base, defect_type=t)
        fit_json = storage.join(out, t, "fit.json")
        if storage.exists(storage.join(out, t, "model.pt")) and storage.exists(fit_json):
            done = json.loads(storage.read_bytes(fit_json))
            if not changed_fields(done["config"], cfg) and done["config"]["steps"] == cfg.steps:  # same model
                outcomes.append(FitOutcome(t, "skipped", steps=int(done["metrics"].get("step", 0)),
                                           losses={k: v for k, v in done["metrics"].items() if k != "step"},
                                           checkpoint=storage.join(out, t, "model.pt")))
                continue
        extra = dict(_extra or {}, skip=found.skip, faults=faults_config(faults))
        if "fault_marker" in extra:
            extra["fault_marker"] = f"{extra['fault_marker']}-{t}"
        todo.append((t, to_dict(cfg), extra))
    if outcomes:
        log.info("%d of %d types already fitted with these settings in %s: %s", len(outcomes), len(types), out,
                 ", ".join(o.defect_type for o in outcomes))
    for t, cfg, _ in todo:
        last = latest_checkpoint(storage.join(storage_path, f"dst-{t}"))
        if last is not None:
            log.info("resumed %s from step %d of %d (%s)", t, last.step, cfg["steps"], last.path)
    # Only as many runs as the cluster can hold at once: a waiting run still holds a driver task and
    # a Train controller (each imports torch, ~0.75 GB), which is what filled 8.5 GB on 2 cores.
    resources = ray.cluster_resources()
    slots = int(resources.get("GPU", 0)) if gpu else int(resources.get("CPU", 1) // cpus_per_worker)
    slots = max(1, slots)
    log.info("fitting %d defect type(s) with Ray Train%s, %d at a time; %d already done", len(todo),
             " on GPU" if gpu else "", min(slots, len(todo)), len(outcomes))
    pending = {}
    while todo or pending:
        while todo and len(pending) < slots:
            t, cfg, extra = todo.pop(0)
            pending[_fit_one.remote(cfg, data, out, storage_path, gpu, cpus_per_worker, max_failures, extra)] = t
        ready, _ = ray.wait(list(pending), num_returns=1)
        t = pending.pop(ready[0])
        try:
            outcome = FitOutcome(**ray.get(ready[0]))
        except Exception as exc:
            outcome = FitOutcome(t, "failed", error=f"{type(exc).__name__}: {exc}")
        log.info("%s: %s after %.0f s %s", t, outcome.status, outcome.seconds, outcome.error)
        outcomes.append(outcome)
    return sorted(outcomes, key=lambda o: o.defect_type)


def saved(out: str, *, data: str | None, types: list[str] | None, steps: int, storage_path: str | None = None) -> str:
    """What an interrupted ``fit-dst --all`` left: per type fitted, or the step of its newest checkpoint."""
    types = types or fitted_types(load_dataset(storage.absolute(data)))
    storage_path = ray_storage_path(out, storage_path)
    parts = []
    for t in types:
        last, fit_json = latest_checkpoint(storage.join(storage_path, f"dst-{t}")), storage.join(out, t, "fit.json")
        if storage.exists(fit_json) and json.loads(storage.read_bytes(fit_json))["config"]["steps"] == steps:
            parts.append(f"{t} fitted")
        elif last is not None:
            parts.append(f"{t} at step {last.step} of {steps}")
    return (", ".join(parts) + f" (checkpoints in {storage_path})") if parts else "no checkpoint yet"


def format_table(outcomes: list[FitOutcome]) -> str:
    """The end-of-run table: type, status, steps, final loss terms, the held-out check, time, checkpoint.

    ``DST (held-out)`` and ``y' (held-out)``: the normalised total loss of DST and of its first step
    alone on batches of backgrounds the fit never saw (:meth:`dstray.dst.fit.DSTFitter.check_heldout`);
    a type whose DST is not below y' is flagged with ``!``.
    """
    head = (f"{'type':<10} {'status':<8} {'steps':>5} " + " ".join(f"{t:>8}" for t in TERMS)
            + f" {'DST held':>9} {'y held':>8} {'time s':>7}  checkpoint")
    lines = [head, "-" * len(head)]
    for o in outcomes:
        losses = o.losses or {}
        vals = " ".join(f"{losses.get(t, float('nan')):>8.4g}" for t in TERMS)
        dst, yprime = losses.get("heldout_dst", float("nan")), losses.get("heldout_yprime", float("nan"))
        flag = "!" if dst >= yprime else " "
        tail = o.checkpoint if o.status != "failed" else f"ERROR {o.error}"
        lines.append(f"{o.defect_type:<10} {o.status:<8} {o.steps:>5} {vals} {dst:>8.4g}{flag} {yprime:>8.4g} "
                     f"{o.seconds:>7.1f}  {tail}")
    return "\n".join(lines)
