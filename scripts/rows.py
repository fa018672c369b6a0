"""Several `dstray train-seg --seeds` rows at once, in one Ray runtime, so that both cores stay busy: three
seeds of one row on 2 cores leave a core idle for the third; six seeds of two rows do not.

Each line of ROWS is a `train-seg` command line without `dstray train-seg` (`--out` and `--seeds` required):

    --data D --real-splits reference --free-fraction 0.125 --seeds 0,1,2 --out runs/i23/refs-free

Every (row, seed) is the same in-process run as `train-seg --seeds` makes (`dstray.distributed.seeds._run_seed`,
one thread, seed s raw, in OUT/seed-<s>/), so `train-seg --seeds` with the same options gives the same weights;
each row's OUT/seeds.json is written as it finishes, in train-seg's format. Finished runs are reused.

    python scripts/rows.py ROWS.txt
"""

from __future__ import annotations

import json
import shlex
import sys
import time
from dataclasses import replace
from pathlib import Path

import ray

from dstray.cli import build_parser
from dstray.cli.seg import seg_config
from dstray.config import to_dict
from dstray.distributed.runtime import init_ray
from dstray.distributed.seeds import SUMMARY, _run_seed, parse_seeds
from dstray.seg.evaluate import strict_json
from dstray.seg.seeds import format_table, summarise
from dstray.seg.train import check_inputs


def main(path: str) -> None:
    rows, lines = [], [x.strip() for x in Path(path).read_text().splitlines()
                       if x.strip() and not x.lstrip().startswith("#")]
    for line in lines:
        args = build_parser().parse_args(["train-seg", *shlex.split(line)])
        rows.append((args, check_inputs(seg_config(args)), parse_seeds(args.seeds)))
    init_ray(None)
    task = ray.remote(num_cpus=1, max_retries=1)(_run_seed)
    pending, runs = {}, {}
    for i, (args, cfg, seeds) in enumerate(rows):
        runs[i] = {}
        for s in seeds:
            ref = task.remote(to_dict(replace(cfg, seed=s)), str(Path(args.out, f"seed-{s}").resolve()), 1)
            pending[ref] = (i, s)
    print(f"{len(pending)} runs of {len(rows)} rows, one thread each", flush=True)
    t0 = time.perf_counter()
    while pending:
        done, _ = ray.wait(list(pending), num_returns=1)
        i, s = pending.pop(done[0])
        runs[i][s] = ray.get(done[0])
        args, cfg, seeds = rows[i]
        r = runs[i][s]["test"] or runs[i][s]["val"]
        print(f"[{(time.perf_counter() - t0) / 60:.0f} min] {args.out} seed {s}: F1 {r['pixel']['f1']:.4f}, macro "
              f"{r['macro']['f1']:.4f}, AUROC {r['image']['auroc']:.3f} ({runs[i][s]['seconds'] / 60:.1f} min)",
              flush=True)
        if len(runs[i]) == len(seeds):
            summary = {"config": to_dict(replace(cfg, seed=-1)), "seeds": seeds, "threads": 1,
                       "test": summarise(runs[i], "test") if cfg.test_split else None,
                       "val": summarise(runs[i], "val"), "command": "dstray train-seg " + lines[i]}
            summary["table"] = format_table(summary["test"] or summary["val"])
            Path(args.out).mkdir(parents=True, exist_ok=True)
            Path(args.out, SUMMARY).write_text(json.dumps(strict_json(summary), indent=2, allow_nan=False) + "\n")
            print(f"{args.out}:\n{summary['table']}", flush=True)


if __name__ == "__main__":
    main(sys.argv[1])
