"""The pixel threshold's rule, measured on trained segmenters: best micro F1 on `val` (today's rule) or best macro F1.

    python scripts/threshold_rule.py --data ../shared/data/magnetic-tile LABEL=RUN/seed-0/model.pt ... [--json OUT]

For each model: one pass over `val` and `test` (whole images, as `dstray evaluate`), the threshold of each rule
chosen on `val` only, then `test` scored at it: micro and macro pixel F1 and each type's. Rows with the same
LABEL prefix before the last `/` are averaged (mean, sample std over the models, every model shown).
"""

from __future__ import annotations

import argparse
import json
import statistics

import numpy as np
import torch

from dstray.data import FREE, load_dataset
from dstray.seg.evaluate import choose_threshold, collect, scores_at
from dstray.seg.metrics import macro
from dstray.seg.train import load_segmenter


def choose(probs, rule: str) -> float:
    """The threshold of the best F1 of ``rule`` on ``probs`` (lowest on a tie): ``micro`` is the product's own rule
    (:func:`dstray.seg.evaluate.choose_threshold`); ``macro`` the unweighted mean over the defect types."""
    if rule == "micro":
        return choose_threshold(probs)[0]
    types = np.array(probs.types)
    rows = {t: torch.from_numpy(types == t) for t in sorted(set(probs.types) - {FREE})}
    curve = [macro({t: probs.counts(j, r) for t, r in rows.items()})["f1"] for j in range(len(probs.edges))]
    best = max(range(len(curve)), key=lambda j: (curve[j], -j))
    return float(probs.edges[best])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("models", nargs="+", help="LABEL=path/to/model.pt")
    p.add_argument("--data", required=True)
    p.add_argument("--json", default=None)
    args = p.parse_args()
    torch.set_num_threads(2)
    ds = load_dataset(args.data)
    val, test = ds.split("val"), ds.split("test")
    out = []
    for spec in args.models:
        label, path = spec.split("=", 1)
        model, _, stored = load_segmenter(path)
        pv, pt = collect(model, val, figure_images=0), collect(model, test, figure_images=0)
        row = {"label": label, "model": path, "stored_threshold": stored}
        for rule in ("micro", "macro"):
            t = choose(pv, rule)
            v, s = scores_at(pv, t), scores_at(pt, t)
            row[rule] = {"threshold": t, "val_f1": v["pixel"]["f1"], "val_macro": v["macro"]["f1"],
                         "test_f1": s["pixel"]["f1"], "test_macro": s["macro"]["f1"],
                         "test_per_type": {k: c["f1"] for k, c in s["per_type"].items()}}
        out.append(row)
        print(f"{label:<28} " + "  ".join(
            f"{r}: t={row[r]['threshold']:.2f} val {row[r]['val_f1']:.3f}/{row[r]['val_macro']:.3f} "
            f"test {row[r]['test_f1']:.3f}/{row[r]['test_macro']:.3f}" for r in ("micro", "macro")), flush=True)
    groups: dict[str, list[dict]] = {}
    for row in out:
        groups.setdefault(row["label"].rpartition("/")[0] or row["label"], []).append(row)
    print("\nmean +- std over the models of each group (test micro / macro F1; val macro F1):")
    for name, rows in groups.items():
        for rule in ("micro", "macro"):
            def ms(key):
                xs = [r[rule][key] for r in rows]
                return f"{statistics.mean(xs):.3f} +- {statistics.stdev(xs) if len(xs) > 1 else 0:.3f}"
            print(f"  {name:<24} rule {rule:<5}: test micro {ms('test_f1')}, test macro {ms('test_macro')}, "
                  f"val macro {ms('val_macro')}; each: " + ", ".join(f"{r[rule]['test_macro']:.3f}" for r in rows))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=1)


if __name__ == "__main__":
    main()
