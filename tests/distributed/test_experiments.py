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
    for r in records:  # the experiment's seed reached the segmenter and the generation of the cell
        assert r["settings"]["seg"]["seed"] == r["seed"] and all(p["seed"] == r["seed"] for p in r["settings"]["pools"])
        assert 0 <= r["test"]["pixel"]["f1"] <= 1 and r["seconds"] > 0 and len(r["machine"]["loadavg_end"]) == 3
    copy0 = json.loads((run / "gen" / "copy-s0-n10" / "summary.json").read_text())
    assert copy0["written"] + copy0["rejected"] == 10

    # A third run has nothing to do; the report renders every cell.
    from dstray.distributed.experiments import run_experiment

    assert run_experiment("table1", data=None, out=str(run), seeds=[0, 1], preset="smoke", results=str(results),
                          cells=CELLS.split(",")) == []
    assert main(["experiment", "report", "--results", str(results)]) == 0
    readme = (results / "README.md").read_text()
    assert "### Table 1 (preset `smoke`)" in readme and "| Buttonlab |" in readme
    assert all(c in readme for c in cells)  # the wall-time table names every cell
