"""Smoke test of bench/handover.py: one run of each event for roam, MPTCP and plain TCP (root).

Goes through the benchmark's own functions with a shorter steady phase and outage than
the real benchmark, so that it stays under a minute.
"""

from __future__ import annotations

import os
from pathlib import Path

from tests.conftest import require

from .scripts import load_bench


def test_one_run_of_each_event_for_each_system() -> None:
    require(os.geteuid() == 0, "the network lab needs root")
    bench = load_bench("handover")
    settings = bench.Settings(runs=1, steady=0.5, after=0.5, tcp_outage=1.0)
    results = []
    for key, events in (("roam", bench.SCENARIOS), ("mptcp", bench.SCENARIOS),
                        ("tcp", ("link_down", "blackhole"))):
        res = bench.run_system(key, settings, log=print)
        assert res.error is None, res.error
        assert [r.scenario for r in res.runs] == list(events)
        for run in res.runs:
            assert run.error is None, run.error
            assert run.recovered, run.receiver
            assert isinstance(run.stall_ms, float), run
            assert run.stall_ms > 0, run
            assert isinstance(run.stalled_ms, float), run
            assert run.exact, run.receiver
            assert run.receiver["lost"] == run.receiver["duplicated_or_reordered"] == 0
            assert run.receiver["messages"] > 500
        results.append(res)
    roam = results[0]
    # Each run's client starts fresh: its first handover is the one the event caused.
    assert [(r.roam_handovers[0]["kind"], r.roam_handovers[0]["target"]) for r in roam.runs] \
        == [("hard", "cell"), ("hard", "cell"), ("soft", "cell")]
    text = bench.render(results, settings, bench.machine_facts(["--runs", "1"]))
    assert "| hard, wifi link down |" in text
    assert "n/a (cannot move)" in text


def test_section_is_replaced_and_other_sections_kept(tmp_path: Path) -> None:
    bench = load_bench("handover")
    out = tmp_path / "benchmarks.md"
    out.write_text("# roam benchmarks\n\n<!-- bench:session:start -->\nsession\n"
                   "<!-- bench:session:end -->\n\nafter\n")
    bench.write_section(out, "first")
    bench.write_section(out, "second")
    text = out.read_text()
    assert "session\n<!-- bench:session:end -->\n\nafter\n" in text
    assert text.count(bench.START) == 1
    assert "first" not in text
    assert text.endswith(f"{bench.START}\nsecond\n{bench.END}\n")
