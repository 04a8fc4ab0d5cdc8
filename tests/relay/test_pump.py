"""The relay's byte pump: splice both ways, in order, half-closes carried, nothing leaked."""

from __future__ import annotations

import asyncio
import hashlib
import os
import socket
from collections.abc import Awaitable, Callable

import pytest
import uvloop

from roam.relay.pump import SpliceStats, splice

# The relay runs on asyncio's loop: uvloop (libuv) stops a socket's readiness
# watcher on POLLERR without calling the reader, so a reset that follows data
# is never seen there; everything else works on both.
LOOPS = pytest.mark.parametrize("loop_name", ["asyncio", "uvloop"])


def run(main: Callable[[], Awaitable[None]], loop_name: str) -> None:
    factory = uvloop.new_event_loop if loop_name == "uvloop" else None
    with asyncio.Runner(loop_factory=factory) as runner:
        runner.run(asyncio.wait_for(main(), 60))  # type: ignore[arg-type]


def pair() -> tuple[socket.socket, socket.socket]:
    """Two ends of one loopback TCP connection: (outer end, relay's end)."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)
        outer = socket.create_connection(listener.getsockname())
        inner, _ = listener.accept()
    inner.setblocking(False)
    outer.setblocking(False)
    return outer, inner


async def send_all(sock: socket.socket, data: bytes, close: bool = True) -> None:
    await asyncio.get_running_loop().sock_sendall(sock, data)
    if close:
        sock.shutdown(socket.SHUT_WR)


async def read_all(sock: socket.socket) -> bytes:
    loop, out = asyncio.get_running_loop(), bytearray()
    while chunk := await loop.sock_recv(sock, 1 << 16):
        out += chunk
    return bytes(out)


def fds() -> int:
    return len(os.listdir("/proc/self/fd"))


@LOOPS
def test_both_ways_at_once_byte_exact_with_what_came_first(loop_name: str) -> None:
    up, down = os.urandom(8 << 20), os.urandom(6 << 20)

    async def main() -> None:
        client, relay_a = pair()
        server, relay_b = pair()
        stats = SpliceStats()
        pumping = asyncio.create_task(splice(relay_a, relay_b, stats=stats,
                                             first_to_b=b"HEAD", first_to_a=b"head"))
        got = await asyncio.gather(read_all(server), read_all(client),
                                   send_all(client, up), send_all(server, down))
        await pumping
        assert hashlib.sha256(got[0]).digest() == hashlib.sha256(b"HEAD" + up).digest()
        assert hashlib.sha256(got[1]).digest() == hashlib.sha256(b"head" + down).digest()
        assert (stats.a_to_b, stats.b_to_a) == (len(up) + 4, len(down) + 4)
        for s in (client, relay_a, server, relay_b):
            s.close()

    run(main, loop_name)


@LOOPS
def test_a_half_close_goes_on_while_the_other_way_still_carries(loop_name: str) -> None:
    async def main() -> None:
        client, relay_a = pair()
        server, relay_b = pair()
        pumping = asyncio.create_task(splice(relay_a, relay_b))
        await send_all(client, b"request")  # the client is done writing
        assert await read_all(server) == b"request"  # the server sees EOF
        await send_all(server, b"answer after the client's EOF")
        assert await read_all(client) == b"answer after the client's EOF"
        await pumping
        for s in (client, relay_a, server, relay_b):
            s.close()

    run(main, loop_name)


@pytest.mark.parametrize("loop_name", ["asyncio"])
def test_a_reset_ends_the_pump_without_an_exception(loop_name: str) -> None:
    async def main() -> None:
        client, relay_a = pair()
        server, relay_b = pair()
        pumping = asyncio.create_task(splice(relay_a, relay_b))
        await send_all(client, b"x" * 1000, close=False)
        client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
        client.close()
        # The reset reaches the pump as an error (it stops both ways and
        # returns; the relay then closes both sockets), or as an end of
        # stream, which goes on to the server: once it closes too the pump is
        # done. Either way without raising.
        reading = asyncio.create_task(read_all(server))
        done, _ = await asyncio.wait({pumping, reading}, return_when=asyncio.FIRST_COMPLETED)
        if pumping not in done:
            await reading
            server.close()
        await pumping
        reading.cancel()
        for s in (relay_a, server, relay_b):
            s.close()

    run(main, loop_name)


@LOOPS
def test_a_cancelled_pump_closes_its_pipes(loop_name: str) -> None:
    async def main() -> None:
        client, relay_a = pair()
        server, relay_b = pair()
        before = fds()
        pumping = asyncio.create_task(splice(relay_a, relay_b))
        await asyncio.sleep(0.05)
        assert fds() == before + 4  # two pipes
        pumping.cancel()
        with pytest.raises(asyncio.CancelledError):
            await pumping
        assert fds() == before
        for s in (client, relay_a, server, relay_b):
            s.close()

    run(main, loop_name)


def test_a_stalled_reader_holds_the_sender_back(monkeypatch: pytest.MonkeyPatch) -> None:
    async def main() -> None:
        client, relay_a = pair()
        server, relay_b = pair()
        stats = SpliceStats()
        pumping = asyncio.create_task(splice(relay_a, relay_b, stats=stats))
        loop = asyncio.get_running_loop()
        sent = 0
        chunk = b"y" * (1 << 16)
        # The server reads nothing: the sender's writes must stop completing.
        while True:
            try:
                async with asyncio.timeout(0.5):
                    await loop.sock_sendall(client, chunk)
                    sent += len(chunk)
            except TimeoutError:
                break
            assert sent < 64 << 20, "the pump took without end"
        moved = stats.a_to_b
        received = 0
        while received < moved:
            received += len(await loop.sock_recv(server, 1 << 20))
        pumping.cancel()
        with pytest.raises(asyncio.CancelledError):
            await pumping
        for s in (client, relay_a, server, relay_b):
            s.close()

    run(main, "asyncio")


def test_without_splice_a_copy_does_the_same(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delattr(os, "splice")
    data = os.urandom(1 << 20)

    async def main() -> None:
        client, relay_a = pair()
        server, relay_b = pair()
        stats = SpliceStats()
        pumping = asyncio.create_task(splice(relay_a, relay_b, stats=stats, first_to_b=b"H"))
        got, *_ = await asyncio.gather(read_all(server), send_all(client, data),
                                       send_all(server, b""))
        await pumping
        assert got == b"H" + data
        assert stats.a_to_b == len(data)  # the copy counts what it moved after the first
        for s in (client, relay_a, server, relay_b):
            s.close()

    run(main, "asyncio")


def test_blocking_sockets_are_our_own_mistake() -> None:
    a, b = socket.socketpair()

    async def main() -> None:
        with pytest.raises(ValueError, match="non-blocking"):
            await splice(a, b)

    run(main, "asyncio")
    a.close()
    b.close()

