"""Connecting to Ray and deciding where work runs."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from pathlib import Path

import ray

from dstray import storage

log = logging.getLogger("dstray")


def init_ray(address: str | None = None) -> None:
    """Connect to a cluster (``address``, ``RAY_ADDRESS``, or inside a job: the job's cluster),
    or start a local one. A no-op when Ray is already initialised.

    Without an address a new local runtime is started (``address="local"``), never an existing
    one joined: ``ray.init()`` alone would attach to whatever ``ray start`` cluster runs on the
    machine (another user's included); ``--address auto`` joins one on purpose.
    """
    if ray.is_initialized():
        return
    address = address or os.environ.get("RAY_ADDRESS") or "local"
    ray.init(address=address, log_to_driver=True, logging_level=logging.WARNING)


def cluster_gpus() -> float:
    return float(ray.cluster_resources().get("GPU", 0.0))


def resolve_use_gpu(flag: str | bool) -> bool:
    """``auto`` -> whether the cluster has GPUs; ``true`` requires them; ``false`` never."""
    value = str(flag).lower()
    if value == "auto":
        return cluster_gpus() > 0
    if value in ("true", "1", "yes"):
        if cluster_gpus() == 0:
            raise RuntimeError("--use-gpu true was asked for but the Ray cluster reports no GPU; "
                               "use --use-gpu auto or false, or add GPU nodes (see cluster.yaml)")
        return True
    if value in ("false", "0", "no"):
        return False
    raise ValueError(f"--use-gpu must be auto, true or false; got {flag!r}")


def ray_storage_path(out: str, storage_path: str | None = None) -> str:
    """Where Ray Train/Tune keep a run's checkpoints: ``storage_path`` or ``out/_ray``, absolute if local."""
    path = storage_path or storage.join(out, "_ray")
    return path if "://" in path else os.path.abspath(path)


def die_once_at(step: int, marker: str | Path) -> Callable[[int], None]:
    """Test hook: a per-step callback that kills this process the first time ``step`` is reached.

    Simulates a lost worker or trial; ``marker`` (a file, written before dying) makes it happen once.
    """
    def hook(current: int) -> None:
        if current == step and not os.path.exists(marker):
            Path(marker).write_text("died once")
            os._exit(1)

    return hook
