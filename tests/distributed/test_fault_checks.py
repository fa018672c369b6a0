"""The fault-handling pieces that need no Ray runtime: which checkpoint a restart trusts, how an
out-of-memory failure is told apart and reported, the Ctrl-C line, and the one-local-runtime lock."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from dstray.distributed.faults import (SEAL, checkpoint_name, checkpoints, is_out_of_memory, latest_checkpoint,
                                       out_of_memory, prune_checkpoints, seal)

REPO = Path(__file__).resolve().parents[2]


def _checkpoint(run: Path, step: int, files: dict[str, bytes]) -> Path:
    folder = run / checkpoint_name(step)
    folder.mkdir(parents=True)
    for name, data in files.items():
        (folder / name).write_bytes(data)
    seal(folder)
    return folder


def test_the_newest_sealed_checkpoint_is_the_one_to_resume_from(tmp_path):
    run = tmp_path / "run"
    assert latest_checkpoint(str(run)) is None  # no run folder yet
    for step in (20, 30, 40):
        _checkpoint(run, step, {"state.pt": b"x" * step, "model.pt": b"m"})
    (run / "checkpoint_2026-01-01_00-00-00.000000").mkdir()  # Ray's own naming: not ours, ignored
    assert [c.step for c in checkpoints(str(run))] == [20, 30, 40]
    assert latest_checkpoint(str(run)).path == str(run / checkpoint_name(40))

    # an upload cut short: a file shorter than sealed, or the seal missing -> the one before it
    (run / checkpoint_name(40) / "state.pt").write_bytes(b"x")
    assert latest_checkpoint(str(run)).step == 30
    unsealed = _checkpoint(run, 50, {"state.pt": b"s"})
    (unsealed / SEAL).unlink()
    assert latest_checkpoint(str(run)).step == 30
    with latest_checkpoint(str(run)).as_directory() as d:
        assert Path(d, "state.pt").read_bytes() == b"x" * 30

    prune_checkpoints(str(run), {checkpoint_name(30)})  # what Ray keeps stays, the other step folders go
    assert sorted(p.name for p in run.iterdir()) == ["checkpoint_2026-01-01_00-00-00.000000", checkpoint_name(30)]


# Ray's memory monitor's message (ray/core raylet, 2.60), and torch's allocator error inside a Train worker
MONITOR = ("ray.exceptions.OutOfMemoryError: Task was killed due to the node running low on memory.\n"
           "Memory on the node (IP: 10.0.0.3, ID: 4f2a) was 22.80GB used / 24.00GB limit (0.950000), which exceeds "
           "the memory usage threshold of 0.95.")
TORCH = "RuntimeError: DefaultCPUAllocator: can't allocate memory: you tried to allocate 4611686018427387904 bytes."


def test_out_of_memory_is_recognised_through_ray_wrappers_and_says_what_to_lower():
    class WorkerGroupError(Exception):  # the shape of Ray Train's error: failures per worker rank
        def __init__(self, failures):
            super().__init__("Training failed due to worker errors")
            self.worker_failures = failures

    assert is_out_of_memory(WorkerGroupError({0: RuntimeError(MONITOR)}))
    assert is_out_of_memory(WorkerGroupError({1: MemoryError(f"{TORCH} [memory: worker peak 1.42 GiB resident]")}))
    assert not is_out_of_memory(WorkerGroupError({0: ValueError("no split 'val'")}))

    error = out_of_memory("train-seg", RuntimeError(MONITOR), attempts=3, lower="--batch-size (8) or --window (256)")
    assert str(error) == ("train-seg ran out of memory in 3 attempt(s) (--max-failures 2): Ray's memory monitor "
                          "killed a worker, node 22.80 of 24.00 GB in use. Lower --batch-size (8) or --window (256), "
                          "or give its workers more memory")
    worker = MemoryError(f"{TORCH} [memory: worker peak 1.42 GiB resident, node 3.1 GiB available of 23.4 GiB]")
    error = out_of_memory("fit-dst (crack)", WorkerGroupError({0: worker}), attempts=2, lower="--batch-size")
    assert str(error) == ("fit-dst (crack) ran out of memory in 2 attempt(s) (--max-failures 1): worker peak 1.42 GiB "
                          "resident, node 3.1 GiB available of 23.4 GiB. Lower --batch-size, or give its workers more "
                          "memory")


def test_ctrl_c_line_names_what_was_saved_and_the_command_that_resumes(capsys, monkeypatch):
    from dstray.cli import main

    def interrupted(args):
        args.saved = lambda: "3 of 5 shards in /runs/g"
        raise KeyboardInterrupt

    monkeypatch.setattr("dstray.cli.dst.cmd_generate", interrupted)  # main builds its parser per call: patched
    stopped = []  # (the suite's process keeps its connection to the shared cluster)
    monkeypatch.setattr("dstray.distributed.runtime.stop_quietly", lambda: stopped.append(True))
    import ray  # noqa: F401  (a command that ran Ray work: it is stopped before the line is printed)
    argv = ["generate", "--generator", "copy", "--out", "/runs/g", "--num-samples", "5"]
    assert main(argv) == 130
    err = capsys.readouterr().err
    assert err == ("dstray generate: interrupted; saved 3 of 5 shards in /runs/g; resume with: dstray generate "
                   "--generator copy --out /runs/g --num-samples 5\n")
    assert stopped == [True]


def test_a_second_local_runtime_is_refused_with_the_first_commands_name(tmp_path):
    lock = tmp_path / "ray.lock"
    env = dict(os.environ, PYTHONPATH=str(REPO), DSTRAY_RAY_LOCK=str(lock))
    holder = subprocess.Popen([sys.executable, "-c", textwrap.dedent("""
        import sys, time
        sys.argv = ["dstray", "fit-dst", "--all", "--out", "runs/models"]
        from dstray.distributed.runtime import claim_local_runtime
        claim_local_runtime()
        print("held", flush=True)
        time.sleep(60)
    """)], env=env, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline() == "held\n"
        from dstray.distributed import runtime

        assert json.loads(lock.read_text()) == {"pid": holder.pid, "command": "dstray fit-dst --all --out runs/models"}
        with pytest.MonkeyPatch.context() as mp:
            mp.setenv("DSTRAY_RAY_LOCK", str(lock))
            mp.setattr(runtime, "_claimed", [])
            with pytest.raises(RuntimeError, match=rf"another dstray command runs its own local Ray runtime on this "
                                                   rf"machine \(pid {holder.pid}: dstray fit-dst --all --out "
                                                   rf"runs/models\).*--address auto"):
                runtime.claim_local_runtime()
        # a second command, as a user starts it beside the first: it fails at once, before starting Ray
        t0 = time.perf_counter()
        second = subprocess.run([sys.executable, "-m", "dstray", "generate", "--generator", "copy", "--num-samples",
                                 "2", "--out", str(tmp_path / "gen")], env=env, capture_output=True, text=True,
                                timeout=120)
        assert second.returncode == 2 and time.perf_counter() - t0 < 60, second.stderr
        assert second.stderr.splitlines() == [
            f"dstray generate: error: another dstray command runs its own local Ray runtime on this machine (pid "
            f"{holder.pid}: dstray fit-dst --all --out runs/models); a second runtime beside it would share its cores "
            "and memory, and it cannot be joined (it ends with that command). Wait for it to finish, or run both on "
            "one cluster: `ray start --head` once, then give each command --address auto"], second.stderr
    finally:
        holder.kill()
        holder.wait()
    with pytest.MonkeyPatch.context() as mp:  # the kernel released the lock with the process: the next one gets it
        mp.setenv("DSTRAY_RAY_LOCK", str(lock))
        mp.setattr(runtime, "_claimed", [])
        runtime.claim_local_runtime()
        assert json.loads(lock.read_text())["pid"] == os.getpid()
        runtime._claimed.pop().close()


def test_what_an_interrupted_run_saved_is_read_from_its_folders(tmp_path):
    """The "saved ..." part of the Ctrl-C line of the commands without a signal test of their own."""
    import torch

    from dstray.distributed import experiments, pipeline, seeds, tune_seg

    out = tmp_path / "seeds"
    for s, step in ((0, 4), (2, 2)):
        (out / f"seed-{s}").mkdir(parents=True)
        torch.save({"steps": step}, out / f"seed-{s}" / "state.pt")
    assert seeds.saved(str(out), [0, 1, 2], steps=6) == f"seed 0 at step 4 of 6, seed 2 at step 2 of 6 in {out}"
    assert seeds.saved(str(tmp_path / "none"), [0], steps=6) == "no checkpoint yet"

    run = tmp_path / "run"
    for t in ("blowhole", "crack"):
        (run / "models" / t).mkdir(parents=True)
        (run / "models" / t / "fit.json").write_text("{}")
    (run / "generated" / "_shards").mkdir(parents=True)
    (run / "generated" / "_stage.json").write_text(json.dumps({"key": "k", "done": True}))
    _checkpoint(run / "seg" / "_ray" / "train-seg", 40, {"state.pt": b"s"})
    assert pipeline.saved(str(run)) == f"2 DST model(s), generate done, seg at step 40 in {run}"

    results = tmp_path / "results"
    results.mkdir()
    (results / "table1.jsonl").write_text(json.dumps({"cell": "a"}) + "\n" + json.dumps({"cell": "b"}) + "\n")
    assert experiments.saved("table1", data=None, out=str(run), results=str(results)) == \
        f"2 finished cell(s) in {results / 'table1.jsonl'} (pools and cell checkpoints in {run})"

    search = tmp_path / "tune" / "_ray" / "tune-seg"
    (search / "trial_1" / "checkpoint_000001").mkdir(parents=True)
    (search / "trial_1" / "params.json").write_text("{}")
    assert tune_seg.saved(str(tmp_path / "tune")) == f"the search and 1 trial(s) with 1 checkpoint(s) in {search}"
