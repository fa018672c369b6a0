"""Ray job entrypoint for the paper's experiments on a real dataset.

    ray job submit --working-dir . -- python jobs/experiment.py table1 --data PATH --preset cpu --out runs/table1
    python jobs/experiment.py fig6 --data ../shared/data/magnetic-tile --preset cpu --out runs/exp

table1: generators x segmenters, pixel F1 on the real test split (paper Table 1).
fig6:   Buttonlab vs real train samples added, without/with DST samples (paper Fig. 6).
"""

import argparse
import logging
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the uploaded working dir's dstray first

from dstray.distributed import experiments  # noqa: E402


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("experiment", choices=["table1", "fig6"])
    p.add_argument("--data", default=None, help="dataset (default: the embedded sample)")
    p.add_argument("--out", default="runs/experiments", help="run folder shared by both experiments")
    p.add_argument("--preset", default="cpu", choices=["smoke", "cpu", "paper"])
    p.add_argument("--use-gpu", default="auto", choices=["auto", "true", "false"])
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--address", default=None)
    a = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s", datefmt="%H:%M:%S")
    run = getattr(experiments, a.experiment)
    run(data=a.data, out=a.out, preset=a.preset, use_gpu=a.use_gpu, seed=a.seed, address=a.address)
    return 0


if __name__ == "__main__":
    sys.exit(main())
