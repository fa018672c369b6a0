"""One config over several seeds: mean, standard deviation and every seed's figure (``SEG/seeds.json``).

One run is not a result: the same config scored test F1 0.568 and 0.708 with only the thread
count changed. Every comparison in dstray is made between :func:`summarise` outputs. Figures
per seed come from the run's scores on ``test`` (and ``val``): pixel F1 (micro, the paper's
eq. 8), macro F1 (mean over types), F1 per type, image AUROC, the false-alarm rate at 95 %
detection, and the image decision's detection / false-alarm rates. The standard deviation is
the sample one (``ddof=1``); with one seed it is undefined (NaN, ``null`` in JSON).
"""

from __future__ import annotations

import math

import numpy as np

FIGURES = ("f1", "macro_f1", "auroc", "fpr_at_95", "detection_rate", "false_alarm_rate")  # one row each in the table


def seed_figures(result: dict | None) -> dict:
    """The figures of one run's scores (:func:`dstray.seg.evaluate.evaluate`'s dict), flat: name -> float."""
    if not result:
        return {}
    image = result.get("image", {})
    out = {"f1": result["pixel"]["f1"], "precision": result["pixel"]["precision"],
           "recall": result["pixel"]["recall"], "macro_f1": (result.get("macro") or {}).get("f1", math.nan),
           "auroc": image.get("auroc", math.nan), "fpr_at_95": image.get("fpr_at_95", math.nan),
           "detection_rate": image.get("detection_rate", math.nan),
           "false_alarm_rate": image.get("false_alarm_rate", math.nan)}
    for t, r in (result.get("per_type") or {}).items():
        out[f"f1/{t}"] = r["f1"]
    return {k: float(v) if v is not None else math.nan for k, v in out.items()}


def _stats(values: list[float]) -> dict:
    arr = np.array(values, dtype=np.float64)
    arr = arr[~np.isnan(arr)]
    if not len(arr):
        return {"mean": math.nan, "std": math.nan, "n": 0}
    return {"mean": float(arr.mean()), "std": float(arr.std(ddof=1)) if len(arr) > 1 else math.nan, "n": int(len(arr))}


def summarise(runs: dict[int, dict], split: str = "test") -> dict:
    """``runs``: seed -> ``{"val": scores, "test": scores, "seconds": float, ...}`` (train_local's return).

    Returns ``{"split", "seeds": [...], "per_seed": {seed: figures}, "mean": {...}, "std": {...}, "n": {...}}``
    over every figure of :func:`seed_figures` on ``split``, plus each run's wall seconds.
    """
    seeds = sorted(runs)
    per_seed = {s: {**seed_figures(runs[s].get(split)), "seconds": float(runs[s].get("seconds", math.nan))}
                for s in seeds}
    keys = sorted({k for fig in per_seed.values() for k in fig}, key=lambda k: (k.startswith("f1/"), k))
    stats = {k: _stats([per_seed[s].get(k, math.nan) for s in seeds]) for k in keys}
    return {"split": split, "seeds": seeds, "per_seed": {str(s): per_seed[s] for s in seeds},
            "mean": {k: v["mean"] for k, v in stats.items()}, "std": {k: v["std"] for k, v in stats.items()},
            "n": {k: v["n"] for k, v in stats.items()}}


def _cell(x: float) -> str:
    return "   -  " if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:6.3f}"


def format_table(summary: dict, title: str = "") -> str:
    """A terminal table: one row per figure (overall, macro, per type, image level), mean +- std, then each seed."""
    seeds = summary["seeds"]
    types = [k for k in summary["mean"] if k.startswith("f1/")]
    rows = [k for k in ("f1", "macro_f1") if k in summary["mean"]] + types + \
        [k for k in ("auroc", "fpr_at_95", "detection_rate", "false_alarm_rate") if k in summary["mean"]]
    names = {"f1": "pixel F1", "macro_f1": "macro F1", "auroc": "image AUROC", "fpr_at_95": "FPR at 95% det.",
             "detection_rate": "detection", "false_alarm_rate": "false alarms"}
    head = f"{'':<18}{'mean':>7} {'std':>6}  " + " ".join(f"{'seed ' + str(s):>7}" for s in seeds)
    lines = ([title] if title else []) + [f"{summary['split']}, {len(seeds)} seed(s)", head, "-" * len(head)]
    for k in rows:
        label = names.get(k, "  " + k[3:] if k.startswith("f1/") else k)
        cells = " ".join(f"{_cell(summary['per_seed'][str(s)].get(k, math.nan)):>7}" for s in seeds)
        lines.append(f"{label:<18}{_cell(summary['mean'][k]):>7} {_cell(summary['std'][k]):>6}  {cells}")
    secs = [summary["per_seed"][str(s)].get("seconds", math.nan) for s in seeds]
    lines.append(f"{'wall minutes':<18}{_cell(float(np.nanmean(secs)) / 60 if secs else math.nan):>7} {'':>6}  "
                 + " ".join(f"{_cell(x / 60):>7}" for x in secs))
    return "\n".join(lines)
