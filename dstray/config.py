"""Typed configuration of every dstray job.

One dataclass per job, a comment on each field (nanoGPT style). The CLI and the
``jobs/*.py`` entrypoints build these; Ray receives them as plain dicts
(:func:`to_dict` / :func:`from_dict`). Paper constants cite their source:
"paper §4" is section 4 of Wei et al. (``../shared/paper/defect-style-transfer.txt``).

Also here: the shared defaults the dataclasses need (:data:`PATCH_SIZE`, :data:`GENERATORS`,
:data:`ARCHS`; the size presets built from these configs are in :mod:`dstray.presets`), the one
resume check (:func:`check_resumable`, each config's ``RESUME_FREE`` fields) and the parsing
of a field's value from text (:func:`parse_value`, for the CLI and Tune search spaces).
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, TypeVar

T = TypeVar("T")

# Shared defaults and choices, named once (the configs below, the presets, the CLI and the code use them).
PATCH_SIZE = 96  # side (px) of the square window around L that TransferNet sees in patch mode (fit and generation)
GENERATORS = ("copy", "histmatch", "dst")  # how L of a generated sample is filled (paper Table 1's columns, in order)
ARCHS = ("buttonlab", "deeplabv3plus", "unet")  # the segmenters of paper Table 1
AREA_FAMILIES = ("reference", "procedural", "mix")  # where the target areas L come from (AreaConfig.family)
# Largest image (width x height, pixels) a job decodes (--max-image-pixels): 16 MP holds 4096 x 4096 and
# every 12 MP camera frame. Measured (generation core, patch mode, 16 samples of blowhole or crack on
# 4000 x 4000 backgrounds, 1 thread): process peak 1.3 GiB against 0.73 GiB before the first sample
# (1 MP backgrounds: 1.05 GiB); a 12000 x 12000 background had taken an actor to 5.9 GiB.
MAX_IMAGE_PIXELS = 16_000_000


# --------------------------------------------------------------------------- areas
@dataclass
class AreaConfig:
    """How the target area L is sampled from the reference mask(s) of a defect type."""

    max_rotation: float = 180.0  # degrees; rotation drawn uniformly in [-max, +max]
    scale_min: float = 0.75  # scale factor range applied to the reference mask (smaller backgrounds: a reject)
    scale_max: float = 1.25
    aspect: float = 0.2  # width/height ratio times a factor log-uniform in [1/(1+aspect), 1+aspect]; 0 = none
    elastic: float = 0.08  # elastic bend: control-point shifts up to this fraction of the shape's size; 0 = none
    elastic_points: int = 4  # control points per side of the elastic displacement grid
    flip: bool = True  # random horizontal/vertical flips
    margin: int = 2  # pixels kept free between L and the image border
    keep_border_contact: bool = True  # a reference touching the border yields an L touching a border
    family: str = "reference"  # "reference" (the reference masks warped) | "procedural" (shapes drawn in the ranges
    #                            measured on them, widened) | "mix" (each sample one of the two, half and half)
    widen: float = 2.0  # procedural: sizes, elongation, width ... in [ref / widen, ref x widen] (area: widen squared)


# --------------------------------------------------------------------------- DST fit
@dataclass
class DSTConfig:
    """Fitting one TransferNet (one defect type), paper §3.1 and §4."""

    defect_type: str | None = None  # which defect type to learn (one reference H, M); None = the dataset's only type
    reference_id: str | None = None  # sample id of the reference; None = the first reference of the type
    steps: int = 400  # at most this many optimiser steps (the fit stops earlier on a plateau, see plateau_*)
    min_steps: int = 100  # never stop on a plateau before this step
    plateau_patience: int = 100  # stop when the best held-out loss is this many steps old (< plateau_tol better); 0 = off
    plateau_tol: float = 0.01
    heldout: int = 16  # backgrounds kept out of the fit: early stopping, and the check of DST against y'
    heldout_every: int = 25  # steps between held-out checks (the best weights are the fitted model)
    batch_size: int = 4  # backgrounds per step
    patch_size: int | None = PATCH_SIZE  # square window around L; None = whole image (the paper's mode)
    whole_size: int = 256  # whole-image mode: backgrounds resized to this square size for batching
    lr: float = 1e-3  # Adam learning rate (paper §4)
    warmup_steps: int = 50  # the learning rate rises linearly over the first steps (Adam's first steps on the
    #                         zero-initialised output layer would otherwise throw the fit far from y')
    first_step: str = "relative"  # "relative": histmatch keeps M's contrast to its surroundings | "absolute": the paper's
    # loss (eq. 6). Each term is divided by its value at the first step's output y' (content: by the energy of
    # y''s features in L), measured on calibration_batches batches at the start of the fit: the weights below
    # are relative importances that carry over between loss networks, defect types and datasets (the paper's
    # w_c=1e5, w_s=2.5e-4, w_h=1, w_tv=10 belong to its own unstated normalisation; see dstray.dst.losses)
    content_weight: float = 10.0  # w_c, content loss: keep y''s structure (features at content_layers)
    style_weight: float = 1.0  # w_s, Gram style loss against style_target
    hist_weight: float = 1.0  # w_h, histogram loss (Risser et al. 2017) against H inside M
    tv_weight: float = 1.0  # w_tv, total variation inside L and across its border
    style_target: str = "background"  # Gram targets: "background" (S under L, the paper) | "reference" (H in M)
    calibration_batches: int = 4  # batches that measure the loss normalisation at the start of a fit
    loss_net: str = "efficientnet_lite0"  # loss network: "efficientnet_lite0" | "vgg19" (the paper's)
    loss_weights: str = "imagenet"  # its weights: "imagenet" | path to a state dict | "random" (seeded)
    content_layers: list[str] | None = None  # None: the loss network's defaults (dstray.dst.loss_net.LAYERS)
    style_layers: list[str] | None = None
    hist_layers: list[str] | None = None
    blend_sigma: float = 2.0  # fade (px) of the TransferNet output into S inside L; labels stay >= 3/4 generated
    area: AreaConfig = field(default_factory=AreaConfig)
    seed: int = 0  # seeds init, background order and area sampling
    device: str = "auto"  # "auto" | "cpu" | "cuda" | "cuda:1" ...
    log_every: int = 10  # steps between loss log lines
    checkpoint_every: int = 100  # steps between checkpoints (Ray Train reports at the same cadence)

    # fields that do not change the fitted model: they may differ when a fit is resumed or compared
    RESUME_FREE: ClassVar[tuple[str, ...]] = ("steps", "min_steps", "plateau_patience", "plateau_tol", "device",
                                              "log_every", "checkpoint_every", "heldout_every")


# --------------------------------------------------------------------------- generation
@dataclass
class GenerateConfig:
    """Generating a labelled dataset with Ray Data (one Parquet dataset)."""

    data: str | None = None  # dataset path (manifest/folder); None = the embedded sample
    models: str | None = None  # folder of DST checkpoints (<type>/model.pt); needed for generator "dst"
    generator: str = "dst"  # "dst" (the paper) | "histmatch" (first step only) | "copy" (paste + Gaussian blend)
    num_samples: int = 100  # exact number of rows requested
    seed: int = 0  # global seed; each sample's seed derives from it and its index
    type_weights: dict[str, float] | None = None  # relative frequency per defect type; None = balanced
    mode: str = "patch"  # "patch" (window around L) | "whole" (whole image, the paper's mode)
    patch_size: int = PATCH_SIZE  # window size in patch mode (grown to fit L)
    first_step: str = "relative"  # histmatch generator: "relative" | "absolute" (dst uses its model's setting)
    batch_size: int = 8  # rows per map_batches call
    num_actors: int = 0  # actor pool size; 0 = one per GPU, else one per 2 CPUs (at least 1)
    use_gpu: str = "auto"  # "auto" | "true" | "false"
    out: str = "runs/generated"  # output folder (Parquet dataset, rejects table, summary)
    area: AreaConfig = field(default_factory=AreaConfig)
    max_image_pixels: int | None = MAX_IMAGE_PIXELS  # backgrounds over width x height pixels are rejects; none = no limit
    roi: str | None = None  # region-of-interest mask for every background (resized to each); L lies wholly inside it
    areas: str | None = None  # folder of target-area masks, one per background by file name: each region is an L as drawn
    dst_strength: list[float] | None = None  # dst: per sample T(y') blended with y' at a strength drawn in [lo, hi]
    defects_per_image: str = "1"  # defects per sample: K, or a range LO-HI drawn per sample (e.g. 1-3); adds class_mask
    min_visibility: float = 0.0  # a sample whose label is less visible than this x its reference defect is a reject (0 = no check)
    contrast: list[float] | None = None  # LO,HI: inside L c x filled + (1-c) x S, c uniform in [LO,HI] per sample; none: c = 1


# --------------------------------------------------------------------------- segmentation
@dataclass
class DataPolicy:
    """How generated samples enter segmentation training; recorded with every run (``SegConfig.policy``).

    Each lever is one the field measured elsewhere (``../shared/notes/synthetic-data.md``): which
    generator feeds each type and how often a type is drawn (Synth4Seg), real images alone at the end
    (Tremblay et al. 2018), a lower loss weight and an unlabelled band along each generated label's
    edge (noisy synthetic pixels, FreeMask). The synthetic share of a batch is ``SegConfig.synthetic_fraction``.
    """

    generators: dict[str, str] | None = None  # per type: dst | histmatch | copy | mix (any) | none
    default_generator: str = "mix"  # what feeds the types `generators` does not name (mix = every generator given)
    type_shares: dict[str, float] | None = None  # relative share of the synthetic draws per type; None = by rows
    real_only_last: float = 0.0  # the last share of the steps draws real images only (0 = mixed to the end)
    synthetic_weight: float = 1.0  # loss weight of the pixels of generated windows (real ones: 1)
    ignore_band: int = 0  # pixels on either side of a generated label's edge that carry no loss
    min_visibility: float = 0.0  # drop generated rows whose label contrast < this x the type's reference (labels.py)
    area_family: str = "any"  # generated rows by the family of their area L: any | reference (warped reference masks)
    #                           | procedural (shapes drawn from the type's measured ranges; docs/areas.md)


@dataclass
class SegConfig:
    """Training one segmenter (Buttonlab or a baseline), paper §3.2 and §4.

    The defaults are the ``cpu`` preset (:mod:`dstray.presets`): what a user with 2 CPU cores
    should start from (about 15 minutes including the evaluations; README "Segmentation").
    """

    arch: str = "buttonlab"  # "buttonlab" | "deeplabv3plus" | "unet"
    backbone: str = "efficientnet_lite0"  # efficientnet_lite0 | resnet18 | resnet34 | resnet50 (paper: resnet50)
    weights: str = "imagenet"  # backbone weights: "imagenet" | path to a state-dict file | "random"
    window: int = 256  # side (px) of the square training windows cut at the images' own resolution
    window_context: int = 32  # px of unlabelled mirrored image around each training image that windows may cover
    #                           (= seg/evaluate.INFERENCE_PAD; chosen on MT val, docs/data-policy.md); 0 = image only
    crop_size: int = 128  # Buttonlab branch crop (partial-image input, Fig. 5), inside the window's image part; even
    center_fraction: float = 0.5  # at least this share of a batch's windows on defect images is centred on a defect pixel
    lr: float = 1e-3  # Adam learning rate (paper §4: 2e-3, for batch 8 over 120 epochs)
    batch_size: int = 8  # windows per step (paper §4: 8)
    steps: int = 300  # optimiser steps
    defect_weight: float = 3.0  # cross-entropy weight of defect pixels (background = 1); chosen on val (README)
    dice_weight: float = 1.0  # weight of the soft Dice loss of the defect class added to the cross-entropy (0 = off)
    augment: bool = True  # flips, 90-degree rotations, brightness/contrast jitter of each window (seg/data.py)
    synthetic: list[str] = field(default_factory=list)  # generated Parquet datasets to train on
    real_splits: list[str] = field(default_factory=list)  # real splits to train on ("reference", "train")
    real_limit: int | None = None  # use only N real samples, round-robin over defect types (paper Fig. 6)
    synthetic_fraction: float = 0.5  # share of each batch drawn from synthetic data when both are given
    # the defect-free share is real data: a comparison gives it to both rows (with and without generated samples)
    free_fraction: float = 0.25  # share of each batch cut from defect-free images (all-background labels); chosen
    #                              with the data policy on MT val (presets.chosen_policy; docs/data-policy.md)
    free_splits: list[str] = field(default_factory=lambda: ["background"])  # splits whose `free` rows feed it
    policy: DataPolicy = field(default_factory=DataPolicy)  # how the generated samples are drawn and weighted
    data: str | None = None  # dataset path for real splits and evaluation; None = embedded sample
    eval_split: str = "val"  # real split that selects the checkpoint and the threshold, every eval_every steps
    test_split: str | None = "test"  # real split scored once at the end with the selected model ("none": skip)
    eval_every: int = 300  # steps between evaluations on eval_split (and checkpoints); = steps: the end only
    threshold: float | None = None  # defect probability threshold; None = chosen on eval_split by pixel F1
    output_stride: int = 32  # Buttonlab on Lite0: 16 (last stages dilated, DeepLab v3+) | 32 (not dilated, cheaper)
    freeze_stages: int = 5  # first N encoder stages kept at their pretrained weights and BN statistics (Lite0 has 8,
    #                         ResNets 5; -1 = all; not applied with weights "random")
    channels_last: bool = True  # NHWC memory format for the network and its inputs (faster convolutions on CPU)
    ema: float = 0.98  # decay of an exponential moving average of the weights, evaluated and saved instead (0 = off)
    seed: int = 0  # seeds init, batch draws, windows, crops and augmentation
    device: str = "auto"  # "auto" | "cpu" | "cuda" | "cuda:1" ...

    # fields that may change when a training run is resumed (more steps, another cadence, device or test split)
    RESUME_FREE: ClassVar[tuple[str, ...]] = ("steps", "eval_every", "device", "test_split")


# --------------------------------------------------------------------------- helpers
def resolve_device(spec="auto"):
    """A config's ``device`` as a ``torch.device``: ``"auto"`` -> cuda when available, else cpu."""
    import torch

    if str(spec) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(spec)


def to_dict(cfg: Any) -> dict[str, Any]:
    """A config as a plain, JSON-able dict (what Ray receives)."""
    return dataclasses.asdict(cfg)


def _nested() -> dict[str, type]:
    """The config fields that hold another config, by name."""
    return {"area": AreaConfig, "dst": DSTConfig, "seg": SegConfig, "generate": GenerateConfig, "policy": DataPolicy}


def _added_later() -> dict[type, tuple[str, ...]]:
    """Fields added after outputs were keyed by their config (a generated dataset's fingerprint, the pipeline's
    stage keys, an experiment cell's digest, a DST fit's resume check). At their default they mean what the
    config meant before they existed, so :func:`without_later_defaults` leaves them out of its identity."""
    return {AreaConfig: ("family", "widen"), GenerateConfig: ("contrast",)}


def _drop_later(data: dict[str, Any], cls: type) -> dict[str, Any]:
    later, nested = _added_later().get(cls, ()), _nested()
    out = {}
    for key, value in data.items():
        if key in later and value == field_default(cls, key):
            continue
        out[key] = _drop_later(value, nested[key]) if key in nested and isinstance(value, dict) else value
    return out


def without_later_defaults(cfg: Any) -> dict[str, Any]:
    """:func:`to_dict` of ``cfg`` without the fields added later that are at their default (nested configs
    too): the config's identity, equal to what the same config gave before those fields existed."""
    return _drop_later(to_dict(cfg), type(cfg))


def from_dict(cls: type[T], data: dict[str, Any]) -> T:
    """Rebuild a config dataclass from :func:`to_dict` output; unknown keys are an error."""
    names = {f.name: f for f in dataclasses.fields(cls)}
    unknown = set(data) - set(names)
    if unknown:
        raise ValueError(f"unknown {cls.__name__} fields: {sorted(unknown)}; known: {sorted(names)}")
    nested = _nested()
    kwargs = {}
    for key, value in data.items():
        if key in nested and isinstance(value, dict):
            value = from_dict(nested[key], value)
        kwargs[key] = value
    return cls(**kwargs)


def save(cfg: Any, path: str | Path) -> None:
    Path(path).write_text(json.dumps(to_dict(cfg), indent=2, sort_keys=True) + "\n")


def load(cls: type[T], path: str | Path) -> T:
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ValueError(f"could not read the {cls.__name__} file {path}: {exc}") from exc
    return from_dict(cls, data)


def changed_fields(saved: dict[str, Any], cfg: Any, free: tuple[str, ...] | None = None) -> list[str]:
    """Fields of ``cfg`` whose value differs from ``saved`` (a :func:`to_dict`), except ``free``.

    ``free`` defaults to the config class's ``RESUME_FREE``: the fields that may change between
    a run and its resumption. A field added later (:func:`without_later_defaults`) that ``saved``
    lacks counts as its default.
    """
    free = getattr(type(cfg), "RESUME_FREE", ()) if free is None else free
    now, saved = without_later_defaults(cfg), _drop_later(saved, type(cfg))
    return sorted(k for k in to_dict(cfg) if k not in free and saved.get(k) != now.get(k))


def check_resumable(saved: dict[str, Any], cfg: Any, path: Any, free: tuple[str, ...] | None = None, *,
                    hint: str = "use another output folder, or delete the checkpoint to start over") -> None:
    """The one resume check: ValueError when the run at ``path`` was trained with other settings.

    ``saved`` is the config the run was started with (a :func:`to_dict`); fields in ``free``
    (default: the class's ``RESUME_FREE``) may differ. The message names the fields and ``hint``.
    """
    changed = changed_fields(saved, cfg, free)
    if changed:
        raise ValueError(f"{path} was trained with a different config ({', '.join(changed)} differ); {hint}")


def field_default(cls: type, name: str) -> Any:
    """The default value of field ``name`` of the dataclass ``cls``."""
    f = next(f for f in dataclasses.fields(cls) if f.name == name)
    return f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[misc]


def parse_value(text: str, annotation: str, default: Any) -> Any:
    """A config field's value from text (the CLI and Tune search spaces use this).

    ``annotation`` is the field's type as a string, ``default`` its default: ``none`` gives
    None where the type allows it; booleans take true/false/yes/no/1/0/on/off; dicts
    ``k=v,k=v`` (float values); lists ``a,b``; ints and floats by the type.
    """
    if text.lower() in ("none", "") and "None" in annotation:
        return None
    if isinstance(default, bool) or annotation.startswith("bool"):
        if text.lower() in ("1", "true", "yes", "on"):
            return True
        if text.lower() in ("0", "false", "no", "off"):
            return False
        raise ValueError(f"expected true/false, got {text!r}")
    if "dict" in annotation:
        value = str if "dict[str, str]" in annotation else float
        return {k.strip(): value(v.strip()) for k, v in (item.split("=") for item in text.split(","))}
    if "list[float]" in annotation:
        return [float(x) for x in text.split(",") if x]
    if "list" in annotation:
        return [x for x in text.split(",") if x]
    if annotation.startswith("int") or isinstance(default, int):
        return int(text)
    if annotation.startswith("float") or isinstance(default, float):
        return float(text)
    return text


# --------------------------------------------------------------------------- pipeline
@dataclass
class PipelineConfig:
    """The one-command pipeline: fit DST for every type -> generate -> train -> evaluate -> report."""

    data: str | None = None  # dataset path; None = the embedded sample
    out: str = "runs/pipeline"  # run folder (models/, generated/, seg/, eval/, report/)
    preset: str = "demo"  # the size preset the stage configs came from (smoke | demo | cpu | paper)
    generator: str = "policy"  # "policy": the chosen data policy (presets.chosen_policy) and a pool of each generator
    #                            it draws from | dst | histmatch | copy: that generator's pool alone
    num_samples: int = 300  # generated samples per pool (paper: 2167)
    use_gpu: str = "auto"  # "auto" | "true" | "false" for every Ray stage
    seed: int = 0  # the run's seed; every stage's seed is derived from it (dstray.seeds.stage_seeds)
    seeds: list[int] | None = None  # the segmenter stage once per seed (parallel Ray tasks): mean, std, every seed
    dst: DSTConfig = field(default_factory=DSTConfig)  # per-type DST fit (defect_type is set per type)
    seg: SegConfig = field(default_factory=SegConfig)  # segmenter training; synthetic/data filled in by the pipeline
    baseline: bool = True  # also train the same segmenter on its real splits alone (references if none), no synthetic
    generate: GenerateConfig = field(default_factory=GenerateConfig)  # generation settings (out/models filled in)
