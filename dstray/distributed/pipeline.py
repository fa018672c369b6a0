"""The one-command pipeline, as one Ray job: fit DST (Ray Train) for every defect type ->
generate (Ray Data) -> train the segmenter -> evaluate on the real test split -> HTML report.

Every stage writes into the run folder and records a key of its inputs and config in
``<stage>/_stage.json``. Re-running the same command reuses a finished stage whose key is
unchanged, resumes an unfinished one, and redoes (after clearing) one whose inputs changed;
so a re-run after a crash only redoes what is missing.

Run folder::

    RUN/pipeline.json       config, versions, stage timings
    RUN/models/<type>/      DST checkpoints (model.pt, fit.json)      <- Ray Train
    RUN/generated/          Parquet dataset (data/, rejects/, summary) <- Ray Data
    RUN/seg/                segmenter (model.pt: selected on val, with its threshold), history.jsonl, val/, test/
    RUN/eval/               eval.json / eval.csv / eval.png (real test split, the model's threshold)
    RUN/report/index.html   the visual report
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import platform
import shutil
import time
from pathlib import Path

import ray
import torch

import dstray
from dstray.config import PipelineConfig, to_dict
from dstray.data import InputProblems, load_dataset, validate
from dstray.distributed.fit import fit_all, format_table
from dstray.distributed.generate import generate
from dstray.distributed.runtime import init_ray
from dstray.distributed.train_seg import train_seg
from dstray.report import write_report
from dstray.seg.train import evaluate_checkpoint
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


def run_pipeline(cfg: PipelineConfig, *, address: str | None = None) -> dict:
    """Run (or finish) every stage; returns ``pipeline.json``'s content.

    ``cfg.seed`` seeds every stage: it replaces the seeds of ``cfg.dst``, ``cfg.generate`` and ``cfg.seg``.
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
    info = {"config": to_dict(cfg), "data": cfg.data or "embedded sample",
            "versions": {"dstray": dstray.__version__, "torch": torch.__version__, "ray": ray.__version__,
                         "python": platform.python_version()},
            "stages": {}}

    def record(name: str, t0: float, state: str, **extra) -> None:
        info["stages"][name] = {"seconds": round(time.perf_counter() - t0, 2), "reused": state == "done", **extra}
        (run / "pipeline.json").write_text(json.dumps(info, indent=2, default=str))

    init_ray(address)

    # [1] DST for every defect type, concurrently (Ray Train); fit_all skips finished types.
    t0 = time.perf_counter()
    outcomes = fit_all(cfg.dst, data=cfg.data, out=str(run / "models"), use_gpu=cfg.use_gpu,
                       max_image_pixels=cfg.generate.max_image_pixels)
    print(format_table(outcomes), flush=True)
    failed = [o for o in outcomes if o.status == "failed"]
    if failed:
        raise RuntimeError("DST fit failed for " + ", ".join(f"{o.defect_type} ({o.error})" for o in failed))
    record("fit", t0, "done" if all(o.status == "skipped" for o in outcomes) else "new",
           types=[o.defect_type for o in outcomes])

    # [2] Generate the synthetic training set (Ray Data).
    t0 = time.perf_counter()
    digests = {o.defect_type: hashlib.sha256((run / "models" / o.defect_type / "model.pt").read_bytes()).hexdigest()
               for o in outcomes}
    gen_cfg = dataclasses.replace(cfg.generate, data=cfg.data, models=str(run / "models"), generator=cfg.generator,
                                  num_samples=cfg.num_samples, out=str(run / "generated"), use_gpu=cfg.use_gpu,
                                  area=cfg.dst.area)
    stage = _Stage(run, "generated", _key(to_dict(gen_cfg), digests))
    state = stage.begin()
    summary = generate(gen_cfg, address=address)
    stage.finish(summary=summary)
    record("generate", t0, state, summary=summary)

    # [3] Train the segmenter on the generated samples (Ray Train).
    t0 = time.perf_counter()
    seg_cfg = dataclasses.replace(cfg.seg, data=cfg.data, synthetic=[str(run / "generated" / "data")])
    stage = _Stage(run, "seg", _key(to_dict(seg_cfg), stage.key))
    state = stage.begin()
    if state != "done":
        train_seg(seg_cfg, out=str(stage.dir), use_gpu=cfg.use_gpu, address=address)
    stage.finish()
    record("train", t0, state)

    # [4] Evaluate on the real test split (selection used val only), at the threshold chosen on val.
    t0 = time.perf_counter()
    ckpt = stage.dir / "model.pt"
    test_split = seg_cfg.test_split or "test"
    eval_stage = _Stage(run, "eval", _key(hashlib.sha256(ckpt.read_bytes()).hexdigest(), test_split))
    state = eval_stage.begin()
    if state != "done":
        evaluate_checkpoint(ckpt, out=eval_stage.dir, split=test_split, device="cpu")
    eval_stage.finish()
    scores = json.loads((eval_stage.dir / "eval.json").read_text())
    pixel = scores["pixel"]
    record("evaluate", t0, state, f1=pixel["f1"], macro_f1=(scores.get("macro") or {}).get("f1"))

    # [5] The visual report.
    t0 = time.perf_counter()
    record("report", t0, "new", path=str(run / "report" / "index.html"))  # before writing: the report shows it
    html = write_report(run)
    print(f"pixel F1 on the real {test_split} split: {pixel['f1']:.4f}  "
          f"(precision {pixel['precision']:.4f}, recall {pixel['recall']:.4f})", flush=True)
    print(f"report: {html}", flush=True)
    return info
