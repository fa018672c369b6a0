"""Section 2 of the report: per defect type, a row like the paper's Figure 3 (Wei et al., §3.1).

The reference H with its mask M outlined, a background S with the area L outlined, the
histogram-matching output y', the DST output ŷ (:func:`dstray.dst.figures.render_figure3_row`),
then y' and ŷ zoomed on L.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import torch

from dstray.config import PATCH_SIZE
from dstray.data import load_dataset, read_image, to_channels
from dstray.dst.areas import area_for_seed, bbox, crop_window
from dstray.dst.figures import render_figure3_row
from dstray.dst.stylize import load_dst, stylize
from dstray.report.html import Page, esc, not_run
from dstray.report.images import bool_mask, outline, rgb, zoom
from dstray.seeds import derive_seed

EMBEDDED = "embedded sample"  # pipeline.json "data" value for the packaged sample


def read_checkpoints(run: Path) -> dict[str, dict]:
    """defect type (folder name) -> {"path", "bytes", "ckpt" or "error"} for RUN/models/<type>/model.pt."""
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
    data = _dataset_path(run, pipeline)
    try:
        backgrounds = sorted(load_dataset(data).backgrounds(), key=lambda s: s.id)
    except Exception as exc:  # noqa: BLE001 - the rest of the section does not need the dataset
        return None, f"dataset {data or EMBEDDED} could not be read ({type(exc).__name__}: {exc})"
    if not backgrounds:
        return None, f"dataset {data or EMBEDDED} has no background (defect-free) images"
    order = np.random.default_rng(derive_seed(seed, "report-backgrounds")).permutation(len(backgrounds))
    return [backgrounds[i] for i in order], None


def figure3_section(page: Page, run: Path, pipeline: dict, checkpoints: dict, seed: int) -> str:
    if not checkpoints:
        return not_run("no DST models (RUN/models/<type>/model.pt)")
    backgrounds, why = _backgrounds(run, pipeline, seed)
    mode, patch = _generation_mode(pipeline)
    parts = ['<p class="note">As the paper\'s Figure 3, per defect type, one row: the real reference H beside '
             "its mask M; a defect-free background S beside the sampled area L; the histogram-matching output "
             "y' (first step of Alg. 2) beside the DST output ŷ (<code>dstray.dst.figures.render_figure3_row</code>); "
             "above it, y' and ŷ zoomed on L. "
             f"The background is the same for every type where it fits (seed {seed}); stylized "
             + (f"in {esc(mode)} mode{f' (window {patch} px)' if mode == 'patch' and patch else ''}, as generated"
                if mode else "in the mode each model was fit in (no generation config recorded)") + ".</p>"]
    if why:
        parts.append(f'<p class="error">{esc(why)}; only the references are shown.</p>')
    rows = []
    bg_cache: dict[str, object] = {}
    for t, entry in checkpoints.items():
        rows.append(_figure3_row(page, t, entry, backgrounds, bg_cache, seed, mode, patch))
    head = "".join(f"<th>{h}</th>" for h in ("type (below: H, M · S, L · y', ŷ)", "y' on L", "ŷ on L"))
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


def _figure3_row(page: Page, defect_type: str, entry: dict, backgrounds, bg_cache: dict, seed: int,
                 mode: str | None, patch: int | None) -> str:
    name = esc(defect_type)
    if "error" in entry:
        return (f'<tr><td class="l">{name}</td><td colspan="3" class="error">unreadable checkpoint '
                f'{esc(entry["path"])}: {esc(entry["error"])}</td></tr>')
    ckpt, slug = entry["ckpt"], _slug(defect_type)
    ref = ckpt["reference"]
    info = (f'{name}<br><span class="note">reference {esc(ref.get("id", "?"))}<br>'
            f'{esc(ckpt.get("steps", "?"))} steps</span>')
    if backgrounds is None:
        tag = page.img(f"fig3-{slug}-reference.png", outline(rgb(ref["image"]), bool_mask(ref["mask"])),
                       f"{defect_type}: reference H, M outlined")
        return f'<tr><td class="l">{info}</td><td>{tag}</td><td colspan="2"></td></tr>'
    model = load_dst(io.BytesIO(entry["bytes"]))
    sampler = model.sampler()
    area_seed = derive_seed(seed, "report-figure3", defect_type)  # per type: independent of the other types
    for sample in backgrounds:  # the first background (seeded order) large enough for this type's L
        if sample.id not in bg_cache:
            bg_cache[sample.id] = read_image(sample.image)
        background = to_channels(bg_cache[sample.id], model.reference_image.shape[0])
        try:  # L drawn as generation and `dstray stylize --seed` draw it
            area, _ = area_for_seed(sampler, background.shape[1], background.shape[2], area_seed)
            break
        except ValueError:
            continue
    else:
        return (f'<tr><td class="l">{info}</td><td colspan="3" class="error">'
                f"no background can take an area of this type (all too small)</td></tr>")
    if mode is None:  # no generation config recorded: as the model was fit
        mode, patch = ("whole", None) if model.config.patch_size is None else ("patch", model.config.patch_size)
    out = stylize(model, background, area, mode=mode, patch_size=patch or PATCH_SIZE)
    row = render_figure3_row(model.reference_image, model.reference_mask, background, area,
                             out["histmatch"], out["image"])
    y0, x0, y1, x1 = bbox(area)
    window = crop_window(area.cpu(), max(48, y1 - y0 + 16, x1 - x0 + 16))
    cells = [
        page.img(f"fig3-{slug}.png", row, f"{defect_type}: reference, background {sample.id} with L, y', DST output"),
        page.img(f"fig3-{slug}-histmatch-zoom.png", zoom(rgb(out["histmatch"]), window),
                 f"{defect_type}: y' around L"),
        page.img(f"fig3-{slug}-dst-zoom.png", zoom(rgb(out["image"]), window), f"{defect_type}: DST output around L"),
    ]
    info += f'<br><span class="note">background {esc(sample.id)}</span>'
    return (f'<tr><td class="l">{info}</td><td>{cells[1]}</td><td>{cells[2]}</td></tr>'
            f'<tr><td colspan="3" class="row">{cells[0]}</td></tr>')


def _slug(text: str) -> str:
    return "".join(ch if ch.isalnum() or ch in "-_" else "_" for ch in str(text)) or "_"
