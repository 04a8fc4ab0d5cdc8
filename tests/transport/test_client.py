"""The client's transport life: resume after resets, silence found, server restarts."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

import pytest

from roam.core.preamble import Suite
from roam.core.session import SessionState

from .stack import Stack


async def _until(condition: Callable[[], bool]) -> None:
    """Poll a condition of the daemon under test (it has no event for it)."""
    while not condition():  # noqa: ASYNC110
        await asyncio.sleep(0.01)


@pytest.mark.parametrize("suite", list(Suite))
def test_resume_after_reset_without_new_handshake(suite: Suite) -> None:
    async def main() -> None:
        stack = await Stack(suite=suite).start()
        try:
            conn = await asyncio.open_connection("127.0.0.1", stack.forward_port)
            for _ in range(3):
                await stack.echo_check(300_000, conn=conn)
                stack.proxy.cut()
            await stack.echo_check(300_000, conn=conn)
            assert len(stack.server.sessions) == 1
            assert stack.client.transports == 4
            conn[1].close()
        finally:
            await stack.close()

    asyncio.run(main())


def test_silent_transport_declared_dead_within_seconds() -> None:
    async def main() -> float:
        stack = await Stack().start()
        try:
            conn = await asyncio.open_connection("127.0.0.1", stack.forward_port)
            await stack.echo_check(100_000, conn=conn)
            await asyncio.sleep(1.2)  # a keepalive measures the RTT
            driver = stack.client.driver
            assert driver is not None
            stack.proxy.silent = True
            t0 = time.monotonic()
            async with asyncio.timeout(10):
                await _until(lambda: driver.session.state is not SessionState.ATTACHED)
            found = time.monotonic() - t0
            stack.proxy.silent = False
            # New transports pass again: the conversation goes on.
            await stack.echo_check(100_000, conn=conn)
            conn[1].close()
            return found
        finally:
            await stack.close()

    found = asyncio.run(main())
    # The dead floor is 2 s of silence, counted from the last record heard
    # (up to one keepalive interval before the path went silent).
    assert 1.0 <= found <= 5.0


def test_restarted_server_means_a_new_session(caplog: pytest.LogCaptureFixture) -> None:
    async def main() -> None:
        stack = await Stack().start()
        try:
            conn = await asyncio.open_connection("127.0.0.1", stack.forward_port)
            await stack.echo_check(50_000, conn=conn)
            first = stack.client.session_id
            await stack.server.close()
            stack.proxy.cut()
            stack.server = stack.make_server(stack.server_port)
            await stack.server.start()
            async with asyncio.timeout(10):
                await _until(lambda: stack.client.session_id != first)
            # The old application connection could not survive the server's restart...
            data = await asyncio.wait_for(conn[0].read(100), 5)
            assert data == b""
            # ...but new ones work on the new session.
            await stack.echo_check(50_000)
        finally:
            await stack.close()

    asyncio.run(main())
    assert "no longer knows the session" in caplog.text
