"""The HTML run report (dstray.report) on a small but real run folder."""

import base64
import json
import re

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from dstray.report import write_report

TYPES = ("blowhole", "crack")
# the generated-dataset schema of docs/design.md
SCHEMA = pa.schema([
    ("sample_id", pa.string()), ("index", pa.int64()), ("defect_type", pa.string()),
    ("image", pa.binary()), ("mask", pa.binary()), ("height", pa.int32()), ("width", pa.int32()),
    ("background_id", pa.string()), ("reference_id", pa.string()), ("generator", pa.string()),
    ("model_digest", pa.string()), ("seed", pa.int64()), ("bbox", pa.list_(pa.int32())),
    ("area_px", pa.int64()), ("dstray_version", pa.string()),
])
EVAL = {
    "pixel": {"precision": 0.8123, "recall": 0.6517, "f1": 0.7232, "iou": 0.5664, "tp": 4321, "fp": 998, "fn": 2309,
              "tn": 100000},
    "per_type": {"blowhole": {"precision": 0.9041, "recall": 0.7708, "f1": 0.8321, "iou": 0.7126, "tp": 3001,
                              "fp": 318, "fn": 892, "tn": 5, "images": 3},
                 "crack": {"precision": 0.6601, "recall": 0.4859, "f1": 0.5598, "iou": 0.3887, "tp": 1320,
                           "fp": 680, "fn": 1417, "tn": 5, "images": 2}},
    "image": {"defect_images": 5, "detected": 4, "free_images": 7, "false_alarms": 2, "detection_rate": 0.8,
              "false_alarm_rate": 2 / 7},
    "n_images": 12, "resolution": "letterboxed 64x64, valid (non-padded) pixels only", "threshold": 0.5,
}


def _img_srcs(html: str) -> list[str]:
    return re.findall(r'<img\b[^>]*\bsrc="([^"]*)"', html)


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory, sample_dataset):
    """Real DST checkpoints of two types: 2 tiny steps each (random VGG weights, 32 px patches)."""
    from dstray.config import AreaConfig, DSTConfig
    from dstray.dst.fit import DSTFitter

    out = tmp_path_factory.mktemp("models")
    small = AreaConfig(scale_min=0.25, scale_max=0.25, keep_border_contact=False)  # windows of ~32 px: fast
    paths = {}
    for t in TYPES:
        fitter = DSTFitter(DSTConfig(defect_type=t, steps=2, batch_size=1, patch_size=32, area=small, device="cpu"),
                           sample_dataset)
        fitter.step()
        fitter.step()
        paths[t] = fitter.save(out / t / "model.pt")
    return paths


def _generated(run, sample_dataset, n=6):
    from dstray.data import encode_png, read_image

    rows = []
    backgrounds = sample_dataset.backgrounds()
    for i in range(n):
        bg = backgrounds[i % len(backgrounds)]
        image = read_image(bg.image)[:, :48, :40]
        mask = torch.zeros(1, 48, 40)
        mask[:, 10:20 + i, 8:18] = 1
        t = TYPES[i % 2]
        rows.append({"sample_id": f"0-{i:08d}", "index": i, "defect_type": t, "image": encode_png(image),
                     "mask": encode_png(mask), "height": 48, "width": 40, "background_id": bg.id,
                     "reference_id": sample_dataset.references(t)[0].id, "generator": "histmatch",
                     "model_digest": "", "seed": i, "bbox": [10, 8, 20 + i, 18], "area_px": int(mask.sum()),
                     "dstray_version": "0.1.0"})
    data = run / "generated" / "data"
    data.mkdir(parents=True)
    pq.write_table(pa.Table.from_pylist(rows[:4], SCHEMA), data / "part-00000.parquet")
    pq.write_table(pa.Table.from_pylist(rows[4:], SCHEMA), data / "part-00001.parquet")
    (run / "generated" / "summary.json").write_text(json.dumps(
        {"requested": n + 1, "written": n, "rejected": 1, "rows_per_s": 12.5, "seconds": 0.48}))


def _pipeline(run, stages):
    run.mkdir(parents=True, exist_ok=True)
    (run / "pipeline.json").write_text(json.dumps({
        "config": {"generate": {"num_samples": 6, "generator": "histmatch"}, "num_samples": 6,
                   "seg": {"steps": 20, "lr": 0.002, "real_splits": ["reference"]},
                   "note": "<script>x</script>"},
        "versions": {"dstray": "0.1.0", "torch": torch.__version__, "ray": "2.60.0", "python": "3.11.7"},
        "stages": stages, "data": "embedded sample"}))


def test_full_report(tmp_path, checkpoints, sample_dataset):
    from dstray.data import encode_png

    run = tmp_path / "run"
    _pipeline(run, {"fit": {"seconds": 12.34, "reused": False}, "generate": {"seconds": 5.0, "reused": True},
                    "train": {"seconds": 60.0, "reused": False}, "evaluate": {"seconds": 3.21, "reused": False}})
    for t, path in checkpoints.items():
        (run / "models" / t).mkdir(parents=True)
        (run / "models" / t / "model.pt").write_bytes(path.read_bytes())
    _generated(run, sample_dataset)
    (run / "seg").mkdir()
    (run / "seg" / "history.jsonl").write_text("".join(
        json.dumps({"step": s, "loss": 1.0 / s, "f1": s / 40, "precision": 0.5, "recall": 0.4,
                    "iou": s / 50}) + "\n" for s in (10, 20)))
    (run / "eval").mkdir()
    (run / "eval" / "eval.json").write_text(json.dumps(EVAL))
    eval_png = encode_png(torch.rand(3, 20, 30, generator=torch.Generator().manual_seed(0)))
    (run / "eval" / "eval.png").write_bytes(eval_png)
    (run / "eval-ref").mkdir()  # the baseline: the same segmenter without generated samples
    (run / "eval-ref" / "eval.json").write_text(json.dumps(
        {**EVAL, "pixel": {**EVAL["pixel"], "f1": 0.4111}, "macro": {"f1": 0.3222},
         "per_type": {t: {**r, "f1": f1} for (t, r), f1 in zip(EVAL["per_type"].items(), (0.5333, 0.2444))}}))

    index = write_report(run, contact_sheet_n=4, seed=1)
    assert index == run / "report" / "index.html"
    html = index.read_text()
    assert "could not render" not in html and 'class="error"' not in html
    for t in TYPES:  # every defect type: a Figure-3 row and its zooms on L
        assert f">{t}<" in html
        for name in ("", "-histmatch-zoom", "-dst-zoom"):
            assert (index.parent / f"fig3-{t}{name}.png").exists()
    # evaluation table numbers
    for text in ("0.812", "0.652", "0.723", "0.566", "4321", "998", "2309",  # overall
                 "0.904", "0.832", "0.713", "0.660", "0.560", "0.389", "1320",  # per type
                 "0.800", "0.286"):  # image-level detection / false-alarm rates
        assert f">{text}<" in html, text
    assert "12.3" in html and "reused" in html  # stage timings
    assert ">12.5<" in html  # generation summary rows_per_s
    assert "&lt;script&gt;" in html and "<script>" not in html  # config shown escaped
    assert html.count("<figure>") == 4  # contact sheet
    # the first section: the headline table, with generated samples (eval/) beside without (eval-ref/)
    first = html.split('<h2 id="headline">', 1)[1].split("<h2", 1)[0]
    assert html.index('<h2 id="headline">') < html.index("<h2 ", html.index('<h2 id="headline">') + 1)
    table_rows = re.findall(r"<tr>(.*?)</tr>", first.split('<table class="headline">', 1)[1].split("</table>")[0])
    cells = [re.findall(r"<t[dh][^>]*>(.*?)</t[dh]>", r) for r in table_rows]
    assert cells[0] == ["segmenter trained on", "pixel F1", "macro F1", "F1 blowhole", "F1 crack"]
    assert cells[1] == ["references + 6 generated", "0.723", "n/a", "0.832", "0.560"]  # EVAL has no macro
    assert cells[2] == ["references only", "0.411", "0.322", "0.533", "0.244"]
    assert first.count("<figure>") == 4  # the contact sheet: image beside its mask
    srcs = _img_srcs(html)
    assert len(srcs) == 4 + 2 * 3 + 3  # contact sheet, fig3 rows, two loss figures, eval.png
    assert all(s.startswith("data:image/png;base64,") for s in srcs)
    assert base64.b64decode(srcs[-1].split(",", 1)[1]) == eval_png  # eval.png embedded as is
    assert (index.parent / "eval.png").read_bytes() == eval_png
    assert all(base64.b64decode(s.split(",", 1)[1]).startswith(b"\x89PNG") for s in srcs)

    # the same seed gives the same images; a rerun replaces the report's files
    again = write_report(run, contact_sheet_n=2, seed=1).read_text()
    assert again.count("<figure>") == 2 and not (index.parent / "contact-002.png").exists()
    assert _img_srcs(again)[2:8] == srcs[4:10]  # the Figure-3 rows


def test_only_pipeline_json(tmp_path):
    run = tmp_path / "run"
    _pipeline(run, {})
    html = write_report(run).read_text()
    assert "could not render" not in html
    for what in ("no DST models", "no generated samples", "no segmentation history", "no evaluation",
                 "no generation summary"):
        assert f"not run: {what}" in html
    assert html.count(">not run<") == 4  # the four stages of the timings table
    assert '"num_samples": 6' in html and "2.60.0" in html  # config and versions
    assert _img_srcs(html) == []


def test_unreadable_parts_are_reported(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "models" / "blowhole").mkdir(parents=True)
    (run / "models" / "blowhole" / "model.pt").write_bytes(b"not a checkpoint")
    (run / "seg").mkdir()
    (run / "seg" / "history.jsonl").write_text('{"step": 1, "loss": 0.5, "f1": 0.1}\n{broken\n')
    html = write_report(run, out_dir=tmp_path / "out").read_text()
    assert "no pipeline.json" in html
    assert "unreadable checkpoint" in html and "blowhole" in html
    assert "1 unreadable line(s)" in html
    assert (tmp_path / "out" / "seg-history.png").exists()


def test_the_row_labels_name_the_defect_free_share_both_runs_have():
    from dstray.report.headline import labels

    cfg = {"num_samples": 300, "seg": {"real_splits": ["reference"], "free_fraction": 0.25}}
    assert labels({"config": cfg}) == {"generated": "references + defect-free tiles + 300 generated",
                                       "baseline": "references + defect-free tiles"}
    cfg["seg"]["free_fraction"] = 0.0
    assert labels({"config": cfg}) == {"generated": "references + 300 generated", "baseline": "references only"}
