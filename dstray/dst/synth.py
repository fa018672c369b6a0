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

For one seed the three draw the same background and the same L.

A run (:func:`prepare`, :func:`build_synthesizer`, :func:`write_shard`) turns shards of the
plan into Parquet files (:data:`SCHEMA`, :data:`REJECT_SCHEMA`) plus a marker per shard, so a
shard's file depends on the plan only. The Ray Data actors (:mod:`dstray.distributed.generate`)
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
from dstray.config import GENERATORS, PATCH_SIZE, AreaConfig, GenerateConfig, field_default, from_dict, to_dict
from dstray.data import DataError, load_dataset, preflight, read_image, read_mask, to_channels
from dstray.dst.areas import AreaSampler, area_for_seed
from dstray.dst.histmatch import match_area, ring_mean, sort_reference
from dstray.dst.plan import plan_samples
from dstray.dst.rows import (REJECT_SCHEMA, SCHEMA, check_output, parquet_bytes, sample_row,  # noqa: F401
                             summarize, write_shard_files)  # (SCHEMA ... summarize: re-exported)
from dstray.dst.stylize import load_dst, stylize_batch
from dstray.dst.transfer_net import soft_paste


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
    """

    def __init__(self, generator: str, references: dict[str, Reference], area_masks: dict[str, list[torch.Tensor]],
                 models: dict | None = None, area: AreaConfig | None = None, mode: str = "patch",
                 patch_size: int = PATCH_SIZE, device: str | torch.device = "cpu", *,
                 area_images: dict[str, list[torch.Tensor]] | None = None, first_step: str = "relative"):
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

    def sample_area(self, defect_type: str, background: torch.Tensor,
                    seed: int) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The area L (1,H,W) of a sample and, for ``copy``, the reference warped like L (C,H,W), else None.

        Raises ``ValueError`` (:class:`dstray.dst.areas.AreaDoesNotFit`) when the background cannot take an
        area of this type.
        """
        _, h, w = background.shape
        sampler = self.samplers[defect_type]
        if self.generator == "copy":
            return sampler.sample_with_image(h, w, seed)
        return area_for_seed(sampler, h, w, seed)[0], None

    def fill(self, items: list[tuple[str, torch.Tensor, torch.Tensor, torch.Tensor | None]],
             batch_size: int = 8) -> list[torch.Tensor]:
        """Fill the areas: items (defect_type, background (C,H,W), area (1,H,W), warped reference or None) -> images.

        DST runs the network on up to ``batch_size`` windows at once; each image is the same as
        when made alone (windows are per image, InstanceNorm is per sample).
        """
        images: list[torch.Tensor | None] = [None] * len(items)
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
                    for i, image in zip(chunk, out["image"]):
                        images[i] = image.cpu()
        for i, (t, background, area, warped) in enumerate(items):
            if self.generator == "copy":
                images[i] = copy_paste(background, area, warped)
            elif self.generator == "histmatch":
                ref_sorted, ring = self._matching[t]
                images[i] = match_area(background[None], area[None], ref_sorted, ring)[0]
        return [im.clamp(0, 1) for im in images]

    def __call__(self, defect_type: str, background: torch.Tensor, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
        """One sample: ``(image (C,H,W) float [0,1], label L (1,H,W) {0,1})``."""
        area, warped = self.sample_area(defect_type, background, seed)
        return self.fill([(defect_type, background, area, warped)])[0], area


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
    # absolute paths: the actors run in other working directories
    cfg = replace(cfg, data=storage.absolute(cfg.data), models=storage.absolute(cfg.models), out=storage.absolute(cfg.out))
    storage.require_folder(cfg.out, "--out")
    dataset = load_dataset(cfg.data)
    types = sorted({s.defect_type for s in dataset.references()})
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
                        type_weights=weights)
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
    }


# fields added after datasets were written: they enter the fingerprint only when set away from their
# default, so a dataset written before they existed is still recognised (and resumed) as the same one
_LATER_FIELDS = {"max_image_pixels": field_default(GenerateConfig, "max_image_pixels")}


def _fingerprint(cfg: GenerateConfig, digests: dict[str, str], plan_digest: str) -> str:
    """What makes two runs the same dataset (not: where it is written or how fast)."""
    keep = {k: v for k, v in to_dict(cfg).items() if k not in ("out", "batch_size", "num_actors", "use_gpu")
            and not (k in _LATER_FIELDS and v == _LATER_FIELDS[k])}
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
                       area_images=images, first_step=cfg.first_step)


def read_background(source: str | bytes, *, name: str | None = None, max_pixels: int | None = None) -> torch.Tensor:
    """A background (C,H,W) from a path or the bytes of its file (PNG/JPEG ...).

    ``name``: the file's path, for errors about bytes; ``max_pixels``: the size limit (DataError above it).
    """
    if isinstance(source, bytes):
        return read_image(io.BytesIO(source), name=name or "<background bytes>", max_pixels=max_pixels)
    return read_image(source, max_pixels=max_pixels)


def shard_plan(ctx: dict, shard: int, shard_size: int) -> list[dict]:
    """The plan rows of shard ``shard``: ``shard_size`` consecutive samples."""
    return ctx["plan"][shard * shard_size:(shard + 1) * shard_size]


def _reason(exc: BaseException, background: str) -> str:
    """A reject's reason: the error's message, naming the background file."""
    text = str(exc).strip() or type(exc).__name__
    if not isinstance(exc, (DataError, ValueError, OSError)):  # not an input error: say what kind
        text = f"{type(exc).__name__}: {text.splitlines()[0]}"
    return text if background in text else f"background {background}: {text}"


# Pixels of decoded backgrounds a shard holds at once: make_rows fills and encodes the samples read so far
# when their backgrounds add up to this, so an actor's memory follows the chunk, not the shard (~17 bytes a
# pixel while a sample is in flight: background, area, image). A shard of 32 Magnetic Tile samples (~8 MP)
# is one chunk, as before.
CHUNK_PIXELS = 16_000_000


def make_rows(ctx: dict, synth, plan_rows: list[dict], batch_size: int = 8) -> tuple[list[dict], list[dict]]:
    """Generate the samples of ``plan_rows``: ``(rows, rejects)``, rows in plan order.

    A sample whose background cannot be read, is over ``max_image_pixels`` or cannot take
    the area is a reject with its reason (naming the file), never an error; so is a sample
    whose fill fails. A background is converted to the channel count of its type's reference
    (the model's) first (:func:`dstray.data.to_channels`). Samples are filled in chunks of at
    most :data:`CHUNK_PIXELS` background pixels (each image is the same whatever its batch).
    """
    limit = ctx["cfg"].get("max_image_pixels")
    paths = ctx.get("background_paths") or {}  # id -> path, when ctx["backgrounds"] holds bytes
    rows, rejects, ready = [], [], []

    def reject(p: dict, exc: BaseException) -> None:
        source = ctx["backgrounds"].get(p["background_id"])
        name = paths.get(p["background_id"]) or (source if isinstance(source, str) else p["background_id"])
        rejects.append({k: p[k] for k in ("sample_id", "index", "defect_type", "background_id")}
                       | {"reason": _reason(exc, name)})

    def flush() -> None:
        items = [(p["defect_type"], bg, area, warped) for p, bg, area, warped in ready]
        try:
            images = synth.fill(items, batch_size)
        except Exception:  # one bad sample must not take its batch (or the job) down: fill them one by one
            images = []
            for (p, *_), item in zip(ready, items):
                try:
                    images.append(synth.fill([item], 1)[0])
                except Exception as exc:
                    reject(p, exc)
                    images.append(None)
        for (p, _, area, _), image in zip(ready, images):
            if image is not None:
                rows.append(sample_row(p, image, area, synth.generator, ctx["digests"].get(p["defect_type"], "")))
        ready.clear()

    pixels = 0
    for p in plan_rows:
        try:
            source = ctx["backgrounds"][p["background_id"]]
            background = read_background(source, name=paths.get(p["background_id"]), max_pixels=limit)
            background = to_channels(background, synth.references[p["defect_type"]].image.shape[0])
            area, warped = synth.sample_area(p["defect_type"], background, p["seed"])
        except (DataError, ValueError, OSError) as exc:
            reject(p, exc)
            continue
        ready.append((p, background, area, warped))
        pixels += background.shape[1] * background.shape[2]
        if pixels >= CHUNK_PIXELS:
            flush()
            pixels = 0
    flush()
    return rows, sorted(rejects, key=lambda r: r["index"])


def write_shard(ctx: dict, synth, shard: int, shard_size: int) -> tuple[int, int]:
    """Generate shard ``shard`` and write its files; returns ``(written, rejected)``."""
    out = ctx["cfg"]["out"]
    plan = shard_plan(ctx, shard, shard_size)
    rows, rejects = make_rows(ctx, synth, plan, ctx["cfg"]["batch_size"])
    write_shard_files(out, shard, rows, rejects, ctx["fingerprint"])
    return len(rows), len(rejects)


