"""The relay daemon in this process, on loopback: splices, refusals, and what
strangers can make it hold."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
import redis as sync_redis

from roam.crypto.keys import generate_private_key, public_key, short_id
from roam.lab.redis import RedisServer, find_redis, free_port
from roam.relay import driver as relay_driver
from roam.relay.config import RelayConfig
from roam.relay.driver import Relay
from roam.relay.fleet import RELAYS, claims_key
from roam.relay.hop import Hop, HopKind, Next, Status, decode_reply, reply_wanted, seal_hop
from tests.conftest import require

RELAY = generate_private_key()
CLIENT = generate_private_key()
SERVER = public_key(generate_private_key())


async def _echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    while data := await reader.read(65536):
        writer.write(data)
        await writer.drain()
    writer.close()


@asynccontextmanager
async def running(admit: dict[bytes, str] | None = None,
                  **kwargs: int) -> AsyncIterator[tuple[Relay, int, int]]:
    """A relay admitting CLIENT (and `admit`), and an echo service it may dial."""
    echo = await asyncio.start_server(_echo, "127.0.0.1", 0)
    relay = Relay(RelayConfig(("127.0.0.1", 0), RELAY,
                              admit_keys={public_key(CLIENT): "me", **(admit or {})}),
                  **kwargs)
    _, port = relay.open()
    task = asyncio.create_task(relay.run(), name="relay-under-test")
    try:
        yield relay, port, echo.sockets[0].getsockname()[1]
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        echo.close()
        await echo.wait_closed()


async def _reply(reader: asyncio.StreamReader) -> tuple[Status, bytes]:
    got = b""
    while (decoded := decode_reply(got)) is None:
        got += await reader.readexactly(reply_wanted(got))
    return decoded[0], decoded[1]


def _header(echo_port: int, stamp_ns: int | None = None) -> bytes:
    hop = Hop(HopKind.CLIENT, stamp_ns or time.time_ns(), SERVER, Next.DIAL, SERVER,
              f"127.0.0.1:{echo_port}")
    return seal_hop(hop, CLIENT, public_key(RELAY))


def run(body: Callable[[], Awaitable[None]]) -> None:
    asyncio.run(asyncio.wait_for(body(), 30))


def test_an_admitted_client_is_spliced_to_the_address_it_names() -> None:
    async def body() -> None:
        async with running() as (relay, port, echo):
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(_header(echo) + b"first bytes, in the same segment")
            status, ticket = await _reply(reader)
            assert (status, len(ticket) > 0) == (Status.OK, True)
            assert await reader.readexactly(32) == b"first bytes, in the same segment"
            writer.write(b"x" * 100_000)
            assert await reader.readexactly(100_000) == b"x" * 100_000
            writer.close()
            assert relay.status()["spliced"] == 1

    run(body)


def test_garbage_is_refused_with_its_reason_and_the_relay_goes_on() -> None:
    async def body() -> None:
        async with running() as (relay, port, echo):
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(b"GET / HTTP/1.1\r\n\r\n")
            status, reason = await _reply(reader)
            assert status is Status.BAD_HEADER
            assert b"not a relay hop header" in reason
            assert await reader.read() == b""  # and closed
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(_header(echo))
            assert (await _reply(reader))[0] is Status.OK
            writer.close()
            assert relay.status()["refused"] == {"BAD_HEADER": 1}

    run(body)


def test_beyond_max_pending_undecided_connections_a_newcomer_is_told_busy() -> None:
    async def body() -> None:
        async with running(max_pending=2) as (relay, port, echo):
            # Two strangers connect and send nothing.
            quiet = [await asyncio.open_connection("127.0.0.1", port) for _ in range(2)]
            await asyncio.sleep(0.1)  # accepted and waiting for their headers
            reader, _ = await asyncio.open_connection("127.0.0.1", port)
            status, reason = await _reply(reader)
            assert status is Status.BUSY
            assert b"2 connections are waiting to be admitted" in reason
            for _, w in quiet:
                w.close()
            # Once they are gone, a client is served again.
            for _ in range(50):
                if relay._pending == 0:
                    break
                await asyncio.sleep(0.02)
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(_header(echo))
            assert (await _reply(reader))[0] is Status.OK
            writer.close()
            assert relay.status()["refused"] == {"BUSY": 1}

    run(body)


def test_a_stranger_who_sends_nothing_is_dropped_after_the_header_timeout(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(relay_driver, "HEADER_TIMEOUT_S", 0.2)

    async def body() -> None:
        async with running() as (relay, port, _):
            reader, _ = await asyncio.open_connection("127.0.0.1", port)
            assert await reader.read() == b""  # closed, without a word
            assert relay._pending == 0

    run(body)


def test_a_replayed_header_is_refused_and_the_first_was_served() -> None:
    async def body() -> None:
        async with running() as (_, port, echo):
            header = _header(echo)
            results = []
            for _ in range(2):
                reader, writer = await asyncio.open_connection("127.0.0.1", port)
                writer.write(header)
                results.append(await _reply(reader))
                writer.close()
            assert results[0][0] is Status.OK
            assert results[1][0] is Status.NOT_ADMITTED
            assert b"replayed" in results[1][1]

    run(body)


@asynccontextmanager
async def fleet_relay(url: str) -> AsyncIterator[tuple[Relay, int]]:
    """A relay of a fleet (directory `url`) admitting CLIENT."""
    relay = Relay(RelayConfig(("127.0.0.1", 0), RELAY, admit_keys={public_key(CLIENT): "me"},
                              directory=url, fleet_address="127.0.0.1:1"))
    _, port = relay.open()
    assert relay.fleet is not None
    await relay.fleet.start()
    task = asyncio.create_task(relay.run(), name="fleet-relay-under-test")
    try:
        yield relay, port
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task


def _uplink_header() -> bytes:
    """A client's header asking for the uplink of SERVER (next hop 0)."""
    return seal_hop(Hop(HopKind.CLIENT, time.time_ns(), SERVER, Next.UPLINK_OF_TARGET),
                    CLIENT, public_key(RELAY))


def test_a_fleet_peer_that_answers_garbage_is_unreachable_and_the_relay_goes_on(
        tmp_path: Path) -> None:
    require(find_redis() is not None, "redis-server is not installed")

    async def liar(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read(4096)
        writer.write(b"HTTP/1.1 400 Bad Request\r\n\r\n")
        await writer.drain()
        writer.close()

    async def body(url: str) -> None:
        async with fleet_relay(url) as (relay, port):
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(_uplink_header())
            assert await _reply(reader) == (
                Status.UNKNOWN_TARGET,
                f"no uplink of server {short_id(SERVER)} in the fleet".encode())
            writer.close()
            # Another relay claims SERVER's uplinks, and answers nonsense.
            peer = await asyncio.start_server(liar, "127.0.0.1", 0)
            other = public_key(generate_private_key())
            until = int((time.time() + 60) * 1000)
            store = sync_redis.Redis.from_url(url)
            store.hset(RELAYS, other.hex(),
                       f"127.0.0.1:{peer.sockets[0].getsockname()[1]} {until}")
            store.hset(claims_key(SERVER), other.hex(), f"1 {'ab' * 16} {until}")
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(_uplink_header())
            status, reason = await _reply(reader)
            assert status is Status.UNREACHABLE
            assert b"the relay answered with something else" in reason
            writer.close()
            assert relay.fleet is not None
            assert relay.fleet.status()["suspects"] == [short_id(other)]
            peer.close()
            assert relay.status()["refused"] == {"UNKNOWN_TARGET": 1, "UNREACHABLE": 1}

    with RedisServer(tmp_path / "redis", port=free_port()) as server:
        run(lambda: body(server.url))


def test_a_client_waits_for_the_next_spare_when_every_uplink_is_taken() -> None:
    uplink_key = generate_private_key()
    target = public_key(uplink_key)

    async def body() -> None:
        async with running({target: "server"}) as (relay, port, _):
            instance = b"i" * 16

            async def uplink() -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
                r, w = await asyncio.open_connection("127.0.0.1", port)
                w.write(seal_hop(Hop(HopKind.UPLINK, time.time_ns(), instance=instance),
                                 uplink_key, public_key(RELAY)))
                assert (await _reply(r))[0] is Status.OK
                return r, w

            def client_header() -> bytes:
                return seal_hop(Hop(HopKind.CLIENT, time.time_ns(), target,
                                    Next.UPLINK_OF_TARGET), CLIENT, public_key(RELAY))

            up_r, _up_w = await uplink()
            assert relay.uplinks.held() == {target: instance}
            first_r, first_w = await asyncio.open_connection("127.0.0.1", port)
            first_w.write(client_header())
            assert (await _reply(first_r))[0] is Status.OK
            assert await up_r.readexactly(1) == relay_driver.GO
            # Every spare is taken: the next client waits for the one the
            # server dials now, instead of being refused.
            second_r, second_w = await asyncio.open_connection("127.0.0.1", port)
            second_w.write(client_header() + b"hello")
            await asyncio.sleep(0.2)
            next_r, _next_w = await uplink()
            assert (await _reply(second_r))[0] is Status.OK
            assert await next_r.readexactly(6) == relay_driver.GO + b"hello"
            for w in (first_w, second_w):
                w.close()

    run(body)
