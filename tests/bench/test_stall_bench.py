"""Smoke test of bench/stall.py: a real server process, every load for one second.

The real run is `python bench/stall.py --out docs/performance.md` (20 s per load);
here each load runs a second, so the whole test stays well under 30 s.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from roam.core.session import Session

from .scripts import load_bench


def test_short_run_measures_the_ack_gaps_of_every_load(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bench = load_bench("stall")
    acked = Session._acked
    out, results = tmp_path / "performance.md", tmp_path / "stall.json"
    out.write_text("# Where roam's time goes\n\nEarlier sections.\n")
    assert bench.main(["--seconds", "1", "--json", str(results), "--out", str(out)]) == 0
    assert Session._acked is acked  # the wrapper is gone after the run

    res = json.loads(results.read_text())
    assert [r["load"] for r in res["loads"]] == list(bench.LOADS)
    assert res["transports"] == 1
    assert res["stall_floor_ms"] == 150.0
    assert res["stall_rtts"] == 4.0
    measured = [r for r in res["loads"] if not r["note"]]
    if shutil.which("taskset") is None:
        assert res["loads"][-1]["note"] == "not run: taskset is missing"
    else:
        assert len(measured) == 4
    for r in measured:
        assert r["samples"] > 0, r
        assert 0 <= r["median_ms"] <= r["p99_ms"] <= r["p999_ms"] <= r["max_ms"], r
        assert r["srtt_median_ms"] > 0, r
        assert r["exact"] is True, r
        assert not r["errors"], r
        assert r["up_mbps"] > 0, r
        assert r["largest"][0]["gap_ms"] == r["max_ms"], r
    assert res["largest_max_ms"] == max(r["max_ms"] for r in measured)
    assert res["largest_p999_ms"] == max(r["p999_ms"] for r in measured)
    assert next(r for r in res["loads"] if r["load"] == "mixed")["down_mbps"] > 0

    printed = capsys.readouterr().out
    assert "| load | ACK gaps | median ms | p99 ms | p99.9 ms | max ms |" in printed
    assert "| bulk upload | " in printed
    assert "Largest p99.9 of the ACK gap:" in printed

    doc = out.read_text()
    assert doc.startswith("# Where roam's time goes\n\nEarlier sections.\n\n## Stall floor\n")
    assert doc.index(bench.START) < doc.index("| paced upload, 1 KiB per ms | ") \
        < doc.index(bench.END)
    assert "python bench/stall.py --out docs/performance.md" in doc
    assert "Command: `python bench/stall.py --seconds 1 --json" in doc


def test_doc_section_is_added_once_then_replaced(tmp_path: Path) -> None:
    bench = load_bench("stall")
    out = tmp_path / "performance.md"
    out.write_text("# Title\n\nText.\n")
    bench.write_doc(out, "first table")
    bench.write_doc(out, "second table")
    doc = out.read_text()
    assert doc.count("## Stall floor") == 1
    assert "first table" not in doc
    assert f"{bench.START}\nsecond table\n{bench.END}" in doc
    assert doc.startswith("# Title\n\nText.\n\n## Stall floor")


def test_figures_of_known_gaps() -> None:
    bench = load_bench("stall")
    gaps = bench.Gaps()
    for i in range(1, 1001):  # 1 ms .. 1000 ms, an srtt of 10 ms each
        gaps.add(i / 1000, 0.010)
    gaps.add(0.2, None)  # before the first RTT sample: the floor alone
    res = bench.LoadResult("bulk", "bulk upload", 1.0)
    bench.summarize(res, gaps)
    assert res.samples == 1001
    assert res.max_ms == 1000.0
    assert res.p99_ms == 990.0
    assert res.p999_ms == 999.0
    assert res.srtt_median_ms == 10.0
    # The threshold is max(150 ms, 4 x 10 ms) = 150 ms: 851 gaps of 150..1000 ms, and 200 ms.
    assert res.threshold_median_ms == 150.0
    assert res.over_threshold == 852
    assert [g["gap_ms"] for g in res.largest[:2]] == [1000.0, 999.0]
