"""Ray Tune search over segmenter settings on the shared local Ray cluster (tiny settings)."""

from __future__ import annotations

import json
import time
from dataclasses import replace

import numpy as np
import pytest

from dstray.config import SegConfig, from_dict, load, save
from tests.helpers import TINY_SEG as TINY

pytestmark = pytest.mark.ray


def test_tune_two_trials_writes_table_plot_and_best_config(ray_cluster, synthetic, tmp_path, capsys):
    from dstray.cli import main
    from dstray.distributed.space import parse_space
    from dstray.distributed.tune_seg import tune_seg

    base = replace(TINY, synthetic=[synthetic])
    entries = ["lr=1e-3:1e-2,log", "augment=true,false"]
    space = parse_space(entries, defaults=False)
    t0 = time.perf_counter()
    result = tune_seg(base, out=str(tmp_path), space=space, num_samples=2, max_concurrent=2, use_gpu="false",
                      cpus_per_trial=1, max_failures=1, _fault={"step": 3, "marker": str(tmp_path / "died")})
    seconds = time.perf_counter() - t0
    assert (tmp_path / "died").exists()  # the first trial to reach step 3 really exited ...
    assert len(result.rows) == 2 and all(r["status"] != "error" for r in result.rows), result.rows
    finished = [r for r in result.rows if r["status"] == "done"]
    assert finished and all(r["steps"] == 4 for r in finished)  # ... and resumed from its step-2 checkpoint
    best = load(SegConfig, result.best_config)  # a SegConfig that `train-seg --config` accepts
    assert best.lr == result.best["lr"] and best.augment == result.best["augment"] and best.steps == 4
    assert result.best["best_f1"] == max(r["best_f1"] for r in result.rows)
    table = (tmp_path / "results.csv").read_text().splitlines()
    assert table[0].startswith("trial,lr,augment,best_f1") and len(table) == 3
    assert (tmp_path / "results.md").read_text().count("\n| ") == 3
    assert (tmp_path / "f1_per_trial.png").stat().st_size > 0
    print(f"tune 2 trials: {seconds:.1f} s")

    # The same command again restores the finished search (no new trial) and rewrites the outputs.
    config = tmp_path / "base.json"
    save(base, config)
    t0 = time.perf_counter()
    rc = main(["tune", "--config", str(config), "--out", str(tmp_path), "--num-samples", "2", "--use-gpu", "false",
               "--no-default-space", *[f"--space={e}" for e in entries]])
    assert rc == 0 and "best trial" in capsys.readouterr().out
    assert from_dict(SegConfig, json.loads((tmp_path / "best_config.json").read_text())) == best
    assert np.isfinite(result.best["best_f1"])
    print(f"tune restore: {time.perf_counter() - t0:.1f} s")
