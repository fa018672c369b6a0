"""``dstray inspect``: what a dataset holds, every problem and every warning in it."""

from __future__ import annotations

from dstray.cli.args import add_layout, add_max_image_pixels


def cmd_inspect(args) -> int:
    from dstray.data import inspect_main

    return inspect_main(args.data, max_image_pixels=args.max_image_pixels)  # layout options: in args.data


def register(sub) -> None:
    s = sub.add_parser("inspect", help="count samples per type and split, and list every problem in a dataset",
                       description="List every problem (exit 1) and warning (exit code unchanged) of a dataset: the "
                       "same check fit-dst and generate run before they start (see README, 'Bad input').")
    s.add_argument("data", nargs="?", default=None, help="dataset folder or manifest CSV (default: embedded sample)")
    add_max_image_pixels(s)
    add_layout(s)
    s.set_defaults(func=cmd_inspect)
