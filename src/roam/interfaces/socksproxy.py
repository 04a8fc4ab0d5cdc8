"""SOCKS5 for applications: `roam client --socks HOST:PORT [--socks-auth USER:PASSFILE]`.

A thin driver around `interfaces.socks5`: each CONNECT becomes a stream
channel to the host and port the application named (names are resolved on
the server side, so `curl --socks5-hostname` reaches names only the server
can resolve); the SOCKS reply waits for the channel's OPEN_OK or OPEN_FAIL,
so the application learns whether the destination could be reached. Each
UDP ASSOCIATE gets a UDP socket of its own, and each destination it sends
to a datagram channel; the association ends with its TCP connection
(RFC 1928 section 7).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

from roam.core.frames import ChannelKind
from roam.errors import CloseCode, ConfigError
from roam.interfaces.socks5 import (
    Command,
    Reply,
    Request,
    Send,
    Socks5Server,
    SocksError,
    encode_reply,
    encode_udp_datagram,
    parse_udp_datagram,
)
from roam.tasks import Tasks
from roam.transport.driver import AppConnection, SessionDriver

log = logging.getLogger("roam.socks")

# An application that has not finished its SOCKS greeting and request by
# then holds a socket for nothing; honest ones take one round trip on loopback.
HANDSHAKE_TIMEOUT = 10.0
# Destinations one UDP association may send to at once: each is a channel.
MAX_UDP_DESTINATIONS = 256

# OPEN_FAIL codes as RFC 1928 section 6 replies.
_REPLY_FOR = {
    CloseCode.NOT_ALLOWED: Reply.NOT_ALLOWED,
    CloseCode.UNREACHABLE: Reply.HOST_UNREACHABLE,
    CloseCode.TIMEOUT: Reply.TTL_EXPIRED,
    CloseCode.CONNECT_FAILED: Reply.CONNECTION_REFUSED,
}


def load_credentials(spec: str) -> tuple[str, str]:
    """`--socks-auth USER:PASSFILE`: the user name, and the password from the file."""
    user, sep, given = spec.partition(":")
    if not sep or not user or not given:
        raise ConfigError(f"--socks-auth {spec!r}: expected USER:PASSFILE")
    # No shell expands the ~ in `alice:~/.roam/socks.pass`, nor in a --config file.
    path = Path(given).expanduser()
    try:
        password = path.read_text(encoding="utf-8").rstrip("\r\n")
    except FileNotFoundError:
        raise ConfigError(f"--socks-auth: password file {path} does not exist") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"--socks-auth: cannot read password file {path}: {exc}") from None
    if not password:
        raise ConfigError(f"--socks-auth: password file {path} is empty")
    return user, password


class SocksProxy:
    """Listens for SOCKS5 applications; one SocksConnection each."""

    def __init__(self, host: str, port: int, current: Callable[[], SessionDriver | None],
                 credentials: tuple[str, str] | None = None) -> None:
        self.host, self.port = host, port
        self.current = current
        self.credentials = credentials
        Socks5Server(credentials)  # refuses unusable credentials now, not per connection
        self._server: asyncio.Server | None = None
        self.tasks = Tasks("SOCKS5 proxy")  # the UDP associations' set-ups

    async def start(self) -> tuple[str, int]:
        loop = asyncio.get_running_loop()
        try:
            self._server = await loop.create_server(self._accept, self.host, self.port)
        except OSError as exc:
            raise ConfigError(f"--socks {self.host}:{self.port}: cannot listen: "
                              f"{exc.strerror or exc}") from None
        addr = self._server.sockets[0].getsockname()
        log.info("SOCKS5 on %s:%d%s", addr[0], addr[1],
                 " (username/password)" if self.credentials else "")
        return addr[0], addr[1]

    def close(self) -> None:
        if self._server is not None:
            self._server.close()
        self.tasks.cancel()

    def _accept(self) -> asyncio.Protocol:
        driver = self.current()
        if driver is None:
            raise ConfigError("SOCKS5 accepted a connection before the session exists")
        return SocksConnection(self, driver)


class SocksConnection(AppConnection):
    """One application's SOCKS5 control connection; after CONNECT, its stream."""

    def __init__(self, proxy: SocksProxy, driver: SessionDriver) -> None:
        super().__init__(driver)
        self.proxy = proxy
        self.handshake: Socks5Server | None = Socks5Server(proxy.credentials)
        self._deadline: asyncio.TimerHandle | None = None
        self.association: UdpAssociation | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        self._deadline = asyncio.get_running_loop().call_later(HANDSHAKE_TIMEOUT, self._late)

    def _late(self) -> None:
        if self.handshake is not None and self.transport is not None:
            log.info("SOCKS5 client gave no request within %g s", HANDSHAKE_TIMEOUT)
            self.transport.close()

    def data_received(self, data: bytes) -> None:
        if self.handshake is None:
            if self.cid is not None:
                super().data_received(data)
            return  # a UDP association's control connection carries nothing
        try:
            events = self.handshake.feed(data)
        except SocksError as exc:
            log.info("SOCKS5 client refused: %s", exc)
            if self.transport is not None:
                self.transport.write(exc.reply)
                self.transport.close()
            self.handshake = None
            return
        for event in events:
            if isinstance(event, Send) and self.transport is not None:
                self.transport.write(event.data)
            elif isinstance(event, Request):
                self._request(event)

    def _request(self, req: Request) -> None:
        self.handshake = None
        if self._deadline is not None:
            self._deadline.cancel()
        if self.transport is None:
            return
        if req.command is Command.CONNECT:
            # req.host is an address or a DNS name in normal form: the parser
            # answered anything else with X'04' and this connection is closed.
            session = self.driver.session
            self.cid = session.open_channel(req.host, req.port)
            self.driver.add_app(self)
            if req.early_data:
                session.send(self.cid, req.early_data)
            self.driver.schedule()
        elif req.command is Command.UDP_ASSOCIATE:
            peer = self.transport.get_extra_info("peername")
            self.association = UdpAssociation(self, peer[0])
            self.proxy.tasks.spawn(self.association.start(), name="socks-udp-associate")
        else:
            self.transport.write(encode_reply(Reply.COMMAND_NOT_SUPPORTED))
            self.transport.close()

    # the channel's answer (driver.OpenWatcher)

    def opened(self) -> None:
        if self.transport is not None:
            self.transport.write(encode_reply(Reply.SUCCEEDED))

    def open_failed(self, code: CloseCode, reason: str) -> None:
        self.finished = True
        log.info("SOCKS5 CONNECT refused by the server: %s", reason)
        if self.transport is not None:
            self.transport.write(encode_reply(_REPLY_FOR.get(code, Reply.GENERAL_FAILURE)))
            self.transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
        if self.association is not None:
            self.association.close()
        super().connection_lost(exc)


class _UdpFlow:
    """One destination of a UDP association: its datagram channel."""

    def __init__(self, association: UdpAssociation, host: str, port: int) -> None:
        self.association = association
        self.host, self.port = host, port
        driver = association.driver
        self.cid: int | None = driver.session.open_channel(host, port, ChannelKind.DATAGRAM)
        driver.add_app(self)

    def deliver(self, data: bytes | memoryview) -> None:
        self.association.to_application(encode_udp_datagram(self.host, self.port, bytes(data)))

    def end(self) -> None:
        pass

    def finish(self) -> None:
        self.association.flows.pop((self.host, self.port), None)

    def abort(self) -> None:
        self.association.flows.pop((self.host, self.port), None)


class UdpAssociation(asyncio.DatagramProtocol):
    """RFC 1928 section 7: a relay socket for one application's datagrams."""

    def __init__(self, control: SocksConnection, client_host: str) -> None:
        self.control = control
        self.driver = control.driver
        self.client_host = client_host
        self.client: Any = None  # (host, port) of the application's UDP socket
        self.transport: asyncio.DatagramTransport | None = None
        self.flows: dict[tuple[str, int], _UdpFlow] = {}
        self.closed = False

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        ctl = self.control.transport
        try:
            transport, _ = await loop.create_datagram_endpoint(
                lambda: self, local_addr=(self.control.proxy.host, 0))
        except OSError as exc:
            log.warning("SOCKS5 UDP ASSOCIATE: cannot open a relay socket: %s", exc)
            if ctl is not None:
                ctl.write(encode_reply(Reply.GENERAL_FAILURE))
                ctl.close()
            return
        self.transport = transport
        if self.closed or ctl is None:
            transport.close()
            return
        host, port = transport.get_extra_info("sockname")[:2]
        ctl.write(encode_reply(Reply.SUCCEEDED, host, port))

    def datagram_received(self, data: bytes, addr: Any) -> None:
        # Section 7: datagrams only from the host that asked; the first one
        # fixes the port.
        if addr[0] != self.client_host or (self.client is not None and addr != self.client):
            return
        self.client = addr
        try:
            # The destination is validated as the TCP request's is; a datagram
            # cannot be answered, so a bad one is dropped.
            datagram = parse_udp_datagram(data)
        except SocksError as exc:
            log.debug("SOCKS5 UDP datagram dropped: %s", exc)
            return
        key = (datagram.host, datagram.port)
        flow = self.flows.get(key)
        if flow is None or flow.cid not in self.driver.apps:
            if len(self.flows) >= MAX_UDP_DESTINATIONS:
                log.debug("SOCKS5 UDP association at %d destinations; dropped",
                          MAX_UDP_DESTINATIONS)
                return
            flow = self.flows[key] = _UdpFlow(self, *key)
        if flow.cid is not None:
            self.driver.send_datagram(flow.cid, datagram.payload)
        self.driver.flush()

    def to_application(self, packet: bytes) -> None:
        if self.transport is not None and self.client is not None:
            self.transport.sendto(packet, self.client)

    def close(self) -> None:
        self.closed = True
        for flow in list(self.flows.values()):
            if flow.cid is not None:
                self.driver.apps.pop(flow.cid, None)
                self.driver.session.reset_channel(flow.cid)
        self.flows.clear()
        self.driver.schedule()
        if self.transport is not None:
            self.transport.close()
