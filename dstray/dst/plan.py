"""The plan of a generation run: every sample's defect type(s), background, reference and seed, fixed up front.

Row ``i`` of the plan fixes what sample ``i`` is before any work starts, so a shard's output
depends on its plan rows only (exactly once, reproducible; :mod:`dstray.dst.synth`).
"""

from __future__ import annotations

import numpy as np

from dstray.seeds import derive_seed


def plan_samples(
    *,
    num_samples: int,
    seed: int,
    defect_types: list[str],
    background_ids: list[str],
    reference_ids: dict[str, str],
    type_weights: dict[str, float] | None = None,
    defects_per_image: tuple[int, int] = (1, 1),
) -> list[dict]:
    """The exact list of samples to generate, one dict per sample.

    With ``defects_per_image=(lo, hi)`` and ``hi > 1`` every row also has ``defect_types`` and
    ``reference_ids`` (lists): K drawn uniformly in [lo, hi] with
    ``default_rng(derive_seed(seed, "defects", i))``, the row's ``defect_type`` first, the other K-1
    types drawn (with replacement) by the type weights (uniform when balanced). Single-defect
    plans are unchanged by this (the same rows as before the option existed).

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
    rows = [
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
    lo, hi = defects_per_image
    if not 1 <= lo <= hi:
        raise ValueError(f"defects per image must be 1 <= LO <= HI; got {lo}-{hi}")
    if hi > 1:
        p = w / w.sum() if type_weights else np.full(len(types), 1 / len(types))
        for r in rows:
            draw = np.random.default_rng(derive_seed(seed, "defects", r["index"]))
            k = int(draw.integers(lo, hi + 1))
            more = [types[j] for j in draw.choice(len(types), size=k - 1, p=p)] if k > 1 else []
            r["defect_types"] = [r["defect_type"], *more]
            r["reference_ids"] = [reference_ids[t] for t in r["defect_types"]]
    return rows


def parse_defects_per_image(text: str | int) -> tuple[int, int]:
    """``"2"`` -> (2, 2); ``"1-3"`` -> (1, 3); ValueError saying the accepted forms otherwise."""
    lo, sep, hi = str(text).strip().partition("-")
    try:
        bounds = (int(lo), int(hi) if sep else int(lo))
    except ValueError:
        bounds = (0, 0)
    if not 1 <= bounds[0] <= bounds[1]:
        raise ValueError(f"--defects-per-image must be a count K >= 1 or a range LO-HI (1 <= LO <= HI, e.g. 1-3); "
                         f"got {text!r}")
    return bounds
