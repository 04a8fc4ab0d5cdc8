"""Smoke test of bench/doublejump.py: its log reading and report without root, then one
double jump per registrar in the network lab (root; Kamailio when it is installed)."""

from __future__ import annotations

import datetime
import os
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import require

from .scripts import load_bench

# A client's and a server's log lines around a double jump, as the daemons write them.
JUMP = datetime.datetime(2026, 1, 2, 3, 4, 5, 100_000).timestamp()
CLIENT_LOG = """\
2026-01-02 03:04:04,900 roam-client INFO standby transport via cell joined the session at x
2026-01-02 03:04:05,114 roam-client INFO handover hard wifi -> cell (wifi is down) on the \
joined standby: 0 frames resent
forward 127.0.0.1:7300=127.0.0.1:7200
2026-01-02 03:04:07,030 roam-client WARNING session ab: nothing heard for 2.0 s: transport \
declared dead
2026-01-02 03:04:07,031 roam-client INFO resume attempt 1 failed: cannot connect to \
198.19.0.2:7000 via wifi: Network is unreachable
2026-01-02 03:04:07,160 roam-client INFO the server moved: 198.19.0.2:7000 -> \
198.19.64.2:7000 (its registrar says)
2026-01-02 03:04:07,340 roam-client INFO session ab: resumed; resent 0 frames (0 bytes)
"""
SERVER_LOG = """\
2026-01-02 03:04:05,112 roam-server INFO server network net1 -> net2 (hard, net1 is down): \
reached at 198.19.64.2:7000; 1 sessions told
2026-01-02 03:04:05,120 roam-server INFO registered 198.19.64.2:7000 at registrar \
198.19.1.2:7500 for 600 s
"""


def test_log_lines_after_the_jump_give_the_milestones() -> None:
    bench = load_bench("doublejump")
    client = bench.after_jump(CLIENT_LOG, JUMP)
    assert client[0] == (14.0, "handover hard wifi -> cell (wifi is down) on the joined "
                               "standby: 0 frames resent")  # earlier lines are left out
    assert len(client) == 5
    found = bench.milestones({"roam-client": client,
                              "roam-server": bench.after_jump(SERVER_LOG, JUMP)})
    assert found == pytest.approx({"server_moved": 12, "server_registered": 20,
                                   "standby": 14, "dead": 1930, "resume_failed": 1931,
                                   "registrar": 2060, "resumed": 2240})


def _run(bench: Any, kind: str, n: int, resumed: float, dead: float) -> Any:
    m = {"standby": 14.0, "dead": dead, "resume_failed": dead + 1,
         "registrar": dead + 130, "resumed": resumed * 1000 - 5}
    return bench.RunResult(kind, n, recovered=True, resumed_s=resumed,
                           stall_ms=resumed * 1000 - 10, app_gap_ms=resumed * 1000 - 12,
                           exact=True, milestones=m,
                           resume_failure="cannot connect to x via wifi: Network is unreachable")


def test_the_report_puts_the_registrars_side_by_side_and_names_failures() -> None:
    bench = load_bench("doublejump")
    builtin = bench.KindResult("builtin", [_run(bench, "builtin", 1, 2.2, 1900),
                                           _run(bench, "builtin", 2, 2.0, 1700),
                                           bench.RunResult("builtin", 3, error="not resumed "
                                                           "at the server's net2 address")])
    kamailio = bench.KindResult("kamailio", [_run(bench, "kamailio", 1, 2.1, 1750)])
    facts = {"date": "today", "nproc": "2", "cpu": "cpu", "kernel": "Linux", "python": "3",
             "roam": "abc", "command": "python bench/doublejump.py --runs 3",
             "json": "bench/results/doublejump.json"}
    text = bench.render([builtin, kamailio], bench.Settings(runs=3), facts)
    assert "| | built-in (`roam registrar`) | Kamailio (SIP) |" in text
    assert "| resumed after the jump, s | 2.10 (2.00-2.20) | 2.10 |" in text
    assert "| runs recovered / runs | 2/3 | 1/1 |" in text
    assert "- builtin run 3: not resumed at the server's net2 address" in text
    assert "Command: `python bench/doublejump.py --runs 3`" in text
    assert "### Reading the double jump figures" in text
    assert "found dead 1.80 (1.70-1.90) s built-in, 1.75 s Kamailio after the jump" in text
    assert "in 3 of 3 runs: `cannot connect to x via wifi: Network is unreachable`" in text
    skipped = bench.KindResult("kamailio", skipped="kamailio is not installed")
    assert "| runs recovered / runs | 2/3 | — |" in bench.render(
        [builtin, skipped], bench.Settings(runs=3), facts)


def test_arguments_and_root(monkeypatch: pytest.MonkeyPatch,
                            capsys: pytest.CaptureFixture[str]) -> None:
    bench = load_bench("doublejump")
    args = bench.parse_args(["--runs", "2", "--only", "kamailio", "--no-write"])
    assert (args.runs, args.only, args.no_write) == (2, ["kamailio"], True)
    with pytest.raises(SystemExit):
        bench.parse_args(["--only", "sip"])
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    assert bench.main(["--runs", "1", "--no-write"]) == 2
    assert "must run as root" in capsys.readouterr().err


def test_one_double_jump_per_registrar(tmp_path: Path) -> None:
    require(os.geteuid() == 0, "the network lab needs root")
    bench = load_bench("doublejump")
    # Half a second of clean stream either side: enough to see it flowing
    # and exact; the jump and the resume take what they take.
    settings = bench.Settings(runs=1, steady=0.5, after=0.5)
    results = [bench.run_kind(kind, settings, tmp_path, print) for kind in bench.KINDS]
    for res in results:
        if res.skipped:
            assert res.kind == "kamailio", res.skipped
            continue
        (run,) = res.runs
        assert run.error is None, run
        assert run.recovered, run.receiver
        assert run.exact, run.receiver
        assert 0.5 < run.resumed_s < bench.RESUME_LIMIT
        # The resume's own record, not the switch to the standby just after the jump
        # (a few ms): its stall spans the wait for the standby to be found dead.
        assert run.stall_ms > 500, run.handover
        assert run.app_gap_ms > 0
        assert run.handover["kind"] == "hard", run.handover
        assert run.receiver["lost"] == run.receiver["duplicated_or_reordered"] == 0
        # The registrar told the client where the server went.
        assert {"standby", "dead", "registrar", "resumed"} <= run.milestones.keys(), run.log
    facts = bench.roam_facts(["--runs", "1"])
    assert "| runs recovered / runs | 1/1 |" in bench.render(results, settings, facts)
