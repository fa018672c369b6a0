"""Train one segmenter (Buttonlab or a baseline), pure torch; paper §3.2 and §4.

- **Steps** (Algorithm 3): Adam on batches of windows from a :class:`SegSource` (real and
  generated images at their own resolution, :mod:`dstray.seg.data`). Buttonlab uses the
  partial-image input strategy (Figure 5): per batch one crop, inside the image part of every
  window (:func:`dstray.seg.data.draw_crop`); the backbone sees the whole window, the branch the
  crop, and the loss covers the crop only. Baselines take the loss over the whole window.
  Padding never carries loss.
- **Loss** (:func:`seg_loss`): cross-entropy (eq. 7) with defect pixels weighted
  ``cfg.defect_weight``, plus ``cfg.dice_weight`` x the soft Dice loss of the defect class
  (over the batch, valid pixels only). The default (weight 3 + Dice 1, against weight 10 and
  no Dice) was chosen on ``val`` (README, "Segmentation").
- **Selection never sees what is reported.** :func:`train_loop`, the one training loop,
  evaluates every ``eval_every`` steps on ``cfg.eval_split`` (``val``), choosing the threshold
  there (:func:`dstray.seg.evaluate.evaluate`); the trainer keeps the weights and threshold of
  the best pixel F1 seen (:meth:`SegTrainer.select`): that is the model (``model.pt``).
  :func:`finish` then scores it, at its threshold, on ``val`` and once on ``cfg.test_split``.
- :func:`train_local` (in-process), the Ray Train worker (:mod:`dstray.distributed.train_seg`)
  and the Tune trial (:mod:`dstray.distributed.tune_seg`) are adapters that say where a row
  and a checkpoint go.
- One history format for every kind of run: JSON lines ``history.jsonl``, one
  :func:`history_row` per evaluation, written by :func:`write_history`.

A run folder: ``model.pt`` (the selected model), ``state.pt`` (the trainer's last state, to
resume), ``history.jsonl``, and after :func:`finish` ``val/eval.*`` and ``test/eval.*``.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

from dstray import storage
from dstray.config import SegConfig, check_resumable, from_dict, resolve_device, to_dict
from dstray.data import load_dataset
from dstray.seg.baselines import build_segmenter
from dstray.seg.data import SegSource, draw_crop
from dstray.seg.checks import check_inputs, check_policy, eval_samples, synthetic_per_batch  # noqa: F401 (re-exported)
from dstray.seg.freeze import freeze_stages, trainable_parameters
from dstray.seg.losses import DICE_SMOOTH, masked_cross_entropy, seg_loss, soft_dice_loss  # noqa: F401 (re-exported)
from dstray.seg.evaluate import evaluate, strict_json, write_eval

NUM_CLASSES = 2  # background, defect
CHECKPOINT = "model.pt"  # the selected model of a run: best weights on eval_split + threshold (what evaluate loads)
STATE = "state.pt"  # the trainer's last state in a run's folder (what a resumed run continues from)
HISTORY = "history.jsonl"  # the evaluation history of a run, one JSON object a line
HISTORY_FIELDS = ("step", "loss", "f1", "precision", "recall", "iou", "macro_f1", "threshold", "detection_rate",
                  "false_alarm_rate", "auroc", "best_f1", "best_step", "seconds", "eval_seconds", "images_per_s",
                  "num_workers")
# --------------------------------------------------------------------------- trainer
class SegTrainer:
    """One segmenter, its Adam optimiser, its batch RNG and the best model so far; resumable bit for bit.

    ``step()`` runs one optimiser step; ``steps`` counts them. :meth:`select` keeps the weights
    and threshold of the best evaluation (``best``, ``best_state``). ``state_dict()`` holds the
    model, optimiser, step count, generator state and ``best``; :meth:`save_state` adds the
    config, :meth:`save_model` writes the selected model (what :func:`load_segmenter` reads).
    ``train_source`` is anything with ``channels`` and ``batch(batch_size, generator)``
    (:class:`SegSource`, or the Ray Train shard source). An adapter may wrap ``model`` (DDP):
    :attr:`module` is the bare network, which is what state dicts and checkpoints hold.
    """

    def __init__(self, cfg: SegConfig, train_source: SegSource, device: str | torch.device = "cpu") -> None:
        self.cfg = cfg
        self.source = train_source
        self.device = resolve_device(device)
        with torch.random.fork_rng(devices=[]):  # seeded init, global RNG untouched
            torch.manual_seed(cfg.seed)
            self.model = build_segmenter(cfg, in_channels=train_source.channels, num_classes=NUM_CLASSES)
        self.model.to(self.device).train()
        self.optimizer = torch.optim.Adam(trainable_parameters(self.model), lr=cfg.lr)
        # weight averaging: the EMA copy is what is evaluated, selected and saved (cfg.ema = 0: the model itself)
        self.ema = AveragedModel(self.model, multi_avg_fn=get_ema_multi_avg_fn(cfg.ema), use_buffers=True) \
            if cfg.ema else None
        self.generator = torch.Generator().manual_seed(cfg.seed)
        self.steps = 0
        self.best: dict = {"f1": None, "step": 0, "threshold": None, "scores": {}}  # the selected evaluation
        self.best_state: dict | None = None  # its weights (CPU copies)

    def step(self) -> dict[str, float]:
        batch = self.source.batch(self.cfg.batch_size, self.generator, step=self.steps)
        image, mask, valid = (batch[k].to(self.device, non_blocking=True) for k in ("image", "mask", "weight"))
        if self.cfg.channels_last:
            image = image.contiguous(memory_format=torch.channels_last)
        if self.cfg.arch == "buttonlab":
            top, left, h, w = crop = draw_crop(batch["valid"], self.cfg.crop_size, self.generator)
            logits = self.model(image, crop=crop)["out"]
            mask, valid = mask[..., top:top + h, left:left + w], valid[..., top:top + h, left:left + w]
        else:
            logits = self.model(image)["out"]
        loss = seg_loss(logits, mask, valid, self.cfg)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        if self.ema is not None:
            self.ema.update_parameters(self.module)
        self.steps += 1
        return {"loss": loss.item(), "step": self.steps}

    def select(self, result: dict) -> bool:
        """Keep the current weights and ``result``'s threshold if its pixel F1 beats the best so far."""
        f1 = float(result["pixel"]["f1"])
        if self.best["f1"] is not None and not f1 > self.best["f1"]:
            return False
        self.best = {"f1": f1, "step": self.steps, "threshold": float(result["threshold"]),
                     "image_score": result["image"].get("score"), "image_threshold": result["image"].get("threshold"),
                     "scores": {"pixel": result["pixel"], "macro": result.get("macro"), "image": result["image"]}}
        self.best_state = {k: v.detach().to("cpu", copy=True) for k, v in self.eval_model.state_dict().items()}
        return True

    @property
    def module(self) -> torch.nn.Module:
        """The bare network (``model`` unwrapped when an adapter wrapped it, e.g. in DDP)."""
        return getattr(self.model, "module", self.model)

    @property
    def eval_model(self) -> torch.nn.Module:
        """The network that is evaluated, selected and saved: the EMA of the weights, or the bare network."""
        return self.ema.module if self.ema is not None else self.module

    def state_dict(self) -> dict:
        state = {"state_dict": self.module.state_dict(), "optimizer": self.optimizer.state_dict(),
                 "steps": self.steps, "generator": self.generator.get_state(), "best": json.dumps(strict_json(self.best))}
        if self.ema is not None:
            state["ema"] = self.ema.state_dict()
        return state

    def load_state_dict(self, state: dict, best_state: dict | None = None) -> None:
        """Restore :meth:`state_dict`; ``best_state`` = the selected weights (``model.pt``'s), when there are some."""
        self.module.load_state_dict(state["state_dict"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.steps = int(state["steps"])
        self.generator.set_state(state["generator"])
        if self.ema is not None:
            self.ema.load_state_dict(state["ema"])
        self.best = json.loads(state["best"])
        self.best_state = best_state

    def save_state(self, path: str | Path) -> Path:
        """The trainer's state + config (resume), atomic; ``torch.load(weights_only=True)`` reads it."""
        return _save({**self.state_dict(), "config": to_dict(self.cfg)}, path)

    def save_model(self, path: str | Path) -> Path:
        """The selected model (best weights on ``eval_split`` and their threshold) as :func:`load_segmenter` reads it."""
        if self.best_state is None:
            raise RuntimeError("no evaluation yet: nothing selected to save")
        return _save({"state_dict": self.best_state, "config": to_dict(self.cfg), "arch": self.cfg.arch,
                      "backbone": self.cfg.backbone, "in_channels": self.source.channels, "num_classes": NUM_CLASSES,
                      "threshold": self.best["threshold"], "step": self.best["step"], "steps": self.steps,
                      "image_rule": json.dumps(strict_json({"score": self.best.get("image_score"),
                                                            "threshold": self.best.get("image_threshold")})),
                      "selected_on": self.cfg.eval_split, "val": json.dumps(strict_json(self.best["scores"]))},
                     path)


def _save(obj: dict, path: str | Path) -> Path:
    storage.save_torch(obj, path)
    return Path(path)


def load_segmenter(path: str | Path, device: str | torch.device = "cpu") -> tuple[torch.nn.Module, SegConfig, float]:
    """The network of a ``model.pt`` (:meth:`SegTrainer.save_model`) in eval mode, its config and its threshold.

    The network is rebuilt with random init (nothing is read or fetched) before its weights are loaded.
    """
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
        cfg = from_dict(SegConfig, ckpt["config"])
        model = build_segmenter(replace(cfg, weights="random"), in_channels=ckpt["in_channels"],
                                num_classes=ckpt["num_classes"])
        if cfg.weights != "random":  # built as it was trained: its frozen stages (FrozenBatchNorm) too
            freeze_stages(model, cfg.freeze_stages)
        model.load_state_dict(ckpt["state_dict"])
        threshold = float(ckpt["threshold"])
    except Exception as exc:  # truncated, foreign, from another dstray version, not a torch file ...
        raise ValueError(f"{path}: corrupt or not a dstray segmenter checkpoint ({type(exc).__name__}); give the "
                         "model.pt written by `dstray train-seg` (or re-train it with this version)") from exc
    return model.to(resolve_device(device)).eval(), cfg, threshold


def image_rule(path: str | Path) -> dict:
    """The image decision stored with a ``model.pt``: ``{"score", "threshold"}`` (None when it has none)."""
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    rule = json.loads(ckpt.get("image_rule", "{}"))
    return {"score": rule.get("score"), "threshold": rule.get("threshold")}


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


# --------------------------------------------------------------------------- the loop
def history_row(step: int, train_log: dict, result: dict, eval_seconds: float, best: dict,
                num_workers: int = 1) -> dict:
    """The history entry of one evaluation (:data:`HISTORY_FIELDS`), the same for every kind of run."""
    pixel, image = result["pixel"], result["image"]
    return {"step": step, "loss": train_log["loss"], "f1": pixel["f1"], "precision": pixel["precision"],
            "recall": pixel["recall"], "iou": pixel["iou"], "macro_f1": (result.get("macro") or {}).get("f1"),
            "threshold": result["threshold"], "detection_rate": image["detection_rate"],
            "false_alarm_rate": image["false_alarm_rate"], "auroc": image.get("auroc"), "best_f1": best["f1"],
            "best_step": best["step"], "seconds": train_log["seconds"], "eval_seconds": eval_seconds,
            "images_per_s": train_log["images_per_s"] * num_workers, "num_workers": num_workers}


def train_loop(trainer: SegTrainer, *, steps: int, eval_every: int, evaluator: Callable[[], dict] | None,
               on_eval: Callable[[dict, dict | None], None], on_step: Callable[[dict], None] | None = None,
               num_workers: int = 1) -> None:
    """The one segmentation training loop: ``eval_every`` steps, evaluate, select, report; until ``steps``.

    After each stretch of ``min(eval_every, steps left)`` steps, ``evaluator()`` (the result of
    :func:`dstray.seg.evaluate.evaluate` on ``eval_split``) goes to :meth:`SegTrainer.select`, and the
    :func:`history_row` to ``on_eval(row, result)``. ``evaluator=None`` (Ray Train ranks > 0) hands
    ``({"step", "loss"}, None)``. ``on_step(log)`` sees every optimiser step. A resumed trainer
    continues from its step; one that already has ``steps`` does nothing.
    """
    while trainer.steps < steps:
        train_log = run_steps(trainer, min(eval_every, steps - trainer.steps), on_step)
        if evaluator is None:
            on_eval({"step": trainer.steps, "loss": train_log["loss"]}, None)
            continue
        start = time.perf_counter()
        result = evaluator()
        trainer.select(result)
        on_eval(history_row(trainer.steps, train_log, result, time.perf_counter() - start, trainer.best,
                            num_workers), result)


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


def save_checkpoint(folder: str | Path, trainer: SegTrainer, history: list[dict]) -> None:
    """A run's checkpoint folder: ``state.pt`` (resume), ``model.pt`` (the selected model) and ``history.jsonl``."""
    folder = Path(folder)
    trainer.save_state(folder / STATE)
    if trainer.best_state is not None:
        trainer.save_model(folder / CHECKPOINT)
    write_history(folder / HISTORY, history)


def load_checkpoint(folder: str | Path, trainer: SegTrainer, *, check: bool = False) -> list[dict]:
    """Restore ``trainer`` (and its selected model) from a :func:`save_checkpoint` folder; returns the history so far.

    ``check``: refuse (:func:`dstray.config.check_resumable`) a checkpoint trained with another config.
    """
    path = Path(folder) / STATE
    state = torch.load(path, map_location="cpu", weights_only=True)
    if check:
        check_resumable(state["config"], trainer.cfg, path)
    model = Path(folder) / CHECKPOINT
    best = torch.load(model, map_location="cpu", weights_only=True)["state_dict"] if model.exists() else None
    trainer.load_state_dict(state, best)
    return [r for r in read_history(Path(folder) / HISTORY) if r["step"] <= trainer.steps]


def finish(folder: str | Path, device: str | torch.device = "cpu") -> dict:
    """Score the selected model of a run folder at its threshold: ``val/eval.*`` and, once, ``test/eval.*``.

    Reads ``folder/model.pt``; evaluates on its config's ``eval_split`` (the scores it was selected
    with) and ``test_split`` (none: skipped). Returns ``{"val": result, "test": result or None}``
    (results without their example images).
    """
    folder = Path(folder)
    model, cfg, threshold = load_segmenter(folder / CHECKPOINT, device)
    rule = image_rule(folder / CHECKPOINT)
    device = next(model.parameters()).device
    dataset = load_dataset(cfg.data)
    out = {}
    for key, split in (("val", cfg.eval_split), ("test", cfg.test_split)):
        if not split:
            out[key] = None
            continue
        result = evaluate(model, dataset.split(split), threshold=threshold, device=device,
                          image_score=rule["score"], image_threshold=rule["threshold"])
        result["split"] = split
        write_eval(result, folder / key)
        out[key] = {k: v for k, v in result.items() if k != "examples"}
    return out


# --------------------------------------------------------------------------- in-process runs
def train_local(cfg: SegConfig, out_dir: str | Path, on_report: Callable[[dict], None] | None = None) -> dict:
    """Train ``cfg.steps`` steps in this process, evaluating on ``val`` and checkpointing every ``cfg.eval_every``.

    The local adapter of :func:`train_loop`. Resumes from ``out_dir/state.pt`` if it exists (same
    config but for ``SegConfig.RESUME_FREE``). Writes ``model.pt`` (the selected model),
    ``state.pt``, ``history.jsonl`` and, at the end (:func:`finish`), ``val/eval.*`` and
    ``test/eval.*``. Returns ``{"checkpoint", "steps", "history" (this call's rows), "val", "test"}``.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    cfg = check_inputs(cfg)
    trainer = SegTrainer(cfg, SegSource.from_config(cfg), cfg.device)
    history = load_checkpoint(out, trainer, check=True) if (out / STATE).exists() else []
    samples = eval_samples(cfg)
    rows = []

    def on_eval(row: dict, result: dict) -> None:
        history.append(row)
        save_checkpoint(out, trainer, history)
        rows.append(row)
        if on_report is not None:
            on_report(row)

    train_loop(trainer, steps=cfg.steps, eval_every=cfg.eval_every,
               evaluator=lambda: evaluate(trainer.eval_model, samples, threshold=cfg.threshold, device=trainer.device),
               on_eval=on_eval)
    final = finish(out, trainer.device)
    return {"checkpoint": str(out / CHECKPOINT), "steps": trainer.steps, "history": rows, **final}


def evaluate_checkpoint(model: str | Path, *, out: str | Path, data: str | None = None, split: str | None = None,
                        device: str = "auto", threshold: float | None = None) -> tuple[dict, dict]:
    """Load a ``model.pt``, evaluate it on a real split at its threshold, write ``out/eval.{json,csv,png}``.

    ``data`` defaults to the model's dataset, ``split`` to its ``test_split`` (else ``test``),
    ``threshold`` to the one stored with it (chosen on its ``eval_split``). Returns ``(result, paths)``.
    """
    if not Path(model).is_file():
        raise FileNotFoundError(f"no checkpoint at {model}; give the model.pt written by `dstray train-seg`")
    net, cfg, stored = load_segmenter(model, device)
    dataset = load_dataset(data if data is not None else cfg.data)
    split = split or cfg.test_split or "test"
    known = sorted({s.split for s in dataset.samples})
    if split not in known:
        raise ValueError(f"{dataset.root}: no split {split!r}; choose --split among {known}")
    if split == cfg.eval_split and threshold is None:
        source = f"stored with the model, chosen on this split ({split})"
    else:
        source = "given" if threshold is not None else f"stored with the model (chosen on {cfg.eval_split})"
    rule = image_rule(model)
    result = evaluate(net, dataset.split(split), threshold=stored if threshold is None else threshold,
                      device=next(net.parameters()).device, image_score=rule["score"],
                      image_threshold=rule["threshold"])
    result.update(split=split, threshold_source=source)
    return result, write_eval(result, out)

