"""RESULTS/README.md from results lines: mean ± std against the statistics module, plots, superseded lines."""

from __future__ import annotations

import statistics

import pytest

from dstray.cells import append_line
from dstray.report.results import write_results_report, write_results_reports


def line(experiment, arch, data, seed, f1, *, k=None, samples=None, digest="d", seconds=60.0):
    group = f"{arch}-{data}" + (f"-k{k}" if k is not None else f"-n{samples}" if samples is not None else "")
    scores = {"pixel": {"f1": f1, "precision": f1, "recall": f1}, "macro": {"f1": f1 / 2},
              "per_type": {"crack": {"f1": f1}}, "image": {"auroc": 0.9, "fpr_at_95": 0.3}}
    return {"experiment": experiment, "cell": f"{group}-s{seed}", "group": group, "arch": arch, "data": data,
            "seed": seed, "k": k, "samples": samples, "preset": "cpu", "test": scores, "val": scores, "val_f1": f1,
            "seconds": seconds, "threads": 1, "settings": {"digest": digest},
            "finished_at": f"2026-12-03T10:0{seed}:00Z",
            "machine": {"os": "Linux", "cpus": 2, "loadavg_start": [1.0, 2.0, 3.0], "loadavg_end": [2.0, 2.0, 2.0]}}


def test_the_report_shows_mean_std_every_seed_the_paper_and_the_plots(tmp_path):
    f1s = {("buttonlab", "refs"): [0.2, 0.3, 0.4], ("buttonlab", "dst"): [0.5, 0.6, 0.75],
           ("deeplabv3plus", "dst"): [0.1, 0.2, 0.15]}
    for (arch, data), values in f1s.items():
        for seed, f1 in enumerate(values):
            append_line(tmp_path / "table1.jsonl", line("table1", arch, data, seed, f1))
    append_line(tmp_path / "table1.jsonl", line("table1", "buttonlab", "refs", 0, 0.9, digest="old"))
    append_line(tmp_path / "table1.jsonl", line("table1", "buttonlab", "refs", 0, 0.2, digest="new"))  # supersedes
    for k in (0, 10):
        for seed in (0, 1):
            append_line(tmp_path / "fig6.jsonl", line("fig6", "buttonlab", "B", seed, 0.1 + k / 100 + seed / 10, k=k))
            append_line(tmp_path / "fig6.jsonl", line("fig6", "buttonlab", "C", seed, 0.3 + k / 100, k=k))
    append_line(tmp_path / "samples.jsonl", line("samples", "buttonlab", "policy", 0, 0.4, samples=100))

    readme = write_results_report(tmp_path).read_text()
    for values in f1s.values():  # mean ± sample std over the seeds, from the statistics module
        assert f"{statistics.mean(values):.3f} ± {statistics.stdev(values):.3f} (3)" in readme
    assert "0.9" not in readme.split("## Machine")[0].replace("0.900", "")  # the superseded line is not used
    assert "| Buttonlab | 0.4692 | 0.6599 ? | 0.8000 | 0.6841 ? |" in readme  # the paper's Table 1, uncertain marked
    assert "*DST beats references only*: holds here (1 of 1)" in readme
    assert "*Buttonlab beats DeepLab v3+ with the same data*: holds here (1 of 1)" in readme
    assert "| 0.750 |" in readme or "| 0.75 |" in readme  # every seed's value
    assert "![Figure 6: pixel F1 against k](fig6-cpu.png)" in readme and "(samples-cpu.png)" in readme
    for png in ("fig6-cpu.png", "samples-cpu.png"):
        assert (tmp_path / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    fig6_c = [0.3, 0.3]  # C at k = 0 over seeds 0 and 1
    assert f"| 0 | {statistics.mean([0.1, 0.2]):.3f} ± {statistics.stdev([0.1, 0.2]):.3f} (2) | " \
           f"{statistics.mean(fig6_c):.3f} ± {statistics.stdev(fig6_c):.3f} (2) |" in readme
    assert "0.400 (1 seed)" in readme  # one seed: no std
    assert "buttonlab-dst-s2" in readme and "| 1.0/2.0/3.0 |" in readme  # wall time and load per cell


def test_report_errors_say_what_to_run(tmp_path, monkeypatch):
    with pytest.raises(FileNotFoundError, match="dstray experiment table1"):
        write_results_report(tmp_path)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(FileNotFoundError, match="--results"):
        write_results_reports()
