"""`roam demo` as a user runs it: handovers shown as they happen, a summary, exit 0."""

from __future__ import annotations

import re
import subprocess
import sys
import time


def test_demo_shows_hard_and_soft_handovers_and_every_byte_back() -> None:
    started = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "roam", "demo", "--hold", "1.5"],
                          capture_output=True, text=True, timeout=120)
    out = proc.stdout
    assert proc.returncode == 0, out + proc.stderr
    assert time.monotonic() - started < 60, out
    assert re.search(r"status page: http://127\.0\.0\.1:\d+/", out), out
    live = r"\d+\.\d s  {} handover {} -> {} \((.+)\): stall \d+ ms"
    assert re.search(live.format("hard", "wifi", "cell"), out), out
    assert re.search(live.format("soft", "cell", "wifi"), out), out
    # The link going down, then the black hole: two hard handovers, with their reasons.
    reasons = re.findall(live.format("hard", "wifi", "cell"), out)
    assert reasons[0] == "wifi is down", out
    assert re.fullmatch(r"transport \d+ silent for \d+\.\d s", reasons[-1]), out
    assert re.search(r"the application's echo stopped for \d+ ms", out), out
    assert "summary" in out
    assert re.search(r"byte-exact\s+yes", out), out
    sent = re.search(r"bytes sent by the application\s+([\d,]+)", out)
    echoed = re.search(r"bytes echoed back to it\s+([\d,]+)", out)
    assert sent is not None
    assert echoed is not None
    assert sent.group(1) == echoed.group(1)
    assert int(sent.group(1).replace(",", "")) > 1_000_000
    assert "FAILED" not in out
