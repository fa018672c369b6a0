"""``dstray inspect``: what a dataset holds and every problem in it."""

from __future__ import annotations


def cmd_inspect(args) -> int:
    from dstray.data import inspect_main

    return inspect_main(args.data)


def register(sub) -> None:
    s = sub.add_parser("inspect", help="count samples per type and split, and list every problem in a dataset")
    s.add_argument("data", nargs="?", default=None, help="dataset folder or manifest CSV (default: embedded sample)")
    s.set_defaults(func=cmd_inspect)
