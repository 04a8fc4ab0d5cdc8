"""UDP for a session's datagram channels: thin drivers around core.datagrams.

The client has one connected UDP socket per session, bound to the active
path like the stream transport, and moves it with every handover. While it
has redundant channels (`--forward udp:...,redundant`) and the path manager
names a backup path, it keeps a second socket bound there the same way, so
each datagram of those channels leaves on both paths. The server has one
UDP socket beside its TCP listener (same address and port), finds the
session by the packet's tag, and sends where the core says: the client's
newest primary address, and for redundant channels its other recent one
too. Which packet goes where is decided in core.datagrams; here bytes move.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import Callable
from typing import Any, cast

from roam.core.datagrams import DatagramPath, DatagramState, Leg, Redundancy, Where, parse_packet
from roam.errors import CryptoError, FramingError, ProtocolError, TransportError
from roam.transport.driver import SessionDriver

log = logging.getLogger("roam.datagrams")

Address = Any  # what the socket layer gives: (host, port) or (host, port, flow, scope)


class SessionDatagrams:
    """One session's datagram path, its timer, and where its packets go."""

    # The server makes one per session, used or not: no instance dict.
    __slots__ = ("_mode", "_sendto", "_state", "_timer", "closed", "driver", "path")

    def __init__(self, driver: SessionDriver, path: DatagramPath) -> None:
        self.driver = driver
        self.path = path
        self._sendto: Callable[[bytes, Address], None] | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._state = path.state
        self._mode = Redundancy.OFF
        self.closed = False

    @property
    def peer(self) -> Address | None:
        """Where the session's datagrams go: the client's newest address."""
        return self.path.peer

    def send(self, cid: int, data: bytes) -> bool:
        session = self.driver.session
        frame = session.datagram_frame(cid, data)
        if frame is not None and self._sendto is not None:
            packets = self.path.datagram(frame, self.driver.loop.time(), cid)
            if packets:
                for packet, where in packets:
                    self._send(packet, where)
                self._after()
                return True
        return session.send_datagram(cid, data)

    def packet_received(self, data: bytes, source: Address) -> None:
        self._receive(data, source)

    def _receive(self, data: bytes, where: Where) -> None:
        now = self.driver.loop.time()
        before = self.path.peer
        try:
            datagrams, _ = self.path.receive(data, now, where)
        except (CryptoError, FramingError) as exc:
            log.debug("%s: dropped a UDP packet from %s: %s", self.driver.name,
                      self._describe(where), exc)
            return
        except ProtocolError as exc:
            log.warning("%s: dropped a UDP packet from %s: %s", self.driver.name,
                        self._describe(where), exc)
            return
        if before is not None and self.path.peer != before:
            log.info("%s: client's UDP address moved %s -> %s", self.driver.name,
                     _show(before), _show(self.path.peer))
        session = self.driver.session
        for frame in datagrams:
            try:
                session.receive_datagram(frame)
            except ProtocolError as exc:
                log.warning("%s: dropped a datagram: %s", self.driver.name, exc)
        self._after()
        if datagrams:
            self.driver.flush()

    def _describe(self, where: Where) -> str:
        return _show(where)

    def _send(self, packet: bytes, where: Where) -> None:
        if self._sendto is not None:
            try:
                self._sendto(packet, where)
            except OSError as exc:  # a path without a route: probes find out
                log.debug("%s: UDP send failed: %s", self.driver.name, exc)

    def _after(self) -> None:
        """Send what the path queued, note a change of state, arm the timer."""
        for packet, where in self.path.packets_to_send():
            self._send(packet, where)
        if self.path.state is not self._state:
            old, self._state = self._state, self.path.state
            level = logging.WARNING if self._state is DatagramState.DOWN else logging.INFO
            log.log(level, "%s: UDP %s -> %s%s", self.driver.name, old.value, self._state.value,
                    "; datagrams take the stream transport"
                    if self._state is DatagramState.DOWN else "")
        mode = self._redundancy()
        if mode is not self._mode:
            old_mode, self._mode = self._mode, mode
            self._redundancy_changed(old_mode, mode)
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        deadline = self.path.get_timer()
        if deadline is not None and not self.closed:
            self._timer = self.driver.loop.call_at(deadline, self._fire)

    def _redundancy(self) -> Redundancy:
        return self.path.redundancy(self.driver.loop.time())

    def _redundancy_changed(self, old: Redundancy, new: Redundancy) -> None:
        if new is Redundancy.TWO_PATHS:
            addresses = self.path.addresses(self.driver.loop.time())
            log.info("%s: redundant datagram channels: each datagram goes to %s",
                     self.driver.name, " and ".join(_show(a) for a, _ in addresses))
        elif old is Redundancy.TWO_PATHS:
            log.info("%s: redundant datagram channels: only one recent client address; "
                     "datagrams go to it alone", self.driver.name)

    def _fire(self) -> None:
        self._timer = None
        self.path.handle_timer(self.driver.loop.time())
        self._after()

    def attach(self, sendto: Callable[[bytes, Address], None]) -> None:
        self._sendto = sendto

    def close(self) -> None:
        self.closed = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def status(self) -> dict[str, object]:
        now = self.driver.loop.time()
        out = self.path.statistics(now)
        out["peer"] = None if self.peer is None else _show(self.peer)
        redundant = out.get("redundant")
        if isinstance(redundant, dict):
            others = [a for a, _ in self.path.addresses(now) if a != self.path.peer]
            redundant["second_address"] = _show(others[0]) if others else None
        return out


def _show(addr: Address) -> str:
    if isinstance(addr, Leg):
        return f"the {addr.value} socket"
    host, port = addr[0], addr[1]
    return f"[{host}]:{port}" if ":" in str(host) else f"{host}:{port}"


class _Socket(asyncio.DatagramProtocol):
    def __init__(self, receive: Callable[[bytes], None], what: str) -> None:
        self._receive = receive
        self._what = what

    def datagram_received(self, data: bytes, addr: Address) -> None:
        self._receive(data)

    def error_received(self, exc: Exception) -> None:
        # ICMP unreachable and the like: a probe will go unanswered and the
        # path falls back to the stream; nothing to do here.
        log.debug("%s: %s", self._what, exc)


# Where a client socket leaves from: (path name, device, source address).
Backup = tuple[str, str | None, str | None]


class ClientDatagrams(SessionDatagrams):
    """The client's side: one socket moved to each new path, and for
    redundant channels a second one on the backup path."""

    __slots__ = ("_backup", "_bind_failed", "_second", "_second_at", "_second_task",
                 "_server", "_transport")

    def __init__(self, driver: SessionDriver, path: DatagramPath) -> None:
        super().__init__(driver, path)
        self._transport: asyncio.DatagramTransport | None = None
        self._server: Address | None = None
        self._backup: Backup | None = None  # the path manager's backup path
        # The second socket: bound where, its transport, the bind under way,
        # and a bind that failed (not tried again until the backup changes).
        self._second_at: tuple[Backup, Address] | None = None
        self._second: asyncio.DatagramTransport | None = None
        self._second_task: asyncio.Task[None] | None = None
        self._bind_failed: tuple[Backup, Address] | None = None
        self.attach(lambda packet, _: None)  # each leg's socket sends; see _send

    @property
    def peer(self) -> Address | None:
        return self._server

    def unbind(self) -> None:
        """The stream transport moved: datagrams take the stream until `rebind`."""
        self._close_socket()

    async def rebind(self, server: Address, device: str | None, source: str | None) -> None:
        """Leave from the same place as the stream transport now does; probe at once."""
        self._close_socket()
        self._server = server
        try:
            transport = await self._open(server, device, source, Leg.PRIMARY)
        except OSError as exc:
            log.info("%s: no UDP on this path (%s); datagrams take the stream",
                     self.driver.name, exc.strerror or exc)
            return
        self._transport = transport
        if self.closed:
            self._close_socket()
            return
        self.path.restart(self.driver.loop.time())
        self._after()
        self._sync_second()

    async def _open(self, server: Address, device: str | None, source: str | None,
                    leg: Leg) -> asyncio.DatagramTransport:
        """A connected UDP socket to the server, leaving by `device` or from `source`."""
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
                lambda: _Socket(lambda data: self._receive(data, leg),
                                f"{self.driver.name} UDP ({leg.value})"), sock=sock)
        except BaseException:  # OSError, or the bind cancelled at close
            sock.close()
            raise
        return transport

    def _send(self, packet: bytes, where: Where) -> None:
        transport = self._transport if where is Leg.PRIMARY else self._second
        if transport is not None:
            try:
                transport.sendto(packet)
            except OSError as exc:  # a path without a route: probes find out
                log.debug("%s: UDP send failed: %s", self.driver.name, exc)

    def _describe(self, where: Where) -> str:
        if where is Leg.SECOND and self._second_at is not None:
            return f"the server (via backup path {self._second_at[0][0]})"
        return "the server"

    def _close_socket(self) -> None:
        if self._transport is not None:
            self._transport.close()
            self._transport = None
        self.path.primary_unbound()

    # ---- redundant channels and the second socket ----------------------------

    def mark_redundant(self, cid: int) -> None:
        """Channel `cid` sends each datagram on two paths (from now on)."""
        if self.path.mark_redundant(cid):
            self._sync_second()

    def set_backup(self, name: str | None, device: str | None = None,
                   source: str | None = None) -> None:
        """The path a hard handover would go to now (None: none): redundant
        channels send their copies there. Called often; acts on changes."""
        # Neither a device nor an address to leave from: such a socket would
        # follow the default route, most likely the active path itself.
        self._backup = None if name is None or (device is None and source is None) else (
            name, device, source)
        self._sync_second()

    def _sync_second(self) -> None:
        """Have the second socket where it is wanted, and only while it is."""
        if self._second_task is not None:
            return  # the bind under way syncs again when it is done
        before = self.path.redundant_channels
        if before:
            self.path.keep_channels(set(self.driver.session.channel_ids()))
        changed = self.path.redundant_channels != before
        want = None
        if (self._backup is not None and self._server is not None and not self.closed
                and self.path.redundant_channels):
            want = (self._backup, self._server)
        if want != self._bind_failed:
            self._bind_failed = None  # the backup changed: a new chance
        if want != self._second_at:
            changed = True
            self._close_second()
            if want is not None and self._bind_failed is None:
                self._second_at = want
                self._second_task = asyncio.get_running_loop().create_task(
                    self._bind_second(want), name=f"{self.driver.name} backup UDP")
        if changed:
            self._after()

    async def _bind_second(self, want: tuple[Backup, Address]) -> None:
        (name, device, source), server = want
        try:
            transport = await self._open(server, device, source, Leg.SECOND)
        except OSError as exc:
            self._second_task = None
            self._second_at = None
            self._bind_failed = want
            log.info("%s: no UDP socket on backup path %s (%s); redundant datagrams take "
                     "one path", self.driver.name, name, exc.strerror or exc)
            self._after()
            return
        self._second_task = None
        if self.closed or self._second_at != want:
            transport.close()
        else:
            self._second = transport
            self.path.second_bound(self.driver.loop.time())
            self._after()  # its first PING
        self._sync_second()

    def _close_second(self) -> None:
        if self._second is not None:
            self._second.close()
            self._second = None
        if self._second_at is not None:
            self._second_at = None
            self.path.second_unbound()

    def _redundancy(self) -> Redundancy:
        mode = super()._redundancy()
        if mode is Redundancy.NO_BACKUP and self._second_at is not None:
            return Redundancy.PROBING  # the socket on the backup path is being bound
        return mode

    def _redundancy_changed(self, old: Redundancy, new: Redundancy) -> None:
        backup = self._second_at[0][0] if self._second_at is not None else None
        if new is Redundancy.TWO_PATHS:
            log.info("%s: redundant datagrams go on two paths (the second: %s)",
                     self.driver.name, backup)
        elif new is Redundancy.NO_BACKUP and self._bind_failed is None:
            # (A backup path whose socket could not be bound was logged so.)
            log.info("%s: redundant datagrams take one path: there is no backup path",
                     self.driver.name)
        elif new is Redundancy.BACKUP_DOWN:
            log.info("%s: redundant datagrams take one path: UDP does not get through on "
                     "backup path %s", self.driver.name, backup)

    def close(self) -> None:
        super().close()
        if self._second_task is not None:
            self._second_task.cancel()
            self._second_task = None
        self._close_second()
        self._close_socket()

    def status(self) -> dict[str, object]:
        out = super().status()
        redundant = out.get("redundant")
        if isinstance(redundant, dict):
            redundant.pop("second_address", None)
            redundant["second_path"] = (self._second_at[0][0] if self._second_at is not None
                                        else None)
        return out


class DatagramListener(asyncio.DatagramProtocol):
    """The server's UDP socket: routes packets to sessions by tag."""

    def __init__(self) -> None:
        self.sessions: dict[bytes, SessionDatagrams] = {}
        self.transport: asyncio.DatagramTransport | None = None
        self.unknown = 0
        self._closed = asyncio.Event()
        # A worker of several (docs/workers.md): a packet for a session not
        # here goes to the worker holding it, if `elsewhere(tag, packet,
        # source)` says one does (True).
        self.elsewhere: Callable[[bytes, bytes, Address], bool] | None = None

    async def start(self, host: str, port: int, reuse_port: bool = False) -> None:
        loop = asyncio.get_running_loop()
        try:
            await loop.create_datagram_endpoint(lambda: self, local_addr=(host, port),
                                                reuse_port=reuse_port or None)
        except OSError as exc:
            raise TransportError(f"cannot listen for UDP on {host}:{port}: "
                                 f"{exc.strerror or exc}") from None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # CPython's selector datagram transport does not subclass
        # asyncio.DatagramTransport, so no isinstance check here.
        self.transport = cast(asyncio.DatagramTransport, transport)

    def add(self, tag: bytes, datagrams: SessionDatagrams) -> None:
        datagrams.attach(self._sendto)
        self.sessions[tag] = datagrams

    def remove(self, tag: bytes) -> None:
        self.sessions.pop(tag, None)

    def _sendto(self, packet: bytes, addr: Address) -> None:
        if self.transport is not None:
            self.transport.sendto(packet, addr)

    def datagram_received(self, data: bytes, addr: Address) -> None:
        self.receive(data, addr, handed=False)

    def receive(self, data: bytes, addr: Address, *, handed: bool) -> None:
        """A packet from `addr`; `handed`: another worker passed it here, so
        it stops here (at most one hop)."""
        try:
            _, tag, _, _ = parse_packet(data)
        except FramingError as exc:
            self.unknown += 1
            log.debug("UDP from %s dropped: %s", addr, exc)
            return
        target = self.sessions.get(tag)
        if target is None and not handed and self.elsewhere is not None \
                and self.elsewhere(tag, data, addr):
            return
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
