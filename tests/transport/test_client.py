"""The client's transport life: resume after resets, silence found, server restarts."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

import pytest

from roam.core.preamble import PREAMBLE, Suite
from roam.core.session import SessionState
from roam.transport.client import Attachment

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


def test_a_hard_handover_resumes_on_the_parked_standby_without_a_connect() -> None:
    async def main() -> None:
        stack = await Stack().start()
        try:
            conn = await asyncio.open_connection("127.0.0.1", stack.forward_port)
            await stack.echo_check(300_000, conn=conn)
            spare = Attachment("spare")
            stack.client.choose_attachment = lambda attempt: spare
            await stack.client.prepare_standby(spare)
            assert stack.client.standby is not None
            assert stack.client.transports == 2
            active, parked = stack.proxy.conns
            active.client.transport.abort()  # the active path dies
            active.server.transport.abort()
            await stack.echo_check(300_000, conn=conn)
            assert stack.client.transports == 2  # no new connect: the standby carries it
            assert stack.client.standby is None
            assert stack.client.attachment == spare
            assert len(parked.upstream) > PREAMBLE.size  # the RESUME went this way
            # A standby closed with its path is not used: the next loss connects.
            await stack.client.prepare_standby(spare)
            assert stack.client.standby is not None
            stack.proxy.cut()
            await stack.echo_check(100_000, conn=conn)
            assert stack.client.transports == 4
            conn[1].close()
        finally:
            await stack.close()

    asyncio.run(main())


def test_a_newer_standby_replaces_the_older_on_both_sides() -> None:
    async def main() -> None:
        stack = await Stack().start()
        try:
            await stack.client.prepare_standby(Attachment("a"))
            assert stack.client.standby is not None
            first = stack.client.standby[1]
            await stack.client.prepare_standby(Attachment("b"))
            assert first.lost or first.transport is None or first.transport.is_closing()
            async with asyncio.timeout(5):
                await _until(lambda: stack.proxy.conns[1].server.transport.is_closing())
            await stack.echo_check(100_000)
        finally:
            await stack.close()

    asyncio.run(main())


def test_a_standby_that_went_silent_is_given_up_within_the_attempt_timeout() -> None:
    async def main() -> None:
        stack = await Stack().start()
        try:
            conn = await asyncio.open_connection("127.0.0.1", stack.forward_port)
            await stack.echo_check(100_000, conn=conn)
            spare = Attachment("spare")
            stack.client.choose_attachment = lambda attempt: spare
            await stack.client.prepare_standby(spare)
            active, parked = stack.proxy.conns
            parked.silent = True  # its path black-holed while it waited
            active.client.transport.abort()
            active.server.transport.abort()
            started = time.monotonic()
            await stack.echo_check(100_000, conn=conn)
            # max(1 s, 3 RTO) for RESUMED on the standby, then a fresh connect.
            assert time.monotonic() - started < 5
            assert stack.client.transports == 3
            conn[1].close()
        finally:
            await stack.close()

    asyncio.run(main())
