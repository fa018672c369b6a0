"""``dstray export``: a generated Parquet dataset as PNG files (a plain folder or the MVTec AD layout)."""

from __future__ import annotations

import json


def cmd_export(args) -> int:
    from dstray.export import export

    counts = export(args.generated, args.out, format=args.format, category=args.category,
                    backgrounds=not args.no_backgrounds)
    print(json.dumps(counts, indent=2))
    return 0


def register(sub) -> None:
    s = sub.add_parser("export", help="write a generated dataset as PNG images, masks and class masks",
                       description="One image, mask (0/255) and class mask (0 = background, k = line k of "
                       "classes.txt) per generated row, with a manifest.csv: in a plain folder, or in the MVTec AD "
                       "layout anomalib reads (test/<type>/NNN.png, ground_truth/<type>/NNN_mask.png; train/good/ "
                       "the run's backgrounds).")
    s.add_argument("generated", help="output folder of `dstray generate` (or its data/ folder)")
    s.add_argument("--format", choices=("folder", "mvtec"), default="folder")
    s.add_argument("--out", required=True, help="new (or empty) folder to write")
    s.add_argument("--category", default="generated", help="mvtec: the category folder's name (default: generated)")
    s.add_argument("--no-backgrounds", action="store_true", help="mvtec: leave train/good/ out")
    s.set_defaults(func=cmd_export)
