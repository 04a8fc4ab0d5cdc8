"""`roam demo` as a user runs it: exits 0 with a byte-exact summary."""

from __future__ import annotations

import re
import subprocess
import sys


def test_demo_survives_its_breaks() -> None:
    proc = subprocess.run([sys.executable, "-m", "roam", "demo", "--duration", "8"],
                          capture_output=True, text=True, timeout=120)
    out = proc.stdout
    assert proc.returncode == 0, out + proc.stderr
    assert "LINK: reset" in out
    assert "LINK: black hole" in out
    assert "byte-exact (sha256)        yes" in out
    sent = re.search(r"bytes sent\s+(\d+)", out)
    echoed = re.search(r"bytes echoed\s+(\d+)", out)
    assert sent is not None
    assert echoed is not None
    assert int(sent.group(1)) == int(echoed.group(1)) > 1_000_000
    transports = re.search(r"transports over the link\s+(\d+)", out)
    assert transports is not None
    assert int(transports.group(1)) >= 3  # the first, one after the reset, one after the hole
