"""Generate a labelled Parquet dataset with Ray Data: the Ray wiring of :mod:`dstray.dst.synth`.

How a run works:

1. The driver validates the inputs (dataset, references, DST checkpoints) and plans the
   exact list of N samples (:func:`dstray.dst.synth.prepare`: type, background, reference,
   per-sample seed). The plan is cut into shards of ``shard_size`` consecutive samples.
2. [1] Backgrounds, references and models are put in the object store once, so workers need
   no shared file system for the inputs.
3. [2] Ray Data maps the shards through an actor pool (``map_batches`` with
   ``ActorPoolStrategy``; the models are loaded once per actor; one GPU per actor when the
   cluster has GPUs). Each shard becomes one file ``data/part-XXXXX.parquet`` (and
   ``rejects/part-XXXXX.parquet`` for samples whose background was bad: unreadable, over
   ``max_image_pixels``, too small for the area; or whose fill failed), then a marker
   ``_shards/XXXXX.json`` is written last (:func:`dstray.dst.synth.write_shard`).
4. Exactly once: a shard's content depends only on the plan, so a retried shard (a
   crashed actor, a lost node: Ray Data retries those) rewrites the same file with the
   same bytes. A re-run lists the markers and only does the missing shards; a finished
   run is a no-op. ``requested = written + rejected`` always.
"""

from __future__ import annotations

import json
import logging
import time

import numpy as np
import ray
import torch

from dstray import storage
from dstray.config import GenerateConfig, from_dict
from dstray.distributed.faults import Faults, faults_config
from dstray.distributed.runtime import init_ray, reserve_local_runtime, resolve_use_gpu
from dstray.dst.synth import build_synthesizer, check_output, prepare, shard_plan, summarize, write_shard

log = logging.getLogger("dstray")

# Generation actors see many window shapes; oneDNN caches primitives per shape and glibc keeps
# the freed buffers, so RSS grew ~2 MB a sample without these (measured: 1.3 -> 2.2 GB over 256
# samples in one process; flat with them).
ACTOR_ENV = {"ONEDNN_PRIMITIVE_CACHE_CAPACITY": "16", "MALLOC_ARENA_MAX": "2"}


class ShardGenerator:
    """Ray Data actor: builds the Synthesizer once, then turns shard ids into Parquet files."""

    def __init__(self, context_ref: list, shard_size: int, faults: dict | None = None):
        self.ctx, self.shard_size = ray.get(context_ref[0]), shard_size
        self.faults = Faults(faults, "generate")  # tests
        device = "cuda" if torch.cuda.is_available() and ray.get_gpu_ids() else "cpu"
        self.synth = build_synthesizer(self.ctx, device)

    def _fetched(self, shard: int) -> dict:
        """The run context with this shard's backgrounds fetched from the object store (bytes).

        A background the driver could not read stays a path: reading it here fails the same way,
        and its samples become rejects with that reason ("file not found", ...).
        """
        ids = list(dict.fromkeys(p["background_id"] for p in shard_plan(self.ctx, shard, self.shard_size)))
        refs = {i: self.ctx["backgrounds"][i] for i in ids if isinstance(self.ctx["backgrounds"][i], ray.ObjectRef)}
        blobs = dict(zip(refs, ray.get(list(refs.values()))))
        return dict(self.ctx, backgrounds={i: blobs.get(i, self.ctx["backgrounds"][i]) for i in ids})

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        out = {"shard": [], "written": [], "rejected": [], "seconds": [], "peak_rss_mib": []}
        for shard in batch["shard"].tolist():
            t0 = time.perf_counter()
            written, rejected = write_shard(self._fetched(int(shard)), self.synth, int(shard), self.shard_size)
            out["shard"].append(shard)
            out["written"].append(written)
            out["rejected"].append(rejected)
            out["seconds"].append(time.perf_counter() - t0)
            out["peak_rss_mib"].append(peak_rss_mib())
            self.faults.after_shard(int(shard))
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


def generate(cfg: GenerateConfig, *, shard_size: int = 32, address: str | None = None,
             faults: dict | None = None) -> dict:
    """Run (or finish) a generation; returns the summary (also written to ``out/summary.json``).

    ``faults``: test hooks (:meth:`dstray.distributed.faults.Faults.after_shard`)."""
    reserve_local_runtime(address)
    ctx = prepare(cfg)
    cfg = from_dict(GenerateConfig, ctx["cfg"])  # with absolute paths
    check_output(cfg, ctx["fingerprint"], ctx.get("classes"))
    n_shards = -(-cfg.num_samples // shard_size)
    done = {int(n.split(".")[0]) for n in storage.list_names(storage.join(cfg.out, "_shards"))}
    todo = [k for k in range(n_shards) if k not in done]
    if done and todo:
        log.info("%s: %d of %d shards already done; generating the other %d", cfg.out, len(done), n_shards, len(todo))

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
        # [1] Inputs travel through the object store: workers need no shared file system.
        ctx = dict(ctx, backgrounds={k: _put_file(v) for k, v in ctx["backgrounds"].items()})
        ctx_ref = ray.put(ctx)
        # [2] one block per shard, mapped by an actor pool that loads the models once per actor
        ds = ray.data.from_items([{"shard": k} for k in todo], override_num_blocks=len(todo))
        ds = ds.map_batches(
            ShardGenerator,
            batch_size=1,
            fn_constructor_kwargs={"context_ref": [ctx_ref], "shard_size": shard_size,
                                   "faults": faults_config(faults)},
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


def saved(cfg: GenerateConfig, *, shard_size: int = 32) -> str:
    """What an interrupted generation left: its finished shards (a shard is finished once its marker is written)."""
    out = storage.absolute(cfg.out)
    done = len(storage.list_names(storage.join(out, "_shards")))
    return f"{done} of {-(-cfg.num_samples // shard_size)} shards in {out}"


def _put_file(path: str) -> ray.ObjectRef | str:
    """A local input file's bytes in the object store; its path if it cannot be read (its samples are rejects)."""
    try:
        with open(path, "rb") as f:
            return ray.put(f.read())
    except OSError:
        return path

