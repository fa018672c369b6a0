"""Whole runs on the command line: ``pipeline``, ``experiment table1|fig6|samples|report``, ``report RUN``."""

from __future__ import annotations

import dataclasses

import argparse

from dstray.cli.args import add_data, add_ray
from dstray.config import AREA_FAMILIES, GENERATORS
from dstray.presets import PIPELINE_PRESETS, PRESETS


def _contrast(text: str) -> list[float]:
    """``--contrast LO,HI`` as two floats (their range is checked by the generation's own check)."""
    try:
        values = [float(x) for x in text.split(",")]
    except ValueError:
        values = []
    if len(values) != 2:
        raise argparse.ArgumentTypeError(f"expected LO,HI (two numbers, e.g. 0.3,1); got {text!r}")
    return values


def cmd_pipeline(args) -> int:
    from dstray.distributed.pipeline import run_pipeline, saved
    from dstray.presets import pipeline_preset

    cfg = pipeline_preset(args.preset, use_gpu=args.use_gpu, seed=args.seed)
    overrides = {k: getattr(args, k) for k in ("data", "out", "generator", "num_samples")
                 if getattr(args, k) is not None}
    cfg = dataclasses.replace(cfg, **overrides, baseline=not args.no_baseline)
    if args.dst_steps is not None:
        cfg = dataclasses.replace(cfg, dst=dataclasses.replace(cfg.dst, steps=args.dst_steps))
    if args.seg_steps is not None:
        cfg = dataclasses.replace(cfg, seg=dataclasses.replace(cfg.seg, steps=args.seg_steps))
    area = {k: v for k, v in (("family", args.area_family), ("widen", args.area_widen)) if v is not None}
    if area:  # the pools' areas (stage_configs), and the fits' alike so that they see the areas they will fill
        cfg = dataclasses.replace(cfg, dst=dataclasses.replace(cfg.dst, area=dataclasses.replace(cfg.dst.area, **area)),
                                  generate=dataclasses.replace(cfg.generate,
                                                               area=dataclasses.replace(cfg.generate.area, **area)))
    if args.contrast is not None:
        cfg = dataclasses.replace(cfg, generate=dataclasses.replace(cfg.generate, contrast=args.contrast))
    if args.seeds:
        from dstray.distributed.seeds import parse_seeds

        cfg = dataclasses.replace(cfg, seeds=parse_seeds(args.seeds))
    args.saved = lambda: saved(cfg.out)
    run_pipeline(cfg, address=args.address)
    return 0


def cmd_experiment(args) -> int:
    if args.experiment == "report":
        from dstray.report.results import write_results_reports

        for path in write_results_reports(args.results, data=args.data):
            print(f"wrote {path}")
        return 0
    from dstray.cells import results_dir
    from dstray.distributed.experiments import run_experiment, saved
    from dstray.distributed.seeds import parse_seeds

    cells = [c for c in args.cells.split(",") if c] if args.cells else None
    args.saved = lambda: saved(args.experiment, data=args.data, out=args.out, results=args.results)
    run_experiment(args.experiment, data=args.data, out=args.out, seeds=parse_seeds(args.seeds), preset=args.preset,
                   results=args.results, cells=cells, use_gpu=args.use_gpu, address=args.address)
    print(f"results: {results_dir(args.data, args.results) / (args.experiment + '.jsonl')}; "
          f"`dstray experiment report` writes its README.md")
    return 0


def cmd_report(args) -> int:
    import json
    from pathlib import Path

    from dstray.report import write_report
    from dstray.seeds import stage_seeds

    if args.seed is not None:  # another run seed: its report stage's seed
        seed = stage_seeds(args.seed)["report"]
    else:  # the report stage's seed the pipeline stored (pipeline.json "seeds"), as it drew its report
        saved = Path(args.run, "pipeline.json")
        info = json.loads(saved.read_text()) if saved.exists() else {}
        seed = (info.get("seeds") or stage_seeds((info.get("config") or {}).get("seed", 0)))["report"]  # (or older)
    print(f"wrote {write_report(args.run, out_dir=args.out, seed=seed)}")
    return 0


def register(sub) -> None:
    s = sub.add_parser("pipeline", help="fit DST for every type -> generate -> train -> evaluate -> report")
    s.add_argument("--preset", default="demo", choices=PIPELINE_PRESETS,
                   help="stage sizes: smoke (seconds, for tests), demo (the first run: the sample in under 10 min "
                   "on 2 cores), cpu (every stage at its cpu size: the DSTConfig and SegConfig defaults), "
                   "paper (GPU cluster)")
    add_data(s)
    s.add_argument("--out", default="runs/pipeline", help="run folder; re-running reuses finished stages")
    s.add_argument("--generator", default=None, choices=("policy", *GENERATORS),
                   help="policy (default): the chosen data policy and a pool of each generator it draws from; or one "
                        "generator's pool under the segmenter config's own policy")
    s.add_argument("--num-samples", type=int, default=None, help="generated samples (preset's by default)")
    s.add_argument("--dst-steps", type=int, default=None, help="DST steps per type (preset's by default)")
    s.add_argument("--seg-steps", type=int, default=None, help="segmenter steps (preset's by default)")
    s.add_argument("--seed", type=int, default=0, help="the run's seed: every stage's seed (DST fits, generation, "
                   "segmenter, report) is derived from it")
    s.add_argument("--area-family", default=None, choices=AREA_FAMILIES,
                   help="where the target areas L of the DST fits and the generation come from: reference (the "
                   "reference masks warped), procedural (shapes in the ranges measured on them, widened) or mix (half "
                   "and half; the pools' default, the fits' is reference); docs/areas.md")
    s.add_argument("--area-widen", default=None, type=float, metavar="W",
                   help="procedural areas: sizes and elongations in [ref / W, ref x W] (default: 2)")
    s.add_argument("--contrast", default=None, type=_contrast, metavar="LO,HI",
                   help="generation: inside L c x generated + (1 - c) x background, c uniform in [LO, HI] per sample "
                   "(faint defects, still labelled); default: c = 1")
    s.add_argument("--no-baseline", action="store_true",
                   help="skip the second segmenter run (same config on the real splits alone, no generated samples)")
    add_ray(s)
    s.add_argument("--seeds", default=None, metavar="S,S,...",
                   help="train each segmenter once per seed (e.g. 0,1,2), as parallel Ray tasks, and print mean, std "
                        "and every seed of both; seed k trains with the segmenter seed of `pipeline --seed k` (DST "
                        "fits and generation run once, seeded by --seed)")
    s.set_defaults(func=cmd_pipeline)

    s = sub.add_parser("experiment", help="the paper's Table 1, Figure 6 and a samples sweep, cell by cell on Ray; "
                       "their report", description="table1: {buttonlab, deeplabv3plus, unet} x {references only, "
                       "+ copy, + histmatch, + dst, + the data policy}. fig6: Buttonlab with k real train images added "
                       "to the references, without (B) and with (C) generated samples. samples: Buttonlab with the "
                       "policy's pools at each size. A cell (arch x data x seed) is one segmenter run; finished cells "
                       "are one line each in RESULTS/<experiment>.jsonl and are not run again. report: "
                       "RESULTS/README.md with tables and plots from those files (docs/experiments.md).")
    s.add_argument("experiment", choices=["table1", "fig6", "samples", "report"])
    add_data(s)
    s.add_argument("--out", default="runs/experiments",
                   help="run folder (DST models, generated pools, cell checkpoints) shared by the experiments")
    s.add_argument("--results", default=None, help="results folder (default: results/<dataset folder name>, "
                   "results/sample for the embedded sample; report: every results/* folder)")
    s.add_argument("--seeds", default="0,1,2", help="run seeds of the cells (e.g. 0,1,2 or 0-4; default 0,1,2): a "
                   "cell of seed s seeds its DST fits, generation and segmenter as `pipeline --seed s` does")
    s.add_argument("--preset", default="cpu", choices=PRESETS)
    s.add_argument("--cells", default=None, help="run only the cells whose name matches one of these comma-separated "
                   "patterns (e.g. 'buttonlab-*', '*-s0'; names: docs/experiments.md)")
    add_ray(s)
    s.set_defaults(func=cmd_experiment)

    s = sub.add_parser("report", help="write the HTML report of a pipeline run folder")
    s.add_argument("run", help="the run folder (what `dstray pipeline --out` wrote)")
    s.add_argument("--out", default=None, help="where index.html and its PNGs go (default: RUN/report)")
    s.add_argument("--seed", type=int, default=None, help="the run's seed, which seeds the Figure-3 backgrounds and "
                   "areas and the contact sheet (default: the seed the run was made with, as its pipeline drew it)")
    s.set_defaults(func=cmd_report)
