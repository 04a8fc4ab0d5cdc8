"""Smoke tests of the benchmark harness (bench/run.py) with small loads on loopback."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
RUN = ROOT / "bench" / "run.py"
SSHD = Path("/usr/sbin/sshd")
HEADER = "| path | throughput MB/s | ratio to ssh -L | p50 µs | p99 µs |"


def run_bench(tmp_path: Path, only: str, nbytes: int, rounds: int) -> tuple[str, dict]:
    out, raw = tmp_path / "b.md", tmp_path / "session.json"
    cmd = [sys.executable, str(RUN), "--only", only, "--bytes", str(nbytes),
           "--rounds", str(rounds), "--out", str(out), "--json", str(raw)]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=60, check=False)
    assert res.returncode == 0, res.stderr
    return out.read_text(), json.loads(raw.read_text())


def table_row(text: str, path: str) -> list[str]:
    """The cells of the table row for one path."""
    for line in text.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if line.startswith("|") and cells[0] == path:
            return cells
    raise AssertionError(f"no table row for {path!r} in:\n{text}")


def assert_measured(text: str, raw: dict, path: str) -> None:
    cells = table_row(text, path)
    assert re.fullmatch(r"\d+\.\d", cells[1]), cells
    assert float(cells[1]) > 0
    assert re.fullmatch(r"\d+\.\d", cells[3]), cells  # p50 µs
    assert re.fullmatch(r"\d+\.\d", cells[4]), cells  # p99 µs
    row = next(r for r in raw["rows"] if r["path"] == path)
    assert row["status"] == "ok", row
    assert len(row["runs"]) == 3


def test_direct_row(tmp_path: Path) -> None:
    text, raw = run_bench(tmp_path, "direct", 8_000_000, 200)
    assert text.startswith("# roam benchmarks")
    assert "<!-- bench:session:start -->" in text
    assert "<!-- bench:session:end -->" in text
    assert HEADER in text
    assert_measured(text, raw, "direct")
    assert all(r["bytes"] == 8_000_000 for r in raw["rows"][0]["runs"])
    assert "Reproduce: `python bench/run.py" in text

    # A second run replaces the section and keeps what lies outside the markers.
    out = tmp_path / "b.md"
    out.write_text(out.read_text() + "\nkept line\n")
    text, _ = run_bench(tmp_path, "direct", 1_000_000, 50)
    assert text.count("<!-- bench:session:start -->") == 1
    assert text.count(HEADER) == 1
    assert "kept line" in text


def test_ssh_row(tmp_path: Path) -> None:
    if not SSHD.exists():
        reason = f"{SSHD} missing (scripts/setup-env installs openssh-server as root)"
        if os.environ.get("CI"):
            pytest.fail(reason)
        pytest.skip(reason)
    text, raw = run_bench(tmp_path, "ssh", 4_000_000, 100)
    assert_measured(text, raw, "ssh -L")
    assert table_row(text, "ssh -L")[2] == "1.00"
    assert "OpenSSH_" in text
