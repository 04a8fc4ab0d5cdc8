"""The datagram transport on real loopback sockets: a UDP forward through a
relay that can drop UDP, replay a packet or move its source port."""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from roam.connector.allow import AccessList
from roam.connector.connector import Connector
from roam.core.datagrams import DatagramState
from roam.core.session import SessionConfig
from roam.crypto.keys import public_key
from roam.interfaces.forward import ForwardSpec
from roam.interfaces.udpforward import UdpForward
from roam.transport.datagrams import ClientDatagrams, SessionDatagrams
from roam.transport.server import Server, ServerConfig

from .stack import Stack
from .udprelay import UdpRelay


class _Echo(asyncio.DatagramProtocol):
    def __init__(self) -> None:
        self.transport: asyncio.DatagramTransport | None = None
        self.received: list[bytes] = []

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: Any) -> None:
        self.received.append(data)
        if self.transport is not None:
            self.transport.sendto(data, addr)


class _App(asyncio.DatagramProtocol):
    def __init__(self) -> None:
        self.answers: asyncio.Queue[bytes] = asyncio.Queue()

    def datagram_received(self, data: bytes, addr: Any) -> None:
        self.answers.put_nowait(data)


class UdpStack(Stack):
    """The in-process stack plus a UDP echo beside the server, a UDP relay in
    front of it and a UDP forward on the client."""

    async def start(self) -> UdpStack:
        loop = asyncio.get_running_loop()
        self.udp_echo = _Echo()
        await loop.create_datagram_endpoint(lambda: self.udp_echo,
                                            local_addr=("127.0.0.1", 0))
        assert self.udp_echo.transport is not None
        self.udp_echo_port = self.udp_echo.transport.get_extra_info("sockname")[1]
        await super().start()
        self.relay = UdpRelay(self.server_port)
        await self.relay.start(self.proxy_port)
        if self.udp:
            # The client's socket was bound before the relay existed: move it now.
            await self.client_datagrams.rebind(("127.0.0.1", self.proxy_port), None, None)
        self.udp_forward = UdpForward(
            ForwardSpec("127.0.0.1", 0, "127.0.0.1", self.udp_echo_port, True),
            lambda: self.client.driver)
        _, port = await self.udp_forward.start()
        self.app = _App()
        self.app_transport, _ = await loop.create_datagram_endpoint(
            lambda: self.app, remote_addr=("127.0.0.1", port))
        return self

    def make_server(self, port: int = 0) -> Server:
        access = AccessList.parse([f"127.0.0.1:{self.echo_port}",
                                   f"127.0.0.1:{self.udp_echo_port}"])
        return Server(ServerConfig("127.0.0.1", port, self.server_key,
                                   {public_key(self.client_key): "tester"}, Connector(access),
                                   SessionConfig(detached_timeout=60)))

    @property
    def client_datagrams(self) -> ClientDatagrams:
        driver = self.client.driver
        assert driver is not None
        assert isinstance(driver.datagrams, ClientDatagrams)
        return driver.datagrams

    @property
    def server_datagrams(self) -> SessionDatagrams:
        (driver,) = self.server.sessions.values()
        assert isinstance(driver.datagrams, SessionDatagrams)
        return driver.datagrams

    async def ask(self, data: bytes, timeout: float = 1.0) -> bytes | None:
        """One request through the forward; its echo, or None if it was lost."""
        self.app_transport.sendto(data)
        try:
            return await asyncio.wait_for(self.app.answers.get(), timeout)
        except TimeoutError:
            return None

    async def close(self) -> None:
        self.app_transport.close()
        self.udp_forward.close()
        self.relay.close()
        await super().close()
        if self.udp_echo.transport is not None:
            self.udp_echo.transport.close()


def _run(body: Callable[[UdpStack], Awaitable[None]], *, udp: bool = True) -> None:
    async def main() -> None:
        stack = await UdpStack(udp=udp).start()
        try:
            await body(stack)
        finally:
            await stack.close()
    asyncio.run(main())


async def _until(cond: Callable[[], bool], timeout: float = 10.0) -> None:
    async with asyncio.timeout(timeout):
        while not cond():  # noqa: ASYNC110  (polls the daemon; it has no event for this)
            await asyncio.sleep(0.01)


def test_datagrams_ride_udp_when_it_gets_through() -> None:
    async def body(s: UdpStack) -> None:
        await _until(lambda: s.client_datagrams.path.state is DatagramState.UP)
        for i in range(50):
            msg = f"query {i}".encode()
            assert await s.ask(msg) == msg
        session = s.client.driver.session if s.client.driver else None
        assert session is not None
        assert s.client_datagrams.path.datagrams_sent >= 49  # the first waits for OPEN_OK
        assert session.datagrams_sent <= 1
        assert session.datagrams_received <= 1
        assert s.server_datagrams.path.datagrams_sent >= 49
        assert s.server_datagrams.status()["state"] == "up"
    _run(body)


def test_udp_dropped_falls_back_to_the_stream_and_comes_back() -> None:
    async def body(s: UdpStack) -> None:
        await _until(lambda: s.client_datagrams.path.state is DatagramState.UP)
        assert await s.ask(b"before") == b"before"
        s.relay.drop = True
        # Requests sent while the loss is not yet known are lost, as on any
        # UDP path; within the probe timeout the stream carries them.
        answered = [await s.ask(f"during {i}".encode(), timeout=0.5) for i in range(8)]
        assert answered[-1] == b"during 7", answered
        assert s.client_datagrams.path.state is DatagramState.DOWN
        session = s.client.driver.session if s.client.driver else None
        assert session is not None
        assert session.datagrams_sent >= 1
        s.relay.drop = False
        # The client probes again every RETRY_INTERVAL (5 s).
        await _until(lambda: s.client_datagrams.path.state is DatagramState.UP, timeout=8)
        before = s.client_datagrams.path.datagrams_sent
        assert await s.ask(b"after") == b"after"
        assert s.client_datagrams.path.datagrams_sent == before + 1
    _run(body)


def test_an_authenticated_packet_from_a_new_source_moves_the_peer(
        caplog: pytest.LogCaptureFixture) -> None:
    async def body(s: UdpStack) -> None:
        await _until(lambda: s.client_datagrams.path.state is DatagramState.UP)
        assert await s.ask(b"one") == b"one"
        old = s.server_datagrams.peer
        port = await s.relay.new_source()  # the NAT in between picked a new port
        assert await s.ask(b"two") == b"two"
        assert s.server_datagrams.peer == ("127.0.0.1", port) != old
        assert "UDP address moved" in caplog.text
    caplog.set_level(logging.INFO)
    _run(body)


def test_replayed_forged_and_garbage_packets_are_dropped() -> None:
    async def body(s: UdpStack) -> None:
        await _until(lambda: s.client_datagrams.path.state is DatagramState.UP)
        assert await s.ask(b"once") == b"once"
        delivered = len(s.udp_echo.received)
        sent = next(p for p in reversed(s.relay.upstream_packets) if len(p) > 40)
        s.relay.send_upstream(sent)  # a replay
        forged = bytearray(sent)
        forged[-1] ^= 1
        s.relay.send_upstream(bytes(forged))
        for junk in (b"", b"\x01", os.urandom(40), b"\x01" + sent[1:9] + os.urandom(60)):
            s.relay.send_upstream(junk)
        await asyncio.sleep(0.3)
        assert len(s.udp_echo.received) == delivered  # nothing delivered twice
        assert s.server_datagrams.path.rejected >= 2
        assert await s.ask(b"still serving") == b"still serving"
    _run(body)


def test_without_udp_datagrams_take_the_stream() -> None:
    async def body(s: UdpStack) -> None:
        driver = s.client.driver
        assert driver is not None
        assert driver.datagrams is None
        assert await s.ask(b"x") == b"x"
        assert driver.session.datagrams_sent == 1
        assert s.relay.upstream_packets == []
    _run(body, udp=False)
