"""The one-command pipeline at the smoke preset, end to end on the embedded sample."""

from __future__ import annotations

import dataclasses
import json
import re

import pytest

pytestmark = pytest.mark.ray


GEN, REF = "references + defect-free tiles + 10 generated", "references + defect-free tiles"  # the rows' labels


def test_smoke_pipeline_writes_report_with_every_type_and_the_evaluation(ray_cluster, tmp_path):
    import torch

    from dstray.data import load_dataset
    from dstray.distributed.pipeline import run_pipeline, stage_configs
    from dstray.presets import pipeline_preset
    from dstray.seeds import stage_seeds

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
    assert info["defect_types"] == load_dataset(None).defect_types  # the saved config says which types ran

    # The terminal's lines (RUN/summary.txt): one per stage, its timings, the final table of the two runs.
    lines = (run / "summary.txt").read_text().splitlines()
    assert len(lines) <= 40, lines
    stages = [line for line in lines if re.match(r"\[\d/5\] ", line)]
    assert [line.split()[1] for line in stages] == ["fit", "generate", "segmentation:", "evaluate", "report"]
    for t in info["defect_types"]:
        assert any(re.match(rf"  {t} +6 steps +loss [\d.]+ +(held-out DST|no held-out)", line) for line in lines), t
    pools = [c.generator for c in stage_configs(cfg)["generate"].values()]  # one pool per generator the policy draws
    for g in pools:
        assert any(re.match(rf"  {g}: 10 rows written, 0 rejected", line) for line in lines), (g, lines)
    assert sum("steps, loss" in line and "val F1" in line for line in lines) == 2  # the two segmenter runs
    assert any(line.startswith("stage timings: fit ") and "total" in line for line in lines)
    head = lines.index(next(line for line in lines if line.startswith("pixel F1 on the real test split")))
    table = lines[head + 2:head + 4]
    assert [r.split("  ")[1] for r in table] == [GEN, REF], lines[head:]
    numbers = [[float(v) for v in r.split()[-7:]] for r in table]  # F1, macro, 5 types
    assert all(0 <= v <= 1 for row in numbers for v in row)
    assert numbers[0][0] == round(result["pixel"]["f1"], 3)
    assert lines[-1] == f"report: {run / 'report' / 'index.html'}"
    # Ray's own output went to the log, not to the terminal
    assert not any(w in line for line in lines for w in ("pid=", "TrainController", "WARNING", "INFO"))
    assert (run / "logs" / "ray.log").stat().st_size > 0

    # The report opens on the same table.
    first = html.split("<h2", 2)[1]
    assert first.startswith(' id="headline"'), first[:200]
    rows = re.findall(r"<tr>(.*?)</tr>", first.split('<table class="headline">', 1)[1].split("</table>", 1)[0])
    cells = [re.findall(r"<td[^>]*>(.*?)</td>", r) for r in rows[1:]]
    assert [c[0] for c in cells] == [GEN, REF]
    assert [[float(v) for v in c[1:]] for c in cells] == numbers
    assert html.index('id="run"') > html.index('id="evaluation"') and "<details>" in html  # config at the end

    # A re-run reuses every finished stage.
    again = run_pipeline(cfg)
    assert all(again["stages"][s]["reused"] for s in ("fit", "generate", "train", "evaluate")), again["stages"]

    # --seeds: the segmenters once per seed, each row's mean and every seed; DST fits and generation reused.
    over = run_pipeline(dataclasses.replace(cfg, seeds=[0, 1]))
    assert over["stages"]["fit"]["reused"] and over["stages"]["generate"]["reused"]
    rows = over["stages"]["train"]["over_seeds"]
    assert set(rows) == {GEN, REF}
    for folder in ("seg", "seg-ref"):
        saved = json.loads((tmp_path / "run" / folder / "seeds.json").read_text())
        assert saved["seeds"] == [0, 1] and set(saved["test"]["per_seed"]) == {"0", "1"}
        own = json.loads((tmp_path / "run" / folder / "seed-1" / "test" / "eval.json").read_text())
        assert saved["test"]["per_seed"]["1"]["f1"] == own["pixel"]["f1"]
        # run k trains with the segmenter seed of `pipeline --seed k`, recorded in seeds.json and its checkpoint
        assert saved["seg_seeds"] == {str(k): stage_seeds(k)["seg"] for k in (0, 1)}
        model = torch.load(tmp_path / "run" / folder / "seed-1" / "model.pt", weights_only=True)
        assert model["config"]["seed"] == stage_seeds(1)["seg"]
