"""Generation without Ray: the plan of a run, one labelled sample per plan row, Parquet shards.

A generation run is planned up front (:func:`plan_samples`): row ``i`` fixes the defect
type, the background S, the reference H and a per-sample seed ``derive_seed(seed, i)``.
:class:`Synthesizer` then makes the sample of a row: the area L (also the label, drawn by
:func:`dstray.dst.areas.area_for_seed` from the row's seed), filled by one of the generators

- ``dst``: the first step (masked histogram matching), then the type's TransferNet (paper §3.1,
  Alg. 2), with the first step the model was fitted with;
- ``histmatch``: the first step only (paper Table 1, "Hist match"): ``GenerateConfig.first_step``,
  contrast-preserving by default like DST's (:func:`dstray.dst.histmatch.match_area`);
- ``copy``: the traditional copy-paste baseline: the reference image warped by L's own transform
  (:meth:`dstray.dst.areas.AreaSampler.sample_with_image`: the pasted pixels are the defect whose
  mask became L) and faded in with DST's fusion rule (:func:`copy_paste`).

For one seed the three draw the same background and the same L. L comes from the family of
``AreaConfig.family`` (:mod:`dstray.dst.areas`: the reference masks warped, procedural shapes of
:mod:`dstray.dst.shapes`, or a mix); each row records it (``area_family``). ``GenerateConfig.contrast``
fades any generator's defect into S by a factor drawn per sample (:func:`contrast_of`), S outside L.

Where a defect may go (a region of interest, the user's own target areas, room beside the other
defects of a multi-defect sample) is :mod:`dstray.dst.regions`.

A run (:func:`prepare`, :func:`build_synthesizer`, :func:`dstray.dst.shards.write_shard`) turns
shards of the plan (:mod:`dstray.dst.plan`) into Parquet files (:mod:`dstray.dst.rows`: ``SCHEMA``,
``REJECT_SCHEMA``) plus a marker per shard, so a shard's file depends on the plan only. The Ray Data actors (:mod:`dstray.distributed.generate`)
and the benchmark's plain loop call the same functions, so both do the same work.
"""

from __future__ import annotations

import hashlib
import io
import json
from dataclasses import dataclass, replace

import torch
from torch import Tensor

from dstray import storage
from dstray.config import (GENERATORS, PATCH_SIZE, AreaConfig, GenerateConfig, field_default, from_dict, to_dict,
                           without_later_defaults)
from dstray.data import DataError, load_dataset, preflight, read_image, read_mask, to_channels
from dstray.dst.areas import Area, AreaSampler, bbox, check_area_config
from dstray.dst.histmatch import match_area, ring_mean, sort_reference
from dstray.dst.plan import parse_defects_per_image, plan_samples
from dstray.dst.regions import copy_into, free_room, gather_areas, gather_rois
from dstray.dst.rows import REJECT_SCHEMA, SCHEMA, check_output, parquet_bytes, summarize  # noqa: F401 (re-exported)
from dstray.dst.shards import CHUNK_PIXELS, make_rows, read_background, shard_plan, write_shard  # noqa: F401 (idem)
from dstray.dst.stylize import load_dst, stylize_batch
from dstray.dst.transfer_net import soft_paste
from dstray.seeds import defect_seed, derive_seed


# --------------------------------------------------------------------------- one sample
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
        references: defect type -> the reference H, M used for histogram matching.
        area_masks: defect type -> all reference masks of that type (the shapes L is drawn from).
        area_images: defect type -> the images of those masks (needed by ``copy`` only).
        models: defect type -> loaded DST model (:func:`dstray.dst.stylize.load_dst`); only for ``dst``.
        area: how L is sampled.
        mode: ``patch`` (window around L) or ``whole`` (the paper's whole-image pass).
        patch_size: window size in patch mode, pixels.
        device: torch device for the networks.
        first_step: ``relative`` | ``absolute``, for ``histmatch`` (``dst`` follows its models).
        strength: ``dst`` only, ``[lo, hi]``: inside L each sample is ``a T(y') + (1 - a) y'`` with ``a`` drawn
            uniformly in [lo, hi] from the sample's seed (:func:`strength_of`): DST inserted at varied strengths,
            so that no single seam marks a defect (Cut, Paste and Learn). None: ``a = 1`` (the paper).
        contrast: every generator, ``[lo, hi]``: inside L the output is ``c filled + (1 - c) S`` with ``c`` drawn
            uniformly in [lo, hi] from the sample's seed (:func:`contrast_of`); outside L it is S, bit for bit.
            Faint defects on purpose, still labelled. None: ``c = 1``.
    """

    def __init__(self, generator: str, references: dict[str, Reference], area_masks: dict[str, list[torch.Tensor]],
                 models: dict | None = None, area: AreaConfig | None = None, mode: str = "patch",
                 patch_size: int = PATCH_SIZE, device: str | torch.device = "cpu", *,
                 area_images: dict[str, list[torch.Tensor]] | None = None, first_step: str = "relative",
                 strength: list[float] | None = None, contrast: list[float] | None = None):
        if generator not in GENERATORS:
            raise ValueError(f"unknown generator {generator!r}; choose one of {GENERATORS}")
        if generator == "dst":
            missing = sorted(set(references) - set(models or {}))
            if missing:
                raise ValueError(f"generator 'dst' needs a DST model for every type; missing: {missing}. "
                                 "Fit them with `dstray fit-dst --all` and pass --models DIR.")
        if generator == "copy" and set(area_masks) - set(area_images or {}):
            raise ValueError("generator 'copy' needs the reference images of every type (area_images)")
        if mode not in ("patch", "whole"):
            raise ValueError(f"mode must be 'patch' or 'whole', got {mode!r}")
        if first_step not in ("relative", "absolute"):
            raise ValueError(f"first_step must be 'relative' or 'absolute'; got {first_step!r}")
        if strength is not None and not (len(strength) == 2 and 0 <= strength[0] <= strength[1] <= 1):
            raise ValueError(f"--dst-strength must be LO,HI with 0 <= LO <= HI <= 1; got {strength}")
        check_contrast(contrast)
        self.strength, self.contrast = strength, contrast
        self.generator, self.references, self.models = generator, references, models or {}
        self.mode, self.patch_size, self.device = mode, patch_size, torch.device(device)
        area = area or AreaConfig()
        images = area_images if generator == "copy" else {}
        self.samplers = {t: AreaSampler(masks, area, reference_images=images.get(t), name=t)
                         for t, masks in area_masks.items()}
        self._matching = {}  # type -> (sorted H in M, ring mean of H around M or None)
        for t, ref in references.items():
            h, m = ref.image[None].float(), ref.mask[None].float()
            self._matching[t] = (sort_reference(h, m), ring_mean(h, m) if first_step == "relative" else None)

    def sample_area(self, defect_type: str, background: torch.Tensor, seed: int,
                    roi: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The area L (1,H,W) of a sample and, for ``copy``, the reference warped like L (C,H,W), else None.

        ``roi`` (1,H,W): L lies wholly inside it. Raises ``ValueError`` (:class:`dstray.dst.areas.AreaDoesNotFit`)
        when the background cannot take an area of this type (or none inside the roi).
        """
        area = self.draw_area(defect_type, background, seed, roi)
        return area.mask, area.image

    def draw_area(self, defect_type: str, background: torch.Tensor, seed: int, roi: torch.Tensor | None = None,
                  box: tuple[int, int, int, int] | None = None) -> Area:
        """:meth:`sample_area` with the family L came from (:class:`dstray.dst.areas.Area`); ``box``: what stands
        in for the image when ``roi`` is the room beside other defects (:meth:`~dstray.dst.areas.AreaSampler.draw`)."""
        _, h, w = background.shape
        sampler = self.samplers[defect_type]
        # the generator seeded with the row's seed, as in area_for_seed: the same L as `dstray stylize --seed`
        return sampler.draw(h, w, torch.Generator().manual_seed(seed), roi=roi, with_image=self.generator == "copy",
                            box=box)

    def sample_areas(self, types: list[str], background: torch.Tensor, seed: int, roi: torch.Tensor | None = None,
                     drawn: list[torch.Tensor] | None = None) -> list[tuple[str, torch.Tensor, torch.Tensor | None, str]]:
        """One area per type in ``types``, none overlapping: ``[(type, L (1,H,W), warped or None, family), ...]``.

        Defect ``j`` is :meth:`draw_area` with :func:`dstray.seeds.defect_seed` (defect 0: ``seed``, a
        single-defect sample's L; ``j`` >= 1: ``derive_seed(seed, "defect", j)``) in the room the earlier ones
        leave (:func:`~dstray.dst.regions.free_room`).
        ``drawn``: the user's target areas of this background (``--areas``), each an L as drawn (family ``drawn``);
        the sample takes ``len(types)`` of them, picked with ``seed``. ValueError saying which defect did not fit.
        ``family``: ``reference`` | ``procedural`` | ``drawn``, the row's ``area_family``.
        """
        if drawn is not None:
            if len(drawn) < len(types):
                raise ValueError(f"its target-area mask has {len(drawn)} region(s); the sample needs {len(types)}")
            pick = torch.randperm(len(drawn), generator=torch.Generator().manual_seed(seed))[:len(types)].tolist()
            return [(t, drawn[k], self._copy_pixels(t, drawn[k]), "drawn") for t, k in zip(types, pick)]
        out, taken = [], None
        box = bbox(roi[0] > 0.5) if roi is not None else (0, 0, *background.shape[1:])  # the later ones' stand-in
        for j, t in enumerate(types):
            room = roi if taken is None else free_room(roi, taken)
            try:
                area = self.draw_area(t, background, defect_seed(seed, j), room, None if j == 0 else box)
            except ValueError as exc:
                if j == 0:
                    raise
                raise ValueError(f"defect {j + 1} of {len(types)} ({t}) has no room beside the others: {exc}") from exc
            out.append((t, area.mask, area.image, area.family))
            taken = area.mask if taken is None else torch.maximum(taken, area.mask)
        return out

    def _copy_pixels(self, defect_type: str, area: torch.Tensor) -> torch.Tensor | None:
        """For ``copy`` on a drawn L: the reference defect's box resized into L's (:func:`~dstray.dst.regions.copy_into`)."""
        if self.generator != "copy":
            return None
        ref = self.references[defect_type]
        return copy_into(ref.image, ref.mask, area)

    def fill(self, items: list[tuple[str, torch.Tensor, torch.Tensor, torch.Tensor | None]],
             batch_size: int = 8) -> list[torch.Tensor]:
        """Fill the areas: items (defect_type, background (C,H,W), area (1,H,W), warped reference or None
        [, the defect's seed (:func:`dstray.seeds.defect_seed`), which draws its DST strength]) -> images.

        DST runs the network on up to ``batch_size`` windows at once; each image is the same as
        when made alone (windows are per image, InstanceNorm is per sample).
        """
        images: list[torch.Tensor | None] = [None] * len(items)
        seeds = [item[4] if len(item) > 4 else 0 for item in items]
        items = [item[:4] for item in items]
        if self.generator == "dst":
            by_type: dict[str, list[int]] = {}
            for i, (t, *_rest) in enumerate(items):
                by_type.setdefault(t, []).append(i)
            for t, idx in by_type.items():
                for k in range(0, len(idx), batch_size):
                    chunk = idx[k:k + batch_size]
                    out = stylize_batch(self.models[t], [items[i][1].to(self.device) for i in chunk],
                                        [items[i][2].to(self.device) for i in chunk],
                                        mode=self.mode, patch_size=self.patch_size)
                    for i, image, matched in zip(chunk, out["image"], out["histmatch"]):
                        images[i] = image.cpu()
                        if self.strength is not None:  # a T(y') + (1 - a) y' inside L, S outside (bit for bit)
                            a = strength_of(seeds[i], self.strength)
                            inside = items[i][2] > 0.5
                            images[i] = torch.where(inside, a * images[i] + (1 - a) * matched.cpu(), items[i][1])
        for i, (t, background, area, warped) in enumerate(items):
            if self.generator == "copy":
                images[i] = copy_paste(background, area, warped)
            elif self.generator == "histmatch":
                ref_sorted, ring = self._matching[t]
                images[i] = match_area(background[None], area[None], ref_sorted, ring)[0]
            if self.contrast is not None:  # c filled + (1 - c) S inside L, S outside (bit for bit)
                c = contrast_of(seeds[i], self.contrast)
                inside = area > 0.5
                background = background.to(images[i])
                images[i] = torch.where(inside, (c * images[i] + (1 - c) * background).clamp(0, 1), background)
        return [im.clamp(0, 1) for im in images]

    def __call__(self, defect_type: str, background: torch.Tensor, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
        """One sample: ``(image (C,H,W) float [0,1], label L (1,H,W) {0,1})``."""
        area, warped = self.sample_area(defect_type, background, defect_seed(seed, 0))
        return self.fill([(defect_type, background, area, warped, defect_seed(seed, 0))])[0], area


def strength_of(seed: int, strength: list[float]) -> float:
    """The DST strength of a sample: uniform in ``[lo, hi]``, drawn from ``derive_seed(seed, "strength")``."""
    u = float(torch.rand((), generator=torch.Generator().manual_seed(derive_seed(seed, "strength"))))
    return strength[0] + (strength[1] - strength[0]) * u


def contrast_of(seed: int, contrast: list[float]) -> float:
    """The contrast factor of a sample: uniform in ``[lo, hi]``, drawn from ``derive_seed(seed, "contrast")``."""
    u = float(torch.rand((), generator=torch.Generator().manual_seed(derive_seed(seed, "contrast"))))
    return contrast[0] + (contrast[1] - contrast[0]) * u


def check_contrast(contrast: list[float] | None) -> None:
    """ValueError unless ``contrast`` is None or ``[lo, hi]`` with 0 <= lo <= hi <= 1."""
    if contrast is None:
        return
    if not (isinstance(contrast, (list, tuple)) and len(contrast) == 2
            and all(isinstance(c, (int, float)) and 0 <= c <= 1 for c in contrast) and contrast[0] <= contrast[1]):
        raise ValueError(f"--contrast must be LO,HI with 0 <= LO <= HI <= 1 (e.g. 0.3,1: a defect at 30 to 100 % of "
                         f"its contrast); got {contrast}")


def copy_paste(background: Tensor, area: Tensor, warped: Tensor, sigma: float = 2.0) -> Tensor:
    """The traditional copy-paste baseline: the reference defect, warped like L, pasted into L.

    background S (C,H,W); area L (1,H,W); ``warped`` (C',H,W): the reference image under L's
    own transform (:meth:`~dstray.dst.areas.AreaSampler.sample_with_image`), so the pixels
    pasted at L are the defect whose mask became L. Fused with DST's rule
    (:func:`~dstray.dst.transfer_net.soft_paste`, fade ``sigma`` px). Returns (C,H,W); outside L
    bit-identical to S.
    """
    if background.dim() != 3 or area.shape != (1, *background.shape[1:]) or warped.shape[1:] != area.shape[1:]:
        raise ValueError(f"background must be (C,H,W), area (1,H,W) and warped (C',H,W); got "
                         f"{tuple(background.shape)}, {tuple(area.shape)}, {tuple(warped.shape)}")
    if not bool((area > 0.5).any()):
        return background.clone()
    pasted = to_channels(warped.to(background), background.shape[0])
    return soft_paste(pasted[None], background[None], area[None].to(background), sigma)[0]


# --------------------------------------------------------------------------- a run, in shards
def prepare(cfg: GenerateConfig) -> dict:
    """Validate inputs and plan the run; everything the actors need, as plain data.

    Raises ``ValueError`` / ``DataError`` with what to do, before any Ray work starts.
    """
    if cfg.generator not in GENERATORS:
        raise ValueError(f"--generator must be one of {GENERATORS}; got {cfg.generator!r}")
    if cfg.num_samples < 1:
        raise ValueError(f"--num-samples must be at least 1; got {cfg.num_samples}")
    defects = parse_defects_per_image(cfg.defects_per_image)
    check_area_config(cfg.area)
    check_contrast(cfg.contrast)
    # absolute paths: the actors run in other working directories
    cfg = replace(cfg, data=storage.absolute(cfg.data), models=storage.absolute(cfg.models), out=storage.absolute(cfg.out))
    storage.require_folder(cfg.out, "--out")
    dataset = load_dataset(cfg.data)
    types = classes = sorted({s.defect_type for s in dataset.references()})
    weights = None
    if cfg.type_weights:  # a type with weight 0 or left out is not generated (and needs no model)
        unknown = sorted(set(cfg.type_weights) - set(types))
        if unknown:
            raise ValueError(f"--type-weights names {unknown}, which are not defect types with a reference "
                             f"in {dataset.root}; known: {types}")
        weights = {t: w for t, w in cfg.type_weights.items() if w > 0}
        types = sorted(weights)
    if not types:
        raise ValueError(f"{dataset.root}: no defect type has a reference image; nothing to generate")
    # the one input check (dstray inspect runs it too): refuses on what would stop the run, warns of rejects
    preflight(dataset, job="generate", types=types, max_image_pixels=cfg.max_image_pixels, area=cfg.area)
    backgrounds = dataset.backgrounds()
    roi, rois = gather_rois(storage.absolute(cfg.roi), backgrounds)
    drawn = gather_areas(storage.absolute(cfg.areas), backgrounds) if cfg.areas else None
    if drawn is not None:  # only backgrounds with a target-area mask are planned
        backgrounds = [b for b in backgrounds if b.id in drawn]

    references, area_masks, area_images, ref_ids = {}, {}, {}, {}
    for t in types:
        refs = dataset.references(t)
        first = refs[0]
        image = read_image(first.image)
        references[t] = {"id": first.id, "image": image.numpy(), "mask": read_mask(first.mask, like=image).numpy()}
        area_masks[t] = [read_mask(r.mask).numpy() for r in refs]
        if cfg.generator == "copy":  # the pixels copy-paste warps with L
            area_images[t] = [read_image(r.image).numpy() for r in refs]
        ref_ids[t] = first.id

    models, digests = {}, {}
    if cfg.generator == "dst":
        if not cfg.models:
            raise ValueError("--generator dst needs --models DIR (the output of `dstray fit-dst --all`)")
        storage.require_folder(cfg.models, "--models")
        for t in types:
            path = _model_path(cfg.models, t)
            refit = f"re-fit it with `dstray fit-dst --all --data {dataset.root} --out {cfg.models}`"
            if not storage.exists(path):
                raise ValueError(f"no DST model for defect type {t!r} at {path}; "
                                 f"fit it with `dstray fit-dst --all --out {cfg.models}` or leave the type out "
                                 "of --type-weights")
            blob = storage.read_bytes(path)
            model = load_dst(io.BytesIO(blob), name=path, refit=refit)  # checked here, not in every actor
            if model.defect_type != t:
                raise DataError(path, f"holds a DST model of type {model.defect_type!r}, not {t!r}", refit)
            models[t] = blob
            digests[t] = hashlib.sha256(blob).hexdigest()[:16]
            ref_ids[t] = model.reference_id  # the reference the model was fit on

    plan = plan_samples(num_samples=cfg.num_samples, seed=cfg.seed, defect_types=types,
                        background_ids=[b.id for b in backgrounds], reference_ids=ref_ids,
                        type_weights=weights, defects_per_image=defects)
    plan_digest = hashlib.sha256(json.dumps(plan, sort_keys=True).encode()).hexdigest()[:16]
    return {
        "cfg": to_dict(cfg),
        "plan": plan,
        "backgrounds": {b.id: str(b.image) for b in backgrounds},  # paths; the driver swaps in object refs
        "background_paths": {b.id: str(b.image) for b in backgrounds},  # what reject reasons call them
        "references": references,
        "area_masks": area_masks,
        "area_images": area_images,
        "models": models,
        "digests": digests,
        "fingerprint": _fingerprint(cfg, digests, plan_digest),
        # where defects go; class_mask values 1..T follow ``classes`` (every type with a reference, sorted)
        "roi": roi, "rois": rois, "areas": drawn, "classes": classes, "multi": defects[1] > 1,
    }


# fields added after datasets were written: they enter the fingerprint only when set away from their
# default, so a dataset written before they existed is still recognised (and resumed) as the same one
_LATER_FIELDS = {k: field_default(GenerateConfig, k) for k in ("max_image_pixels", "roi", "areas", "defects_per_image",
                                                                "dst_strength", "min_visibility", "contrast")}


def _fingerprint(cfg: GenerateConfig, digests: dict[str, str], plan_digest: str) -> str:
    """What makes two runs the same dataset (not: where it is written or how fast)."""
    keep = {k: v for k, v in without_later_defaults(cfg).items()
            if k not in ("out", "batch_size", "num_actors", "use_gpu") and not (k in _LATER_FIELDS and v == _LATER_FIELDS[k])}
    blob = json.dumps({"cfg": keep, "models": digests, "plan": plan_digest}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def _model_path(models: str, defect_type: str) -> str:
    return storage.join(models, defect_type, "model.pt")


def build_synthesizer(ctx: dict, device: str = "cpu"):
    """The :class:`Synthesizer` of a prepared run (:func:`prepare`); models loaded once."""
    cfg = from_dict(GenerateConfig, ctx["cfg"])
    refs = {t: Reference(r["id"], torch.from_numpy(r["image"]), torch.from_numpy(r["mask"]))
            for t, r in ctx["references"].items()}
    masks = {t: [torch.from_numpy(m) for m in ms] for t, ms in ctx["area_masks"].items()}
    images = {t: [torch.from_numpy(m) for m in ms] for t, ms in ctx.get("area_images", {}).items()}
    models = {t: load_dst(io.BytesIO(blob), device=device) for t, blob in ctx["models"].items()}
    for t, model in models.items():  # the model's own reference is the one DST matches to
        refs[t] = Reference(model.reference_id, model.reference_image.cpu(), model.reference_mask.cpu())
    return Synthesizer(cfg.generator, refs, masks, models, cfg.area, cfg.mode, cfg.patch_size, device,
                       area_images=images, first_step=cfg.first_step, strength=cfg.dst_strength,
                       contrast=cfg.contrast)
