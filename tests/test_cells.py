"""The experiments' cells (the grid, seeds of every stage, shared pools) and their results files."""

from __future__ import annotations

import json

import pytest

from dataclasses import replace

from dstray.policy import wanted_generators
from dstray.cells import (append_line, dataset_name, dst_config, finished, generate_config, plan, read_lines,
                          settings)
from dstray.config import ARCHS, GENERATORS, DataPolicy
from dstray.data import load_dataset
from dstray.presets import chosen_policy, experiment_preset
from dstray.seeds import stage_seeds


@pytest.mark.parametrize("experiment", ["table1", "fig6", "samples"])
def test_the_seed_reaches_every_stage_of_each_cell(experiment, tmp_path):
    """A cell of seed s seeds its stages as `pipeline --seed s`: stage_seeds(s)[stage]; names keep s."""
    p = experiment_preset("smoke")
    for cell in plan(experiment, p, data=None, run=tmp_path, seeds=[3, 8]):
        seeds = stage_seeds(cell.seed)
        assert cell.seg.seed == seeds["seg"] and cell.name.endswith(f"-s{cell.seed}")
        recorded = settings(cell, p, "x")
        assert recorded["seg"]["seed"] == seeds["seg"] and recorded["seeds"]["run"] == cell.seed
        assert {k: v for k, v in recorded["seeds"].items() if k != "run"} == {
            k: seeds[k] for k in ("dst", "generate", "seg") if k == "seg" or (k == "generate" and cell.pools)
            or any(x.generator == "dst" for x in cell.pools)}
        for pool in cell.pools:
            gen = generate_config(pool, p, data=None, run=tmp_path)
            assert pool.seed == cell.seed and pool.name.endswith(f"-s{cell.seed}-n{pool.size}")
            assert gen.seed == seeds["generate"] and gen.out == str(tmp_path / "gen" / pool.name)
            assert cell.seg.synthetic.count(f"{gen.out}/data") == 1
            if pool.generator == "dst":  # DST pools read the models fitted for the same run seed
                assert gen.models == str(tmp_path / "models" / f"seed-{cell.seed}")
                assert recorded["dst"]["seed"] == dst_config(p, cell.seed).seed == seeds["dst"]


def test_an_experiment_cell_runs_the_stage_configs_of_the_pipeline_with_its_seed(tmp_path):
    """`experiment table1` cell buttonlab-policy-s<s> and `pipeline --seed s` at the smoke preset: the same DST fit,
    generation (a pool per generator of the chosen policy) and segmenter configs (paths aside), seeds included
    (the Ray test compares their outputs)."""
    from dstray.config import to_dict
    from dstray.distributed.pipeline import stage_configs
    from dstray.presets import pipeline_preset

    p = experiment_preset("smoke")
    for seed in (0, 5):
        cell = next(c for c in plan("table1", p, data=None, run=tmp_path / "e", seeds=[seed])
                    if c.name == f"buttonlab-policy-s{seed}")
        stages = stage_configs(pipeline_preset("smoke", seed=seed, out=str(tmp_path / "p")))
        assert to_dict(stages["dst"]) == to_dict(dst_config(p, seed))
        paths = ("out", "models", "num_actors")  # where, and how many actors: not what is generated
        theirs = {c.generator: {k: v for k, v in to_dict(c).items() if k not in paths}
                  for c in stages["generate"].values()}
        mine = {x.generator: {k: v for k, v in to_dict(generate_config(x, p, data=None, run=tmp_path / "e")).items()
                              if k not in paths} for x in cell.pools}
        assert theirs == mine
        assert to_dict(replace(stages["seg"]["seg"], synthetic=[])) == to_dict(replace(cell.seg, synthetic=[]))


def test_the_grids_of_table1_fig6_and_samples(tmp_path):
    p, seeds = experiment_preset("cpu"), [0, 1, 2]
    data = load_dataset(None)
    table1 = plan("table1", p, data=None, run=tmp_path, seeds=seeds)
    assert len(table1) == len({c.name for c in table1}) == len(ARCHS) * 5 * len(seeds)
    assert {(c.arch, c.data) for c in table1} == {(a, d) for a in ARCHS for d in ("refs", *GENERATORS, "policy")}
    for c in table1:
        assert c.seg.real_splits == ["reference"] and c.seg.real_limit is None
        policy = wanted_generators(chosen_policy(), data.defect_types)  # the chosen policy's pools
        assert [x.generator for x in c.pools] == {"refs": [], "policy": policy}.get(c.data, [c.data])
        assert all(x.size == p.num_samples for x in c.pools)
    # one pool per (generator, seed, size), shared: 3 generators x 3 seeds for all 45 cells
    assert len({x for c in table1 for x in c.pools}) == len(GENERATORS) * len(seeds)

    fig6 = plan("fig6", p, data=None, run=tmp_path, seeds=[0])
    n_refs, n_train = len(data.references()), len(data.split("train"))
    ks = sorted(dict.fromkeys(min(k, n_train) if k is not None else n_train for k in p.real_counts))
    assert sorted(c.k for c in fig6 if c.data == "B") == sorted(c.k for c in fig6 if c.data == "C") == ks
    for c in fig6:
        assert c.seg.real_limit == n_refs + c.k and c.seg.real_splits == ["reference", "train"]
        assert bool(c.pools) == (c.data == "C")

    samples = plan("samples", p, data=None, run=tmp_path, seeds=[0])
    assert sorted(c.samples for c in samples) == sorted(p.sample_counts)
    assert all({x.size for x in c.pools} == {c.samples} for c in samples)


def test_policy_generators_and_the_digest(tmp_path, monkeypatch):
    types = ["crack", "fray"]
    assert wanted_generators(DataPolicy(), types) == list(GENERATORS)
    one = DataPolicy(generators={"crack": "dst"}, default_generator="copy")
    assert wanted_generators(one, types) == ["copy", "dst"]
    assert wanted_generators(DataPolicy(generators={"crack": "dst", "fray": "none"}), types) == ["dst"]
    p = experiment_preset("smoke")
    a = plan("table1", p, data=None, run=tmp_path / "a", seeds=[0])
    b = plan("table1", p, data=None, run=tmp_path / "b", seeds=[0])
    digests = [settings(c, p, "sample")["digest"] for c in a]
    assert digests == [settings(c, p, "sample")["digest"] for c in b]  # the run folder is not a setting
    assert len(set(digests)) == len(digests)
    monkeypatch.setattr("dstray.cells.chosen_policy", lambda: DataPolicy(synthetic_weight=0.5))
    monkeypatch.setattr("dstray.presets.chosen_policy", lambda: DataPolicy(synthetic_weight=0.5))
    c = plan("table1", p, data=None, run=tmp_path / "a", seeds=[0])
    changed = [x.name for x, y in zip(a, c) if settings(x, p, "s")["digest"] != settings(y, p, "s")["digest"]]
    # another policy: the cells trained under it (the policy and its single-generator columns) run again, the
    # references-only cells (same real data, no generated rows) do not
    assert changed == [x.name for x in a if x.data != "refs"]
    assert all(x.seg.policy.default_generator == x.data for x in c if x.data in GENERATORS)
    assert {x.seg.free_fraction for x in c} == {p.seg.free_fraction}  # one real data for every row
    assert dataset_name(None) == "sample"


def test_results_lines_survive_a_writer_killed_midway(tmp_path, caplog):
    path = tmp_path / "r" / "t.jsonl"
    append_line(path, {"cell": "a-s0", "settings": {"digest": "1"}, "f1": float("nan")})
    with open(path, "a") as f:
        f.write('{"cell": "b-s0", "sett')  # a line cut short by a kill
    append_line(path, {"cell": "c-s0", "settings": {"digest": "2"}})
    text = path.read_text()
    assert text.count("\n") == 3 and text.endswith('"2"}}\n')
    assert json.loads(text.splitlines()[0])["f1"] is None  # strict JSON: NaN -> null
    assert [r["cell"] for r in read_lines(path)] == ["a-s0", "c-s0"] and "line 2 is not JSON" in caplog.text
    assert finished(path) == {("a-s0", "1"), ("c-s0", "2")}
    assert read_lines(tmp_path / "missing.jsonl") == [] and finished(tmp_path / "missing.jsonl") == set()


def test_a_pipeline_whose_types_the_policy_gives_no_generated_sample_says_so(tmp_path):
    """The chosen policy gives blowhole none: a blowhole-only dataset has no pool to make under it, and the
    pipeline says which types got what and which option trains on one generator instead (was: StopIteration)."""
    from dstray.distributed.pipeline import stage_configs
    from dstray.presets import pipeline_preset

    cfg = pipeline_preset("smoke", out=str(tmp_path / "p"))
    assert chosen_policy().generators["blowhole"] == "none"
    with pytest.raises(ValueError, match=r"blowhole: none.*--generator dst, histmatch or copy"):
        stage_configs(cfg, types=["blowhole"])
    assert [c.generator for c in stage_configs(replace(cfg, generator="histmatch"), types=["blowhole"])
            ["generate"].values()] == ["histmatch"]
