"""Daemon setup that is not the CLI's parsing: limits of the process."""

from __future__ import annotations

import subprocess
import sys

from tests.system.harness import ENV

PROBE = """
import resource
from roam.daemons import raise_open_files_limit
soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
resource.setrlimit(resource.RLIMIT_NOFILE, (256, hard))
print(raise_open_files_limit(), resource.getrlimit(resource.RLIMIT_NOFILE)[0], hard)
"""


def test_the_open_files_limit_is_raised_to_the_hard_limit() -> None:
    out = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True,
                         env=ENV, timeout=30, check=True)
    reported, soft, hard = out.stdout.split()
    assert reported == soft
    assert soft == hard or hard == str(-1)
    assert int(soft) > 256
