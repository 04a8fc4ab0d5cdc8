"""Compression through a whole stack: negotiation on the handshake, and a forward."""

from __future__ import annotations

import asyncio
import json
import random
import time

import pytest

from roam.core.compress import AUTO, OFF, ZSTD, ZSTD_HISTORY, CompressionMode
from roam.core.preamble import (
    HANDSHAKE_LEN,
    HELLO,
    HELLO_COMPRESS,
    PROLOGUE,
    REPLY,
    Preamble,
    Status,
    Suite,
    TransportKind,
)
from roam.crypto.keys import public_key
from roam.crypto.noise import HandshakeState

from .stack import Stack

# The in-process stack runs on loopback, where --compress auto would not
# compress (roam.core.compress.AUTO_MIN_RTT): these tests are about what
# auto does where it does compress.
SLOW_LOOPBACK = {"auto_compress_min_rtt": 0.0}


def _json(n: int) -> bytes:
    rng = random.Random(7)
    words = ["alpha", "beta", "gamma", "delta", "status", "ok", "error", "user", "account",
             "session"]
    rows = [{"id": i, "user": rng.choice(words) + str(rng.randrange(5000)),
             "event": rng.choice(words), "value": round(rng.random() * 1000, 3),
             "tags": rng.sample(words, 3)} for i in range(n // 60 + 1)]
    data = json.dumps(rows).encode()
    assert len(data) >= n
    return data[:n]


async def _echo(stack: Stack, data: bytes, timeout: float = 60.0) -> float:
    """Send `data` through the forward, expect it back exactly; the seconds it took."""
    started = time.perf_counter()
    reader, writer = await asyncio.open_connection("127.0.0.1", stack.forward_port)

    async def send() -> None:
        for i in range(0, len(data), 65536):
            writer.write(data[i:i + 65536])
            await writer.drain()

    sender = asyncio.create_task(send())
    got = bytearray()
    async with asyncio.timeout(timeout):
        while len(got) < len(data):
            chunk = await reader.read(262144)
            if not chunk:
                raise AssertionError(f"EOF after {len(got)} of {len(data)} bytes")
            got += chunk
    await sender
    writer.close()
    assert bytes(got) == data
    return time.perf_counter() - started


@pytest.mark.parametrize("mode", [CompressionMode(True, 3), AUTO])
def test_five_megabytes_of_json_cross_a_forward_compressed(mode: CompressionMode) -> None:
    async def main() -> None:
        stack = await Stack(compression=mode, server_compression=mode,
                            session=SLOW_LOOPBACK).start()
        try:
            data = _json(5 * 1024 * 1024)
            await _echo(stack, data)
            assert stack.client.driver is not None
            client = stack.client.driver.session.statistics()
            (server_driver,) = stack.server.sessions.values()
            server = server_driver.session.statistics()
            assert client.compression == server.compression == str(mode)
            assert client.bytes_sent == server.bytes_sent == len(data)
            assert client.payload_bytes_sent == server.payload_bytes_received
            assert client.payload_bytes_sent < len(data) * 0.3
            assert server.payload_bytes_sent < len(data) * 0.3
            # And on the wire itself (records, frames, handshake and all).
            upstream = sum(len(c.upstream) for c in stack.proxy.conns)
            assert upstream < len(data) * 0.3
        finally:
            await stack.close()

    asyncio.run(main())


def test_auto_on_loopback_leaves_data_raw_once_the_rtt_is_known() -> None:
    async def main() -> tuple[int, int, int, int]:
        stack = await Stack(session={"keepalive_interval": 0.05}).start()
        try:
            assert stack.client.driver is not None
            session = stack.client.driver.session
            async with asyncio.timeout(10):
                while session.rtt.min_rtt is None or session.rtt.min_rtt >= 0.001:  # noqa: ASYNC110
                    await asyncio.sleep(0.05)
            data = _json(1_000_000)
            await _echo(stack, data)
            cs = session.statistics()
            (driver,) = stack.server.sessions.values()
            ss = driver.session.statistics()
            return cs.bytes_sent, cs.payload_bytes_sent, ss.bytes_sent, ss.payload_bytes_sent
        finally:
            await stack.close()

    sent, payload, _, _ = asyncio.run(main())
    assert (sent, payload) == (1_000_000, 1_000_000)


@pytest.mark.parametrize(("client", "server", "expected"), [
    (AUTO, AUTO, ("auto", "auto")),
    (CompressionMode(True, 7), AUTO, ("zstd:7", "auto")),
    (OFF, AUTO, ("off", "off")),
    (AUTO, OFF, ("off", "off")),
])
def test_compression_only_when_both_sides_allow_it(
        client: CompressionMode, server: CompressionMode, expected: tuple[str, str]) -> None:
    async def main() -> None:
        stack = await Stack(compression=client, server_compression=server,
                            session=SLOW_LOOPBACK).start()
        try:
            data = _json(300_000)
            await _echo(stack, data)
            assert stack.client.driver is not None
            cs = stack.client.driver.session.statistics()
            (driver,) = stack.server.sessions.values()
            ss = driver.session.statistics()
            assert (cs.compression, ss.compression) == expected
            if expected[0] == "off":
                assert cs.payload_bytes_sent == cs.bytes_sent
                assert ss.payload_bytes_sent == ss.bytes_sent
            else:
                assert cs.payload_bytes_sent < cs.bytes_sent * 0.5
        finally:
            await stack.close()

    asyncio.run(main())


async def _handshake(stack: Stack, hello: bytes) -> tuple[Status, bytes]:
    """Message 1 with `hello` as its payload; the status and message 2's payload."""
    raw = Preamble(TransportKind.NEW, Suite.AESGCM_SHA256).encode()
    hs = HandshakeState(Suite.AESGCM_SHA256.noise_name, initiator=True,
                        prologue=PROLOGUE + raw, s=stack.client_key,
                        rs=public_key(stack.server_key))
    msg1 = hs.write_message(hello)
    reader, writer = await asyncio.open_connection("127.0.0.1", stack.server_port)
    writer.write(raw + HANDSHAKE_LEN.pack(len(msg1)) + msg1)
    status, length = REPLY.unpack(await asyncio.wait_for(reader.readexactly(REPLY.size), 10))
    body = await reader.readexactly(length)
    writer.close()
    if Status(status) is not Status.OK:
        return Status(status), body
    return Status(status), hs.read_message(body)


def test_accepted_answers_the_hello_it_got() -> None:
    async def main() -> None:
        stack = await Stack().start()
        try:
            # 8 bytes, as from a client older than compression: a 1-byte ACCEPTED.
            assert await _handshake(stack, HELLO.pack(time.time_ns())) == (Status.OK, b"\x00")
            # An offer of zstd: ACCEPTED and the choice.
            status, payload = await _handshake(stack, HELLO_COMPRESS.pack(time.time_ns(), ZSTD))
            assert (status, payload) == (Status.OK, bytes([0, ZSTD]))
            # zstd with history, where offered (a client older than history
            # offers zstd alone, above).
            status, payload = await _handshake(
                stack, HELLO_COMPRESS.pack(time.time_ns(), ZSTD | ZSTD_HISTORY))
            assert (status, payload) == (Status.OK, bytes([0, ZSTD_HISTORY]))
            status, payload = await _handshake(
                stack, HELLO_COMPRESS.pack(time.time_ns(), ZSTD_HISTORY))
            assert (status, payload) == (Status.OK, bytes([0, ZSTD_HISTORY]))
            # Bits the server does not know are not chosen.
            status, payload = await _handshake(stack, HELLO_COMPRESS.pack(time.time_ns(), 0xFC))
            assert (status, payload) == (Status.OK, b"\x00\x00")
            status, body = await _handshake(stack, HELLO_COMPRESS.pack(time.time_ns(), 1) + b"x")
            assert status is Status.HANDSHAKE_FAILED
            assert b"expected 8 or 9" in body
        finally:
            await stack.close()

    asyncio.run(main())


def test_a_server_that_does_not_compress_answers_an_offer_with_none() -> None:
    async def main() -> None:
        stack = await Stack(server_compression=OFF).start()
        try:
            status, payload = await _handshake(stack, HELLO_COMPRESS.pack(time.time_ns(), ZSTD))
            assert (status, payload) == (Status.OK, b"\x00\x00")
        finally:
            await stack.close()

    asyncio.run(main())
