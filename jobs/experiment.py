"""Ray job entrypoint: `ray job submit --working-dir . -- python jobs/experiment.py table1|fig6|samples|report [options]`.

Same options as `dstray experiment` (run it with --help).
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the uploaded working dir's dstray first

from dstray.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main(["experiment", *sys.argv[1:]]))
