"""Smoke test of bench/registrar.py: a real registrar process, a few units."""

from __future__ import annotations

import asyncio
from pathlib import Path

from .scripts import load_bench


def test_a_small_run_answers_every_request_correctly(tmp_path: Path) -> None:
    bench = load_bench("registrar")
    res = asyncio.run(bench.run(units=5, per_unit=4, concurrency=3, tmp=tmp_path))
    for phase in (res.register, res.lookup_kept, res.lookup_new):
        assert phase.answers == phase.correct == 20
        assert phase.per_second > 0
    section = bench.render(res, ["--units", "5"])
    assert section.startswith("## One registrar: registrations and lookups per second")
    assert "Command: `python bench/registrar.py --units 5`" in section
