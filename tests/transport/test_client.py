"""The client's transport life: resume after resets, silence found, server restarts."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable

import pytest

from roam.core.preamble import PREAMBLE, Preamble, Suite, TransportKind
from roam.core.session import SessionConfig
from roam.core.states import SessionState, TransportState
from roam.errors import TransportError
from roam.transport.client import Attachment, HandoverRecord
from roam.transport.server import MAX_HANDSHAKES

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


def test_silent_transport_declared_dead_after_the_floor_and_resumed() -> None:
    async def main() -> str:
        stack = await Stack().start()
        try:
            conn = await asyncio.open_connection("127.0.0.1", stack.forward_port)
            await stack.echo_check(100_000, conn=conn)
            lost: list[str] = []
            stack.client.on_lost = lambda via, why: lost.append(why)
            driver = stack.client.driver
            assert driver is not None
            stack.proxy.silent = True
            async with asyncio.timeout(20):  # a hang guard, not the measure
                await _until(lambda: bool(lost))
            stack.proxy.silent = False
            # New transports pass again: the conversation goes on.
            await stack.echo_check(100_000, conn=conn)
            conn[1].close()
            return lost[0]
        finally:
            await stack.close()

    why = asyncio.run(main())
    # Declared by the session's own measure of silence (not by a TCP error),
    # and never before the dead floor (the session's clock, not this test's).
    assert why.startswith("silent for "), why
    assert float(why.split()[2]) >= SessionConfig().dead_floor


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


def test_a_soft_handover_to_the_joined_standby_switches_at_once() -> None:
    """The standby joined the session (JOIN, JOINED): a planned move sends
    the next frames on it at once, resends nothing, connects nothing, and the
    old transport stays as the standby."""
    async def main() -> None:
        stack = await Stack().start()
        try:
            conn = await asyncio.open_connection("127.0.0.1", stack.forward_port)
            await stack.echo_check(300_000, conn=conn)
            home, spare = Attachment("home"), Attachment("spare")
            stack.client.attachment = home
            await stack.client.prepare_standby(spare)
            driver = stack.client.driver
            assert driver is not None
            async with asyncio.timeout(5):
                await _until(lambda: TransportState.STANDBY in
                             driver.session.transport_ids().values())
            records: list[HandoverRecord] = []
            stack.client.on_handover = records.append
            await stack.client.handover(spare, soft=True, reason="planned")
            await stack.echo_check(300_000, conn=conn)
            assert stack.client.transports == 2
            assert [(r.kind, r.target, r.frames_resent, r.stall_ms) for r in records] == [
                ("soft", "spare", 0, 0.0)]
            assert stack.client.attachment == spare
            assert stack.client.standby is not None
            assert stack.client.standby[0] == home
            assert driver.session.frames_resent == 0
            assert len(stack.proxy.conns) == 2
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


def test_a_standby_that_never_joined_is_not_waited_for(
        caplog: pytest.LogCaptureFixture) -> None:
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
            await stack.echo_check(100_000, conn=conn)
            # It never joined (its JOINED never came): it cannot carry the
            # session, and the loss of the active one connects afresh at once.
            assert stack.client.transports == 3
            conn[1].close()
        finally:
            await stack.close()

    asyncio.run(main())


def _lost_after_ok(fault: str) -> None:
    """The transport of a resume is lost again before RESUMED is read."""

    async def main() -> None:
        stack = await Stack().start()
        try:
            conn = await asyncio.open_connection("127.0.0.1", stack.forward_port)
            await stack.echo_check(100_000, conn=conn)
            # Connection 1 is the resume's: the server's OK (3 bytes) passes,
            # then its first record (RESUMED) is corrupted or never arrives.
            if fault == "corrupt":
                stack.proxy.tamper_down[1] = 3 + 12
            else:
                stack.proxy.silence_down_after[1] = 3
            stack.proxy.cut()
            # Bounded only so that a hang fails the test; it passes as soon
            # as a later transport resumes.
            await stack.echo_check(100_000, conn=conn, timeout=20)
            assert len(stack.proxy.conns) >= 3
            assert len(stack.server.sessions) == 1
            conn[1].close()
        finally:
            await stack.close()

    asyncio.run(main())


def test_a_resume_whose_resumed_is_corrupted_is_followed_by_another() -> None:
    _lost_after_ok("corrupt")


def test_a_resume_black_holed_after_the_servers_ok_is_followed_by_another() -> None:
    _lost_after_ok("silence")


def test_a_transport_lost_between_resumed_and_the_reconnect_waking_is_resumed_again() -> None:
    async def main() -> None:
        stack = await Stack().start()
        try:
            conn = await asyncio.open_connection("127.0.0.1", stack.forward_port)
            await stack.echo_check(100_000, conn=conn)
            driver = stack.client.driver
            assert driver is not None
            resumed = driver.on_resumed
            done: list[int] = []

            def resumed_then_reset(frames: int) -> None:
                # RESUMED is handed over, and in the same callback (before
                # the task waiting for it runs) the new transport is reset.
                resumed(frames)
                if not done and driver.proto is not None:
                    done.append(frames)
                    driver.drop_transport(driver.proto, "reset just after RESUMED")

            driver.on_resumed = resumed_then_reset
            stack.proxy.cut()
            await stack.echo_check(100_000, conn=conn, timeout=20)
            assert done
            assert len(stack.proxy.conns) >= 3
            conn[1].close()
        finally:
            await stack.close()

    asyncio.run(main())


def test_a_new_session_made_while_reconnecting_is_on_the_path_it_took() -> None:
    async def main() -> None:
        stack = await Stack().start()
        try:
            a, b = Attachment("a", source="127.0.0.1"), Attachment("b", source="127.0.0.2")
            await stack.client.handover(a, soft=False, reason="start on a")
            stack.client.choose_attachment = lambda attempt: b
            first = stack.client.session_id
            # The server forgets the session without a word reaching us.
            stack.proxy.silent = True
            await stack.server.close()
            stack.proxy.cut()
            stack.proxy.silent = False
            stack.server = stack.make_server(stack.server_port)
            await stack.server.start()
            async with asyncio.timeout(10):
                await _until(lambda: stack.client.session_id != first
                             and stack.client.driver is not None
                             and stack.client.driver.proto is not None)
            assert stack.client.attachment == b
            assert stack.proxy.conns[-1].source == "127.0.0.2"
            await stack.echo_check(50_000)
        finally:
            await stack.close()

    asyncio.run(main())


class _Flood:
    """Connections that send a NEW preamble and then nothing: each holds one
    of the server's handshake slots until its timeout."""

    def __init__(self) -> None:
        self.writers: list[asyncio.StreamWriter] = []

    async def open(self, port: int, n: int) -> None:
        raw = Preamble(TransportKind.NEW, Suite.AESGCM_SHA256).encode()
        for _ in range(n):
            _, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(raw)
            self.writers.append(writer)
        await asyncio.sleep(0.1)  # the server reads every preamble

    def close(self) -> None:
        for writer in self.writers:
            writer.transport.abort()
        self.writers.clear()


def test_busy_is_waited_out_with_backoff_not_the_end_of_the_client(
        caplog: pytest.LogCaptureFixture) -> None:
    async def main() -> None:
        stack = await Stack().start()
        flood = _Flood()
        try:
            first = stack.client.session_id
            # A restarted server, flooded before the client comes back to it.
            old = stack.server
            stack.server = stack.make_server()
            _, port = await stack.server.start()
            await flood.open(port, MAX_HANDSHAKES)
            stack.proxy.target_port = port
            stack.proxy.silent = True
            await old.close()
            stack.proxy.cut()
            stack.proxy.silent = False
            async with asyncio.timeout(10):
                await _until(lambda: "is busy" in caplog.text)
            assert not stack.client.stopped.is_set()
            flood.close()
            async with asyncio.timeout(20):
                await _until(lambda: stack.client.session_id != first)
            await stack.echo_check(50_000)
            assert not stack.client.stopped.is_set()
        finally:
            flood.close()
            await stack.close()

    caplog.set_level(logging.INFO, logger="roam")
    asyncio.run(main())
    assert "waiting" in caplog.text


def test_a_standby_the_server_closed_is_found_lost_at_once() -> None:
    async def main() -> None:
        stack = await Stack().start()
        try:
            conn = await asyncio.open_connection("127.0.0.1", stack.forward_port)
            await stack.echo_check(100_000, conn=conn)
            spare = Attachment("spare")
            stack.client.choose_attachment = lambda attempt: spare
            await stack.client.prepare_standby(spare)
            sid = stack.client.session_id
            assert sid is not None
            parked = stack.server._standby[sid].proto
            assert parked is not None
            parked.abort()  # the server lets go of it, and we have not heard yet
            # The standby joined the session, so its loss is the session's to
            # see at once: the handover connects afresh, or resumes after.
            with contextlib.suppress(TransportError):
                await stack.client.handover(spare, soft=False, reason="the active path died")
            await stack.echo_check(100_000, conn=conn)
            conn[1].close()
        finally:
            await stack.close()

    asyncio.run(main())


def test_a_client_that_stops_tells_the_server_which_closes_every_channel() -> None:
    async def main() -> None:
        stack = await Stack().start()
        try:
            conns = [await asyncio.open_connection("127.0.0.1", stack.forward_port)
                     for _ in range(3)]
            for conn in conns:
                await stack.echo_check(10_000, conn=conn)
            assert len(stack.echo_conns) == 3
            await stack.client.shutdown()
            # The server's linger is 60 s here: only a CLOSE ends these now.
            async with asyncio.timeout(10):
                await _until(lambda: not stack.echo_conns)
            async with asyncio.timeout(10):
                await _until(lambda: not stack.server.sessions)
        finally:
            await stack.close()

    asyncio.run(main())


def test_a_server_that_stops_tells_the_client_which_closes_every_channel() -> None:
    async def main() -> None:
        stack = await Stack().start()
        try:
            conn = await asyncio.open_connection("127.0.0.1", stack.forward_port)
            await stack.echo_check(10_000, conn=conn)
            first = stack.client.session_id
            await stack.server.close()
            # The application sees its connection end, not a stall: the
            # client did not try to resume a session the server ended.
            data = await asyncio.wait_for(conn[0].read(100), 10)
            assert data == b""
            assert stack.client.driver is not None
            assert stack.client.driver.session.state is SessionState.CLOSED
            # And when the server is back, a new session serves new connections.
            stack.server = stack.make_server(stack.server_port)
            await stack.server.start()
            async with asyncio.timeout(20):
                await _until(lambda: stack.client.session_id != first)
            await stack.echo_check(10_000)
        finally:
            await stack.close()

    asyncio.run(main())
