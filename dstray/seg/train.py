"""Train one segmenter (Buttonlab or a baseline), pure torch; paper §3.2 and §4.

- Training (Algorithm 3): Adam (lr 2e-3, paper §4), batches from a :class:`SegSource`.
  Buttonlab uses the partial-image input strategy (Figure 5): per batch one random
  ``crop_size`` window (even coordinates, see :mod:`dstray.seg.buttonlab`) is drawn;
  the backbone sees the whole image, the branch the window, and the masked
  cross-entropy (eq. 7) is taken inside the window only. Baselines see the whole image
  with the same loss over all pixels. In both cases padding pixels of the letterbox
  carry no loss, and defect pixels weigh ``cfg.defect_weight``.
- :func:`train_loop` is the one training loop: train ``eval_every`` steps, evaluate on
  the real split, hand the history row to ``on_eval``. :func:`train_local` (in-process),
  the Ray Train worker (:mod:`dstray.distributed.train_seg`) and the Tune trial
  (:mod:`dstray.distributed.tune_seg`) are adapters that say where a row and a checkpoint go.
- One history format for every kind of run: JSON lines ``history.jsonl``, one
  :func:`history_row` per evaluation, written by :func:`write_history`.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from torch.nn import functional as F

from dstray import storage
from dstray.config import ARCHS, SegConfig, check_resumable, from_dict, resolve_device, to_dict
from dstray.data import load_dataset
from dstray.seg.baselines import build_segmenter
from dstray.seg.data import SegSource, synthetic_count, synthetic_paths
from dstray.seg.evaluate import evaluate, strict_json, write_eval

NUM_CLASSES = 2  # background, defect
CHECKPOINT = "model.pt"  # the trainer's checkpoint in a run's folder (SegTrainer.save)
HISTORY = "history.jsonl"  # the evaluation history of a run, one JSON object a line
HISTORY_FIELDS = ("step", "loss", "f1", "precision", "recall", "iou", "detection_rate", "false_alarm_rate",
                  "seconds", "eval_seconds", "images_per_s", "num_workers")


def masked_cross_entropy(logits: torch.Tensor, target: torch.Tensor, weight: torch.Tensor,
                         defect_weight: float = 1.0) -> torch.Tensor:
    """Cross-entropy over the pixels where ``weight`` is 1 (paper eq. 7), defect pixels weighted.

    logits (N,K,H,W); target (N,1,H,W) in {0,1}; weight (N,1,H,W) in {0,1}. Normalised like
    ``F.cross_entropy(weight=...)``: sum(w * ce) / sum(w), w = weight * (defect_weight if defect else 1).
    Pixels with weight 0 get exactly zero gradient; no weighted pixel -> loss 0.
    """
    label = target[:, 0] > 0.5
    ce = F.cross_entropy(logits, label.long(), reduction="none")
    w = weight[:, 0] * torch.where(label, defect_weight, 1.0)
    return (w * ce).sum() / w.sum().clamp_min(torch.finfo(w.dtype).eps)


class SegTrainer:
    """One segmenter, its Adam optimiser and its batch RNG; resumable bit for bit.

    ``step()`` runs one optimiser step; ``steps`` counts them. ``state_dict()`` holds
    the model, optimiser, step count and generator state; :meth:`save` adds the config
    and what :func:`load_segmenter` needs to rebuild the network. ``train_source`` is
    anything with ``channels`` and ``batch(batch_size, generator)`` (:class:`SegSource`, or
    the Ray Train shard source). An adapter may wrap ``model`` (DDP): :attr:`module` is the
    bare network, which is what state dicts and checkpoints hold.
    """

    def __init__(self, cfg: SegConfig, train_source: SegSource, device: str | torch.device = "cpu") -> None:
        self.cfg = cfg
        self.source = train_source
        self.device = resolve_device(device)
        with torch.random.fork_rng(devices=[]):  # seeded init, global RNG untouched
            torch.manual_seed(cfg.seed)
            self.model = build_segmenter(cfg, in_channels=train_source.channels, num_classes=NUM_CLASSES)
        self.model.to(self.device).train()
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=cfg.lr)
        self.generator = torch.Generator().manual_seed(cfg.seed)
        self.steps = 0

    def draw_crop(self, size: int) -> tuple[int, int, int, int]:
        """A random ``crop_size`` window (top, left, h, w) on the even grid of a ``size`` square."""
        c = min(self.cfg.crop_size, size) // 2 * 2
        top, left = (2 * torch.randint((size - c) // 2 + 1, (2,), generator=self.generator)).tolist()
        return top, left, c, c

    def step(self) -> dict[str, float]:
        batch = self.source.batch(self.cfg.batch_size, self.generator)
        image, mask, valid = (batch[k].to(self.device, non_blocking=True) for k in ("image", "mask", "valid"))
        if self.cfg.arch == "buttonlab":
            top, left, h, w = crop = self.draw_crop(image.shape[-1])
            logits = self.model(image, crop=crop)["out"]
            mask, valid = mask[..., top:top + h, left:left + w], valid[..., top:top + h, left:left + w]
        else:
            logits = self.model(image)["out"]
        loss = masked_cross_entropy(logits, mask, valid, self.cfg.defect_weight)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        self.steps += 1
        return {"loss": loss.item(), "step": self.steps}

    @property
    def module(self) -> torch.nn.Module:
        """The bare network (``model`` unwrapped when an adapter wrapped it, e.g. in DDP)."""
        return getattr(self.model, "module", self.model)

    def state_dict(self) -> dict:
        return {"state_dict": self.module.state_dict(), "optimizer": self.optimizer.state_dict(),
                "steps": self.steps, "generator": self.generator.get_state()}

    def load_state_dict(self, state: dict) -> None:
        self.module.load_state_dict(state["state_dict"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.steps = int(state["steps"])
        self.generator.set_state(state["generator"])

    def save(self, path: str | Path) -> Path:
        """Checkpoint (atomic write), loadable with ``torch.load(weights_only=True)``."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        ckpt = {**self.state_dict(), "config": to_dict(self.cfg), "arch": self.cfg.arch,
                "backbone": self.cfg.backbone, "in_channels": self.source.channels, "num_classes": NUM_CLASSES,
                "image_size": self.cfg.image_size}
        tmp = path.with_suffix(path.suffix + ".tmp")
        torch.save(ckpt, tmp)
        os.replace(tmp, path)
        return path


def load_segmenter(path: str | Path, device: str | torch.device = "cpu") -> tuple[torch.nn.Module, SegConfig]:
    """The network of a :meth:`SegTrainer.save` checkpoint (eval mode) and its config.

    The network is rebuilt with random init (nothing is fetched) before its weights are loaded.
    """
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    cfg = from_dict(SegConfig, ckpt["config"])
    model = build_segmenter(replace(cfg, weights="random"), in_channels=ckpt["in_channels"],
                            num_classes=ckpt["num_classes"])
    model.load_state_dict(ckpt["state_dict"])
    return model.to(resolve_device(device)).eval(), cfg


def run_steps(trainer: SegTrainer, n: int, on_step: Callable[[dict], None] | None = None) -> dict[str, float]:
    """Run ``n`` optimiser steps; ``{"loss": mean loss, "step": last step, "seconds", "images_per_s"}``."""
    start, losses = time.perf_counter(), []
    for _ in range(n):
        log = trainer.step()
        losses.append(log["loss"])
        if on_step is not None:
            on_step(log)
    seconds = time.perf_counter() - start
    return {"loss": float(np.mean(losses)) if losses else float("nan"), "step": trainer.steps, "seconds": seconds,
            "images_per_s": n * trainer.cfg.batch_size / seconds if seconds > 0 else float("nan")}

def check_inputs(cfg: SegConfig) -> SegConfig:
    """Fail fast, before any work, with what to do; returns ``cfg`` with resolved, absolute paths.

    Checks the arch and sizes, the evaluation and real training splits, and that there is
    training data; generated datasets are given as Parquet locations (:func:`synthetic_paths`).
    Paths are made absolute: Ray workers run in other working directories.
    """
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
    return replace(cfg, data=storage.absolute(cfg.data),
                   synthetic=[storage.absolute(p) for p in synthetic_paths(cfg.synthetic)])


def synthetic_per_batch(cfg: SegConfig) -> int:
    """How many items of each (per-worker) batch of ``cfg`` are generated samples (:func:`synthetic_count`)."""
    return synthetic_count(cfg.batch_size, cfg.synthetic_fraction, real=bool(cfg.real_splits),
                           synthetic=bool(cfg.synthetic))


# --------------------------------------------------------------------------- the loop
def history_row(step: int, train_log: dict, result: dict, eval_seconds: float, num_workers: int = 1) -> dict:
    """The history entry of one evaluation (:data:`HISTORY_FIELDS`), the same for every kind of run."""
    pixel = result["pixel"]
    return {"step": step, "loss": train_log["loss"], "f1": pixel["f1"], "precision": pixel["precision"],
            "recall": pixel["recall"], "iou": pixel["iou"], "detection_rate": result["image"]["detection_rate"],
            "false_alarm_rate": result["image"]["false_alarm_rate"], "seconds": train_log["seconds"],
            "eval_seconds": eval_seconds, "images_per_s": train_log["images_per_s"] * num_workers,
            "num_workers": num_workers}


def train_loop(trainer: SegTrainer, *, steps: int, eval_every: int, evaluator: Callable[[], dict] | None,
               on_eval: Callable[[dict, dict | None], None], on_step: Callable[[dict], None] | None = None,
               num_workers: int = 1, at_least_once: bool = False) -> None:
    """The one segmentation training loop: ``eval_every`` steps, evaluate, report; until ``steps``.

    After each stretch of ``min(eval_every, steps left)`` steps, ``evaluator()`` (the result of
    :func:`dstray.seg.evaluate.evaluate` on the real split) gives the :func:`history_row` handed to
    ``on_eval(row, result)``. ``evaluator=None`` (Ray Train ranks > 0) hands ``({"step", "loss"}, None)``.
    ``on_step(log)`` sees every optimiser step. ``at_least_once``: evaluate even when ``trainer``
    already has ``steps`` (a finished run reopened). A resumed trainer continues from its step.
    """
    while trainer.steps < steps or at_least_once:
        at_least_once = False
        train_log = run_steps(trainer, min(eval_every, steps - trainer.steps), on_step)
        if evaluator is None:
            on_eval({"step": trainer.steps, "loss": train_log["loss"]}, None)
            continue
        start = time.perf_counter()
        result = evaluator()
        on_eval(history_row(trainer.steps, train_log, result, time.perf_counter() - start, num_workers), result)


def write_history(location: str | Path, rows: list[dict]) -> None:
    """Write ``rows`` as ``history.jsonl`` at ``location`` (a local path or URI); strict JSON: NaN is null."""
    text = "".join(json.dumps(strict_json({k: row[k] for k in HISTORY_FIELDS if k in row}), allow_nan=False) + "\n"
                   for row in rows)
    storage.write_bytes(str(location), text.encode())


def read_history(location: str | Path) -> list[dict]:
    """The rows of a ``history.jsonl`` ([] when there is none)."""
    location = str(location)
    if not storage.exists(location):
        return []
    return [json.loads(line) for line in storage.read_bytes(location).decode().splitlines() if line.strip()]


def save_checkpoint(folder: str | Path, trainer: SegTrainer, history: list[dict], result: dict | None = None) -> None:
    """A run's checkpoint folder: ``model.pt``, ``history.jsonl`` and, given ``result``, ``eval.{json,csv,png}``."""
    folder = Path(folder)
    trainer.save(folder / CHECKPOINT)
    if result is not None:
        write_eval(result, folder)
    write_history(folder / HISTORY, history)


def load_checkpoint(folder: str | Path, trainer: SegTrainer, *, check: bool = False) -> list[dict]:
    """Restore ``trainer`` from a :func:`save_checkpoint` folder; returns the history up to its step.

    ``check``: refuse (:func:`dstray.config.check_resumable`) a checkpoint trained with another config.
    """
    path = Path(folder) / CHECKPOINT
    state = torch.load(path, map_location="cpu", weights_only=True)
    if check:
        check_resumable(state["config"], trainer.cfg, path)
    trainer.load_state_dict(state)
    return [r for r in read_history(Path(folder) / HISTORY) if r["step"] <= trainer.steps]


# --------------------------------------------------------------------------- in-process runs
def train_local(cfg: SegConfig, out_dir: str | Path, on_report: Callable[[dict], None] | None = None) -> dict:
    """Train ``cfg.steps`` steps in this process, evaluating and checkpointing every ``cfg.eval_every``.

    The local adapter of :func:`train_loop`. Resumes from ``out_dir/model.pt`` if it exists (same
    config but for ``SegConfig.RESUME_FREE``). Writes ``model.pt``, ``eval.{json,csv,png}`` (latest)
    and ``history.jsonl``; returns ``{"checkpoint", "steps", "history" (this call's rows), "final"}``.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    trainer = SegTrainer(cfg, SegSource.from_config(cfg), cfg.device)
    history = load_checkpoint(out, trainer, check=True) if (out / CHECKPOINT).exists() else []
    eval_samples = load_dataset(cfg.data).split(cfg.eval_split)
    rows, final = [], {}

    def on_eval(row: dict, result: dict) -> None:
        history.append(row)
        save_checkpoint(out, trainer, history, result)
        rows.append(row)
        final.update({k: v for k, v in result.items() if k != "examples"})
        if on_report is not None:
            on_report(row)

    train_loop(trainer, steps=cfg.steps, eval_every=cfg.eval_every,
               evaluator=lambda: evaluate(trainer.model, eval_samples, cfg, trainer.device), on_eval=on_eval,
               at_least_once=True)
    return {"checkpoint": str(out / CHECKPOINT), "steps": trainer.steps, "history": rows, "final": final}


def evaluate_checkpoint(model: str | Path, *, out: str | Path, data: str | None = None, split: str | None = None,
                        device: str = "auto", threshold: float | None = None) -> tuple[dict, dict]:
    """Load a :meth:`SegTrainer.save` checkpoint, evaluate it on a real split, write ``out/eval.{json,csv,png}``.

    ``data``/``split``/``threshold`` default to the checkpoint's config. Returns ``(result, paths)``.
    """
    if not Path(model).is_file():
        raise FileNotFoundError(f"no checkpoint at {model}; give the model.pt written by `dstray train-seg`")
    net, cfg = load_segmenter(model, device)
    cfg = replace(cfg, **{k: v for k, v in {"data": data, "eval_split": split, "threshold": threshold}.items()
                          if v is not None})
    dataset = load_dataset(cfg.data)
    samples = dataset.split(cfg.eval_split)
    if not samples:
        raise ValueError(f"{dataset.root}: split {cfg.eval_split!r} has no samples; choose --split among "
                         f"{sorted({s.split for s in dataset.samples})}")
    result = evaluate(net, samples, cfg, next(net.parameters()).device)
    return result, write_eval(result, out)
