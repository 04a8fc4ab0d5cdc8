"""The demo's output: handover lines, and a summary whose status tells the truth."""

from __future__ import annotations

import io
from typing import Any

from roam.demo.app import AppStatistics
from roam.demo.report import Screen, handover_line, summary, wait_line

HARD: dict[str, Any] = {"time": 105.0, "type": "hard", "from": "wifi", "to": "cell",
                        "reason": "wifi is down", "stall_ms": 312.4}
SOFT: dict[str, Any] = {"time": 109.0, "type": "soft", "from": "cell", "to": "wifi",
                        "reason": "wifi (priority 10) usable for 1.0 s", "stall_ms": 0.0}


def stats(sent: int = 1000, echoed: int = 1000, mismatch: int | None = None,
          error: str | None = None) -> AppStatistics:
    return AppStatistics(sent, echoed, mismatch, 0.75, error)


def test_a_handover_reads_with_its_kind_reason_and_stall() -> None:
    assert handover_line(HARD) == "hard handover wifi -> cell (wifi is down): stall 312 ms"


def test_lines_are_stamped_with_the_seconds_since_the_start() -> None:
    out = io.StringIO()
    screen = Screen(out)
    screen.began = 100.0
    screen.at(handover_line(HARD), HARD["time"])
    assert out.getvalue() == "   5.0 s  hard handover wifi -> cell (wifi is down): stall 312 ms\n"


def test_the_applications_wait_is_told_only_past_the_pace() -> None:
    assert wait_line(0.03, 0.05).endswith("never stopped for over 50 ms")
    assert wait_line(2.041, 0.05).endswith("echo stopped for 2041 ms")


def test_every_byte_back_is_exit_0() -> None:
    lines, code = summary(stats(), [HARD, SOFT], [], 100.0)
    assert code == 0
    assert "       5.0 s  hard handover wifi -> cell (wifi is down): stall 312 ms" in lines
    assert "       9.0 s  soft handover cell -> wifi" in lines[-2]
    assert not any(line.startswith("FAILED") for line in lines)


def test_a_changed_byte_is_exit_1_and_says_where() -> None:
    lines, code = summary(stats(mismatch=4242), [HARD, SOFT], [], 100.0)
    assert code == 1
    assert "FAILED: echoed byte 4,242 differs from the byte sent there" in lines


def test_missing_bytes_and_a_missing_handover_are_each_a_failure() -> None:
    lines, code = summary(stats(echoed=900), [HARD], ["no soft handover cell -> wifi within "
                                                      "20 s of: wifi comes back up"], 100.0)
    assert code == 1
    assert "FAILED: no soft handover cell -> wifi within 20 s of: wifi comes back up" in lines
    assert "FAILED: 900 bytes echoed of 1,000 sent" in lines


def test_an_application_error_is_a_failure() -> None:
    lines, code = summary(stats(echoed=10, error="the echo ended after 10 of 1000 bytes"), [],
                          [], 100.0)
    assert code == 1
    assert lines[-1] == "FAILED: the echo ended after 10 of 1000 bytes"
