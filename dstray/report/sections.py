"""Sections 1 and 3-6 of the report: the run, generated samples, loss curves, evaluation, timings."""

from __future__ import annotations

import datetime
import html
import json
from collections import Counter
from pathlib import Path

import numpy as np

from dstray.data import MASK_THRESHOLD, decode_png
from dstray.report.figure3 import EMBEDDED
from dstray.report.html import Page, fmt, kv, not_run, read_json, score, table, esc
from dstray.report.images import class_legend, colour_classes, outline, rgb, shrink
from dstray.seeds import derive_seed

STAGES = ("fit", "generate", "train", "evaluate")  # the pipeline's stages, in order
LOSS_TERMS = ("content", "style", "hist", "tv", "total")  # DST loss terms (eq. 3-6) as logged by DSTFitter
THUMB_MAX = 400  # contact-sheet images are downscaled to this longer side (keeps index.html small)


# --------------------------------------------------------------------------- 1. run
def read_pipeline(run: Path) -> tuple[dict, str | None]:
    path = run / "pipeline.json"
    if not path.exists():
        return {}, "no pipeline.json in the run folder: config, versions and timings are unknown"
    try:
        data = read_json(path)
    except (OSError, json.JSONDecodeError) as exc:
        return {}, f"pipeline.json is unreadable ({exc})"
    if not isinstance(data, dict):
        return {}, "pipeline.json is not a JSON object"
    return data, None


def run_section(run: Path, pipeline: dict, note: str | None) -> str:
    now = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")
    rows = [["run folder", str(run.resolve())], ["data", pipeline.get("data") or EMBEDDED + " (assumed)"],
            ["report written", now]]
    pj = run / "pipeline.json"
    if pj.exists():
        mtime = datetime.datetime.fromtimestamp(pj.stat().st_mtime, datetime.timezone.utc)
        rows.append(["pipeline.json last written", mtime.strftime("%Y-%m-%d %H:%M:%S UTC")])
    for key, value in pipeline.items():  # anything else the pipeline recorded
        if key not in ("config", "versions", "stages", "data", "headline"):
            rows.append([key, fmt(value)])
    parts = [kv(rows)]
    if note:
        parts.append(f'<p class="error">{esc(note)}</p>')
    versions = pipeline.get("versions") or {}
    parts.append("<h3>Versions</h3>")
    parts.append(table(["package", "version"], [[k, fmt(v)] for k, v in versions.items()], left=2)
                 if versions else not_run("no versions recorded"))
    parts.append("<h3>Config</h3>")
    if "config" in pipeline:
        config = json.dumps(pipeline["config"], indent=2, default=str)
        types = pipeline.get("defect_types")
        summary = f"the run's config (defect types: {', '.join(types)})" if types else "the run's config"
        parts.append(f"<details><summary>{esc(summary)}</summary><pre>{html.escape(config, quote=False)}</pre>"
                     "</details>")
    else:
        parts.append(not_run("no config recorded"))
    return "\n".join(parts)


# --------------------------------------------------------------------------- 3. generated samples
def _parquet_files(run: Path) -> tuple[list[Path], list[int]]:
    import pyarrow.parquet as pq

    files = sorted((run / "generated" / "data").glob("part-*.parquet"))
    return files, [pq.ParquetFile(f).metadata.num_rows for f in files]


def counts_section(run: Path) -> str:
    """How many generated samples, per defect type and generator."""
    import pyarrow.parquet as pq

    files, sizes = _parquet_files(run)
    if not files:
        return not_run("no generated samples (RUN/generated/data/part-*.parquet)")
    total = int(sum(sizes))
    if total == 0:
        return f'<p class="notrun">the generated dataset ({len(files)} files) has no rows</p>'
    counts: Counter = Counter()
    for f in files:
        names = pq.ParquetFile(f).schema_arrow.names
        cols = [c for c in ("defect_type", "generator") if c in names]
        t = pq.read_table(f, columns=cols)
        col = {c: t.column(c).to_pylist() if c in cols else ["?"] * t.num_rows for c in ("defect_type", "generator")}
        counts.update(zip(col["defect_type"], col["generator"]))
    gens = sorted({g for _, g in counts})
    types = sorted({t for t, _ in counts})
    count_rows = [[t, *[counts[(t, g)] for g in gens], sum(counts[(t, g)] for g in gens)] for t in types]
    return "\n".join([f"<p>{total} samples in {len(files)} Parquet files.</p>",
                      table(["defect type", *gens, "all"], count_rows)])


def contact_section(page: Page, run: Path, n: int, seed: int) -> str:
    """``n`` random generated samples (seeded), each shown beside its label L (white on black)."""
    import pyarrow.parquet as pq
    from PIL import Image

    from dstray.report.headline import pair

    files, sizes = _parquet_files(run)
    total = int(sum(sizes))
    if not total:
        return not_run("no generated samples (RUN/generated/data/part-*.parquet)")
    k = min(max(int(n), 0), total)
    rng = np.random.default_rng(derive_seed(seed, "report-contact-sheet"))
    chosen = np.sort(rng.choice(total, size=k, replace=False)) if k else np.array([], int)
    starts = np.cumsum([0, *sizes])
    figures, legend = [], None
    for fi, f in enumerate(files):
        local = [int(i - starts[fi]) for i in chosen if starts[fi] <= i < starts[fi + 1]]
        if not local:
            continue
        for row in pq.read_table(f).take(local).to_pylist():
            image = rgb(decode_png(row["image"]))
            mask = ((decode_png(row["mask"])[0] * 255).round() >= MASK_THRESHOLD).numpy()
            image, mask = shrink(image, mask, THUMB_MAX)
            classes = None
            if row.get("class_mask"):  # several defects: the label in class colours
                classes = colour_classes((decode_png(row["class_mask"])[0] * 255).round().numpy())
                classes = np.asarray(Image.fromarray(classes).resize(mask.shape[::-1], Image.Resampling.NEAREST))
                legend = legend or (pq.read_schema(f).metadata or {}).get(b"dstray.classes")
            caption = f'{row.get("defect_type", "?")} · {row.get("generator", "?")}'
            alt = f'{caption} · {row.get("sample_id", "?")} on {row.get("background_id", "?")}'
            tag = page.img(f"contact-{len(figures):03d}.png", pair(image, mask, classes=classes), alt)
            figures.append(f'<figure>{tag}<figcaption>{esc(caption)}<br>'
                           f'<span class="note">{esc(row.get("sample_id", ""))}</span></figcaption></figure>')
    key = ""
    if legend:  # class k = classes[k - 1], in the colours colour_classes paints
        key = "<p>Label colours: " + ", ".join(
            f'<span style="color: rgb{c}">&#9632;</span> {esc(name)}' for name, c in class_legend(json.loads(legend))
        ) + "</p>"
    return "\n".join([f"<h3>Generated samples: {k} of {total} at random (seed {seed}), each beside its label L "
                      f"({'in class colours' if legend else 'white'})</h3>", key,
                      f'<div class="sheet">{"".join(figures)}</div>'])


# --------------------------------------------------------------------------- 4. losses
def _positive(values: list) -> np.ndarray:
    a = np.array([v if isinstance(v, (int, float)) else np.nan for v in values], dtype=float)
    a[~(a > 0)] = np.nan  # log scale: zero/negative/missing points are left out
    return a


def losses_section(page: Page, run: Path, pipeline: dict, checkpoints: dict) -> str:
    from matplotlib.figure import Figure  # no pyplot: no GUI backend
    from matplotlib.ticker import MaxNLocator

    parts = ["<h3>DST loss terms (weighted, as optimised; eq. 3-6)</h3>"]
    curves = {t: e["ckpt"].get("losses") or [] for t, e in checkpoints.items() if "ckpt" in e}
    if not checkpoints:
        parts.append(not_run("no DST models (RUN/models/<type>/model.pt)"))
    elif not any(curves.values()):
        parts.append('<p class="notrun">the DST checkpoints hold no loss history</p>')
    else:
        cols = min(3, len(curves))
        nrows = -(-len(curves) // cols)
        fig = Figure(figsize=(4.6 * cols, 3.4 * nrows), layout="constrained")
        for i, (t, hist) in enumerate(curves.items()):
            ax = fig.add_subplot(nrows, cols, i + 1)
            steps = [h.get("step", j + 1) for j, h in enumerate(hist)]
            for term in LOSS_TERMS:
                if any(term in h for h in hist):
                    ax.plot(steps, _positive([h.get(term) for h in hist]), label=term,
                            color="black" if term == "total" else None, lw=1.8 if term == "total" else 1.0)
            ax.set_yscale("log")
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
            ax.set_title(f"{t} ({len(hist)} steps)", fontsize=10)
            ax.set_xlabel("step")
            ax.grid(True, which="both", alpha=0.3)
            ax.legend(fontsize=7)
        parts.append(page.figure("dst-losses.png", fig, "DST loss terms per defect type"))

    parts.append("<h3>Segmentation training</h3>")
    history, problem = _seg_history(run / "seg")
    if problem:
        parts.append(problem)
    if not history:
        if not problem:
            parts.append(not_run("no segmentation history (RUN/seg/history.jsonl)"))
        return "\n".join(parts)
    steps = [h.get("step", j + 1) for j, h in enumerate(history)]
    fig = Figure(figsize=(10, 3.4), layout="constrained")
    ax = fig.add_subplot(1, 2, 1)
    ax.plot(steps, _positive([h.get("loss") for h in history]), marker="o", ms=3)
    ax.set_yscale("log")
    ax.set_title("training loss (mean over the last steps)", fontsize=10)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("step")
    ax.grid(True, which="both", alpha=0.3)
    ax = fig.add_subplot(1, 2, 2)
    for key, style in (("f1", "-"), ("macro_f1", "-."), ("iou", ":"), ("precision", "--"), ("recall", "--")):
        if any(key in h for h in history):
            vals = [h.get(key) if isinstance(h.get(key), (int, float)) else np.nan for h in history]
            ax.plot(steps, vals, style, marker="o" if key == "f1" else None, ms=3,
                    lw=1.8 if key == "f1" else 1.0, label=key)
    ax.set_ylim(0, 1)
    ax.set_title("pixel scores on the selection split (val), at each evaluation's threshold", fontsize=10)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("step")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=7)
    parts.append(page.figure("seg-history.png", fig, "segmentation loss and F1 over steps"))
    last = history[-1]
    parts.append(f'<p class="note">last evaluation: step {esc(fmt(last.get("step")))}, '
                 f'loss {esc(fmt(last.get("loss")))}, pixel F1 {score(last.get("f1"))}'
                 + (f'; selected model: step {esc(fmt(last.get("best_step")))}, val F1 {score(last.get("best_f1"))}'
                    if "best_step" in last else "") + "</p>")
    return "\n".join(parts)


# --------------------------------------------------------------------------- 5. evaluation
def eval_section(page: Page, run: Path, pipeline: dict) -> str:
    path = run / "eval" / "eval.json"
    if not path.exists():
        return not_run("no evaluation (RUN/eval/eval.json)")
    ev = read_json(path)
    parts = [f'<p>{esc(fmt(ev.get("n_images")))} images'
             + (f' of the {esc(fmt(ev["split"]))} split' if "split" in ev else "")
             + f'; resolution: {esc(fmt(ev.get("resolution")))}'
             + (f'; threshold {esc(fmt(ev["threshold"]))}' if "threshold" in ev else "")
             + (f' ({esc(fmt(ev["threshold_source"]))})' if "threshold_source" in ev else "") + "</p>",
             "<h3>Pixel level (eq. 8, counts summed over the split)</h3>"]
    header = ["set", "images", "precision", "recall", "F1", "IoU", "TP", "FP", "FN"]

    def row(name, r, images):
        return [name, fmt(images), *[score(r.get(k)) for k in ("precision", "recall", "f1", "iou")],
                *[fmt(r.get(k)) for k in ("tp", "fp", "fn")]]

    rows = [row("all", ev.get("pixel") or {}, ev.get("n_images"))]
    rows += [row(t, r, r.get("images")) for t, r in (ev.get("per_type") or {}).items()]
    if ev.get("macro"):
        rows.append(row("macro (mean over types)", ev["macro"], ""))
    parts.append(table(header, rows))
    im = ev.get("image")
    if im:
        parts.append("<h3>Image level</h3>")
        parts.append(table(
            ["defect images", "detected", "detection rate", "defect-free images", "false alarms", "false alarm rate",
             "image AUROC (max pixel probability)"],
            [[fmt(im.get("defect_images")), fmt(im.get("detected")), score(im.get("detection_rate")),
              fmt(im.get("free_images")), fmt(im.get("false_alarms")), score(im.get("false_alarm_rate")),
              score(im.get("auroc"))]],
            left=0))
    png = run / "eval" / "eval.png"
    parts.append("<h3>Predictions (each image, then as Figure 7: red label only, green prediction only, "
                 "yellow both)</h3>")
    parts.append(page.img("eval.png", png.read_bytes(), "evaluation overlays", cls="wide") if png.exists()
                 else '<p class="notrun">no eval.png</p>')
    return "\n".join(parts)


# --------------------------------------------------------------------------- 6. timings
def timings_section(run: Path, pipeline: dict) -> str:
    stages = pipeline.get("stages") or {}
    rows, total = [], 0.0
    for name in [*STAGES, *[s for s in stages if s not in STAGES]]:
        st = stages.get(name)
        if not isinstance(st, dict):
            rows.append([name, "not run", "", "-"])
            continue
        secs = st.get("seconds")
        number = isinstance(secs, (int, float)) and not isinstance(secs, bool)
        total += float(secs) if number else 0.0
        details = "; ".join(f"{k}: {fmt(v)}" for k, v in st.items() if k not in ("seconds", "reused", "summary"))
        rows.append([name, "reused" if st.get("reused") else "run", details, f"{secs:.1f}" if number else fmt(secs)])
    rows.append(["all", "", "", f"{total:.1f}"])
    parts = [table(["stage", "status", "details", "seconds"], rows, left=3)]
    parts.append("<h3>Generation summary</h3>")
    path = run / "generated" / "summary.json"
    if path.exists():
        summary = read_json(path)
        parts.append(kv([[k, fmt(v)] for k, v in summary.items()]))
    else:
        parts.append(not_run("no generation summary (RUN/generated/summary.json)"))
    return "\n".join(parts)


def _seg_history(seg: Path) -> tuple[list[dict], str]:
    """Evaluation history of the segmenter, ``seg/history.jsonl`` (:func:`dstray.seg.train.write_history`),
    read line by line so that a damaged line loses only itself. Returns (rows, an HTML problem note or "")."""
    rows, bad, path = [], 0, seg / "history.jsonl"
    if not path.exists():
        return rows, ""
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.strip():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                bad += 1
    problem = f'<p class="error">{bad} unreadable line(s) in seg/{path.name} skipped</p>' if bad else ""
    if not rows and not bad:
        problem = f'<p class="notrun">seg/{path.name} has no entries</p>'
    return rows, problem
