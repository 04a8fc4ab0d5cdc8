"""Log lines a peer can cause: the first at once, then one a second with a count."""

from __future__ import annotations

import asyncio
import logging

import pytest

from roam.transport.ratelog import RateLimitedLog

from .stack import Stack


def test_a_burst_is_one_line_then_a_count(caplog: pytest.LogCaptureFixture,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    clock = [100.0]
    monkeypatch.setattr("roam.transport.ratelog.time.monotonic", lambda: clock[0])
    logger = logging.getLogger("roam.test.ratelog")
    say = RateLimitedLog(logger, interval=1.0)
    with caplog.at_level(logging.WARNING, logger="roam.test.ratelog"):
        for i in range(1000):
            say(f"refused {i}")
        clock[0] += 1.5
        say("refused 1000")
    assert [r.getMessage() for r in caplog.records] == [
        "refused 0", "refused 1000 (and 999 more like it in the last 2 s)"]
    assert say.total == 1001


def test_a_flood_of_bad_preambles_writes_a_few_lines_not_one_each(
        caplog: pytest.LogCaptureFixture) -> None:
    async def main() -> None:
        stack = await Stack().start()
        try:
            for _ in range(300):
                _, writer = await asyncio.open_connection("127.0.0.1", stack.server_port)
                writer.write(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n" + b"x" * 40)
                writer.close()
            await stack.echo_check(10_000)  # and the server serves on
        finally:
            await stack.close()

    with caplog.at_level(logging.WARNING, logger="roam.server"):
        asyncio.run(main())
    refusals = [r for r in caplog.records if "refused" in r.getMessage()]
    # However long the loop took, one line a second at most (and never one per attempt).
    assert 1 <= len(refusals) < 30
