"""Smoke test of bench/workers.py: two sessions, one run each way, a few MB.

The real run is `python bench/workers.py` (8 sessions, 5 runs each way, 1000 MB a run).
"""

from __future__ import annotations

from pathlib import Path

from .scripts import load_bench


def test_a_tiny_run_measures_both_servers(tmp_path: Path) -> None:
    bench = load_bench("workers")
    res = bench.run(sessions=2, runs=1, mb=4, limit=10.0, tmp=tmp_path, say=lambda _: None)
    assert [r.setup for r in res.samples] == list(bench.SETUPS)
    for r in res.samples:
        assert r.bytes == 4_000_000
        assert r.mb_per_s > 0
    assert sum(res.spread.values()) == 2
    section = bench.render(res, ["--sessions", "2"])
    assert section.startswith("## 2 sessions in parallel: one server process or `--workers 2`")
    assert "| one process |" in section
    assert "| --workers 2 |" in section
    assert "Command: `python bench/workers.py --sessions 2`" in section
    assert "2 CPUs" in section or "CPUs for everything" in section
