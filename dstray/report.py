"""A self-contained HTML report of one pipeline run (``RUN/report/index.html``).

:func:`write_report` reads what the pipeline left in a run folder::

    RUN/pipeline.json                 config, versions, stage timings, dataset
    RUN/models/<type>/model.pt        DST checkpoints (reference, loss history)
    RUN/generated/data/part-*.parquet generated samples (schema: docs/design.md)
    RUN/generated/summary.json        generation summary
    RUN/seg/history.jsonl             segmentation training / evaluation history
    RUN/eval/eval.json, eval.png      evaluation scores and Figure-7 overlays

and writes one HTML page with every image embedded as a ``data:`` URI (no script, no
external resource), plus the same PNGs next to it. Sections:

1. the run: folder, dataset, date, exact config, versions;
2. per defect type a row like the paper's Figure 3 (Wei et al., §3.1): reference H with
   its mask M outlined, background S with the area L outlined, histogram matching y',
   DST output ŷ, and both outputs zoomed on L;
3. a contact sheet of generated samples, masks outlined;
4. loss curves: the four DST terms and their total per type, segmentation loss and F1;
5. the evaluation (paper eq. 8): pixel P/R/F1/IoU overall and per type, image-level
   detection and false alarms, and the Figure-7 overlays;
6. stage timings and the generation summary.

Any part may be missing: its section says "not run" instead of failing; a part that is
present but cannot be read says so in its section, and the rest of the report is kept.
Pure python/numpy/matplotlib/torch (no Ray).
"""

from __future__ import annotations

import base64
import datetime
import hashlib
import html
import io
import json
import logging
import math
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import numpy as np

log = logging.getLogger("dstray")

STAGES = ("fit", "generate", "train", "evaluate")  # the pipeline's stages, in order
EMBEDDED = "embedded sample"  # pipeline.json "data" value for the packaged sample
LOSS_TERMS = ("content", "style", "hist", "tv", "total")  # DST loss terms (eq. 3-6) as logged by DSTFitter
LABEL_RGB = (255, 0, 0)  # outline colour of masks / areas (red, as the label in the paper's Fig. 7)
CELL_PX = 180  # display height of Figure-3 cells and contact-sheet thumbnails
ZOOM_PX = 180  # zoom crops are upscaled (nearest) to about this size
THUMB_MAX = 400  # contact-sheet images are downscaled to this longer side (keeps index.html small)
_OWN_FILES = ("fig3-*.png", "contact-*.png", "dst-losses.png", "seg-history.png", "eval.png")

CSS = """
body { font-family: sans-serif; margin: 1.5em 2em; color: #222; max-width: 1400px; }
h1 { font-size: 1.5em; } h2 { font-size: 1.25em; border-bottom: 1px solid #ccc; margin-top: 2em; }
h3 { font-size: 1.05em; }
table { border-collapse: collapse; margin: 0.5em 0 1em 0; }
th, td { border: 1px solid #ccc; padding: 3px 8px; text-align: right; }
th { background: #f2f2f2; } td.l, th.l { text-align: left; }
pre { background: #f7f7f7; border: 1px solid #ddd; padding: 0.6em; overflow-x: auto; font-size: 0.85em; }
.notrun { color: #777; font-style: italic; } .error { color: #b00; }
.note { color: #555; font-size: 0.9em; }
table.fig3 td { text-align: center; vertical-align: top; font-size: 0.8em; }
table.fig3 img { height: 180px; }
.sheet { display: flex; flex-wrap: wrap; gap: 8px; }
.sheet figure { margin: 0; width: 190px; text-align: center; font-size: 0.78em; }
.sheet img { max-width: 186px; max-height: 180px; }
img.wide { max-width: 100%; }
nav a { margin-right: 1em; }
"""


# --------------------------------------------------------------------------- public API
def write_report(run_dir: str | Path, *, out_dir: str | Path | None = None, contact_sheet_n: int = 24,
                 seed: int = 0) -> Path:
    """Write the HTML report of the run in ``run_dir``; returns the path of ``index.html``.

    Args:
        run_dir: the run folder (layout in the module docstring; every part optional).
        out_dir: where ``index.html`` and its PNGs go; default ``run_dir/report``.
        contact_sheet_n: number of generated samples on the contact sheet.
        seed: seeds the choice of the Figure-3 background, its areas L and the contact-sheet
            samples, so the same run and seed give the same report (but for its date).
    """
    run = Path(run_dir)
    if not run.is_dir():
        raise FileNotFoundError(f"run folder {run} does not exist (give the folder a pipeline run wrote)")
    out = Path(out_dir) if out_dir is not None else run / "report"
    out.mkdir(parents=True, exist_ok=True)
    for pattern in _OWN_FILES:  # images of an earlier report of this folder
        for old in out.glob(pattern):
            old.unlink()
    page = _Page(out)
    pipeline, pipeline_note = _read_pipeline(run)
    checkpoints = _read_checkpoints(run)
    sections = [
        ("run", "Run", lambda: _run_section(run, pipeline, pipeline_note)),
        ("figure3", "Defect style transfer per type (Figure 3)",
         lambda: _figure3_section(page, run, pipeline, checkpoints, seed)),
        ("generated", "Generated samples", lambda: _contact_section(page, run, contact_sheet_n, seed)),
        ("losses", "Loss curves", lambda: _losses_section(page, run, pipeline, checkpoints)),
        ("evaluation", "Evaluation", lambda: _eval_section(page, run, pipeline)),
        ("timings", "Stage timings and generation summary", lambda: _timings_section(run, pipeline)),
    ]
    body = []
    for anchor, title, build in sections:
        body.append(f'<h2 id="{anchor}">{_e(title)}</h2>')
        body.append(_guard(title, build))
    nav = " ".join(f'<a href="#{a}">{_e(t)}</a>' for a, t, _ in sections)
    doc = (
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
        f"<title>dstray report: {_e(run.resolve().name)}</title><style>{CSS}</style></head><body>\n"
        f"<h1>dstray run report: {_e(run.resolve().name)}</h1>\n<nav>{nav}</nav>\n"
        + "\n".join(body) + "\n</body></html>\n"
    )
    index = out / "index.html"
    index.write_text(doc, encoding="utf-8")
    return index


# --------------------------------------------------------------------------- page helpers
class _Page:
    """Writes the report's PNGs next to index.html and returns their embedded <img> tags."""

    def __init__(self, out: Path):
        self.out = out

    def img(self, name: str, image: np.ndarray | bytes, alt: str, cls: str = "") -> str:
        """``image``: (H,W) / (H,W,3) uint8 array, or PNG bytes kept as they are."""
        data = image if isinstance(image, bytes) else _png(image)
        (self.out / name).write_bytes(data)
        klass = f' class="{cls}"' if cls else ""
        return (f'<img{klass} alt="{_e(alt)}" title="{_e(alt)}" '
                f'src="data:image/png;base64,{base64.b64encode(data).decode("ascii")}">')

    def figure(self, name: str, fig, alt: str) -> str:
        """A matplotlib Figure as an embedded PNG."""
        buf = io.BytesIO()
        fig.savefig(buf, format="png", dpi=100)
        return self.img(name, buf.getvalue(), alt, cls="wide")


def _guard(title: str, build: Callable[[], str]) -> str:
    """A section's HTML; a section that fails says why instead of failing the whole report."""
    try:
        return build()
    except Exception as exc:  # noqa: BLE001 - one unreadable part must not lose the rest of the report
        log.warning("report section %r failed", title, exc_info=True)
        return f'<p class="error">could not render this section: {_e(type(exc).__name__)}: {_e(str(exc))}</p>'


def _e(text) -> str:
    return html.escape(str(text), quote=True)


def _not_run(what: str) -> str:
    return f'<p class="notrun">not run: {_e(what)}</p>'


def _fmt(v) -> str:
    """A value for a table cell: bools yes/no, ints as is, floats to 4 significant digits, NaN as n/a."""
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        if math.isnan(v) or math.isinf(v):
            return "n/a" if math.isnan(v) else str(v)
        return f"{v:.1f}" if abs(v) >= 1000 else f"{v:.4g}"
    if v is None:
        return "-"
    if isinstance(v, (dict, list)):
        return json.dumps(v)
    return str(v)


def _score(v) -> str:
    """A score in [0, 1] (precision, recall, F1, IoU, rates) to 3 decimals."""
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "n/a"
    return f"{float(v):.3f}"


def _table(header: list[str], rows: list[list], left: int = 1) -> str:
    """An HTML table; the first ``left`` columns are left-aligned. Cells are escaped."""
    def cell(tag, i, v):
        klass = ' class="l"' if i < left else ""
        return f"<{tag}{klass}>{_e(v)}</{tag}>"
    head = "".join(cell("th", i, h) for i, h in enumerate(header))
    body = "".join("<tr>" + "".join(cell("td", i, v) for i, v in enumerate(r)) + "</tr>" for r in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def _kv(rows: list[list]) -> str:
    """A two-column key/value table without a header row."""
    body = "".join(f'<tr><th class="l">{_e(k)}</th><td class="l">{_e(v)}</td></tr>' for k, v in rows)
    return f"<table>{body}</table>"


def _read_json(path: Path):
    return json.loads(path.read_text(encoding="utf-8"))


# --------------------------------------------------------------------------- images
def _png(a: np.ndarray) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(a)).save(buf, format="PNG")
    return buf.getvalue()


def _rgb(image) -> np.ndarray:
    """(C,H,W) float tensor/array in [0,1], C in {1,3} -> (H,W,3) uint8."""
    a = image.detach().cpu().numpy() if hasattr(image, "detach") else np.asarray(image)
    a = np.clip(np.asarray(a, np.float32), 0, 1)
    if a.shape[0] == 1:
        a = np.repeat(a, 3, axis=0)
    return (a.transpose(1, 2, 0) * 255).round().astype(np.uint8)


def _bool_mask(mask) -> np.ndarray:
    """(1,H,W) / (H,W) tensor or array -> (H,W) bool."""
    a = mask.detach().cpu().numpy() if hasattr(mask, "detach") else np.asarray(mask)
    return np.asarray(a).reshape(a.shape[-2:]) > 0.5


def outline(rgb: np.ndarray, mask: np.ndarray, colour=LABEL_RGB, thickness: int | None = None) -> np.ndarray:
    """A copy of ``rgb`` (H,W,3) uint8 with the border of ``mask`` (H,W) bool drawn just outside it.

    The line is ``thickness`` pixels wide (default: about 1/250 of the longer image side, at
    least 1) so it stays visible when the image is shown small; the defect itself is not covered.
    """
    from scipy.ndimage import binary_dilation
    from skimage.morphology import disk
    from skimage.segmentation import find_boundaries

    out = rgb.copy()
    if not mask.any():
        return out
    if thickness is None:
        thickness = max(1, round(max(mask.shape) / 250))
    ring = find_boundaries(mask, mode="outer") & ~mask
    if thickness > 1:
        ring = binary_dilation(ring, structure=disk(thickness - 1)) & ~mask
    out[ring] = colour
    return out


def _shrink(rgb: np.ndarray, mask: np.ndarray, max_side: int) -> tuple[np.ndarray, np.ndarray]:
    """Image (area-averaged) and mask (nearest) downscaled so the longer side is at most ``max_side``."""
    from PIL import Image

    h, w = mask.shape
    if max(h, w) <= max_side:
        return rgb, mask
    size = (max(1, round(w * max_side / max(h, w))), max(1, round(h * max_side / max(h, w))))
    small = np.asarray(Image.fromarray(rgb).resize(size, Image.Resampling.BOX))
    small_mask = np.asarray(Image.fromarray(mask.astype(np.uint8) * 255).resize(size, Image.Resampling.NEAREST)) > 127
    return small, small_mask


def _zoom(rgb: np.ndarray, window: tuple[int, int, int, int]) -> np.ndarray:
    """The (top, left, h, w) window of ``rgb``, upscaled by an integer factor (nearest) to about ZOOM_PX."""
    top, left, h, w = window
    crop = rgb[top:top + h, left:left + w]
    k = max(1, ZOOM_PX // max(crop.shape[:2]))
    return np.repeat(np.repeat(crop, k, axis=0), k, axis=1)


# --------------------------------------------------------------------------- 1. run
def _read_pipeline(run: Path) -> tuple[dict, str | None]:
    path = run / "pipeline.json"
    if not path.exists():
        return {}, "no pipeline.json in the run folder: config, versions and timings are unknown"
    try:
        data = _read_json(path)
    except (OSError, json.JSONDecodeError) as exc:
        return {}, f"pipeline.json is unreadable ({exc})"
    if not isinstance(data, dict):
        return {}, "pipeline.json is not a JSON object"
    return data, None


def _run_section(run: Path, pipeline: dict, note: str | None) -> str:
    now = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")
    rows = [["run folder", str(run.resolve())], ["data", pipeline.get("data") or EMBEDDED + " (assumed)"],
            ["report written", now]]
    pj = run / "pipeline.json"
    if pj.exists():
        mtime = datetime.datetime.fromtimestamp(pj.stat().st_mtime, datetime.timezone.utc)
        rows.append(["pipeline.json last written", mtime.strftime("%Y-%m-%d %H:%M:%S UTC")])
    for key, value in pipeline.items():  # anything else the pipeline recorded
        if key not in ("config", "versions", "stages", "data"):
            rows.append([key, _fmt(value)])
    parts = [_kv(rows)]
    if note:
        parts.append(f'<p class="error">{_e(note)}</p>')
    versions = pipeline.get("versions") or {}
    parts.append("<h3>Versions</h3>")
    parts.append(_table(["package", "version"], [[k, _fmt(v)] for k, v in versions.items()], left=2)
                 if versions else _not_run("no versions recorded"))
    parts.append("<h3>Config</h3>")
    if "config" in pipeline:
        config = json.dumps(pipeline["config"], indent=2, default=str)
        parts.append(f"<pre>{html.escape(config, quote=False)}</pre>")
    else:
        parts.append(_not_run("no config recorded"))
    return "\n".join(parts)


# --------------------------------------------------------------------------- 2. Figure 3
def _read_checkpoints(run: Path) -> dict[str, dict]:
    """defect type (folder name) -> {"path", "bytes", "ckpt" or "error"} for RUN/models/<type>/model.pt."""
    import torch

    out = {}
    for path in sorted((run / "models").glob("*/model.pt")):
        entry = {"path": path}
        try:
            entry["bytes"] = path.read_bytes()
            entry["ckpt"] = torch.load(io.BytesIO(entry["bytes"]), map_location="cpu", weights_only=True)
        except Exception as exc:  # noqa: BLE001 - a bad checkpoint is reported in its row
            entry["error"] = f"{type(exc).__name__}: {exc}"
        out[path.parent.name] = entry
    return out


def _dataset_path(run: Path, pipeline: dict) -> str | None:
    """The run's dataset path (None = the embedded sample); relative paths tried from cwd, then the run."""
    data = pipeline.get("data")
    if data is None:
        cfg = pipeline.get("config") or {}
        data = cfg.get("data") if isinstance(cfg, dict) else None
    if not data or str(data).strip().lower() == EMBEDDED:
        return None
    path = Path(str(data)).expanduser()
    if not path.is_absolute() and not path.exists() and (run / path).exists():
        path = run / path
    return str(path)


def _backgrounds(run: Path, pipeline: dict, seed: int):
    """The run's backgrounds in a seeded order, or (None, why) when the dataset cannot be read."""
    from dstray.data import load_dataset

    data = _dataset_path(run, pipeline)
    try:
        backgrounds = sorted(load_dataset(data).backgrounds(), key=lambda s: s.id)
    except Exception as exc:  # noqa: BLE001 - the rest of the section does not need the dataset
        return None, f"dataset {data or EMBEDDED} could not be read ({type(exc).__name__}: {exc})"
    if not backgrounds:
        return None, f"dataset {data or EMBEDDED} has no background (defect-free) images"
    order = np.random.default_rng(seed).permutation(len(backgrounds))
    return [backgrounds[i] for i in order], None


def _type_seed(seed: int, defect_type: str) -> int:
    """A per-type seed that does not depend on which other types the run has."""
    return int.from_bytes(hashlib.sha256(f"dstray-report:{seed}:{defect_type}".encode()).digest()[:8], "little") >> 1


def _figure3_section(page: _Page, run: Path, pipeline: dict, checkpoints: dict, seed: int) -> str:
    if not checkpoints:
        return _not_run("no DST models (RUN/models/<type>/model.pt)")
    backgrounds, why = _backgrounds(run, pipeline, seed)
    mode, patch = _generation_mode(pipeline)
    parts = ['<p class="note">As the paper\'s Figure 3, per defect type: the real reference H with its mask M '
             "outlined in red; a defect-free background S with the sampled area L outlined in green; the "
             "histogram-matching output y' (first step of Alg. 2); the DST output ŷ "
             "(<code>dstray.dst.figures.render_figure3_row</code>); then y' and ŷ zoomed on L (no outline). "
             f"The background is the same for every type where it fits (seed {seed}); stylized "
             + (f"in {_e(mode)} mode{f' (window {patch} px)' if mode == 'patch' and patch else ''}, as generated"
                if mode else "in the mode each model was fit in (no generation config recorded)") + ".</p>"]
    if why:
        parts.append(f'<p class="error">{_e(why)}; only the references are shown.</p>')
    rows = []
    bg_cache: dict[str, object] = {}
    for t, entry in checkpoints.items():
        rows.append(_figure3_row(page, t, entry, backgrounds, bg_cache, seed, mode, patch))
    head = "".join(f"<th>{h}</th>" for h in ("type", "reference H, M · background S, L · hist match y' · DST ŷ",
                                            "y' on L", "ŷ on L"))
    parts.append(f'<table class="fig3"><tr>{head}</tr>{"".join(rows)}</table>')
    return "\n".join(parts)


def _generation_mode(pipeline: dict) -> tuple[str | None, int | None]:
    """(mode, patch_size) of the run's generation config, (None, None) when not recorded."""
    cfg = pipeline.get("config") or {}
    gen = cfg.get("generate") if isinstance(cfg, dict) else None
    if not isinstance(gen, dict) or gen.get("mode") not in ("patch", "whole"):
        return None, None
    patch = gen.get("patch_size")
    return gen["mode"], patch if isinstance(patch, int) and patch > 0 else None


def _figure3_row(page: _Page, defect_type: str, entry: dict, backgrounds, bg_cache: dict, seed: int,
                 mode: str | None, patch: int | None) -> str:
    name = _e(defect_type)
    if "error" in entry:
        return (f'<tr><td class="l">{name}</td><td colspan="3" class="error">unreadable checkpoint '
                f'{_e(entry["path"])}: {_e(entry["error"])}</td></tr>')
    import torch

    from dstray.dst.areas import AreaSampler, bbox, crop_window
    from dstray.data import read_image
    from dstray.data import to_channels
    from dstray.dst.figures import render_figure3_row
    from dstray.dst.stylize import load_dst, stylize

    ckpt, slug = entry["ckpt"], _slug(defect_type)
    ref = ckpt["reference"]
    info = (f'{name}<br><span class="note">reference {_e(ref.get("id", "?"))}<br>'
            f'{_e(ckpt.get("steps", "?"))} steps</span>')
    if backgrounds is None:
        tag = page.img(f"fig3-{slug}-reference.png", outline(_rgb(ref["image"]), _bool_mask(ref["mask"])),
                       f"{defect_type}: reference H, M outlined")
        return f'<tr><td class="l">{info}</td><td>{tag}</td><td colspan="2"></td></tr>'
    model = load_dst(io.BytesIO(entry["bytes"]))
    sampler = AreaSampler([model.reference_mask.cpu()], model.config.area)
    gen = torch.Generator().manual_seed(_type_seed(seed, defect_type))
    for sample in backgrounds:  # the first background (seeded order) large enough for this type's L
        if sample.id not in bg_cache:
            bg_cache[sample.id] = read_image(sample.image)
        background = to_channels(bg_cache[sample.id], model.reference_image.shape[0])
        try:
            area = sampler.sample(background.shape[1], background.shape[2], gen)
            break
        except ValueError:
            continue
    else:
        return (f'<tr><td class="l">{info}</td><td colspan="3" class="error">'
                f"no background can take an area of this type (all too small)</td></tr>")
    if mode is None:  # no generation config recorded: as the model was fit
        mode, patch = ("whole", None) if model.config.patch_size is None else ("patch", model.config.patch_size)
    out = stylize(model, background, area, mode=mode, patch_size=patch or 96)
    row = render_figure3_row(model.reference_image, model.reference_mask, background, area,
                             out["histmatch"], out["image"])
    y0, x0, y1, x1 = bbox(area)
    window = crop_window(area.cpu(), max(48, y1 - y0 + 16, x1 - x0 + 16))
    cells = [
        page.img(f"fig3-{slug}.png", row, f"{defect_type}: reference, background {sample.id} with L, y', DST output"),
        page.img(f"fig3-{slug}-histmatch-zoom.png", _zoom(_rgb(out["histmatch"]), window),
                 f"{defect_type}: y' around L"),
        page.img(f"fig3-{slug}-dst-zoom.png", _zoom(_rgb(out["image"]), window), f"{defect_type}: DST output around L"),
    ]
    info += f'<br><span class="note">background {_e(sample.id)}</span>'
    return f'<tr><td class="l">{info}</td>' + "".join(f"<td>{c}</td>" for c in cells) + "</tr>"


def _slug(text: str) -> str:
    return "".join(ch if ch.isalnum() or ch in "-_" else "_" for ch in str(text)) or "_"


# --------------------------------------------------------------------------- 3. contact sheet
def _contact_section(page: _Page, run: Path, n: int, seed: int) -> str:
    import pyarrow.parquet as pq

    from dstray.data import MASK_THRESHOLD, decode_png

    files = sorted((run / "generated" / "data").glob("part-*.parquet"))
    if not files:
        return _not_run("no generated samples (RUN/generated/data/part-*.parquet)")
    sizes = [pq.ParquetFile(f).metadata.num_rows for f in files]
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
    parts = [f"<p>{total} samples in {len(files)} Parquet files.</p>",
             _table(["defect type", *gens, "all"], count_rows)]

    k = min(max(int(n), 0), total)
    chosen = np.sort(np.random.default_rng(seed).choice(total, size=k, replace=False)) if k else np.array([], int)
    starts = np.cumsum([0, *sizes])
    figures = []
    for fi, f in enumerate(files):
        local = [int(i - starts[fi]) for i in chosen if starts[fi] <= i < starts[fi + 1]]
        if not local:
            continue
        table = pq.read_table(f).take(local).to_pylist()
        for row in table:
            image = _rgb(decode_png(row["image"]))
            mask = ((decode_png(row["mask"])[0] * 255).round() >= MASK_THRESHOLD).numpy()
            image, mask = _shrink(image, mask, THUMB_MAX)
            caption = f'{row.get("defect_type", "?")} · {row.get("generator", "?")}'
            alt = f'{caption} · {row.get("sample_id", "?")} on {row.get("background_id", "?")}'
            tag = page.img(f"contact-{len(figures):03d}.png", outline(image, mask), alt)
            figures.append(f'<figure>{tag}<figcaption>{_e(caption)}<br>'
                           f'<span class="note">{_e(row.get("sample_id", ""))}</span></figcaption></figure>')
    parts.append(f"<h3>Contact sheet: {k} random samples (seed {seed}), label L outlined in red</h3>")
    parts.append(f'<div class="sheet">{"".join(figures)}</div>')
    return "\n".join(parts)


# --------------------------------------------------------------------------- 4. losses
def _positive(values: list) -> np.ndarray:
    a = np.array([v if isinstance(v, (int, float)) else np.nan for v in values], dtype=float)
    a[~(a > 0)] = np.nan  # log scale: zero/negative/missing points are left out
    return a


def _losses_section(page: _Page, run: Path, pipeline: dict, checkpoints: dict) -> str:
    from matplotlib.figure import Figure  # no pyplot: no GUI backend
    from matplotlib.ticker import MaxNLocator

    parts = ["<h3>DST loss terms (weighted, as optimised; eq. 3-6)</h3>"]
    curves = {t: e["ckpt"].get("losses") or [] for t, e in checkpoints.items() if "ckpt" in e}
    if not checkpoints:
        parts.append(_not_run("no DST models (RUN/models/<type>/model.pt)"))
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
            parts.append(_not_run("no segmentation history (RUN/seg/history.jsonl)"))
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
    for key, style in (("f1", "-"), ("iou", ":"), ("precision", "--"), ("recall", "--")):
        if any(key in h for h in history):
            vals = [h.get(key) if isinstance(h.get(key), (int, float)) else np.nan for h in history]
            ax.plot(steps, vals, style, marker="o" if key == "f1" else None, ms=3,
                    lw=1.8 if key == "f1" else 1.0, label=key)
    ax.set_ylim(0, 1)
    ax.set_title("pixel scores on the evaluation split", fontsize=10)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("step")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=7)
    parts.append(page.figure("seg-history.png", fig, "segmentation loss and F1 over steps"))
    last = history[-1]
    parts.append(f'<p class="note">last evaluation: step {_e(_fmt(last.get("step")))}, '
                 f'loss {_e(_fmt(last.get("loss")))}, pixel F1 {_score(last.get("f1"))}</p>')
    return "\n".join(parts)


# --------------------------------------------------------------------------- 5. evaluation
def _eval_section(page: _Page, run: Path, pipeline: dict) -> str:
    path = run / "eval" / "eval.json"
    if not path.exists():
        return _not_run("no evaluation (RUN/eval/eval.json)")
    ev = _read_json(path)
    parts = [f'<p>{_e(_fmt(ev.get("n_images")))} images; resolution: {_e(_fmt(ev.get("resolution")))}'
             + (f'; threshold {_e(_fmt(ev["threshold"]))}' if "threshold" in ev else "") + "</p>",
             "<h3>Pixel level (eq. 8, counts summed over the split)</h3>"]
    header = ["set", "images", "precision", "recall", "F1", "IoU", "TP", "FP", "FN"]

    def row(name, r, images):
        return [name, _fmt(images), *[_score(r.get(k)) for k in ("precision", "recall", "f1", "iou")],
                *[_fmt(r.get(k)) for k in ("tp", "fp", "fn")]]

    rows = [row("all", ev.get("pixel") or {}, ev.get("n_images"))]
    rows += [row(t, r, r.get("images")) for t, r in (ev.get("per_type") or {}).items()]
    parts.append(_table(header, rows))
    im = ev.get("image")
    if im:
        parts.append("<h3>Image level</h3>")
        parts.append(_table(
            ["defect images", "detected", "detection rate", "defect-free images", "false alarms", "false alarm rate"],
            [[_fmt(im.get("defect_images")), _fmt(im.get("detected")), _score(im.get("detection_rate")),
              _fmt(im.get("free_images")), _fmt(im.get("false_alarms")), _score(im.get("false_alarm_rate"))]],
            left=0))
    png = run / "eval" / "eval.png"
    parts.append("<h3>Predictions (as Figure 7: red label only, green prediction only, yellow both)</h3>")
    parts.append(page.img("eval.png", png.read_bytes(), "evaluation overlays", cls="wide") if png.exists()
                 else '<p class="notrun">no eval.png</p>')
    return "\n".join(parts)


# --------------------------------------------------------------------------- 6. timings
def _timings_section(run: Path, pipeline: dict) -> str:
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
        details = "; ".join(f"{k}: {_fmt(v)}" for k, v in st.items() if k not in ("seconds", "reused", "summary"))
        rows.append([name, "reused" if st.get("reused") else "run", details, f"{secs:.1f}" if number else _fmt(secs)])
    rows.append(["all", "", "", f"{total:.1f}"])
    parts = [_table(["stage", "status", "details", "seconds"], rows, left=3)]
    parts.append("<h3>Generation summary</h3>")
    path = run / "generated" / "summary.json"
    if path.exists():
        summary = _read_json(path)
        parts.append(_kv([[k, _fmt(v)] for k, v in summary.items()]))
    else:
        parts.append(_not_run("no generation summary (RUN/generated/summary.json)"))
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
