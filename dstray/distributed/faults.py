"""What a Ray Train run survives, and how it ends when it cannot go on (docs/faults.md).

- **Checkpoints a restart can trust.** Ray Train hands a restarted or re-run worker group the
  checkpoint its controller last *registered*, and the controller takes one report per worker
  every 2 s from a queue of one: a worker that was killed, or a driver stopped with Ctrl-C, leaves
  up to two newer checkpoints on storage that Ray never registered (a re-run of ``train-seg``
  stopped after its checkpoints at steps 30 and 40 resumed from step 20). So every checkpoint is
  named after its step (:func:`checkpoint_name`), sealed with the sizes of its files
  (:func:`seal`, written last), and a worker resumes from the newest sealed one on storage
  (:func:`latest_checkpoint`), not from ``ray.train.get_checkpoint()``. A half-uploaded one (the
  upload was cut) fails its seal and the one before it is taken.
- **Ctrl-C.** Ray Train's ``fit()`` turns SIGINT into an abort of the run and ``sys.exit(0)``;
  :func:`fit_trainer` turns that back into ``KeyboardInterrupt``, which the CLI reports in one line.
- **Out of memory.** A worker that runs out of memory (an allocation error in the loop,
  :func:`memory_guard`, or Ray's memory monitor killing it) fails the attempt; after
  ``max_failures`` restarts :func:`fit_trainer` ends the job with :class:`OutOfMemory`, naming the
  stage, the memory the worker and its node had, and what to lower. Worker-group start-ups that
  time out (what followed out-of-memory kills) count against the same limit
  (:func:`failure_config`): Ray's default retries them forever.
- **Test hooks** (:class:`Faults`): pause a worker after a checkpoint (so that a test can remove
  its node or send Ctrl-C at a known step) and make it run out of memory at a step. Given as
  ``faults`` to the Ray layer's functions, or to a command in a subprocess as the JSON in
  ``DSTRAY_FAULTS``.
"""

from __future__ import annotations

import contextlib
import json
import os
import posixpath
import re
import signal
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pyarrow.fs as pafs
import ray
import ray.train

from dstray import storage

CHECKPOINT_PREFIX = "checkpoint_step-"
SEAL = "dstray-seal.json"  # written last into every checkpoint folder: its files and their sizes
FAULTS_ENV = "DSTRAY_FAULTS"


# --------------------------------------------------------------------------- checkpoints a restart can trust
def checkpoint_name(step: int) -> str:
    """The folder name of the checkpoint of ``step`` (``checkpoint_dir_name`` of ``ray.train.report``)."""
    return f"{CHECKPOINT_PREFIX}{step:08d}"


def seal(folder: str | Path) -> None:
    """Write :data:`SEAL` into a checkpoint folder about to be reported: the size of each of its files."""
    folder = Path(folder)
    sizes = {p.name: p.stat().st_size for p in sorted(folder.iterdir()) if p.is_file() and p.name != SEAL}
    (folder / SEAL).write_text(json.dumps(sizes))


@dataclass(frozen=True)
class Found:
    """A sealed checkpoint on storage: its folder (local path or URI) and step."""

    path: str
    step: int

    @contextlib.contextmanager
    def as_directory(self) -> Iterator[str]:
        """A local folder with the checkpoint's files (a download for URIs)."""
        fs, path = storage.resolve(self.path)
        with ray.train.Checkpoint(path=path, filesystem=fs).as_directory() as d:
            yield d


def _sealed(fs: pafs.FileSystem, path: str) -> bool:
    try:
        with fs.open_input_stream(posixpath.join(path, SEAL)) as f:
            sizes = json.loads(f.read())
    except (OSError, ValueError):
        return False
    infos = {posixpath.basename(i.path): i for i in fs.get_file_info(pafs.FileSelector(path, recursive=False))}
    return all(name in infos and infos[name].size == size for name, size in sizes.items())


def checkpoints(run_dir: str) -> list[Found]:
    """The sealed checkpoints of a Ray Train run folder (``storage_path/name``), oldest first."""
    fs, path = storage.resolve(run_dir)
    if fs.get_file_info(path).type != pafs.FileType.Directory:
        return []
    found = []
    for info in fs.get_file_info(pafs.FileSelector(path, recursive=False)):
        m = re.fullmatch(re.escape(CHECKPOINT_PREFIX) + r"(\d+)", info.base_name)
        if info.type == pafs.FileType.Directory and m and _sealed(fs, info.path):
            found.append(Found(storage.join(run_dir, info.base_name), int(m.group(1))))
    return sorted(found, key=lambda c: c.step)


def latest_checkpoint(run_dir: str) -> Found | None:
    """The newest sealed checkpoint of a run: what a restarted worker group and a re-run resume from."""
    found = checkpoints(run_dir)
    return found[-1] if found else None


def prune_checkpoints(run_dir: str, keep: set[str]) -> None:
    """Remove the step-named checkpoint folders not in ``keep`` (base names): the ones written after the last
    checkpoint Ray registered before an interruption, which its ``num_to_keep`` never deletes."""
    fs, path = storage.resolve(run_dir)
    if fs.get_file_info(path).type != pafs.FileType.Directory:
        return
    for info in fs.get_file_info(pafs.FileSelector(path, recursive=False)):
        if (info.type == pafs.FileType.Directory and info.base_name.startswith(CHECKPOINT_PREFIX)
                and info.base_name not in keep):
            fs.delete_dir(info.path)


def report_checkpoint(metrics: dict, folder: str | Path, step: int) -> None:
    """``ray.train.report`` of a checkpoint folder, sealed and named after ``step``."""
    seal(folder)
    ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(str(folder)),
                     checkpoint_dir_name=checkpoint_name(step))


# --------------------------------------------------------------------------- Ctrl-C and failures
class OutOfMemory(RuntimeError):
    """A stage ran out of memory in every attempt; the message says where, how much, and what to lower."""


def failure_config(max_failures: int) -> ray.train.FailureConfig:
    """Restarts of a lost worker group: ``max_failures`` for worker failures (a dead worker or node, an error),
    and as many for worker groups that fail to start in time (Ray's default is without limit: after
    out-of-memory kills the group then started again and again)."""
    return ray.train.FailureConfig(max_failures=max_failures, controller_failure_limit=max_failures)


def fit_trainer(trainer, *, stage: str, max_failures: int, lower: str):
    """``trainer.fit()``; Ctrl-C raises ``KeyboardInterrupt``, running out of memory :class:`OutOfMemory`.

    Ray Train's ``fit()`` handles SIGINT itself (aborts the run, then ``sys.exit(0)``); the previous
    SIGINT handler is put back afterwards, so a later Ctrl-C does not reach Ray's handler of a
    finished run. ``stage`` names the command in the error, ``lower`` what to lower.
    """
    main = threading.current_thread() is threading.main_thread()
    previous = signal.getsignal(signal.SIGINT) if main else None
    try:
        return trainer.fit()
    except SystemExit:
        raise KeyboardInterrupt from None  # Ray Train aborted the run on Ctrl-C
    except Exception as exc:
        if is_out_of_memory(exc):
            raise out_of_memory(stage, exc, attempts=max_failures + 1, lower=lower) from None
        timeouts = [e for e in _errors(exc) if type(e).__name__ == "WorkerGroupStartupTimeoutError"]
        if timeouts:
            raise RuntimeError(f"{stage}: the Ray cluster had no room to start its workers in {max_failures + 1} "
                               f"tries ({timeouts[0]}); other jobs hold its CPUs or GPUs (`ray status` "
                               "shows them): wait for them, ask for fewer workers or CPUs per worker, or raise "
                               "--max-failures") from None
        raise
    finally:
        if main and previous is not None:
            signal.signal(signal.SIGINT, previous)


_OOM = re.compile(r"OutOfMemoryError|MemoryError|out of memory|can't allocate memory|Cannot allocate memory|"
                  r"running low on memory|memory pressure", re.IGNORECASE)


def _errors(exc: BaseException) -> list[BaseException]:
    """``exc`` and the errors Ray wrapped in it (a task's ``cause``, a Train worker group's failures, chains)."""
    seen, todo, out = set(), [exc], []
    while todo:
        e = todo.pop()
        if not isinstance(e, BaseException) or id(e) in seen:
            continue
        seen.add(id(e))
        out.append(e)
        todo += [getattr(e, "cause", None), getattr(e, "controller_failure", None), e.__cause__, e.__context__]
        failures = getattr(e, "worker_failures", None)
        if isinstance(failures, dict):
            todo += list(failures.values())
    return out


def is_out_of_memory(exc: BaseException) -> bool:
    """Whether ``exc`` (or an error Ray wrapped in it) is an out-of-memory failure."""
    return any(isinstance(e, MemoryError) or _OOM.search(f"{type(e).__name__}: {e}") for e in _errors(exc))


def out_of_memory(stage: str, exc: BaseException, *, attempts: int, lower: str) -> OutOfMemory:
    """The :class:`OutOfMemory` of ``stage``: the memory figures the error carries (this module's worker
    note, or Ray's memory monitor's "was X GB used / Y GB limit"), the attempts, what to lower."""
    text = "\n".join(str(e) for e in _errors(exc))
    had = re.search(r"\[memory: (worker peak [\d.]+ GiB[^\]\n]*)\]", text)
    monitor = re.search(r"was ([\d.]+) ?GB used / ([\d.]+) ?GB limit", text) or \
        re.search(r"was ([\d.]+) ?GB / ([\d.]+) ?GB", text)
    if had:
        memory = had.group(1)
    elif monitor:
        memory = f"Ray's memory monitor killed a worker, node {monitor.group(1)} of {monitor.group(2)} GB in use"
    else:
        memory = f"node {node_memory()}"
    return OutOfMemory(f"{stage} ran out of memory in {attempts} attempt(s) (--max-failures {attempts - 1}): "
                       f"{memory}. Lower {lower}, or give its workers more memory")


def node_memory() -> str:
    """``"X GiB available of Y GiB"`` from /proc/meminfo ("unknown memory" elsewhere)."""
    try:
        info = dict(line.split(":", 1) for line in Path("/proc/meminfo").read_text().splitlines())
        gib = lambda key: int(info[key].split()[0]) / 2**20  # noqa: E731  (kB -> GiB)
        return f"{gib('MemAvailable'):.1f} GiB available of {gib('MemTotal'):.1f} GiB"
    except (OSError, KeyError, ValueError):
        return "unknown memory"


def peak_rss_gib() -> float:
    """This process's peak resident memory (VmHWM), GiB; 0 where /proc is not available."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 2**20
    except OSError:
        pass
    return 0.0


@contextlib.contextmanager
def memory_guard() -> Iterator[None]:
    """In a worker loop: an out-of-memory error leaves as ``MemoryError`` with the memory this worker and its
    node had at that moment (what :func:`out_of_memory` reports on the driver)."""
    try:
        yield
    except Exception as exc:
        if not is_out_of_memory(exc):
            raise
        raise MemoryError(f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''} [memory: worker "
                          f"peak {peak_rss_gib():.2f} GiB resident, node {node_memory()}]") from exc


# --------------------------------------------------------------------------- test hooks
def faults_config(faults: dict | None = None) -> dict:
    """The test hooks of a run: ``faults`` merged over the JSON in ``DSTRAY_FAULTS`` (empty when neither)."""
    found = json.loads(os.environ.get(FAULTS_ENV) or "{}")
    return {**found, **(faults or {})}


class Faults:
    """Test hooks inside a worker loop, from :func:`faults_config` (plain dict); ``run`` names the run.

    - ``{"pause": [k, path]}``: after reporting the checkpoint of step k, write ``path-<run>`` (this
      worker's node id) and wait until that file is gone (at most 10 minutes); once per path, also
      across restarts. Generation: ``delay`` and ``pause_shards`` (:meth:`after_shard`).
    - ``{"oom": k}``: at step k, allocate far more than any machine has (a real allocation error), each attempt;
      ``{"oom_log": path}`` appends a line per attempt.
    """

    def __init__(self, config: dict | None, run: str):
        self.config, self.run = config or {}, run

    def after_checkpoint(self, step: int) -> None:
        if "pause" in self.config and step == self.config["pause"][0]:
            _pause(Path(f"{self.config['pause'][1]}-{self.run}"))

    def after_shard(self, shard: int) -> None:
        """Generation: ``{"delay": s}`` sleeps s seconds after each shard; ``{"pause_shards": [[k, ...], path]}``
        pauses after shard k as :meth:`after_checkpoint` does (marker ``path-generate-<k>``)."""
        time.sleep(self.config.get("delay", 0))
        if "pause_shards" in self.config and shard in self.config["pause_shards"][0]:
            _pause(Path(f"{self.config['pause_shards'][1]}-{self.run}-{shard}"))

    def at_step(self, step: int) -> None:
        if self.config.get("oom") != step:
            return
        if self.config.get("oom_log"):
            with open(self.config["oom_log"], "a") as f:
                f.write(f"{self.run} step {step}\n")
        import torch

        torch.empty(2**62, dtype=torch.uint8)  # 4 EiB: the allocator refuses it at once


def _pause(marker: Path) -> None:
    """Write ``marker`` (this worker's node id) and wait until it is gone (at most 10 minutes); once per marker,
    also across restarts (a restarted worker that comes back to the same point does not wait)."""
    once = marker.with_name(marker.name + ".once")
    if once.exists():
        return
    once.write_text("paused")
    tmp = marker.with_name(marker.name + ".tmp")
    tmp.write_text(ray.get_runtime_context().get_node_id())
    os.replace(tmp, marker)  # whole, as the test reads it
    deadline = time.monotonic() + 600
    while marker.exists() and time.monotonic() < deadline:
        time.sleep(0.1)
