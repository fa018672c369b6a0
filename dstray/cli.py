"""``dstray`` command line: one subcommand per job.

Options of each job are generated from its config dataclass (``--steps`` sets
``DSTConfig.steps``; ``--area-max-rotation`` sets ``DSTConfig.area.max_rotation``), so the
CLI, the ``jobs/*.py`` entrypoints and the Python API share one definition.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import sys
from typing import Any

from dstray.config import AreaConfig, DSTConfig, GenerateConfig, parse_value

log = logging.getLogger("dstray")


# --------------------------------------------------------------------------- config <-> argparse
def _parse_value(text: str, annotation: str, default: Any):
    try:
        return parse_value(text, annotation, default)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from exc


def _field_comments(cls: type) -> dict[str, str]:
    """The ``# comment`` after each field of a config dataclass: the CLI help text."""
    import inspect
    import re

    comments = {}
    for line in inspect.getsource(cls).splitlines():
        m = re.match(r"\s+(\w+):[^#]*#\s*(.+)$", line)
        if m:
            comments[m.group(1)] = m.group(2).replace("%", "%%")
    return comments


def add_config_args(parser: argparse.ArgumentParser, cls: type, *, prefix: str = "", skip: tuple[str, ...] = ()) -> None:
    """Add ``--field`` options for every field of the dataclass ``cls`` (absent unless given: keep config's)."""
    comments = _field_comments(cls)
    for f in dataclasses.fields(cls):
        if f.name in skip:
            continue
        if f.name == "area":
            add_config_args(parser, AreaConfig, prefix="area-")
            continue
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[misc]
        annotation = str(f.type)
        flag = "--" + prefix + f.name.replace("_", "-")
        parser.add_argument(flag, dest=(prefix + f.name).replace("-", "_"), default=argparse.SUPPRESS,
                            metavar=f.name.upper(),
                            type=lambda s, a=annotation, d=default: _parse_value(s, a, d),
                            help=f"{comments.get(f.name, '')} (default: {default})".strip())


def build_config(cls: type, args: argparse.Namespace, base: Any | None = None, **fixed):
    """A config from ``base`` (or defaults), then CLI values that were given, then ``fixed``."""
    cfg = base if base is not None else cls()
    changes = {}
    for f in dataclasses.fields(cls):
        if f.name == "area":
            area = cfg.area
            for af in dataclasses.fields(AreaConfig):
                if hasattr(args, f"area_{af.name}"):
                    area = dataclasses.replace(area, **{af.name: getattr(args, f"area_{af.name}")})
            changes["area"] = area
        elif hasattr(args, f.name):  # given on the command line (``none`` gives None)
            changes[f.name] = getattr(args, f.name)
    changes.update({k: v for k, v in fixed.items() if v is not None})
    return dataclasses.replace(cfg, **changes)


# --------------------------------------------------------------------------- subcommands
def cmd_inspect(args) -> int:
    from dstray.data import inspect_main

    return inspect_main(args.data)


def cmd_fit_dst(args) -> int:
    cfg = build_config(DSTConfig, args)
    if args.all or args.types:
        from dstray.distributed.fit import fit_all, format_table

        outcomes = fit_all(cfg, data=args.data, out=args.out, types=args.types.split(",") if args.types else None,
                           storage_path=args.storage_path, use_gpu=args.use_gpu, max_failures=args.max_failures,
                           cpus_per_worker=args.cpus_per_worker, address=args.address)
        print(format_table(outcomes))
        return 1 if any(o.status == "failed" for o in outcomes) else 0
    from dstray.data import load_dataset
    from dstray.dst.fit import fit_dst

    path = fit_dst(cfg, load_dataset(args.data), args.out)
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
    from dstray.distributed.generate import generate

    cfg = build_config(GenerateConfig, args)
    summary = generate(cfg, shard_size=args.shard_size, address=args.address)
    print(json.dumps(summary, indent=2))
    return 0


def cmd_pipeline(args) -> int:
    from dstray.distributed.pipeline import run_pipeline
    from dstray.presets import pipeline_preset

    cfg = pipeline_preset(args.preset)
    overrides = {k: getattr(args, k) for k in ("data", "out", "generator", "num_samples", "use_gpu")
                 if getattr(args, k) is not None}
    cfg = dataclasses.replace(cfg, **overrides)
    if args.dst_steps is not None:
        cfg = dataclasses.replace(cfg, dst=dataclasses.replace(cfg.dst, steps=args.dst_steps))
    if args.seg_steps is not None:
        cfg = dataclasses.replace(cfg, seg=dataclasses.replace(cfg.seg, steps=args.seg_steps))
    run_pipeline(cfg, address=args.address)
    return 0


# --------------------------------------------------------------------------- parser
def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="dstray", description=__doc__.splitlines()[0])
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = p.add_subparsers(dest="command", required=True)

    s = sub.add_parser("inspect", help="count samples per type and split, and list every problem in a dataset")
    s.add_argument("data", nargs="?", default=None, help="dataset folder or manifest CSV (default: embedded sample)")
    s.set_defaults(func=cmd_inspect)

    s = sub.add_parser("fit-dst", help="fit the DST model of one defect type (or all of them on Ray)")
    s.add_argument("--data", default=None, help="dataset folder or manifest CSV (default: embedded sample)")
    s.add_argument("--out", required=True, help="output folder (one type: model.pt here; --all: <type>/model.pt)")
    s.add_argument("--all", action="store_true", help="fit every defect type concurrently with Ray Train")
    s.add_argument("--types", default=None, help="comma-separated types to fit with Ray Train (default with --all: all)")
    s.add_argument("--storage-path", default=None, help="Ray Train checkpoint storage (folder or s3://...); default OUT/_ray")
    s.add_argument("--use-gpu", default="auto", choices=["auto", "true", "false"])
    s.add_argument("--cpus-per-worker", type=float, default=1.0, help="CPUs reserved per Train worker")
    s.add_argument("--max-failures", type=int, default=2, help="worker restarts (from the last checkpoint) per type")
    s.add_argument("--address", default=None, help="Ray address (default: RAY_ADDRESS or a local runtime)")
    add_config_args(s, DSTConfig)
    s.set_defaults(func=cmd_fit_dst)

    s = sub.add_parser("stylize", help="generate one defect on one background with a fitted DST model")
    s.add_argument("--model", required=True, help="DST checkpoint (model.pt)")
    s.add_argument("--image", required=True, help="defect-free image S")
    s.add_argument("--mask", default=None, help="area L to fill (default: sampled from the reference mask)")
    s.add_argument("--out", required=True, help="output folder")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--mode", choices=["patch", "whole"], default="whole")
    s.add_argument("--patch-size", type=int, default=96)
    s.set_defaults(func=cmd_stylize)

    s = sub.add_parser("generate", help="generate a labelled Parquet dataset with Ray Data")
    s.add_argument("--shard-size", type=int, default=32, help="samples per output file (the unit of retry/resume)")
    s.add_argument("--address", default=None, help="Ray address (default: RAY_ADDRESS or a local runtime)")
    add_config_args(s, GenerateConfig)
    s.set_defaults(func=cmd_generate)

    s = sub.add_parser("pipeline", help="fit DST for every type -> generate -> train -> evaluate -> report")
    s.add_argument("--preset", default="cpu", choices=["smoke", "cpu", "paper"],
                   help="stage sizes: smoke (seconds), cpu (the sample on a laptop, ~10 min), paper (GPU cluster)")
    s.add_argument("--data", default=None, help="dataset folder or manifest CSV (default: embedded sample)")
    s.add_argument("--out", default="runs/pipeline", help="run folder; re-running reuses finished stages")
    s.add_argument("--generator", default=None, choices=["dst", "histmatch", "copy"])
    s.add_argument("--num-samples", type=int, default=None, help="generated samples (preset's by default)")
    s.add_argument("--dst-steps", type=int, default=None, help="DST steps per type (preset's by default)")
    s.add_argument("--seg-steps", type=int, default=None, help="segmenter steps (preset's by default)")
    s.add_argument("--use-gpu", default=None, choices=["auto", "true", "false"])
    s.add_argument("--address", default=None, help="Ray address (default: RAY_ADDRESS or a local runtime)")
    s.set_defaults(func=cmd_pipeline)

    from dstray import cli_seg  # train-seg, evaluate, tune

    cli_seg.register(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(message)s", datefmt="%H:%M:%S")
    try:
        return args.func(args)
    except (ValueError, FileNotFoundError, RuntimeError) as exc:
        print(f"dstray {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
