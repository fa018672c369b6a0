"""The checks of a segmentation config before any work (:func:`check_inputs`), and what a run reads from it.

Fail fast, with what to do: the arch, backbone, weights and sizes, the splits (training on a split that
selects or reports would make the scores dishonest), the data policy; the synthetic count's warning is
given here, on every path (local, Ray Train, Tune, seeds).
"""

from __future__ import annotations

import logging
from dataclasses import replace

from dstray import storage
from dstray.config import ARCHS, SegConfig
from dstray.data import load_dataset
from dstray.data import FREE
from dstray.policy import batch_counts, check_policy
from dstray.seg.encoders import check_weights

log = logging.getLogger("dstray")


def check_inputs(cfg: SegConfig) -> SegConfig:
    """Fail fast, before any work, with what to do; returns ``cfg`` with resolved, absolute paths.

    Checks the arch, backbone, weights and sizes, the evaluation, test and real training splits
    (training on a split that selects or reports would make the scores dishonest), and that there
    is training data; generated datasets are given as Parquet locations (:func:`dstray.storage.generated_parquet`).
    Paths are made absolute: Ray workers run in other working directories.
    """
    if cfg.arch not in ARCHS:
        raise ValueError(f"--arch must be one of {ARCHS}; got {cfg.arch!r}")
    check_weights(cfg.backbone, cfg.weights)
    if cfg.steps < 1 or cfg.eval_every < 1 or cfg.batch_size < 1:
        raise ValueError(f"--steps, --eval-every and --batch-size must be >= 1; got {cfg.steps}, {cfg.eval_every}, "
                         f"{cfg.batch_size}")
    if cfg.arch == "deeplabv3plus" and cfg.batch_size < 2:
        raise ValueError("DeepLab v3+ needs --batch-size >= 2 (batch norm after ASPP's global pooling)")
    if cfg.window < 32 or cfg.window % 2:
        raise ValueError(f"--window must be an even number of pixels >= 32; got {cfg.window}")
    if cfg.arch == "buttonlab" and not 2 <= cfg.crop_size <= cfg.window:
        raise ValueError(f"--crop-size must be in [2, --window {cfg.window}]; got {cfg.crop_size}")
    if not 0.0 <= cfg.center_fraction <= 1.0:
        raise ValueError(f"--center-fraction must be in [0, 1]; got {cfg.center_fraction}")
    if cfg.defect_weight <= 0 or cfg.dice_weight < 0:
        raise ValueError(f"--defect-weight must be > 0 and --dice-weight >= 0; got {cfg.defect_weight}, "
                         f"{cfg.dice_weight}")
    if cfg.threshold is not None and not 0.0 < cfg.threshold < 1.0:
        raise ValueError(f"--threshold must be in (0, 1) or none (chosen on --eval-split); got {cfg.threshold}")
    dataset = load_dataset(cfg.data)
    known = sorted({s.split for s in dataset.samples})
    if cfg.eval_split not in known:
        hint = (" (a dataset gets a 'val' split carved from its 'test' split; add test rows, or val rows, to "
                "its splits.csv)" if cfg.eval_split == "val" else "")
        raise ValueError(f"{dataset.root}: the evaluation split {cfg.eval_split!r} has no samples{hint}; "
                         f"choose --eval-split among {known}")
    if cfg.test_split and cfg.test_split not in known:
        raise ValueError(f"{dataset.root}: the test split {cfg.test_split!r} has no samples; choose --test-split "
                         f"among {known}, or none")
    for name in cfg.real_splits:
        if name not in known:
            raise ValueError(f"{dataset.root}: the real training split {name!r} has no samples; "
                             f"choose --real-splits among {known}")
        if name in (cfg.eval_split, cfg.test_split):
            raise ValueError(f"--real-splits {name}: that split selects (--eval-split) or reports (--test-split) the "
                             "model; training on it would make the scores meaningless. Train on reference, train, ...")
    if not cfg.synthetic and not cfg.real_splits:
        raise ValueError("no training data: give generated datasets (--synthetic DIR[,DIR]) and/or real splits "
                         "(--real-splits reference,train)")
    check_policy(cfg)
    if cfg.free_fraction:
        for name in cfg.free_splits:
            if name in (cfg.eval_split, cfg.test_split):
                raise ValueError(f"--free-splits {name}: that split selects (--eval-split) or reports (--test-split) "
                                 "the model; take defect-free images from background (or another split)")
        if not any(s.defect_type == FREE for name in cfg.free_splits for s in dataset.split(name)):
            log.warning("%s: --free-splits %s hold no defect-free (type free) rows: training without the defect-free "
                        "share (--free-fraction %s); name splits that hold some (background) to use it", dataset.root,
                        ",".join(cfg.free_splits), cfg.free_fraction)

    free_real = [s for name in cfg.real_splits for s in dataset.split(name) if s.defect_type == FREE]
    if free_real:
        n_real = sum(len(dataset.split(name)) for name in cfg.real_splits)
        log.warning("--real-splits %s: %d defect-free images are drawn like defect images (%.0f %% of the real "
                    "draws); to show the segmenter clean parts at a share you choose, use --free-fraction (with "
                    "--free-splits) instead", ",".join(cfg.real_splits), len(free_real), 100 * len(free_real) / n_real)
    if cfg.synthetic and synthetic_per_batch(cfg) == 0:
        log.warning("round(--synthetic-fraction %s x --batch-size %d) = 0: the generated datasets are not used",
                    cfg.synthetic_fraction, cfg.batch_size)
    return replace(cfg, data=storage.absolute(cfg.data),
                   synthetic=[storage.absolute(p) for p in storage.generated_parquet(cfg.synthetic)])


def synthetic_per_batch(cfg: SegConfig) -> int:
    """How many items of each (per-worker) batch of ``cfg`` are generated samples while they are mixed in
    (:func:`dstray.policy.batch_counts`, the one rule)."""
    return batch_counts(cfg, real=bool(cfg.real_splits), synthetic=bool(cfg.synthetic),
                        free=cfg.free_fraction > 0).synthetic


def eval_samples(cfg: SegConfig, split: str | None = None) -> list:
    """The real samples of ``split`` (default ``cfg.eval_split``) of ``cfg.data``."""
    return load_dataset(cfg.data).split(split or cfg.eval_split)
