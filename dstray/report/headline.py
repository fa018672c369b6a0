"""The headline of a pipeline run: pixel F1 of the segmenter trained with the generated samples
beside the same segmenter trained without them, on the real test split; and a contact sheet.

Both numbers come from the evaluation files the pipeline writes::

    RUN/eval/eval.json       the segmenter trained on its real splits + the generated samples
    RUN/eval-ref/eval.json   the same config trained on its real splits alone (the baseline run)

:func:`read_headline` is what the pipeline prints at its end (:func:`format_headline`) and what the
report's first section shows (:func:`headline_section`), so the two never disagree.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from dstray.report.html import Page, esc, not_run, score, table

RUNS = (("eval", "generated"), ("eval-ref", "baseline"))  # evaluation folder, role
SPLIT_NAMES = {"reference": "references"}


def _splits(cfg: dict) -> str:
    names = [SPLIT_NAMES.get(s, f"{s} split") for s in (cfg.get("real_splits") or ["reference"])]
    return " + ".join(names)


def labels(pipeline: dict) -> dict[str, str]:
    """What each run was trained on, from the pipeline's config ("references + 160 generated", "references only";
    with a defect-free share: "references + defect-free tiles + 160 generated", "references + defect-free tiles")."""
    config = pipeline.get("config") or {}
    seg = config.get("seg") or {}
    n = config.get("num_samples")
    gen = f"{n} generated" if n is not None else "generated samples"
    real = seg.get("real_splits") or []
    if seg.get("free_fraction"):  # the defect-free share is real data both runs have (SegConfig.free_fraction)
        return {"generated": f"{_splits(seg)} + defect-free tiles + {gen}" if real else f"{gen} + defect-free tiles",
                "baseline": f"{_splits(seg)} + defect-free tiles"}
    return {"generated": f"{_splits(seg)} + {gen}" if real else f"{gen} only",
            "baseline": f"{_splits(seg)} only"}


def read_headline(run: str | Path, pipeline: dict | None = None) -> dict | None:
    """``{"split", "n_images", "types", "rows": [{"run", "label", "f1", "macro_f1", "per_type": {type: f1}}]}``;
    one row per evaluation present (with generated first), None when neither is."""
    run = Path(run)
    names = labels(pipeline or {})
    rows, split, n_images, types = [], None, None, []
    for folder, role in RUNS:
        path = run / folder / "eval.json"
        if not path.exists():
            continue
        ev = json.loads(path.read_text(encoding="utf-8"))
        per_type = {t: r.get("f1") for t, r in (ev.get("per_type") or {}).items()}
        types += [t for t in per_type if t not in types]
        split, n_images = split or ev.get("split"), n_images or ev.get("n_images")
        rows.append({"run": folder, "label": names[role], "f1": (ev.get("pixel") or {}).get("f1"),
                     "macro_f1": (ev.get("macro") or {}).get("f1"), "per_type": per_type,
                     "threshold": ev.get("threshold")})
    if not rows:
        return None
    return {"split": split or "test", "n_images": n_images, "types": types, "rows": rows}


def _num(v) -> str:
    return "n/a" if v is None else f"{float(v):.3f}"


def format_headline(head: dict) -> list[str]:
    """The headline as text lines (the pipeline's final table)."""
    width = max(len("segmenter trained on"), *(len(r["label"]) for r in head["rows"]))
    cols = ["F1", "macro", *head["types"]]
    lines = [f"pixel F1 on the real {head['split']} split ({head['n_images']} images, threshold chosen on val):",
             f"  {'segmenter trained on':<{width}}  " + " ".join(f"{c:>8}" for c in cols)]
    for r in head["rows"]:
        vals = [r["f1"], r["macro_f1"], *[r["per_type"].get(t) for t in head["types"]]]
        lines.append(f"  {r['label']:<{width}}  " + " ".join(f"{_num(v):>8}" for v in vals))
    return lines


def headline_table(head: dict) -> str:
    header = ["segmenter trained on", "pixel F1", "macro F1", *[f"F1 {t}" for t in head["types"]]]
    rows = [[r["label"], score(r["f1"]), score(r["macro_f1"]), *[score(r["per_type"].get(t)) for t in head["types"]]]
            for r in head["rows"]]
    return table(header, rows).replace("<table>", '<table class="headline">', 1)


def pair(image: np.ndarray, mask: np.ndarray, gap: int = 3, classes: np.ndarray | None = None) -> np.ndarray:
    """(H,W,3) uint8 image and (H,W) bool mask side by side: the image untouched, the mask white on black
    (or, given ``classes`` (H,W,3), the class mask in its class colours)."""
    h = image.shape[0]
    m = classes if classes is not None else np.repeat((mask.astype(np.uint8) * 255)[:, :, None], 3, axis=2)
    return np.concatenate([image, np.full((h, gap, 3), 255, np.uint8), m], axis=1)


def headline_section(page: Page, run: Path, pipeline: dict, sheet: str) -> str:
    """The report's first section: the F1 table, then ``sheet`` (the contact sheet's HTML)."""
    head = read_headline(run, pipeline)
    parts = []
    if head is None:
        parts.append(not_run("no evaluation (RUN/eval/eval.json, RUN/eval-ref/eval.json)"))
    else:
        parts.append(f"<p>Pixel F1 (eq. 8, pixel counts summed over the split) of the same segmenter config "
                     f"on the real {esc(head['split'])} split ({esc(head['n_images'])} images), each model "
                     f"selected on <code>val</code> with the threshold chosen there; macro = the mean over "
                     f"defect types.</p>")
        parts.append(headline_table(head))
        if len(head["rows"]) < 2:
            parts.append('<p class="note">only one of the two runs was evaluated</p>')
    parts.append(sheet)
    return "\n".join(parts)
