"""The one-command pipeline, as one Ray job: fit DST (Ray Train) for every defect type ->
generate (Ray Data) -> train the segmenter -> evaluate on the real test split -> HTML report.

Every stage writes into the run folder and records a key of its inputs and config in
``<stage>/_stage.json``. Re-running the same command reuses a finished stage whose key is
unchanged, resumes an unfinished one, and redoes (after clearing) one whose inputs changed;
so a re-run after a crash only redoes what is missing.

Run folder::

    RUN/pipeline.json       config, defect types, versions, stage timings, the headline F1s
    RUN/summary.txt         the lines the pipeline printed: one per stage (per type / per run), timings, the F1 table
    RUN/logs/ray.log        everything else this process's stdout/stderr got: Ray worker logs, Ray Train/Data progress
    RUN/models/<type>/      DST checkpoints (model.pt, fit.json)      <- Ray Train
    RUN/generated/          Parquet dataset (data/, rejects/, summary) <- Ray Data
    RUN/seg/                segmenter trained on the real splits + the generated samples (model.pt: selected on
                            val, with its threshold), history.jsonl, val/, test/   <- Ray Train
    RUN/seg-ref/            the same segmenter config on the real splits alone (the baseline; at once with seg
                            on clusters of 4+ CPUs, else after it)
    RUN/eval/, eval-ref/    eval.json / eval.csv / eval.png of each (real test split, the model's threshold)
    RUN/report/index.html   the visual report; its first section is the F1 table of seg vs seg-ref
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import platform
import shutil
import time
from pathlib import Path

import ray
import torch

import dstray

from dstray.config import PipelineConfig, SegConfig, from_dict, to_dict
from dstray.data import InputProblems, load_dataset, validate
from dstray.distributed.console import Console
from dstray.distributed.fit import FitOutcome, fit_all
from dstray.distributed.generate import generate
from dstray.distributed.runtime import init_ray
from dstray.distributed.train_seg import train_seg
from dstray.dst.fit import fitted_types
from dstray.report import write_report
from dstray.report.headline import format_headline, labels, read_headline
from dstray.seg.train import evaluate_checkpoint, read_history
from dstray.storage import absolute

log = logging.getLogger("dstray")

def _key(*parts) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


class _Stage:
    """``RUN/<name>/_stage.json`` bookkeeping: reuse, resume, or redo."""

    def __init__(self, run: Path, name: str, key: str):
        self.dir, self.key, self.name = run / name, key, name
        self.marker = self.dir / "_stage.json"

    def state(self) -> str:
        if not self.marker.exists():
            return "new" if not self.dir.exists() else "stale"
        info = json.loads(self.marker.read_text())
        if info.get("key") != self.key:
            return "stale"
        return "done" if info.get("done") else "partial"

    def begin(self) -> str:
        state = self.state()
        if state == "stale":
            log.info("%s: inputs or config changed since the last run; redoing it", self.name)
            shutil.rmtree(self.dir)
        self.dir.mkdir(parents=True, exist_ok=True)
        if state != "done":
            self.marker.write_text(json.dumps({"key": self.key, "done": False}))
        return state

    def finish(self, **info) -> None:
        self.marker.write_text(json.dumps({"key": self.key, "done": True, **info}, default=str))


@ray.remote(num_cpus=0)
def _train_seg_task(cfg: dict, out: str, name: str, use_gpu: str, cpus_per_worker: float, threads: int) -> float:
    """One segmenter run (a light Ray task; its Ray Train worker holds the resources), so that the
    pipeline's two runs train at the same time. Returns its seconds."""
    t0 = time.perf_counter()
    train_seg(from_dict(SegConfig, cfg), out=out, name=name, use_gpu=use_gpu, cpus_per_worker=cpus_per_worker,
              threads_per_worker=threads)
    return time.perf_counter() - t0


def _fit_line(o: FitOutcome) -> str:
    losses = o.losses or {}
    dst, yprime = losses.get("heldout_dst"), losses.get("heldout_yprime")
    check = (f"held-out DST {dst:.3f} {'<' if dst < yprime else '>='} y' {yprime:.3f}"
             if dst is not None and yprime is not None else "no held-out check")
    status = "reused" if o.status == "skipped" else f"{o.seconds:.0f} s"
    return f"  {o.defect_type:<9} {o.steps:>4} steps  loss {losses.get('total', float('nan')):.3f}  {check}  ({status})"


def _seg_line(label: str, folder: Path, seconds: float | None) -> str:
    rows = read_history(folder / "history.jsonl") if (folder / "history.jsonl").exists() else []
    if not rows:
        return f"  {label}: no evaluation recorded"
    last = rows[-1]
    took = "reused" if seconds is None else f"{seconds:.0f} s"
    return (f"  {label}: {last['step']} steps, loss {last['loss']:.3f}, val F1 {last['best_f1']:.3f} "
            f"(selected: step {last['best_step']})  ({took})")


def _seg_plan(n_runs: int) -> tuple[bool, int]:
    """Whether the segmenter runs go at once, and each worker's torch threads. Two at once need a
    cluster of 4 CPUs or more: each Ray Train worker holds 1 CPU and the generated run's Ray Data
    reads need 2 more (ListFiles + ReadFiles); on 2 CPUs the read was starved ("backpressured:
    ResourceBudget") and hung, so there the runs go one after the other with all the node's threads."""
    together = n_runs > 1 and float(ray.cluster_resources().get("CPU", 2)) >= 4
    return together, max(1, (os.cpu_count() or 2) // (n_runs if together else 1))


def run_pipeline(cfg: PipelineConfig, *, address: str | None = None) -> dict:
    """Run (or finish) every stage; returns ``pipeline.json``'s content.

    ``cfg.seed`` seeds every stage: it replaces the seeds of ``cfg.dst``, ``cfg.generate`` and ``cfg.seg``.
    The terminal gets a few lines per stage (also in ``RUN/summary.txt``); Ray's output goes to
    ``RUN/logs/ray.log`` (:class:`dstray.distributed.console.Console`).
    """
    run = Path(cfg.out).resolve()
    cfg = dataclasses.replace(cfg, data=absolute(cfg.data), out=str(run),  # Ray workers run elsewhere
                              dst=dataclasses.replace(cfg.dst, seed=cfg.seed),
                              generate=dataclasses.replace(cfg.generate, seed=cfg.seed),
                              seg=dataclasses.replace(cfg.seg, seed=cfg.seed))
    # fail fast, before any Ray work or folder: the input check of fit-dst (generate's is a subset)
    dataset = load_dataset(cfg.data)
    problems = validate(dataset, job="fit-dst", max_image_pixels=cfg.generate.max_image_pixels, area=cfg.dst.area)
    if problems:
        raise InputProblems("pipeline", dataset.root, problems.problems)
    run.mkdir(parents=True, exist_ok=True)
    with Console(run / "logs" / "ray.log", run / "summary.txt") as console:
        return _run(cfg, run, dataset, console, address)


def _run(cfg: PipelineConfig, run: Path, dataset, console: Console, address: str | None) -> dict:
    say = console.say
    types = fitted_types(dataset)
    info = {"config": to_dict(cfg), "defect_types": types, "data": cfg.data or "embedded sample",
            "versions": {"dstray": dstray.__version__, "torch": torch.__version__, "ray": ray.__version__,
                         "python": platform.python_version()},
            "stages": {}}

    def record(name: str, seconds: float, state: str, **extra) -> None:
        info["stages"][name] = {"seconds": round(seconds, 2), "reused": state == "done", **extra}
        (run / "pipeline.json").write_text(json.dumps(info, indent=2, default=str))

    say(f"dstray pipeline, {cfg.preset} preset, on {cfg.data or 'the embedded sample'}: {len(types)} defect "
        f"types ({', '.join(types)}) -> {run}")
    say(f"Ray's worker logs and progress go to {run / 'logs' / 'ray.log'}")
    started_ray = not ray.is_initialized()
    init_ray(address)
    with_baseline = cfg.baseline
    n_stages = 5

    # [1] DST for every defect type, concurrently (Ray Train); fit_all skips finished types.
    t0 = time.perf_counter()
    say(f"[1/{n_stages}] fit DST per type: {cfg.dst.steps} steps each, {cfg.dst.heldout} held-out backgrounds "
        f"(Ray Train) ...")
    outcomes = fit_all(cfg.dst, data=cfg.data, out=str(run / "models"), use_gpu=cfg.use_gpu,
                       max_image_pixels=cfg.generate.max_image_pixels)
    for o in outcomes:
        say(_fit_line(o) if o.status != "failed" else f"  {o.defect_type:<9} FAILED: {o.error}")
    failed = [o for o in outcomes if o.status == "failed"]
    if failed:
        raise RuntimeError("DST fit failed for " + ", ".join(f"{o.defect_type} ({o.error})" for o in failed)
                           + f"; the Ray Train logs are in {run / 'logs' / 'ray.log'}")
    seconds = time.perf_counter() - t0
    say(f"  fit: {len(outcomes)} types in {seconds:.0f} s")
    record("fit", seconds, "done" if all(o.status == "skipped" for o in outcomes) else "new",
           types=[o.defect_type for o in outcomes])

    # [2] Generate the synthetic training set (Ray Data).
    t0 = time.perf_counter()
    say(f"[2/{n_stages}] generate {cfg.num_samples} samples with {cfg.generator} (Ray Data) ...")
    digests = {o.defect_type: hashlib.sha256((run / "models" / o.defect_type / "model.pt").read_bytes()).hexdigest()
               for o in outcomes}
    gen_cfg = dataclasses.replace(cfg.generate, data=cfg.data, models=str(run / "models"), generator=cfg.generator,
                                  num_samples=cfg.num_samples, out=str(run / "generated"), use_gpu=cfg.use_gpu,
                                  area=cfg.dst.area)
    stage = _Stage(run, "generated", _key(to_dict(gen_cfg), digests))
    state = stage.begin()
    summary = generate(gen_cfg, address=address)
    stage.finish(summary=summary)
    seconds = time.perf_counter() - t0
    rate = f"{summary['rows_per_s']:.1f} rows/s" if summary.get("rows_per_s") else "reused"
    say(f"  generate: {summary['written']} rows written, {summary['rejected']} rejected, {rate}; {seconds:.0f} s")
    record("generate", seconds, state, summary=summary)

    # [3] The segmenter on the real splits + the generated samples, and (baseline) on the real splits alone:
    #     the same config, two Ray Train runs at once.
    t0 = time.perf_counter()
    seg_cfg = dataclasses.replace(cfg.seg, data=cfg.data, synthetic=[str(run / "generated" / "data")])
    runs = {"seg": (seg_cfg, "train-seg")}
    if with_baseline:
        base_cfg = dataclasses.replace(cfg.seg, data=cfg.data, synthetic=[],
                                       real_splits=cfg.seg.real_splits or ["reference"])
        runs["seg-ref"] = (base_cfg, "train-seg-ref")
    names = labels({"config": info["config"]})
    label = {"seg": names["generated"], "seg-ref": names["baseline"]}
    together, threads = _seg_plan(len(runs))
    say(f"[3/{n_stages}] segmentation: {seg_cfg.arch}/{seg_cfg.backbone}, {seg_cfg.window} px windows, "
        f"{seg_cfg.steps} steps, val every {seg_cfg.eval_every}; {len(runs)} run(s), "
        f"{'at once' if together else 'one after the other'} (Ray Train) ...")
    stages = {folder: _Stage(run, folder, _key(to_dict(c), stage.key if folder == "seg" else ""))
              for folder, (c, _) in runs.items()}
    states = {folder: st.begin() for folder, st in stages.items()}
    took: dict[str, float | None] = {folder: None for folder in runs}
    pending = {}
    for folder, (c, name) in runs.items():
        if states[folder] != "done":
            pending[_train_seg_task.remote(to_dict(c), str(stages[folder].dir), name, cfg.use_gpu, 1.0,
                                           threads)] = folder
            if not together:
                took[folder] = ray.get(next(reversed(pending)))
    for ref, folder in pending.items():
        took[folder] = ray.get(ref)
    for folder in runs:
        stages[folder].finish()
        say(_seg_line(label[folder], stages[folder].dir, took[folder]))
    seconds = time.perf_counter() - t0
    say(f"  segmentation: {seconds:.0f} s")
    record("train", seconds, "done" if all(s == "done" for s in states.values()) else "new",
           runs={f: label[f] for f in runs})

    # [4] Evaluate on the real test split (selection used val only), at the threshold chosen on val.
    t0 = time.perf_counter()
    test_split = seg_cfg.test_split or "test"
    say(f"[4/{n_stages}] evaluate on the real {test_split} split ...")
    eval_states = []
    for folder, out in (("seg", "eval"), ("seg-ref", "eval-ref")):
        if folder not in runs:
            continue
        ckpt = stages[folder].dir / "model.pt"
        eval_stage = _Stage(run, out, _key(hashlib.sha256(ckpt.read_bytes()).hexdigest(), test_split))
        eval_states.append(eval_stage.begin())
        if eval_states[-1] != "done":
            evaluate_checkpoint(ckpt, out=eval_stage.dir, split=test_split, device="cpu")
        eval_stage.finish()
    head = read_headline(run, info)
    info["headline"] = head
    seconds = time.perf_counter() - t0
    main = head["rows"][0]
    say(f"  evaluation: {head['n_images']} images, pixel F1 {main['f1']:.3f} ({main['label']}); {seconds:.0f} s")
    record("evaluate", seconds, "done" if all(s == "done" for s in eval_states) else "new",
           f1=main["f1"], macro_f1=main["macro_f1"])

    # [5] The visual report.
    t0 = time.perf_counter()
    say(f"[5/{n_stages}] report ...")
    html = run / "report" / "index.html"
    record("report", 0.0, "new", path=str(html))  # before writing: the report shows it
    write_report(run)
    record("report", time.perf_counter() - t0, "new", path=str(html))
    say(f"  report: {time.perf_counter() - t0:.0f} s")

    stages_s = info["stages"]
    total = sum(st["seconds"] for st in stages_s.values())
    say("")
    say("stage timings: " + ", ".join(f"{n} {st['seconds']:.0f} s" + (" (reused)" if st["reused"] else "")
                                      for n, st in stages_s.items()) + f"; total {total:.0f} s")
    for line in format_headline(head):
        say(line)
    say(f"report: {html}")
    if started_ray:  # the runtime this pipeline started: stopped while its output still goes to the log
        ray.shutdown()
    return info
