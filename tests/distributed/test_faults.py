"""A lost node, Ctrl-C, running out of memory: each costs time, never a different result (docs/faults.md).

Worker nodes are added to the shared session cluster (a ``ray.cluster_utils.Cluster``, as the
generation test of ``test_jobs_and_faults.py`` does) and the head's CPUs are held for the test, so
the work runs on nodes the test can remove. A test hook (``DSTRAY_FAULTS``) pauses a worker right
after the checkpoint of a given step and writes its node's id, so that Ctrl-C comes, or the node
goes, at a known step. Ctrl-C is sent to a ``dstray`` command in a subprocess (its own process group,
as a terminal does); the same command is then run again in this process.
"""

from __future__ import annotations

import json
import logging
import os
import re
import signal
import subprocess
import sys
import threading
import time
from dataclasses import replace
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from dstray.config import save
from tests.helpers import TINY_SEG, small_sample, torch_threads

pytestmark = pytest.mark.ray

REPO = Path(__file__).resolve().parents[2]


# --------------------------------------------------------------------------- helpers
class _Hold:
    def ready(self) -> bool:
        return True


class Nodes:
    """Worker nodes of 2 CPUs added to the shared cluster for this module, the head's CPUs held meanwhile, so
    that work runs on nodes a test can remove. :meth:`ensure` tops them up; node starts cost seconds, so a
    test leaves the survivors to the next."""

    def __init__(self, cluster):
        import ray
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        self.cluster, self.nodes = cluster, []
        head = cluster.head_node.node_id
        cpus = next(x["Resources"]["CPU"] for x in ray.nodes() if x["NodeID"] == head)
        self.hold = ray.remote(num_cpus=cpus)(_Hold).options(
            scheduling_strategy=NodeAffinitySchedulingStrategy(head, soft=False)).remote()
        ray.get(self.hold.ready.remote())

    def ensure(self, n: int) -> None:
        while len(self.nodes) < n:
            self.nodes.append(self.cluster.add_node(num_cpus=2))
        self.cluster.wait_for_nodes()

    def remove(self, node_id: str) -> None:
        """The node ``node_id`` dies (no graceful shutdown), with every worker on it."""
        node = next(x for x in self.nodes if x.node_id == node_id)
        self.nodes.remove(node)
        self.cluster.remove_node(node, allow_graceful=False)

    def close(self) -> None:
        import ray

        ray.kill(self.hold)
        for node in self.nodes:
            self.cluster.remove_node(node)


@pytest.fixture(scope="module")
def nodes(ray_cluster):
    pool = Nodes(ray_cluster)
    yield pool
    pool.close()


def wait_for(path: Path, proc: subprocess.Popen | None = None, timeout: float = 300) -> str:
    """The text of ``path`` once it exists (a paused worker's node id)."""
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert proc is None or proc.poll() is None, f"the command ended (exit {proc.returncode}) before {path.name}"
        assert time.monotonic() < deadline, f"no {path} after {timeout} s"
        time.sleep(0.1)
    return path.read_text()


def ctrl_c(argv: list[str], ready, log: Path, faults: dict) -> tuple[int, str]:
    """Run ``dstray ARGV`` in a subprocess, Ctrl-C it once ``ready`` (a list of marker files that must exist, or a
    predicate) holds; its exit code and what it printed after the Ctrl-C."""
    env = dict(os.environ, PYTHONPATH=str(REPO), DSTRAY_FAULTS=json.dumps(faults), OMP_NUM_THREADS="1")
    with open(log, "w") as out:
        # SIGINT as a terminal leaves it: a suite started in the background (`cmd &`) ignores SIGINT, and a child
        # inherits that, so Python would not even install its Ctrl-C handler
        proc = subprocess.Popen([sys.executable, "-m", "dstray", *argv], env=env, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True, preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        if callable(ready):
            deadline = time.monotonic() + 300
            while not ready():
                assert proc.poll() is None and time.monotonic() < deadline, log.read_text()[-3000:]
                time.sleep(0.05)
        else:
            for m in ready:
                wait_for(m, proc)
        time.sleep(0.5)  # what the command printed up to here reaches the log
        before = log.stat().st_size
        os.killpg(proc.pid, signal.SIGINT)  # a terminal's Ctrl-C: the whole process group
        rc = proc.wait(timeout=180)
    finally:
        if proc.poll() is None:
            proc.kill()
    return rc, log.read_bytes()[before:].decode(errors="replace")


def assert_one_line(said: str, line: str) -> None:
    """What a command printed after Ctrl-C: its one line last, no other of its own, no traceback (a progress
    line Ray printed while stopping may come before it)."""
    lines = said.strip().splitlines()
    assert lines[-1] == line and [x for x in lines if x.startswith("dstray ")] == [line], said
    assert not any(w in said for w in ("Traceback", "KeyboardInterrupt", "_raylet")), said


def in_thread(fn) -> tuple[threading.Thread, dict]:
    box: dict = {}

    def run():
        try:
            box["value"] = fn()
        except BaseException as exc:  # reported by the test
            box["error"] = exc

    thread = threading.Thread(target=run)
    thread.start()
    return thread, box


def assert_same(a, b, where: str = "") -> None:
    """Equal to the bit: tensors with ``torch.equal``, containers item by item."""
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b), where
    elif isinstance(a, dict):
        assert isinstance(b, dict) and set(a) == set(b), (where, set(a) ^ set(b))
        for k in a:
            assert_same(a[k], b[k], f"{where}/{k}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            assert_same(x, y, f"{where}[{i}]")
    else:
        assert a == b or (a != a and b != b), (where, a, b)  # NaN equals NaN here


def load(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)


# --------------------------------------------------------------------------- train-seg, 2 workers
def test_train_seg_ctrl_c_then_a_lost_node_ends_at_the_uninterrupted_weights(ray_cluster, nodes, tmp_path, caplog):
    """Ctrl-C after the step-2 checkpoint, the re-run resumes there (not earlier), loses a worker node after its
    step-4 checkpoint and resumes there: the same weights, selected model and history scores as one run.
    Real images only (no Ray Data: its executions cost seconds each); the synthetic stream's part of an exact
    resume is the next test's."""
    from dstray.cli import main
    from dstray.distributed.faults import checkpoint_name
    from dstray.distributed.train_seg import train_seg

    nodes.ensure(2)
    cfg = replace(TINY_SEG, steps=6, eval_every=2, synthetic=[])
    save(cfg, tmp_path / "seg.json")
    train_seg(cfg, out=str(tmp_path / "ref"), num_workers=2, use_gpu="false", threads_per_worker=1)  # uninterrupted

    out, run_dir = tmp_path / "run", tmp_path / "run" / "_ray" / "train-seg"
    argv = ["train-seg", "--config", str(tmp_path / "seg.json"), "--num-workers", "2", "--threads-per-worker", "1",
            "--use-gpu", "false", "--out", str(out)]
    rc, said = ctrl_c([*argv, "--address", ray_cluster.address], [tmp_path / "p2-train-seg"], tmp_path / "log",
                      {"pause": [2, str(tmp_path / "p2")]})
    assert rc == 130, said
    assert_one_line(said, f"dstray train-seg: interrupted; saved the checkpoint at step 2 of 6 in {run_dir}; "
                          f"resume with: dstray {' '.join(argv)} --address {ray_cluster.address}")
    assert sorted(p.name for p in run_dir.glob("checkpoint_step-*")) == [checkpoint_name(2)]

    # the same command again (here, in a thread): resumes from step 2; its workers' node goes after step 4
    caplog.set_level(logging.INFO, logger="dstray")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("DSTRAY_FAULTS", json.dumps({"pause": [4, str(tmp_path / "p4")]}))
        thread, box = in_thread(lambda: main(argv))
        nodes.remove(wait_for(tmp_path / "p4-train-seg"))
        thread.join(timeout=600)
    assert box == {"value": 0}, box
    assert f"resumed from step 2 of 6 ({run_dir / checkpoint_name(2)})" in caplog.text
    assert json.loads((run_dir / checkpoint_name(6) / "progress.json").read_text())["started_from"] == 4  # node loss
    assert checkpoint_name(6) in {p.name for p in run_dir.glob("checkpoint_step-*")}

    ref = tmp_path / "ref"
    assert_same(load(out / "model.pt"), load(ref / "model.pt"), "model.pt")
    assert_same(load(out / "state.pt"), load(ref / "state.pt"), "state.pt")
    drop = ("seconds", "eval_seconds", "images_per_s")  # wall times
    rows = [[{k: v for k, v in json.loads(line).items() if k not in drop} for line in (d / "history.jsonl").open()]
            for d in (out, ref)]
    assert rows[0] == rows[1] and [r["step"] for r in rows[0]] == [2, 4, 6]
    assert json.loads((out / "test" / "eval.json").read_text())["pixel"] == \
        json.loads((ref / "test" / "eval.json").read_text())["pixel"]


def test_the_synthetic_stream_resumes_where_the_checkpoint_stood(ray_cluster, nodes, synthetic, tmp_path):
    """A ShardSource restored from a checkpoint's (epoch, taken) draws the batches the uninterrupted one draws next,
    also across the end of an epoch."""
    import ray

    from dstray.distributed.train_seg import ShardSource

    nodes.ensure(1)
    rows = pq.read_table(Path(synthetic) / "data")
    data = tmp_path / "data"
    data.mkdir()
    pq.write_table(pa.concat_tables([rows] * 4), data / "part-00000.parquet")  # 16 rows: an epoch of 5.3 batches
    cfg = replace(TINY_SEG, synthetic=[str(data)], real_splits=[], augment=False, batch_size=3)

    def source(**kw) -> ShardSource:
        ds = ray.data.read_parquet(str(data)).select_columns(["image", "mask"])  # what train_seg streams
        return ShardSource(cfg, ds.iterator(), [], channels=1, **kw)

    def batch(src: ShardSource, i: int) -> torch.Tensor:
        return src.batch(3, torch.Generator().manual_seed(i))["image"]

    one = source()
    first = [batch(one, i) for i in range(2)]  # 6 of 16 items, then the checkpoint
    saved = {"epoch": one.epoch, "taken": one.taken}
    assert saved == {"epoch": 1, "taken": 6} and first[0].shape == (3, 1, 64, 64)
    rest = [batch(one, i) for i in range(2, 8)]  # on into the second epoch
    resumed = source(epoch=saved["epoch"] - 1)
    resumed.skip = saved["taken"]
    for i, expected in enumerate(rest, 2):
        assert torch.equal(batch(resumed, i), expected), i
    assert (resumed.epoch, resumed.taken) == (one.epoch, one.taken) == (2, 8)
    one.close()
    resumed.close()


# --------------------------------------------------------------------------- fit-dst --all, 2 types
def test_fit_dst_all_ctrl_c_then_a_lost_node_ends_at_the_uninterrupted_weights(ray_cluster, nodes, tmp_path, caplog):
    from dstray.cli import main
    from dstray.data import load_dataset, preflight
    from dstray.dst.fit import fit_dst
    from dstray.presets import dst_preset

    types = ["blowhole", "crack"]
    cfg = dst_preset("smoke", steps=6, checkpoint_every=2, log_every=1000)
    dataset = load_dataset(None)
    skip = preflight(dataset, job="fit-dst", types=types, area=cfg.area).skip  # as fit_all checks them
    for t in types:  # the uninterrupted fits, in this process (the one loop, one thread as the Train worker)
        with torch_threads(1):
            fit_dst(replace(cfg, defect_type=t, device="cpu"), dataset.without(skip), tmp_path / "ref" / t)

    out = tmp_path / "models"
    argv = ["fit-dst", "--types", ",".join(types), "--preset", "smoke", "--steps", "6", "--checkpoint-every", "2",
            "--log-every", "1000", "--cpus-per-worker", "1", "--use-gpu", "false", "--out", str(out)]
    nodes.ensure(2)
    rc, said = ctrl_c([*argv, "--address", ray_cluster.address], [tmp_path / f"p2-dst-{t}" for t in types],
                      tmp_path / "log", {"pause": [2, str(tmp_path / "p2")]})
    assert rc == 130, said
    assert_one_line(said, f"dstray fit-dst: interrupted; saved blowhole at step 2 of 6, crack at step 2 of 6 "
                          f"(checkpoints in {out / '_ray'}); resume with: dstray {' '.join(argv)} --address "
                          f"{ray_cluster.address}")

    caplog.set_level(logging.INFO, logger="dstray")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("DSTRAY_FAULTS", json.dumps({"pause": [4, str(tmp_path / "p4")]}))
        thread, box = in_thread(lambda: main(argv))
        paused = {t: wait_for(tmp_path / f"p4-dst-{t}") for t in types}
        nodes.remove(paused["blowhole"])  # blowhole's node goes (crack's too if the same)
        for t in types:
            (tmp_path / f"p4-dst-{t}").unlink(missing_ok=True)  # the other worker goes on
        thread.join(timeout=600)
    assert box == {"value": 0}, box
    for t in types:
        assert f"resumed {t} from step 2 of 6" in caplog.text
        ours, ref = load(out / t / "model.pt"), load(tmp_path / "ref" / t / "model.pt")
        assert_same(ours["state_dict"], ref["state_dict"], t)
        assert_same(ours["losses"], ref["losses"], f"{t} losses")
        assert [h["step"] for h in ours["losses"]] == [1, 2, 3, 4, 5, 6]


# --------------------------------------------------------------------------- generate: 1,000 rows, two nodes lost
def test_generate_ctrl_c_then_two_lost_nodes_write_exactly_the_rows_of_an_uninterrupted_run(ray_cluster, nodes,
                                                                                            tmp_path, caplog):
    """Ctrl-C after the first shards (each shard slowed by 0.5 s), then the same command loses the nodes of two
    actors, each paused right after writing a shard (a retried shard is written again): the same files, to the
    byte, as an uninterrupted run's."""
    from dstray.cli import main
    from dstray.config import GenerateConfig
    from dstray.dst.synth import build_synthesizer, check_output, prepare, write_shard

    data = small_sample(tmp_path / "small")
    n, shard, out = 1000, 50, tmp_path / "gen"
    ref = GenerateConfig(generator="copy", data=str(data), num_samples=n, seed=5, patch_size=32,
                         out=str(tmp_path / "ref"))
    ctx = prepare(ref)  # the uninterrupted run: every shard in this process, as an actor writes it
    check_output(ref, ctx["fingerprint"], ctx.get("classes"))
    with torch_threads(1):
        synth = build_synthesizer(ctx, "cpu")
        for k in range(n // shard):
            write_shard(ctx, synth, k, shard)

    def done() -> set[int]:
        return {int(p.stem) for p in (out / "_shards").glob("*.json")}

    argv = ["generate", "--generator", "copy", "--data", str(data), "--num-samples", str(n), "--seed", "5",
            "--patch-size", "32", "--shard-size", str(shard), "--num-actors", "2", "--use-gpu", "false",
            "--out", str(out)]
    nodes.ensure(3)
    rc, said = ctrl_c([*argv, "--address", ray_cluster.address], lambda: len(done()) >= 2, tmp_path / "log",
                      {"delay": 0.5})
    assert rc == 130, said
    first = done()
    saved = int(re.search(r"saved (\d+) of 20 shards", said).group(1))  # an actor may finish one more as it ends
    assert_one_line(said, f"dstray generate: interrupted; saved {saved} of 20 shards in {out}; resume with: "
                          f"dstray {' '.join(argv)} --address {ray_cluster.address}")
    assert 2 <= saved <= len(first) < 10

    caplog.set_level(logging.INFO, logger="dstray")
    todo = sorted(set(range(20)) - first)
    pauses = [todo[1], todo[-4]]
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("DSTRAY_FAULTS", json.dumps({"pause_shards": [pauses, str(tmp_path / "p")]}))
        thread, box = in_thread(lambda: main(argv))  # the same command again, here
        for k in pauses:  # the node of the actor that just wrote shard k goes
            nodes.remove(wait_for(tmp_path / f"p-generate-{k}"))
        thread.join(timeout=600)
    assert box == {"value": 0}, box
    assert f"{out}: {len(first)} of 20 shards already done; generating the other {20 - len(first)}" in caplog.text
    summary = json.loads((out / "summary.json").read_text())
    assert (summary["written"], summary["rejected"]) == (n, 0)
    ours = {p.name: p.read_bytes() for p in (out / "data").iterdir()}
    assert ours == {p.name: p.read_bytes() for p in (tmp_path / "ref" / "data").iterdir()}  # to the byte
    ids = pq.read_table(out / "data").column("sample_id").to_pylist()
    assert len(ids) == len(set(ids)) == n


# --------------------------------------------------------------------------- out of memory
def test_out_of_memory_ends_train_seg_once_after_max_failures_naming_what_to_lower(ray_cluster, nodes, tmp_path,
                                                                                  capsys, monkeypatch):
    from dstray.cli import main

    nodes.ensure(1)
    attempts = tmp_path / "attempts"
    monkeypatch.setenv("DSTRAY_FAULTS", json.dumps({"oom": 1, "oom_log": str(attempts)}))
    save(replace(TINY_SEG, synthetic=[]), tmp_path / "seg.json")
    rc = main(["train-seg", "--config", str(tmp_path / "seg.json"), "--use-gpu", "false", "--threads-per-worker", "1",
               "--max-failures", "1", "--out", str(tmp_path / "out")])
    assert rc == 2
    assert attempts.read_text().splitlines() == ["train-seg step 1"] * 2  # the first try and one restart, no more
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("dstray ")]  # not Ray's log
    assert len(err) == 1 and re.fullmatch(
        r"dstray train-seg: error: train-seg ran out of memory in 2 attempt\(s\) \(--max-failures 1\): worker peak "
        r"[\d.]+ GiB resident, node [\d.]+ GiB available of [\d.]+ GiB\. Lower --batch-size "
        r"\(2\) or --window \(64\), or run fewer workers per node \(--num-workers 1, a larger --cpus-per-worker\), or "
        r"give its workers more memory", err[0]), err
