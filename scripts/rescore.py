"""Score finished `train-seg --seeds` runs again after the evaluation protocol changed (issue 23: inference now
mirror-pads every side, dstray.seg.evaluate.INFERENCE_PAD): the selected model's threshold and image decision
are chosen again on its eval split, as the training loop does, stored in `model.pt`, then `val/` and `test/`
are scored (dstray.seg.train.finish) and `seeds.json` is rewritten with the same seeds and seconds.

Exact for runs with one evaluation (eval_every = steps: the cpu preset): the weights do not depend on the
protocol, only the threshold and image decision chosen on val do. With several evaluations the selected step
stays the one chosen under the old protocol (the script refuses those runs).

    python scripts/rescore.py RUN [RUN ...]      # RUN: a `train-seg --seeds` output folder (seeds.json, seed-<s>/)
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch

from dstray.data import load_dataset
from dstray.seg.evaluate import evaluate, strict_json
from dstray.seg.seeds import format_table, summarise
from dstray.seg.train import CHECKPOINT, finish, load_segmenter, read_history
from dstray.storage import save_torch


def reselect(folder: Path) -> None:
    rows = read_history(folder / "history.jsonl")
    if len(rows) != 1:
        raise SystemExit(f"{folder}: {len(rows)} evaluations; only one-evaluation runs can be scored again exactly")
    model, cfg, _ = load_segmenter(folder / CHECKPOINT)
    result = evaluate(model, load_dataset(cfg.data).split(cfg.eval_split), threshold=None)
    ckpt = torch.load(folder / CHECKPOINT, map_location="cpu", weights_only=True)
    ckpt["threshold"] = float(result["threshold"])
    ckpt["image_rule"] = json.dumps(strict_json({"score": result["image"]["score"],
                                                 "threshold": result["image"]["threshold"]}))
    ckpt["val"] = json.dumps(strict_json({"pixel": result["pixel"], "macro": result.get("macro"),
                                          "image": result["image"]}))
    save_torch(ckpt, folder / CHECKPOINT)


def main(runs: list[str]) -> None:
    torch.set_num_threads(1)
    for run in map(Path, runs):
        summary = json.loads((run / "seeds.json").read_text())
        results = {}
        for seed in summary["seeds"]:
            folder = run / f"seed-{seed}"
            reselect(folder)
            results[seed] = {**finish(folder),
                             "seconds": summary["test"]["per_seed"][str(seed)].get("seconds", float("nan"))}
        summary["test"], summary["val"] = summarise(results, "test"), summarise(results, "val")
        summary["table"] = format_table(summary["test"])
        summary["rescored"] = "scored again with the inference of issue 23 (mirror padding on every side)"
        (run / "seeds.json").write_text(json.dumps(strict_json(summary), indent=2, allow_nan=False) + "\n")
        print(run, "\n", summary["table"], flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
