"""``dstray`` command line: one subcommand per job, one module per group.

- :mod:`.data`: ``inspect``;
- :mod:`.dst`: ``fit-dst``, ``stylize``, ``generate`` (the paper's first half);
- :mod:`.seg`: ``train-seg``, ``evaluate``, ``tune`` (the second half);
- :mod:`.run`: ``pipeline``, ``experiment``, ``report``;
- :mod:`.args`: config <-> argparse and the flags the groups share.

Commands import the Ray layer only when they run, so ``dstray --help`` and ``dstray inspect``
do not import ray.
"""

from __future__ import annotations

import argparse
import logging
import sys

from dstray.cli import data, dst, run, seg


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="dstray", description=__doc__.splitlines()[0])
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = p.add_subparsers(dest="command", required=True)
    for group in (data, dst, seg, run):
        group.register(sub)
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
