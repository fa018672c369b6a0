"""derive_seed: one way to derive a seed from (seed, keys...)."""

import hashlib

from dstray.seeds import derive_seed


def test_derive_seed_is_the_generation_sample_seed():
    # the per-sample seed generation always used (the Parquet `seed` column): sha256 of "dstray:{seed}:{index}"
    for seed, index in ((0, 0), (3, 17), (123456789, 2**40)):
        digest = hashlib.sha256(f"dstray:{seed}:{index}".encode()).digest()
        assert derive_seed(seed, index) == int.from_bytes(digest[:8], "little") & 0x7FFF_FFFF_FFFF_FFFF


def test_keys_separate_streams_and_values_fit_every_rng():
    a, b = derive_seed(0, "dst-backgrounds", 0), derive_seed(0, "dst-backgrounds", 1)
    c = derive_seed(1, "dst-backgrounds", 0)
    assert len({a, b, c}) == 3 and all(0 <= s < 2**63 for s in (a, b, c))
    assert derive_seed(5, "x", 2) == derive_seed(5, "x", 2)


def test_the_runs_seed_owns_every_stage_seed_and_output(sample_dataset):
    """`pipeline --seed`: two runs with different seeds differ in every stage, two with the same seed match."""
    import dataclasses

    import torch

    from dstray.distributed.pipeline import stage_configs
    from dstray.dst.fit import DSTFitter
    from dstray.dst.synth import plan_samples
    from dstray.presets import pipeline_preset
    from dstray.seeds import STAGES, stage_seeds

    ds = sample_dataset
    types = ds.defect_types

    def run(seed: int, **preset):
        stages = stage_configs(pipeline_preset("smoke", seed=seed, out="runs/x", **preset))  # no folder is made
        gen = stages["generate"]["generated"]  # the first pool (every pool of a run has the generation seed)
        assert {c.seed for c in stages["generate"].values()} == {gen.seed}
        seeds = {"dst": stages["dst"].seed, "generate": gen.seed, "report": stages["report"],
                 **{folder: c.seed for folder, c in stages["seg"].items()}}
        plan = plan_samples(num_samples=gen.num_samples, seed=gen.seed, defect_types=types,
                            background_ids=[b.id for b in ds.backgrounds()],
                            reference_ids={t: ds.references(t)[0].id for t in types})
        fitter = DSTFitter(dataclasses.replace(stages["dst"], defect_type="crack", device="cpu"), ds)
        s, area = fitter.batch()  # the fit's first batch: background order, area L and window
        first = next(iter(fitter.net.parameters())).detach().clone()  # the network's init
        return seeds, plan, (s, area, first)

    a, again, other = run(0), run(0), run(1)
    assert set(a[0]) == {"dst", "generate", "report", "seg", "seg-ref"}
    assert a[0] == {**stage_seeds(0), "seg-ref": stage_seeds(0)["seg"]} and set(stage_seeds(0)) == set(STAGES)
    assert a[0] == again[0] and a[1] == again[1] and all(torch.equal(x, y) for x, y in zip(a[2], again[2]))
    assert all(a[0][k] != other[0][k] for k in a[0])  # every stage's seed
    assert [r["background_id"] for r in a[1]] != [r["background_id"] for r in other[1]]  # the generation plan
    assert not torch.equal(a[2][1], other[2][1]) and not torch.equal(a[2][2], other[2][2])  # DST's areas, init
    # the sub-configs' own seeds do not count: the run's seed is the one owner
    preset = pipeline_preset("smoke")
    assert run(0, dst=dataclasses.replace(preset.dst, seed=7), seg=dataclasses.replace(preset.seg, seed=7))[0] == a[0]
