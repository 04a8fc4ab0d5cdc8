"""bench/crossing.py: roam's work per crossing, in one process, byte-exact."""

from __future__ import annotations

import asyncio

import pytest

from roam.core.compress import AUTO

from .scripts import load_bench


def test_round_trips_come_back_exact_and_are_timed() -> None:
    bench = load_bench("crossing")
    for mode in (None, AUTO):
        per_round = asyncio.run(bench.measure(200, mode, False))
        assert 0 < per_round < 0.05  # seconds; a round trip here is tens of microseconds


def test_main_prints_per_crossing(capsys: pytest.CaptureFixture[str]) -> None:
    bench = load_bench("crossing")
    assert bench.main(["crossing.py", "--rounds", "100"]) == 0
    assert "us per crossing (--compress off, 100 rounds" in capsys.readouterr().out
