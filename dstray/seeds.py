"""One way to derive a seed: ``derive_seed(seed, *keys)``.

Every random stream of dstray that is not the run's own seed comes from here, keyed by
what it is for, so that streams never collide and do not depend on which other streams
a run has: the seed of each stage of a run (:func:`stage_seeds`), a generated sample's seed
(``derive_seed(seed, index)``), the seed of defect ``j`` of a sample (:func:`defect_seed`), the background order of a DST fit per pass
(``derive_seed(seed, "dst-backgrounds", epoch)``), a Ray Train worker's batch stream, the
report's choices, the realism score's subsamplings. The value is stable across machines, Python
versions and processes (sha256, not ``hash``).
"""

from __future__ import annotations

import hashlib

SEED_MASK = 0x7FFF_FFFF_FFFF_FFFF  # 63 bits: a valid seed for torch, numpy and Python alike


def derive_seed(seed: int, *keys: object) -> int:
    """A seed in [0, 2**63) from ``seed`` and ``keys`` (ints or strings, in order).

    The first 8 bytes (little endian) of sha256 of ``"dstray:" + ":".join(map(str, (seed, *keys)))``.
    ``derive_seed(seed, index)`` is the per-sample seed of generation (the Parquet ``seed`` column).
    """
    text = "dstray:" + ":".join(str(k) for k in (seed, *keys))
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "little") & SEED_MASK


STAGES = ("dst", "generate", "seg", "report")  # the stages of a run (pipeline, experiments), each seeded from the run's


def stage_seeds(seed: int) -> dict[str, int]:
    """The seed of every stage of a run whose seed is ``seed``: ``derive_seed(seed, stage)`` for each of
    :data:`STAGES`. The run's seed is their one owner (``dstray pipeline --seed s``, the cells of seed s of
    ``dstray experiment --seeds``; ``pipeline --seeds k`` trains segmenter k with ``stage_seeds(k)["seg"]``); the
    seeds inside a run's sub-configs are replaced by these."""
    return {stage: derive_seed(seed, stage) for stage in STAGES}


def defect_seed(seed: int, j: int) -> int:
    """The seed of defect ``j`` of a generated sample whose seed is ``seed``: its area L and its DST strength.

    Defect 0 uses the sample's own seed (so a single-defect sample is what ``stylize --seed`` draws),
    defect ``j`` >= 1 ``derive_seed(seed, "defect", j)``. The one rule: the area sampler
    (:meth:`dstray.dst.synth.Synthesizer.sample_areas`) and the fill (:func:`dstray.dst.shards.make_rows`) use it.
    """
    return seed if j == 0 else derive_seed(seed, "defect", j)
