"""Stylize with a fitted DST model: Alg. 2 at inference, one image or a batch (paper §3.1).

:func:`load_dst` reads a checkpoint written by :class:`dstray.dst.fit.DSTFitter`;
:func:`stylize` / :func:`stylize_batch` run the first step (histogram matching, contrast-
preserving when the model was fitted so, :func:`dstray.dst.histmatch.match_area`) then TransferNet on the
whole image (the paper's mode) or on a window around L (patch mode, pasted back), so
pixels outside L are always exactly those of S. :func:`stylize_file` is ``dstray stylize``.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

import torch
from torch import Tensor

from dstray import storage
from dstray.config import PATCH_SIZE, DSTConfig, from_dict, resolve_device
from dstray.data import DataError, encode_png, read_checkpoint, read_image, read_mask, to_channels
from dstray.dst.areas import AreaSampler, area_for_seed, crop_window, cut_window, paste_window
from dstray.dst.figures import render_figure3_row
from dstray.dst.histmatch import SortedReference, match_area, ring_mean, sort_reference
from dstray.dst.transfer_net import TransferNet

CHECKPOINT_FORMAT = 2  # 2: residual TransferNet (identity at init), relative first step, loss normalisation


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
    area_masks: list[Tensor] = field(default_factory=list)  # every M of the type, (1,H,W) CPU; [] = [reference_mask]
    heldout_losses: dict = field(default_factory=dict)  # {"dst", "yprime"}: the fit's final check
    ref_sorted: SortedReference | None = field(default=None, repr=False)

    @property
    def reference(self) -> tuple[Tensor, Tensor]:
        return self.reference_image, self.reference_mask

    @property
    def device(self) -> torch.device:
        return self.reference_image.device

    def sampler(self) -> AreaSampler:
        """The area sampler of this model's type: its reference masks with the fit's ``AreaConfig``."""
        return AreaSampler(self.area_masks or [self.reference_mask.cpu()], self.config.area, name=self.defect_type)

    def sorted_reference(self) -> SortedReference:
        if self.ref_sorted is None:
            self.ref_sorted = sort_reference(self.reference_image[None], self.reference_mask[None])
        return self.ref_sorted

    def first_step(self, s: Tensor, area: Tensor) -> Tensor:
        """y' of Alg. 2 as this model was fitted with: S (N,C,H,W), L (N,1,H,W) -> (N,C,H,W)."""
        ring = None
        if self.config.first_step == "relative":
            ring = ring_mean(self.reference_image[None], self.reference_mask[None])
        return match_area(s, area, self.sorted_reference(), ring)


REFIT = "re-fit it with `dstray fit-dst --defect-type TYPE --out DIR` (or `fit-dst --all --out MODELS`)"


def save_checkpoint(checkpoint: dict, path: str | Path) -> Path:
    """Write a DST checkpoint (:meth:`dstray.dst.fit.DSTFitter.checkpoint`), loadable with
    ``torch.load(path, weights_only=True)``; to a temporary file first, then renamed.

    Keys: state_dict, config (plain dict), reference {id, image (C,H,W), mask (1,H,W)},
    defect_type, steps, in_channels, dstray_version, format, losses (history), area_masks (every
    reference mask M of the type, (1,H,W) each: the shapes L is drawn from, so that
    ``dstray stylize --seed`` draws L as generation does), the held-out check.
    """
    storage.save_torch(checkpoint, path)
    return Path(path)


def load_dst(path: str | Path | BinaryIO, device: str | torch.device = "cpu", *, name: str | Path | None = None,
             refit: str = REFIT) -> DSTModel:
    """Load a checkpoint written by :meth:`DSTFitter.save` (a path or a binary file object).

    A checkpoint written before ``area_masks`` was stored gives the model its single reference
    mask as the shapes of L. A missing, truncated or foreign file is a ``DataError`` naming it
    (``name`` for a file object) and saying how to re-fit it (``refit``).
    """
    if isinstance(path, (str, Path)):
        name = name if name is not None else path
        if not Path(path).is_file():
            raise DataError(path, "no dstray DST checkpoint here (not a file)", refit)
        data = Path(path).read_bytes()
    else:
        data = path.read()
    ckpt = read_checkpoint(data, name=name, what="dstray DST checkpoint", refit=refit)
    if isinstance(ckpt, dict) and {"state_dict", "config"} <= set(ckpt) and ckpt.get("format", 1) < CHECKPOINT_FORMAT:
        raise DataError(name or "<checkpoint bytes>", f"a dstray DST checkpoint of dstray "
                        f"{ckpt.get('dstray_version', '< 0.2')}, whose TransferNet is not this one's (checkpoint "
                        f"format {ckpt.get('format', 1)} < {CHECKPOINT_FORMAT})", refit)
    try:
        cfg = from_dict(DSTConfig, ckpt["config"])
        net = TransferNet(int(ckpt["in_channels"]), cfg.blend_sigma)
        net.load_state_dict(ckpt["state_dict"])
        ref, defect_type, steps = ckpt["reference"], ckpt["defect_type"], int(ckpt["steps"])
        ref_image, ref_mask, ref_id = ref["image"], ref["mask"], ref["id"]
    except (KeyError, TypeError, ValueError, RuntimeError) as exc:
        what = f"no {exc} entry" if isinstance(exc, KeyError) else str(exc).splitlines()[0][:160]
        raise DataError(name or "<checkpoint bytes>", f"not a dstray DST checkpoint ({what})", refit) from None
    device = resolve_device(str(device))
    net.to(device).eval().requires_grad_(False)
    return DSTModel(net=net, reference_image=ref_image.to(device), reference_mask=ref_mask.to(device),
                    reference_id=ref_id, config=cfg, defect_type=defect_type,
                    digest=hashlib.sha256(data).hexdigest()[:16], steps=steps,
                    area_masks=list(ckpt.get("area_masks") or [ref_mask]),
                    heldout_losses=dict(ckpt.get("heldout_losses") or {}))


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
            patch_size: int = PATCH_SIZE) -> dict[str, Tensor]:
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
                  mode: str = "patch", patch_size: int = PATCH_SIZE) -> dict[str, list[Tensor]]:
    """:func:`stylize` for several backgrounds, batching network calls.

    Whole mode batches images of equal size. Patch mode takes each image's own window
    (:func:`dstray.dst.areas.crop_window`, as :func:`stylize` does) and batches windows of equal
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
    y_match = model.first_step(s, a)
    return {"image": model.net(y_match, s, a), "histmatch": y_match}


def _run_windows(model: DSTModel, s: list[Tensor], a: list[Tensor],
                 wins: list[tuple[int, int, int, int]]) -> dict[str, list[Tensor]]:
    """Alg. 2 on windows of one shape, pasted back into each background (C,H,W).

    A window contains all of L, so matching the window equals matching the whole image.
    """
    sw = torch.stack([cut_window(si, w) for si, w in zip(s, wins)])
    aw = torch.stack([cut_window(ai, w) for ai, w in zip(a, wins)])
    out = _run(model, sw, aw)
    return {k: [paste_window(si, v[j], w) for j, (si, w) in enumerate(zip(s, wins))] for k, v in out.items()}


def stylize_file(model_path: str | Path, image: str | Path, out_dir: str | Path, *, mask: str | Path | None = None,
                 seed: int = 0, mode: str = "whole", patch_size: int = PATCH_SIZE, device: str = "auto") -> list[Path]:
    """``dstray stylize``: one defect on one background file.

    L is read from ``mask`` or drawn with :func:`dstray.dst.areas.area_for_seed` from the type's
    reference masks (:meth:`DSTModel.sampler`) and ``seed``: exactly the L of a generated row
    whose ``seed`` column is ``seed`` (same background, same ``AreaConfig``). Writes
    ``stylized.png`` (ŷ), ``histmatch.png`` (y'), ``mask.png`` (L) and ``figure3.png``
    (:func:`render_figure3_row`) to ``out_dir``; returns their paths.
    """
    model = load_dst(model_path, device=device)
    background = to_channels(read_image(image), model.reference_image.shape[0])
    if mask is not None:
        area = read_mask(mask, like=background)
    else:
        area, _ = area_for_seed(model.sampler(), background.shape[1], background.shape[2], seed)
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

