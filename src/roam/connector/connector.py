"""Server side: opens the real connection for each channel the client opens.

Only destinations the access list allows are opened; a refused or failed one
closes that channel alone (OPEN_FAIL), with a log line that says why.

The requested host is validated (`roam.names.Host`) as the OPEN arrives,
before any rule or resolver sees it: a host that is not an IP address or a
valid DNS name is refused on the spot. Each open then runs as a task the
connector keeps until it ends; the tasks of a session are cancelled when the
session closes, and a task that fails unexpectedly still answers its
channel, so no channel is left waiting for an answer that never comes.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import Awaitable, Callable

from roam.connector.allow import AccessList
from roam.core.events import ChannelOpenRequested
from roam.core.frames import ChannelKind
from roam.errors import CloseCode
from roam.names import Host, InvalidHost
from roam.transport.driver import AppConnection, SessionDriver

log = logging.getLogger("roam.connector")

# A destination that takes longer than this to answer a SYN is treated as
# unreachable; the application sees its connection close.
CONNECT_TIMEOUT = 10.0

Opener = Callable[[SessionDriver, ChannelOpenRequested, Host], Awaitable[None]]


class Connector:
    def __init__(self, access: AccessList, listen: AccessList | None = None) -> None:
        self.access = access
        # Where clients may have the server listen for reverse forwards.
        self.listen = listen or AccessList.parse([])
        # Opens in progress, and the session each belongs to.
        self._opening: dict[asyncio.Task[None], SessionDriver] = {}

    @property
    def opening(self) -> frozenset[asyncio.Task[None]]:
        """The opens in progress (for status and tests)."""
        return frozenset(self._opening)

    def attach(self, driver: SessionDriver) -> None:
        driver.on_open_request = lambda e: self._request(driver, e)
        driver.closed.add_callback(lambda: self._cancel(driver))

    def close(self) -> None:
        """Cancel every open in progress (a server shutting down)."""
        for task in list(self._opening):
            task.cancel()

    def _cancel(self, driver: SessionDriver) -> None:
        """`driver`'s session ended: nobody waits for its opens any more."""
        for task, owner in list(self._opening.items()):
            if owner is driver:
                task.cancel()

    def _request(self, driver: SessionDriver, e: ChannelOpenRequested) -> None:
        try:
            host = Host.parse(e.host)
        except InvalidHost as exc:
            # Not a host at all: it cannot be resolved, nor matched against a rule.
            self._fail(driver, e, CloseCode.UNREACHABLE, str(exc))
            return
        opener: Opener = {ChannelKind.STREAM: self._open,
                          ChannelKind.DATAGRAM: self._open_datagram,
                          ChannelKind.LISTEN: self._listen}[e.kind]
        task = asyncio.get_running_loop().create_task(
            self._run(opener, driver, e, host), name=f"{driver.name}-open-{e.channel}")
        self._opening[task] = driver
        task.add_done_callback(self._done)

    def _done(self, task: asyncio.Task[None]) -> None:
        self._opening.pop(task, None)

    async def _run(self, opener: Opener, driver: SessionDriver, e: ChannelOpenRequested,
                   host: Host) -> None:
        """`opener`, and an answer for the channel whatever becomes of it."""
        try:
            await opener(driver, e, host)
        except asyncio.CancelledError:
            if not driver.closed.is_set():
                self._refuse(driver, e, CloseCode.SHUTDOWN, "the server is shutting down")
            raise
        except Exception:
            # A bug, not the destination's doing: say so once, and answer the
            # channel rather than leave it open with no one serving it.
            log.exception("%s: opening channel %d to %s:%d failed", driver.name, e.channel,
                          host, e.port)
            self._refuse(driver, e, CloseCode.INTERNAL, "internal error in the server")

    async def _listen(self, driver: SessionDriver, e: ChannelOpenRequested, host: Host) -> None:
        where = f"{host}:{e.port}"
        allowed = (self.listen.allows_address(str(host), e.port) if host.address is not None
                   else self.listen.allows_name(host, e.port))
        if not allowed:
            self._fail(driver, e, CloseCode.NOT_ALLOWED,
                       f"listening on {where} is not allowed by --allow-listen")
            return
        listener = ReverseListener(driver, e.channel, str(host), e.port)
        try:
            listener.server = await asyncio.get_running_loop().create_server(
                listener.accept, str(host), e.port)
        except OSError as exc:
            self._fail(driver, e, CloseCode.CONNECT_FAILED,
                       f"cannot listen on {where}: {exc.strerror or exc}")
            return
        if driver.accept(e.channel, listener):
            log.info("%s: reverse forward: listening on %s", driver.name, where)

    async def _allowed(self, driver: SessionDriver, e: ChannelOpenRequested, host: Host,
                       dest: str, kind: socket.SocketKind) -> str | None:
        """The address to open for `e`, or None after refusing the channel."""
        try:
            addr = await self._resolve_allowed(host, e.port, kind)
        except OSError as exc:
            self._fail(driver, e, CloseCode.UNREACHABLE, f"cannot resolve {host}: {exc}")
            return None
        if addr is None:
            self._fail(driver, e, CloseCode.NOT_ALLOWED, f"{dest} is not allowed by --allow")
        return addr

    async def _open_datagram(self, driver: SessionDriver, e: ChannelOpenRequested,
                             host: Host) -> None:
        dest = f"udp {host}:{e.port}"
        addr = await self._allowed(driver, e, host, dest, socket.SOCK_DGRAM)
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

    async def _open(self, driver: SessionDriver, e: ChannelOpenRequested, host: Host) -> None:
        dest = f"{host}:{e.port}"
        loop = asyncio.get_running_loop()
        addr = await self._allowed(driver, e, host, dest, socket.SOCK_STREAM)
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

    async def _resolve_allowed(self, host: Host, port: int,
                               kind: socket.SocketKind = socket.SOCK_STREAM) -> str | None:
        """The address to connect to, or None when the rules forbid every one."""
        by_name = self.access.allows_name(host, port)
        if not by_name and not self.access.has_address_rules(port):
            return None  # no rule could admit it: do not even look the name up
        # The normal form is plain ASCII within the DNS's lengths: the text
        # the rules matched is exactly what the resolver is given.
        infos = await asyncio.get_running_loop().getaddrinfo(str(host), port, type=kind)
        for *_, sockaddr in infos:
            addr = str(sockaddr[0])
            if by_name or self.access.allows_address(addr, port):
                return addr
        return None

    def _fail(self, driver: SessionDriver, e: ChannelOpenRequested, code: CloseCode,
              reason: str) -> None:
        log.warning("%s: refused channel %d: %s", driver.name, e.channel, reason)
        self._refuse(driver, e, code, reason)

    def _refuse(self, driver: SessionDriver, e: ChannelOpenRequested, code: CloseCode,
                reason: str) -> None:
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
