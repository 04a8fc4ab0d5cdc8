"""Handing transports and packets between workers over real sockets (roam.transport.handoff)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import pytest

from roam.core.preamble import PREAMBLE, REPLY, Preamble, Status, Suite, TransportKind
from roam.core.workers import Routes, encode_transport
from roam.transport.handoff import Mesh
from roam.transport.protocol import TransportProtocol


@dataclass
class _Taken:
    """What one worker's mesh was handed."""

    transports: list[tuple[socket.socket, bytes]] = field(default_factory=list)
    datagrams: list[tuple[bytes, Any]] = field(default_factory=list)
    hellos: list[tuple[bytes, int]] = field(default_factory=list)
    arrived: asyncio.Event = field(default_factory=asyncio.Event)

    def hello(self, key: bytes, stamp: int) -> None:
        self.hellos.append((key, stamp))

    def transport(self, sock: socket.socket, data: bytes) -> None:
        self.transports.append((sock, data))
        self.arrived.set()

    def datagram(self, packet: bytes, source: Any) -> None:
        self.datagrams.append((packet, source))
        self.arrived.set()


@asynccontextmanager
async def _pair() -> AsyncIterator[tuple[Mesh, Mesh, _Taken, _Taken]]:
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    ta, tb = _Taken(), _Taken()
    m0 = Mesh(Routes(0), {1: a}, ta.transport, ta.datagram, ta.hello)
    m1 = Mesh(Routes(1), {0: b}, tb.transport, tb.datagram, tb.hello)
    m0.start()
    m1.start()
    try:
        yield m0, m1, ta, tb
    finally:
        m0.close()
        m1.close()
        for sock, _ in ta.transports + tb.transports:
            sock.close()


async def _until(check: Any, what: str) -> None:
    """Poll `check` (the meshes have no event for what they learn); fail after 5 s."""
    try:
        async with asyncio.timeout(5):
            while not check():  # noqa: ASYNC110
                await asyncio.sleep(0.005)
    except TimeoutError:
        raise AssertionError(f"no {what} within 5 s") from None


@asynccontextmanager
async def _accepted() -> AsyncIterator[tuple[TransportProtocol, socket.socket]]:
    """A TCP connection: the server's end in a TransportProtocol, the client's a socket."""
    loop = asyncio.get_running_loop()
    made: asyncio.Future[TransportProtocol] = loop.create_future()
    server = await loop.create_server(lambda: TransportProtocol(on_made=made.set_result),
                                      "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    client = socket.create_connection(("127.0.0.1", port))
    client.settimeout(5)
    try:
        yield await asyncio.wait_for(made, 5), client
    finally:
        client.close()
        server.close()


def test_a_transport_reaches_the_worker_holding_its_session_with_its_bytes() -> None:
    async def main() -> None:
        async with _pair() as (m0, m1, t0, t1), _accepted() as (proto, client):
            sid, key = os.urandom(16), os.urandom(32)
            m1.created(sid, key, 12345)
            await _until(lambda: m0.routes.owner(sid) == 1, "announcement")
            assert t0.hellos == [(key, 12345)]
            preamble = Preamble(TransportKind.RESUME, Suite.AESGCM_SHA256, sid).encode()
            first_record = os.urandom(300)
            client.sendall(preamble + first_record)
            # The first worker reads the preamble, and more comes with it.
            got = await proto.read_exactly(PREAMBLE.size, 5)
            await _until(lambda: len(proto._buf) == len(first_record), "the rest")
            assert m0.take(got, proto)
            await asyncio.wait_for(t1.arrived.wait(), 5)
            (sock, data), = t1.transports
            assert data == preamble + first_record  # nothing read is lost
            # The socket is the client's connection, alive: both directions.
            sock.setblocking(True)
            sock.sendall(b"from worker 1")
            assert client.recv(100) == b"from worker 1"
            client.sendall(b"more")
            assert sock.recv(100) == b"more"
            await _until(lambda: proto.lost, "the first worker lets go")
            # Its closing sent nothing: no FIN, no reset reached the client.
            client.setblocking(False)
            with pytest.raises(BlockingIOError):
                client.recv(100)
            assert (m0.handed_out, m1.handed_in) == (1, 1)

    asyncio.run(main())


def test_what_stays_is_not_taken() -> None:
    async def main() -> None:
        async with _pair() as (m0, _, _, _), _accepted() as (proto, _):
            unknown = Preamble(TransportKind.RESUME, Suite.AESGCM_SHA256, os.urandom(16))
            assert not m0.take(unknown.encode(), proto)
            assert not m0.take(Preamble(TransportKind.NEW, Suite.AESGCM_SHA256).encode(), proto)
            mine = os.urandom(16)
            m0.created(mine)
            resume = Preamble(TransportKind.RESUME, Suite.AESGCM_SHA256, mine)
            assert not m0.take(resume.encode(), proto)
            assert not proto.lost
            assert m0.handed_out == 0

    asyncio.run(main())


def test_a_worker_that_cannot_take_it_now_means_busy() -> None:
    async def main() -> None:
        async with _pair() as (m0, m1, _, _), _accepted() as (proto, client):
            sid = os.urandom(16)
            m1.created(sid)
            await _until(lambda: m0.routes.owner(sid) == 1, "announcement")
            # Worker 1 reads nothing meanwhile: its socket fills up.
            loop = asyncio.get_running_loop()
            peer = m0._peers[1]
            loop.remove_reader(m1._peers[0].fileno())
            filler = encode_transport(bytes(8000))
            with contextlib.suppress(BlockingIOError):
                while True:
                    peer.send(filler)
            with pytest.raises(BlockingIOError):
                peer.send(filler)
            preamble = Preamble(TransportKind.STANDBY, Suite.AESGCM_SHA256, sid).encode()
            assert m0.take(preamble, proto)
            status, _ = REPLY.unpack(client.recv(REPLY.size))
            assert Status(status) is Status.BUSY
            assert m0.refused_busy == 1
            assert m0.handed_out == 0

    asyncio.run(main())


def test_udp_packets_go_to_the_holder_once() -> None:
    async def main() -> None:
        async with _pair() as (m0, m1, t0, t1):
            sid = os.urandom(16)
            m1.created(sid)
            await _until(lambda: m0.routes.route_datagram(sid[:8]) == 1, "announcement")
            assert m0.forward_datagram(sid[:8], b"packet", ("192.0.2.9", 5000))
            await asyncio.wait_for(t1.arrived.wait(), 5)
            assert t1.datagrams == [(b"packet", ("192.0.2.9", 5000))]
            # Worker 1 holds it: nowhere else to go.
            assert not m1.forward_datagram(sid[:8], b"packet", ("192.0.2.9", 5000))
            assert not m0.forward_datagram(os.urandom(8), b"x", ("192.0.2.9", 5000))
            assert (m0.datagrams_out, m1.datagrams_in) == (1, 1)
            assert t0.datagrams == []

    asyncio.run(main())


def test_a_gone_worker_takes_its_sessions_and_bad_messages_harm_nothing() -> None:
    async def main() -> None:
        async with _pair() as (m0, m1, t0, _):
            sid = os.urandom(16)
            m1.created(sid)
            await _until(lambda: m0.routes.owner(sid) == 1, "announcement")
            # A message that does not decode, with a descriptor: dropped and closed.
            r, w = os.pipe()
            socket.send_fds(m1._peers[0], [b"\x09garbage"], [r])
            socket.send_fds(m1._peers[0], [encode_transport(b"x")], [])
            os.close(r)
            # Messages arrive in order: once this one is in, those were read.
            later = os.urandom(16)
            m1.created(later)
            await _until(lambda: m0.routes.owner(later) == 1, "the next announcement")
            assert t0.transports == []
            # Worker 0 closed its copy of the descriptor: the pipe has no reader.
            with pytest.raises(BrokenPipeError):
                os.write(w, b"x")
            os.close(w)
            assert m0.routes.owner(sid) == 1
            m1.close()
            await _until(lambda: m0.routes.owner(sid) is None, "forgotten")
            assert m0.status()["peers"] == []

    asyncio.run(main())
