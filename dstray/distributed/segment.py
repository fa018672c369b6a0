"""Segmenter training on Ray: Ray Train (data parallel, Ray Data ingestion) and Ray Tune searches.

``train_seg`` (``dstray train-seg``) runs :class:`dstray.segment.SegTrainer` on a
``TorchTrainer`` with ``num_workers`` workers (one GPU each when the cluster has GPUs):

1. The driver checks the inputs, then reads the generated Parquet datasets with
   ``ray.data.read_parquet`` and maps them through :func:`letterbox_batch` (PNG decode +
   letterbox, in Ray Data tasks, streaming alongside training).
2. The dataset goes to the trainer as ``datasets={"synthetic": ds}``; Ray Train splits it
   across workers. Each worker wraps its split in a :class:`ShardSource`, which has
   :class:`dstray.segdata.SegSource`'s contract (``channels``, ``batch(batch_size,
   generator)``): ``round(synthetic_fraction * batch_size)`` synthetic items per batch
   come from the shard's ``iter_torch_batches`` (epoch after epoch, locally shuffled), the
   rest are real samples drawn with the trainer's generator, as in ``SegSource``.
   ``batch_size`` is per worker: the global batch is ``batch_size * num_workers``.
3. With more than one worker the model is wrapped by ``ray.train.torch.prepare_model``
   (DDP); checkpoints always hold the bare module (``load_segmenter`` reads them).
4. Every ``eval_every`` steps rank 0 evaluates on the real ``eval_split`` and reports
   ``f1, precision, recall, iou, loss, ...`` with a checkpoint (``model.pt``, the eval
   files, the history); the other ranks report metrics only (``report`` is a barrier).
5. Resumable: a stable ``RunConfig(name, storage_path)``; running the same command again
   (or with more ``--steps``) continues from the latest checkpoint, and
   ``FailureConfig(max_failures)`` restarts a lost worker group from it.

At the end ``out/model.pt``, ``out/history.csv`` and ``out/eval/eval.{json,csv,png}``.

``tune_seg`` (``dstray tune``) searches Buttonlab hyper-parameters with Ray Tune: plain
function trainables (:func:`seg_trial`) that run ``SegTrainer`` directly (Train inside Tune
leaks resources without the dashboard, see ``shared/notes/ray-2.60.md``), ASHA on pixel
F1 of the real test split, checkpoints per evaluation (trials resume from them; an
interrupted search resumes with ``Tuner.restore``).
"""

from __future__ import annotations

import csv
import io
import json
import logging
import math
import os
import tempfile
import time
from dataclasses import MISSING, dataclass, fields, replace
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from dstray.config import SegConfig, from_dict, to_dict
from dstray import storage

# torch and ray are imported inside the functions: `dstray --help` (which reads DEFAULT_SPACE) stays fast.

log = logging.getLogger("dstray")

SYNTHETIC = "synthetic"  # name of the Ray Data dataset handed to the trainer
PROGRESS = "progress.json"  # checkpoint file: history, synthetic epochs started (next to model.pt)
RUN_CONFIG = "dstray-config.json"  # the SegConfig of a run, next to Ray's files (resume check)
SEARCH_SPEC = "dstray-search.json"  # the search of a tune run (restore check)
HISTORY_FIELDS = ["step", "loss", "f1", "precision", "recall", "iou", "detection_rate", "false_alarm_rate",
                  "seconds", "eval_seconds", "images_per_s", "num_workers"]
RESUME_FREE = ("steps", "eval_every", "device")  # SegConfig fields that may change when a run resumes


# --------------------------------------------------------------------------- inputs
def synthetic_paths(paths: list[str]) -> list[str]:
    """Generated datasets as Parquet locations: an output folder of ``dstray generate`` means its ``data/``."""
    out = []
    for p in paths:
        if not storage.exists(p):
            raise FileNotFoundError(f"synthetic dataset {p} does not exist; give the output folder of "
                                    "`dstray generate` (or its data/ folder, or a Parquet file)")
        data = storage.join(p, "data")
        out.append(data if storage.exists(storage.join(p, "_shards")) and storage.exists(data) else p)
    return out


def real_training_samples(cfg: SegConfig) -> list:
    """The real training samples of ``cfg``, as ``SegSource.from_config`` takes them."""
    from dstray.segdata import real_samples

    return real_samples(cfg)


def check_inputs(cfg: SegConfig) -> SegConfig:
    """Fail fast, before any Ray work, with what to do; returns ``cfg`` with resolved synthetic paths."""
    from dstray.data import load_dataset
    from dstray.nets.baselines import ARCHS

    if cfg.arch not in ARCHS:
        raise ValueError(f"--arch must be one of {ARCHS}; got {cfg.arch!r}")
    if cfg.steps < 1 or cfg.eval_every < 1 or cfg.batch_size < 1:
        raise ValueError(f"--steps, --eval-every and --batch-size must be >= 1; got {cfg.steps}, {cfg.eval_every}, "
                         f"{cfg.batch_size}")
    if not 0.0 <= cfg.synthetic_fraction <= 1.0:
        raise ValueError(f"--synthetic-fraction must be in [0, 1]; got {cfg.synthetic_fraction}")
    dataset = load_dataset(cfg.data)
    if not dataset.split(cfg.eval_split):
        known = sorted({s.split for s in dataset.samples})
        raise ValueError(f"{dataset.root}: the evaluation split {cfg.eval_split!r} has no samples; "
                         f"choose --eval-split among {known}")
    for name in cfg.real_splits:
        if not dataset.split(name):
            raise ValueError(f"{dataset.root}: the real training split {name!r} has no samples; "
                             f"choose --real-splits among {sorted({s.split for s in dataset.samples})}")
    if not cfg.synthetic and not cfg.real_splits:
        raise ValueError("no training data: give generated datasets (--synthetic DIR[,DIR]) and/or real splits "
                         "(--real-splits train,reference)")
    # absolute paths: Ray workers run in other working directories
    return replace(cfg, data=storage.absolute(cfg.data),
                   synthetic=[storage.absolute(p) for p in synthetic_paths(cfg.synthetic)])


def synthetic_per_batch(cfg: SegConfig) -> int:
    """How many items of each (per-worker) batch are synthetic, as in ``SegSource.batch``."""
    if not cfg.synthetic:
        return 0
    if not cfg.real_splits:
        return cfg.batch_size
    return round(cfg.synthetic_fraction * cfg.batch_size)


# --------------------------------------------------------------------------- Ray Data -> SegTrainer
def letterbox_batch(batch: dict[str, np.ndarray], size: int, channels: int) -> dict[str, np.ndarray]:
    """Ray Data ``map_batches`` function: PNG rows -> letterboxed arrays (exactly what ``SegSource`` builds).

    In: ``image``, ``mask`` (PNG bytes). Out: ``image`` float32 (B,C,S,S), ``mask`` and ``valid`` uint8 (B,1,S,S).
    """
    from dstray.data import MASK_THRESHOLD, decode_png
    from dstray.segdata import prepare

    images, masks, valids = [], [], []
    for image_png, mask_png in zip(batch["image"], batch["mask"]):
        mask = (decode_png(mask_png)[:1] >= (MASK_THRESHOLD - 0.5) / 255).float()  # 8-bit value >= 128
        item = prepare(decode_png(image_png), mask, size, channels)
        images.append(item["image"].numpy())
        masks.append(item["mask"].numpy().astype(np.uint8))
        valids.append(item["valid"].numpy().astype(np.uint8))
    return {"image": np.stack(images), "mask": np.stack(masks), "valid": np.stack(valids)}


class ShardSource:
    """``SegSource``'s contract fed by a Ray Data shard: what :class:`SegTrainer` draws its batches from.

    Synthetic items come in order from ``shard`` (already letterboxed by :func:`letterbox_batch`),
    one epoch after another, each epoch locally shuffled with seed ``seed + epoch``; real items
    are drawn with replacement with the trainer's generator. Augmentation as in ``SegSource``.
    ``epoch`` counts started epochs (saved in checkpoints so that a resumed run reshuffles).
    """

    def __init__(self, cfg: SegConfig, shard: Any | None, real_samples: list, channels: int, seed: int = 0,
                 epoch: int = 0) -> None:
        from dstray.segdata import augmentation, prepare_sample

        self.cfg, self.shard, self.channels, self.seed, self.epoch = cfg, shard, channels, seed, epoch
        self.real = [prepare_sample(s, cfg.image_size, channels) for s in real_samples]
        self.n_syn = synthetic_per_batch(cfg) if shard is not None else 0
        if not self.real and not self.n_syn:
            raise ValueError("ShardSource has no training data: no real samples and no synthetic shard")
        self.transform = augmentation(cfg.image_size) if cfg.augment else None
        self._stream: Iterator[dict] | None = None

    def _items(self) -> Iterator[dict]:
        while True:
            seen = 0
            batches = self.shard.iter_torch_batches(batch_size=self.n_syn, device="cpu",
                                                    local_shuffle_buffer_size=max(32, 8 * self.n_syn),
                                                    local_shuffle_seed=self.seed + self.epoch)
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
        import torch

        from dstray.segdata import augment

        n_syn = min(self.n_syn, batch_size) if self.real else batch_size
        if n_syn and self._stream is None:
            self._stream = self._items()
        items = [next(self._stream) for _ in range(n_syn)]
        picks = torch.randint(len(self.real) or 1, (batch_size - n_syn,), generator=generator).tolist()
        items += [self.real[i] for i in picks]
        items = [augment(it, self.transform, generator) for it in items]
        return {k: torch.stack([it[k] for it in items]) for k in ("image", "mask", "valid")}


# --------------------------------------------------------------------------- Ray Train worker loop
def _trainer_class():
    import torch

    from dstray.segment import SegTrainer

    class RaySegTrainer(SegTrainer):
        """A SegTrainer whose model may be DDP-wrapped: state and checkpoints hold the bare module."""

        @property
        def module(self) -> torch.nn.Module:
            return getattr(self.model, "module", self.model)

        def state_dict(self) -> dict:
            return {**super().state_dict(), "state_dict": self.module.state_dict()}

    return RaySegTrainer


def _rank_seed(seed: int, rank: int, step: int) -> int:
    """Batch RNG seed of worker ``rank`` > 0 (rank 0 keeps the trainer's own, saved generator)."""
    return (seed * 1_000_003 + rank * 7919 + step) % 2**63


def _eval_row(step: int, train_log: dict, result: dict, eval_seconds: float, num_workers: int) -> dict:
    pixel = result["pixel"]
    return {"step": step, "loss": train_log["loss"], "f1": pixel["f1"], "precision": pixel["precision"],
            "recall": pixel["recall"], "iou": pixel["iou"], "detection_rate": result["image"]["detection_rate"],
            "false_alarm_rate": result["image"]["false_alarm_rate"], "seconds": train_log["seconds"],
            "eval_seconds": eval_seconds, "images_per_s": train_log["images_per_s"] * num_workers,
            "num_workers": num_workers}


def seg_train_loop(config: dict) -> None:
    """Ray Train worker loop (runs on every worker). ``config``: plain dicts only (see :func:`train_seg`)."""
    import ray.train
    import ray.train.torch
    import torch

    from dstray.data import load_dataset
    from dstray.segment import evaluate, run_steps, write_eval

    cfg = from_dict(SegConfig, config["seg"])
    context = ray.train.get_context()
    rank, world = context.get_world_rank(), context.get_world_size()
    device = ray.train.torch.get_device()
    # [3] this worker's share of the synthetic dataset (Ray Data streams it while we train)
    shard = ray.train.get_dataset_shard(SYNTHETIC) if config["use_synthetic"] else None
    source = ShardSource(cfg, shard, real_training_samples(cfg), config["channels"], seed=cfg.seed + 1000 * rank)
    trainer = _trainer_class()(cfg, source, device)
    history: list[dict] = []
    checkpoint = ray.train.get_checkpoint()  # [4] resume: after a worker failure or when the run is started again
    if checkpoint:
        with checkpoint.as_directory() as d:
            trainer.load_state_dict(torch.load(Path(d) / "model.pt", map_location="cpu", weights_only=True))
            progress = json.loads((Path(d) / PROGRESS).read_text())
        history, source.epoch = progress["history"], progress["epoch"]
        if rank == 0:
            print(f"[train-seg] resumed from step {trainer.steps}", flush=True)
    started_from = trainer.steps
    if rank > 0:  # every worker draws its own real samples and crops
        trainer.generator.manual_seed(_rank_seed(cfg.seed, rank, trainer.steps))
    trainer.model = ray.train.torch.prepare_model(trainer.model)  # [5] DDP when world > 1
    eval_samples = load_dataset(cfg.data).split(cfg.eval_split) if rank == 0 else []
    while trainer.steps < cfg.steps:
        train_log = run_steps(trainer, min(cfg.eval_every, cfg.steps - trainer.steps))
        if rank != 0:
            ray.train.report({"step": trainer.steps, "loss": train_log["loss"]})  # [6] report is a barrier
            continue
        start = time.perf_counter()
        result = evaluate(trainer.module, eval_samples, cfg, device)
        row = _eval_row(trainer.steps, train_log, result, time.perf_counter() - start, world)
        history.append(row)
        with tempfile.TemporaryDirectory() as d:  # [6] rank 0: metrics + checkpoint (model, eval, history)
            trainer.save(Path(d) / "model.pt")
            write_eval(result, d)
            # the synthetic epoch count is the same on every rank (equal shares, same draws per step)
            progress = {"history": history, "epoch": source.epoch, "started_from": started_from}
            (Path(d) / PROGRESS).write_text(json.dumps(progress))
            ray.train.report(row, checkpoint=ray.train.Checkpoint.from_directory(d))
    source.close()


# --------------------------------------------------------------------------- Ray Train driver
@dataclass
class TrainSegResult:
    """What ``train_seg`` returns (and ``dstray train-seg`` prints)."""

    model: str  # out/model.pt
    history: str  # out/history.csv
    eval_dir: str  # out/eval
    steps: int
    metrics: dict  # the last evaluation row
    resumed_from: int  # step of the checkpoint the last attempt started from (0: from scratch)
    seconds: float
    skipped: bool = False  # out/model.pt already had these settings and >= steps: nothing was run


def _channels(cfg: SegConfig, real: list, ds) -> int:
    """The channel count of the first training image (as ``SegSource``): a real one, else a synthetic row."""
    from dstray.data import decode_png, read_image

    if real:
        return int(read_image(real[0].image).shape[0])
    rows = ds.take(1)
    if not rows:
        raise ValueError(f"the synthetic datasets {cfg.synthetic} have no rows; generate some with `dstray generate`")
    return int(decode_png(rows[0]["image"]).shape[0])


def _has_checkpoint(run_dir: str) -> bool:
    import pyarrow.fs as pafs

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
    saved = json.loads(storage.read_bytes(path))
    now = to_dict(cfg)
    changed = sorted(k for k in now if k not in RESUME_FREE and saved.get(k) != now[k])
    if changed:
        raise ValueError(f"{run_dir} holds a run trained with other settings ({', '.join(changed)} differ); "
                         "give another --name (or --storage-path) to start a new run, or the same settings to "
                         "continue it")
    storage.write_bytes(path, json.dumps(now, indent=2).encode())
    return 1


def _write_history(target: str, history: list[dict]) -> None:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, HISTORY_FIELDS, extrasaction="ignore")
    writer.writeheader()
    writer.writerows(history)
    storage.write_bytes(target, buf.getvalue().encode())


def _finished(cfg: SegConfig, out: str) -> TrainSegResult | None:
    """The result of an earlier run into ``out`` with the same settings and at least ``cfg.steps`` steps, if any."""
    import torch

    paths = [storage.join(out, name) for name in ("model.pt", "history.csv", "eval/eval.json")]
    if not all(storage.exists(p) for p in paths):
        return None
    ckpt = torch.load(io.BytesIO(storage.read_bytes(paths[0])), map_location="cpu", weights_only=True)
    saved, now = ckpt["config"], to_dict(cfg)
    if any(saved.get(k) != now[k] for k in now if k not in RESUME_FREE) or ckpt["steps"] < cfg.steps:
        return None
    rows = list(csv.DictReader(io.StringIO(storage.read_bytes(paths[1]).decode())))
    log.info("%s already holds a model trained %d steps with these settings (>= --steps %d): nothing to do",
             out, ckpt["steps"], cfg.steps)
    return TrainSegResult(model=paths[0], history=paths[1], eval_dir=storage.join(out, "eval"), steps=ckpt["steps"],
                          metrics={k: float(v) for k, v in rows[-1].items()} if rows else {},
                          resumed_from=ckpt["steps"], seconds=0.0, skipped=True)


def train_seg(cfg: SegConfig, *, out: str, num_workers: int = 1, use_gpu: str = "auto", cpus_per_worker: float = 1.0,
              storage_path: str | None = None, name: str = "train-seg", max_failures: int = 2,
              address: str | None = None) -> TrainSegResult:
    """Train one segmenter with Ray Train (see the module docstring); resumes a run of the same name."""
    import ray
    import torch
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    from dstray.distributed.runtime import init_ray, resolve_use_gpu

    if num_workers < 1:
        raise ValueError(f"--num-workers must be >= 1; got {num_workers}")
    cfg = check_inputs(cfg)
    real = real_training_samples(cfg)
    storage_path = storage_path or storage.join(out, "_ray")
    if "://" not in storage_path:
        storage_path = os.path.abspath(storage_path)
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
        storage.write_bytes(storage.join(out, "model.pt"), (d / "model.pt").read_bytes())
        for kind in ("json", "csv", "png"):
            storage.write_bytes(storage.join(out, "eval", f"eval.{kind}"), (d / f"eval.{kind}").read_bytes())
    history = progress["history"]
    _write_history(storage.join(out, "history.csv"), history)
    return TrainSegResult(model=storage.join(out, "model.pt"), history=storage.join(out, "history.csv"),
                          eval_dir=storage.join(out, "eval"), steps=steps, metrics=history[-1] if history else {},
                          resumed_from=int(progress.get("started_from", 0)), seconds=time.perf_counter() - t0)


# --------------------------------------------------------------------------- Ray Tune
# The default search space: name -> spec (the ``--space`` syntax, see parse_space).
DEFAULT_SPACE = {
    "lr": "1e-4:1e-2,log",
    "crop_size": "64,96,128",
    "batch_size": "4,8",
    "backbone": "resnet18,resnet34,resnet50",
    "synthetic_fraction": "0.25,0.5,0.75",
    "defect_weight": "1,2,5",
    "augment": "true,false",
}
SPACE_HELP = ("KEY=SPEC, repeatable; KEY a SegConfig field. SPEC: 'a,b,c' = choice; 'lo:hi' = uniform "
              "(randint, inclusive, if both are integers); 'lo:hi,log' = log-uniform; one value = fixed. "
              f"Overrides the defaults {DEFAULT_SPACE}; KEY=default drops a key (its value comes from the config).")


def parse_space(entries: list[str] | dict[str, str] | None, *, defaults: bool = True) -> dict[str, str]:
    """``["lr=1e-4:1e-2,log", ...]`` merged over :data:`DEFAULT_SPACE`: ``{field: spec}`` (validated)."""
    space = dict(DEFAULT_SPACE) if defaults else {}
    items = entries.items() if isinstance(entries, dict) else [e.partition("=")[::2] for e in entries or []]
    known = {f.name for f in fields(SegConfig)}
    for key, spec in items:
        key, spec = key.strip().replace("-", "_"), spec.strip()
        if key not in known:
            raise ValueError(f"--space {key}: not a SegConfig field; known: {sorted(known)}")
        if not spec:
            raise ValueError(f"--space {key}=: give a spec (e.g. {key}=a,b or {key}=lo:hi[,log]) or {key}=default")
        if spec == "default":
            space.pop(key, None)
        else:
            space[key] = spec
    for key, spec in space.items():
        to_domain(key, spec)  # raises on a bad spec
    return space


def _field_value(key: str, text: str):
    from argparse import ArgumentTypeError

    from dstray.cli import _parse_value

    f = next(f for f in fields(SegConfig) if f.name == key)
    default = f.default if f.default is not MISSING else f.default_factory()  # type: ignore[misc]
    try:
        return _parse_value(text.strip(), str(f.type), default)
    except (ValueError, TypeError, ArgumentTypeError) as exc:
        raise ValueError(f"--space {key}: {text!r} is not a valid {f.type} ({exc})") from exc


def to_domain(key: str, spec: str):
    """A Tune domain (or a fixed value) from a ``--space`` spec; see :data:`SPACE_HELP`."""
    from ray import tune

    if ":" in spec:
        bounds, _, flag = spec.partition(",")
        lo_text, _, hi_text = bounds.partition(":")
        if flag not in ("", "log"):
            raise ValueError(f"--space {key}={spec}: after the range only ',log' is allowed")
        try:
            lo, hi = float(lo_text), float(hi_text)
        except ValueError as exc:
            raise ValueError(f"--space {key}={spec}: a range needs numbers, as lo:hi or lo:hi,log") from exc
        if not lo < hi or (flag and lo <= 0):
            raise ValueError(f"--space {key}={spec}: need lo < hi (and lo > 0 with ,log)")
        integer = isinstance(_field_value(key, "1"), int) and lo.is_integer() and hi.is_integer()
        if integer:
            return tune.lograndint(int(lo), int(hi) + 1) if flag else tune.randint(int(lo), int(hi) + 1)
        return tune.loguniform(lo, hi) if flag else tune.uniform(lo, hi)
    values = [_field_value(key, v) for v in spec.split(",")]
    return values[0] if len(values) == 1 else tune.choice(values)


def seg_trial(config: dict, base: dict, fault: dict | None = None) -> None:
    """Tune function trainable: one SegConfig (``base`` + the sampled ``config``), evaluated every ``eval_every``.

    ``fault`` (tests): ``{"step": k, "marker": path}``: the first trial to reach step k exits (once).
    """
    import ray
    import torch
    from ray import tune

    from dstray.data import load_dataset
    from dstray.segdata import SegSource
    from dstray.segment import SegTrainer, evaluate, run_steps

    cfg = replace(from_dict(SegConfig, base), **config)
    device = "cuda" if ray.get_gpu_ids() and torch.cuda.is_available() else "cpu"
    trainer = SegTrainer(cfg, SegSource.from_config(cfg), device)
    checkpoint = tune.get_checkpoint()  # [5] a restarted trial (or a restored search) continues from its checkpoint
    if checkpoint:
        with checkpoint.as_directory() as d:
            trainer.load_state_dict(torch.load(Path(d) / "model.pt", map_location="cpu", weights_only=True))
    eval_samples = load_dataset(cfg.data).split(cfg.eval_split)
    on_step = None
    if fault:
        marker = Path(fault["marker"])

        def on_step(entry: dict) -> None:  # simulate a lost trial process, once
            if entry["step"] == fault["step"] and not marker.exists():
                marker.write_text("died once")
                os._exit(1)
    while trainer.steps < cfg.steps:
        train_log = run_steps(trainer, min(cfg.eval_every, cfg.steps - trainer.steps), on_step)
        start = time.perf_counter()
        result = evaluate(trainer.model, eval_samples, cfg, device)
        row = _eval_row(trainer.steps, train_log, result, time.perf_counter() - start, 1)
        with tempfile.TemporaryDirectory() as d:  # [6] one report per evaluation: ASHA's time unit
            trainer.save(Path(d) / "model.pt")
            tune.report(row, checkpoint=tune.Checkpoint.from_directory(d))


@dataclass
class TuneSegResult:
    """What ``tune_seg`` returns (and ``dstray tune`` prints)."""

    table_csv: str
    table_md: str
    best_config: str  # a SegConfig JSON for `dstray train-seg --config`
    plot: str
    best: dict  # the best trial's row
    rows: list[dict]
    seconds: float


def _trial_rows(results, space: dict, steps: int) -> list[dict]:
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
        rows.append(row)
    return sorted(rows, key=lambda x: -x["best_f1"] if x["best_f1"] == x["best_f1"] else math.inf)


def _markdown(rows: list[dict], columns: list[str]) -> str:
    def cell(v):
        return f"{v:.4g}" if isinstance(v, float) else str(v)

    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(cell(row.get(c, "")) for c in columns) + " |" for row in rows]
    return "\n".join(lines) + "\n"


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
    ax.set_ylabel("pixel F1 (real test split)")
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
    """Search ``space`` around ``base`` with ASHA on pixel F1; writes the table, best config and plot to ``out``."""
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler
    from ray.tune.search.basic_variant import BasicVariantGenerator

    from dstray.config import save
    from dstray.distributed.runtime import init_ray, resolve_use_gpu

    space = parse_space(space or {}, defaults=False) if space is not None else dict(DEFAULT_SPACE)
    if num_samples < 1 or max_concurrent < 0:
        raise ValueError(f"--num-samples must be >= 1 and --max-concurrent >= 0; got {num_samples}, {max_concurrent}")
    base = check_inputs(base)
    evaluations = math.ceil(base.steps / base.eval_every)
    if grace_period > evaluations:
        raise ValueError(f"--grace-period {grace_period} is more than the {evaluations} evaluation(s) of a trial "
                         "(steps / eval_every); lower it or raise --steps")
    out_dir = Path(out)
    out_dir.mkdir(parents=True, exist_ok=True)
    storage_path = os.path.abspath(storage_path or out_dir / "_ray")
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
        log.info("resuming the search in %s", run_dir)
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
    rows = _trial_rows(results, space, base.steps)
    if not rows or not rows[0]["best_f1"] == rows[0]["best_f1"]:
        errors = "; ".join(r.get("error", "") for r in rows if r.get("error"))
        raise RuntimeError(f"no trial of {run_dir} reported an F1{': ' + errors if errors else ''}")
    columns = ["trial", *space, "best_f1", "best_step", "last_f1", "steps", "status"]
    buf = io.StringIO()
    writer = csv.DictWriter(buf, columns + ["error"], extrasaction="ignore")
    writer.writeheader()
    writer.writerows(rows)
    paths = {"csv": out_dir / "results.csv", "md": out_dir / "results.md", "best": out_dir / "best_config.json",
             "png": out_dir / "f1_per_trial.png"}
    paths["csv"].write_text(buf.getvalue())
    paths["md"].write_text(f"# dstray tune: {name}\n\nmetric: pixel F1 on the real `{base.eval_split}` split "
                           f"(best over the trial's evaluations), ASHA on {evaluations} evaluation(s)\n\n"
                           + _markdown(rows, columns))
    best = rows[0]
    best_cfg = replace(base, **{k: best[k] for k in space})
    save(best_cfg, paths["best"])
    _plot(results, rows, paths["png"])
    return TuneSegResult(table_csv=str(paths["csv"]), table_md=str(paths["md"]), best_config=str(paths["best"]),
                         plot=str(paths["png"]), best=best, rows=rows, seconds=time.perf_counter() - t0)
