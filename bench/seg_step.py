"""Seconds per segmentation training step and per ``val`` evaluation, for speed variants side by side.

Each variant is a set of SegConfig overrides on one base config (default: the ``cpu`` preset,
Buttonlab, trained on ``reference,train``); all run in this one process, one after the other, on
the same data, and each is printed as a ratio to the first (``today``: the pre-issue-15 cpu
preset, full fine-tuning). Per variant: wall and CPU seconds per optimiser step (after
``--warmup`` steps), seconds to evaluate the whole ``val`` split at native resolution (with
``--eval``), and the run time they imply for ``--steps-per-run`` steps with an evaluation every
``--eval-every``. The load average before and after says how busy the machine was.

    python bench/seg_step.py --data ../shared/data/magnetic-tile --threads 1 \\
        --variants today,freeze=3,freeze=5,freeze=-1,channels_last,freeze=-1+channels_last,compile

Variant syntax: ``name`` or ``key=value`` joined by ``+``; ``today`` = the pre-issue-15 preset, ``default`` = the
cpu preset as it is now (frozen stem + 4 blocks, output stride 32, channels_last, EMA),
``freeze=N`` = ``freeze_stages=N``, ``channels_last``, ``compile`` (``torch.compile`` of the
network, compile time excluded; warm-up steps include it), ``ema=D``, any other SegConfig field
as ``field=value``. Threads: on a shared machine two OpenMP threads can be slower than one;
``--threads 1`` gives what one quiet core takes.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import time
from dataclasses import replace

import torch

from dstray.config import SegConfig, parse_value
from dstray.data import load_dataset
from dstray.presets import seg_preset
from dstray.seg.data import SegSource
from dstray.seg.evaluate import evaluate
from dstray.seg.train import SegTrainer, check_inputs

TODAY = {"freeze_stages": 0, "output_stride": 16, "channels_last": False, "ema": 0.0,
         "eval_every": 100}  # the cpu preset before issue 15


def parse_variant(text: str) -> tuple[dict, bool]:
    """``"freeze=-1+channels_last"`` -> ({"freeze_stages": -1, "channels_last": True}, compile?)."""
    fields = {f.name: f for f in dataclasses.fields(SegConfig)}
    over, compile_it = dict(TODAY), False
    if text == "default":  # the cpu preset as it is now
        return {}, False
    for part in filter(None, text.split("+")):
        key, _, value = part.partition("=")
        key = {"freeze": "freeze_stages"}.get(key, key)
        if key == "today":
            continue
        if key == "compile":
            compile_it = True
            continue
        if key not in fields:
            raise SystemExit(f"unknown variant part {part!r}: use today, freeze=N, channels_last, compile or a "
                             f"SegConfig field=value")
        f = fields[key]
        over[key] = True if not value and f.type.startswith("bool") else parse_value(value, str(f.type), f.default)
    return over, compile_it


def time_variant(base: SegConfig, over: dict, compile_it: bool, args, val) -> dict:
    cfg = check_inputs(replace(base, **over))
    trainer = SegTrainer(cfg, SegSource.from_config(cfg), "cpu")
    if compile_it:
        trainer.model = torch.compile(trainer.model)
    for _ in range(args.warmup):
        trainer.step()
    t0, c0 = time.perf_counter(), time.process_time()
    for _ in range(args.steps):
        trainer.step()
    step, cpu_step = (time.perf_counter() - t0) / args.steps, (time.process_time() - c0) / args.steps
    val_s = math.nan
    if args.eval:
        t0 = time.perf_counter()
        evaluate(trainer.eval_model, val)
        val_s = time.perf_counter() - t0
    return {"s_per_step": step, "cpu_s_per_step": cpu_step, "val_eval_s": val_s}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default=None)
    p.add_argument("--arch", default="buttonlab")
    p.add_argument("--variants", default="today,channels_last,channels_last+freeze=3,channels_last+output_stride=32,"
                   "freeze=-1+channels_last,default")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--steps", type=int, default=8, help="timed steps per variant")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--eval", action="store_true", help="also time one evaluation of the val split per variant")
    p.add_argument("--steps-per-run", type=int, default=None, help="steps of the implied run (default: the preset's)")
    p.add_argument("--eval-every", type=int, default=None)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    load = os.getloadavg()[0]
    base = seg_preset("cpu", arch=args.arch, data=args.data, real_splits=["reference", "train"], device="cpu")
    val = load_dataset(args.data).split(base.eval_split)
    steps = args.steps_per_run or base.steps
    first = None
    for text in args.variants.split(","):
        over, compile_it = parse_variant(text)
        r = time_variant(base, over, compile_it, args, val)
        first = first or r
        every = args.eval_every or over.get("eval_every", base.eval_every)
        evals = math.ceil(steps / every) + 2  # the evaluations on val, then val and test once more (test ~ 2x val)
        run_s = steps * r["s_per_step"] + (evals * r["val_eval_s"] if args.eval else 0)
        print(json.dumps({"variant": text, "arch": args.arch, "threads": args.threads,
                          "s_per_step": round(r["s_per_step"], 3), "cpu_s_per_step": round(r["cpu_s_per_step"], 3),
                          "speedup": round(first["s_per_step"] / r["s_per_step"], 2),
                          "cpu_speedup": round(first["cpu_s_per_step"] / r["cpu_s_per_step"], 2),
                          "val_eval_s": round(r["val_eval_s"], 1),
                          "run_minutes": round(run_s / 60, 1) if args.eval else None,
                          "loadavg": round(os.getloadavg()[0], 2)}), flush=True)
    print(json.dumps({"loadavg_before": round(load, 2), "loadavg_after": round(os.getloadavg()[0], 2),
                      "val_images": len(val)}))


if __name__ == "__main__":
    main()
