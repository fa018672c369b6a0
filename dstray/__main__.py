"""``python -m dstray ...``: the ``dstray`` command line."""

import sys

from dstray.cli import main

sys.exit(main())
