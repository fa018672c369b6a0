"""A generation run in shards (no Ray): the samples of plan rows, made and written as one shard's files.

:func:`make_rows` turns plan rows (:mod:`dstray.dst.plan`) into Parquet rows (:mod:`dstray.dst.rows`)
with a :class:`~dstray.dst.synth.Synthesizer`; a sample that cannot be made is a reject row with its
reason, never an error. :func:`write_shard` writes shard ``k``: its file depends on its plan rows only.
The Ray Data actors (:mod:`dstray.distributed.generate`) and the benchmark's plain loop call these.
"""

from __future__ import annotations

import io

import torch

from dstray.seeds import defect_seed
from dstray.data import DataError, read_image, read_mask, to_channels
from dstray.dst.regions import read_roi, regions
from dstray.dst.rows import multi_row, sample_row, write_shard_files
from dstray.labels import is_visible, visibility


def read_background(source: str | bytes, *, name: str | None = None, max_pixels: int | None = None) -> torch.Tensor:
    """A background (C,H,W) from a path or the bytes of its file (PNG/JPEG ...).

    ``name``: the file's path, for errors about bytes; ``max_pixels``: the size limit (DataError above it).
    """
    if isinstance(source, bytes):
        return read_image(io.BytesIO(source), name=name or "<background bytes>", max_pixels=max_pixels)
    return read_image(source, max_pixels=max_pixels)


def shard_plan(ctx: dict, shard: int, shard_size: int) -> list[dict]:
    """The plan rows of shard ``shard``: ``shard_size`` consecutive samples."""
    return ctx["plan"][shard * shard_size:(shard + 1) * shard_size]


def _reason(exc: BaseException, background: str) -> str:
    """A reject's reason: the error's message, naming the background file."""
    text = str(exc).strip() or type(exc).__name__
    if not isinstance(exc, (DataError, ValueError, OSError)):  # not an input error: say what kind
        text = f"{type(exc).__name__}: {text.splitlines()[0]}"
    return text if background in text else f"background {background}: {text}"


# Pixels of decoded backgrounds a shard holds at once: make_rows fills and encodes the samples read so far
# when their backgrounds add up to this, so an actor's memory follows the chunk, not the shard (~17 bytes a
# pixel while a sample is in flight: background, area, image). A shard of 32 Magnetic Tile samples (~8 MP)
# is one chunk, as before.
CHUNK_PIXELS = 16_000_000


def make_rows(ctx: dict, synth, plan_rows: list[dict], batch_size: int = 8) -> tuple[list[dict], list[dict]]:
    """Generate the samples of ``plan_rows``: ``(rows, rejects)``, rows in plan order.

    A sample whose background cannot be read, is over ``max_image_pixels`` or cannot take
    the area is a reject with its reason (naming the file), never an error; so is a sample
    whose fill fails, and with ``min_visibility`` > 0 one whose label is not visible
    (:func:`dstray.labels.is_visible` against its type's reference). A background is
    converted to the channel count of its type's reference (the model's) first
    (:func:`dstray.data.to_channels`). Samples are filled in chunks of at most
    :data:`CHUNK_PIXELS` background pixels (each image is the same whatever its batch).
    """
    limit = ctx["cfg"].get("max_image_pixels")
    ratio = ctx["cfg"].get("min_visibility") or 0.0
    paths = ctx.get("background_paths") or {}  # id -> path, when ctx["backgrounds"] holds bytes
    rows, rejects, ready = [], [], []
    seen: dict[str, float] = {}  # per type: its reference defect's visibility (H against the ring around M)

    def reject(p: dict, exc: BaseException | str) -> None:
        source = ctx["backgrounds"].get(p["background_id"])
        name = paths.get(p["background_id"]) or (source if isinstance(source, str) else p["background_id"])
        reason = f"background {name}: {exc}" if isinstance(exc, str) else _reason(exc, name)
        rejects.append({k: p[k] for k in ("sample_id", "index", "defect_type", "background_id")} | {"reason": reason})

    def invisible(image, areas: list) -> str:
        """Why a made sample's label shows no defect (``--min-visibility``), or '' when every area shows one."""
        for t, area, *_ in areas:
            if t not in seen:
                ref = synth.references[t]
                seen[t] = visibility(ref.image, ref.mask)
            ok, why = is_visible(image, area, seen[t], ratio)
            if not ok:
                return f"{t} area: {why} (--min-visibility {ratio:g})"
        return ""

    def fill(entries: list, size: int) -> list:
        """Round j fills the j-th area of every sample that has one, on its image so far (one round: one area)."""
        current = [bg for _, bg, _ in entries]
        for j in range(max(len(areas) for _, _, areas in entries)):
            idx = [i for i, (_, _, areas) in enumerate(entries) if len(areas) > j]
            items = [(entries[i][2][j][0], current[i], *entries[i][2][j][1:3],
                      defect_seed(entries[i][0]["seed"], j)) for i in idx]  # + the defect's seed (its contrast, strength)
            for i, image in zip(idx, synth.fill(items, size)):
                current[i] = image
        return current

    def flush() -> None:
        if not ready:
            return
        try:
            images = fill(ready, batch_size)
        except Exception:  # one bad sample must not take its batch (or the job) down: fill them one by one
            images = []
            for entry in ready:
                try:
                    images.append(fill([entry], 1)[0])
                except Exception as exc:
                    reject(entry[0], exc)
                    images.append(None)
        for (p, _, areas), image in zip(ready, images):
            if image is None:
                continue
            why = invisible(image, areas) if ratio > 0 else ""
            if why:
                reject(p, why)
                continue
            if ctx.get("multi"):
                rows.append(multi_row(p, image, areas, ctx["classes"], synth.generator, ctx["digests"]))
            else:
                rows.append(sample_row(p, image, areas[0][1], synth.generator,
                                       ctx["digests"].get(p["defect_type"], ""), areas[0][3]))
        ready.clear()

    pixels = 0
    for p in plan_rows:
        try:
            source = ctx["backgrounds"][p["background_id"]]
            background = read_background(source, name=paths.get(p["background_id"]), max_pixels=limit)
            background = to_channels(background, synth.references[p["defect_type"]].image.shape[0])
            roi, drawn = _where(ctx, p["background_id"], *background.shape[1:])
            areas = synth.sample_areas(p.get("defect_types") or [p["defect_type"]], background, p["seed"], roi, drawn)
        except (DataError, ValueError, OSError) as exc:
            reject(p, exc)
            continue
        ready.append((p, background, areas))
        pixels += background.shape[1] * background.shape[2]
        if pixels >= CHUNK_PIXELS:
            flush()
            pixels = 0
    flush()
    return rows, sorted(rejects, key=lambda r: r["index"])


def _where(ctx: dict, background_id: str, height: int, width: int):
    """(roi (1,H,W) or None, the user's drawn areas or None) of a background (:mod:`dstray.dst.regions`)."""
    drawn = None
    if ctx.get("areas"):
        mask = read_mask(io.BytesIO(ctx["areas"][background_id]), name=f"--areas mask of {background_id}")
        if tuple(mask.shape[-2:]) != (height, width):
            raise ValueError(f"its --areas mask is {mask.shape[-1]}x{mask.shape[-2]} px, the background "
                             f"{width}x{height}; draw the target areas on an image of the background's size")
        drawn = regions(mask)
        if not drawn:
            raise ValueError("its --areas mask is empty (no pixel >= 128): no target area drawn")
    own = (ctx.get("rois") or {}).get(background_id)
    if own is not None:
        return read_roi(own, f"of {background_id}", height, width, scale=False), drawn
    if ctx.get("roi") is not None:
        return read_roi(ctx["roi"], ctx["cfg"].get("roi") or "--roi", height, width, scale=True), drawn
    return None, drawn


def write_shard(ctx: dict, synth, shard: int, shard_size: int) -> tuple[int, int]:
    """Generate shard ``shard`` and write its files; returns ``(written, rejected)``."""
    out = ctx["cfg"]["out"]
    plan = shard_plan(ctx, shard, shard_size)
    rows, rejects = make_rows(ctx, synth, plan, ctx["cfg"]["batch_size"])
    write_shard_files(out, shard, rows, rejects, ctx["fingerprint"],
                      classes=ctx["classes"] if ctx.get("multi") else None)
    return len(rows), len(rejects)


