"""Configs: the one resume check, value parsing, and the presets (all in one place)."""

import dataclasses

import pytest

from dstray.config import (AreaConfig, DSTConfig, GenerateConfig, PipelineConfig, SegConfig, changed_fields,
                           check_resumable, parse_value, to_dict, without_later_defaults)
from dstray.presets import PRESETS, dst_preset, experiment_preset, pipeline_preset, seg_preset


def test_resume_check_lets_only_the_free_fields_change(tmp_path):
    saved = to_dict(SegConfig(steps=5))
    check_resumable(saved, SegConfig(steps=50, eval_every=10, device="cpu"), tmp_path)  # SegConfig.RESUME_FREE
    with pytest.raises(ValueError, match=r"different config \(backbone, lr differ\)"):
        check_resumable(saved, SegConfig(lr=0.1, backbone="resnet50"), tmp_path)
    assert changed_fields(to_dict(DSTConfig(steps=3)), DSTConfig(steps=9, log_every=1)) == []
    assert changed_fields(to_dict(DSTConfig()), DSTConfig(lr=1.0)) == ["lr"]


def test_fields_added_later_at_their_default_leave_a_configs_identity_as_it_was():
    """Datasets, stage keys, experiment cells and DST fits keyed before AreaConfig.family/widen and
    GenerateConfig.contrast existed are still recognised: at their default those fields are left out."""
    before = to_dict(GenerateConfig())
    del before["contrast"], before["area"]["family"], before["area"]["widen"]  # what to_dict gave before
    assert without_later_defaults(GenerateConfig()) == before
    assert without_later_defaults(GenerateConfig(contrast=[0.2, 1.0]))["contrast"] == [0.2, 1.0]
    assert without_later_defaults(GenerateConfig(area=AreaConfig(family="mix")))["area"]["family"] == "mix"
    old_fit = to_dict(DSTConfig())
    del old_fit["area"]["family"], old_fit["area"]["widen"]  # a DST fit saved before: resumable, not refitted
    assert changed_fields(old_fit, DSTConfig()) == []
    assert changed_fields(old_fit, DSTConfig(area=AreaConfig(family="procedural"))) == ["area"]


def test_parse_value_follows_the_field_type():
    assert parse_value("none", "int | None", 96) is None
    assert parse_value("yes", "bool", True) is True and parse_value("0", "bool", True) is False
    assert parse_value("a=1,b=2.5", "dict[str, float] | None", None) == {"a": 1.0, "b": 2.5}
    assert parse_value("x,y", "list[str]", []) == ["x", "y"] and parse_value("7", "int", 0) == 7
    with pytest.raises(ValueError, match="true/false"):
        parse_value("maybe", "bool", True)


@pytest.mark.parametrize("name", PRESETS)
def test_presets_build_and_the_paper_sizes_are_shared(name):
    pipeline, experiment = pipeline_preset(name, out="x"), experiment_preset(name)
    assert pipeline.preset == name and pipeline.out == "x" and experiment.name == name
    # one segmentation preset per name (the pipeline adds the references to its generated samples)
    assert dataclasses.replace(pipeline.seg, real_splits=[]) == experiment.seg == seg_preset(name)
    assert pipeline.dst == experiment.dst == dst_preset(name)  # one DST size per name: "cpu DST" means one thing
    if name == "paper":  # the paper's sizes are defined once
        assert pipeline.num_samples == experiment.num_samples == 2167
        assert (pipeline.seg.backbone, pipeline.seg.lr, pipeline.seg.batch_size) == ("resnet50", 2e-3, 8)
    if name == "cpu":
        assert experiment.seg == SegConfig() and experiment.dst == DSTConfig()  # the defaults are the cpu preset
    with pytest.raises(ValueError, match="unknown preset"):
        pipeline_preset("huge")


def test_the_demo_preset_is_the_pipelines_default_and_small():
    """`dstray pipeline` with no preset: the demo sizes (under 10 minutes on 2 cores, README)."""
    demo = pipeline_preset("demo")
    assert PipelineConfig().preset == "demo" and demo.baseline
    assert (demo.dst.steps, demo.dst.heldout, demo.num_samples) == (60, 4, 160)
    assert (demo.seg.window, demo.seg.steps, demo.seg.eval_every, demo.seg.real_splits) == (192, 100, 50, ["reference"])
    assert demo.dst == dst_preset("demo")
    with pytest.raises(ValueError, match="unknown preset"):
        seg_preset("demo")  # a pipeline (and DST) preset only
    with pytest.raises(ValueError, match="unknown preset 'huge'; choose one of smoke, demo, cpu, paper"):
        dst_preset("huge")
