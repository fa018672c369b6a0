"""``RESULTS/README.md`` from the experiments' results files (``dstray experiment report``).

Reads ``RESULTS/<experiment>.jsonl`` (one line per finished cell, :mod:`dstray.cells`) and nothing
else, keeps the last line of each cell, and writes, per preset:

- the paper's claims checked on these numbers, one generated sentence each ("holds", "does not hold:
  ...", "inside the seed spread: ...");
- Table 1 (arch x references only / + copy / + histmatch / + DST / + policy) as pixel F1 mean ± std
  over the seeds (:func:`dstray.seg.seeds.summarise`: sample std, ddof 1), every seed's value, and the
  paper's own Table 1 beside it;
- Figure 6 (pixel F1 against the k real train images added, B without and C with generated samples)
  and pixel F1 against the generated pool size as PNG plots next to the README: the mean with one std
  as error bars, every seed as a dot;
- for every row: macro F1, image AUROC and false alarms at 95 % detection beside pixel F1, and pixel F1
  per defect type;
- the seeds every stage got (as the lines store them), each cell's wall time and the machine's load.

Reproducible: rendering the same ``.jsonl`` files gives the same bytes (README and PNGs: matplotlib
``Figure`` on Agg, fixed size and DPI, no ``Software`` metadata; no machine path, no date but the lines').
"""

from __future__ import annotations

import math
from collections import defaultdict
from pathlib import Path

from dstray.cells import EXPERIMENTS, TABLE1_DATA, read_lines, results_dir
from dstray.config import GENERATORS
from dstray.report.tables import markdown_table
from dstray.seg.seeds import summarise

# Paper Table 1 (pixel F1, button dataset), as the extracted text (paper/defect-style-transfer.txt, §4.1) gives it:
#   "Segmentation Simulation Only real Proposed DST Hist match cycleGAN"
#   "Proposed Buttonlab 0.8000 0.6599 0.6841 0.4692" / "Deeplab v3+ 0.6390 0.4752 0.5693 0.4249" /
#   "U-Net 0.6578 0.1930 0.6377 0.5903"
# Read literally, "Only real" would be the first value (Buttonlab 0.8000). The text contradicts that: the abstract
# says the model trained on generated samples "reaches 0.80, which is better than the real sample result", the
# conclusion that DST + Buttonlab "achieve the F1 score of 0.8000 using only 9 real defect samples", and the
# introduction that Buttonlab goes "from 0.42 to 0.80 compared to Deeplab v3+ with traditional augmentation" (0.4249:
# DeepLab v3+'s last value). So the first value is DST and the last is only real; the header lost its layout (the
# "Only real" column printed last). The two middle values are read in the header's order (Hist match, then
# cycleGAN), which the text does not confirm: they are marked uncertain.
PAPER_TABLE1 = {"buttonlab": {"refs": 0.4692, "dst": 0.8000, "histmatch": 0.6599, "cyclegan": 0.6841},
                "deeplabv3plus": {"refs": 0.4249, "dst": 0.6390, "histmatch": 0.4752, "cyclegan": 0.5693},
                "unet": {"refs": 0.5903, "dst": 0.6578, "histmatch": 0.1930, "cyclegan": 0.6377}}
PAPER_RAW = {"buttonlab": "0.8000 0.6599 0.6841 0.4692", "deeplabv3plus": "0.6390 0.4752 0.5693 0.4249",
             "unet": "0.6578 0.1930 0.6377 0.5903"}
PAPER_UNCERTAIN = ("histmatch", "cyclegan")
DATA_NAMES = {"refs": "references only", "copy": "+ copy", "histmatch": "+ histmatch", "dst": "+ DST",
              "policy": "+ policy", "cyclegan": "+ cycleGAN", "B": "without generated (B)", "C": "with generated (C)"}
ARCH_NAMES = {"buttonlab": "Buttonlab", "deeplabv3plus": "DeepLab v3+", "unet": "U-Net"}
FPR = "false alarms at 95 % detection"
DPI = 100  # PNGs: 5.5 x 3.6 in at 100 dpi, ~30 kB each


def latest(records: list[dict]) -> dict[str, dict[str, dict]]:
    """preset -> cell name -> its last line (a cell run again with other settings supersedes its old line)."""
    out: dict[str, dict[str, dict]] = defaultdict(dict)
    for r in records:
        out[r["preset"]][r["cell"]] = r
    return out


def _order(line: dict) -> tuple:
    data = list(TABLE1_DATA) + ["B", "C"]
    return (list(ARCH_NAMES).index(line["arch"]) if line["arch"] in ARCH_NAMES else 99,
            data.index(line["data"]) if line["data"] in data else 99, line.get("k") or 0, line.get("samples") or 0,
            line["group"])


def group_stats(cells: dict[str, dict]) -> dict[str, dict]:
    """group -> ``summarise`` of its seeds on test, plus its first line (arch, data, k, samples); in table order."""
    groups: dict[str, dict[int, dict]] = defaultdict(dict)
    first: dict[str, dict] = {}
    for r in cells.values():
        groups[r["group"]][r["seed"]] = {"test": r["test"], "val": r["val"], "seconds": r["seconds"]}
        first.setdefault(r["group"], r)
    order = sorted(groups, key=lambda g: _order(first[g]))
    return {g: {**summarise(groups[g], "test"), "line": first[g]} for g in order}


def _ok(x) -> bool:
    return x is not None and not (isinstance(x, float) and math.isnan(x))


def pm(s: dict | None, key: str = "f1") -> str:
    """``mean ± std (n)`` of figure ``key`` of a summary; one seed: ``mean (1 seed)``; none: ``-``."""
    if not s or key not in s["mean"] or not _ok(s["mean"][key]):
        return "-"
    mean, std, n = s["mean"][key], s["std"][key], s["n"][key]
    return f"{mean:.3f} ({n} seed)" if n == 1 or not _ok(std) else f"{mean:.3f} ± {std:.3f} ({n})"


def _num(x) -> str:
    return f"{x:.3f}" if _ok(x) else "-"


def _minutes(seconds) -> str:
    return f"{seconds / 60:.1f}" if _ok(seconds) else "-"


# --------------------------------------------------------------------------- the paper's claims
def _compare(a: tuple[str, dict], b: tuple[str, dict], where: str) -> tuple[str, str]:
    """("win" | "loss" | "inside", text): is a's mean pixel F1 above b's by more than the larger of their stds?"""
    (la, sa), (lb, sb) = a, b
    ma, mb = sa["mean"]["f1"], sb["mean"]["f1"]
    spread = max((x for x in (sa["std"]["f1"], sb["std"]["f1"]) if _ok(x)), default=0.0)
    state = "inside" if abs(ma - mb) <= spread else "win" if ma > mb else "loss"
    return state, f"{where}{la} {ma:.3f} vs {lb} {mb:.3f}"


def _verdict(found: list[tuple[str, str]]) -> str:
    """One verdict from the comparisons of a claim (each: the claim's side against the best other)."""
    by = {s: [t for state, t in found if state == s] for s in ("win", "loss", "inside")}
    if len(by["win"]) == len(found):
        return "holds (" + "; ".join(by["win"]) + ")"
    parts = []
    if by["loss"]:
        parts.append("does not hold: " + "; ".join(by["loss"]))
    if by["inside"]:
        parts.append("inside the seed spread: " + "; ".join(by["inside"]))
    if by["win"]:
        parts.append("holds: " + "; ".join(by["win"]))
    return "; ".join(parts)


def _best_other(stats: dict, groups: list[str], label) -> tuple[str, dict] | None:
    present = [g for g in groups if g in stats and _ok(stats[g]["mean"].get("f1"))]
    if not present:
        return None
    g = max(present, key=lambda x: stats[x]["mean"]["f1"])
    return label(g), stats[g]


def claims(table1: dict | None, fig6: dict | None) -> list[str]:
    """The paper's claims, one sentence each, with the verdict the numbers give (mean pixel F1; a difference
    within the larger of the two seed standard deviations is "inside the seed spread")."""
    lines = []

    def say(claim: str, source: str, found: list, missing: str) -> None:
        lines.append(f"- **{claim}** ({source}): " + (_verdict(found) if found else f"not measured yet ({missing})")
                     + ".")

    t1 = table1 or {}
    found = []
    for d in TABLE1_DATA:
        own = t1.get(f"buttonlab-{d}")
        other = _best_other(t1, [f"{a}-{d}" for a in ARCH_NAMES if a != "buttonlab"],
                            lambda g: ARCH_NAMES[g.split("-")[0]])
        if own and other and _ok(own["mean"].get("f1")):
            found.append(_compare(("Buttonlab", own), other, f"{DATA_NAMES[d]}: "))
    say("Buttonlab is the best segmenter with every training set", "paper §4.1, Table 1", found,
        "Table 1 needs Buttonlab and another arch with the same data")

    found = []
    for a in ARCH_NAMES:
        own = t1.get(f"{a}-dst")
        other = _best_other(t1, [f"{a}-{g}" for g in GENERATORS if g != "dst"],
                            lambda g: DATA_NAMES[g.split("-", 1)[1]])
        if own and other and _ok(own["mean"].get("f1")):
            found.append(_compare(("+ DST", own), other, f"{ARCH_NAMES[a]}: "))
    say("DST is the best generator", "paper §4.1, Table 1: DST against histmatch and cycleGAN; here against "
        "histmatch and copy", found, "Table 1 needs + DST and another generator with the same arch")

    found = []
    for a in ARCH_NAMES:
        own, refs = t1.get(f"{a}-dst"), t1.get(f"{a}-refs")
        if own and refs and _ok(own["mean"].get("f1")) and _ok(refs["mean"].get("f1")):
            found.append(_compare(("+ DST", own), ("references only", refs), f"{ARCH_NAMES[a]}: "))
    say("Generated samples lift the references-only row", "paper §4.1, Table 1: + DST against only real", found,
        "Table 1 needs references only and + DST")

    f6 = fig6 or {}
    ks = sorted({st["line"]["k"] for st in f6.values()})
    few = ks[:-1] or ks  # every k but the largest (all real train images): the few-shot rows
    found = []
    for k in few:
        b, c = f6.get(f"buttonlab-B-k{k}"), f6.get(f"buttonlab-C-k{k}")
        if b and c and _ok(b["mean"].get("f1")) and _ok(c["mean"].get("f1")):
            found.append(_compare(("C", c), ("B", b), f"k = {k}: "))
    say("Generated samples lift the few-shot rows of Figure 6", "paper §4.2: C (with generated) above B (without) "
        "when real samples are few; the few-shot rows here are every k but the largest", found,
        "Figure 6 needs B and C at the same k")
    return lines


# --------------------------------------------------------------------------- tables
def _label(experiment: str):
    return {"table1": lambda r: f"{ARCH_NAMES.get(r['arch'], r['arch'])}, {DATA_NAMES.get(r['data'], r['data'])}",
            "fig6": lambda r: f"k = {r['k']}, {DATA_NAMES.get(r['data'], r['data'])}",
            "samples": lambda r: f"n = {r['samples']} per pool"}[experiment]


def _seed_list(stats: dict) -> list[int]:
    return sorted({int(s) for st in stats.values() for s in st["per_seed"]})


def _rows_table(stats: dict, label) -> str:
    """Every row: pixel F1 (mean ± std, every seed), macro F1, image AUROC and false alarms at 95 % detection."""
    seeds = _seed_list(stats)
    cols = ["cell", "pixel F1", *[f"s{s}" for s in seeds], "macro F1", "image AUROC", FPR, "minutes per seed"]
    rows = []
    for st in stats.values():
        row = {"cell": label(st["line"]), "pixel F1": pm(st), "macro F1": pm(st, "macro_f1"),
               "image AUROC": pm(st, "auroc"), FPR: pm(st, "fpr_at_95"),
               "minutes per seed": _minutes(st["mean"].get("seconds"))}
        row.update({f"s{s}": _num(st["per_seed"].get(str(s), {}).get("f1")) for s in seeds})
        rows.append(row)
    return markdown_table(rows, cols)


def _types_table(stats: dict, label) -> str:
    """Pixel F1 per defect type and macro F1 (mean ± std over the seeds) of every row."""
    types = sorted({k[3:] for st in stats.values() for k in st["mean"] if k.startswith("f1/")})
    rows = [{"cell": label(st["line"]), **{t: pm(st, f"f1/{t}") for t in types}, "macro F1": pm(st, "macro_f1")}
            for st in stats.values()]
    return markdown_table(rows, ["cell", *types, "macro F1"])


def _details(stats: dict, experiment: str) -> list[str]:
    label = _label(experiment)
    return ["Every row: pixel F1 with every seed's value, macro F1, image AUROC and false alarms at 95 % "
            "detection (the share of defect-free test images flagged at the score threshold that detects 95 % of "
            "the defective ones), mean ± std (seeds):", "", _rows_table(stats, label),
            "Pixel F1 per defect type and macro F1 (mean over the types), mean ± std (seeds):", "",
            _types_table(stats, label)]


def _table1(stats: dict, preset: str) -> list[str]:
    archs = [a for a in ARCH_NAMES if any(st["line"]["arch"] == a for st in stats.values())]
    cols = ["segmenter", *[DATA_NAMES[d] for d in TABLE1_DATA]]
    rows = [{"segmenter": ARCH_NAMES[a], **{DATA_NAMES[d]: pm(stats.get(f"{a}-{d}")) for d in TABLE1_DATA}}
            for a in archs]
    seeds = _seed_list(stats)
    every = [{"segmenter": ARCH_NAMES[a], "seed": s,
              **{DATA_NAMES[d]: _num((stats.get(f"{a}-{d}") or {}).get("per_seed", {}).get(str(s), {}).get("f1"))
                 for d in TABLE1_DATA}} for a in archs for s in seeds]
    pcols = ["segmenter", *[DATA_NAMES[d] for d in ("refs", "copy", "histmatch", "dst", "policy", "cyclegan")]]
    paper = [{"segmenter": ARCH_NAMES[a], "+ copy": "-", "+ policy": "-",
              **{DATA_NAMES[d]: f"{v:.4f}" + (" ?" if d in PAPER_UNCERTAIN else "") for d, v in PAPER_TABLE1[a].items()}}
             for a in ARCH_NAMES]
    raw = "; ".join(f"{ARCH_NAMES[a]} {v}" for a, v in PAPER_RAW.items())
    return [f"## Table 1 (preset `{preset}`)", "",
            "Pixel F1 on test, mean ± std over the seeds (their number in brackets):", "", markdown_table(rows, cols),
            "Every seed:", "", markdown_table(every, ["segmenter", "seed", *cols[1:]]),
            "The paper's Table 1 (button dataset: 9 references, 2167 generated samples per generator; no copy or "
            "policy column, no seeds):", "", markdown_table(paper, pcols),
            "How the paper's table was read: its extracted text gives the header \"Only real, Proposed DST, Hist "
            f"match, cycleGAN\" over the rows {raw}. Read literally, only real would be Buttonlab's 0.8000; the "
            "abstract (generated samples \"reach 0.80, better than the real sample result\"), the conclusion (DST "
            "+ Buttonlab \"0.8000 using only 9 real defect samples\") and the introduction (Buttonlab \"from 0.42 "
            "to 0.80\" against DeepLab v3+) make the first value DST and the last only real. The two middle "
            "values are taken as Hist match, then cycleGAN, in the header's order; the text does not confirm "
            "it (`?`).", "", *_details(stats, "table1"), ""]


def _sweep_table(stats: dict, key: str, head: str) -> str:
    series: dict[str, dict] = defaultdict(dict)
    for st in stats.values():
        series[DATA_NAMES.get(st["line"]["data"], st["line"]["data"])][st["line"][key]] = st
    xs = sorted({x for pts in series.values() for x in pts})
    rows = [{head: x, **{name: pm(pts.get(x)) for name, pts in series.items()}} for x in xs]
    return markdown_table(rows, [head, *series])


def _plot(path: Path, stats: dict, key: str, xlabel: str, title: str, log_x: bool = False) -> None:
    """One line per data label: mean pixel F1 with ±1 std error bars, every seed as a dot. Same stats, same bytes."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    from matplotlib.ticker import NullFormatter

    series: dict[str, list[dict]] = defaultdict(list)
    for st in stats.values():
        series[st["line"]["data"]].append(st)
    allx = sorted({st["line"][key] for st in stats.values()})
    span = (max(allx) - min(allx)) or 1

    def beside(x, i: int):  # each series' seed dots just right of its mean, apart from the other series'
        return x * 1.04 ** (i + 1) if log_x else x + 0.015 * span * (i + 1)

    fig = Figure(figsize=(5.5, 3.6))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    for i, (data, points) in enumerate(series.items()):
        points = sorted(points, key=lambda s: s["line"][key])
        xs = [s["line"][key] for s in points]
        means = [s["mean"]["f1"] for s in points]
        stds = [s["std"]["f1"] if _ok(s["std"]["f1"]) else 0.0 for s in points]
        color = f"C{i}"
        ax.errorbar(xs, means, yerr=stds, marker="o", capsize=4, color=color,
                    label=f"{DATA_NAMES.get(data, data)}: mean ± std")
        dots = [(beside(x, i), v["f1"]) for x, s in zip(xs, points) for v in s["per_seed"].values() if _ok(v.get("f1"))]
        ax.scatter([x for x, _ in dots], [y for _, y in dots], s=12, alpha=0.6, color=color, linewidths=0)
    ax.scatter([], [], s=12, color="0.4", label="one seed")
    if log_x:
        ax.set_xscale("log")
        ax.xaxis.set_minor_formatter(NullFormatter())
    ax.set_xticks(allx, [str(x) for x in allx])
    ax.set_xlabel(xlabel)
    ax.set_ylabel("pixel F1 on test")
    ax.set_title(title, fontsize=10)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=DPI, metadata={"Software": None})


def _fig6(stats: dict, preset: str, out: Path) -> list[str]:
    png = f"fig6-{preset}.png"
    _plot(out / png, stats, "k", "real train images added to the references (k)",
          f"Figure 6 ({preset}): Buttonlab, without (B) and with (C) generated")
    return [f"## Figure 6 (preset `{preset}`)", "",
            "Buttonlab on the references + k real `train` images, without (B) and with (C) the policy's generated "
            "samples; pixel F1 on test, mean ± std over the seeds (line and bars), every seed a dot:", "",
            f"![Figure 6: pixel F1 against k]({png})", "", _sweep_table(stats, "k", "k"), *_details(stats, "fig6"),
            ""]


def _samples(stats: dict, preset: str, out: Path) -> list[str]:
    png = f"samples-{preset}.png"
    _plot(out / png, stats, "samples", "generated samples per pool (n)",
          f"Generated samples ({preset}): Buttonlab + the policy's pools", log_x=True)
    return [f"## Generated samples (preset `{preset}`)", "",
            "Buttonlab on the references + the policy's pools of n generated samples each; pixel F1 on test, mean ± "
            "std over the seeds (line and bars), every seed a dot:", "",
            f"![pixel F1 against the generated samples]({png})", "", _sweep_table(stats, "samples", "n"),
            *_details(stats, "samples"), ""]


def _seeds(cells: list[dict], preset: str) -> list[str]:
    """The seed every stage got, per run seed, as the lines store them (``settings.seeds``, ``settings.seg.seed``)."""
    by: dict[int, dict] = {}
    for r in cells:
        stored = (r.get("settings") or {}).get("seeds") or {}
        row = by.setdefault(r["seed"], {"run seed": r["seed"], "DST fit": "-", "generation": "-", "segmenter": "-"})
        for key, col in (("dst", "DST fit"), ("generate", "generation"), ("seg", "segmenter")):
            if key in stored:
                row[col] = str(stored[key])
        if row["segmenter"] == "-" and ((r.get("settings") or {}).get("seg") or {}).get("seed") is not None:
            row["segmenter"] = str(r["settings"]["seg"]["seed"])
    rows = [by[s] for s in sorted(by)]
    return [f"## Seeds (preset `{preset}`)", "",
            "A cell of run seed s seeds its stages as `dstray pipeline --seed s` does (`stage_seeds(s)`); the seeds "
            "each stage got, as the results lines record them (`-`: no cell of that seed used the stage, or its "
            "line predates the record):", "", markdown_table(rows, ["run seed", "DST fit", "generation", "segmenter"])]


def _machine(cells: dict[str, dict]) -> list[str]:
    rows = []
    for r in sorted(cells.values(), key=lambda r: (r.get("finished_at", ""), r["cell"])):
        m = r.get("machine", {})
        rows.append({"cell": r["cell"], "minutes": _minutes(r["seconds"]), "threads": r.get("threads", ""),
                     "resumed": "yes" if r.get("resumed") else "", "load at start": _load(m.get("loadavg_start")),
                     "load at end": _load(m.get("loadavg_end")), "CPUs": m.get("cpus", ""),
                     "GPU": m.get("gpu") or "", "finished (UTC)": r.get("finished_at", "")})
    total = sum(r["seconds"] for r in cells.values()) / 3600
    return [f"{len(cells)} cells, {total:.1f} cell-hours in all (minutes: the cell's wall time; load: the machine's "
            f"1/5/15-minute load averages at the cell's start and end; OS "
            f"{next(iter(cells.values())).get('machine', {}).get('os', '?')}).", "",
            markdown_table(rows, list(rows[0]))]


def _load(values) -> str:
    return "/".join(f"{v:.1f}" for v in values) if values else ""


def write_results_report(results: str | Path) -> Path:
    """Write ``results/README.md`` (and its PNGs) from the ``*.jsonl`` files there; returns its path."""
    results = Path(results)
    files = {e: results / f"{e}.jsonl" for e in EXPERIMENTS if (results / f"{e}.jsonl").exists()}
    if not files:
        raise FileNotFoundError(f"{results}: no results file ({', '.join(e + '.jsonl' for e in EXPERIMENTS)}); run "
                                "`dstray experiment table1|fig6|samples --data D` first, or give --results")
    by_preset: dict[str, dict[str, dict]] = defaultdict(dict)  # preset -> experiment -> cell -> line
    for experiment, path in files.items():
        for preset, cells in latest(read_lines(path)).items():
            by_preset[preset][experiment] = cells
    presets = sorted(by_preset, key=lambda p: ({"paper": 0, "cpu": 1}.get(p, 2), p))
    names = sorted({r.get("dataset", results.name) for p in by_preset.values() for c in p.values() for r in c.values()})
    parts = [f"# Experiments on {', '.join(names)}", "",
             "Written by `dstray experiment report` from the `*.jsonl` files here (one line per finished cell: "
             "an arch x its training data x a seed) and nothing else; do not edit by hand. Scores are on the real "
             "`test` split, of the model selected on `val`; mean ± sample standard deviation over the seeds (their "
             "number in brackets). How the cells were made: `docs/experiments.md`.", ""]
    for preset in presets:
        exps = by_preset[preset]
        stats = {e: group_stats(cells) for e, cells in exps.items()}
        parts += [f"## The paper's claims (preset `{preset}`)", "",
                  "Each claim's side against the best of the others (mean pixel F1); a difference within the larger "
                  "of the two standard deviations over the seeds is inside the seed spread (one seed: no spread).",
                  "", *claims(stats.get("table1"), stats.get("fig6")), ""]
        if "table1" in stats:
            parts += _table1(stats["table1"], preset)
        if "fig6" in stats:
            parts += _fig6(stats["fig6"], preset, results)
        if "samples" in stats:
            parts += _samples(stats["samples"], preset, results)
        everything = [r for cells in exps.values() for r in cells.values()]
        parts += [*_seeds(everything, preset), f"## Wall time and machine load per cell (preset `{preset}`)", ""]
        for experiment, cells in exps.items():
            parts += [f"### {experiment}", "", *_machine(cells)]
    readme = results / "README.md"
    readme.write_text("\n".join(parts).rstrip() + "\n")
    return readme


def write_results_reports(results: str | None = None, data: str | None = None) -> list[Path]:
    """``dstray experiment report``: ``results`` (or ``--data``'s results folder), else every ``results/*`` folder."""
    if results or data:
        return [write_results_report(results_dir(data, results))]
    folders = sorted(d for d in Path("results").glob("*") if any(d.glob("*.jsonl"))) if Path("results").is_dir() else []
    if not folders:
        raise FileNotFoundError("no results/<dataset>/*.jsonl here; run `dstray experiment table1|fig6|samples` from "
                                "the repo's root first, or give --results DIR")
    return [write_results_report(d) for d in folders]
