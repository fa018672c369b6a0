"""Segmenter training with Ray Train (data parallel, Ray Data ingestion): an adapter of the one loop.

``train_seg`` (``dstray train-seg``) runs :func:`dstray.seg.train.train_loop` on a
``TorchTrainer`` with ``num_workers`` workers (one GPU each when the cluster has GPUs):

1. The driver checks the inputs (:func:`dstray.seg.train.check_inputs`: splits, weights, sizes),
   then reads the generated Parquet datasets with ``ray.data.read_parquet`` (the ``image`` and
   ``mask`` PNG columns, streamed alongside training).
2. The dataset goes to the trainer as ``datasets={"synthetic": ds}``; Ray Train splits it
   across workers. Each worker wraps its split in a :class:`ShardSource`, which has
   :class:`dstray.seg.data.SegSource`'s contract and its batch-mixing rule
   (:func:`dstray.policy.batch_counts`, :func:`dstray.seg.data.mixed_batch`: windows at the
   images' own resolution): the synthetic items of a batch come from the shard (epoch after
   epoch, locally shuffled, decoded with :func:`dstray.seg.data.row_item`), the rest are real
   samples drawn with the trainer's generator. ``batch_size`` is per worker: the global batch
   is ``batch_size * num_workers``.
3. With more than one worker the model is wrapped by ``ray.train.torch.prepare_model``
   (DDP); checkpoints always hold the bare module (``load_segmenter`` reads them).
4. Every ``eval_every`` steps rank 0 evaluates on ``eval_split`` (``val``: threshold chosen
   there), keeps the best model (:meth:`dstray.seg.train.SegTrainer.select`) and reports the
   history row (``f1, precision, recall, iou, macro_f1, threshold, ...``) with a checkpoint
   (``state.pt``, ``model.pt`` = the selected model, ``history.jsonl``); the other ranks
   report metrics only (``report`` is a barrier).
5. Resumable: a stable ``RunConfig(name, storage_path)``; running the same command again
   (or with more ``--steps``) continues from the newest sealed checkpoint on storage
   (:mod:`dstray.distributed.faults`: Ray's own choice can be two checkpoints older), and
   ``FailureConfig(max_failures)`` restarts a lost worker group (a dead worker, a lost node) from
   it. A resumed run ends at the uninterrupted run's weights, to the bit on CPU at the same
   worker and thread count: the checkpoint holds rank 0's generator and the synthetic stream's
   position (epoch and items taken), and ranks > 0 reseed at every checkpoint's step.

At the end the driver copies the last checkpoint to ``out/`` (``model.pt``, ``state.pt``,
``history.jsonl``) and scores the selected model once (:func:`dstray.seg.train.finish`):
``out/val/eval.{json,csv,png}`` and ``out/test/eval.{json,csv,png}``.
"""

from __future__ import annotations

import io
import json
import logging
import os
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import pyarrow.fs as pafs
import ray
import ray.train
import ray.train.torch
import torch
from ray.train import CheckpointConfig, RunConfig, ScalingConfig
from ray.train.torch import TorchTrainer

from dstray import storage
from dstray.config import SegConfig, changed_fields, check_resumable, from_dict, to_dict
from dstray.data import decode_png, read_image
from dstray.distributed.faults import (Faults, failure_config, faults_config, fit_trainer, latest_checkpoint,
                                       memory_guard, prune_checkpoints, report_checkpoint)
from dstray.distributed.runtime import init_ray, ray_storage_path, reserve_local_runtime, resolve_use_gpu
from dstray.policy import draw_types, filter_table, reference_visibility
from dstray.seeds import derive_seed
from dstray.seg.data import free_samples, mixed_batch, read_item, real_samples, row_item, source_counts
from dstray.seg.evaluate import evaluate
from dstray.seg.train import (CHECKPOINT, HISTORY, STATE, SegTrainer, check_inputs, eval_samples, finish,
                              load_checkpoint, read_history, save_checkpoint, synthetic_per_batch, train_loop)

log = logging.getLogger("dstray")

SYNTHETIC = "synthetic"  # name of the Ray Data dataset handed to the trainer
PROGRESS = "progress.json"  # checkpoint file: synthetic epochs started, step the attempt started from
PROGRESS_EVERY = 20  # steps between progress lines of rank 0
TYPE_BUFFER = 64  # with type shares: streamed rows of a type kept waiting for a draw of that type (oldest dropped)
RUN_CONFIG = "dstray-config.json"  # the SegConfig of a run, next to Ray's files (resume check)
RESUME_HINT = ("give another --name (or --storage-path) to start a new run, or the same settings to continue it")


# --------------------------------------------------------------------------- Ray Data -> SegTrainer
class ShardSource:
    """``SegSource``'s contract fed by a Ray Data shard: what :class:`SegTrainer` draws its batches from.

    Synthetic items come in order from ``shard`` (rows with PNG ``image`` and ``mask``, and ``defect_type``;
    the data policy already filtered them, :func:`dstray.policy.filter_table`), one epoch after another, each
    epoch locally shuffled with ``derive_seed(cfg.seed, "seg-shuffle", rank, epoch)``, and are decoded like
    ``SegSource``'s (:func:`dstray.seg.data.row_item`). With ``cfg.policy.type_shares`` the type of each item
    is drawn by its share (:func:`dstray.policy.draw_types`, as ``SegSource`` does) and the next streamed row
    of that type is taken (rows of other types wait in a per-type buffer of at most :data:`TYPE_BUFFER`
    rows). Real and defect-free items are drawn with replacement with the trainer's generator. The counts
    (:func:`dstray.policy.batch_counts`), the windows and the augmentation are ``SegSource``'s
    (:func:`dstray.seg.data.mixed_batch`). ``epoch`` counts started epochs and ``taken`` the rows streamed of
    the current one (saved in checkpoints); a resumed run sets ``epoch`` back by one and ``skip`` to ``taken``,
    so that it continues the epoch where the checkpoint stood. (With ``type_shares``, rows waiting in the
    per-type buffer at a checkpoint count as taken: such a resumed run is the same data policy, not the same
    bits.)
    """

    def __init__(self, cfg: SegConfig, shard: Any | None, real: list, channels: int, *, rank: int = 0,
                 epoch: int = 0, free: list = (), types: list[str] | None = None) -> None:
        self.cfg, self.shard, self.channels, self.rank, self.epoch = cfg, shard, channels, rank, epoch
        self.taken = self.skip = 0
        self.real = [read_item(s, channels) for s in real]
        self.free = [read_item(s, channels) for s in free]
        if not self.real and shard is None:
            raise ValueError("ShardSource has no training data: no real samples and no synthetic shard")
        self.n_syn = source_counts(cfg, self, cfg.batch_size, None).synthetic
        self._stream: Iterator[tuple[str, bytes, bytes]] | None = None
        self._waiting: dict[str, list[tuple[bytes, bytes]]] = {}  # type -> streamed rows not yet drawn
        self.types = sorted(types or [])  # the defect types of the (filtered) generated rows: what shares draw among
        if cfg.policy.type_shares and shard is not None and not self.types:
            raise ValueError("ShardSource needs the generated rows' types (types=) to draw by --policy-type-shares")

    @property
    def has_synthetic(self) -> bool:
        return self.shard is not None

    def _rows(self) -> Iterator[tuple[str, bytes, bytes]]:
        while True:
            seen = 0
            batches = self.shard.iter_batches(
                batch_size=max(1, self.n_syn), batch_format="numpy", local_shuffle_buffer_size=max(32, 8 * self.n_syn),
                local_shuffle_seed=derive_seed(self.cfg.seed, "seg-shuffle", self.rank, self.epoch))
            self.epoch += 1
            for b in batches:
                types = b["defect_type"] if "defect_type" in b else [""] * len(b["image"])
                for t, image_png, mask_png in zip(types, b["image"], b["mask"]):
                    seen += 1
                    if seen <= self.skip:  # resumed mid-epoch: streamed before the checkpoint
                        continue
                    self.taken = seen
                    yield str(t), image_png, mask_png
            self.skip = 0
            if seen == 0:
                raise ValueError("this worker's share of the synthetic dataset is empty: generate more samples "
                                 "or use fewer --num-workers")

    def _next_of(self, wanted: str | None) -> tuple[bytes, bytes]:
        """The next streamed row (of type ``wanted``, buffering the others); None = any type."""
        if wanted is not None and self._waiting.get(wanted):
            return self._waiting[wanted].pop(0)
        start = self.epoch
        while self.epoch <= start + 2:  # two whole epochs without the type: it is not in this worker's share
            t, image_png, mask_png = next(self._stream)
            if wanted is None or t == wanted:
                return image_png, mask_png
            queue = self._waiting.setdefault(t, [])
            queue.append((image_png, mask_png))
            del queue[:-TYPE_BUFFER]
        raise ValueError(f"no generated row of type {wanted!r} in this worker's share of the synthetic dataset: "
                         "use fewer --num-workers, or generate more rows of it")

    def close(self) -> None:
        """Stop the synthetic stream (ends the shard iteration cleanly)."""
        if self._stream is not None:
            self._stream.close()
            self._stream = None

    def batch(self, batch_size: int, generator: torch.Generator, step: int | None = None) -> dict[str, torch.Tensor]:
        """:func:`dstray.seg.data.mixed_batch` of the next synthetic items, defect-free and real ones; see the
        class docstring."""
        counts = source_counts(self.cfg, self, batch_size, step)
        if counts.synthetic and self._stream is None:
            self._stream = self._rows()
        shares = self.cfg.policy.type_shares
        if shares:
            rows = [self._next_of(t) for t in draw_types(shares, self.types, counts.synthetic, generator)]
        else:
            rows = [self._next_of(None) for _ in range(counts.synthetic)]
        synthetic = [row_item(image_png, mask_png, self.channels) for image_png, mask_png in rows]
        return mixed_batch(synthetic, self.real, batch_size, generator, self.cfg, self.free, counts.free)


# --------------------------------------------------------------------------- Ray Train worker loop
def _say(line: str) -> None:
    """A progress line on the worker's stdout (Ray shows it on the driver). Not ``print``: Ray Train patches
    ``print`` to also log the line, and both reach the driver."""
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


def seg_train_loop(config: dict) -> None:
    """Ray Train worker loop (runs on every worker). ``config``: plain dicts only (see :func:`train_seg`)."""
    cfg = from_dict(SegConfig, config["seg"])
    context = ray.train.get_context()
    rank, world = context.get_world_rank(), context.get_world_size()
    # Ray caps a worker at as many threads as its logical CPUs (1 by default); torch's CPU kernels scale
    # with cores: by default share the node's cores among the workers on it
    torch.set_num_threads(config.get("threads") or max(1, (os.cpu_count() or 1) // context.get_local_world_size()))
    device = ray.train.torch.get_device()
    # [3] this worker's share of the synthetic dataset (Ray Data streams it while we train)
    shard = ray.train.get_dataset_shard(SYNTHETIC) if config["use_synthetic"] else None
    source = ShardSource(cfg, shard, real_samples(cfg), config["channels"], rank=rank, free=free_samples(cfg),
                         types=config.get("synthetic_types"))
    trainer = SegTrainer(cfg, source, device)
    history: list[dict] = []
    # [4] resume (after a worker failure, or when the run is started again) from the newest sealed checkpoint on
    # storage: Ray's get_checkpoint() can be up to two checkpoints older (faults.py)
    checkpoint = (latest_checkpoint(config["run_dir"]) if config.get("run_dir") else None) or ray.train.get_checkpoint()
    if checkpoint:
        with checkpoint.as_directory() as d:
            history = load_checkpoint(d, trainer)
            progress = json.loads((Path(d) / PROGRESS).read_text())
        # the synthetic stream continues where the checkpoint stood: the same epoch, its items taken skipped
        source.epoch, source.skip = ((progress["epoch"] - 1, progress["taken"]) if progress.get("taken")
                                     else (progress["epoch"], 0))
        if rank == 0:
            _say(f"[train-seg] resumed from step {trainer.steps} of {cfg.steps}")
    started_from = trainer.steps
    faults = Faults(config.get("faults"), "train-seg")  # tests

    def reseed() -> None:  # ranks > 0 draw their own real samples and crops, seeded at each checkpoint's step, so
        # that a run resumed there draws what the uninterrupted one drew (rank 0's generator is in state.pt)
        if rank > 0:
            trainer.generator.manual_seed(derive_seed(cfg.seed, "seg-rank", rank, trainer.steps))

    reseed()
    trainer.model = ray.train.torch.prepare_model(trainer.model)  # [5] DDP when world > 1
    samples = eval_samples(cfg) if rank == 0 else []
    clock = {"t": time.perf_counter(), "losses": []}  # progress lines: time and losses since the last one

    def on_eval(row: dict, result: dict | None) -> None:
        if result is None:  # rank > 0: metrics only ([6] report is a barrier)
            ray.train.report(row)
            reseed()
            return
        history.append(row)
        _say(f"[train-seg] step {row['step']}/{cfg.steps}: {cfg.eval_split} F1 {row['f1']:.4f} (macro "
             f"{row['macro_f1']:.4f}) at threshold {row['threshold']:.3f}, {row['eval_seconds']:.0f} s; best "
             f"{row['best_f1']:.4f} at step {row['best_step']}")
        with tempfile.TemporaryDirectory() as d:  # [6] rank 0: metrics + checkpoint (state, selected model, history)
            save_checkpoint(d, trainer, history)
            # the synthetic stream's position is the same on every rank (equal shares, same draws per step)
            (Path(d) / PROGRESS).write_text(json.dumps({"epoch": source.epoch, "taken": source.taken,
                                                        "started_from": started_from}))
            report_checkpoint(row, d, trainer.steps)  # sealed, named after its step
        faults.after_checkpoint(trainer.steps)
        clock.update(t=time.perf_counter(), losses=[])  # the next progress line times training only

    evaluator = (lambda: evaluate(trainer.eval_model, samples, threshold=cfg.threshold, device=device)) if rank == 0 \
        else None

    def on_step(log: dict) -> None:  # rank 0: a progress line every PROGRESS_EVERY steps
        if rank == 0:
            faults.at_step(log["step"])
        clock["losses"].append(log["loss"])
        if rank == 0 and log["step"] % PROGRESS_EVERY == 0:
            now = time.perf_counter()
            _say(f"[train-seg] step {log['step']}/{cfg.steps}: loss {sum(clock['losses']) / len(clock['losses']):.4f}, "
                 f"{(now - clock['t']) / len(clock['losses']):.2f} s/step")
            clock.update(t=now, losses=[])

    with memory_guard():
        train_loop(trainer, steps=cfg.steps, eval_every=cfg.eval_every, evaluator=evaluator, on_eval=on_eval,
                   on_step=on_step, num_workers=world)
    source.close()


# --------------------------------------------------------------------------- Ray Train driver
@dataclass
class TrainSegResult:
    """What ``train_seg`` returns (and ``dstray train-seg`` prints)."""

    model: str  # out/model.pt: the selected model (best val F1) and its threshold
    history: str  # out/history.jsonl
    steps: int
    metrics: dict  # the last evaluation row (on eval_split)
    val: dict  # scores of the selected model on eval_split at its threshold (out/val/eval.json)
    test: dict | None  # the same on test_split, scored once at the end (out/test/eval.json); None without one
    resumed_from: int  # step of the checkpoint the last attempt started from (0: from scratch)
    seconds: float
    skipped: bool = False  # out/ already had a finished run with these settings and >= steps: nothing was run


def score_run(out: str, device: str = "cpu") -> dict:
    """:func:`dstray.seg.train.finish` on the run folder ``out`` (a local path or URI): ``val/`` and ``test/`` files."""
    if "://" not in out:
        return finish(out, device)
    with tempfile.TemporaryDirectory() as d:
        Path(d, CHECKPOINT).write_bytes(storage.read_bytes(storage.join(out, CHECKPOINT)))
        result = finish(d, device)
        for sub in ("val", "test"):
            for f in sorted(Path(d, sub).glob("*")) if Path(d, sub).is_dir() else []:
                storage.write_bytes(storage.join(out, sub, f.name), f.read_bytes())
    return result


def _channels(cfg: SegConfig, real: list, ds) -> int:
    """The channel count of the first training image (as ``SegSource``): a real one, else a synthetic row."""
    if real:
        return int(read_image(real[0].image).shape[0])
    rows = ds.take(1)
    if not rows:
        raise ValueError(f"the synthetic datasets {cfg.synthetic} have no rows; generate some with `dstray generate`")
    return int(decode_png(rows[0]["image"]).shape[0])


def _has_checkpoint(run_dir: str) -> bool:
    fs, path = storage.resolve(run_dir)
    if fs.get_file_info(path).type == pafs.FileType.NotFound:
        return False
    infos = fs.get_file_info(pafs.FileSelector(path, recursive=False))
    return any(i.type == pafs.FileType.Directory and i.base_name.startswith("checkpoint_") for i in infos)


def _check_run_config(run_dir: str, cfg: SegConfig) -> int:
    """Refuse to resume a run trained with other settings; 0 for a new run, 1 for one with checkpoints."""
    path = storage.join(run_dir, RUN_CONFIG)
    if not storage.exists(path) or not _has_checkpoint(run_dir):
        storage.write_bytes(path, json.dumps(to_dict(cfg), indent=2).encode())
        return 0
    check_resumable(json.loads(storage.read_bytes(path)), cfg, run_dir, hint=RESUME_HINT)
    storage.write_bytes(path, json.dumps(to_dict(cfg), indent=2).encode())
    return 1


def _finished(cfg: SegConfig, out: str) -> TrainSegResult | None:
    """The result of an earlier run into ``out`` with the same settings and at least ``cfg.steps`` steps, if any."""
    scored = [f"{key}/eval.json" for key, split in (("val", cfg.eval_split), ("test", cfg.test_split)) if split]
    paths = [storage.join(out, name) for name in (CHECKPOINT, STATE, HISTORY, *scored)]
    if not all(storage.exists(p) for p in paths):
        return None
    state = torch.load(io.BytesIO(storage.read_bytes(paths[1])), map_location="cpu", weights_only=True)
    if changed_fields(state["config"], cfg) or state["steps"] < cfg.steps:
        return None
    rows = read_history(paths[2])
    log.info("%s already holds a model trained %d steps with these settings (>= --steps %d): nothing to do",
             out, state["steps"], cfg.steps)
    scores = {key: json.loads(storage.read_bytes(storage.join(out, f"{key}/eval.json"))) if split else None
              for key, split in (("val", cfg.eval_split), ("test", cfg.test_split))}
    return TrainSegResult(model=paths[0], history=paths[2], steps=state["steps"], metrics=rows[-1] if rows else {},
                          val=scores["val"], test=scores["test"], resumed_from=state["steps"], seconds=0.0,
                          skipped=True)


def saved(out: str, *, steps: int, storage_path: str | None = None, name: str = "train-seg") -> str:
    """What an interrupted ``train-seg`` left: its newest sealed checkpoint."""
    run_dir = storage.join(ray_storage_path(out, storage_path), name)
    last = latest_checkpoint(run_dir)
    return f"the checkpoint at step {last.step} of {steps} in {run_dir}" if last else "no checkpoint yet"


def train_seg(cfg: SegConfig, *, out: str, num_workers: int = 1, use_gpu: str = "auto", cpus_per_worker: float = 1.0,
              threads_per_worker: int = 0, storage_path: str | None = None, name: str = "train-seg",
              max_failures: int = 2, address: str | None = None, faults: dict | None = None) -> TrainSegResult:
    """Train one segmenter with Ray Train (see the module docstring); resumes a run of the same name.

    ``threads_per_worker``: torch CPU threads of each worker; 0 = the node's cores shared among its workers.
    ``faults``: test hooks (:class:`dstray.distributed.faults.Faults`).
    """
    if num_workers < 1:
        raise ValueError(f"--num-workers must be >= 1; got {num_workers}")
    reserve_local_runtime(address)
    cfg = check_inputs(cfg)
    real = real_samples(cfg)
    storage_path = ray_storage_path(out, storage_path)
    _check_run_config(storage.join(storage_path, name), cfg)
    done = _finished(cfg, out)
    if done is not None:
        return done

    init_ray(address)  # [1] connect (or start a local runtime)
    gpu = resolve_use_gpu(use_gpu)
    datasets, use_synthetic = {}, synthetic_per_batch(cfg) > 0
    # [2] Ray Data: the generated Parquet rows (PNG image and mask) the policy lets in (the in-process source's
    # rule: dstray.policy.filter_table), streamed to the workers
    refs = reference_visibility(cfg.data) if use_synthetic and cfg.policy.min_visibility > 0 else None
    ds = ray.data.read_parquet(cfg.synthetic).map_batches(
        filter_table, fn_kwargs={"policy": to_dict(cfg.policy), "refs": refs},
        batch_format="pyarrow") if use_synthetic else None
    if ds is not None:
        names = ds.schema().names if ds.schema() is not None else []
        ds = ds.select_columns(["image", "mask", *(["defect_type"] if "defect_type" in names else [])])
    channels = _channels(cfg, real, ds)
    # with type shares the workers draw a type, then its next streamed row: they need the types there are
    types = sorted(ds.unique("defect_type")) if ds is not None and cfg.policy.type_shares else None
    if ds is not None:
        datasets[SYNTHETIC] = ds
    t0 = time.perf_counter()
    run_dir = storage.join(storage_path, name)
    found = latest_checkpoint(run_dir)
    if found is not None:
        log.info("resumed from step %d of %d (%s)", found.step, cfg.steps, found.path)
    trainer = TorchTrainer(
        seg_train_loop,
        train_loop_config={"seg": to_dict(cfg), "channels": channels, "use_synthetic": use_synthetic,
                           "threads": threads_per_worker, "synthetic_types": types, "run_dir": run_dir,
                           "faults": faults_config(faults)},
        scaling_config=ScalingConfig(num_workers=num_workers, use_gpu=gpu,
                                     resources_per_worker={"CPU": cpus_per_worker, **({"GPU": 1} if gpu else {})}),
        datasets=datasets,  # [3] split across the workers (equal shares)
        run_config=RunConfig(
            name=name,  # stable name: running the same command again resumes this run
            storage_path=storage_path,
            failure_config=failure_config(max_failures),
            checkpoint_config=CheckpointConfig(num_to_keep=2),
        ),
    )
    log.info("training %s/%s for %d steps on %d worker(s)%s; checkpoints in %s", cfg.arch, cfg.backbone, cfg.steps,
             num_workers, " with GPUs" if gpu else "", storage.join(storage_path, name))
    # [7] blocks until done; raises TrainingFailedError after max_failures, OutOfMemory, KeyboardInterrupt (Ctrl-C)
    result = fit_trainer(trainer, stage="train-seg", max_failures=max_failures,
                         lower=f"--batch-size ({cfg.batch_size}) or --window ({cfg.window}), or run fewer workers per "
                               f"node (--num-workers {num_workers}, a larger --cpus-per-worker)")
    prune_checkpoints(run_dir, {Path(c.path).name for c, _ in result.best_checkpoints or []})
    if result.checkpoint is None:
        raise RuntimeError(f"the run {storage.join(storage_path, name)} produced no checkpoint")
    with result.checkpoint.as_directory() as d:  # [8] the last checkpoint: its state and the selected model
        d = Path(d)
        progress = json.loads((d / PROGRESS).read_text())
        steps = int(torch.load(d / STATE, map_location="cpu", weights_only=True)["steps"])
        for name_in_ckpt in (CHECKPOINT, STATE, HISTORY):
            storage.write_bytes(storage.join(out, name_in_ckpt), (d / name_in_ckpt).read_bytes())
    threads = torch.get_num_threads()
    if threads_per_worker:  # the driver scores on its CPU with the workers' thread count, then gives its own back
        torch.set_num_threads(threads_per_worker)
    try:
        scores = score_run(out)  # the selected model, once on val and test
    finally:
        torch.set_num_threads(threads)
    history = read_history(storage.join(out, HISTORY))
    return TrainSegResult(model=storage.join(out, CHECKPOINT), history=storage.join(out, HISTORY), steps=steps,
                          metrics=history[-1] if history else {}, val=scores["val"], test=scores["test"],
                          resumed_from=int(progress.get("started_from", 0)), seconds=time.perf_counter() - t0)
