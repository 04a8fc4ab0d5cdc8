"""The server against hostile transports: garbage, replays, forgeries, tampering."""

from __future__ import annotations

import asyncio
import os
import socket
import time

import pytest

from roam.core.admission import Openings
from roam.core.preamble import (
    HANDSHAKE_LEN,
    HELLO,
    PREAMBLE,
    PROLOGUE,
    REPLY,
    STANDBY_PROOF,
    Preamble,
    Status,
    Suite,
    TransportKind,
)
from roam.crypto.keys import public_key
from roam.crypto.noise import HandshakeState
from roam.crypto.records import HEADER
from roam.transport.client import Attachment

from .stack import Stack


async def _raw(port: int, data: bytes) -> tuple[Status, bytes]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(data)
    status, length = REPLY.unpack(await asyncio.wait_for(reader.readexactly(REPLY.size), 10))
    body = await reader.readexactly(length)
    writer.close()
    return Status(status), body


def _hello(stack: Stack, stamp: int) -> bytes:
    raw = Preamble(TransportKind.NEW, Suite.AESGCM_SHA256).encode()
    hs = HandshakeState(Suite.AESGCM_SHA256.noise_name, initiator=True,
                        prologue=PROLOGUE + raw, s=stack.client_key,
                        rs=public_key(stack.server_key))
    msg1 = hs.write_message(HELLO.pack(stamp))
    return raw + HANDSHAKE_LEN.pack(len(msg1)) + msg1


def test_garbage_gets_an_answer_and_the_server_keeps_serving(
        caplog: pytest.LogCaptureFixture) -> None:
    async def main() -> None:
        stack = await Stack().start()
        try:
            status, body = await _raw(stack.server_port, b"GET / HTTP/1.1\r\n" + b"x" * 60)
            assert status is Status.BAD_PREAMBLE
            assert b"not a roam transport" in body
            assert stack.server.refused == {"BAD_PREAMBLE": 1}
            await stack.echo_check(100_000)
        finally:
            await stack.close()

    asyncio.run(main())
    assert "not a roam transport" in caplog.text


def test_replayed_first_handshake_message_is_refused() -> None:
    async def main() -> None:
        stack = await Stack().start()
        try:
            hello = _hello(stack, time.time_ns())
            status, _ = await _raw(stack.server_port, hello)
            assert status is Status.OK
            status, body = await _raw(stack.server_port, hello)
            assert status is Status.HANDSHAKE_FAILED
            assert b"replay" in body
            assert len(stack.server.sessions) == 2  # the real client's and the first hello's
        finally:
            await stack.close()

    asyncio.run(main())


def test_replayed_resume_is_refused_and_the_session_lives_on() -> None:
    async def main() -> None:
        stack = await Stack().start()
        try:
            await stack.echo_check(200_000)
            stack.proxy.cut()
            await stack.echo_check(200_000)  # the client resumed on a new transport
            resume = stack.proxy.conns[-1].upstream
            length, _ = HEADER.unpack_from(resume, PREAMBLE.size)
            first = bytes(resume[:PREAMBLE.size + 4 + length])
            status, body = await _raw(stack.server_port, first)
            assert status is Status.RESUME_REFUSED
            assert b"does not authenticate" in body
            await stack.echo_check(200_000)
        finally:
            await stack.close()

    asyncio.run(main())


def test_resume_without_the_keys_is_refused() -> None:
    async def main() -> None:
        stack = await Stack().start()
        try:
            sid = stack.client.session_id
            assert sid is not None
            raw = Preamble(TransportKind.RESUME, Suite.AESGCM_SHA256, sid).encode()
            forged = HEADER.pack(8 + 64, 1 << 20) + os.urandom(64)
            status, _ = await _raw(stack.server_port, raw + forged)
            assert status is Status.RESUME_REFUSED
            unknown = Preamble(TransportKind.RESUME, Suite.AESGCM_SHA256, b"\x01" * 16).encode()
            status, _ = await _raw(stack.server_port, unknown + forged)
            assert status is Status.UNKNOWN_SESSION
            await stack.echo_check(100_000)
            # Counted by code for status and --metrics.
            assert stack.server.refused == {"RESUME_REFUSED": 1, "UNKNOWN_SESSION": 1}
        finally:
            await stack.close()

    asyncio.run(main())


def test_tampered_record_drops_the_transport_not_the_session(
        caplog: pytest.LogCaptureFixture) -> None:
    async def main() -> None:
        stack = await Stack().start()
        try:
            conn = await asyncio.open_connection("127.0.0.1", stack.forward_port)
            await stack.echo_check(100_000, conn=conn)
            stack.proxy.tamper_at = 100
            await stack.echo_check(2_000_000, conn=conn)
            conn[1].close()
        finally:
            await stack.close()

    asyncio.run(main())
    assert "dropping transport" in caplog.text
    assert "decryption failed" in caplog.text or "forged" in caplog.text


def test_standby_proofs_are_checked() -> None:
    async def main() -> None:
        stack = await Stack().start()
        try:
            sid = stack.client.session_id
            assert sid is not None
            raw = Preamble(TransportKind.STANDBY, Suite.AESGCM_SHA256, sid).encode()
            status, body = await _raw(stack.server_port, raw + STANDBY_PROOF.pack(1, bytes(16)))
            assert status is Status.RESUME_REFUSED
            assert b"standby proof does not authenticate" in body
            unknown = Preamble(TransportKind.STANDBY, Suite.AESGCM_SHA256, b"\x02" * 16).encode()
            status, _ = await _raw(stack.server_port, unknown + STANDBY_PROOF.pack(1, bytes(16)))
            assert status is Status.UNKNOWN_SESSION
            # A genuine standby, recorded and played again, is a replay.
            await stack.client.prepare_standby(Attachment("spare"))
            recorded = bytes(stack.proxy.conns[-1].upstream)
            assert len(recorded) == PREAMBLE.size + STANDBY_PROOF.size
            status, body = await _raw(stack.server_port, recorded)
            assert status is Status.RESUME_REFUSED
            assert b"not newer" in body
            await stack.echo_check(100_000)
        finally:
            await stack.close()

    asyncio.run(main())


def test_a_parked_standby_closes_with_its_session() -> None:
    async def main() -> None:
        stack = await Stack().start()
        try:
            await stack.client.prepare_standby(Attachment("spare"))
            assert stack.client.standby is not None
            parked = stack.client.standby[1]
            (driver,) = stack.server.sessions.values()
            driver.close(reason="test")
            async with asyncio.timeout(5):
                while not parked.lost:  # noqa: ASYNC110  (no event for it)
                    await asyncio.sleep(0.01)
        finally:
            await stack.close()

    asyncio.run(main())


def test_a_resume_claiming_a_large_first_record_is_refused_at_once() -> None:
    async def main() -> None:
        stack = await Stack().start()
        try:
            sid = stack.client.session_id
            assert sid is not None
            raw = Preamble(TransportKind.RESUME, Suite.AESGCM_SHA256, sid).encode()
            # Anyone who saw the session id can send this; nothing follows it.
            status, body = await _raw(stack.server_port, raw + HEADER.pack(256 * 1024 - 64, 1))
            assert status is Status.RESUME_REFUSED
            assert b"first record length" in body
            await stack.echo_check(10_000)
        finally:
            await stack.close()

    asyncio.run(main())


def test_idle_openings_from_one_address_are_bounded_and_keep_no_resume_out() -> None:
    async def main() -> None:
        stack = await Stack().start()
        holders: list[asyncio.StreamWriter] = []
        try:
            # The real limits at a size a test can reach: under load (32 in
            # progress) one source holds at most 16 more; at 64, the heaviest
            # source's oldest gives way.
            stack.server.openings = Openings(capacity=64, per_source=16, load=32)
            for _ in range(200):
                _, writer = await asyncio.open_connection("127.0.0.1", stack.server_port,
                                                          local_addr=("127.0.0.2", 0))
                holders.append(writer)
            await asyncio.sleep(0)
            async with asyncio.timeout(10):
                while stack.server.openings.held_by("127.0.0.2") < 32:  # noqa: ASYNC110
                    await asyncio.sleep(0.01)
            assert stack.server.openings.held_by("127.0.0.2") == 32
            # Another address resumes and opens new sessions as if nothing happened.
            stack.proxy.cut()
            await stack.echo_check(50_000)
            # At capacity, a newcomer makes the heaviest source give way.
            stack.server.openings = Openings(capacity=8, per_source=100, load=100)
            for writer in holders[:8]:
                stack.server.openings.admit(writer.transport, "127.0.0.2")  # type: ignore[arg-type]
            stack.proxy.cut()
            await stack.echo_check(50_000)
        finally:
            for writer in holders:
                writer.transport.abort()
            await stack.close()

    asyncio.run(main())


def test_a_handed_transport_is_opened_from_the_bytes_read_before() -> None:
    """A transport another worker accepted (docs/workers.md): its preamble was
    read there, and the server answers as if it had read it itself."""

    async def main() -> None:
        stack = await Stack().start()
        loop = asyncio.get_running_loop()
        with socket.socket() as elsewhere:  # the listener of "another worker"
            elsewhere.bind(("127.0.0.1", 0))
            elsewhere.listen()
            elsewhere.setblocking(False)
            try:
                reader, writer = await asyncio.open_connection(*elsewhere.getsockname())
                conn, _ = await loop.sock_accept(elsewhere)
                unknown = Preamble(TransportKind.RESUME, Suite.AESGCM_SHA256,
                                   os.urandom(16)).encode()
                writer.write(unknown + b"first record")
                data = b""
                while len(data) < len(unknown) + 12:
                    data += await loop.sock_recv(conn, 100)
                await stack.server.accept_handed(conn, data)
                status, _ = REPLY.unpack(await asyncio.wait_for(reader.readexactly(REPLY.size),
                                                                5))
                assert Status(status) is Status.UNKNOWN_SESSION
                writer.close()
            finally:
                await stack.close()

    asyncio.run(main())


def test_a_hello_another_worker_took_is_a_replay_here() -> None:
    async def main() -> None:
        stack = await Stack().start()
        try:
            stamp = time.time_ns()
            stack.server.heard_hello(public_key(stack.client_key), stamp)
            stack.server.heard_hello(public_key(stack.client_key), stamp - 5)  # older: no change
            status, body = await _raw(stack.server_port, _hello(stack, stamp))
            assert status is Status.HANDSHAKE_FAILED
            assert b"replay" in body
            status, _ = await _raw(stack.server_port, _hello(stack, stamp + 1))
            assert status is Status.OK
        finally:
            await stack.close()

    asyncio.run(main())
