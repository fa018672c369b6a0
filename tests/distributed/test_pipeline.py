"""The one-command pipeline at the smoke preset, end to end on the embedded sample."""

from __future__ import annotations

import json

import pytest

pytestmark = pytest.mark.ray


def test_smoke_pipeline_writes_report_with_every_type_and_the_evaluation(ray_cluster, tmp_path):
    from dstray.data import load_dataset
    from dstray.distributed.pipeline import run_pipeline
    from dstray.presets import pipeline_preset

    cfg = pipeline_preset("smoke", out=str(tmp_path / "run"))
    info = run_pipeline(cfg)
    run = tmp_path / "run"
    html = (run / "report" / "index.html").read_text()
    for t in load_dataset(None).defect_types:
        assert t in html
        assert (run / "models" / t / "model.pt").exists()
    result = json.loads((run / "eval" / "eval.json").read_text())
    assert f"{result['pixel']['f1']:.3f}" in html  # the evaluation table
    assert info["stages"]["generate"]["summary"]["written"] == cfg.num_samples

    # A re-run reuses every finished stage.
    again = run_pipeline(cfg)
    assert all(again["stages"][s]["reused"] for s in ("fit", "generate", "train", "evaluate")), again["stages"]
