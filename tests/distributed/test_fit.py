"""Ray Train fits of every defect type on the shared local cluster."""

from __future__ import annotations

import json

import pytest
import torch

from dstray.config import DSTConfig
from dstray.data import load_dataset

pytestmark = pytest.mark.ray

TINY = DSTConfig(steps=4, batch_size=1, patch_size=32, checkpoint_every=2, log_every=1, heldout=4, warmup_steps=2)


@pytest.fixture(scope="session")
def fitted_models(ray_cluster, tmp_path_factory):
    """All embedded-sample types fitted concurrently (a few steps each); shared by later tests."""
    from dstray.distributed.fit import fit_all

    out = tmp_path_factory.mktemp("models")
    outcomes = fit_all(TINY, data=None, out=str(out), cpus_per_worker=0.5)
    return out, outcomes


def test_all_types_fit_concurrently_one_checkpoint_each(fitted_models):
    from dstray.distributed.fit import format_table

    out, outcomes = fitted_models
    types = load_dataset(None).defect_types
    assert [o.defect_type for o in outcomes] == sorted(types)
    assert all(o.status == "fitted" and o.steps == 4 for o in outcomes), format_table(outcomes)
    for t in types:
        ckpt = torch.load(out / t / "model.pt", weights_only=True)
        assert ckpt["defect_type"] == t and ckpt["steps"] == 4
        assert len((out / t / "losses.csv").read_text().splitlines()) == 1 + 4  # as the in-process fit writes
        held, history = ckpt["heldout_losses"], ckpt["heldout_history"]  # the best held-out weights are kept:
        assert history[0]["step"] == 0 and held["dst"] == min(h["dst"] for h in history)  # never worse than at init
    table = format_table(outcomes)
    assert all(t in table for t in types) and "total" in table


def test_rerun_skips_finished_and_resumes_longer_fit(fitted_models):
    from dstray.distributed.fit import fit_all

    out, _ = fitted_models
    again = fit_all(TINY, data=None, out=str(out), types=["crack"], cpus_per_worker=0.5)
    assert again[0].status == "skipped"
    longer = fit_all(TINY.__class__(**{**TINY.__dict__, "steps": 6}), data=None, out=str(out), types=["crack"],
                     cpus_per_worker=0.5)
    assert longer[0].status == "fitted" and longer[0].steps == 6
    history = torch.load(out / "crack" / "model.pt", weights_only=True)["losses"]
    # Resumed from the step-4 checkpoint: 6 steps in the history, not 4 + 6.
    assert [h["step"] for h in history] == [1, 2, 3, 4, 5, 6]


def test_dead_worker_restarts_from_last_checkpoint(ray_cluster, tmp_path):
    from dstray.distributed.fit import fit_all

    cfg = TINY.__class__(**{**TINY.__dict__, "steps": 6, "checkpoint_every": 2})
    outcomes = fit_all(cfg, data=None, out=str(tmp_path), types=["blowhole"], cpus_per_worker=0.5, max_failures=3,
                       _extra={"fault_step": 3, "fault_marker": str(tmp_path / "died")})
    assert (tmp_path / "died-blowhole").exists()  # the worker process really exited at step 3
    assert outcomes[0].status == "fitted" and outcomes[0].steps == 6, outcomes
    history = torch.load(tmp_path / "blowhole" / "model.pt", weights_only=True)["losses"]
    assert [h["step"] for h in history] == [1, 2, 3, 4, 5, 6]  # step 3 redone from the step-2 checkpoint
    fit = json.loads((tmp_path / "blowhole" / "fit.json").read_text())
    assert fit["metrics"]["step"] == 6


def test_dst_generation_uses_fitted_models(fitted_models, tmp_path):
    import pandas as pd

    from dstray.config import GenerateConfig
    from dstray.distributed.generate import generate

    out, _ = fitted_models
    cfg = GenerateConfig(generator="dst", models=str(out), num_samples=5, seed=1, num_actors=1, out=str(tmp_path))
    summary = generate(cfg, shard_size=5)
    assert summary["written"] == 5
    df = pd.read_parquet(tmp_path / "data")
    digests = {t: __import__("hashlib").sha256((out / t / "model.pt").read_bytes()).hexdigest()[:16]
               for t in df["defect_type"]}
    assert all(df["model_digest"] == df["defect_type"].map(digests))
