"""Train and evaluate one segmenter (Buttonlab or a baseline), pure torch; paper §3.2 and §4.

- Training (Algorithm 3): Adam (lr 2e-3, paper §4), batches from a :class:`SegSource`.
  Buttonlab uses the partial-image input strategy (Figure 5): per batch one random
  ``crop_size`` window (even coordinates, see :mod:`dstray.nets.buttonlab`) is drawn;
  the backbone sees the whole image, the branch the window, and the masked
  cross-entropy (eq. 7) is taken inside the window only. Baselines see the whole image
  with the same loss over all pixels. In both cases padding pixels of the letterbox
  carry no loss, and defect pixels weigh ``cfg.defect_weight``.
- Evaluation: the whole letterboxed test image goes to both Buttonlab paths. Counts are
  taken **at letterboxed resolution over the valid (non-padded) pixels**, summed over
  the whole split (eq. 8, :mod:`dstray.metrics`).
- :func:`run_steps` is the reusable loop body (the Ray Train wrapper calls it too);
  :func:`train_seg_local` is the single-process driver.
"""

from __future__ import annotations

import csv
import json
import os
import time
from collections import defaultdict
from dataclasses import replace
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch.nn import functional as F

from dstray.config import SegConfig, from_dict, resolve_device, to_dict
from dstray.data import FREE, Sample, load_dataset
from dstray.metrics import SegCounts
from dstray.nets.baselines import build_segmenter
from dstray.segdata import SegSource, prepare_sample

NUM_CLASSES = 2  # background, defect
FIGURE_IMAGES = 8  # images drawn in the Figure-7-style prediction PNG


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
    and what :func:`load_segmenter` needs to rebuild the network.
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

    def state_dict(self) -> dict:
        return {"state_dict": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
                "steps": self.steps, "generator": self.generator.get_state()}

    def load_state_dict(self, state: dict) -> None:
        self.model.load_state_dict(state["state_dict"])
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


# --------------------------------------------------------------------------- evaluation
@torch.no_grad()
def evaluate(model: torch.nn.Module, samples: list[Sample], cfg: SegConfig, device: str | torch.device = "cpu",
             *, figure_images: int = FIGURE_IMAGES) -> dict:
    """Pixel-, type- and image-level scores of ``model`` on real ``samples`` (a whole split).

    Returns ``{"pixel": {tp, fp, fn, tn, precision, recall, f1, iou}, "per_type": {type: {..., "images"}},
    "image": {...}, "n_images", "resolution", "threshold", "examples": [...]}``. Pixel counts are summed
    over the split (eq. 8); per-type counts over the images of each defect type (defect-free images have
    no pixel row: they count as false alarms at image level). ``examples`` (for :func:`write_eval`) holds
    up to ``figure_images`` images, one type after another, as uint8/bool numpy arrays cropped to the image.
    """
    device = resolve_device(device)
    was_training = model.training
    model.eval()
    channels = getattr(model, "in_channels", 3)
    total, per_type = SegCounts(), defaultdict(SegCounts)
    type_images = defaultdict(int)
    image = {"defect_images": 0, "detected": 0, "free_images": 0, "false_alarms": 0}
    chosen = set(_figure_choice(samples, figure_images))
    examples = []
    for start in range(0, len(samples), cfg.batch_size):
        chunk = samples[start:start + cfg.batch_size]
        items = [prepare_sample(s, cfg.image_size, channels) for s in chunk]
        x = torch.stack([it["image"] for it in items]).to(device)
        prob = model(x)["out"].softmax(1)[:, 1:2].cpu()
        for s, it, p in zip(chunk, items, prob):
            pred = (p >= cfg.threshold) & (it["valid"] > 0)
            label = it["mask"] > 0.5
            counts = SegCounts.from_masks(pred, label, it["valid"] > 0)
            total.add(counts)
            has_defect, any_pred = bool(label.any()), bool(pred.any())
            if has_defect:
                per_type[s.defect_type].add(counts)
                type_images[s.defect_type] += 1
                image["defect_images"] += 1
                image["detected"] += any_pred
            else:
                image["free_images"] += 1
                image["false_alarms"] += any_pred
            if s.id in chosen:
                examples.append(_example(s, it, pred, counts))
    model.train(was_training)
    image["detection_rate"] = image["detected"] / image["defect_images"] if image["defect_images"] else float("nan")
    image["false_alarm_rate"] = image["false_alarms"] / image["free_images"] if image["free_images"] else float("nan")
    return {"pixel": total.scores(),
            "per_type": {t: {**c.scores(), "images": type_images[t]} for t, c in sorted(per_type.items())},
            "image": image, "n_images": len(samples), "threshold": cfg.threshold,
            "resolution": f"letterboxed {cfg.image_size}x{cfg.image_size}, valid (non-padded) pixels only",
            "examples": examples}


def _figure_choice(samples: list[Sample], k: int) -> list[str]:
    """Ids of up to k samples taken round-robin over defect types (defect-free last)."""
    by_type = defaultdict(list)
    for s in samples:
        by_type[s.defect_type].append(s.id)
    queues = [by_type[t] for t in sorted(by_type, key=lambda t: (t == FREE, t))]
    out = []
    while len(out) < k and any(queues):
        for q in queues:
            if q and len(out) < k:
                out.append(q.pop(0))
    return out


def _example(sample: Sample, item: dict, pred: torch.Tensor, counts: SegCounts) -> dict:
    box = item["box"]
    cut = (slice(box.top, box.top + box.inner_h), slice(box.left, box.left + box.inner_w))
    gray = item["image"].mean(0)[cut]
    return {"id": sample.id, "defect_type": sample.defect_type, "f1": counts.f1,
            "image": (gray * 255).round().byte().numpy(), "label": (item["mask"][0][cut] > 0.5).numpy(),
            "pred": pred[0][cut].numpy()}


def overlay(gray: np.ndarray, label: np.ndarray, pred: np.ndarray, alpha: float = 0.6) -> np.ndarray:
    """Paper Figure 7 colours over a grayscale image: red = label only, green = prediction only, yellow = both.

    gray (H,W) uint8, label/pred (H,W) bool -> (H,W,3) uint8.
    """
    rgb = np.repeat(gray[..., None].astype(np.float32), 3, axis=2)
    colours = {(1, 0): (255, 0, 0), (0, 1): (0, 255, 0), (1, 1): (255, 255, 0)}
    for (lab, prd), colour in colours.items():
        where = (label == bool(lab)) & (pred == bool(prd))
        rgb[where] = (1 - alpha) * rgb[where] + alpha * np.array(colour, np.float32)
    return rgb.round().astype(np.uint8)


def _strict_json(value):
    """NaN (an undefined rate, e.g. no defect-free image in the split) as null: strict JSON for any reader."""
    if isinstance(value, dict):
        return {k: _strict_json(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_strict_json(v) for v in value]
    if isinstance(value, float) and (value != value or value in (float("inf"), float("-inf"))):
        return None
    return value


def write_eval(result: dict, out_dir: str | Path, name: str = "eval") -> dict[str, Path]:
    """``{name}.json`` (everything but the images), ``{name}.csv`` (one row per pixel set), ``{name}.png``."""
    from matplotlib.figure import Figure  # no pyplot: no GUI backend needed

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"json": out / f"{name}.json", "csv": out / f"{name}.csv", "png": out / f"{name}.png"}
    plain = _strict_json({k: v for k, v in result.items() if k != "examples"})
    paths["json"].write_text(json.dumps(plain, indent=2, sort_keys=True, allow_nan=False) + "\n")
    rows = [{"set": "all", "images": result["n_images"], **result["pixel"]}]
    rows += [{"set": t, **r} for t, r in result["per_type"].items()]
    with paths["csv"].open("w", newline="") as f:
        writer = csv.DictWriter(f, ["set", "images", "tp", "fp", "fn", "tn", "precision", "recall", "f1", "iou"])
        writer.writeheader()
        writer.writerows(rows)
    examples = result.get("examples", [])
    cols = min(4, max(1, len(examples)))
    rows_n = max(1, -(-len(examples) // cols))
    fig = Figure(figsize=(3 * cols, 3 * rows_n))
    for i, ex in enumerate(examples):
        ax = fig.add_subplot(rows_n, cols, i + 1)
        ax.imshow(overlay(ex["image"], ex["label"], ex["pred"]))
        ax.set_title(f"{ex['defect_type']}  F1 {ex['f1']:.2f}", fontsize=9)
        ax.axis("off")
    fig.suptitle("red: label only, green: prediction only, yellow: both", fontsize=10)
    fig.savefig(paths["png"], dpi=100)
    return paths


# --------------------------------------------------------------------------- local driver
def train_seg_local(cfg: SegConfig, out_dir: str | Path, on_report: Callable[[dict], None] | None = None) -> dict:
    """Train ``cfg.steps`` steps in this process, evaluating and checkpointing every ``cfg.eval_every``.

    Resumes from ``out_dir/model.pt`` if it exists. Writes ``model.pt``, ``eval.{json,csv,png}`` (latest)
    and ``history.jsonl``; returns ``{"checkpoint", "steps", "history", "final"}``.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    ckpt_path, history_path = out / "model.pt", out / "history.jsonl"
    trainer = SegTrainer(cfg, SegSource.from_config(cfg), cfg.device)
    if ckpt_path.exists():
        state = torch.load(ckpt_path, map_location="cpu", weights_only=True)
        _check_resumable(state["config"], cfg, ckpt_path)
        trainer.load_state_dict(state)
    eval_samples = load_dataset(cfg.data).split(cfg.eval_split)
    history, result = [], None
    while trainer.steps < cfg.steps or result is None:
        train_log = run_steps(trainer, min(cfg.eval_every, cfg.steps - trainer.steps))
        start = time.perf_counter()
        result = evaluate(trainer.model, eval_samples, cfg, trainer.device)
        trainer.save(ckpt_path)
        write_eval(result, out)
        report = {**train_log, "eval_seconds": time.perf_counter() - start,
                  **{f"pixel_{k}": v for k, v in result["pixel"].items()},
                  "detection_rate": result["image"]["detection_rate"],
                  "false_alarm_rate": result["image"]["false_alarm_rate"]}
        history.append(report)
        with history_path.open("a") as f:
            f.write(json.dumps(report) + "\n")
        if on_report is not None:
            on_report(report)
    final = {k: v for k, v in result.items() if k != "examples"}
    return {"checkpoint": str(ckpt_path), "steps": trainer.steps, "history": history, "final": final}


_RESUME_FREE = ("steps", "eval_every", "device")  # fields that may change between a run and its resumption


def _check_resumable(saved: dict, cfg: SegConfig, path: Path) -> None:
    now = to_dict(cfg)
    changed = sorted(k for k in now if k not in _RESUME_FREE and saved.get(k) != now[k])
    if changed:
        raise ValueError(f"{path} was trained with a different config ({', '.join(changed)} differ); "
                         "use another output folder, or delete the checkpoint to start over")
