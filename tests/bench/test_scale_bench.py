"""Smoke test of bench/scale.py: a real server process, 50 sessions, 20 handing over at once.

Goes through the benchmark's own functions with small numbers and a short idle wait
(the sessions' own idle_after is 30 s), so that each test takes a few seconds; the real
run is `python bench/scale.py` (10,000 sessions, 1,000 handing over, idle for 30 s).
"""

from __future__ import annotations

import asyncio
from pathlib import Path

from .scripts import load_bench

# Seconds the smoke runs wait for "idle" and measure the idle CPU over: the
# figures are not checked, only that each phase runs and is reported.
IDLE_S = 2.0
CPU_WINDOW_S = 1.0


def test_small_run_is_byte_exact_and_reports_memory_per_session(tmp_path: Path) -> None:
    bench = load_bench("scale")
    res = asyncio.run(bench.run(50, 20, batch=20, nbytes=2048, timeout=20.0, tmp=tmp_path,
                                say=lambda *_: None, idle_after=IDLE_S,
                                idle_cpu_window=CPU_WINDOW_S))
    assert res.opened == 50, res.open_failures
    assert isinstance(res.kib_per_session, float)
    assert res.server_rss_after_kib > res.server_rss_before_kib > 0
    h = res.handover
    assert h is not None
    assert h.channels_opened_exact == h.resumed == h.in_flight_exact == h.after_exact == 20, h
    assert h.new_sessions == 0, h
    assert h.all_resumed_s is not None, h
    assert h.ok
    text = bench.table(res)
    assert "server KiB per idle session" in text
    assert "20 of 20" in text
    assert len(h.resume_times_s) == 20
    assert h.resume_times_s == sorted(h.resume_times_s)
    section = bench.render(res, ["--sessions", "50"], bench.draw(res, tmp_path))
    assert section.startswith("## Ten thousand sessions on one server")
    assert "| server KiB per idle session |" in section
    assert "hard handovers at once: all resumed within" in section
    assert "every channel byte-exact before, in flight and after: yes" in section
    assert "Command: `python bench/scale.py --sessions 50`" in section


def test_a_worker_process_holds_its_share_of_the_sessions(tmp_path: Path) -> None:
    bench = load_bench("scale")
    res = asyncio.run(bench.run(30, 10, batch=20, workers=2, nbytes=512, timeout=20.0,
                                tmp=tmp_path, say=lambda *_: None, idle_after=IDLE_S,
                                idle_cpu_window=CPU_WINDOW_S))
    assert res.opened == 30, res.open_failures
    assert res.handover is not None
    assert res.handover.ok, res.handover
