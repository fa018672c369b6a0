"""Shared argument helpers of the ``dstray`` command line: config <-> argparse, and the flags
every command group shares, each declared once here.

Options of each job are generated from its config dataclass (``--steps`` sets
``DSTConfig.steps``; ``--area-max-rotation`` sets ``DSTConfig.area.max_rotation``; the help is
the field's comment), so the CLI, the ``jobs/*.py`` entrypoints and the Python API share one
definition. An option is absent unless given, so the config's value is kept (``none`` gives None).
"""

from __future__ import annotations

import argparse
import dataclasses
import inspect
import re
from typing import Any

from dstray.config import AreaConfig, DataPolicy, field_default, parse_value

NESTED = {"area": (AreaConfig, "area-"), "policy": (DataPolicy, "policy-")}  # nested configs: their options' prefix

USE_GPU = ("auto", "true", "false")
DATA_HELP = "dataset folder or manifest CSV (default: the embedded sample)"


# --------------------------------------------------------------------------- config <-> argparse
def _value_type(annotation: str, default: Any):
    """An argparse ``type`` for a config field: :func:`dstray.config.parse_value`, errors as argparse's."""
    def parse(text: str):
        try:
            return parse_value(text, annotation, default)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from exc

    return parse


def _field_comments(cls: type) -> dict[str, str]:
    """The ``# comment`` after each field of a config dataclass: the CLI help text."""
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
        if f.name in NESTED:
            add_config_args(parser, NESTED[f.name][0], prefix=NESTED[f.name][1])
            continue
        default = field_default(cls, f.name)
        flag = "--" + prefix + f.name.replace("_", "-")
        parser.add_argument(flag, dest=(prefix + f.name).replace("-", "_"), default=argparse.SUPPRESS,
                            metavar=f.name.upper(), type=_value_type(str(f.type), default),
                            help=f"{comments.get(f.name, '')} (default: {default})".strip())


def build_config(cls: type, args: argparse.Namespace, base: Any | None = None, **fixed):
    """A config from ``base`` (or defaults), then CLI values that were given, then ``fixed``."""
    cfg = base if base is not None else cls()
    changes = {}
    for f in dataclasses.fields(cls):
        if f.name in NESTED:
            sub, prefix = getattr(cfg, f.name), NESTED[f.name][1].replace("-", "_")
            for af in dataclasses.fields(NESTED[f.name][0]):
                if hasattr(args, prefix + af.name):
                    sub = dataclasses.replace(sub, **{af.name: getattr(args, prefix + af.name)})
            changes[f.name] = sub
        elif hasattr(args, f.name):  # given on the command line (``none`` gives None)
            changes[f.name] = getattr(args, f.name)
    changes.update({k: v for k, v in fixed.items() if v is not None})
    return dataclasses.replace(cfg, **changes)


# --------------------------------------------------------------------------- shared flags, declared once
def add_data(parser: argparse.ArgumentParser, help: str = DATA_HELP) -> None:
    parser.add_argument("--data", default=None, help=help)


def add_max_image_pixels(parser: argparse.ArgumentParser) -> None:
    """``--max-image-pixels`` for commands without a config field for it (inspect, fit-dst)."""
    from dstray.config import MAX_IMAGE_PIXELS

    parser.add_argument("--max-image-pixels", default=MAX_IMAGE_PIXELS, metavar="N",
                        type=_value_type("int | None", MAX_IMAGE_PIXELS),
                        help="size limit (width x height) of an image a job decodes: larger backgrounds are skipped "
                        f"by fit-dst, rejected by generate, warned about by inspect; none = no limit "
                        f"(default: {MAX_IMAGE_PIXELS})")


def add_layout(parser: argparse.ArgumentParser) -> None:
    """The MVTec AD layout's options; :func:`apply_layout` puts them on ``--data`` (``PATH?references-per-type=K``),
    so every job and Ray worker that lists the dataset picks the same references."""
    parser.add_argument("--references-per-type", type=int, default=None, metavar="K",
                        help="MVTec AD layout: K images of each test/<defect> become references, the rest test "
                        "(default: 1)")
    parser.add_argument("--reference-order", choices=("draw", "name"), default=None,
                        help="MVTec AD layout: the K references are a seeded draw (default) or the first by file name")


def apply_layout(args: argparse.Namespace) -> None:
    """Fold ``--references-per-type`` / ``--reference-order`` into ``args.data`` (see :func:`add_layout`)."""
    k, order = getattr(args, "references_per_type", None), getattr(args, "reference_order", None)
    if k is not None or order is not None:
        from dstray.data.dataset import with_spec

        args.data = with_spec(getattr(args, "data", None), k, order)


def add_ray(parser: argparse.ArgumentParser, *, use_gpu: bool = True, storage: bool = False,
            workers: bool = False, max_failures: int | None = None, restarts: str = "") -> None:
    """The Ray options of a command: ``--address`` always; ``--use-gpu``; ``--storage-path``;
    ``--cpus-per-worker``; ``--max-failures`` (default ``max_failures``; ``restarts`` says what restarts)."""
    parser.add_argument("--address", default=None, help="Ray address (default: RAY_ADDRESS, else a new local runtime; auto: the `ray start` cluster of this machine)")
    if use_gpu:
        parser.add_argument("--use-gpu", default="auto", choices=USE_GPU,
                            help="auto: GPUs when the cluster has them (default: auto)")
    if storage:
        parser.add_argument("--storage-path", default=None,
                            help="Ray checkpoint storage (folder or s3://...); default OUT/_ray")
    if workers:
        parser.add_argument("--cpus-per-worker", type=float, default=1.0, help="CPUs reserved per Train worker")
    if max_failures is not None:
        parser.add_argument("--max-failures", type=int, default=max_failures, help=restarts)
