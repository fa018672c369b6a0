"""Where each segmenter puts its highest defect probability on the clean `val` tiles (distance to the border, px)
and how high it is, against the defect tiles. Measurement, not a product command:

    python scripts/border_maxima.py --data ../shared/data/magnetic-tile RUN/seed-0/model.pt ...
"""

from __future__ import annotations

import argparse

import numpy as np
import torch

from dstray.data import FREE, load_dataset, read_image
from dstray.seg.evaluate import predict
from dstray.seg.train import load_segmenter


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("models", nargs="+", help="model.pt files written by train-seg")
    p.add_argument("--data", required=True)
    args = p.parse_args()
    torch.set_num_threads(2)
    val = load_dataset(args.data).split("val")
    for path in args.models:
        model, _, threshold = load_segmenter(path)
        dist, clean_max, defect_max = [], [], []
        for s in val:
            prob = predict(model, read_image(s.image)).numpy()
            y, x = np.unravel_index(prob.argmax(), prob.shape)
            if s.defect_type == FREE:
                dist.append(min(y, x, prob.shape[0] - 1 - y, prob.shape[1] - 1 - x))
                clean_max.append(prob.max())
            else:
                defect_max.append(prob.max())
        dist = np.array(dist)
        print(f"{path}: threshold {threshold:.2f}; {len(dist)} clean tiles: max at median {np.median(dist):.0f} px "
              f"from a border, {(dist <= 16).mean():.2f} within 16 px, median max {np.median(clean_max):.3f}; "
              f"defect tiles' median max {np.median(defect_max):.3f}", flush=True)


if __name__ == "__main__":
    main()
