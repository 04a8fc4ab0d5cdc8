"""Server side: opens the real connection for each channel the client opens.

Only destinations the access list allows are opened; a refused or failed one
closes that channel alone (OPEN_FAIL), with a log line that says why.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import socket

from roam.connector.allow import AccessList
from roam.core.events import ChannelOpenRequested
from roam.core.frames import ChannelKind
from roam.errors import CloseCode
from roam.transport.driver import AppConnection, SessionDriver

log = logging.getLogger("roam.connector")

# A destination that takes longer than this to answer a SYN is treated as
# unreachable; the application sees its connection close.
CONNECT_TIMEOUT = 10.0


class Connector:
    def __init__(self, access: AccessList, listen: AccessList | None = None) -> None:
        self.access = access
        # Where clients may have the server listen for reverse forwards.
        self.listen = listen or AccessList.parse([])

    def attach(self, driver: SessionDriver) -> None:
        driver.on_open_request = lambda e: self._request(driver, e)

    def _request(self, driver: SessionDriver, e: ChannelOpenRequested) -> None:
        opener = {ChannelKind.STREAM: self._open, ChannelKind.DATAGRAM: self._open_datagram,
                  ChannelKind.LISTEN: self._listen}[e.kind]
        asyncio.get_running_loop().create_task(opener(driver, e),
                                               name=f"{driver.name}-open-{e.channel}")

    async def _listen(self, driver: SessionDriver, e: ChannelOpenRequested) -> None:
        where = f"{e.host}:{e.port}"
        try:
            literal = bool(ipaddress.ip_address(e.host))
        except ValueError:
            literal = False
        allowed = (self.listen.allows_address(e.host, e.port) if literal
                   else self.listen.allows_name(e.host, e.port))
        if not allowed:
            self._fail(driver, e, CloseCode.NOT_ALLOWED,
                       f"listening on {where} is not allowed by --allow-listen")
            return
        listener = ReverseListener(driver, e.channel, e.host, e.port)
        try:
            listener.server = await asyncio.get_running_loop().create_server(
                listener.accept, e.host, e.port)
        except OSError as exc:
            self._fail(driver, e, CloseCode.CONNECT_FAILED,
                       f"cannot listen on {where}: {exc.strerror or exc}")
            return
        if driver.accept(e.channel, listener):
            log.info("%s: reverse forward: listening on %s", driver.name, where)

    async def _allowed(self, driver: SessionDriver, e: ChannelOpenRequested, dest: str,
                       kind: socket.SocketKind) -> str | None:
        """The address to open for `e`, or None after refusing the channel."""
        try:
            addr = await self._resolve_allowed(e.host, e.port, kind)
        except OSError as exc:
            self._fail(driver, e, CloseCode.UNREACHABLE, f"cannot resolve {e.host}: {exc}")
            return None
        if addr is None:
            self._fail(driver, e, CloseCode.NOT_ALLOWED, f"{dest} is not allowed by --allow")
        return addr

    async def _open_datagram(self, driver: SessionDriver, e: ChannelOpenRequested) -> None:
        dest = f"udp {e.host}:{e.port}"
        addr = await self._allowed(driver, e, dest, socket.SOCK_DGRAM)
        if addr is None:
            return
        flow = DatagramConnection(driver, e.channel)
        try:
            flow.transport, _ = await asyncio.get_running_loop().create_datagram_endpoint(
                lambda: flow, remote_addr=(addr, e.port))
        except OSError as exc:
            self._fail(driver, e, CloseCode.CONNECT_FAILED, f"{dest}: {exc.strerror or exc}")
            return
        if driver.accept(e.channel, flow):
            log.info("%s: datagram channel %d open to %s (%s)", driver.name, e.channel, dest,
                     addr)

    async def _open(self, driver: SessionDriver, e: ChannelOpenRequested) -> None:
        dest = f"{e.host}:{e.port}"
        loop = asyncio.get_running_loop()
        addr = await self._allowed(driver, e, dest, socket.SOCK_STREAM)
        if addr is None:
            return
        app = AppConnection(driver, e.channel)
        try:
            await asyncio.wait_for(
                loop.create_connection(lambda: app, addr, e.port), CONNECT_TIMEOUT)
        except TimeoutError:
            self._fail(driver, e, CloseCode.TIMEOUT, f"{dest}: no answer in {CONNECT_TIMEOUT:g} s")
            return
        except OSError as exc:
            self._fail(driver, e, CloseCode.CONNECT_FAILED,
                       f"{dest}: {exc.strerror or exc}")
            return
        if driver.accept(e.channel, app):
            log.info("%s: channel %d open to %s (%s)", driver.name, e.channel, dest, addr)

    async def _resolve_allowed(self, host: str, port: int,
                               kind: socket.SocketKind = socket.SOCK_STREAM) -> str | None:
        """The address to connect to, or None when the rules forbid every one."""
        by_name = self.access.allows_name(host, port)
        if not by_name and not self.access.has_address_rules(port):
            return None  # no rule could admit it: do not even look the name up
        infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=kind)
        for *_, sockaddr in infos:
            addr = str(sockaddr[0])
            if by_name or self.access.allows_address(addr, port):
                return addr
        return None

    def _fail(self, driver: SessionDriver, e: ChannelOpenRequested, code: CloseCode,
              reason: str) -> None:
        log.warning("%s: refused channel %d: %s", driver.name, e.channel, reason)
        driver.session.refuse_channel(e.channel, code, reason)
        driver.schedule()


class DatagramConnection(asyncio.DatagramProtocol):
    """The server's UDP socket for one datagram channel, connected to its destination."""

    def __init__(self, driver: SessionDriver, cid: int) -> None:
        self.driver = driver
        self.cid: int | None = cid
        self.transport: asyncio.DatagramTransport | None = None

    def datagram_received(self, data: bytes, addr: object) -> None:
        if self.cid is not None:
            self.driver.send_datagram(self.cid, data)
            self.driver.flush()

    def error_received(self, exc: Exception) -> None:
        # ICMP port unreachable and the like: UDP's way of losing a datagram.
        log.debug("%s: datagram channel %s: %s", self.driver.name, self.cid, exc)

    def deliver(self, data: bytes | memoryview) -> None:
        if self.transport is not None:
            self.transport.sendto(data)

    def end(self) -> None:
        pass

    def finish(self) -> None:
        self.abort()

    def abort(self) -> None:
        if self.transport is not None:
            self.transport.close()


class ReverseListener:
    """A server-side listener for one LISTEN channel: each connection it
    accepts becomes a STREAM channel to the client, named by host:port."""

    def __init__(self, driver: SessionDriver, cid: int, host: str, port: int) -> None:
        self.driver = driver
        self.cid: int | None = cid
        self.host, self.port = host, port
        self.server: asyncio.Server | None = None

    def accept(self) -> asyncio.Protocol:
        return AppConnection(self.driver, on_made=self._made)

    def _made(self, app: AppConnection) -> None:
        session = self.driver.session
        app.cid = session.open_channel(self.host, self.port)
        self.driver.add_app(app)
        self.driver.schedule()

    def deliver(self, data: bytes | memoryview) -> None:
        pass  # nothing flows on a LISTEN channel

    def end(self) -> None:
        self.abort()

    def finish(self) -> None:
        self.abort()

    def abort(self) -> None:
        if self.server is not None:
            self.server.close()
            self.server = None
            log.info("%s: reverse forward on %s:%d closed", self.driver.name, self.host,
                     self.port)
