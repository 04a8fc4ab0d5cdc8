from __future__ import annotations

import asyncio
import contextlib
import hashlib
import math
import random
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest

from roam.lab.linkemu import LinkEmulator

LOOPBACK = "127.0.0.1"
# Ceiling for any single test; generous because CI machines can be slow.
TEST_TIMEOUT = 60.0
# How long a read must stay silent before we call the path black-holed.
SILENCE = 0.5


def run(coro: Awaitable[None]) -> None:
    async def bounded() -> None:
        await asyncio.wait_for(coro, TEST_TIMEOUT)

    asyncio.run(bounded())


async def until(predicate: Callable[[], bool], within: float = 10.0) -> None:
    deadline = time.monotonic() + within
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError("condition not reached in time")
        await asyncio.sleep(0.01)


class EchoProtocol(asyncio.Protocol):
    def __init__(self, server: EchoServer) -> None:
        self.server = server
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        self.server.accepted += 1
        self.server.open.add(self)

    def data_received(self, data: bytes) -> None:
        self.server.bytes_received += len(data)
        assert self.transport is not None
        self.transport.write(data)

    def eof_received(self) -> bool:
        # Returning False closes our side once everything echoed is flushed.
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self.server.open.discard(self)
        self.server.closed.append(exc)


class EchoServer:
    """Echoes every byte back; records what happened to its connections."""

    def __init__(self) -> None:
        self.accepted = 0
        self.bytes_received = 0
        self.open: set[EchoProtocol] = set()
        self.closed: list[Exception | None] = []
        self._server: asyncio.Server | None = None

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(lambda: EchoProtocol(self), LOOPBACK, 0)

    @property
    def address(self) -> tuple[str, int]:
        assert self._server is not None
        host, port = self._server.sockets[0].getsockname()[:2]
        return host, port

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            for protocol in list(self.open):
                if protocol.transport is not None:
                    protocol.transport.abort()
            await self._server.wait_closed()
            await asyncio.sleep(0)


@contextlib.asynccontextmanager
async def linked(**options: Any) -> AsyncIterator[tuple[EchoServer, LinkEmulator]]:
    echo = EchoServer()
    await echo.start()
    emulator = LinkEmulator((LOOPBACK, 0), echo.address, **options)
    try:
        await emulator.start()
        yield echo, emulator
    finally:
        await emulator.close()
        await echo.close()


@contextlib.asynccontextmanager
async def connection(
    address: tuple[str, int],
) -> AsyncIterator[tuple[asyncio.StreamReader, asyncio.StreamWriter]]:
    reader, writer = await asyncio.open_connection(*address)
    try:
        yield reader, writer
    finally:
        if writer.transport.get_write_buffer_size():
            # Whatever is still queued may never drain; do not wait for it.
            writer.transport.abort()
        else:
            writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()


async def ping(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, payload: bytes = b"ping"
) -> float:
    """Send `payload`, wait for the echo, return the round-trip time."""
    start = time.monotonic()
    writer.write(payload)
    await writer.drain()
    echoed = await asyncio.wait_for(reader.readexactly(len(payload)), 10)
    assert echoed == payload
    return time.monotonic() - start


async def assert_silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    writer.write(b"anyone there?")
    await writer.drain()
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(reader.read(100), SILENCE)
    assert not reader.at_eof()
    assert not writer.is_closing()
    sock = writer.get_extra_info("socket")
    assert sock.fileno() != -1


async def assert_reset_or_eof(reader: asyncio.StreamReader) -> None:
    try:
        data = await asyncio.wait_for(reader.read(100), 10)
    except ConnectionResetError:
        return
    assert data == b""


async def transfer(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, payload: bytes
) -> bytes:
    """Write `payload` in pieces while reading the echo concurrently."""

    async def send() -> None:
        view = memoryview(payload)
        for offset in range(0, len(payload), 100_000):
            writer.write(view[offset : offset + 100_000])
            await writer.drain()

    sender = asyncio.create_task(send())
    try:
        received = await reader.readexactly(len(payload))
    finally:
        await sender
    return received


def test_bytes_pass_byte_exact() -> None:
    payload = random.Random(1).randbytes(4 << 20)

    async def main() -> None:
        async with linked() as (echo, emulator), connection(emulator.address) as (r, w):
            received = await transfer(r, w, payload)
            assert hashlib.sha256(received).digest() == hashlib.sha256(payload).digest()
            stats = emulator.statistics()
            assert stats.bytes_to_target == len(payload)
            assert stats.bytes_to_client == len(payload)
            assert stats.bytes_dropped == 0
            assert stats.connections_total == stats.connections_open == 1
            assert stats.mode == "pass"
            assert echo.bytes_received == len(payload)

    run(main())


def test_order_kept_while_delay_and_rate_change() -> None:
    payload = random.Random(2).randbytes(1 << 20)

    async def main() -> None:
        async with (
            linked(delay_ms=40, rate_bps=4_000_000) as (_, emulator),
            connection(emulator.address) as (r, w),
        ):

            async def meddle() -> None:
                # Lowering the delay mid-stream must not let later bytes overtake.
                for delay, rate in ((0, None), (25, 2_000_000), (0, 8_000_000), (5, None)):
                    await asyncio.sleep(0.05)
                    emulator.set_delay(delay)
                    emulator.set_rate(rate)

            meddler = asyncio.create_task(meddle())
            received = await transfer(r, w, payload)
            await meddler
            assert hashlib.sha256(received).digest() == hashlib.sha256(payload).digest()

    run(main())


def test_half_close_passes_through() -> None:
    async def main() -> None:
        async with linked() as (echo, emulator), connection(emulator.address) as (r, w):
            w.write(b"last words")
            w.write_eof()
            assert await asyncio.wait_for(r.read(), 10) == b"last words"
            await until(lambda: emulator.statistics().connections_open == 0)
            await until(lambda: echo.closed == [None])

    run(main())


def test_cut_resets_both_sides_and_new_connections_work() -> None:
    async def main() -> None:
        async with linked() as (echo, emulator):
            async with connection(emulator.address) as (r, w):
                await ping(r, w)
                emulator.cut()
                await assert_reset_or_eof(r)
                await until(lambda: len(echo.closed) == 1)
                assert isinstance(echo.closed[0], ConnectionResetError)
                stats = emulator.statistics()
                assert stats.cuts == 1
                assert stats.connections_open == 0

            async with connection(emulator.address) as (r, w):
                await ping(r, w)
            assert emulator.statistics().connections_total == 2

    run(main())


def test_blackhole_is_silent_keeps_connections_open_and_restore_only_helps_new_ones() -> None:
    async def main() -> None:
        async with (
            linked() as (echo, emulator),
            connection(emulator.address) as (r1, w1),
        ):
            await ping(r1, w1)
            received_before = echo.bytes_received

            emulator.blackhole()
            assert emulator.mode == "blackhole"
            await assert_silent(r1, w1)
            assert echo.bytes_received == received_before
            assert echo.closed == []
            assert len(echo.open) == 1

            # A connection made during the black hole is accepted but goes nowhere.
            async with connection(emulator.address) as (r2, w2):
                await assert_silent(r2, w2)
                assert echo.accepted == 1

                emulator.restore()
                assert emulator.statistics().mode == "pass"
                async with connection(emulator.address) as (r3, w3):
                    await ping(r3, w3)
                    # Connections black-holed before restore() stay dead.
                    await assert_silent(r1, w1)
                    await assert_silent(r2, w2)

                    stats = emulator.statistics()
                    assert stats.blackholes == 1
                    assert stats.connections_open == 3
                    assert stats.bytes_dropped >= 4 * len(b"anyone there?")
                    assert echo.closed == []

    run(main())


def test_blackholed_connection_is_forgotten_once_both_ends_leave() -> None:
    async def main() -> None:
        async with linked() as (echo, emulator):
            async with connection(emulator.address) as (r, w):
                await ping(r, w)
                emulator.blackhole()
            # The client left; the server side stays until the server gives up.
            await asyncio.sleep(0.1)
            assert emulator.statistics().connections_open == 1
            assert len(echo.open) == 1
            for protocol in list(echo.open):
                assert protocol.transport is not None
                protocol.transport.close()
            await until(lambda: emulator.statistics().connections_open == 0)

    run(main())


def test_cut_during_blackhole_resets_silent_connections() -> None:
    async def main() -> None:
        async with linked() as (_, emulator), connection(emulator.address) as (r, w):
            emulator.blackhole()
            await assert_silent(r, w)
            emulator.cut()
            await assert_reset_or_eof(r)
            assert emulator.statistics().connections_open == 0

    run(main())


def test_delay_adds_latency_each_way() -> None:
    async def main() -> None:
        async with linked(delay_ms=100) as (_, emulator), connection(emulator.address) as (r, w):
            await ping(r, w)
            assert await ping(r, w) >= 2 * 0.100 * 0.9

            emulator.set_delay(60)
            await ping(r, w)
            assert await ping(r, w) >= 2 * 0.060 * 0.9

    run(main())


def test_rate_caps_throughput() -> None:
    size = 60_000
    rate = 100_000

    async def main() -> None:
        async with linked(rate_bps=rate) as (_, emulator), connection(emulator.address) as (r, w):
            start = time.monotonic()
            await transfer(r, w, bytes(size))
            # Each direction is capped; the echo overlaps them, so one pass is the bound.
            assert time.monotonic() - start >= size / rate * 0.8

    run(main())


def test_rate_change_applies_to_open_connections() -> None:
    size = 30_000
    rate = 50_000

    async def main() -> None:
        async with linked() as (_, emulator), connection(emulator.address) as (r, w):
            await ping(r, w)
            emulator.set_rate(rate)
            start = time.monotonic()
            await transfer(r, w, bytes(size))
            assert time.monotonic() - start >= size / rate * 0.8

            emulator.set_rate(None)
            await transfer(r, w, bytes(size))

    run(main())


@pytest.mark.parametrize("delay_ms", [0.0, 50.0])
def test_buffering_stays_bounded_when_the_target_stops_reading(delay_ms: float) -> None:
    limit = 64 << 20

    async def main() -> None:
        # A listener that never accepts: the kernel completes the handshake and
        # then nothing ever reads.
        stuck = socket.socket()
        stuck.bind((LOOPBACK, 0))
        stuck.listen()
        emulator = LinkEmulator((LOOPBACK, 0), stuck.getsockname(), delay_ms=delay_ms)
        try:
            await emulator.start()
            async with connection(emulator.address) as (_, w):
                chunk = bytes(256 << 10)
                written = 0
                while written < limit:
                    w.write(chunk)
                    written += len(chunk)
                    try:
                        await asyncio.wait_for(w.drain(), 1.0)
                    except TimeoutError:
                        break
                assert written < limit
        finally:
            await emulator.close()
            stuck.close()

    run(main())


def test_unreachable_target_resets_the_client() -> None:
    async def main() -> None:
        placeholder = socket.socket()
        placeholder.bind((LOOPBACK, 0))
        closed_port = placeholder.getsockname()[1]
        placeholder.close()
        emulator = LinkEmulator((LOOPBACK, 0), (LOOPBACK, closed_port))
        try:
            await emulator.start()
            async with connection(emulator.address) as (r, _):
                await assert_reset_or_eof(r)
            await until(lambda: emulator.statistics().connections_open == 0)
        finally:
            await emulator.close()

    run(main())


def test_close_stops_listening_and_closes_connections() -> None:
    async def main() -> None:
        async with linked() as (echo, emulator):
            address = emulator.address
            async with connection(address) as (r, w):
                await ping(r, w)
                await emulator.close()
                await assert_reset_or_eof(r)
                await until(lambda: len(echo.closed) == 1)
                with pytest.raises(ConnectionRefusedError):
                    await asyncio.wait_for(asyncio.open_connection(*address), 10)
                assert emulator.statistics().connections_open == 0

    run(main())


def test_start_binds_port_zero_once() -> None:
    async def main() -> None:
        async with linked() as (_, emulator):
            host, port = emulator.address
            assert host == LOOPBACK
            assert port != 0
            with pytest.raises(RuntimeError):
                await emulator.start()

    run(main())


def test_address_before_start_is_an_error() -> None:
    emulator = LinkEmulator((LOOPBACK, 0), (LOOPBACK, 9))
    with pytest.raises(RuntimeError):
        _ = emulator.address


@pytest.mark.parametrize("delay", [-1.0, math.nan, math.inf])
def test_bad_delay_rejected(delay: float) -> None:
    with pytest.raises(ValueError, match="delay"):
        LinkEmulator((LOOPBACK, 0), (LOOPBACK, 9), delay_ms=delay)
    emulator = LinkEmulator((LOOPBACK, 0), (LOOPBACK, 9))
    with pytest.raises(ValueError, match="delay"):
        emulator.set_delay(delay)


@pytest.mark.parametrize("rate", [0, -5])
def test_bad_rate_rejected(rate: int) -> None:
    with pytest.raises(ValueError, match="rate"):
        LinkEmulator((LOOPBACK, 0), (LOOPBACK, 9), rate_bps=rate)
    emulator = LinkEmulator((LOOPBACK, 0), (LOOPBACK, 9))
    with pytest.raises(ValueError, match="rate"):
        emulator.set_rate(rate)
