"""Segmenter hyper-parameter search with Ray Tune (``dstray tune``): an adapter of the one loop.

Each trial is a plain function trainable (:func:`seg_trial`) that runs
:func:`dstray.seg.train.train_loop` in the trial's process (Train inside Tune leaks resources
without the dashboard, see ``shared/notes/ray-2.60.md``), one report per evaluation (ASHA's
time unit) with a checkpoint (``state.pt``, ``model.pt`` = the trial's selected model,
``history.jsonl``: trials resume from it; an interrupted search resumes with ``Tuner.restore``).

**Selection never sees what is reported.** The objective is the pixel F1 on ``eval_split``
(``val``) at the trial's best threshold, chosen there: ASHA stops trials on it and the best
trial is the one with the highest F1 over its evaluations. Only that trial's selected model is
then scored, once, on ``test_split`` (``test``): it is copied to ``OUT/best/`` with
``val/`` and ``test/`` evaluation files, and its test score is in the results table.
The search space syntax is :mod:`dstray.distributed.space`'s.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import math
import os
import shutil
import tempfile
import time
from dataclasses import dataclass, replace
from pathlib import Path

import ray
import torch
from ray import tune
from ray.tune.schedulers import ASHAScheduler
from ray.tune.search.basic_variant import BasicVariantGenerator

from dstray.config import SegConfig, from_dict, save, to_dict
from dstray.distributed.runtime import die_once_at, init_ray, ray_storage_path, reserve_local_runtime, resolve_use_gpu
from dstray.distributed.space import DEFAULT_SPACE, apply_params, check_space, parse_space, to_domain
from dstray.distributed.train_seg import score_run
from dstray.report.tables import markdown_table
from dstray.seg.data import SegSource
from dstray.seg.evaluate import evaluate
from dstray.seg.train import (CHECKPOINT, HISTORY, STATE, SegTrainer, check_inputs, eval_samples, load_checkpoint,
                              save_checkpoint, train_loop)

log = logging.getLogger("dstray")

SEARCH_SPEC = "dstray-search.json"  # the search of a tune run (restore check)


def seg_trial(config: dict, base: dict, fault: dict | None = None) -> None:
    """Tune function trainable: one SegConfig (``base`` + the sampled ``config``), evaluated every ``eval_every``.

    ``fault`` (tests): ``{"step": k, "marker": path}``: the first trial to reach step k exits (once).
    """
    cfg = apply_params(from_dict(SegConfig, base), config)
    device = "cuda" if ray.get_gpu_ids() and torch.cuda.is_available() else "cpu"
    trainer = SegTrainer(cfg, SegSource.from_config(cfg), device)
    history: list[dict] = []
    checkpoint = tune.get_checkpoint()  # [5] a restarted trial (or a restored search) continues from its checkpoint
    if checkpoint:
        with checkpoint.as_directory() as d:
            history = load_checkpoint(d, trainer)
    samples = eval_samples(cfg)
    die = die_once_at(fault["step"], fault["marker"]) if fault else None  # simulates a lost trial process

    def on_eval(row: dict, result: dict) -> None:
        history.append(row)
        with tempfile.TemporaryDirectory() as d:  # [6] one report per evaluation: ASHA's time unit
            save_checkpoint(d, trainer, history)
            tune.report(row, checkpoint=tune.Checkpoint.from_directory(d))

    train_loop(trainer, steps=cfg.steps, eval_every=cfg.eval_every,
               evaluator=lambda: evaluate(trainer.eval_model, samples, threshold=cfg.threshold, device=device),
               on_eval=on_eval,
               on_step=(lambda log: die(log["step"])) if die else None)


@dataclass
class TuneSegResult:
    """What ``tune_seg`` returns (and ``dstray tune`` prints)."""

    table_csv: str
    table_md: str
    best_config: str  # a SegConfig JSON for `dstray train-seg --config`
    best_model: str  # OUT/best/model.pt: the best trial's selected model (best val F1) and its threshold
    plot: str
    best: dict  # the best trial's row (with its test scores)
    test: dict | None  # the best trial's model scored once on test_split (OUT/best/test/eval.json)
    rows: list[dict]
    seconds: float
    space: dict = None  # the space searched, as the trials saw it (policy_gen_* expanded to one key per type)


def _trial_rows(results, space: dict, steps: int) -> list[dict]:
    """One row per trial, best val F1 first; ``_result`` keeps the trial's Ray ``Result``."""
    rows = []
    for r in results:
        df = r.metrics_dataframe
        has = df is not None and len(df) and "f1" in df
        best = df.loc[df["f1"].idxmax()] if has and df["f1"].notna().any() else None
        trial_id = (r.metrics or {}).get("trial_id") or Path(r.path).name
        row = {"trial": trial_id, **{k: r.config.get(k) for k in space},
               "best_f1": float(best["f1"]) if best is not None else float("nan"),
               "best_step": int(best["step"]) if best is not None else 0,
               "last_f1": float(df["f1"].iloc[-1]) if has else float("nan"),
               "steps": int(df["step"].max()) if has else 0}
        row["status"] = "error" if r.error else ("done" if row["steps"] >= steps else "stopped early (ASHA)")
        if r.error:
            row["error"] = str(r.error).splitlines()[0][:200]
        row["_result"] = r
        rows.append(row)
    return sorted(rows, key=lambda x: -x["best_f1"] if x["best_f1"] == x["best_f1"] else math.inf)


def _plot(results, rows: list[dict], path: Path) -> None:
    from matplotlib.figure import Figure  # no pyplot: Agg, no GUI backend

    fig = Figure(figsize=(8, 5))
    ax = fig.add_subplot(1, 1, 1)
    labels = {row["trial"]: row for row in rows}
    for r in results:
        df = r.metrics_dataframe
        if df is None or not len(df) or "f1" not in df:
            continue
        trial_id = (r.metrics or {}).get("trial_id") or Path(r.path).name
        ax.plot(df["step"], df["f1"], marker="o", label=f"{trial_id} (best {labels[trial_id]['best_f1']:.3f})")
    ax.set_xlabel("training step")
    ax.set_ylabel("pixel F1 on val (at the trial's threshold)")
    ax.set_title("F1 per trial")
    ax.grid(alpha=0.3)
    if ax.lines:
        ax.legend(fontsize=7)
    fig.savefig(path, dpi=100)


def tune_seg(base: SegConfig, *, out: str, space: dict[str, str] | None = None, num_samples: int = 8,
             max_concurrent: int = 2, grace_period: int = 1, reduction_factor: float = 2.0,
             cpus_per_trial: float = 1.0, gpus_per_trial: float = 1.0, use_gpu: str = "auto",
             storage_path: str | None = None, name: str = "tune-seg", max_failures: int = 1, search_seed: int = 0,
             address: str | None = None, _fault: dict | None = None) -> TuneSegResult:
    """Search ``space`` around ``base`` with ASHA on val pixel F1; the best trial's model is scored on test.

    Writes ``out/results.{csv,md}``, ``out/best_config.json``, ``out/f1_per_trial.png`` and ``out/best/``
    (``model.pt``, ``history.jsonl``, ``val/eval.*``, ``test/eval.*``).
    """
    space = parse_space(space or {}, defaults=False) if space is not None else dict(DEFAULT_SPACE)
    if num_samples < 1 or max_concurrent < 0:
        raise ValueError(f"--num-samples must be >= 1 and --max-concurrent >= 0; got {num_samples}, {max_concurrent}")
    reserve_local_runtime(address)
    base = check_inputs(base)
    space = check_space(space, base)
    evaluations = math.ceil(base.steps / base.eval_every)
    if grace_period > evaluations:
        raise ValueError(f"--grace-period {grace_period} is more than the {evaluations} evaluation(s) of a trial "
                         "(steps / eval_every); lower it or raise --steps")
    out_dir = Path(out)
    out_dir.mkdir(parents=True, exist_ok=True)
    storage_path = ray_storage_path(str(out_dir), storage_path)
    run_dir = os.path.join(storage_path, name)
    spec = {"base": to_dict(base), "space": space, "num_samples": num_samples, "search_seed": search_seed}
    spec_path = Path(run_dir) / SEARCH_SPEC

    init_ray(address)  # [1]
    gpu = resolve_use_gpu(use_gpu)
    resources = {"cpu": cpus_per_trial, "gpu": gpus_per_trial if gpu else 0}
    # [2] a plain function trainable (no Train inside Tune) with its resources; plain dicts only
    trainable = tune.with_resources(tune.with_parameters(seg_trial, base=to_dict(base), fault=_fault), resources)
    t0 = time.perf_counter()
    if tune.Tuner.can_restore(run_dir):  # [3] a search of this name exists: continue it (no-op when finished)
        saved = json.loads(spec_path.read_text()) if spec_path.exists() else None
        if saved != json.loads(json.dumps(spec)):
            raise ValueError(f"{run_dir} holds a search with other settings (base config, space, --num-samples or "
                             "--search-seed); give another --name to start a new search, or the same options to "
                             "continue it")
        log.info("resuming the search in %s: %s", run_dir, _found(run_dir))
        tuner = tune.Tuner.restore(run_dir, trainable, resume_unfinished=True, resume_errored=True)
    else:
        param_space = {k: to_domain(k, v) for k, v in space.items()}
        tuner = tune.Tuner(
            trainable,
            param_space=param_space,
            tune_config=tune.TuneConfig(
                metric="f1", mode="max", num_samples=num_samples,
                scheduler=ASHAScheduler(time_attr="training_iteration", max_t=evaluations,  # one iteration = one eval
                                        grace_period=grace_period, reduction_factor=reduction_factor),
                search_alg=BasicVariantGenerator(max_concurrent=max_concurrent, random_state=search_seed),
            ),
            run_config=tune.RunConfig(name=name, storage_path=storage_path, verbose=1,
                                      failure_config=tune.FailureConfig(max_failures=max_failures),
                                      checkpoint_config=tune.CheckpointConfig(num_to_keep=1)),
        )
        spec_path.parent.mkdir(parents=True, exist_ok=True)
        spec_path.write_text(json.dumps(spec, indent=2))
    log.info("tuning %s over %s: %d trial(s), at most %s at once, %s per trial", base.arch, sorted(space),
             num_samples, max_concurrent or "all", resources)
    results = tuner.fit()  # [4]
    if results.num_terminated + results.num_errors < num_samples:
        # Ctrl-C: Tune stopped the trials, saved the search and returned as if done; nothing to score yet
        raise KeyboardInterrupt
    rows = _trial_rows(results, space, base.steps)
    if not rows or not rows[0]["best_f1"] == rows[0]["best_f1"]:
        errors = "; ".join(r.get("error", "") for r in rows if r.get("error"))
        raise RuntimeError(f"no trial of {run_dir} reported an F1{': ' + errors if errors else ''}")
    best = rows[0]
    test = _score_best(best.pop("_result"), out_dir / "best")  # [7] the best trial's model, once on test
    for r in rows:
        r.pop("_result", None)
    if test is not None:
        best.update(test_f1=test["pixel"]["f1"], test_macro_f1=test["macro"]["f1"])
    columns = ["trial", *space, "best_f1", "best_step", "last_f1", "steps", "status", "test_f1", "test_macro_f1"]
    buf = io.StringIO()
    writer = csv.DictWriter(buf, columns + ["error"], extrasaction="ignore")
    writer.writeheader()
    writer.writerows(rows)
    paths = {"csv": out_dir / "results.csv", "md": out_dir / "results.md", "best": out_dir / "best_config.json",
             "png": out_dir / "f1_per_trial.png"}
    paths["csv"].write_text(buf.getvalue())
    paths["md"].write_text(
        f"# dstray tune: {name}\n\nobjective: pixel F1 on the real `{base.eval_split}` split at each trial's best "
        f"threshold (best over the trial's evaluations), ASHA on {evaluations} evaluation(s). Only the best trial's "
        f"model is scored on `{base.test_split}` (test_f1, test_macro_f1): selection never saw it.\n\n"
        + markdown_table([{c: r.get(c, "") for c in columns} for r in rows], columns))
    best_cfg = apply_params(base, {k: best[k] for k in space})
    save(best_cfg, paths["best"])
    _plot(results, rows, paths["png"])
    return TuneSegResult(table_csv=str(paths["csv"]), table_md=str(paths["md"]), best_config=str(paths["best"]),
                         best_model=str(out_dir / "best" / CHECKPOINT), plot=str(paths["png"]), best=best, test=test,
                         rows=rows, seconds=time.perf_counter() - t0, space=space)


def _found(run_dir: str) -> str:
    """The trials of a search folder and their checkpoints (what a restored search continues from)."""
    trials = [p for p in Path(run_dir).iterdir() if p.is_dir() and (p / "params.json").exists()] \
        if Path(run_dir).is_dir() else []
    ckpts = sum(1 for t in trials for c in t.glob("checkpoint_*") if c.is_dir())
    return f"{len(trials)} trial(s) with {ckpts} checkpoint(s)"


def saved(out: str, *, storage_path: str | None = None, name: str = "tune-seg") -> str:
    """What an interrupted ``tune`` left: the search's state and its trials' checkpoints."""
    run_dir = os.path.join(ray_storage_path(out, storage_path), name)
    return f"the search and {_found(run_dir)} in {run_dir}" if os.path.isdir(run_dir) else "no checkpoint yet"


def _score_best(result, folder: Path) -> dict | None:
    """Copy the best trial's last checkpoint (its selected model) to ``folder`` and score it (:func:`score_run`)."""
    if result.checkpoint is None:
        raise RuntimeError(f"the best trial {result.path} left no checkpoint")
    folder.mkdir(parents=True, exist_ok=True)
    with result.checkpoint.as_directory() as d:
        for name in (CHECKPOINT, STATE, HISTORY):
            shutil.copyfile(Path(d) / name, folder / name)
    return score_run(str(folder))["test"]
