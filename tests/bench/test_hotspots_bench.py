"""bench/hotspots.py: py-spy on both daemons names roam's functions."""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

import pytest

from tests.conftest import require

from .scripts import load_bench


def test_latency_profile_names_the_record_path(capsys: pytest.CaptureFixture[str],
                                               tmp_path: Path) -> None:
    spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    require(Path(spy).exists(), "py-spy is missing (pip install -e '.[bench]')")
    require(os.geteuid() == 0, "py-spy samples another process: root or ptrace rights")
    bench = load_bench("hotspots")
    assert bench.main(["hotspots.py", "--workload", "latency", "--seconds", "2",
                       "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "64-byte round trips: p50" in out
    assert "SessionDriver.flush (driver.py)" in out
    assert (tmp_path / "client.raw").stat().st_size > 0


def test_summary_counts_own_and_inclusive_time(tmp_path: Path) -> None:
    bench = load_bench("hotspots")
    raw = tmp_path / "x.raw"
    raw.write_text("main (roam/cli.py:1);flush (roam/transport/driver.py:5);write (x.py:9) 3\n"
                   "main (roam/cli.py:1);flush (roam/transport/driver.py:7) 1\n")
    text = bench.summarize(raw, 5)
    assert "4 samples" in text
    assert " 75.0%  write (x.py:9)" in text
    assert "100.0%  flush (driver.py)" in text
