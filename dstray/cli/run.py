"""Whole runs on the command line: ``pipeline``, ``experiment table1|fig6|samples|report``, ``report RUN``."""

from __future__ import annotations

import dataclasses

from dstray.cli.args import add_data, add_ray
from dstray.config import GENERATORS
from dstray.presets import PIPELINE_PRESETS, PRESETS


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

    seed = args.seed
    if seed is None:  # the run's own seed, as the pipeline drew its report
        saved = Path(args.run, "pipeline.json")
        seed = (json.loads(saved.read_text()).get("config") or {}).get("seed", 0) if saved.exists() else 0
    print(f"wrote {write_report(args.run, out_dir=args.out, seed=stage_seeds(seed)['report'])}")
    return 0


def register(sub) -> None:
    s = sub.add_parser("pipeline", help="fit DST for every type -> generate -> train -> evaluate -> report")
    s.add_argument("--preset", default="demo", choices=PIPELINE_PRESETS,
                   help="stage sizes: smoke (seconds, for tests), demo (the first run: the sample in under 10 min "
                   "on 2 cores), cpu (every stage at its cpu size: the DSTConfig and SegConfig defaults), "
                   "paper (GPU cluster)")
    add_data(s)
    s.add_argument("--out", default="runs/pipeline", help="run folder; re-running reuses finished stages")
    s.add_argument("--generator", default=None, choices=GENERATORS)
    s.add_argument("--num-samples", type=int, default=None, help="generated samples (preset's by default)")
    s.add_argument("--dst-steps", type=int, default=None, help="DST steps per type (preset's by default)")
    s.add_argument("--seg-steps", type=int, default=None, help="segmenter steps (preset's by default)")
    s.add_argument("--seed", type=int, default=0, help="the run's seed: every stage's seed (DST fits, generation, "
                   "segmenter, report) is derived from it")
    s.add_argument("--no-baseline", action="store_true",
                   help="skip the second segmenter run (same config on the real splits alone, no generated samples)")
    add_ray(s)
    s.add_argument("--seeds", default=None, metavar="S,S,...",
                   help="train each segmenter once per seed (e.g. 0,1,2), as parallel Ray tasks, and print mean, std "
                        "and every seed of both (DST fits and generation run once, seeded by --seed)")
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
    s.add_argument("--seeds", default="0,1,2", help="seeds of every cell: seed the DST fits, the generation and the "
                   "segmenter (e.g. 0,1,2 or 0-4; default 0,1,2)")
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
