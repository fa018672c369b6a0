"""Job submission to a real head on 127.0.0.1, and a node lost in the middle of a generation."""

from __future__ import annotations

import sys
import threading
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest

pytestmark = pytest.mark.ray

ROOT = Path(__file__).resolve().parents[2]


def test_generate_job_submitted_through_job_client(ray_cluster, tmp_path):
    from ray.job_submission import JobStatus, JobSubmissionClient

    client = JobSubmissionClient(ray_cluster.dashboard_url)
    job = client.submit_job(
        # this interpreter (the project's venv), whatever `python` on PATH is
        entrypoint=f"{sys.executable} jobs/generate.py --generator copy --num-samples 6 --seed 0 --num-actors 1 "
                   f"--out {tmp_path}",
        runtime_env={"working_dir": str(ROOT), "excludes": [".venv", ".git", "runs", "*.parquet"],
                     "env_vars": {"RAY_AUTH_MODE": "disabled"}},
    )
    deadline = time.time() + 300
    while (status := client.get_job_status(job)) not in {JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.STOPPED}:
        assert time.time() < deadline, client.get_job_logs(job)
        time.sleep(1)
    logs = client.get_job_logs(job)
    assert status == JobStatus.SUCCEEDED, logs
    assert '"written": 6' in logs
    assert pq.read_table(tmp_path / "data").num_rows == 6


def test_node_removed_mid_run_still_writes_exactly_n_unique_rows(ray_cluster, tmp_path):
    from dstray.config import GenerateConfig
    from dstray.distributed.generate import generate

    node = ray_cluster.add_node(num_cpus=2)
    ray_cluster.wait_for_nodes()
    n = 48
    cfg = GenerateConfig(generator="histmatch", num_samples=n, seed=7, num_actors=4, out=str(tmp_path))
    result, errors = {}, []

    def run():
        try:
            result.update(generate(cfg, shard_size=4))
        except Exception as exc:  # reported by the assertion below
            errors.append(exc)

    worker = threading.Thread(target=run)
    worker.start()
    deadline = time.time() + 120
    while not list((tmp_path / "_shards").glob("*.json")) and time.time() < deadline:
        time.sleep(0.05)
    ray_cluster.remove_node(node, allow_graceful=False)  # a node dies mid-run
    worker.join(timeout=600)
    assert not errors, errors
    assert result["written"] == n and result["rejected"] == 0
    table = pq.read_table(tmp_path / "data")
    ids = table.column("sample_id").to_pylist()
    assert len(ids) == n and len(set(ids)) == n
