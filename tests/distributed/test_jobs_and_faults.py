"""Job submission to a real head on 127.0.0.1. (Nodes lost mid-run: ``test_faults.py``.)"""

from __future__ import annotations

import sys
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
