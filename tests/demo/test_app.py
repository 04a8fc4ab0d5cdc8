"""The demo's application against an echo service on loopback, faithful or not."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

from roam.demo.app import CHUNK, App, Pattern

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


def echo_changing(at: int | None) -> Handler:
    """An echo service; with `at`, it flips the byte at that offset."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        offset = 0
        while data := await reader.read(65536):
            if at is not None and offset <= at < offset + len(data):
                i = at - offset
                data = data[:i] + bytes([data[i] ^ 1]) + data[i + 1:]
            offset += len(data)
            writer.write(data)
            await writer.drain()
        writer.write_eof()
        writer.close()

    return handle


async def converse(handler: Handler, seconds: float) -> App:
    server = await asyncio.start_server(handler, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    app = App()
    task = asyncio.create_task(app.run("127.0.0.1", port))
    await asyncio.sleep(seconds)
    app.stop()
    await task
    server.close()
    return app


def test_a_faithful_echo_comes_back_intact() -> None:
    app = asyncio.run(converse(echo_changing(None), 0.3))
    stats = app.statistics()
    assert stats.intact, stats
    assert stats.bytes_sent == stats.bytes_echoed >= 10 * CHUNK


def test_one_changed_byte_is_caught_where_it_happened() -> None:
    app = asyncio.run(converse(echo_changing(3 * CHUNK + 17), 0.3))
    stats = app.statistics()
    assert not stats.intact
    assert stats.mismatch_at == 3 * CHUNK + 17
    assert stats.bytes_sent == stats.bytes_echoed


def test_an_echo_that_stops_early_is_an_error() -> None:
    async def half(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(await reader.readexactly(CHUNK // 2))
        await writer.drain()
        writer.close()

    stats = asyncio.run(converse(half, 0.2)).statistics()
    assert not stats.intact
    assert stats.error is not None


def test_a_pause_in_the_echo_is_measured() -> None:
    async def pausing(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        first = True
        while data := await reader.read(65536):
            if first:
                await asyncio.sleep(0.4)
                first = False
            writer.write(data)
            await writer.drain()
        writer.write_eof()
        writer.close()

    stats = asyncio.run(converse(pausing, 0.8)).statistics()
    assert stats.intact
    assert 0.35 <= stats.longest_wait < 1.0


def test_the_pattern_is_the_same_however_it_is_sliced() -> None:
    pattern = Pattern(7)
    whole = pattern.slice(0, 3 << 20)
    assert pattern.slice(1_000_000, 2_000_000) == whole[1_000_000:3_000_000]
    assert whole[:4096] != whole[1 << 20:(1 << 20) + 4096]  # no period of 1 MiB
