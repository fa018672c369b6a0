"""The generation core (plan, generators, rows, shards) without Ray."""

import subprocess
import sys


def test_the_generation_core_does_not_import_ray():
    code = "import sys, dstray.dst.synth; assert 'ray' not in sys.modules, sorted(m for m in sys.modules if 'ray' in m)"
    subprocess.run([sys.executable, "-c", code], check=True)
