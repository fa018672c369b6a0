"""Generate a labelled Parquet dataset with Ray Data (issue: "Generate datasets").

How a run works:

1. The driver validates the inputs (dataset, references, DST checkpoints) and plans the
   exact list of N samples (:func:`dstray.synth.plan_samples`: type, background, reference,
   per-sample seed). The plan is cut into shards of ``shard_size`` consecutive samples.
2. Backgrounds, references and models are put in the object store once, so workers need
   no shared file system for the inputs.
3. Ray Data maps the shards through an actor pool (``map_batches`` with
   ``ActorPoolStrategy``; the models are loaded once per actor; one GPU per actor when the
   cluster has GPUs). Each shard becomes one file ``data/part-XXXXX.parquet`` (and
   ``rejects/part-XXXXX.parquet`` for samples whose background was bad), then a marker
   ``_shards/XXXXX.json`` is written last.
4. Exactly once: a shard's content depends only on the plan, so a retried shard (a
   crashed actor, a lost node: Ray Data retries those) rewrites the same file with the
   same bytes. A re-run lists the markers and only does the missing shards; a finished
   run is a no-op. ``requested = written + rejected`` always.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import time
from dataclasses import replace

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import ray
import torch

import dstray
from dstray.config import GenerateConfig, from_dict, to_dict
from dstray import storage
from dstray.distributed.runtime import init_ray, resolve_use_gpu

log = logging.getLogger("dstray")

SCHEMA = pa.schema([
    ("sample_id", pa.string()),
    ("index", pa.int64()),
    ("defect_type", pa.string()),
    ("image", pa.binary()),
    ("mask", pa.binary()),
    ("height", pa.int32()),
    ("width", pa.int32()),
    ("background_id", pa.string()),
    ("reference_id", pa.string()),
    ("generator", pa.string()),
    ("model_digest", pa.string()),
    ("seed", pa.int64()),
    ("bbox", pa.list_(pa.int32())),
    ("area_px", pa.int64()),
    ("dstray_version", pa.string()),
])
# Generation actors see many window shapes; oneDNN caches primitives per shape and glibc keeps
# the freed buffers, so RSS grew ~2 MB a sample without these (measured: 1.3 -> 2.2 GB over 256
# samples in one process; flat with them).
ACTOR_ENV = {"ONEDNN_PRIMITIVE_CACHE_CAPACITY": "16", "MALLOC_ARENA_MAX": "2"}
REJECT_SCHEMA = pa.schema([
    ("sample_id", pa.string()),
    ("index", pa.int64()),
    ("defect_type", pa.string()),
    ("background_id", pa.string()),
    ("reason", pa.string()),
])


def _fingerprint(cfg: GenerateConfig, digests: dict[str, str], plan_digest: str) -> str:
    """What makes two runs the same dataset (not: where it is written or how fast)."""
    keep = {k: v for k, v in to_dict(cfg).items() if k not in ("out", "batch_size", "num_actors", "use_gpu")}
    blob = json.dumps({"cfg": keep, "models": digests, "plan": plan_digest}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def _model_path(models: str, defect_type: str) -> str:
    return storage.join(models, defect_type, "model.pt")


def prepare(cfg: GenerateConfig) -> dict:
    """Validate inputs and plan the run; everything the actors need, as plain data.

    Raises ``ValueError`` / ``DataError`` with what to do, before any Ray work starts.
    """
    from dstray.data import load_dataset, read_image, read_mask
    from dstray.synth import GENERATORS, plan_samples

    if cfg.generator not in GENERATORS:
        raise ValueError(f"--generator must be one of {GENERATORS}; got {cfg.generator!r}")
    # absolute paths: the actors run in other working directories
    cfg = replace(cfg, data=storage.absolute(cfg.data), models=storage.absolute(cfg.models), out=storage.absolute(cfg.out))
    dataset = load_dataset(cfg.data)
    types = sorted({s.defect_type for s in dataset.references()})
    weights = None
    if cfg.type_weights:  # a type with weight 0 or left out is not generated (and needs no model)
        unknown = sorted(set(cfg.type_weights) - set(types))
        if unknown:
            raise ValueError(f"--type-weights names {unknown}, which are not defect types with a reference "
                             f"in {dataset.root}; known: {types}")
        weights = {t: w for t, w in cfg.type_weights.items() if w > 0}
        types = sorted(weights)
    if not types:
        raise ValueError(f"{dataset.root}: no defect type has a reference image; nothing to generate")
    backgrounds = dataset.backgrounds()
    if not backgrounds:
        raise ValueError(f"{dataset.root}: no background (defect-free) images to generate on")

    references, area_masks, ref_ids = {}, {}, {}
    for t in types:
        refs = dataset.references(t)
        first = refs[0]
        image = read_image(first.image)
        references[t] = {"id": first.id, "image": image.numpy(), "mask": read_mask(first.mask, like=image).numpy()}
        area_masks[t] = [read_mask(r.mask).numpy() for r in refs]
        ref_ids[t] = first.id

    models, digests = {}, {}
    if cfg.generator == "dst":
        if not cfg.models:
            raise ValueError("--generator dst needs --models DIR (the output of `dstray fit-dst --all`)")
        for t in types:
            path = _model_path(cfg.models, t)
            if not storage.exists(path):
                raise ValueError(f"no DST model for defect type {t!r} at {path}; "
                                 f"fit it with `dstray fit-dst --all --out {cfg.models}` or leave the type out "
                                 "of --type-weights")
            blob = storage.read_bytes(path)
            models[t] = blob
            digests[t] = hashlib.sha256(blob).hexdigest()[:16]
            ckpt = torch.load(io.BytesIO(blob), map_location="cpu", weights_only=True)
            ref_ids[t] = ckpt["reference"]["id"]  # the reference the model was fit on

    plan = plan_samples(num_samples=cfg.num_samples, seed=cfg.seed, defect_types=types,
                        background_ids=[b.id for b in backgrounds], reference_ids=ref_ids,
                        type_weights=weights)
    plan_digest = hashlib.sha256(json.dumps(plan, sort_keys=True).encode()).hexdigest()[:16]
    return {
        "cfg": to_dict(cfg),
        "plan": plan,
        "backgrounds": {b.id: str(b.image) for b in backgrounds},  # paths; the driver swaps in object refs
        "references": references,
        "area_masks": area_masks,
        "models": models,
        "digests": digests,
        "fingerprint": _fingerprint(cfg, digests, plan_digest),
    }


def build_synthesizer(ctx: dict, device: str = "cpu"):
    """The :class:`dstray.synth.Synthesizer` of a prepared run (:func:`prepare`); models loaded once."""
    from dstray.dst import load_dst
    from dstray.synth import Reference, Synthesizer

    cfg = from_dict(GenerateConfig, ctx["cfg"])
    refs = {t: Reference(r["id"], torch.from_numpy(r["image"]), torch.from_numpy(r["mask"]))
            for t, r in ctx["references"].items()}
    masks = {t: [torch.from_numpy(m) for m in ms] for t, ms in ctx["area_masks"].items()}
    models = {t: load_dst(io.BytesIO(blob), device=device) for t, blob in ctx["models"].items()}
    for t, model in models.items():  # the model's own reference is the one DST matches to
        refs[t] = Reference(model.reference_id, model.reference_image, model.reference_mask)
    return Synthesizer(cfg.generator, refs, masks, models, cfg.area, cfg.mode, cfg.patch_size, device)


class ShardGenerator:
    """Ray Data actor: builds the Synthesizer once, then turns shard ids into Parquet files."""

    def __init__(self, context_ref: list, shard_size: int):
        self.ctx, self.shard_size = ray.get(context_ref[0]), shard_size
        device = "cuda" if torch.cuda.is_available() and ray.get_gpu_ids() else "cpu"
        self.synth = build_synthesizer(self.ctx, device)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        out = {"shard": [], "written": [], "rejected": [], "seconds": [], "peak_rss_mib": []}
        for shard in batch["shard"].tolist():
            t0 = time.perf_counter()
            written, rejected = write_shard(self.ctx, self.synth, int(shard), self.shard_size)
            out["shard"].append(shard)
            out["written"].append(written)
            out["rejected"].append(rejected)
            out["seconds"].append(time.perf_counter() - t0)
            out["peak_rss_mib"].append(peak_rss_mib())
        return {k: np.asarray(v) for k, v in out.items()}


def peak_rss_mib() -> float:
    """This process's peak resident memory (VmHWM), MiB; 0 where /proc is not available."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def _read_background(source) -> torch.Tensor:
    """A background from a path, PNG/JPEG bytes, or an object ref to those bytes."""
    from dstray.data import read_image

    if isinstance(source, ray.ObjectRef):
        source = ray.get(source)
    return read_image(io.BytesIO(source) if isinstance(source, bytes) else source)


def make_rows(ctx: dict, synth, plan_rows: list[dict], batch_size: int = 8) -> tuple[list[dict], list[dict]]:
    """Generate the samples of ``plan_rows``: ``(rows, rejects)``.

    A sample whose background cannot be read or cannot take the area is a reject (with
    its reason), never an error.
    """
    from dstray.data import DataError, encode_png

    rejects, ready = [], []
    for p in plan_rows:
        try:
            background = _read_background(ctx["backgrounds"][p["background_id"]])
            area, gen = synth.sample_area(p["defect_type"], background, p["seed"])
        except (DataError, ValueError, OSError) as exc:
            rejects.append({k: p[k] for k in ("sample_id", "index", "defect_type", "background_id")}
                           | {"reason": f"{type(exc).__name__}: {exc}"})
            continue
        ready.append((p, background, area, gen))
    images = synth.fill([(p["defect_type"], bg, area, gen) for p, bg, area, gen in ready], batch_size)
    rows = []
    for (p, _, area, _), image in zip(ready, images):
        ys, xs = torch.nonzero(area[0], as_tuple=True)
        rows.append({
            "sample_id": p["sample_id"], "index": p["index"], "defect_type": p["defect_type"],
            "image": encode_png(image), "mask": encode_png(area),
            "height": image.shape[1], "width": image.shape[2],
            "background_id": p["background_id"], "reference_id": p["reference_id"],
            "generator": synth.generator, "model_digest": ctx["digests"].get(p["defect_type"], ""),
            "seed": p["seed"],
            "bbox": [int(ys.min()), int(xs.min()), int(ys.max()) + 1, int(xs.max()) + 1],
            "area_px": int(area.sum()), "dstray_version": dstray.__version__,
        })
    return rows, rejects


def write_shard(ctx: dict, synth, shard: int, shard_size: int) -> tuple[int, int]:
    """Generate shard ``shard`` and write its files; returns ``(written, rejected)``."""
    out = ctx["cfg"]["out"]
    plan = ctx["plan"][shard * shard_size:(shard + 1) * shard_size]
    rows, rejects = make_rows(ctx, synth, plan, ctx["cfg"]["batch_size"])
    name = f"part-{shard:05d}.parquet"
    storage.write_bytes(storage.join(out, "data", name), _parquet_bytes(pa.Table.from_pylist(rows, SCHEMA)))
    if rejects:
        storage.write_bytes(storage.join(out, "rejects", name),
                            _parquet_bytes(pa.Table.from_pylist(rejects, REJECT_SCHEMA)))
    marker = {"shard": shard, "written": len(rows), "rejected": len(rejects), "fingerprint": ctx["fingerprint"]}
    storage.write_bytes(storage.join(out, "_shards", f"{shard:05d}.json"), json.dumps(marker).encode())
    return len(rows), len(rejects)


def _parquet_bytes(table: pa.Table) -> bytes:
    sink = io.BytesIO()
    pq.write_table(table, sink)
    return sink.getvalue()


def _check_output(cfg: GenerateConfig, fingerprint: str) -> None:
    manifest = storage.join(cfg.out, "manifest.json")
    if storage.exists(manifest):
        old = json.loads(storage.read_bytes(manifest))
        if old.get("fingerprint") != fingerprint:
            raise ValueError(f"{cfg.out} already holds a different generated dataset "
                             f"(fingerprint {old.get('fingerprint')} != {fingerprint}: other data, models, "
                             "seed, generator or settings). Choose another --out or delete that folder.")
    storage.write_bytes(manifest, json.dumps({"fingerprint": fingerprint, "config": to_dict(cfg),
                                              "dstray_version": dstray.__version__}, indent=2).encode())


def generate(cfg: GenerateConfig, *, shard_size: int = 32, address: str | None = None) -> dict:
    """Run (or finish) a generation; returns the summary (also written to ``out/summary.json``)."""
    ctx = prepare(cfg)
    cfg = from_dict(GenerateConfig, ctx["cfg"])  # with absolute paths
    _check_output(cfg, ctx["fingerprint"])
    n_shards = -(-cfg.num_samples // shard_size)
    done = {int(n.split(".")[0]) for n in storage.list_names(storage.join(cfg.out, "_shards"))}
    todo = [k for k in range(n_shards) if k not in done]

    t0, produced, actor_peak = time.perf_counter(), 0, 0.0
    if todo:
        init_ray(address)
        use_gpu = resolve_use_gpu(cfg.use_gpu) and cfg.generator == "dst"
        resources = ray.cluster_resources()
        if cfg.num_actors > 0:
            n_actors = cfg.num_actors
        elif use_gpu:
            n_actors = int(resources.get("GPU", 1))
        else:
            n_actors = max(1, int(resources.get("CPU", 2)) // 2)
        n_actors = min(n_actors, len(todo))
        log.info("generating %d samples (%d shards to do of %d) with %d actor(s)%s", cfg.num_samples,
                 len(todo), n_shards, n_actors, " on GPU" if use_gpu else "")
        # Inputs travel through the object store: workers need no shared file system.
        ctx = dict(ctx, backgrounds={k: ray.put(_file_bytes(v)) for k, v in ctx["backgrounds"].items()})
        ctx_ref = ray.put(ctx)
        ds = ray.data.from_items([{"shard": k} for k in todo], override_num_blocks=len(todo))
        ds = ds.map_batches(
            ShardGenerator,
            batch_size=1,
            fn_constructor_kwargs={"context_ref": [ctx_ref], "shard_size": shard_size},
            compute=ray.data.ActorPoolStrategy(size=n_actors),
            num_gpus=1 if use_gpu else 0,
            num_cpus=1,
            runtime_env={"env_vars": ACTOR_ENV},
        )
        for finished, row in enumerate(ds.iter_rows(), 1):
            produced += row["written"] + row["rejected"]
            actor_peak = max(actor_peak, float(row["peak_rss_mib"]))
            log.info("shard %d done (%d/%d): %d written, %d rejected; %.1f rows/s so far", row["shard"], finished,
                     len(todo), row["written"], row["rejected"], produced / (time.perf_counter() - t0))
    else:
        log.info("%s: all %d shards already done; nothing to do", cfg.out, n_shards)
    elapsed = time.perf_counter() - t0
    summary = summarize(cfg.out)
    summary.update(requested=cfg.num_samples, produced_this_run=produced, seconds=round(elapsed, 2),
                   rows_per_s=round(produced / elapsed, 3) if produced else None,
                   actor_peak_rss_mib=round(actor_peak, 1) if produced else None)
    if summary["written"] + summary["rejected"] != cfg.num_samples:
        raise RuntimeError(f"{cfg.out}: {summary['written']} written + {summary['rejected']} rejected "
                           f"!= {cfg.num_samples} requested; re-run the same command to finish")
    storage.write_bytes(storage.join(cfg.out, "summary.json"), json.dumps(summary, indent=2).encode())
    return summary


def summarize(out: str) -> dict:
    """Counts from the shard markers of a generated dataset."""
    markers = [json.loads(storage.read_bytes(storage.join(out, "_shards", n)))
               for n in storage.list_names(storage.join(out, "_shards"))]
    written = sum(m["written"] for m in markers)
    rejected = sum(m["rejected"] for m in markers)
    return {"out": out, "written": written, "rejected": rejected, "shards": len(markers)}


def _file_bytes(path: str) -> bytes:
    """The raw bytes of a local input file (b"" if it cannot be read: the sample is then rejected)."""
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError:
        return b""

