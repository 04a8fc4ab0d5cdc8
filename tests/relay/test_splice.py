"""The relay's splice: both ways at once, in order, half-closes carried, resets
and cancellation survived, backpressure kept, nothing leaked; on asyncio's own
loop and on uvloop, over real loopback TCP."""

from __future__ import annotations

import asyncio
import errno
import fcntl
import hashlib
import os
import random
import socket
import struct
import termios
from collections.abc import Callable, Iterator
from typing import Protocol

import pytest
import uvloop

from roam.relay.splice import PipePool, SpliceStats, splice

MiB = 1 << 20
TCP_CLOSE = 7  # tcpi_state once a reset has arrived


class Connect(Protocol):
    def __call__(self, buffers: int | None = None) -> tuple[socket.socket, socket.socket]: ...


@pytest.fixture(params=["asyncio", "uvloop"])
def runner(request: pytest.FixtureRequest) -> Iterator[asyncio.Runner]:
    factory = uvloop.new_event_loop if request.param == "uvloop" else None
    with asyncio.Runner(loop_factory=factory) as running:
        yield running


@pytest.fixture
def connect() -> Iterator[Connect]:
    """Loopback TCP connections, closed after the test whatever happens."""
    opened: list[socket.socket] = []

    def pair(buffers: int | None = None) -> tuple[socket.socket, socket.socket]:
        """(the peer's end, the relay's end) of one connection. `buffers`
        fixes every send and receive buffer, which also stops the kernel from
        growing them, so what is in flight has a known bound."""
        with socket.socket() as listener:
            peer = socket.socket()
            opened.append(peer)
            for sock in (listener, peer):  # an accepted socket inherits the listener's
                if buffers is not None:
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, buffers)
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, buffers)
            listener.bind(("127.0.0.1", 0))
            listener.listen(1)
            peer.connect(listener.getsockname())
            relay, _ = listener.accept()
            opened.append(relay)
        peer.setblocking(False)
        relay.setblocking(False)
        return peer, relay

    yield pair
    for sock in opened:
        sock.close()


@pytest.fixture(scope="module")
def data() -> Callable[[int, int], bytes]:
    made: dict[tuple[int, int], bytes] = {}

    def of(size: int, seed: int) -> bytes:
        if (size, seed) not in made:
            made[size, seed] = random.Random(seed).randbytes(size)
        return made[size, seed]

    return of


def fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


async def send(sock: socket.socket, data: bytes, *, end: bool = True) -> None:
    await asyncio.get_running_loop().sock_sendall(sock, data)
    if end:
        sock.shutdown(socket.SHUT_WR)


async def receive(sock: socket.socket, size: int | None = None) -> bytes:
    """`size` bytes, or (without) everything up to the end of stream."""
    loop, got = asyncio.get_running_loop(), bytearray()
    while size is None or len(got) < size:
        chunk = await loop.sock_recv(sock, MiB if size is None else min(MiB, size - len(got)))
        if not chunk:
            assert size is None, f"end of stream after {len(got)} of {size} bytes"
            break
        got += chunk
    return bytes(got)


async def receive_digest(sock: socket.socket) -> tuple[int, str]:
    """Length and hash of everything up to the end of stream, without keeping it."""
    loop, digest, total = asyncio.get_running_loop(), hashlib.sha256(), 0
    buf = bytearray(MiB)
    while n := await loop.sock_recv_into(sock, buf):
        digest.update(memoryview(buf)[:n])
        total += n
    return total, digest.hexdigest()


async def settled(probe: Callable[[], object], checks: int = 10, every: float = 0.01) -> object:
    """Wait until `probe()` gives the same value `checks` times in a row."""
    last, same = probe(), 0
    while same < checks:
        await asyncio.sleep(every)
        now = probe()
        same = same + 1 if now == last else 0
        last = now
    return last


async def until(condition: Callable[[], bool]) -> None:
    while not condition():  # noqa: ASYNC110  (fd counts and stats have no event to wait on)
        await asyncio.sleep(0.005)


def reset(sock: socket.socket) -> None:
    """Close with a reset rather than an end of stream (SO_LINGER on, 0 s)."""
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


def tcp_state(sock: socket.socket) -> int:
    return sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 1)[0]


def assert_unwatched(*socks: socket.socket) -> None:
    """No reader or writer of the splice's is left on the loop."""
    loop = asyncio.get_running_loop()
    for sock in socks:
        assert not loop.remove_reader(sock.fileno()), f"a reader is left on {sock}"
        assert not loop.remove_writer(sock.fileno()), f"a writer is left on {sock}"


async def both_ways(connect: Connect, up: bytes, down: bytes, *, first_to_b: bytes = b"",
                    first_to_a: bytes = b"") -> SpliceStats:
    """`up` from the client and `down` from the server at once, each side then
    ending its stream; every byte checked, the splice's work left behind."""
    client, relay_a = connect()
    server, relay_b = connect()
    before = fds()
    stats = SpliceStats()
    splicing = asyncio.create_task(splice(relay_a, relay_b, stats=stats, first_to_b=first_to_b,
                                          first_to_a=first_to_a))
    at_server, at_client, _, _ = await asyncio.gather(
        receive_digest(server), receive_digest(client), send(client, up), send(server, down))
    await splicing
    assert at_server == (len(first_to_b) + len(up), sha(first_to_b + up))
    assert at_client == (len(first_to_a) + len(down), sha(first_to_a + down))
    assert (stats.a_to_b, stats.b_to_a) == (len(first_to_b) + len(up),
                                            len(first_to_a) + len(down))
    assert fds() == before
    assert_unwatched(relay_a, relay_b)
    return stats


def test_32_mib_each_way_at_once_byte_exact(runner: asyncio.Runner, connect: Connect,
                                            data: Callable[[int, int], bytes]) -> None:
    up, down = data(32 * MiB, 1), data(32 * MiB, 2)

    async def main() -> None:
        async with asyncio.timeout(20):
            await both_ways(connect, up, down)

    runner.run(main())


def test_first_bytes_go_before_anything_spliced(runner: asyncio.Runner, connect: Connect,
                                                data: Callable[[int, int], bytes]) -> None:
    # More first bytes than the small buffers take at once, so they have to
    # wait for writability while the source already has data waiting.
    first_to_b, first_to_a = data(2 * MiB, 3), b"the relay's welcome"
    up, down = data(MiB, 4), data(MiB, 5)

    async def main() -> None:
        async with asyncio.timeout(10):
            client, relay_a = connect(buffers=64 * 1024)
            server, relay_b = connect(buffers=64 * 1024)
            # Already queued at the relay before the splice begins.
            await send(client, up[:16 * 1024], end=False)
            await send(server, down[:16 * 1024], end=False)
            stats = SpliceStats()
            splicing = asyncio.create_task(splice(
                relay_a, relay_b, stats=stats, first_to_b=first_to_b, first_to_a=first_to_a))
            at_server, at_client, _, _ = await asyncio.gather(
                receive(server), receive(client),
                send(client, up[16 * 1024:]), send(server, down[16 * 1024:]))
            await splicing
            assert sha(at_server) == sha(first_to_b + up)
            assert at_client[:len(first_to_a)] == first_to_a
            assert sha(at_client) == sha(first_to_a + down)
            assert (stats.a_to_b, stats.b_to_a) == (len(first_to_b) + len(up),
                                                    len(first_to_a) + len(down))

    runner.run(main())


@pytest.mark.parametrize("first_to_end", ["client", "server"])
def test_a_half_close_is_carried_while_the_other_way_goes_on(
        runner: asyncio.Runner, connect: Connect, data: Callable[[int, int], bytes],
        first_to_end: str) -> None:
    answer = data(2 * MiB, 6)

    async def main() -> None:
        async with asyncio.timeout(10):
            client, relay_a = connect()
            server, relay_b = connect()
            ender, other = (client, server) if first_to_end == "client" else (server, client)
            stats = SpliceStats()
            splicing = asyncio.create_task(splice(relay_a, relay_b, stats=stats))
            await send(ender, b"request")  # and done writing
            assert await receive(other) == b"request"  # up to its end of stream
            # The other way still carries, both before and after its own end.
            await send(other, answer, end=False)
            assert sha(await receive(ender, len(answer))) == sha(answer)
            assert not splicing.done()
            other.shutdown(socket.SHUT_WR)
            assert await receive(ender) == b""
            await splicing
            assert sorted((stats.a_to_b, stats.b_to_a)) == [len(b"request"), len(answer)]
            assert_unwatched(relay_a, relay_b)

    runner.run(main())


@pytest.mark.parametrize("how", ["idle", "right after data", "after an end the relay has not read",
                                 "by the side being written to"])
def test_a_reset_ends_both_ways_without_an_exception(
        runner: asyncio.Runner, connect: Connect, data: Callable[[int, int], bytes],
        how: str) -> None:
    async def main() -> None:
        async with asyncio.timeout(10):
            client, relay_a = connect()
            server, relay_b = connect()
            before = fds()
            stats = SpliceStats()
            sending = None
            if how == "after an end the relay has not read":
                # The end of stream and then the reset both wait at the relay
                # before it reads: a plain read sees only the end.
                await send(client, b"bye")
                reset(client)
                await until(lambda: tcp_state(relay_a) == TCP_CLOSE)
            splicing = asyncio.create_task(splice(relay_a, relay_b, stats=stats))
            if how == "idle":
                await send(client, b"hello", end=False)
                assert await receive(server, 5) == b"hello"
                reset(client)
            elif how == "right after data":
                await send(client, data(256 * 1024, 7), end=False)
                reset(client)
            elif how == "by the side being written to":
                sending = asyncio.create_task(send(client, data(32 * MiB, 8)))
                await until(lambda: stats.a_to_b > MiB)
                reset(server)
            # Returns although the side still open neither wrote nor ended:
            # both ways stopped.
            await splicing
            assert_unwatched(relay_a, relay_b)
            assert fds() == before - 1  # the pipes are closed, and the reset end
            if sending is not None:
                sending.cancel()

    runner.run(main())


def test_a_reset_behind_much_queued_data_still_ends_the_splice(
        runner: asyncio.Runner, connect: Connect, data: Callable[[int, int], bytes]) -> None:
    """The reset comes while the relay is held back, behind more queued data
    than one readiness callback moves through a one-page pipe: a loop that
    reports the error once (uvloop) must not be missed."""

    async def main() -> None:
        async with asyncio.timeout(10):
            client, relay_a = connect(buffers=MiB)
            server, relay_b = connect(buffers=64 * 1024)
            before = fds()
            stats = SpliceStats()
            splicing = asyncio.create_task(splice(relay_a, relay_b, stats=stats,
                                                  pipe_size=4096))
            sending = asyncio.create_task(send(client, data(8 * MiB, 13)))
            async with asyncio.timeout(5):
                await settled(lambda: stats.a_to_b)
            queued = bytearray(4)
            fcntl.ioctl(relay_a, termios.FIONREAD, queued)
            assert int.from_bytes(queued, "little") > 256 * 1024
            reset(client)
            sending.cancel()
            reading = asyncio.create_task(receive(server))  # the relay may go on now
            await splicing
            reading.cancel()
            assert_unwatched(relay_a, relay_b)
            assert fds() == before - 1

    runner.run(main())


def test_a_reader_that_stops_holds_the_sender_back(runner: asyncio.Runner, connect: Connect,
                                                   data: Callable[[int, int], bytes]) -> None:
    total, chunk, pipe = 16 * MiB, 64 * 1024, 64 * 1024
    payload = data(total, 9)

    async def main() -> None:
        async with asyncio.timeout(15):
            client, relay_a = connect(buffers=64 * 1024)
            server, relay_b = connect(buffers=64 * 1024)
            loop = asyncio.get_running_loop()
            stats = SpliceStats()
            splicing = asyncio.create_task(splice(relay_a, relay_b, stats=stats, pipe_size=pipe))
            sent = 0

            async def sender() -> None:
                nonlocal sent
                view = memoryview(payload)
                for offset in range(0, total, chunk):
                    await loop.sock_sendall(client, view[offset:offset + chunk])
                    sent += chunk
                client.shutdown(socket.SHUT_WR)

            sending = asyncio.create_task(sender())
            # The server reads nothing: the sender's progress and what the
            # relay delivered come to rest.
            async with asyncio.timeout(5):
                await settled(lambda: (sent, stats.a_to_b))
            # In flight: the four socket buffers on the way and one pipe.
            buffers = sum(s.getsockopt(socket.SOL_SOCKET, option) for s, option in (
                (client, socket.SO_SNDBUF), (relay_a, socket.SO_RCVBUF),
                (relay_b, socket.SO_SNDBUF), (server, socket.SO_RCVBUF)))
            assert 0 < stats.a_to_b <= sent
            assert sent <= buffers + pipe + 2 * chunk, (sent, buffers)
            assert not sending.done()
            # Once the server reads, everything comes through.
            got = await receive(server)
            await sending
            server.shutdown(socket.SHUT_WR)
            await splicing
            assert sha(got) == sha(payload)
            assert stats.a_to_b == total

    runner.run(main())


@pytest.mark.parametrize("when", ["idle", "held back"])
def test_a_cancelled_splice_closes_its_pipes(runner: asyncio.Runner, connect: Connect,
                                             data: Callable[[int, int], bytes],
                                             when: str) -> None:
    async def main() -> None:
        async with asyncio.timeout(10):
            client, relay_a = connect(buffers=64 * 1024)
            _server, relay_b = connect(buffers=64 * 1024)
            before = fds()
            stats = SpliceStats()
            splicing = asyncio.create_task(splice(relay_a, relay_b, stats=stats))
            sending = None
            if when == "idle":
                await asyncio.sleep(0.05)
                assert fds() == before  # an idle splice holds no pipe
            else:
                # The server reads nothing: the relay waits to write with a
                # pipe that is not empty, the only one it holds.
                sending = asyncio.create_task(send(client, data(8 * MiB, 10)))
                async with asyncio.timeout(5):
                    await settled(lambda: stats.a_to_b)
                assert stats.a_to_b > 0
                assert fds() == before + 2
            splicing.cancel()
            with pytest.raises(asyncio.CancelledError):
                await splicing
            assert fds() == before
            assert_unwatched(relay_a, relay_b)
            if sending is not None:
                sending.cancel()

    runner.run(main())


def test_without_splice_a_copy_does_the_same(runner: asyncio.Runner, connect: Connect,
                                             data: Callable[[int, int], bytes],
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delattr(os, "splice")
    up, down = data(4 * MiB, 11), data(4 * MiB, 12)

    async def main() -> None:
        async with asyncio.timeout(10):
            await both_ways(connect, up, down, first_to_b=b"head", first_to_a=b"HEAD")

    runner.run(main())


def test_sockets_that_may_block_are_the_callers_mistake(runner: asyncio.Runner) -> None:
    a, b = socket.socketpair()
    timed, timed_peer = socket.socketpair()
    timed.settimeout(5)
    try:
        for blocking in (a, timed):
            with pytest.raises(ValueError, match="non-blocking"):
                runner.run(splice(blocking, b))
    finally:
        for sock in (a, b, timed, timed_peer):
            sock.close()


def test_pipes_come_from_a_shared_pool_and_only_a_held_back_way_keeps_one(
        runner: asyncio.Runner, connect: Connect, data: Callable[[int, int], bytes]) -> None:
    """Many splices on one pool: idle ones hold no pipe, bytes that go straight
    through borrow one and give it back, a way whose destination is behind
    keeps exactly one until it catches up."""

    async def main() -> None:
        async with asyncio.timeout(15):
            pool = PipePool(spare=4)
            pairs = [(connect(buffers=64 * 1024), connect(buffers=64 * 1024))
                     for _ in range(20)]
            before = fds()
            tasks = [asyncio.create_task(splice(ra, rb, pool=pool))
                     for (_, ra), (_, rb) in pairs]
            await asyncio.sleep(0.05)
            assert pool.open == 0
            assert fds() == before
            for i, ((client, _), (server, _)) in enumerate(pairs):
                await send(client, data(4096, i), end=False)
                assert await receive(server, 4096) == data(4096, i)
            assert pool.open <= 1  # borrowed and given back, one at a time
            (client, _), (server, _) = pairs[0]
            sending = asyncio.create_task(send(client, data(8 * MiB, 99)))
            async with asyncio.timeout(5):
                await settled(lambda: pool.open)
            assert pool.open == 1
            got = asyncio.create_task(receive(server))
            await sending
            server.shutdown(socket.SHUT_WR)
            assert sha(await got) == sha(data(8 * MiB, 99))
            for (client, _), (server, _) in pairs[1:]:
                client.shutdown(socket.SHUT_WR)
                server.shutdown(socket.SHUT_WR)
            await asyncio.gather(*tasks)
            # Nothing is held now; what is open is kept for the next readable way.
            assert 1 <= pool.open <= pool.spare
            pool.close()
            assert pool.open == 0
            assert fds() == before

    runner.run(main())


def test_out_of_descriptors_a_read_goes_through_python(
        runner: asyncio.Runner, connect: Connect, data: Callable[[int, int], bytes]) -> None:
    class Exhausted(PipePool):
        def take(self) -> tuple[int, int, int]:
            raise OSError(errno.EMFILE, os.strerror(errno.EMFILE))

    up, down = data(2 * MiB, 21), data(2 * MiB, 22)

    async def main() -> None:
        async with asyncio.timeout(10):
            client, relay_a = connect()
            server, relay_b = connect()
            stats = SpliceStats()
            splicing = asyncio.create_task(splice(relay_a, relay_b, stats=stats,
                                                  pool=Exhausted()))
            results = await asyncio.gather(send(client, up), send(server, down),
                                           receive(server), receive(client))
            await splicing
            assert sha(results[2]) == sha(up)
            assert sha(results[3]) == sha(down)
            assert (stats.a_to_b, stats.b_to_a) == (len(up), len(down))

    runner.run(main())
