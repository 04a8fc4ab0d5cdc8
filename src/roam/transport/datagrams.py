"""UDP for a session's datagram channels: thin drivers around core.datagrams.

The client has one connected UDP socket per session, bound to the active
path like the stream transport, and moves it with every handover. The
server has one UDP socket beside its TCP listener (same address and port),
finds the session by the packet's tag, and answers wherever the newest
authenticated packet came from: a client behind a NAT that changed its
mapping, or on a new path, is followed without any handshake.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import Callable
from typing import Any, cast

from roam.core.datagrams import DatagramPath, DatagramState, parse_packet
from roam.errors import CryptoError, FramingError, ProtocolError, TransportError
from roam.transport.driver import SessionDriver

log = logging.getLogger("roam.datagrams")

Address = Any  # what the socket layer gives: (host, port) or (host, port, flow, scope)


class SessionDatagrams:
    """One session's datagram path, its timer, and where its packets go."""

    # The server makes one per session, used or not: no instance dict.
    __slots__ = ("_sendto", "_state", "_timer", "closed", "driver", "path", "peer")

    def __init__(self, driver: SessionDriver, path: DatagramPath) -> None:
        self.driver = driver
        self.path = path
        self.peer: Address | None = None
        self._sendto: Callable[[bytes, Address], None] | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._state = path.state
        self.closed = False

    def send(self, cid: int, data: bytes) -> bool:
        session = self.driver.session
        frame = session.datagram_frame(cid, data)
        if frame is not None and self._sendto is not None and self.peer is not None:
            packet = self.path.datagram(frame, self.driver.loop.time())
            if packet is not None:
                self._send(packet)
                self._after()
                return True
        return session.send_datagram(cid, data)

    def packet_received(self, data: bytes, source: Address) -> None:
        now = self.driver.loop.time()
        try:
            datagrams, newest = self.path.receive(data, now)
        except (CryptoError, FramingError) as exc:
            log.debug("%s: dropped a UDP packet from %s: %s", self.driver.name, source, exc)
            return
        except ProtocolError as exc:
            log.warning("%s: dropped a UDP packet from %s: %s", self.driver.name, source, exc)
            return
        if newest and source != self.peer and not self.path.is_client:
            if self.peer is not None:
                log.info("%s: client's UDP address moved %s -> %s", self.driver.name,
                         _show(self.peer), _show(source))
            self.peer = source
        session = self.driver.session
        for frame in datagrams:
            try:
                session.receive_datagram(frame)
            except ProtocolError as exc:
                log.warning("%s: dropped a datagram: %s", self.driver.name, exc)
        self._after()
        if datagrams:
            self.driver.flush()

    def _send(self, packet: bytes) -> None:
        if self._sendto is not None and self.peer is not None:
            try:
                self._sendto(packet, self.peer)
            except OSError as exc:  # a path without a route: probes find out
                log.debug("%s: UDP send failed: %s", self.driver.name, exc)

    def _after(self) -> None:
        """Send what the path queued, note a change of state, arm the timer."""
        for packet in self.path.packets_to_send():
            self._send(packet)
        if self.path.state is not self._state:
            old, self._state = self._state, self.path.state
            level = logging.WARNING if self._state is DatagramState.DOWN else logging.INFO
            log.log(level, "%s: UDP %s -> %s%s", self.driver.name, old.value, self._state.value,
                    "; datagrams take the stream transport"
                    if self._state is DatagramState.DOWN else "")
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        deadline = self.path.get_timer()
        if deadline is not None and not self.closed:
            self._timer = self.driver.loop.call_at(deadline, self._fire)

    def _fire(self) -> None:
        self._timer = None
        self.path.handle_timer(self.driver.loop.time())
        self._after()

    def attach(self, sendto: Callable[[bytes, Address], None], peer: Address | None) -> None:
        self._sendto = sendto
        self.peer = peer

    def close(self) -> None:
        self.closed = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def status(self) -> dict[str, object]:
        out = self.path.statistics()
        out["peer"] = None if self.peer is None else _show(self.peer)
        return out


def _show(addr: Address) -> str:
    host, port = addr[0], addr[1]
    return f"[{host}]:{port}" if ":" in str(host) else f"{host}:{port}"


class _Socket(asyncio.DatagramProtocol):
    def __init__(self, receive: Callable[[bytes, Address], None], what: str) -> None:
        self._receive = receive
        self._what = what

    def datagram_received(self, data: bytes, addr: Address) -> None:
        self._receive(data, addr)

    def error_received(self, exc: Exception) -> None:
        # ICMP unreachable and the like: a probe will go unanswered and the
        # path falls back to the stream; nothing to do here.
        log.debug("%s: %s", self._what, exc)


class ClientDatagrams(SessionDatagrams):
    """The client's side: one socket, moved to each new path."""

    __slots__ = ("_transport",)

    def __init__(self, driver: SessionDriver, path: DatagramPath) -> None:
        super().__init__(driver, path)
        self._transport: asyncio.DatagramTransport | None = None

    async def rebind(self, server: Address, device: str | None, source: str | None) -> None:
        """Leave from the same place as the stream transport now does; probe at once."""
        self._close_socket()
        loop = asyncio.get_running_loop()
        family = socket.AF_INET6 if ":" in str(server[0]) else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_DGRAM)
        try:
            sock.setblocking(False)
            if device is not None:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_BINDTODEVICE, device.encode())
            if source is not None:
                sock.bind((source, 0))
            sock.connect(server)
            transport, _ = await loop.create_datagram_endpoint(
                lambda: _Socket(self.packet_received, f"{self.driver.name} UDP"), sock=sock)
        except OSError as exc:
            sock.close()
            log.info("%s: no UDP on this path (%s); datagrams take the stream",
                     self.driver.name, exc.strerror or exc)
            return
        self._transport = transport
        self.attach(lambda packet, _: transport.sendto(packet), server)
        if self.closed:
            self._close_socket()
            return
        self.path.restart(loop.time())
        self._after()

    def _close_socket(self) -> None:
        if self._transport is not None:
            self._transport.close()
            self._transport = None
        self.attach(lambda packet, _: None, None)

    def close(self) -> None:
        super().close()
        self._close_socket()


class DatagramListener(asyncio.DatagramProtocol):
    """The server's UDP socket: routes packets to sessions by tag."""

    def __init__(self) -> None:
        self.sessions: dict[bytes, SessionDatagrams] = {}
        self.transport: asyncio.DatagramTransport | None = None
        self.unknown = 0
        self._closed = asyncio.Event()

    async def start(self, host: str, port: int) -> None:
        loop = asyncio.get_running_loop()
        try:
            await loop.create_datagram_endpoint(lambda: self, local_addr=(host, port))
        except OSError as exc:
            raise TransportError(f"cannot listen for UDP on {host}:{port}: "
                                 f"{exc.strerror or exc}") from None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # CPython's selector datagram transport does not subclass
        # asyncio.DatagramTransport, so no isinstance check here.
        self.transport = cast(asyncio.DatagramTransport, transport)

    def add(self, tag: bytes, datagrams: SessionDatagrams) -> None:
        datagrams.attach(self._sendto, None)
        self.sessions[tag] = datagrams

    def remove(self, tag: bytes) -> None:
        self.sessions.pop(tag, None)

    def _sendto(self, packet: bytes, addr: Address) -> None:
        if self.transport is not None:
            self.transport.sendto(packet, addr)

    def datagram_received(self, data: bytes, addr: Address) -> None:
        try:
            tag, _, _ = parse_packet(data)
        except FramingError as exc:
            self.unknown += 1
            log.debug("UDP from %s dropped: %s", addr, exc)
            return
        target = self.sessions.get(tag)
        if target is None:
            self.unknown += 1
            log.debug("UDP from %s for no session here", addr)
            return
        target.packet_received(data, addr)

    def error_received(self, exc: Exception) -> None:
        log.debug("UDP listener: %s", exc)

    def connection_lost(self, exc: Exception | None) -> None:
        self._closed.set()

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()

    async def wait_closed(self) -> None:
        """The socket is closed once this returns, so the port can be bound again."""
        if self.transport is not None:
            await self._closed.wait()
