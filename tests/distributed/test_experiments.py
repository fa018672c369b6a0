"""An experiment killed after its first finished cell, run again: only the missing cells run (smoke preset)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.ray

REPO = Path(__file__).resolve().parents[2]
CELLS = "buttonlab-refs-*,buttonlab-copy-s0"  # 3 cells, one generator pool (copy: cheap)


def test_a_killed_experiment_finishes_only_the_missing_cells_and_the_report_renders(ray_cluster, tmp_path):
    from dstray.cells import read_lines
    from dstray.cli import main
    from dstray.seeds import stage_seeds

    results, run = tmp_path / "results", tmp_path / "run"
    argv = ["experiment", "table1", "--preset", "smoke", "--seeds", "0,1", "--cells", CELLS, "--out", str(run),
            "--results", str(results), "--address", ray_cluster.address]
    path = results / "table1.jsonl"
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1")
    first_run = (f"from dstray.distributed.experiments import run_experiment; run_experiment('table1', data=None, "
                 f"out={str(run)!r}, seeds=[0, 1], preset='smoke', results={str(results)!r}, "
                 f"cells={CELLS.split(',')!r}, address={ray_cluster.address!r}, _die_after=1)")
    proc = subprocess.run([sys.executable, "-c", first_run], env=env, cwd=tmp_path, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 1, proc.stderr[-3000:]  # died after its first finished cell, the others in flight
    before = path.read_text()
    first = before.splitlines()[0]
    done = [json.loads(line)["cell"] for line in before.splitlines()]
    assert len(done) == 1, done

    assert main(argv) == 0  # the same experiment again, from the command line
    cells = {"buttonlab-refs-s0", "buttonlab-refs-s1", "buttonlab-copy-s0"}
    lines = path.read_text().splitlines()
    assert len(lines) == len(cells) and lines[0] == first and path.read_text().startswith(before)
    assert sorted(json.loads(line)["cell"] for line in lines[1:]) == sorted(cells - set(done))  # only the missing ran
    records = read_lines(path)
    assert {r["cell"] for r in records} == cells  # every cell once, no duplicate
    for r in records:  # the cell's run seed reached the segmenter and the generation of the cell, as stage seeds
        seeds = stage_seeds(r["seed"])
        assert r["settings"]["seg"]["seed"] == seeds["seg"] and all(p["seed"] == r["seed"] for p in r["settings"]["pools"])
        assert r["settings"]["seeds"] == {"run": r["seed"], "seg": seeds["seg"],
                                          **({"generate": seeds["generate"]} if r["settings"]["pools"] else {})}
        assert 0 <= r["test"]["pixel"]["f1"] <= 1 and r["seconds"] > 0 and len(r["machine"]["loadavg_end"]) == 3
    copy0 = json.loads((run / "gen" / "copy-s0-n10" / "summary.json").read_text())
    assert copy0["written"] + copy0["rejected"] == 10

    # A third run has nothing to do; the report renders every cell.
    from dstray.distributed.experiments import run_experiment

    assert run_experiment("table1", data=None, out=str(run), seeds=[0, 1], preset="smoke", results=str(results),
                          cells=CELLS.split(",")) == []
    assert main(["experiment", "report", "--results", str(results)]) == 0
    readme = (results / "README.md").read_text()
    assert "## Table 1 (preset `smoke`)" in readme and "| Buttonlab |" in readme
    assert all(c in readme for c in cells)  # the wall-time table names every cell


def _state_digest(path: Path) -> str:
    """sha256 of a checkpoint's state dict (names and tensor bytes, in name order)."""
    import hashlib

    import torch

    state = torch.load(path, map_location="cpu", weights_only=True)["state_dict"]
    h = hashlib.sha256()
    for name in sorted(state):
        h.update(name.encode())
        h.update(state[name].contiguous().numpy().tobytes())
    return h.hexdigest()


def _pool_images(folder: Path) -> dict[str, bytes]:
    import pyarrow.parquet as pq

    rows = pq.read_table(folder, columns=["sample_id", "image", "mask", "seed"]).to_pylist()
    return {r["sample_id"]: (r["image"], r["mask"], r["seed"]) for r in rows}


def _one_type_sample(folder: Path, *defect_types: str) -> str:
    """The embedded sample cut to ``defect_types`` (default blowhole; their rows and the defect-free ones)."""
    defect_types = defect_types or ("blowhole",)
    import shutil

    from dstray.data import sample_root

    root = sample_root()
    head, *rows = (root / "splits.csv").read_text().splitlines()
    keep = [r for r in rows if r.split(",")[2] in (*defect_types, "free")]
    for r in keep:
        for name in r.split(",")[:2]:
            if name:
                (folder / name).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy(root / name, folder / name)
    (folder / "splits.csv").write_text("\n".join([head, *keep]) + "\n")
    return str(folder)


@pytest.mark.slow
def test_the_same_seed_gives_the_same_dst_models_pool_and_segmenter_in_pipeline_and_experiment(ray_cluster, tmp_path):
    """`pipeline --seed 1 --seeds 1` and the experiment cell buttonlab-policy-s1 (smoke preset, the embedded sample
    cut to two types the chosen policy feeds from two pools, DST and copy: each side fits two DSTs and makes
    both pools; the smoke batch draws no generated window at the chosen share, so the segmenter part does not
    see the order the pools are read in): every stage seeded with stage_seeds(1)[stage], so the same DST
    weights, the same rows in every pool of the chosen policy and the same segmenter weights, bit for bit."""
    import dataclasses

    from dstray.data import load_dataset
    from dstray.distributed.experiments import run_experiment
    from dstray.distributed.pipeline import run_pipeline, stage_configs
    from dstray.presets import pipeline_preset
    from dstray.seeds import stage_seeds

    seeds = stage_seeds(1)
    data = _one_type_sample(tmp_path / "two-type-sample", "break", "uneven")  # the chosen policy: dst and copy
    pipe, exp = tmp_path / "pipeline", tmp_path / "experiment"
    cfg = dataclasses.replace(pipeline_preset("smoke", seed=1, out=str(pipe)), data=data, baseline=False, seeds=[1])
    info = run_pipeline(cfg)
    [line] = run_experiment("table1", data=data, out=str(exp), seeds=[1], preset="smoke",
                            results=str(tmp_path / "results"), cells=["buttonlab-policy-s1"])

    # the seeds as stored: pipeline.json, seeds.json and the results line
    assert info["seeds"] == seeds and info["config"]["dst"]["seed"] == seeds["dst"]
    assert info["config"]["generate"]["seed"] == seeds["generate"]
    assert json.loads((pipe / "seg" / "seeds.json").read_text())["seg_seeds"] == {"1": seeds["seg"]}
    assert line["seed"] == 1 and line["settings"]["seeds"] == {"run": 1, **{k: seeds[k] for k in ("dst", "generate",
                                                                                                 "seg")}}
    assert line["settings"]["seg"]["seed"] == line["settings"]["seeds"]["seg"]
    # the outputs, bit for bit
    assert load_dataset(data).defect_types == ["break", "uneven"]
    assert len(stage_configs(cfg)["generate"]) == 2
    assert _state_digest(pipe / "models" / "break" / "model.pt") == \
        _state_digest(exp / "models" / "seed-1" / "break" / "model.pt")
    pools = stage_configs(cfg)["generate"]
    assert pools
    for folder, gen in pools.items():
        rows = _pool_images(pipe / folder / "data")
        assert len(rows) == cfg.num_samples and rows == _pool_images(exp / "gen" / f"{gen.generator}-s1-n10" / "data")
    assert _state_digest(pipe / "seg" / "seed-1" / "model.pt") == \
        _state_digest(exp / "cells" / "table1" / "buttonlab-policy-s1" / "model.pt")
