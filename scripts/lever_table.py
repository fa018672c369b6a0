"""The lever table of the data-claim runs: one row per `train-seg --seeds` run folder (its `seeds.json`), with
val and test means, standard deviations and every seed, micro and macro pixel F1, image AUROC and false alarms
at 95 % detection; and the per-type table. Reads only the `seeds.json` files it is given (committed copies live
in results/<dataset>/seeds/), so re-running it on a clean clone gives the same Markdown.

    python scripts/lever_table.py LABEL=PATH/seeds.json ... [--baseline LABEL] [--out FILE.md]
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

TYPES = ("blowhole", "break", "crack", "fray", "uneven")


def _ms(values: list[float]) -> str:
    if not values:
        return "-"
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.fmean(values):.3f} ± {sd:.3f}"


def _seeds(split: dict, key: str) -> list[float]:
    return [split["per_seed"][str(s)][key] for s in split["seeds"] if split["per_seed"][str(s)].get(key) is not None]


def render(rows: list[tuple[str, dict]], baseline: str | None) -> str:
    base = dict(rows).get(baseline) if baseline else None
    out = ["| row | seeds | val F1 | test F1 | test F1, each seed | test macro F1 | Δ micro | Δ macro "
           "| image AUROC | false alarms at 95 % |", "|" + "---|" * 10]
    for label, d in rows:
        val, test = d["val"], d["test"]
        f1, mf1 = _seeds(test, "f1"), _seeds(test, "macro_f1")
        dm = dM = "-"
        if base is not None and label != baseline:
            dm = f"{statistics.fmean(f1) - statistics.fmean(_seeds(base['test'], 'f1')):+.3f}"
            dM = f"{statistics.fmean(mf1) - statistics.fmean(_seeds(base['test'], 'macro_f1')):+.3f}"
        out.append(f"| {label} | {','.join(map(str, test['seeds']))} | {_ms(_seeds(val, 'f1'))} | **{_ms(f1)}** | "
                   f"{', '.join(f'{v:.3f}' for v in f1)} | {_ms(mf1)} | {dm} | {dM} | {_ms(_seeds(test, 'auroc'))} | "
                   f"{_ms(_seeds(test, 'fpr_at_95'))} |")
    out += ["", "Per type, test pixel F1 (mean over the seeds):", "",
            "| row | " + " | ".join(TYPES) + " | macro |", "|" + "---|" * (len(TYPES) + 2)]
    for label, d in rows:
        cells = [f"{statistics.fmean(_seeds(d['test'], 'f1/' + t)):.3f}" for t in TYPES]
        out.append(f"| {label} | " + " | ".join(cells) + f" | {statistics.fmean(_seeds(d['test'], 'macro_f1')):.3f} |")
    return "\n".join(out) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("rows", nargs="+", help="LABEL=PATH of a seeds.json")
    ap.add_argument("--baseline", help="the LABEL the deltas are taken against")
    ap.add_argument("--out", help="write the Markdown here (default: print it)")
    args = ap.parse_args()
    rows = [(label, json.loads(Path(path).read_text())) for label, _, path in (r.rpartition("=") for r in args.rows)]
    text = render(rows, args.baseline)
    if args.out:
        Path(args.out).write_text(text)
    else:
        print(text, end="")


if __name__ == "__main__":
    main()
