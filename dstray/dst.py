"""Defect Style Transfer: fit one TransferNet per defect type, then stylize (paper §3.1, Alg. 2).

Algorithm 2, per background S and area L (pure torch, no Ray):

1. y' = S[L'] + histmatch(S[L], H[M])  -- masked histogram matching (:mod:`dstray.histmatch`);
2. ŷ = S[L'] + TransferNet(y')[L]      -- with Gaussian-mask fusion (:mod:`dstray.nets.transfer_net`);
3. losses φ(ŷ[L], y'[L], S[L], H[M])   -- eq. 3-6 (:mod:`dstray.losses`), Adam step (paper §4: lr 1e-3).

Two ways to present a background to the network:

- patch mode (``DSTConfig.patch_size``, the default): a square window containing L,
  at native resolution (:func:`dstray.areas.crop_window`). Cheap, and the network sees
  the same scale at fit and at generation. Fitting always uses ``patch_size`` windows:
  an L too large for one (Magnetic Tile's uneven and fray areas span most of a tile) is
  seen through a window centred on a random pixel of L, which keeps a step's cost and
  memory those of a small defect (uneven with whole-L windows: ~370 px windows, 6.9 GB
  peak RSS and 33 s a step on one CPU thread). A window clipped by a smaller image is
  completed by replicate padding (S) / zeros (L). Stylizing grows the window to hold
  all of L (the network is fully convolutional).
- whole mode (``patch_size=None``, the paper's): the whole background, resized to
  ``whole_size`` x ``whole_size`` so a batch stacks; L is sampled on the resized image,
  so L's shape is not distorted (the background's aspect ratio is). At generation the
  network is fully convolutional and runs on the native size.

Also here: the copy-paste baseline (:func:`copy_paste`) and the paper's Figure 3 row
(:func:`render_figure3_row`).
"""

from __future__ import annotations

import csv
import hashlib
import io
import logging
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from dstray import __version__
from dstray.areas import AreaSampler, bbox, crop_window, paste_window
from dstray.config import DSTConfig, from_dict, resolve_device, to_dict
from dstray.data import DefectDataset, read_image, read_mask, to_channels
from dstray.histmatch import SortedReference, histmatch, sort_reference
from dstray.losses import DSTLoss
from dstray.nets.transfer_net import TransferNet, gaussian_blend

log = logging.getLogger("dstray")

TERMS = ("content", "style", "hist", "tv", "total")


def _window(image: Tensor, win: tuple[int, int, int, int], shape: tuple[int, int] | None = None,
            pad_mode: str = "replicate") -> Tensor:
    """image (C,H,W) cropped to win=(top, left, h, w), padded bottom/right to ``shape`` if smaller."""
    top, left, h, w = win
    out = image[:, top:top + h, left:left + w]
    if shape is not None and (h, w) != tuple(shape):
        pad = (0, shape[1] - w, 0, shape[0] - h)
        out = F.pad(out, pad) if pad_mode == "zeros" else F.pad(out[None], pad, mode=pad_mode)[0]
    return out


# --------------------------------------------------------------------------- fitting
class DSTFitter:
    """Fits the TransferNet of one defect type; resumable (:meth:`state_dict` / :meth:`load_state_dict`).

    Args:
        cfg: the fit settings (defect type, reference, steps, batch, patch/whole, loss weights).
        dataset: provides the reference H, M (``cfg.reference_id`` or the type's first
            reference) and the backgrounds S (split "background").
    Backgrounds are visited in a seeded order (a new permutation each pass); L is sampled
    with :class:`dstray.areas.AreaSampler` from the type's reference masks with a
    ``torch.Generator`` seeded by ``cfg.seed``. Decoded backgrounds are cached as uint8
    (1 byte a pixel: 600 MT backgrounds take ~60 MB).
    """

    def __init__(self, cfg: DSTConfig, dataset: DefectDataset):
        self.cfg = cfg
        self.device = resolve_device(cfg.device)
        refs = dataset.references(cfg.defect_type)
        ref = dataset.get(cfg.reference_id) if cfg.reference_id else refs[0]
        if ref.defect_type != cfg.defect_type or ref.mask is None:
            raise ValueError(f"reference {ref.id!r} is a {ref.defect_type!r} sample with mask {ref.mask}; "
                             f"pick a reference of type {cfg.defect_type!r} with a mask")
        self.reference_id = ref.id
        self.reference_image = read_image(ref.image)  # H (C,H,W)
        self.reference_mask = read_mask(ref.mask, like=self.reference_image)  # M (1,H,W)
        self.in_channels = self.reference_image.shape[0]
        self.backgrounds = dataset.backgrounds()
        if not self.backgrounds:
            raise ValueError(f"dataset {dataset.root} has no background (defect-free) images to fit on")
        area_masks = [read_mask(r.mask) for r in refs if r.mask is not None]
        self.sampler = AreaSampler(area_masks, cfg.area)
        self._cache: dict[int, Tensor] = {}

        with torch.random.fork_rng(devices=[]):  # seeded init without touching the caller's RNG
            torch.manual_seed(cfg.seed)
            self.net = TransferNet(self.in_channels, cfg.blend_sigma)
            self.loss = DSTLoss(cfg)
        self.net.to(self.device)
        self.loss.to(self.device)
        h, m = self.reference_image[None].to(self.device), self.reference_mask[None].to(self.device)
        self.loss.set_reference(h, m)
        self.ref_sorted: SortedReference = sort_reference(h, m)
        self.optimizer = torch.optim.Adam(self.net.parameters(), lr=cfg.lr)
        self.generator = torch.Generator().manual_seed(cfg.seed)
        self.step_count = 0
        self.draws = 0  # backgrounds drawn so far (position in the seeded visiting order)
        self.history: list[dict[str, float]] = []
        self._perm: tuple[int, Tensor] | None = None

    # ---- data
    def _background(self, index: int) -> Tensor:
        if index not in self._cache:
            img = to_channels(read_image(self.backgrounds[index].image), self.in_channels)
            self._cache[index] = img.mul(255).round().to(torch.uint8)  # lossless for 8-bit files
        return self._cache[index].float() / 255

    def _next_index(self) -> int:
        n = len(self.backgrounds)
        epoch, pos = divmod(self.draws, n)
        if self._perm is None or self._perm[0] != epoch:
            g = torch.Generator().manual_seed(self.cfg.seed * 1_000_003 + epoch)
            self._perm = (epoch, torch.randperm(n, generator=g))
        self.draws += 1
        return int(self._perm[1][pos])

    def _draw(self) -> tuple[Tensor, Tensor]:
        """One (S, L) pair; whole mode resizes S first. Backgrounds too small for L are skipped."""
        for _ in range(len(self.backgrounds)):
            s = self._background(self._next_index())
            if self.cfg.patch_size is None:
                size = self.cfg.whole_size
                s = F.interpolate(s[None], size=(size, size), mode="bilinear", antialias=True,
                                  align_corners=False)[0].clamp(0, 1)
            try:
                return s, self.sampler.sample(s.shape[1], s.shape[2], self.generator)
            except ValueError:
                continue
        raise ValueError(f"no background can take an area of type {self.cfg.defect_type!r} (all too small)")

    def _fit_window(self, area: Tensor) -> tuple[int, int, int, int]:
        """The training window (top, left, h, w) for L: ``crop_window`` when L fits in ``patch_size``,
        else a ``patch_size`` window centred on a random pixel of L (part of L, native scale)."""
        size = self.cfg.patch_size
        win = crop_window(area, size)
        if max(win[2:]) <= size:
            return win
        ys, xs = torch.nonzero(area[0] > 0.5, as_tuple=True)
        k = int(torch.randint(len(ys), (), generator=self.generator))
        height, width = area.shape[-2:]
        h, w = min(size, height), min(size, width)
        top = min(max(int(ys[k]) - h // 2, 0), height - h)
        left = min(max(int(xs[k]) - w // 2, 0), width - w)
        return top, left, h, w

    def batch(self) -> tuple[Tensor, Tensor]:
        """The next batch: S (B,C,h,w), L (B,1,h,w) on the fit device, h = w = patch_size (or whole_size)."""
        pairs = [self._draw() for _ in range(self.cfg.batch_size)]
        if self.cfg.patch_size is None:
            s, a = zip(*pairs)
        else:
            shape = (self.cfg.patch_size, self.cfg.patch_size)
            wins = [self._fit_window(a) for _, a in pairs]
            s = [_window(s, w, shape) for (s, _), w in zip(pairs, wins)]
            a = [_window(a, w, shape, pad_mode="zeros") for (_, a), w in zip(pairs, wins)]
        return torch.stack(s).to(self.device), torch.stack(a).to(self.device)

    # ---- optimisation
    def step(self) -> dict[str, float]:
        """One Adam step on a fresh batch; returns the weighted loss terms and "total"."""
        self.net.train()
        s, area = self.batch()
        y_match = histmatch(s, area, self.ref_sorted)  # first step of Alg. 2
        out = self.net(y_match, s, area)  # second step
        terms = self.loss(out, y_match, s, area)
        self.optimizer.zero_grad(set_to_none=True)
        terms["total"].backward()
        self.optimizer.step()
        self.step_count += 1
        record = {k: float(v.detach()) for k, v in terms.items()}
        self.history.append({"step": self.step_count, **record})
        return record

    def state_dict(self) -> dict:
        """Everything to resume exactly: net, optimiser, step, draws, area RNG, loss history."""
        return {
            "net": self.net.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "step": self.step_count,
            "draws": self.draws,
            "generator": self.generator.get_state(),
            "history": [dict(h) for h in self.history],
        }

    def load_state_dict(self, state: dict) -> None:
        self.net.load_state_dict(state["net"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.step_count = int(state["step"])
        self.draws = int(state["draws"])
        self.generator.set_state(state["generator"].cpu())
        self.history = [dict(h) for h in state["history"]]

    def checkpoint(self) -> dict:
        """The model checkpoint (see :meth:`save`), plain tensors/containers only."""
        return {
            "state_dict": {k: v.detach().cpu() for k, v in self.net.state_dict().items()},
            "config": to_dict(self.cfg),
            "reference": {"id": self.reference_id, "image": self.reference_image.clone(),
                          "mask": self.reference_mask.clone()},
            "defect_type": self.cfg.defect_type,
            "steps": self.step_count,
            "in_channels": self.in_channels,
            "dstray_version": __version__,
            "losses": [dict(h) for h in self.history],
        }

    def save(self, path: str | Path) -> Path:
        """Write the model checkpoint, loadable with ``torch.load(path, weights_only=True)``.

        Keys: state_dict, config (plain dict), reference {id, image (C,H,W), mask (1,H,W)},
        defect_type, steps, in_channels, dstray_version, losses (history). Written to a
        temporary file first, then renamed.
        """
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        torch.save(self.checkpoint(), tmp)
        os.replace(tmp, path)
        return path


def write_losses_csv(history: list[dict[str, float]], path: str | Path) -> Path:
    """One row per step: step, content, style, hist, tv, total."""
    path = Path(path)
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["step", *TERMS])
        w.writeheader()
        w.writerows(history)
    return path


def fit_dst(cfg: DSTConfig, dataset: DefectDataset, out_dir: str | Path,
            on_log: Callable[[int, dict[str, float]], None] | None = None) -> Path:
    """Fit ``cfg.steps`` steps; write ``out_dir/model.pt`` and ``out_dir/losses.csv``; return the model path.

    Every ``cfg.log_every`` steps the loss terms go to ``on_log(step, terms)`` (or the
    "dstray" logger); every ``cfg.checkpoint_every`` steps the files are (re)written.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    fitter = DSTFitter(cfg, dataset)
    while fitter.step_count < cfg.steps:
        terms = fitter.step()
        step = fitter.step_count
        if step % cfg.log_every == 0 or step == cfg.steps:
            if on_log is not None:
                on_log(step, terms)
            else:
                log.info("dst %s step %d/%d %s", cfg.defect_type, step, cfg.steps,
                         " ".join(f"{k}={v:.4g}" for k, v in terms.items()))
        if step % cfg.checkpoint_every == 0 and step < cfg.steps:
            fitter.save(out / "model.pt")
            write_losses_csv(fitter.history, out / "losses.csv")
    write_losses_csv(fitter.history, out / "losses.csv")
    return fitter.save(out / "model.pt")


# --------------------------------------------------------------------------- inference
@dataclass
class DSTModel:
    """A fitted DST model, ready to stylize (from :func:`load_dst`)."""

    net: TransferNet
    reference_image: Tensor  # H (C,H,W) in [0,1], on the model's device
    reference_mask: Tensor  # M (1,H,W) {0,1}
    reference_id: str
    config: DSTConfig
    defect_type: str
    digest: str  # sha256 of the checkpoint file, first 16 hex digits
    steps: int = 0
    ref_sorted: SortedReference | None = field(default=None, repr=False)

    @property
    def reference(self) -> tuple[Tensor, Tensor]:
        return self.reference_image, self.reference_mask

    @property
    def device(self) -> torch.device:
        return self.reference_image.device

    def sorted_reference(self) -> SortedReference:
        if self.ref_sorted is None:
            self.ref_sorted = sort_reference(self.reference_image[None], self.reference_mask[None])
        return self.ref_sorted


def load_dst(path: str | Path | BinaryIO, device: str | torch.device = "cpu") -> DSTModel:
    """Load a checkpoint written by :meth:`DSTFitter.save` (a path or a binary file object)."""
    if isinstance(path, (str, Path)):
        data = Path(path).read_bytes()
    else:
        data = path.read()
    ckpt = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    cfg = from_dict(DSTConfig, ckpt["config"])
    device = resolve_device(str(device))
    net = TransferNet(int(ckpt["in_channels"]), cfg.blend_sigma)
    net.load_state_dict(ckpt["state_dict"])
    net.to(device).eval().requires_grad_(False)
    ref = ckpt["reference"]
    return DSTModel(net=net, reference_image=ref["image"].to(device), reference_mask=ref["mask"].to(device),
                    reference_id=ref["id"], config=cfg, defect_type=ckpt["defect_type"],
                    digest=hashlib.sha256(data).hexdigest()[:16], steps=int(ckpt["steps"]))


def _check_inputs(model: DSTModel, background: Tensor, area: Tensor) -> tuple[Tensor, Tensor]:
    c = model.reference_image.shape[0]
    if background.dim() != 3 or background.shape[0] != c:
        raise ValueError(f"background must be (C,H,W) with C={c} (the model's channels); got {tuple(background.shape)}")
    if area.shape != (1, *background.shape[1:]):
        raise ValueError(f"area must be (1,H,W) = (1, {background.shape[1]}, {background.shape[2]}); "
                         f"got {tuple(area.shape)}")
    return background.to(model.device, torch.float32), area.to(model.device, torch.float32)


@torch.no_grad()
def stylize(model: DSTModel, background: Tensor, area: Tensor, *, mode: str = "patch",
            patch_size: int = 96) -> dict[str, Tensor]:
    """Generate the model's defect in ``area`` of ``background`` (Alg. 2 at inference).

    Args:
        background: S (C,H,W) in [0,1]; area: L (1,H,W) 0/1.
        mode: ``"whole"`` runs the network on the whole image (the paper); ``"patch"`` on a
            square window of ``patch_size`` (grown to fit L) around L, pasted back.
    Returns:
        {"image": ŷ (C,H,W), "histmatch": y' (C,H,W)}, on the model's device. Outside L
        both are bit-identical to S.
    """
    s, a = _check_inputs(model, background, area)
    return {k: v[0] for k, v in _stylize_batch(model, s[None], a[None], mode, patch_size).items()}


@torch.no_grad()
def stylize_batch(model: DSTModel, backgrounds: Sequence[Tensor] | Tensor, areas: Sequence[Tensor] | Tensor, *,
                  mode: str = "patch", patch_size: int = 96) -> dict[str, list[Tensor]]:
    """:func:`stylize` for several backgrounds, batching network calls.

    Whole mode batches images of equal size. Patch mode takes each image's own window
    (:func:`dstray.areas.crop_window`, as :func:`stylize` does) and batches windows of equal
    shape, so image i equals ``stylize(...)`` of that image alone whatever the batch holds
    (InstanceNorm is per sample). Returns {"image": [...], "histmatch": [...]}, (C,H,W) each.
    """
    if mode not in ("patch", "whole"):
        raise ValueError(f"mode must be 'patch' or 'whole', got {mode!r}")
    pairs = [_check_inputs(model, s, a) for s, a in zip(backgrounds, areas)]
    if not pairs:
        return {"image": [], "histmatch": []}
    wins = [crop_window(a, patch_size) for _, a in pairs] if mode == "patch" else [None] * len(pairs)
    keys = [tuple(s.shape) if mode == "whole" else w[2:] for (s, _), w in zip(pairs, wins)]
    images: list = [None] * len(pairs)
    matched: list = [None] * len(pairs)
    for key in dict.fromkeys(keys):
        idx = [i for i, k in enumerate(keys) if k == key]
        if mode == "whole":
            out = _run(model, torch.stack([pairs[i][0] for i in idx]), torch.stack([pairs[i][1] for i in idx]))
        else:
            out = _run_windows(model, [pairs[i][0] for i in idx], [pairs[i][1] for i in idx], [wins[i] for i in idx])
        for j, i in enumerate(idx):
            images[i], matched[i] = out["image"][j], out["histmatch"][j]
    return {"image": images, "histmatch": matched}


def _stylize_batch(model: DSTModel, s: Tensor, a: Tensor, mode: str, patch_size: int) -> dict[str, Tensor]:
    """s (N,C,H,W), a (N,1,H,W) -> {"image", "histmatch"} (N,C,H,W); patch mode: one window per image."""
    if mode not in ("patch", "whole"):
        raise ValueError(f"mode must be 'patch' or 'whole', got {mode!r}")
    if mode == "whole":
        return _run(model, s, a)
    outs = [_run_windows(model, [si], [ai], [crop_window(ai, patch_size)]) for si, ai in zip(s, a)]
    return {k: torch.stack([o[k][0] for o in outs]) for k in ("image", "histmatch")}


def _run(model: DSTModel, s: Tensor, a: Tensor) -> dict[str, Tensor]:
    """Alg. 2 on whole images s (N,C,H,W), a (N,1,H,W)."""
    y_match = histmatch(s, a, model.sorted_reference())
    return {"image": model.net(y_match, s, a), "histmatch": y_match}


def _run_windows(model: DSTModel, s: list[Tensor], a: list[Tensor],
                 wins: list[tuple[int, int, int, int]]) -> dict[str, list[Tensor]]:
    """Alg. 2 on windows of one shape, pasted back into each background (C,H,W).

    A window contains all of L, so matching the window equals matching the whole image.
    """
    sw = torch.stack([_window(si, w) for si, w in zip(s, wins)])
    aw = torch.stack([_window(ai, w) for ai, w in zip(a, wins)])
    out = _run(model, sw, aw)
    return {k: [paste_window(si, v[j], w) for j, (si, w) in enumerate(zip(s, wins))] for k, v in out.items()}


# --------------------------------------------------------------------------- baseline, figure, CLI helper
def copy_paste(background: Tensor, area: Tensor, reference: Tensor, reference_mask: Tensor,
               generator: torch.Generator | None = None, sigma: float = 2.0) -> Tensor:
    """The traditional copy-paste baseline: the reference defect pasted into L, Gaussian-blended.

    The bounding-box crop of H around M is resized (bilinear) to L's bounding box and
    fused into S inside L with the same Gaussian mask as DST (:func:`gaussian_blend`,
    std ``sigma`` px). L is usually a rotated/scaled/flipped copy of M whose transform
    is not known here, so the crop is not warped like L: L only selects which pasted
    pixels are kept. ``generator`` (optional) draws a random flip of the crop, so the
    pasted texture varies between samples. Returns (C,H,W); outside L bit-identical to S.
    """
    if background.dim() != 3 or area.shape != (1, *background.shape[1:]):
        raise ValueError(f"background must be (C,H,W) and area (1,H,W); "
                         f"got {tuple(background.shape)}, {tuple(area.shape)}")
    if not bool((area > 0.5).any()):
        return background.clone()
    r0, c0, r1, c1 = bbox(reference_mask > 0.5)  # ValueError for an empty reference mask
    crop = to_channels(reference, background.shape[0])[:, r0:r1, c0:c1]
    if generator is not None:
        flips = torch.randint(0, 2, (2,), generator=generator).tolist()
        crop = crop.flip([d + 1 for d, f in enumerate(flips) if f]) if any(flips) else crop
    y0, x0, y1, x1 = bbox(area > 0.5)
    patch = F.interpolate(crop[None].to(background), size=(y1 - y0, x1 - x0), mode="bilinear",
                          align_corners=False, antialias=True)[0].clamp(0, 1)
    pasted = background.clone()
    pasted[:, y0:y1, x0:x1] = patch
    return gaussian_blend(pasted[None], background[None], area[None].to(background), sigma)[0]


def _rgb(image: Tensor) -> np.ndarray:
    """(C,H,W) in [0,1] -> (H,W,3) float64 for skimage."""
    a = image.detach().float().cpu().clamp(0, 1)
    return (a.expand(3, -1, -1) if a.shape[0] == 1 else a).permute(1, 2, 0).numpy().astype(np.float64)


def render_figure3_row(reference: Tensor, ref_mask: Tensor, background: Tensor, area: Tensor,
                       histmatched: Tensor, output: Tensor, path: str | Path | None = None,
                       gap: int = 4) -> np.ndarray:
    """One row of the paper's Figure 3: reference H (M outlined), S (L outlined), histmatch y', DST ŷ.

    Args: images (C,H,W) in [0,1], masks (1,H,W). The reference panel is resized to the
    background's height. Returns the row as (H, W, 3) uint8 (white gaps of ``gap`` px);
    written as PNG to ``path`` when given.
    """
    from skimage.segmentation import mark_boundaries
    from skimage.transform import resize

    h = background.shape[-2]
    ref = mark_boundaries(_rgb(reference), (ref_mask[0] > 0.5).cpu().numpy().astype(int), color=(1, 0, 0))
    ref = resize(ref, (h, max(1, round(ref.shape[1] * h / ref.shape[0]))), order=1, anti_aliasing=True)
    bg = mark_boundaries(_rgb(background), (area[0] > 0.5).cpu().numpy().astype(int), color=(0, 1, 0))
    panels = [ref, bg, _rgb(histmatched), _rgb(output)]
    white = np.ones((h, gap, 3))
    row = np.concatenate([p for panel in panels for p in (panel, white)][:-1], axis=1)
    row = (row.clip(0, 1) * 255).round().astype(np.uint8)
    if path is not None:
        from PIL import Image

        Image.fromarray(row).save(path)
    return row


def stylize_file(model_path: str | Path, image: str | Path, out_dir: str | Path, *, mask: str | Path | None = None,
                 seed: int = 0, mode: str = "whole", patch_size: int = 96, device: str = "auto") -> list[Path]:
    """``dstray stylize``: one defect on one background file.

    L is read from ``mask`` or sampled (seeded) from the model's reference mask. Writes
    ``stylized.png`` (ŷ), ``histmatch.png`` (y'), ``mask.png`` (L) and ``figure3.png``
    (:func:`render_figure3_row`) to ``out_dir``; returns their paths.
    """
    from dstray.data import encode_png

    model = load_dst(model_path, device=device)
    background = to_channels(read_image(image), model.reference_image.shape[0])
    if mask is not None:
        area = read_mask(mask, like=background)
    else:
        sampler = AreaSampler([model.reference_mask.cpu()], model.config.area)
        area = sampler.sample(background.shape[1], background.shape[2], torch.Generator().manual_seed(seed))
    out = stylize(model, background, area, mode=mode, patch_size=patch_size)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for name, t in (("stylized", out["image"]), ("histmatch", out["histmatch"]), ("mask", area)):
        p = out_dir / f"{name}.png"
        p.write_bytes(encode_png(t.cpu()))
        written.append(p)
    fig = out_dir / "figure3.png"
    render_figure3_row(model.reference_image, model.reference_mask, background, area, out["histmatch"],
                       out["image"], path=fig)
    return written + [fig]
