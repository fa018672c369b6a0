"""Connecting to Ray and deciding where work runs."""

from __future__ import annotations

import fcntl
import json
import logging
import os
import signal
import sys
import tempfile
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
    machine (another user's included); ``--address auto`` joins one on purpose. Only one dstray
    command at a time runs a local runtime on a machine (:func:`claim_local_runtime`).
    """
    if ray.is_initialized():
        return
    address = address or os.environ.get("RAY_ADDRESS") or "local"
    if address == "local":
        claim_local_runtime()
    ray.init(address=address, log_to_driver=True, logging_level=logging.WARNING)


def reserve_local_runtime(address: str | None = None) -> None:
    """Claim this machine's local runtime (:func:`claim_local_runtime`) now, before a command writes anything,
    when :func:`init_ray` will start one: a second command beside another fails before it changes a file."""
    if not ray.is_initialized() and not (address or os.environ.get("RAY_ADDRESS")):
        claim_local_runtime()


LOCK_ENV = "DSTRAY_RAY_LOCK"  # the lock file's path (tests give their own)
_claimed: list = []  # the open lock file of this process's local runtime (held until the process exits)


def claim_local_runtime() -> None:
    """Refuse a second local runtime beside another dstray command's on this machine (same user).

    A local runtime lives and dies with the command that started it, so a second command cannot
    join it safely; two runtimes beside each other each count the machine's cores and memory as
    their own, and Ray's helpers that look for "the" local cluster fail ("Found multiple active Ray
    instances"). The first command holds an exclusive lock on a file (released by the kernel when it
    exits, however it ends); the second fails at once with a message naming the first.
    """
    if _claimed:
        return
    path = Path(os.environ.get(LOCK_ENV) or Path(tempfile.gettempdir()) / f"dstray-ray-{os.getuid()}.lock")
    f = open(path, "a+")
    try:
        fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        f.seek(0)
        try:
            other = json.loads(f.read() or "{}")
        except ValueError:
            other = {}
        f.close()
        who = f"pid {other.get('pid', '?')}: {other.get('command', 'another dstray command')}"
        raise RuntimeError(f"another dstray command runs its own local Ray runtime on this machine ({who}); a second "
                           "runtime beside it would share its cores and memory, and it cannot be joined (it ends "
                           "with that command). Wait for it to finish, or run both on one cluster: `ray start "
                           "--head` once, then give each command --address auto") from None
    f.seek(0)
    f.truncate()
    f.write(json.dumps({"pid": os.getpid(), "command": " ".join([os.path.basename(sys.argv[0]), *sys.argv[1:]])}))
    f.flush()
    _claimed.append(f)


def stop_quietly() -> None:
    """After Ctrl-C: stop this process's Ray work (a local runtime ends; on a cluster the job's tasks and actors
    end with its driver) with Ray's last forwarded output silenced, so that nothing runs or prints after
    the command's line (``dstray.cli.interrupted``). A second Ctrl-C meanwhile is ignored."""
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    for stream in (sys.stdout, sys.stderr):
        stream.flush()
    saved = [os.dup(1), os.dup(2)]
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 1)
        os.dup2(devnull, 2)
        ray.shutdown()
    finally:
        for stream in (sys.stdout, sys.stderr):
            stream.flush()
        os.dup2(saved[0], 1)
        os.dup2(saved[1], 2)
        for fd in (*saved, devnull):
            os.close(fd)
        signal.signal(signal.SIGINT, previous)


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
