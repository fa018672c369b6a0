"""The paper's first half on the command line: ``fit-dst``, ``stylize``, ``generate``, ``score``."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

from dstray.cli.args import add_config_args, add_data, add_layout, add_max_image_pixels, add_ray, build_config
from dstray.config import PATCH_SIZE, DSTConfig, GenerateConfig
from dstray.presets import DST_PRESETS, dst_preset


def cmd_fit_dst(args) -> int:
    cfg = build_config(DSTConfig, args, base=dst_preset(args.preset))
    if args.all or args.types:
        if cfg.defect_type is not None:
            raise ValueError("--defect-type fits one type in this process; --all / --types fit several with Ray "
                             "Train: give one or the other")
        from dstray.distributed.fit import fit_all, format_table, saved

        types = args.types.split(",") if args.types else None
        args.saved = lambda: saved(args.out, data=args.data, types=types, steps=cfg.steps,
                                   storage_path=args.storage_path)
        outcomes = fit_all(cfg, data=args.data, out=args.out, types=types,
                           storage_path=args.storage_path, use_gpu=args.use_gpu, max_failures=args.max_failures,
                           cpus_per_worker=args.cpus_per_worker, address=args.address,
                           max_image_pixels=args.max_image_pixels)
        print(format_table(outcomes))
        return 1 if any(o.status == "failed" for o in outcomes) else 0
    from dstray.data import load_dataset, preflight
    from dstray.dst.fit import fit_dst, resolve_defect_type

    dataset = load_dataset(args.data)
    cfg = dataclasses.replace(cfg, defect_type=resolve_defect_type(dataset, cfg.defect_type))  # None: the only type
    found = preflight(dataset, job="fit-dst", types=[cfg.defect_type], reference_id=cfg.reference_id,
                      max_image_pixels=args.max_image_pixels, area=cfg.area)
    out = Path(args.out)
    made = [d for d in (out, out / cfg.defect_type) if not d.exists()]
    try:  # the layout of --all and of `generate --models`: OUT/<type>/model.pt
        path = fit_dst(cfg, dataset.without(found.skip), out / cfg.defect_type)
    except BaseException:
        for d in reversed(made):  # leave no empty output folder behind
            if d.is_dir() and not any(d.iterdir()):
                d.rmdir()
        raise
    print(f"wrote {path}")
    return 0


def cmd_stylize(args) -> int:
    from dstray.dst.stylize import stylize_file

    written = stylize_file(args.model, args.image, args.out, mask=args.mask, seed=args.seed, mode=args.mode,
                           patch_size=args.patch_size)
    for p in written:
        print(f"wrote {p}")
    return 0


def cmd_generate(args) -> int:
    from dstray.distributed.generate import generate, saved

    cfg = build_config(GenerateConfig, args)
    args.saved = lambda: saved(cfg, shard_size=args.shard_size)
    summary = generate(cfg, shard_size=args.shard_size, address=args.address)
    print(json.dumps(summary, indent=2))
    return 0


def cmd_score(args) -> int:
    from pathlib import Path

    from dstray.dst.realism import format_score, score_generated, write_score

    generated = {}
    for item in args.generated:
        name, sep, location = item.partition("=")
        if not sep:  # a plain location: named after its folder
            name, location = Path(item.rstrip("/")).name, item
        generated[name] = location
    result = score_generated(generated, data=args.data, split=args.split, repeats=args.repeats, seed=args.seed)
    print(format_score(result))
    out = args.out or (next(iter(generated.values())) if len(generated) == 1 else None)
    if out:
        for p in write_score(result, out, name=f"realism-{args.split}").values():
            print(f"wrote {p}")
    return 0


def register(sub) -> None:
    s = sub.add_parser("fit-dst", help="fit the DST model of one defect type (or all of them on Ray)",
                       description="Fit one defect type in this process (--defect-type; may be left out when the "
                       "dataset has one type), or several concurrently with Ray Train (--all / --types).")
    add_data(s)
    s.add_argument("--out", required=True, help="models folder: OUT/<type>/model.pt (one type or --all), what "
                   "`generate --models OUT` reads")
    s.add_argument("--preset", default="cpu", choices=DST_PRESETS,
                   help="size preset the options start from: smoke (seconds), demo (60 steps, the pipeline's "
                   "first run), cpu (the DSTConfig defaults), paper (whole images, GPUs) (default: cpu)")
    s.add_argument("--all", action="store_true", help="fit every defect type concurrently with Ray Train")
    s.add_argument("--types", default=None, help="comma-separated types to fit with Ray Train (default with --all: all)")
    add_ray(s, storage=True, workers=True, max_failures=2,
            restarts="worker restarts (from the last checkpoint) per type")
    add_max_image_pixels(s)
    add_layout(s)
    add_config_args(s, DSTConfig)
    s.set_defaults(func=cmd_fit_dst)

    s = sub.add_parser("stylize", help="generate one defect on one background with a fitted DST model")
    s.add_argument("--model", required=True, help="DST checkpoint (model.pt)")
    s.add_argument("--image", required=True, help="defect-free image S")
    s.add_argument("--mask", default=None, help="area L to fill (default: sampled from the type's reference masks "
                   "with --seed, as generation samples the row whose seed column is that value)")
    s.add_argument("--out", required=True, help="output folder")
    s.add_argument("--seed", type=int, default=0, help="per-sample seed of L (a generated row's `seed` column)")
    s.add_argument("--mode", choices=["patch", "whole"], default="whole")
    s.add_argument("--patch-size", type=int, default=PATCH_SIZE)
    s.set_defaults(func=cmd_stylize)

    s = sub.add_parser("generate", help="generate a labelled Parquet dataset with Ray Data")
    s.add_argument("--shard-size", type=int, default=32, help="samples per output file (the unit of retry/resume)")
    add_ray(s, use_gpu=False)  # --use-gpu is GenerateConfig.use_gpu
    add_layout(s)
    add_config_args(s, GenerateConfig)
    s.set_defaults(func=cmd_generate)

    s = sub.add_parser("score", help="realism of generated defects: KID and C2ST against real defects, per type",
                       description="Crops around each label (1.5x its bounding box, at least 48 px, resized to 96), "
                       "ImageNet EfficientNet-Lite0 features, per defect type: KID (0 = alike) and C2ST "
                       "(classifier accuracy, 0.5 = indistinguishable) against the real defects of --split, beside "
                       "the same scores between two halves of the real defects (the floor).")
    s.add_argument("--generated", action="append", required=True, metavar="[NAME=]DIR",
                   help="output folder of `dstray generate` (repeat to compare generators side by side)")
    add_data(s)
    s.add_argument("--split", default="test", help="real split to compare with (choose settings on val, "
                   "report on test)")
    s.add_argument("--repeats", type=int, default=10, help="C2ST subsamplings and floor halvings averaged")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--out", default=None, help="folder for realism-<split>.{json,md} (default: the generated "
                   "folder when there is one)")
    s.set_defaults(func=cmd_score)
