"""The datagram transport on real loopback sockets: a UDP forward through a
relay that can drop UDP, replay a packet or move its source port."""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import pytest

from roam.connector.allow import AccessList
from roam.connector.connector import Connector
from roam.core.datagrams import DatagramState
from roam.core.session import SessionConfig
from roam.crypto.keys import public_key
from roam.interfaces.forward import ForwardSpec
from roam.interfaces.udpforward import RedundantUdpForward, UdpForward
from roam.transport.datagrams import ClientDatagrams, SessionDatagrams
from roam.transport.server import Server, ServerConfig

from .natrelay import NatRelay
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


# ---- redundant channels: a second socket on the backup path ---------------------

BACKUP = "127.0.0.2"  # the backup path's source address (all of 127/8 is local)


@dataclass
class TwoPathStack(UdpStack):
    """UdpStack with a NAT in front of the server's UDP port, so the server
    sees the client's two sockets as two addresses, a redundant forward, and
    the backup path leaving from `backup` (None: there is none)."""

    backup: str | None = BACKUP

    async def start(self) -> TwoPathStack:
        await super().start()
        self.nat = NatRelay(self.server_port)
        nat_port = await self.nat.start()
        await self.client_datagrams.rebind(("127.0.0.1", nat_port), None, None)
        self.client_datagrams.set_backup(None if self.backup is None else "backup", None,
                                         self.backup)
        self.app_transport.close()
        self.udp_forward.close()
        self.udp_forward = RedundantUdpForward(
            ForwardSpec.parse(f"udp:127.0.0.1:0=127.0.0.1:{self.udp_echo_port},redundant"),
            lambda: self.client.driver)
        _, port = await self.udp_forward.start()
        self.app = _App()
        self.app_transport, _ = await asyncio.get_running_loop().create_datagram_endpoint(
            lambda: self.app, remote_addr=("127.0.0.1", port))
        return self

    def redundant(self, side: SessionDatagrams) -> dict[str, Any]:
        status: dict[str, Any] = side.status()
        return status.get("redundant") or {}

    async def close(self) -> None:
        await super().close()
        self.nat.close()


def _run_two(body: Callable[[TwoPathStack], Awaitable[None]],
             backup: str | None = BACKUP) -> None:
    async def main() -> None:
        stack = await TwoPathStack(backup=backup).start()
        try:
            await body(stack)
        finally:
            await stack.close()
    asyncio.run(main())


async def _two_paths(s: TwoPathStack) -> None:
    # The flow's first datagram opens its channel on the stream, and marks it.
    assert await s.ask(b"first") == b"first"
    await _until(lambda: s.redundant(s.client_datagrams).get("mode") == "two paths")
    await _until(lambda: s.client_datagrams.path.state is DatagramState.UP)


def test_a_redundant_forward_sends_each_datagram_on_both_paths() -> None:
    async def body(s: TwoPathStack) -> None:
        await _two_paths(s)
        for i in range(30):
            msg = f"voice {i}".encode()
            assert await s.ask(msg) == msg
        await asyncio.sleep(0.1)
        assert s.app.answers.empty()  # each answer reached the application once
        assert s.udp_echo.received.count(b"voice 7") == 1
        assert s.nat.upstream[BACKUP] >= 30
        client = s.redundant(s.client_datagrams)
        server = s.redundant(s.server_datagrams)
        assert client["copies_sent"] >= 30
        assert client["second_path"] == "backup"
        assert client["second_state"] == "up"
        assert server["mode"] == "two paths"
        assert server["channels"] == 1
        assert server["copies_sent"] >= 30
        # Every datagram came twice each way; the later copy was dropped.
        assert server["duplicates"] >= 25
        assert client["duplicates"] >= 25
        assert s.server_datagrams.path.rejected == 0
        # The backup's copies and probes never moved the server's peer.
        primary = s.nat.mapping(next(a for a in s.nat._mappings if a[0] == "127.0.0.1"))
        assert s.server_datagrams.peer == primary
        assert server["second_address"] == "{}:{}".format(
            *s.nat.mapping(next(a for a in s.nat._mappings if a[0] == BACKUP)))
    _run_two(body)


def test_a_path_that_stops_carrying_udp_loses_no_redundant_datagram() -> None:
    async def body(s: TwoPathStack) -> None:
        await _two_paths(s)
        s.nat.dropping = {"127.0.0.1"}  # the active path goes silent, both ways
        # A talk of 2.5 s, long enough for the active path's checks to find
        # it dead (CHECK_INTERVAL, then PROBE_FLOOR): not one answer is lost.
        for i in range(50):
            assert await s.ask(f"during {i}".encode(), timeout=0.5) == f"during {i}".encode()
            await asyncio.sleep(0.05)
        assert s.client_datagrams.path.state is DatagramState.DOWN
        assert s.redundant(s.client_datagrams)["mode"] == "two paths"
    _run_two(body)


def test_without_a_backup_path_a_redundant_channel_uses_one_and_says_so_once(
        caplog: pytest.LogCaptureFixture) -> None:
    async def body(s: TwoPathStack) -> None:
        assert await s.ask(b"first") == b"first"
        await _until(lambda: s.client_datagrams.path.state is DatagramState.UP)
        for i in range(10):
            assert await s.ask(f"alone {i}".encode()) == f"alone {i}".encode()
        client = s.redundant(s.client_datagrams)
        assert client["mode"] == "one path: no backup path"
        assert client["second_path"] is None
        assert client["copies_sent"] == 0
        assert caplog.text.count("redundant datagrams take one path: there is no backup "
                                 "path") == 1
    caplog.set_level(logging.INFO, logger="roam.datagrams")
    _run_two(body, backup=None)


def test_a_backup_path_without_udp_is_said_once_and_the_channel_goes_on(
        caplog: pytest.LogCaptureFixture) -> None:
    async def body(s: TwoPathStack) -> None:
        s.nat.dropping = {BACKUP}
        assert await s.ask(b"first") == b"first"
        await _until(lambda: s.redundant(s.client_datagrams).get("mode") ==
                     "one path: UDP does not get through on the backup path")
        for i in range(5):
            assert await s.ask(f"on wifi {i}".encode()) == f"on wifi {i}".encode()
        assert caplog.text.count("UDP does not get through on backup path backup") == 1
    caplog.set_level(logging.INFO, logger="roam.datagrams")
    _run_two(body)


def test_the_second_socket_follows_the_backup_path_and_goes_with_it() -> None:
    async def body(s: TwoPathStack) -> None:
        await _two_paths(s)
        s.client_datagrams.set_backup("other", None, "127.0.0.3")
        await _until(lambda: s.redundant(s.client_datagrams).get("second_path") == "other"
                     and s.redundant(s.client_datagrams).get("mode") == "two paths")
        assert await s.ask(b"moved") == b"moved"
        await _until(lambda: s.nat.upstream["127.0.0.3"] >= 2)
        assert s.redundant(s.server_datagrams)["second_address"] == "{}:{}".format(
            *s.nat.mapping(next(a for a in s.nat._mappings if a[0] == "127.0.0.3")))
        s.client_datagrams.set_backup(None)
        client = s.redundant(s.client_datagrams)
        assert (client["second_path"], client["mode"]) == (None, "one path: no backup path")
        before = s.nat.upstream["127.0.0.3"]
        assert await s.ask(b"one path") == b"one path"
        assert s.nat.upstream["127.0.0.3"] == before
    _run_two(body)
