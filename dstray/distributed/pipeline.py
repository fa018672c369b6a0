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
    RUN/generated/          Parquet dataset (data/, rejects/, summary) of the first pool (DST)  <- Ray Data
    RUN/generated-<g>/      the other generators' pools the chosen data policy draws from
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

from dstray.config import GENERATORS, PipelineConfig, SegConfig, from_dict, to_dict, without_later_defaults
from dstray.data import InputProblems, load_dataset, validate
from dstray.distributed.console import Console
from dstray.distributed.faults import latest_checkpoint
from dstray.distributed.fit import FitOutcome, fit_all
from dstray.distributed.generate import generate
from dstray.distributed.seeds import train_seeds
from dstray.distributed.runtime import init_ray, reserve_local_runtime
from dstray.distributed.train_seg import train_seg
from dstray.dst.areas import check_area_config
from dstray.dst.fit import fitted_types
from dstray.dst.synth import check_contrast
from dstray.policy import generator_for, wanted_generators
from dstray.presets import chosen_policy, with_policy
from dstray.report import write_report
from dstray.report.headline import format_headline, labels, read_headline
from dstray.seeds import stage_seeds
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


def pool_generators(cfg: PipelineConfig, types: list[str]) -> list[str]:
    """The generators whose pools the run makes: the chosen policy's (:func:`dstray.policy.wanted_generators`,
    DST first) with ``generator="policy"``, else that one generator."""
    if cfg.generator != "policy":
        return [cfg.generator]
    policy = chosen_policy()
    wanted = wanted_generators(policy, types)
    if not wanted:
        raise ValueError("the chosen data policy gives none of this dataset's defect types a generated sample ("
                         + ", ".join(f"{t}: {generator_for(policy, t)}" for t in types)
                         + "); give --generator dst, histmatch or copy to train on one generator's samples")
    return sorted(wanted, key=lambda g: (g != "dst", wanted.index(g)))


def pool_folder(generator: str, first: str) -> str:
    """``generated`` for the run's first pool (what the report shows), ``generated-<generator>`` for the others."""
    return "generated" if generator == first else f"generated-{generator}"


def stage_configs(cfg: PipelineConfig, types: list[str] | None = None) -> dict:
    """The config of every stage of the run ``cfg`` (absolute ``data`` and ``out``), seeded from the run's seed.

    The run's seed is the one owner: every stage's seed is :func:`dstray.seeds.stage_seeds` of
    ``cfg.seed`` (the seeds inside ``cfg.dst``, ``cfg.generate`` and ``cfg.seg`` are not read).
    Returns ``{"dst": DSTConfig, "generate": {folder: GenerateConfig}, "seg": {folder: SegConfig}, "report": seed}``:
    one pool per generator of :func:`pool_generators` (``types``: the dataset's defect types, read when None),
    with the areas of ``cfg.generate.area`` (family, widen) on DST's geometry; ``seg`` holds ``seg`` (real
    splits + the defect-free share + the pools, under the chosen policy with ``generator="policy"``) and, with
    ``cfg.baseline``, ``seg-ref`` (the same config and real data without the pools: references if no split).
    """
    run, seeds = Path(cfg.out), stage_seeds(cfg.seed)
    dst = dataclasses.replace(cfg.dst, seed=seeds["dst"])
    types = types if types is not None else fitted_types(load_dataset(cfg.data))
    gens = pool_generators(cfg, types)
    area = dataclasses.replace(cfg.dst.area, family=cfg.generate.area.family, widen=cfg.generate.area.widen)
    generate = {pool_folder(g, gens[0]): dataclasses.replace(
        cfg.generate, data=cfg.data, models=str(run / "models"), generator=g, num_samples=cfg.num_samples,
        out=str(run / pool_folder(g, gens[0])), use_gpu=cfg.use_gpu, area=area, seed=seeds["generate"])
        for g in gens}
    seg_cfg = with_policy(cfg.seg) if cfg.generator == "policy" else cfg.seg
    # the segmenter reads the pools in GENERATORS order, as an experiment cell lists them (cells.plan), so that the
    # same seed gives the same rows in the same order, hence the same weights, in both commands
    ordered = sorted(generate, key=lambda f: GENERATORS.index(generate[f].generator))
    seg = {"seg": dataclasses.replace(seg_cfg, data=cfg.data, synthetic=[str(run / f / "data") for f in ordered],
                                      seed=seeds["seg"])}
    if cfg.baseline:
        seg["seg-ref"] = dataclasses.replace(seg_cfg, data=cfg.data, synthetic=[], seed=seeds["seg"],
                                             real_splits=cfg.seg.real_splits or ["reference"])
    return {"dst": dst, "generate": generate, "seg": seg, "report": seeds["report"]}


def run_pipeline(cfg: PipelineConfig, *, address: str | None = None) -> dict:
    """Run (or finish) every stage; returns ``pipeline.json``'s content.

    ``cfg.seed`` is the run's seed; every stage's is derived from it (:func:`stage_configs`).
    The terminal gets a few lines per stage (also in ``RUN/summary.txt``); Ray's output goes to
    ``RUN/logs/ray.log`` (:class:`dstray.distributed.console.Console`).
    """
    reserve_local_runtime(address)
    run = Path(cfg.out).resolve()
    cfg = dataclasses.replace(cfg, data=absolute(cfg.data), out=str(run))  # Ray workers run elsewhere
    # fail fast, before any Ray work or folder: the input check of fit-dst (generate's is a subset)
    check_area_config(cfg.dst.area)  # ValueError: what is wrong and what to give
    check_contrast(cfg.generate.contrast)
    dataset = load_dataset(cfg.data)
    problems = validate(dataset, job="fit-dst", max_image_pixels=cfg.generate.max_image_pixels, area=cfg.dst.area)
    if problems:
        raise InputProblems("pipeline", dataset.root, problems.problems)
    run.mkdir(parents=True, exist_ok=True)
    with Console(run / "logs" / "ray.log", run / "summary.txt") as console:
        started_ray = not ray.is_initialized()
        init_ray(address)
        try:
            return _Run(cfg, run, fitted_types(dataset), console, address).all_stages()
        finally:
            if started_ray:  # the runtime this pipeline started: stopped while its output still goes to the log
                ray.shutdown()


N_STAGES = 5


def saved(out: str) -> str:
    """What a run folder holds of an unfinished pipeline: the finished stages, then the running one's progress
    (DST types fitted, generated shards, the segmenters' newest checkpoints or seeds)."""
    run = Path(out).resolve()
    parts = []
    models = sorted(p.parent.name for p in run.glob("models/*/fit.json"))
    if models:
        parts.append(f"{len(models)} DST model(s)")
    gen = _Stage(run, "generated", "")
    if gen.marker.exists():
        shards = len(list((run / "generated" / "_shards").glob("*.json")))
        parts.append("generate done" if json.loads(gen.marker.read_text()).get("done") else f"{shards} shard(s)")
    done = {name for name in ("seg", "seg-ref", "eval", "eval-ref") if (run / name / "_stage.json").exists()
            and json.loads((run / name / "_stage.json").read_text()).get("done")}
    for folder in ("seg", "seg-ref"):
        if folder in done:
            parts.append(f"{folder} done")
            continue
        last = latest_checkpoint(str(run / folder / "_ray" / f"train-{folder}"))
        seeds = sorted(p.parent.name for p in (run / folder).glob("seed-*/state.pt"))
        if last is not None:
            parts.append(f"{folder} at step {last.step}")
        elif seeds:
            parts.append(f"{folder} {', '.join(seeds)} checkpointed")
    parts += [f"{name} done" for name in ("eval", "eval-ref") if name in done]
    return (", ".join(parts) + f" in {run}") if parts else "no stage yet"


class _Run:
    """One pipeline run: one method per stage, each recording its timing in ``pipeline.json``."""

    def __init__(self, cfg: PipelineConfig, run: Path, types: list[str], console: Console, address: str | None):
        self.cfg, self.run, self.types, self.say, self.address = cfg, run, types, console.say, address
        self.stages = stage_configs(cfg, types)
        first = next(iter(self.stages["generate"].values()))
        ran = dataclasses.replace(cfg, dst=self.stages["dst"], generate=first,
                                  seg=self.stages["seg"]["seg"])  # the configs as run: the stages' own seeds
        self.info = {"config": to_dict(ran), "seeds": stage_seeds(cfg.seed), "defect_types": types,
                     "data": cfg.data or "embedded sample",
                     "versions": {"dstray": dstray.__version__, "torch": torch.__version__, "ray": ray.__version__,
                                  "python": platform.python_version()},
                     "stages": {}}

    def record(self, name: str, seconds: float, state: str, **extra) -> None:
        self.info["stages"][name] = {"seconds": round(seconds, 2), "reused": state == "done", **extra}
        (self.run / "pipeline.json").write_text(json.dumps(self.info, indent=2, default=str))

    def all_stages(self) -> dict:
        cfg, run = self.cfg, self.run
        self.say(f"dstray pipeline, {cfg.preset} preset, on {cfg.data or 'the embedded sample'}: {len(self.types)} "
                 f"defect types ({', '.join(self.types)}) -> {run}")
        self.say(f"Ray's worker logs and progress go to {run / 'logs' / 'ray.log'}")
        found = saved(str(run))
        if found != "no stage yet":
            self.say(f"found {found}: finished stages are reused, the others resume")
        digests = self.fit()
        generated_key = self.generate(digests)
        folders = self.train(generated_key)
        head = self.evaluate(folders)
        html = self.report()
        total = sum(st["seconds"] for st in self.info["stages"].values())
        self.say("")
        self.say("stage timings: " + ", ".join(f"{n} {st['seconds']:.0f} s" + (" (reused)" if st["reused"] else "")
                                               for n, st in self.info["stages"].items()) + f"; total {total:.0f} s")
        for line in format_headline(head):
            self.say(line)
        self.say(f"report: {html}")
        return self.info

    def fit(self) -> dict[str, str]:
        """[1] DST for every defect type, concurrently (Ray Train); fit_all skips finished types.
        Returns the sha256 of each type's model."""
        t0, dst = time.perf_counter(), self.stages["dst"]
        self.say(f"[1/{N_STAGES}] fit DST per type: {dst.steps} steps each, {dst.heldout} held-out backgrounds "
                 f"(Ray Train) ...")
        outcomes = fit_all(dst, data=self.cfg.data, out=str(self.run / "models"), use_gpu=self.cfg.use_gpu,
                           max_image_pixels=self.cfg.generate.max_image_pixels)
        for o in outcomes:
            self.say(_fit_line(o) if o.status != "failed" else f"  {o.defect_type:<9} FAILED: {o.error}")
        failed = [o for o in outcomes if o.status == "failed"]
        if failed:
            raise RuntimeError("DST fit failed for " + ", ".join(f"{o.defect_type} ({o.error})" for o in failed)
                               + f"; the Ray Train logs are in {self.run / 'logs' / 'ray.log'}")
        seconds = time.perf_counter() - t0
        self.say(f"  fit: {len(outcomes)} types in {seconds:.0f} s")
        self.record("fit", seconds, "done" if all(o.status == "skipped" for o in outcomes) else "new",
                    types=[o.defect_type for o in outcomes])
        return {o.defect_type: hashlib.sha256((self.run / "models" / o.defect_type / "model.pt").read_bytes())
                .hexdigest() for o in outcomes}

    def generate(self, digests: dict[str, str]) -> str:
        """[2] The synthetic training set: one pool per generator (Ray Data). Returns the stage key the
        segmenter's depends on (the pools' keys)."""
        t0, pools = time.perf_counter(), self.stages["generate"]
        n = next(iter(pools.values())).num_samples
        self.say(f"[2/{N_STAGES}] generate {n} samples with {', '.join(c.generator for c in pools.values())} "
                 f"({'one pool each, ' if len(pools) > 1 else ''}Ray Data) ...")
        keys, summaries, states = [], {}, []
        for folder, gen_cfg in pools.items():
            stage = _Stage(self.run, folder, _key(without_later_defaults(gen_cfg), digests if gen_cfg.generator == "dst" else {}))
            states.append(stage.begin())
            summary = generate(gen_cfg, address=self.address)
            stage.finish(summary=summary)
            keys.append(stage.key)
            summaries[gen_cfg.generator] = summary
            rate = f"{summary['rows_per_s']:.1f} rows/s" if summary.get("rows_per_s") else "reused"
            self.say(f"  {gen_cfg.generator}: {summary['written']} rows written, {summary['rejected']} rejected, "
                     f"{rate}")
        seconds = time.perf_counter() - t0
        self.say(f"  generate: {seconds:.0f} s")
        self.record("generate", seconds, "done" if all(s == "done" for s in states) else "new",
                    summary=next(iter(summaries.values())), pools=summaries)
        return _key(keys)

    def train(self, generated_key: str) -> dict[str, Path]:
        """[3] The segmenter on the real splits + the generated samples and (baseline) on the real splits
        alone: the same config, two Ray Train runs (at once when the cluster has room). Returns their folders."""
        t0, runs = time.perf_counter(), self.stages["seg"]
        names = labels({"config": self.info["config"]})
        label = {"seg": names["generated"], "seg-ref": names["baseline"]}
        if self.cfg.seeds:
            return self.train_seeds(generated_key, label)
        together, threads = _seg_plan(len(runs))
        seg_cfg = runs["seg"]
        self.say(f"[3/{N_STAGES}] segmentation: {seg_cfg.arch}/{seg_cfg.backbone}, {seg_cfg.window} px windows, "
                 f"{seg_cfg.steps} steps, val every {seg_cfg.eval_every}; {len(runs)} run(s), "
                 f"{'at once' if together else 'one after the other'} (Ray Train) ...")
        stages = {folder: _Stage(self.run, folder, _key(to_dict(c), generated_key if folder == "seg" else ""))
                  for folder, c in runs.items()}
        states = {folder: st.begin() for folder, st in stages.items()}
        took: dict[str, float | None] = {folder: None for folder in runs}
        pending = {}
        for folder, c in runs.items():
            if states[folder] != "done":
                name = "train-" + folder
                pending[_train_seg_task.remote(to_dict(c), str(stages[folder].dir), name, self.cfg.use_gpu, 1.0,
                                               threads)] = folder
                if not together:
                    took[folder] = ray.get(next(reversed(pending)))
        for ref, folder in pending.items():
            took[folder] = ray.get(ref)
        for folder in runs:
            stages[folder].finish()
            self.say(_seg_line(label[folder], stages[folder].dir, took[folder]))
        seconds = time.perf_counter() - t0
        self.say(f"  segmentation: {seconds:.0f} s")
        self.record("train", seconds, "done" if all(s == "done" for s in states.values()) else "new",
                    runs={f: label[f] for f in runs})
        return {folder: st.dir for folder, st in stages.items()}

    def train_seeds(self, generated_key: str, label: dict[str, str]) -> dict[str, Path]:
        """[3] with ``--seeds``: each segmenter config once per seed (:func:`dstray.distributed.seeds.train_seeds`,
        parallel Ray tasks, each run in ``seg[-ref]/seed-<s>/``); seed s trains with ``stage_seeds(s)["seg"]``,
        the segmenter of ``pipeline --seed s`` (DST and generation stay ``--seed``'s). Both tables (mean, std,
        every seed) on the terminal and in ``pipeline.json``, with the seeds the runs got. The evaluation and the
        report then show the first seed's models."""
        t0, runs, seeds = time.perf_counter(), self.stages["seg"], list(self.cfg.seeds)
        self.say(f"[3/{N_STAGES}] segmentation over seeds {','.join(map(str, seeds))}: {len(runs)} config(s) x "
                 f"{len(seeds)} seeds as parallel Ray tasks ...")
        folders, summaries = {}, {}
        for folder, c in runs.items():
            own = {s: stage_seeds(s)["seg"] for s in seeds}  # in the key: runs of the older raw-seed rule are redone
            stage = _Stage(self.run, folder, _key(to_dict(c), generated_key if folder == "seg" else "", own))
            stage.begin()
            summary = train_seeds(c, seeds, out=str(stage.dir), address=self.address, seed_of=own.__getitem__)
            stage.finish()
            summaries[label[folder]] = {k: summary[k] for k in ("test", "val", "threads", "seg_seeds")}
            self.say(f"  {label[folder]}:")
            for line in summary["table"].splitlines():
                self.say("    " + line)
            folders[folder] = stage.dir / f"seed-{seeds[0]}"
        seconds = time.perf_counter() - t0
        self.say(f"  segmentation: {seconds:.0f} s")
        self.record("train", seconds, "new", runs={f: label[f] for f in runs}, seeds=seeds, over_seeds=summaries)
        return folders

    def evaluate(self, folders: dict[str, Path]) -> dict:
        """[4] Each segmenter on the real test split (selection used val only), at its threshold chosen on val.
        Returns the headline (:func:`dstray.report.headline.read_headline`)."""
        t0 = time.perf_counter()
        test_split = self.stages["seg"]["seg"].test_split or "test"
        self.say(f"[4/{N_STAGES}] evaluate on the real {test_split} split ...")
        states = []
        for folder, out in (("seg", "eval"), ("seg-ref", "eval-ref")):
            if folder not in folders:
                continue
            ckpt = folders[folder] / "model.pt"
            stage = _Stage(self.run, out, _key(hashlib.sha256(ckpt.read_bytes()).hexdigest(), test_split))
            states.append(stage.begin())
            if states[-1] != "done":
                evaluate_checkpoint(ckpt, out=stage.dir, split=test_split, device="cpu")
            stage.finish()
        head = read_headline(self.run, self.info)
        self.info["headline"] = head
        seconds = time.perf_counter() - t0
        main = head["rows"][0]
        self.say(f"  evaluation: {head['n_images']} images, pixel F1 {main['f1']:.3f} ({main['label']}); "
                 f"{seconds:.0f} s")
        self.record("evaluate", seconds, "done" if all(s == "done" for s in states) else "new",
                    f1=main["f1"], macro_f1=main["macro_f1"])
        return head

    def report(self) -> Path:
        """[5] The visual report, drawn with the report stage's seed (derived from the run's)."""
        t0 = time.perf_counter()
        self.say(f"[5/{N_STAGES}] report ...")
        html = self.run / "report" / "index.html"
        self.record("report", 0.0, "new", path=str(html))  # before writing: the report shows it
        write_report(self.run, seed=self.stages["report"])
        self.record("report", time.perf_counter() - t0, "new", path=str(html))
        self.say(f"  report: {time.perf_counter() - t0:.0f} s")
        return html
