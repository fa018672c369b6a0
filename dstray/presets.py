"""Every size preset in one place: DST's, segmentation's, the pipeline's and the experiments'.

One name means one size of a stage wherever it is used: ``fit-dst --preset cpu``, the ``cpu``
pipeline and the ``cpu`` experiments fit the same DST (:func:`dst_preset`); ``train-seg --preset
cpu``, the ``cpu`` pipeline and the ``cpu`` experiments train the same segmenter (:func:`seg_preset`).

- ``smoke``: seconds per stage; for tests and for checking an installation (DST: 6 steps of one
  32-px window; the segmenter is Buttonlab on EfficientNet-Lite0 with its ImageNet weights, 64 px
  windows, 4 steps).
- ``demo`` (DST and the pipeline; the default of ``dstray pipeline``): the first run on the
  embedded sample, sized to finish in about 10 minutes on 2 CPU cores: DST fits of 60 steps (4
  held-out backgrounds, 64 px windows), 160 generated samples, and twice the segmenter (Buttonlab
  on ImageNet EfficientNet-Lite0, 192 px windows, 100 steps, evaluated on ``val`` every 50): once
  on the references + the generated samples, once on the references alone.
- ``cpu``: what a user with 2 CPU cores should start from: the ``DSTConfig`` and ``SegConfig``
  defaults. DST: 96 px windows, batch 4, 16 held-out backgrounds, early stopping between 100 and
  400 steps (about 3-5 minutes a type on Magnetic Tile, docs/dst.md). Segmentation: Buttonlab on
  ImageNet EfficientNet-Lite0, 256 px windows at native resolution, batch 8, 300 steps, CE weight
  3 + soft Dice, evaluated on ``val`` every 100 (about 15 minutes on 2 cores, docs/segmentation.md).
- ``paper``: the paper's settings (§4) for GPU clusters: whole-image DST with 10 epochs over
  the backgrounds, 2167 generated samples, Buttonlab ResNet-50 (ImageNet), 120 epochs of batch 8
  at lr 2e-3; the loss, windows and selection on ``val`` are dstray's (the paper's plain
  cross-entropy is ``--defect-weight 1 --dice-weight 0``).
"""

from __future__ import annotations

import dataclasses

from dstray.config import AreaConfig, DataPolicy, DSTConfig, GenerateConfig, PipelineConfig, SegConfig

PRESETS = ("smoke", "cpu", "paper")  # segmentation and experiment presets
PIPELINE_PRESETS = ("smoke", "demo", "cpu", "paper")  # the pipeline's (``demo``: its default, the first run)
DST_PRESETS = PIPELINE_PRESETS  # DST's: one per pipeline size

# paper §4, shared by the pipeline and the experiments
PAPER_SAMPLES = 2167  # generated samples

# how the generated pools of the experiments and the pipeline are made: half the areas warped reference masks, half
# procedural shapes (docs/areas.md), every defect at a contrast drawn in [0.5, 1] x its generator's (fainter
# defects, labelled: no single contrast marks a defect); set a priori, not searched (a pool is made once)
POOL_AREA_FAMILY = "mix"
POOL_CONTRAST = (0.5, 1.0)


def pool_generate(**overrides) -> GenerateConfig:
    """The generation settings of a pool (pipeline and experiments): both area families, the pools' contrast."""
    return GenerateConfig(area=AreaConfig(family=POOL_AREA_FAMILY), contrast=list(POOL_CONTRAST), **overrides)


def dst_preset(name: str, **overrides) -> DSTConfig:
    """The DST fit settings of preset ``name`` (``cpu`` = the ``DSTConfig`` defaults), with ``overrides``."""
    if name == "smoke":
        cfg = DSTConfig(steps=6, batch_size=1, patch_size=32, checkpoint_every=6, log_every=2)
    elif name == "demo":
        cfg = DSTConfig(steps=60, min_steps=60, heldout=4, heldout_every=20, warmup_steps=20, batch_size=4,
                        patch_size=64, checkpoint_every=20, log_every=10)
    elif name == "cpu":
        cfg = DSTConfig()
    elif name == "paper":
        cfg = DSTConfig(steps=600, batch_size=4, patch_size=None, whole_size=256,  # 10 epochs x 238 bgs / 4
                        loss_weights="imagenet", checkpoint_every=100)
    else:
        raise _unknown(name, DST_PRESETS)
    return dataclasses.replace(cfg, **overrides)


def _paper_seg() -> SegConfig:
    return SegConfig(backbone="resnet50", weights="imagenet", window=512, crop_size=256, lr=2e-3,  # paper §4
                     steps=32500, eval_every=2700, batch_size=8)  # 120 epochs x 2167 / 8


def seg_preset(name: str, **overrides) -> SegConfig:
    """The segmentation settings of preset ``name`` (``cpu`` = the ``SegConfig`` defaults), with ``overrides``."""
    if name == "smoke":
        cfg = SegConfig(window=64, crop_size=32, steps=4, eval_every=4, batch_size=2)
    elif name == "cpu":
        cfg = SegConfig()
    elif name == "paper":
        cfg = _paper_seg()
    else:
        raise _unknown(name)
    return dataclasses.replace(cfg, **overrides)


def _unknown(name: str, choices: tuple[str, ...] = PRESETS) -> ValueError:
    return ValueError(f"unknown preset {name!r}; choose one of {', '.join(choices)}")


def pipeline_preset(name: str, **overrides) -> PipelineConfig:
    """The stage sizes of the one-command pipeline for preset ``name``, with ``overrides`` applied.

    Every preset but ``paper`` trains the segmenter on the references + the generated samples (the
    paper: generated only); the baseline run (``PipelineConfig.baseline``) drops the generated ones.
    """
    refs = ["reference"]
    if name == "smoke":
        cfg = PipelineConfig(
            preset=name, num_samples=10,
            dst=dst_preset(name),
            generate=pool_generate(num_actors=1),  # the smoke experiments' generation (one actor: as fast)
            seg=seg_preset(name, real_splits=refs),
        )
    elif name == "demo":
        cfg = PipelineConfig(
            preset=name, num_samples=160,
            dst=dst_preset(name),
            generate=pool_generate(patch_size=64),
            seg=seg_preset("cpu", window=192, steps=100, eval_every=50, real_splits=refs),
        )
    elif name == "cpu":
        cfg = PipelineConfig(
            preset=name, num_samples=300,
            dst=dst_preset(name),
            generate=pool_generate(),
            seg=seg_preset(name, real_splits=refs),
        )
    elif name == "paper":
        cfg = PipelineConfig(preset=name, num_samples=PAPER_SAMPLES, dst=dst_preset(name),
                             generate=pool_generate(mode="whole", batch_size=16), seg=seg_preset(name))
    else:
        raise _unknown(name, PIPELINE_PRESETS)
    return dataclasses.replace(cfg, **overrides)


def chosen_policy() -> DataPolicy:
    """The data policy of the experiments' "+ policy" cells, Figure 6's "with generated", the samples
    experiment, the pipeline and its report; set here, in one place (docs/data-policy.md says how it was chosen).

    Chosen on Magnetic Tile ``val`` (issue 23): search trial ``ce309_00004`` of ``dstray tune --search data``
    (16 trials, ASHA), the best ``val`` mean over 3 seeds of the search's top three (0.464 +- 0.025; the runner-up,
    0.462, was one generator for ``uneven``): generated ``break`` from DST, ``crack`` and ``uneven`` pasted
    (copy), none for ``blowhole`` and ``fray``; procedural areas only, labels at least half as visible as the
    reference's, generated pixels at loss weight 0.5 with a 2-px unlabelled band on their edge. Types it does
    not name (another dataset's) draw from every pool given (``mix``). Its defect-free share is
    :data:`dstray.config.SegConfig.free_fraction`'s default (0.25, chosen with it) and its synthetic share
    :data:`CHOSEN_SYNTHETIC_FRACTION`. Figures: ``results/magnetic-tile/``, ``docs/data-policy.md``.
    """
    return DataPolicy(generators={"blowhole": "none", "break": "dst", "crack": "copy", "fray": "none",
                                  "uneven": "copy"},
                      default_generator="mix", area_family="procedural", synthetic_weight=0.5, ignore_band=2,
                      min_visibility=0.5)


CHOSEN_SYNTHETIC_FRACTION = 0.125  # the chosen policy's synthetic share of a batch (search trial ce309_00004)


def with_policy(seg: SegConfig, policy: DataPolicy | None = None, *, generator: str | None = None) -> SegConfig:
    """``seg`` trained under ``policy`` (default :func:`chosen_policy`, with :data:`CHOSEN_SYNTHETIC_FRACTION`).

    ``generator``: the same policy with one generator feeding every type it feeds (types it gives ``none``
    stay without generated rows): the single-generator rows beside the policy (Table 1, the lever table).
    The defect-free share is real data, ``seg``'s own (``SegConfig.free_fraction``), in every row alike.
    """
    chosen = policy is None
    policy = chosen_policy() if chosen else policy
    if generator is not None:
        named = {t: ("none" if g == "none" else generator) for t, g in (policy.generators or {}).items()}
        policy = dataclasses.replace(policy, generators=named or None,
                                     default_generator="none" if policy.default_generator == "none" else generator)
    share = CHOSEN_SYNTHETIC_FRACTION if chosen else seg.synthetic_fraction
    return dataclasses.replace(seg, policy=policy, synthetic_fraction=share)


@dataclasses.dataclass
class ExperimentPreset:
    """Sizes of the paper's experiments (``dstray experiment table1|fig6|samples``)."""

    name: str
    dst: DSTConfig  # DST fit per type
    num_samples: int  # generated samples per generator pool (paper: 2167)
    seg: SegConfig  # every segmentation run (arch, data and limits set per run)
    real_counts: tuple[int | None, ...]  # fig6: real train samples added to the references (None = all)
    sample_counts: tuple[int, ...] = (100, 300, 1000)  # samples: generated samples per generator pool
    area_family: str = POOL_AREA_FAMILY  # the pools' target areas: both families, so a policy can pick either
    contrast: list[float] | None = dataclasses.field(default_factory=lambda: list(POOL_CONTRAST))  # per sample


def experiment_preset(name: str) -> ExperimentPreset:
    """``smoke`` (tests), ``cpu`` (a few hours per experiment on 2 cores), ``paper`` (GPUs, §4 settings).

    Every DST fit and segmentation run uses the preset of the same name (:func:`dst_preset`, :func:`seg_preset`).
    Figure 6 adds 0, 10, 25 and all (77 on Magnetic Tile) real ``train`` images to the references.
    """
    if name == "smoke":
        return ExperimentPreset(name, dst_preset(name), 10,
                                seg_preset(name), (0, 2), (4, 10))
    if name == "cpu":
        return ExperimentPreset(name, dst_preset(name), 300,
                                seg_preset(name), (0, 10, 25, None))
    if name == "paper":
        return ExperimentPreset(name, dst_preset(name), PAPER_SAMPLES, seg_preset(name), (0, 10, 25, None))
    raise _unknown(name)
