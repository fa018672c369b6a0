"""One real local Ray cluster shared by every Ray test (no mocks).

Started once per session with ``ray.cluster_utils.Cluster`` (a head with the dashboard,
so jobs can be submitted, and room to add/remove a node for the fault test). Ray start-ups
cost seconds each; keep them to this one.
"""

from __future__ import annotations

import os
import socket

import pytest

os.environ.setdefault("RAY_AUTH_MODE", "disabled")  # Ray >= 2.59 wants tokens; tests talk to their own head
os.environ.setdefault("RAY_ENABLE_UV_RUN_RUNTIME_ENV", "0")
os.environ.setdefault("RAY_DATA_DISABLE_PROGRESS_BARS", "1")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def ray_cluster():
    import ray
    from ray.cluster_utils import Cluster

    port = _free_port()
    cluster = Cluster(initialize_head=True, head_node_args={
        "num_cpus": 4,  # logical CPUs: lets the small test workloads run side by side on 2 cores
        "include_dashboard": True, "dashboard_host": "127.0.0.1", "dashboard_port": port,
    })
    ray.init(address=cluster.address)
    cluster.dashboard_url = f"http://127.0.0.1:{port}"
    yield cluster
    ray.shutdown()
    cluster.shutdown()
