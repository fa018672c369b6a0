"""Turning a plan row into one labelled synthetic defect image (pure torch, no Ray).

A generation run is planned up front (:func:`plan_samples`): row ``i`` fixes the defect
type, the background S, the reference H and a per-sample seed derived from the global
seed and ``i``. :class:`Synthesizer` then makes the sample of a row: sample the area L
(also the label), and fill it with one of the generators

- ``dst``: masked histogram matching, then the type's TransferNet (paper §3.1, Alg. 2);
- ``histmatch``: the first step only (paper Table 1, "Hist match");
- ``copy``: the reference defect pasted into L with Gaussian blending (the traditional
  copy-paste baseline).

The same class serves the Ray Data actors (``dstray.distributed.generate``) and the plain
single-process loop the benchmark compares them with, so both do the same work.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from dstray.areas import AreaSampler
from dstray.config import AreaConfig
from dstray.seeds import derive_seed

GENERATORS = ("dst", "histmatch", "copy")


def plan_samples(
    *,
    num_samples: int,
    seed: int,
    defect_types: list[str],
    background_ids: list[str],
    reference_ids: dict[str, str],
    type_weights: dict[str, float] | None = None,
) -> list[dict]:
    """The exact list of samples to generate, one dict per sample.

    Types are balanced (``num_samples // T`` each, the remainder to the first types in
    sorted order) or follow ``type_weights`` (largest-remainder rounding, so the counts
    always add up to ``num_samples``); their order is shuffled with ``seed``. Backgrounds
    are drawn so that each is used as evenly as possible (a seeded permutation, repeated).
    """
    if num_samples <= 0:
        raise ValueError(f"num_samples must be positive, got {num_samples}")
    if not defect_types:
        raise ValueError("no defect types to generate")
    if not background_ids:
        raise ValueError("no backgrounds (defect-free images) to generate on")
    types = sorted(defect_types)
    if type_weights:
        unknown = set(type_weights) - set(types)
        if unknown:
            raise ValueError(f"type_weights names unknown defect types {sorted(unknown)}; known: {types}")
        w = np.array([max(float(type_weights.get(t, 0.0)), 0.0) for t in types])
        if w.sum() <= 0:
            raise ValueError(f"type_weights must have a positive weight; got {type_weights}")
        exact = w / w.sum() * num_samples
        counts = np.floor(exact).astype(int)
        for k in np.argsort(-(exact - counts), kind="stable")[: num_samples - counts.sum()]:
            counts[k] += 1
    else:
        counts = np.full(len(types), num_samples // len(types))
        counts[: num_samples % len(types)] += 1
    rng = np.random.default_rng(seed)
    type_of = np.repeat(np.arange(len(types)), counts)
    rng.shuffle(type_of)
    bgs = sorted(background_ids)
    reps = -(-num_samples // len(bgs))
    bg_of = np.concatenate([rng.permutation(len(bgs)) for _ in range(reps)])[:num_samples]
    return [
        {
            "index": i,
            "sample_id": f"{seed}-{i:08d}",
            "defect_type": types[type_of[i]],
            "background_id": bgs[bg_of[i]],
            "reference_id": reference_ids[types[type_of[i]]],
            "seed": derive_seed(seed, i),
        }
        for i in range(num_samples)
    ]


@dataclass
class Reference:
    """One real defect: H (C,H,W) float [0,1] and M (1,H,W) {0,1}."""

    id: str
    image: torch.Tensor
    mask: torch.Tensor


class Synthesizer:
    """Makes labelled samples for every defect type with one generator.

    Args:
        generator: ``dst`` | ``histmatch`` | ``copy``.
        references: defect type -> the reference H, M used for histogram matching / copying.
        area_masks: defect type -> all reference masks of that type (the shapes L is drawn from).
        models: defect type -> loaded DST model (``dstray.dst.load_dst``); only for ``dst``.
        area: how L is sampled.
        mode: ``patch`` (window around L) or ``whole`` (the paper's whole-image pass).
        patch_size: window size in patch mode, pixels.
        device: torch device for the networks.
    """

    def __init__(self, generator: str, references: dict[str, Reference], area_masks: dict[str, list[torch.Tensor]],
                 models: dict | None = None, area: AreaConfig | None = None, mode: str = "patch",
                 patch_size: int = 96, device: str | torch.device = "cpu"):
        if generator not in GENERATORS:
            raise ValueError(f"unknown generator {generator!r}; choose one of {GENERATORS}")
        if generator == "dst":
            missing = sorted(set(references) - set(models or {}))
            if missing:
                raise ValueError(f"generator 'dst' needs a DST model for every type; missing: {missing}. "
                                 "Fit them with `dstray fit-dst --all` and pass --models DIR.")
        if mode not in ("patch", "whole"):
            raise ValueError(f"mode must be 'patch' or 'whole', got {mode!r}")
        self.generator, self.references, self.models = generator, references, models or {}
        self.mode, self.patch_size, self.device = mode, patch_size, torch.device(device)
        area = area or AreaConfig()
        self.samplers = {t: AreaSampler(masks, area) for t, masks in area_masks.items()}

    def sample_area(self, defect_type: str, background: torch.Tensor, seed: int) -> tuple[torch.Tensor, torch.Generator]:
        """The area L (1,H,W) of a sample, and the sample's generator (for later random draws).

        Raises ``ValueError`` when the background cannot take an area of this type (too small).
        """
        gen = torch.Generator().manual_seed(seed)
        _, h, w = background.shape
        return self.samplers[defect_type].sample(h, w, gen), gen

    def fill(self, items: list[tuple[str, torch.Tensor, torch.Tensor, torch.Generator]],
             batch_size: int = 8) -> list[torch.Tensor]:
        """Fill the areas: items (defect_type, background (C,H,W), area (1,H,W), generator) -> images.

        DST runs the network on up to ``batch_size`` windows at once; each image is the same as
        when made alone (windows are per image, InstanceNorm is per sample).
        """
        from dstray import dst
        from dstray.histmatch import histmatch

        images: list[torch.Tensor | None] = [None] * len(items)
        if self.generator == "dst":
            by_type: dict[str, list[int]] = {}
            for i, (t, *_rest) in enumerate(items):
                by_type.setdefault(t, []).append(i)
            for t, idx in by_type.items():
                for k in range(0, len(idx), batch_size):
                    chunk = idx[k:k + batch_size]
                    out = dst.stylize_batch(self.models[t], [items[i][1].to(self.device) for i in chunk],
                                            [items[i][2].to(self.device) for i in chunk],
                                            mode=self.mode, patch_size=self.patch_size)
                    for i, image in zip(chunk, out["image"]):
                        images[i] = image.cpu()
        for i, (t, background, area, gen) in enumerate(items):
            ref = self.references[t]
            if self.generator == "copy":
                images[i] = dst.copy_paste(background, area, ref.image, ref.mask, gen)
            elif self.generator == "histmatch":
                images[i] = histmatch(background[None], area[None], ref.image[None], ref.mask[None])[0]
        return [im.clamp(0, 1) for im in images]

    def __call__(self, defect_type: str, background: torch.Tensor, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
        """One sample: ``(image (C,H,W) float [0,1], label L (1,H,W) {0,1})``."""
        area, gen = self.sample_area(defect_type, background, seed)
        return self.fill([(defect_type, background, area, gen)])[0], area
