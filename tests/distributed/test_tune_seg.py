"""Ray Tune search over segmenter settings on the shared local Ray cluster (smoke sizes).

8 trials end to end: ASHA on val F1, a trial killed once and resumed, the best trial's model kept
and scored once on test, the search restored by the same command.
"""

from __future__ import annotations

import json
import time
from dataclasses import replace

import numpy as np
import pytest
import torch

from dstray.config import SegConfig, from_dict, load, save
from tests.helpers import TINY_SEG as TINY

pytestmark = pytest.mark.ray


def test_tune_eight_trials_keeps_the_best_model_and_scores_it_on_test(ray_cluster, synthetic, tmp_path, capsys):
    from dstray.cli import main
    from dstray.distributed.space import parse_space
    from dstray.distributed.tune_seg import tune_seg
    from dstray.seg.train import check_inputs

    base = replace(TINY, synthetic=[synthetic])
    entries = ["lr=1e-3:1e-2,log", "augment=true,false", "defect_weight=1,20", "dice_weight=0,1"]
    space = parse_space(entries, defaults=False)
    t0 = time.perf_counter()
    result = tune_seg(base, out=str(tmp_path), space=space, num_samples=8, max_concurrent=4, use_gpu="false",
                      cpus_per_trial=1, max_failures=1, _fault={"step": 3, "marker": str(tmp_path / "died")})
    seconds = time.perf_counter() - t0
    assert (tmp_path / "died").exists()  # the first trial to reach step 3 really exited ...
    assert len(result.rows) == 8 and all(r["status"] != "error" for r in result.rows), result.rows
    finished = [r for r in result.rows if r["status"] == "done"]
    assert finished and all(r["steps"] == 4 for r in finished)  # ... and resumed from its step-2 checkpoint
    best = result.best
    assert best["best_f1"] == max(r["best_f1"] for r in result.rows)  # the objective: val F1
    assert load(SegConfig, result.best_config) == replace(check_inputs(base), **{k: best[k] for k in space})

    # the best trial's selected model is kept, with its threshold, and scored once on test
    ckpt = torch.load(tmp_path / "best" / "model.pt", weights_only=True)
    assert ckpt["step"] == best["best_step"] and ckpt["selected_on"] == "val"
    val = json.loads((tmp_path / "best" / "val" / "eval.json").read_text())
    test = json.loads((tmp_path / "best" / "test" / "eval.json").read_text())
    assert val["pixel"]["f1"] == pytest.approx(best["best_f1"]) and val["n_images"] == 6
    assert test["n_images"] == 8 and test["threshold"] == ckpt["threshold"] == val["threshold"]
    assert best["test_f1"] == test["pixel"]["f1"] == result.test["pixel"]["f1"]
    assert sum("test_f1" in r for r in result.rows) == 1  # no other trial saw test
    table = (tmp_path / "results.csv").read_text().splitlines()
    assert table[0].startswith("trial,lr,augment,defect_weight,dice_weight,best_f1") and "test_f1" in table[0]
    assert len(table) == 9 and (tmp_path / "results.md").read_text().count("\n| ") == 9
    assert (tmp_path / "f1_per_trial.png").stat().st_size > 0
    print(f"tune 8 trials: {seconds:.1f} s")

    # The same command again restores the finished search (no new trial) and rewrites the outputs.
    config = tmp_path / "base.json"
    save(base, config)
    t0 = time.perf_counter()
    rc = main(["tune", "--config", str(config), "--out", str(tmp_path), "--num-samples", "8", "--max-concurrent",
               "4", "--use-gpu", "false", "--no-default-space", *[f"--space={e}" for e in entries]])
    printed = capsys.readouterr().out
    assert rc == 0 and "best trial" in printed and "its model on test" in printed
    assert from_dict(SegConfig, json.loads((tmp_path / "best_config.json").read_text())) == \
        load(SegConfig, result.best_config)
    assert np.isfinite(result.best["best_f1"])
    print(f"tune restore: {time.perf_counter() - t0:.1f} s")
