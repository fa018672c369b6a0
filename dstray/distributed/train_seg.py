"""Segmenter training with Ray Train (data parallel, Ray Data ingestion): an adapter of the one loop.

``train_seg`` (``dstray train-seg``) runs :func:`dstray.seg.train.train_loop` on a
``TorchTrainer`` with ``num_workers`` workers (one GPU each when the cluster has GPUs):

1. The driver checks the inputs (:func:`dstray.seg.train.check_inputs`), then reads the
   generated Parquet datasets with ``ray.data.read_parquet`` and maps them through
   :func:`letterbox_batch` (PNG decode + letterbox, in Ray Data tasks, streaming alongside
   training).
2. The dataset goes to the trainer as ``datasets={"synthetic": ds}``; Ray Train splits it
   across workers. Each worker wraps its split in a :class:`ShardSource`, which has
   :class:`dstray.seg.data.SegSource`'s contract and its batch-mixing rule
   (:func:`dstray.seg.data.synthetic_count`, :func:`dstray.seg.data.mixed_batch`): the synthetic
   items of a batch come from the shard's ``iter_torch_batches`` (epoch after epoch, locally
   shuffled), the rest are real samples drawn with the trainer's generator.
   ``batch_size`` is per worker: the global batch is ``batch_size * num_workers``.
3. With more than one worker the model is wrapped by ``ray.train.torch.prepare_model``
   (DDP); checkpoints always hold the bare module (``load_segmenter`` reads them).
4. Every ``eval_every`` steps rank 0 evaluates on the real ``eval_split`` and reports the
   history row (``f1, precision, recall, iou, loss, ...``) with a checkpoint (``model.pt``,
   the eval files, ``history.jsonl``); the other ranks report metrics only (``report`` is a
   barrier).
5. Resumable: a stable ``RunConfig(name, storage_path)``; running the same command again
   (or with more ``--steps``) continues from the latest checkpoint, and
   ``FailureConfig(max_failures)`` restarts a lost worker group from it.

At the end ``out/model.pt``, ``out/history.jsonl`` and ``out/eval/eval.{json,csv,png}``.
"""

from __future__ import annotations

import io
import json
import logging
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import pyarrow.fs as pafs
import ray
import ray.train
import ray.train.torch
import torch
from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
from ray.train.torch import TorchTrainer

from dstray import storage
from dstray.config import SegConfig, changed_fields, check_resumable, from_dict, to_dict
from dstray.data import decode_png, load_dataset, read_image
from dstray.distributed.runtime import init_ray, ray_storage_path, resolve_use_gpu
from dstray.seeds import derive_seed
from dstray.seg.data import augmentation, mixed_batch, prepare_row, prepare_sample, real_samples, synthetic_count
from dstray.seg.evaluate import evaluate
from dstray.seg.train import (HISTORY, SegTrainer, check_inputs, load_checkpoint, read_history, save_checkpoint,
                              synthetic_per_batch, train_loop)

log = logging.getLogger("dstray")

SYNTHETIC = "synthetic"  # name of the Ray Data dataset handed to the trainer
PROGRESS = "progress.json"  # checkpoint file: synthetic epochs started, step the attempt started from
RUN_CONFIG = "dstray-config.json"  # the SegConfig of a run, next to Ray's files (resume check)
RESUME_HINT = ("give another --name (or --storage-path) to start a new run, or the same settings to continue it")


# --------------------------------------------------------------------------- Ray Data -> SegTrainer
def letterbox_batch(batch: dict[str, np.ndarray], size: int, channels: int) -> dict[str, np.ndarray]:
    """Ray Data ``map_batches`` function: PNG rows -> letterboxed arrays (:func:`dstray.seg.data.prepare_row`).

    In: ``image``, ``mask`` (PNG bytes). Out: ``image`` float32 (B,C,S,S), ``mask`` and ``valid`` uint8 (B,1,S,S).
    """
    items = [prepare_row(image_png, mask_png, size, channels) for image_png, mask_png in zip(batch["image"],
                                                                                           batch["mask"])]
    return {"image": np.stack([it["image"].numpy() for it in items]),
            "mask": np.stack([it["mask"].numpy().astype(np.uint8) for it in items]),
            "valid": np.stack([it["valid"].numpy().astype(np.uint8) for it in items])}


class ShardSource:
    """``SegSource``'s contract fed by a Ray Data shard: what :class:`SegTrainer` draws its batches from.

    Synthetic items come in order from ``shard`` (already letterboxed by :func:`letterbox_batch`),
    one epoch after another, each epoch locally shuffled with ``derive_seed(cfg.seed,
    "seg-shuffle", rank, epoch)``; real items are drawn with replacement with the trainer's
    generator. The mix and the augmentation are ``SegSource``'s (:func:`dstray.seg.data.mixed_batch`).
    ``epoch`` counts started epochs (saved in checkpoints so that a resumed run reshuffles).
    """

    def __init__(self, cfg: SegConfig, shard: Any | None, real: list, channels: int, *, rank: int = 0,
                 epoch: int = 0) -> None:
        self.cfg, self.shard, self.channels, self.rank, self.epoch = cfg, shard, channels, rank, epoch
        self.real = [prepare_sample(s, cfg.image_size, channels) for s in real]
        if not self.real and shard is None:
            raise ValueError("ShardSource has no training data: no real samples and no synthetic shard")
        self.n_syn = synthetic_count(cfg.batch_size, cfg.synthetic_fraction, real=bool(self.real),
                                     synthetic=shard is not None)
        self.transform = augmentation(cfg.image_size) if cfg.augment else None
        self._stream: Iterator[dict] | None = None

    def _items(self) -> Iterator[dict]:
        while True:
            seen = 0
            batches = self.shard.iter_torch_batches(
                batch_size=self.n_syn, device="cpu", local_shuffle_buffer_size=max(32, 8 * self.n_syn),
                local_shuffle_seed=derive_seed(self.cfg.seed, "seg-shuffle", self.rank, self.epoch))
            self.epoch += 1
            for b in batches:
                for i in range(len(b["image"])):
                    seen += 1
                    yield {"image": b["image"][i], "mask": b["mask"][i].float(), "valid": b["valid"][i].float()}
            if seen == 0:
                raise ValueError("this worker's share of the synthetic dataset is empty: generate more samples "
                                 "or use fewer --num-workers")

    def close(self) -> None:
        """Stop the synthetic stream (ends the shard iteration cleanly)."""
        if self._stream is not None:
            self._stream.close()
            self._stream = None

    def batch(self, batch_size: int, generator: torch.Generator) -> dict[str, torch.Tensor]:
        """``{"image": (B,C,S,S), "mask": (B,1,S,S), "valid": (B,1,S,S)}``; see the class docstring."""
        n_syn = synthetic_count(batch_size, self.cfg.synthetic_fraction, real=bool(self.real),
                                synthetic=self.shard is not None)
        if n_syn and self._stream is None:
            self._stream = self._items()
        return mixed_batch([next(self._stream) for _ in range(n_syn)], self.real, batch_size, generator,
                           self.transform)


# --------------------------------------------------------------------------- Ray Train worker loop
def seg_train_loop(config: dict) -> None:
    """Ray Train worker loop (runs on every worker). ``config``: plain dicts only (see :func:`train_seg`)."""
    cfg = from_dict(SegConfig, config["seg"])
    context = ray.train.get_context()
    rank, world = context.get_world_rank(), context.get_world_size()
    device = ray.train.torch.get_device()
    # [3] this worker's share of the synthetic dataset (Ray Data streams it while we train)
    shard = ray.train.get_dataset_shard(SYNTHETIC) if config["use_synthetic"] else None
    source = ShardSource(cfg, shard, real_samples(cfg), config["channels"], rank=rank)
    trainer = SegTrainer(cfg, source, device)
    history: list[dict] = []
    checkpoint = ray.train.get_checkpoint()  # [4] resume: after a worker failure or when the run is started again
    if checkpoint:
        with checkpoint.as_directory() as d:
            history = load_checkpoint(d, trainer)
            source.epoch = json.loads((Path(d) / PROGRESS).read_text())["epoch"]
        if rank == 0:
            print(f"[train-seg] resumed from step {trainer.steps}", flush=True)
    started_from = trainer.steps
    if rank > 0:  # every worker draws its own real samples and crops
        trainer.generator.manual_seed(derive_seed(cfg.seed, "seg-rank", rank, trainer.steps))
    trainer.model = ray.train.torch.prepare_model(trainer.model)  # [5] DDP when world > 1
    eval_samples = load_dataset(cfg.data).split(cfg.eval_split) if rank == 0 else []

    def on_eval(row: dict, result: dict | None) -> None:
        if result is None:  # rank > 0: metrics only ([6] report is a barrier)
            ray.train.report(row)
            return
        history.append(row)
        with tempfile.TemporaryDirectory() as d:  # [6] rank 0: metrics + checkpoint (model, eval, history)
            save_checkpoint(d, trainer, history, result)
            # the synthetic epoch count is the same on every rank (equal shares, same draws per step)
            (Path(d) / PROGRESS).write_text(json.dumps({"epoch": source.epoch, "started_from": started_from}))
            ray.train.report(row, checkpoint=ray.train.Checkpoint.from_directory(d))

    evaluator = (lambda: evaluate(trainer.module, eval_samples, cfg, device)) if rank == 0 else None
    train_loop(trainer, steps=cfg.steps, eval_every=cfg.eval_every, evaluator=evaluator, on_eval=on_eval,
               num_workers=world)
    source.close()


# --------------------------------------------------------------------------- Ray Train driver
@dataclass
class TrainSegResult:
    """What ``train_seg`` returns (and ``dstray train-seg`` prints)."""

    model: str  # out/model.pt
    history: str  # out/history.jsonl
    eval_dir: str  # out/eval
    steps: int
    metrics: dict  # the last evaluation row
    resumed_from: int  # step of the checkpoint the last attempt started from (0: from scratch)
    seconds: float
    skipped: bool = False  # out/model.pt already had these settings and >= steps: nothing was run


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
    paths = [storage.join(out, name) for name in ("model.pt", HISTORY, "eval/eval.json")]
    if not all(storage.exists(p) for p in paths):
        return None
    ckpt = torch.load(io.BytesIO(storage.read_bytes(paths[0])), map_location="cpu", weights_only=True)
    if changed_fields(ckpt["config"], cfg) or ckpt["steps"] < cfg.steps:
        return None
    rows = read_history(paths[1])
    log.info("%s already holds a model trained %d steps with these settings (>= --steps %d): nothing to do",
             out, ckpt["steps"], cfg.steps)
    return TrainSegResult(model=paths[0], history=paths[1], eval_dir=storage.join(out, "eval"), steps=ckpt["steps"],
                          metrics=rows[-1] if rows else {}, resumed_from=ckpt["steps"], seconds=0.0, skipped=True)


def train_seg(cfg: SegConfig, *, out: str, num_workers: int = 1, use_gpu: str = "auto", cpus_per_worker: float = 1.0,
              storage_path: str | None = None, name: str = "train-seg", max_failures: int = 2,
              address: str | None = None) -> TrainSegResult:
    """Train one segmenter with Ray Train (see the module docstring); resumes a run of the same name."""
    if num_workers < 1:
        raise ValueError(f"--num-workers must be >= 1; got {num_workers}")
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
    if cfg.synthetic and not use_synthetic:
        log.warning("round(synthetic_fraction * batch_size) = 0: the synthetic datasets are not used")
    # [2] Ray Data: the generated Parquet rows, PNG-decoded and letterboxed in Ray Data tasks, streamed to the workers
    ds = ray.data.read_parquet(cfg.synthetic).select_columns(["image", "mask"]) if use_synthetic else None
    channels = _channels(cfg, real, ds)
    if ds is not None:
        datasets[SYNTHETIC] = ds.map_batches(letterbox_batch, fn_kwargs={"size": cfg.image_size, "channels": channels},
                                             batch_size=16)
    t0 = time.perf_counter()
    trainer = TorchTrainer(
        seg_train_loop,
        train_loop_config={"seg": to_dict(cfg), "channels": channels, "use_synthetic": use_synthetic},
        scaling_config=ScalingConfig(num_workers=num_workers, use_gpu=gpu,
                                     resources_per_worker={"CPU": cpus_per_worker, **({"GPU": 1} if gpu else {})}),
        datasets=datasets,  # [3] split across the workers (equal shares)
        run_config=RunConfig(
            name=name,  # stable name: running the same command again resumes this run
            storage_path=storage_path,
            failure_config=FailureConfig(max_failures=max_failures),
            checkpoint_config=CheckpointConfig(num_to_keep=2),
        ),
    )
    log.info("training %s/%s for %d steps on %d worker(s)%s; checkpoints in %s", cfg.arch, cfg.backbone, cfg.steps,
             num_workers, " with GPUs" if gpu else "", storage.join(storage_path, name))
    result = trainer.fit()  # [7] blocks until done; raises TrainingFailedError after max_failures
    if result.checkpoint is None:
        raise RuntimeError(f"the run {storage.join(storage_path, name)} produced no checkpoint")
    with result.checkpoint.as_directory() as d:
        d = Path(d)
        progress = json.loads((d / PROGRESS).read_text())
        steps = int(torch.load(d / "model.pt", map_location="cpu", weights_only=True)["steps"])
        for name_in_ckpt, target in (("model.pt", "model.pt"), (HISTORY, HISTORY), ("eval.json", "eval/eval.json"),
                                     ("eval.csv", "eval/eval.csv"), ("eval.png", "eval/eval.png")):
            storage.write_bytes(storage.join(out, target), (d / name_in_ckpt).read_bytes())
    history = read_history(storage.join(out, HISTORY))
    return TrainSegResult(model=storage.join(out, "model.pt"), history=storage.join(out, HISTORY),
                          eval_dir=storage.join(out, "eval"), steps=steps, metrics=history[-1] if history else {},
                          resumed_from=int(progress.get("started_from", 0)), seconds=time.perf_counter() - t0)
