"""``RESULTS/README.md`` from the experiments' results files (``dstray experiment report``).

Reads ``RESULTS/<experiment>.jsonl`` (one line per finished cell, :mod:`dstray.cells`), keeps
the last line of each cell, and per experiment and preset writes tables of pixel F1 on ``test``
as mean ± standard deviation over the seeds (:func:`dstray.seg.seeds.summarise`: ddof 1) and
every seed's value, and PNG plots with error bars (one std) next to the README, embedded in it:
Table 1 beside the paper's, with which of its claims hold here; Figure 6 (F1 against the real
images added, without and with generated samples); F1 against the generated samples; the
machine's load and each cell's wall time. Pure: matplotlib ``Figure`` (Agg), no pyplot.
"""

from __future__ import annotations

import math
from collections import defaultdict
from pathlib import Path

from dstray.cells import EXPERIMENTS, TABLE1_DATA, read_lines, results_dir
from dstray.report.tables import markdown_table
from dstray.seg.seeds import summarise

# Paper Table 1 (pixel F1, button dataset). The extracted text's rows read "0.8000 0.6599 0.6841 0.4692" under the
# header "Only real, DST, Hist match, cycleGAN"; its prose fixes the first value as DST (Buttonlab + DST "0.80",
# abstract and §5) and DeepLab v3+'s last as only real ("from 0.42 to 0.80 compared to Deeplab v3+ with traditional
# augmentation"), so the values are read as DST, Hist match, cycleGAN, Only real. Which of the two middle columns
# is Hist match and which cycleGAN is not fixed by the text: those cells are marked uncertain.
PAPER_TABLE1 = {"buttonlab": {"refs": 0.4692, "dst": 0.8000, "histmatch": 0.6599, "cyclegan": 0.6841},
                "deeplabv3plus": {"refs": 0.4249, "dst": 0.6390, "histmatch": 0.4752, "cyclegan": 0.5693},
                "unet": {"refs": 0.5903, "dst": 0.6578, "histmatch": 0.1930, "cyclegan": 0.6377}}
PAPER_UNCERTAIN = ("histmatch", "cyclegan")
DATA_NAMES = {"refs": "references only", "copy": "+ copy", "histmatch": "+ histmatch", "dst": "+ DST",
              "policy": "+ policy", "cyclegan": "+ cycleGAN", "B": "without generated (B)", "C": "with generated (C)"}
ARCH_NAMES = {"buttonlab": "Buttonlab", "deeplabv3plus": "DeepLab v3+", "unet": "U-Net"}


def latest(records: list[dict]) -> dict[str, dict[str, dict]]:
    """preset -> cell name -> its last line (a cell run again with other settings supersedes its old line)."""
    out: dict[str, dict[str, dict]] = defaultdict(dict)
    for r in records:
        out[r["preset"]][r["cell"]] = r
    return out


def group_stats(cells: dict[str, dict]) -> dict[str, dict]:
    """group -> ``summarise`` of its seeds on test, plus its first line (arch, data, k, samples)."""
    groups: dict[str, dict[int, dict]] = defaultdict(dict)
    first: dict[str, dict] = {}
    for r in cells.values():
        groups[r["group"]][r["seed"]] = {"test": r["test"], "val": r["val"], "seconds": r["seconds"]}
        first.setdefault(r["group"], r)
    return {g: {**summarise(runs, "test"), "line": first[g]} for g, runs in groups.items()}


def pm(s: dict | None, key: str = "f1") -> str:
    """``mean ± std (n)`` of figure ``key`` of a summary; one seed: ``mean (1 seed)``; none: ``-``."""
    if not s or key not in s["mean"] or math.isnan(s["mean"][key]):
        return "-"
    mean, std, n = s["mean"][key], s["std"][key], s["n"][key]
    return f"{mean:.3f} ({n} seed)" if n == 1 or math.isnan(std) else f"{mean:.3f} ± {std:.3f} ({n})"


def _seeds_table(stats: dict[str, dict], label) -> str:
    """Every group's pixel F1 per seed, with its macro F1, image AUROC and FPR at 95 % detection."""
    seeds = sorted({int(s) for st in stats.values() for s in st["per_seed"]})
    types = sorted({k[3:] for st in stats.values() for k in st["mean"] if k.startswith("f1/")})
    cols = ["cell", "pixel F1", *[f"seed {s}" for s in seeds], "macro F1", "image AUROC", "FPR at 95 %",
            *[f"F1 {t}" for t in types]]
    rows = []
    for g, st in stats.items():
        row = {"cell": label(st["line"]), "pixel F1": pm(st), "macro F1": pm(st, "macro_f1"),
               "image AUROC": pm(st, "auroc"), "FPR at 95 %": pm(st, "fpr_at_95")}
        row.update({f"seed {s}": st["per_seed"].get(str(s), {}).get("f1", "") for s in seeds})
        row.update({f"F1 {t}": pm(st, f"f1/{t}") for t in types})
        rows.append(row)
    return markdown_table(rows, cols, "{:.3f}".format)


def _errorbar_png(path: Path, series: dict[str, list[tuple[float, dict]]], xlabel: str, title: str,
                  log_x: bool = False) -> None:
    """One line per series: mean pixel F1 with ±1 std bars, every seed as a dot."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6, 4), layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    for name, points in series.items():
        points = sorted(points, key=lambda p: p[0])
        xs = [x for x, _ in points]
        means = [s["mean"]["f1"] for _, s in points]
        stds = [0.0 if math.isnan(s["std"]["f1"]) else s["std"]["f1"] for _, s in points]
        line = ax.errorbar(xs, means, yerr=stds, marker="o", capsize=4, label=name)
        for x, s in points:
            ys = [v["f1"] for v in s["per_seed"].values()]
            ax.scatter([x] * len(ys), ys, s=10, alpha=0.4, color=line[0].get_color())
    if log_x:
        ax.set_xscale("log")
    ax.set_xlabel(xlabel)
    ax.set_ylabel("pixel F1 on test (mean ± std, dots: seeds)")
    ax.set_title(title, fontsize=10)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    fig.savefig(path, dpi=110)


def _claims(stats: dict[str, dict]) -> list[str]:
    """Paper Table 1's claims, checked on these means (a difference within the larger std is said so)."""
    def cmp(a: dict, b: dict) -> tuple[bool, str]:
        ma, mb = a["mean"]["f1"], b["mean"]["f1"]
        spread = max((x for x in (a["std"]["f1"], b["std"]["f1"]) if not math.isnan(x)), default=math.nan)
        return ma > mb, f"{ma:.3f} vs {mb:.3f}" + (" (within one std)" if abs(ma - mb) <= spread else "")

    claims = [(f"{what} beats {other}", [(ARCH_NAMES[a], f"{a}-{d}", f"{a}-{o}") for a in ARCH_NAMES])
              for what, d, other, o in (("DST", "dst", "references only", "refs"),
                                        ("DST", "dst", "histmatch", "histmatch"), ("DST", "dst", "copy-paste", "copy"))]
    claims += [(f"Buttonlab beats {ARCH_NAMES[o]} with the same data",
                [(DATA_NAMES[d], f"buttonlab-{d}", f"{o}-{d}") for d in TABLE1_DATA])
               for o in ("deeplabv3plus", "unet")]
    lines = []
    for claim, pairs in claims:
        found = [(where, *cmp(stats[x], stats[y])) for where, x, y in pairs if x in stats and y in stats]
        if found:
            held = sum(h for _, h, _ in found)
            verdict = "holds" if held == len(found) else "does not hold" if not held else "holds in part"
            lines.append(f"- *{claim}*: {verdict} here ({held} of {len(found)}): "
                         + "; ".join(f"{w}: {t}" for w, _, t in found) + ".")
    return lines


def _table1(stats: dict[str, dict], preset: str) -> list[str]:
    archs = [a for a in ARCH_NAMES if any(st["line"]["arch"] == a for st in stats.values())]
    rows = [{"segmenter": ARCH_NAMES[a], **{DATA_NAMES[d]: pm(stats.get(f"{a}-{d}")) for d in TABLE1_DATA}}
            for a in archs]
    paper = [{"segmenter": ARCH_NAMES[a], **{DATA_NAMES[d]: f"{v:.4f}" + (" ?" if d in PAPER_UNCERTAIN else "")
                                             for d, v in PAPER_TABLE1[a].items()}} for a in ARCH_NAMES]
    return [f"### Table 1 (preset `{preset}`): pixel F1 on test, mean ± std (seeds)", "",
            markdown_table(rows, ["segmenter", *[DATA_NAMES[d] for d in TABLE1_DATA]]),
            "The paper's Table 1 (button dataset, 9 references, 2167 generated samples per generator; "
            "`?`: the extracted text garbles the columns, the two middle columns' order is a reading, see "
            "`dstray/report/results.py`):", "",
            markdown_table(paper, ["segmenter", *[DATA_NAMES[d] for d in ("refs", "histmatch", "dst", "cyclegan")]]),
            "The paper's claims, checked on these means:", "", *_claims(stats), ""]


def _sweep(stats: dict, key: str, out: Path, png: str, xlabel: str, title: str, log_x: bool = False) -> list[str]:
    series: dict[str, list] = defaultdict(list)
    for st in stats.values():
        line = st["line"]
        series[DATA_NAMES.get(line["data"], line["data"])].append((line[key], st))
    _errorbar_png(out / png, series, xlabel, title, log_x)
    xs = sorted({x for pts in series.values() for x, _ in pts})
    rows = [{xlabel: x, **{name: pm(next((s for v, s in pts if v == x), None)) for name, pts in series.items()}}
            for x in xs]
    return [markdown_table(rows, [xlabel, *series]), f"![{title}]({png})", ""]


def _machine(cells: dict[str, dict]) -> list[str]:
    rows = []
    for r in sorted(cells.values(), key=lambda r: r.get("finished_at", "")):
        m = r.get("machine", {})
        rows.append({"cell": r["cell"], "minutes": r["seconds"] / 60, "threads": r.get("threads", ""),
                     "resumed": "yes" if r.get("resumed") else "", "load at start": _load(m.get("loadavg_start")),
                     "load at end": _load(m.get("loadavg_end")), "CPUs": m.get("cpus", ""),
                     "GPU": m.get("gpu") or "", "finished (UTC)": r.get("finished_at", "")})
    total = sum(r["seconds"] for r in cells.values()) / 3600
    return [f"{len(cells)} cells, {total:.1f} cell-hours in all (load: 1/5/15-minute averages of the machine; "
            f"OS {next(iter(cells.values())).get('machine', {}).get('os', '?')}).", "",
            markdown_table(rows, list(rows[0]), "{:.1f}".format), ""]


def _load(values) -> str:
    return "/".join(f"{v:.1f}" for v in values) if values else ""


def write_results_report(results: str | Path) -> Path:
    """Write ``results/README.md`` (and its PNGs) from the ``*.jsonl`` files there; returns its path."""
    results = Path(results)
    files = {e: results / f"{e}.jsonl" for e in EXPERIMENTS if (results / f"{e}.jsonl").exists()}
    if not files:
        raise FileNotFoundError(f"{results}: no results file ({', '.join(e + '.jsonl' for e in EXPERIMENTS)}); run "
                                "`dstray experiment table1|fig6|samples --data D` first, or give --results")
    parts = [f"# Experiments on {results.name}", "",
             "Written by `dstray experiment report` from the `*.jsonl` files here (one line per finished cell: "
             "an arch x its training data x a seed); do not edit by hand. Pixel F1 on the real `test` split of "
             "the model selected on `val`, mean ± sample standard deviation over the seeds (their number in "
             "brackets). How they were made: `docs/experiments.md`.", ""]
    machine = []
    for experiment, path in files.items():
        for preset, cells in latest(read_lines(path)).items():
            stats = group_stats(cells)
            tag = f"{experiment}-{preset}"
            label = {"table1": lambda r: f"{ARCH_NAMES[r['arch']]}, {DATA_NAMES[r['data']]}",
                     "fig6": lambda r: f"k = {r['k']}, {DATA_NAMES[r['data']]}",
                     "samples": lambda r: f"{r['samples']} per pool"}[experiment]
            if experiment == "table1":
                parts += _table1(stats, preset)
            elif experiment == "fig6":
                parts += [f"### Figure 6 (preset `{preset}`): Buttonlab, k real train images added to the "
                          "references, without (B) and with (C) the policy's generated samples", ""]
                parts += _sweep(stats, "k", results, f"{tag}.png", "real train images added (k)",
                                "Figure 6: pixel F1 against k")
            else:
                parts += [f"### Generated samples (preset `{preset}`): Buttonlab on the references + the policy's "
                          "pools of n samples per generator", ""]
                parts += _sweep(stats, "samples", results, f"{tag}.png", "generated samples per pool (n)",
                                "pixel F1 against the generated samples", log_x=True)
            parts += [f"<details><summary>{experiment} ({preset}): every seed, macro F1, image level, per type"
                      "</summary>", "", _seeds_table(stats, label), "</details>", ""]
            machine += [f"### {experiment} ({preset})", "", *_machine(cells)]
    parts += ["## Machine load and wall time per cell", "", *machine]
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
