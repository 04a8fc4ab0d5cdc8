"""Smoke test of bench/relayscale.py: a real relay process, 50 spliced sessions, an echo on each.

Runs the script itself with small numbers and reads its JSON, so that it stays well under
30 s; the real run is `python bench/relayscale.py` (10,000 sessions).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from .scripts import ROOT, load_bench

SESSIONS = 50


def test_fifty_spliced_sessions_echo_byte_exact(tmp_path: Path) -> None:
    out, raw = tmp_path / "b.md", tmp_path / "relayscale.json"
    out.write_text("# roam benchmarks\n\nkept\n")
    res = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "relayscale.py"), "--sessions", str(SESSIONS),
         "--batch", "20", "--timeout", "30", "--out", str(out), "--json", str(raw)],
        capture_output=True, text=True, timeout=120, check=False)
    assert res.returncode == 0, res.stdout + res.stderr
    got = json.loads(raw.read_text())
    assert got["opened"] == SESSIONS, got["open_failures"]
    assert got["open_failures"] == {}
    assert got["echo_exact"] == SESSIONS
    assert got["relay_status"]["active"] == SESSIONS
    assert got["relay_status"]["spliced"] == SESSIONS
    assert got["relay_rss_after_kib"] >= got["relay_rss_before_kib"] > 0
    assert isinstance(got["kib_per_session"], float)
    # Two sockets per session at least, and at most two pipes more.
    assert 2 <= got["fds_per_session"] <= 6
    assert got["relay_fds_after"] - got["relay_fds_before"] >= 2 * SESSIONS
    assert got["relay_nofile"] > 0
    # Every session closed: the relay let go of every one of them.
    assert got["relay_active_closed"] == 0
    assert got["relay_fds_closed"] <= got["relay_fds_before"] + 32  # kept empty pipes at most
    assert got["open_p50_ms"] is not None
    text = out.read_text()
    assert "kept" in text
    assert text.count("<!-- bench:relayscale:start -->") == 1
    assert "## Ten thousand spliced sessions on one relay" in text
    assert f"| sessions opened | {SESSIONS} of {SESSIONS} in " in text
    assert f"| echo round (byte-exact) | {SESSIONS} of {SESSIONS}, 64 bytes each" in text
    assert f"held **{SESSIONS} of {SESSIONS}** spliced sessions" in text
    assert f"Command: `python bench/relayscale.py --sessions {SESSIONS} " in text


def test_the_relay_log_is_counted_by_kind() -> None:
    bench = load_bench("relayscale")
    log = "\n".join([
        "2026-12-03 10:51:05,333 roam-relay WARNING relay: accept failed: [Errno 24] Too many "
        "open files",
        "2026-12-03 10:51:05,433 roam-relay WARNING relay: accept failed: [Errno 24] Too many "
        "open files",
        "2026-12-03 10:51:06,001 roam-relay INFO relay: refused: cannot reach 127.0.0.1:4000: "
        "Too many open files",
        "2026-12-03 10:51:06,002 roam-relay INFO relay: connection from 127.0.0.1:5000 ended: "
        "[Errno 24] Too many open files",
        "2026-12-03 10:51:06,003 roam-relay INFO relay: abcdefgh (admitted) spliced to x",
    ])
    counts = bench.log_counts(log)
    assert counts == {"accept failed: [Errno N] Too many open files": 2,
                      "refused: cannot reach N:N: Too many open files": 1,
                      "connection ended: [Errno N] Too many open files": 1}
