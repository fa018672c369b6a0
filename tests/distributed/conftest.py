"""One real local Ray cluster shared by every Ray test (no mocks).

Started once per session with ``ray.cluster_utils.Cluster`` (a head with the dashboard,
so jobs can be submitted, and room to add/remove a node for the fault test). Ray start-ups
cost seconds each; keep them to this one.
"""

from __future__ import annotations

import json
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
        # a free port for the job agent too: its default (52365) may be held by another Ray on the machine,
        # and jobs then fail with "No available agent to submit job"
        "dashboard_agent_listen_port": _free_port(),
    })
    ray.init(address=cluster.address)
    cluster.dashboard_url = f"http://127.0.0.1:{port}"
    yield cluster
    ray.shutdown()
    cluster.shutdown()


N_SYNTHETIC = 4  # rows of the `synthetic` fixture


@pytest.fixture(scope="session")
def synthetic(tmp_path_factory) -> str:
    """A tiny generated dataset in the layout of `dstray generate` (data/ + _shards/), schema of design.md."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    import torch

    from dstray.data import encode_png
    from dstray.dst.synth import SCHEMA

    out = tmp_path_factory.mktemp("generated")
    (out / "data").mkdir()
    (out / "_shards").mkdir()
    g = torch.Generator().manual_seed(7)
    rows = []
    for i in range(N_SYNTHETIC):
        h, w = 40 + 8 * i, 56
        image = torch.rand(1, h, w, generator=g)
        mask = torch.zeros(1, h, w)
        mask[:, 10:20, 12 + i:30] = 1.0
        image[mask.bool()] *= 0.3  # a dark defect
        rows.append({"sample_id": f"0-{i:08d}", "index": i, "defect_type": "crack", "image": encode_png(image),
                     "mask": encode_png(mask), "height": h, "width": w, "background_id": "bg", "reference_id": "ref",
                     "generator": "histmatch", "model_digest": "", "seed": i, "bbox": [10, 12 + i, 20, 30],
                     "area_px": int(mask.sum()), "dstray_version": "test"})
    pq.write_table(pa.Table.from_pylist(rows, schema=SCHEMA), out / "data" / "part-00000.parquet")
    (out / "_shards" / "00000.json").write_text(json.dumps({"written": N_SYNTHETIC, "rejected": 0}))
    return str(out)
