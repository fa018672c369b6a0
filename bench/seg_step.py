"""Time of one segmentation training step and of one evaluation at a SegConfig (default: the cpu preset).

Prints, per arch: seconds per optimiser step (after ``--warmup`` steps), wall and CPU (this
process's user + system time), seconds to evaluate the whole ``val`` split at native resolution,
and the run time they imply for the config (``steps * s/step + evaluations * eval s + val and
test once more at the end``), with the load average of the machine before and after. Other jobs
on the cores inflate the wall times; with ``--threads 1`` the CPU time per step is what one
quiet core would take.

    python bench/seg_step.py --data ../shared/data/magnetic-tile --threads 2 [--arch buttonlab,unet] [--steps 10]

Threads: on a machine shared with other jobs, 2 OpenMP threads can be many times slower than 1
(threads spin at barriers while the other is descheduled); compare ``--threads 1`` and ``2``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import time
from dataclasses import replace

import torch

from dstray.config import SegConfig
from dstray.data import load_dataset
from dstray.seg.data import SegSource
from dstray.seg.evaluate import evaluate
from dstray.seg.train import SegTrainer, check_inputs


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default=None)
    p.add_argument("--arch", default="buttonlab,unet")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--steps", type=int, default=10, help="timed steps")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--no-eval", action="store_true", help="skip the val evaluation timing")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    load = os.getloadavg()[0]
    dataset = load_dataset(args.data)
    for arch in args.arch.split(","):
        cfg = check_inputs(replace(SegConfig(), arch=arch, data=args.data, real_splits=["reference", "train"],
                                   device="cpu"))
        trainer = SegTrainer(cfg, SegSource.from_config(cfg), "cpu")
        for _ in range(args.warmup):
            trainer.step()
        t0, c0 = time.perf_counter(), time.process_time()
        for _ in range(args.steps):
            trainer.step()
        step, cpu_step = (time.perf_counter() - t0) / args.steps, (time.process_time() - c0) / args.steps
        val = dataset.split(cfg.eval_split)
        t0, c0 = time.perf_counter(), time.process_time()
        if not args.no_eval:
            evaluate(trainer.model, val)
        val_s, val_cpu = time.perf_counter() - t0, time.process_time() - c0
        test_share = len(dataset.split(cfg.test_split)) / max(1, len(val))  # test images per val image
        evaluations = math.ceil(cfg.steps / cfg.eval_every)
        # evaluations on val, then finish(): val and test once more
        total = cfg.steps * step + (evaluations + 1 + test_share) * val_s
        cpu_total = cfg.steps * cpu_step + (evaluations + 1 + test_share) * val_cpu
        print(json.dumps({"arch": arch, "backbone": cfg.backbone, "window": cfg.window, "batch": cfg.batch_size,
                          "threads": args.threads, "s_per_step": round(step, 3), "cpu_s_per_step": round(cpu_step, 3),
                          "val_images": len(val), "val_eval_s": round(val_s, 1), "val_eval_cpu_s": round(val_cpu, 1),
                          "run_minutes": round(total / 60, 1), "run_cpu_minutes": round(cpu_total / 60, 1),
                          "loadavg_before": round(load, 2), "loadavg_after": round(os.getloadavg()[0], 2)}),
              flush=True)


if __name__ == "__main__":
    main()
