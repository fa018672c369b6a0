"""RESULTS/README.md from results lines: the tables against numpy, the paper's claims, plots, the same bytes twice."""

from __future__ import annotations

import shutil

import numpy as np
import pytest

from dstray.cells import append_line
from dstray.report.results import write_results_report, write_results_reports

TYPES = ("crack", "fray")
SEEDS = (0, 1, 2)


def line(experiment, arch, data, seed, f1, *, k=None, samples=None, digest="d", seconds=60.0, auroc=0.9, fpr=0.3,
         per_type=None, preset="cpu"):
    group = f"{arch}-{data}" + (f"-k{k}" if k is not None else f"-n{samples}" if samples is not None else "")
    per_type = per_type or {t: f1 for t in TYPES}
    scores = {"pixel": {"f1": f1, "precision": f1, "recall": f1}, "macro": {"f1": float(np.mean(list(per_type.values())))},
              "per_type": {t: {"f1": v} for t, v in per_type.items()}, "image": {"auroc": auroc, "fpr_at_95": fpr}}
    return {"experiment": experiment, "cell": f"{group}-s{seed}", "group": group, "arch": arch, "data": data,
            "seed": seed, "k": k, "samples": samples, "preset": preset, "dataset": "tiles", "test": scores,
            "val": scores, "val_f1": f1, "seconds": seconds, "threads": 1,
            "settings": {"digest": digest, "seg": {"seed": 1000 + seed},
                         "seeds": {"run": seed, "dst": 100 + seed, "generate": 200 + seed, "seg": 1000 + seed}},
            "finished_at": f"2026-12-03T10:{len(group):02d}:0{seed}Z",
            "machine": {"os": "Linux", "cpus": 2, "loadavg_start": [1.0, 2.0, 3.0], "loadavg_end": [2.0, 2.0, 2.0]}}


# Table 1: arch -> data -> F1 per seed. Buttonlab clearly best in every column; DST clearly best generator for
# Buttonlab, inside the spread for DeepLab v3+, beaten by histmatch for U-Net.
TABLE1 = {
    "buttonlab": {"refs": [0.40, 0.42, 0.44], "copy": [0.60, 0.61, 0.62], "histmatch": [0.62, 0.63, 0.64],
                  "dst": [0.80, 0.81, 0.82], "policy": [0.70, 0.72, 0.71]},
    "deeplabv3plus": {"refs": [0.20, 0.22, 0.24], "copy": [0.30, 0.32, 0.34], "histmatch": [0.40, 0.45, 0.50],
                      "dst": [0.42, 0.47, 0.49], "policy": [0.30, 0.30, 0.31]},
    "unet": {"refs": [0.10, 0.12, 0.14], "copy": [0.20, 0.21, 0.22], "histmatch": [0.50, 0.51, 0.52],
             "dst": [0.30, 0.31, 0.32], "policy": [0.25, 0.26, 0.27]},
}
FIG6 = {("B", 0): [0.10, 0.12, 0.14], ("C", 0): [0.40, 0.42, 0.44], ("B", 10): [0.30, 0.35, 0.40],
        ("C", 10): [0.33, 0.36, 0.41], ("B", 77): [0.60, 0.62, 0.64], ("C", 77): [0.58, 0.60, 0.62]}
SAMPLES = {100: [0.40, 0.45, 0.41], 300: [0.50, 0.52, 0.49], 1000: [0.55, 0.50, 0.57]}


def pm(values) -> str:
    return f"{np.mean(values):.3f} ± {np.std(values, ddof=1):.3f} (3)"


def write(folder):
    """The synthetic results files: Table 1, Figure 6 and samples over 3 seeds; per type, AUROC, FPR varying."""
    for arch, row in TABLE1.items():
        for data, values in row.items():
            for seed, f1 in zip(SEEDS, values):
                append_line(folder / "table1.jsonl", line("table1", arch, data, seed, f1, auroc=0.5 + f1 / 2,
                                                          fpr=1 - f1, per_type={"crack": f1 / 2, "fray": f1},
                                                          seconds=600.0 + seed))
    append_line(folder / "table1.jsonl", line("table1", "buttonlab", "refs", 0, 0.99, digest="old"))
    append_line(folder / "table1.jsonl", line("table1", "buttonlab", "refs", 0, 0.40, auroc=0.7, fpr=0.6,
                                              per_type={"crack": 0.2, "fray": 0.4}, seconds=600.0, digest="new"))
    for (data, k), values in FIG6.items():
        for seed, f1 in zip(SEEDS, values):
            append_line(folder / "fig6.jsonl", line("fig6", "buttonlab", data, seed, f1, k=k))
    for n, values in SAMPLES.items():
        for seed, f1 in zip(SEEDS, values):
            append_line(folder / "samples.jsonl", line("samples", "buttonlab", "policy", seed, f1, samples=n))


def section(readme: str, heading: str) -> str:
    return readme.split(heading, 1)[1].split("\n## ", 1)[0]


def test_table1_every_row_per_type_and_the_sweeps_against_numpy(tmp_path):
    write(tmp_path)
    readme = write_results_report(tmp_path).read_text()
    assert readme.startswith("# Experiments on tiles\n")
    table1 = section(readme, "## Table 1 (preset `cpu`)")
    names = {"buttonlab": "Buttonlab", "deeplabv3plus": "DeepLab v3+", "unet": "U-Net"}
    for arch, row in TABLE1.items():  # rows = arch, columns = refs, + copy, + histmatch, + DST, + policy
        cells = " | ".join(pm(row[d]) for d in ("refs", "copy", "histmatch", "dst", "policy"))
        assert f"| {names[arch]} | {cells} |" in table1
        for seed in SEEDS:  # every seed
            assert f"| {names[arch]} | {seed} | " + " | ".join(f"{row[d][seed]:.3f}" for d in row) + " |" in table1
    # the paper's Table 1 beside it, read as DST / hist match / cycleGAN / only real (see results.py)
    assert "| Buttonlab | 0.4692 | - | 0.6599 ? | 0.8000 | - | 0.6841 ? |" in table1
    assert "| DeepLab v3+ | 0.4249 | - | 0.4752 ? | 0.6390 | - | 0.5693 ? |" in table1
    assert "| U-Net | 0.5903 | - | 0.1930 ? | 0.6578 | - | 0.6377 ? |" in table1
    # every row: image AUROC and false alarms at 95 % detection beside pixel F1 (mean ± std); per type and macro
    f1 = TABLE1["unet"]["histmatch"]
    auroc, fpr = [0.5 + v / 2 for v in f1], [1 - v for v in f1]
    assert (f"| U-Net, + histmatch | {pm(f1)} | " + " | ".join(f"{v:.3f}" for v in f1) +
            f" | {pm([0.75 * v for v in f1])} | {pm(auroc)} | {pm(fpr)} | 10.0 |") in table1
    assert f"| U-Net, + histmatch | {pm([v / 2 for v in f1])} | {pm(f1)} | {pm([0.75 * v for v in f1])} |" in table1
    # Figure 6 and samples: mean ± std per k (B, C) and per n, and the plots beside the README, linked
    fig6 = section(readme, "## Figure 6 (preset `cpu`)")
    for k in (0, 10, 77):
        assert f"| {k} | {pm(FIG6[('B', k)])} | {pm(FIG6[('C', k)])} |" in fig6
    samples = section(readme, "## Generated samples (preset `cpu`)")
    for n, values in SAMPLES.items():
        assert f"| {n} | {pm(values)} |" in samples
    assert "![Figure 6: pixel F1 against k](fig6-cpu.png)" in fig6 and "(samples-cpu.png)" in samples
    for png in ("fig6-cpu.png", "samples-cpu.png"):
        data = (tmp_path / png).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and 5_000 < len(data) < 120_000
    # the superseded line is not used; the stored seeds, wall time and load of every cell
    assert "0.990" not in readme
    seeds = section(readme, "## Seeds")
    for s in SEEDS:
        assert f"| {s} | {100 + s} | {200 + s} | {1000 + s} |" in seeds
    assert "| buttonlab-dst-s2 | 10.0 | 1 |  | 1.0/2.0/3.0 | 2.0/2.0/2.0 | 2 |" in readme


def test_the_paper_claims_are_checked_from_the_numbers(tmp_path):
    write(tmp_path)
    claims = section(write_results_report(tmp_path).read_text(), "## The paper's claims (preset `cpu`)")
    lines = [x for x in claims.splitlines() if x.startswith("- **")]
    assert len(lines) == 4
    best, dst, refs, few = lines
    assert best.startswith("- **Buttonlab is the best segmenter with every training set** (paper §4.1, Table 1): "
                           "holds (references only: Buttonlab 0.420 vs DeepLab v3+ 0.220;")
    assert "+ histmatch: Buttonlab 0.630 vs U-Net 0.510" in best  # against the best other arch of the column
    assert ": does not hold: U-Net: + DST 0.310 vs + histmatch 0.510; inside the seed spread: DeepLab v3+: + DST " \
           "0.460 vs + histmatch 0.450; holds: Buttonlab: + DST 0.810 vs + histmatch 0.630." in dst
    assert refs.endswith("holds (Buttonlab: + DST 0.810 vs references only 0.420; DeepLab v3+: + DST 0.460 vs "
                         "references only 0.220; U-Net: + DST 0.310 vs references only 0.120).")
    # few-shot rows: every k but the largest (77, where C < B does not count)
    assert few.endswith("inside the seed spread: k = 10: C 0.367 vs B 0.350; holds: k = 0: C 0.420 vs B 0.120.")

    only = tmp_path / "only"  # without fig6 the claim says what is missing
    only.mkdir()
    shutil.copy(tmp_path / "table1.jsonl", only)
    assert "not measured yet (Figure 6 needs B and C at the same k)" in write_results_report(only).read_text()


def test_rendering_twice_and_elsewhere_gives_the_same_bytes(tmp_path):
    a, b = tmp_path / "a", tmp_path / "elsewhere" / "b"
    a.mkdir()
    write(a)
    write_results_report(a)
    first = {p.name: p.read_bytes() for p in a.iterdir() if p.suffix in (".md", ".png")}
    assert set(first) == {"README.md", "fig6-cpu.png", "samples-cpu.png"}
    write_results_report(a)
    assert {p: (a / p).read_bytes() for p in first} == first
    shutil.copytree(a, b)  # a clean clone: the committed .jsonl files only
    for p in first:
        (b / p).unlink()
    write_results_report(b)
    assert {p: (b / p).read_bytes() for p in first} == first
    assert str(tmp_path) not in first["README.md"].decode() and b"Matplotlib" not in first["fig6-cpu.png"]


def test_one_seed_and_a_second_preset(tmp_path):
    append_line(tmp_path / "samples.jsonl", line("samples", "buttonlab", "policy", 0, 0.4, samples=100))
    append_line(tmp_path / "samples.jsonl", line("samples", "buttonlab", "policy", 0, 0.3, samples=100,
                                                 preset="smoke"))
    readme = write_results_report(tmp_path).read_text()
    assert "0.400 (1 seed)" in readme and "0.300 (1 seed)" in readme  # one seed: no std
    assert readme.index("## Generated samples (preset `cpu`)") < readme.index("## Generated samples (preset `smoke`)")
    assert (tmp_path / "samples-smoke.png").exists()
    assert "not measured yet (Table 1 needs" in readme


def test_report_errors_say_what_to_run(tmp_path, monkeypatch):
    with pytest.raises(FileNotFoundError, match="dstray experiment table1"):
        write_results_report(tmp_path)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(FileNotFoundError, match="--results"):
        write_results_reports()
