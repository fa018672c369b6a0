"""The paper's second half on the command line: ``train-seg`` (Ray Train), ``evaluate`` (no Ray), ``tune`` (Ray Tune).

SegConfig options are generated from the dataclass (``--lr``, ``--window`` ...). The base
config is the ``--preset`` (default ``cpu``: the SegConfig defaults), or ``--config FILE`` (a
SegConfig JSON, e.g. ``best_config.json`` written by ``dstray tune``); the options given on the
command line override it.

Examples::

    dstray train-seg --data D --real-splits reference,train --out runs/seg     # the cpu preset
    dstray train-seg --data D --synthetic runs/generated --real-splits reference --out runs/seg-dst
    dstray train-seg --config runs/tune/best_config.json --num-workers 2 --out runs/seg-best
    dstray evaluate --model runs/seg/model.pt --split test --out runs/seg/eval-test
    dstray tune --data D --real-splits reference,train --preset smoke --steps 40 --eval-every 10 \\
        --num-samples 8 --out runs/tune
"""

from __future__ import annotations

import argparse
import json
import math

from dstray.cli.args import add_config_args, add_data, add_ray, build_config
from dstray.config import SegConfig, load
from dstray.distributed.space import SPACE_HELP  # light: no torch, no ray
from dstray.presets import PRESETS, seg_preset

TRAIN_HELP = "train a segmenter with Ray Train (data parallel, Ray Data ingestion, resumable)"
EVAL_HELP = ("evaluate a segmenter checkpoint on a real split at its own resolution (pixel P/R/F1/IoU overall, per "
             "type and macro; image-level detection, false alarms, AUROC)")
TUNE_HELP = ("search segmenter hyper-parameters with Ray Tune (ASHA on pixel F1 of the real val split; the best "
             "trial's model is scored once on test)")


def seg_config(args) -> SegConfig:
    """The SegConfig of a command: ``--config FILE`` or ``--preset`` (default cpu), then the options given."""
    base = load(SegConfig, args.config) if args.config else seg_preset(args.preset)
    return build_config(SegConfig, args, base=base)


def _score(r: dict | None) -> str:
    if not r:
        return "not scored"
    px, im = r["pixel"], r["image"]
    return (f"F1 {px['f1']:.4f} (P {px['precision']:.4f}, R {px['recall']:.4f}, IoU {px['iou']:.4f}), macro F1 "
            f"{r['macro']['f1']:.4f}, detection {im['detection_rate']:.3f}, false alarms {im['false_alarm_rate']:.3f}, "
            f"AUROC {im['auroc']:.3f}")


def cmd_train_seeds(args, cfg: SegConfig) -> int:
    from dstray.distributed.seeds import SUMMARY, parse_seeds, saved, train_seeds

    seeds = parse_seeds(args.seeds)
    args.saved = lambda: saved(args.out, seeds, steps=cfg.steps)

    def on_seed(seed: int, r: dict) -> None:
        print(f"  seed {seed}: {r['steps']} steps in {r['seconds'] / 60:.1f} min ({r['threads']} thread(s)); "
              f"{cfg.test_split or cfg.eval_split}: {_score(r['test'] or r['val'])}", flush=True)

    print(f"train-seg: {len(seeds)} seeds ({','.join(map(str, seeds))}) of {cfg.arch}/{cfg.backbone}, {cfg.steps} "
          f"steps, as parallel Ray tasks -> {args.out}/seed-<s>/", flush=True)
    summary = train_seeds(cfg, seeds, out=args.out, threads=args.threads_per_worker, address=args.address,
                          on_seed=on_seed)
    print(summary["table"])
    print(f"wrote {args.out}/{SUMMARY}")
    return 0


def cmd_train_seg(args) -> int:
    from dstray.distributed.train_seg import saved, train_seg

    cfg = seg_config(args)
    if args.seeds:
        return cmd_train_seeds(args, cfg)
    args.saved = lambda: saved(args.out, steps=cfg.steps, storage_path=args.storage_path, name=args.name)
    result = train_seg(cfg, out=args.out, num_workers=args.num_workers,
                       use_gpu=args.use_gpu, cpus_per_worker=args.cpus_per_worker,
                       threads_per_worker=args.threads_per_worker, storage_path=args.storage_path,
                       name=args.name, max_failures=args.max_failures, address=args.address)
    m = result.metrics
    if result.skipped:
        start = "already done: nothing to do"
    else:
        start = f"resumed from step {result.resumed_from}" if result.resumed_from else "from scratch"
    print(f"trained {result.steps} steps ({start}) in {result.seconds:.1f} s; last loss {m.get('loss', math.nan):.4f}")
    threshold = (result.val or {}).get("threshold", math.nan)
    print(f"selected on {cfg.eval_split}: step {m.get('best_step', '?')}, threshold {threshold:.3f}; "
          f"{cfg.eval_split}: {_score(result.val)}")
    if cfg.test_split:
        print(f"{cfg.test_split} (scored once, at that threshold): {_score(result.test)}")
    folders = "/, ".join(k for k, split in (("val", cfg.eval_split), ("test", cfg.test_split)) if split)
    print(f"wrote {result.model}\nwrote {result.history}\nwrote {args.out}/{{{folders}/}}eval.{{json,csv,png}}")
    return 0


def cmd_evaluate(args) -> int:
    from dstray.seg.evaluate import format_eval
    from dstray.seg.train import evaluate_checkpoint

    result, paths = evaluate_checkpoint(args.model, out=args.out, data=args.data, split=args.split,
                                        device=args.device, threshold=args.threshold)
    print(format_eval(result))
    for p in paths.values():
        print(f"wrote {p}")
    return 0


def cmd_tune(args) -> int:
    from dstray.distributed.space import parse_space
    from dstray.distributed.tune_seg import saved, tune_seg

    space = parse_space(args.space, defaults=not args.no_default_space, search=args.search)
    args.saved = lambda: saved(args.out, storage_path=args.storage_path, name=args.name)
    result = tune_seg(seg_config(args), out=args.out, space=space, num_samples=args.num_samples,
                      max_concurrent=args.max_concurrent, grace_period=args.grace_period,
                      reduction_factor=args.reduction_factor, cpus_per_trial=args.cpus_per_trial,
                      gpus_per_trial=args.gpus_per_trial, use_gpu=args.use_gpu, storage_path=args.storage_path,
                      name=args.name, max_failures=args.max_failures, search_seed=args.search_seed,
                      address=args.address)
    print(open(result.table_md).read())
    print(f"best trial {result.best['trial']}: val F1 {result.best['best_f1']:.4f} at step "
          f"{result.best['best_step']}; config {json.dumps({k: result.best[k] for k in result.space})}")
    print(f"its model on test (scored once): {_score(result.test)}")
    for p in (result.table_csv, result.table_md, result.best_config, result.best_model, result.plot):
        print(f"wrote {p}")
    print(f"train it: dstray train-seg --config {result.best_config} --out OUT")
    if args.seeds:  # the best config again over seeds: its mean, spread and every seed on test
        from dstray.distributed.seeds import SUMMARY, parse_seeds, train_seeds

        best = load(SegConfig, result.best_config)
        summary = train_seeds(best, parse_seeds(args.seeds), out=f"{args.out}/best-seeds", address=args.address)
        print(summary["table"])
        print(f"wrote {args.out}/best-seeds/{SUMMARY}")
    return 0


def _run_options(s: argparse.ArgumentParser, *, default_name: str) -> None:
    """What train-seg and tune share: the preset or config file, the output, the run name."""
    s.add_argument("--preset", default="cpu", choices=PRESETS,
                   help="size preset the options start from (default: cpu, the SegConfig defaults)")
    s.add_argument("--config", default=None, help="SegConfig JSON to start from instead of --preset "
                   "(CLI options override it)")
    s.add_argument("--out", required=True, help="output folder")
    s.add_argument("--name", default=default_name,
                   help=f"run name under the storage path; the same name resumes (default: {default_name})")


def register(sub) -> None:
    """Add ``train-seg``, ``evaluate`` and ``tune`` to the ``dstray`` subparsers."""
    s = sub.add_parser("train-seg", help=TRAIN_HELP, description=TRAIN_HELP + ". Evaluates on --eval-split (val) "
                       "every --eval-every steps, choosing the threshold there, and keeps the best model; scores it "
                       "once on --test-split. Writes OUT/model.pt (selected model + threshold), OUT/state.pt, "
                       "OUT/history.jsonl, OUT/val/ and OUT/test/eval.{json,csv,png}. --batch-size is per worker. "
                       "--device is ignored: Ray places the workers (--use-gpu).")
    _run_options(s, default_name="train-seg")
    s.add_argument("--num-workers", type=int, default=1, help="data-parallel Train workers (DDP when > 1)")
    s.add_argument("--threads-per-worker", type=int, default=0,
                   help="torch CPU threads per worker, or per seed with --seeds (default 0: the node's cores shared "
                        "among its workers / seeds)")
    s.add_argument("--seeds", default=None, metavar="S,S,...",
                   help="run the config once per seed (e.g. 0,1,2,3,4 or 0-4) as parallel Ray tasks, each an "
                        "in-process run in OUT/seed-<s>/; writes OUT/seeds.json and prints mean, std and every seed "
                        "(overall, macro, per type, image level). --seed and --num-workers are then ignored")
    add_ray(s, storage=True, workers=True, max_failures=2, restarts="worker-group restarts from the last checkpoint")
    add_config_args(s, SegConfig)
    s.set_defaults(func=cmd_train_seg)

    s = sub.add_parser("evaluate", help=EVAL_HELP, description=EVAL_HELP + " (no Ray).")
    s.add_argument("--model", required=True, help="checkpoint (model.pt of train-seg)")
    add_data(s, help="dataset folder or manifest CSV (default: the model's, else the embedded sample)")
    s.add_argument("--split", default=None, help="real split to evaluate (default: the model's test_split, 'test')")
    s.add_argument("--out", required=True, help="output folder for eval.{json,csv,png}")
    s.add_argument("--threshold", type=float, default=None,
                   help="defect probability threshold (default: the model's, chosen on its val split)")
    s.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:1 ...")
    s.set_defaults(func=cmd_evaluate)

    s = sub.add_parser("tune", help=TUNE_HELP, description=TUNE_HELP + ". Writes OUT/results.{csv,md} "
                       "(one row per trial, the best one's test score), OUT/best_config.json (for train-seg "
                       "--config), OUT/best/ (the best trial's model.pt, val/ and test/eval.*) and "
                       "OUT/f1_per_trial.png. The preset and SegConfig options set the base config of every trial.")
    _run_options(s, default_name="tune-seg")
    add_ray(s, storage=True, max_failures=1, restarts="restarts of a failed trial from its checkpoint")
    s.add_argument("--space", action="append", default=[], metavar="KEY=SPEC", help=SPACE_HELP)
    s.add_argument("--no-default-space", action="store_true", help="search only the --space keys")
    s.add_argument("--search", default="seg", choices=("seg", "data"),
                   help="the default space: seg (the segmenter's knobs) or data (the data policy's: synthetic share, "
                        "generator, real-only last steps, synthetic loss weight, ignore band; give one --synthetic "
                        "dataset per generator, made once and shared by every trial)")
    s.add_argument("--num-samples", type=int, default=8, help="number of trials")
    s.add_argument("--max-concurrent", type=int, default=2, help="trials running at once (0: as resources allow)")
    s.add_argument("--grace-period", type=int, default=1, help="ASHA: evaluations before a trial may be stopped")
    s.add_argument("--reduction-factor", type=float, default=2.0, help="ASHA: keep 1/factor of trials per rung")
    s.add_argument("--cpus-per-trial", type=float, default=1.0)
    s.add_argument("--gpus-per-trial", type=float, default=1.0, help="GPUs per trial when GPUs are used (0.5: two "
                   "trials share one)")
    s.add_argument("--search-seed", type=int, default=0, help="seed of the random search")
    s.add_argument("--seeds", default=None, metavar="S,S,...",
                   help="then train the best config once per seed (parallel Ray tasks) and score each on test: "
                        "OUT/best-seeds/seeds.json, mean, std and every seed")
    add_config_args(s, SegConfig)
    s.set_defaults(func=cmd_tune)
