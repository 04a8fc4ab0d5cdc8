"""The relay daemon: accept, read one header, dial or take an uplink, then splice.

Every decision is roam.relay.core's; this module only moves bytes, arms
timeouts and calls the OS. One TaskGroup holds every task of the daemon
(the accept loop, one task per connection, one watcher per idle uplink),
each named; a connection's task catches whatever its peer causes, so no
peer can end the daemon.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import itertools
import logging
import socket
import time
from dataclasses import dataclass, field

from roam.connector.allow import format_host_port, split_host_port
from roam.crypto.keys import public_key, short_id
from roam.errors import ProtocolError
from roam.listener import listening_socket
from roam.names import Host, InvalidHost
from roam.relay.admission import Admission
from roam.relay.config import RelayConfig
from roam.relay.core import Arrival, Refuse, Register, Splice
from roam.relay.directory import Onward
from roam.relay.fleet import Fleet
from roam.relay.hop import (
    Hop,
    HopKind,
    Next,
    Proof,
    Status,
    decode_reply,
    refusal,
    reply_wanted,
    seal_hop,
)
from roam.relay.splice import PipePool, SpliceStats, splice
from roam.relay.uplinks import Uplinks

log = logging.getLogger("roam")

# A header is one read from an honest sender; ten seconds covers a slow
# link's connect and first segment, and bounds what an idle stranger holds.
HEADER_TIMEOUT_S = 10.0
READ_SIZE = 4096
# Connecting to the next hop: a relay on the same continent answers within
# a second; five leaves room for a SYN retransmission (1 s, then 2 s).
DIAL_TIMEOUT_S = 5.0
# An idle uplink carries a keepalive byte this often (relay to server), so
# NATs and firewalls on the way keep it open: 15 s is below the 30 s UDP and
# the common 60 s TCP idle timeouts of consumer NATs; the server counts an
# uplink dead after three missed ones.
KEEPALIVE_S = 15.0
KEEPALIVE = b"\x00"
# Written on an idle uplink when a client takes it: the client's bytes follow.
GO = b"\x01"
# One relay process holds ten thousand spliced sessions: 2 sockets each
# (pipes come from one pool, held only by a direction whose destination is
# behind), so the listener backs off (and says so) when descriptors run out
# rather than spinning.
ACCEPT_BACKOFF_S = 0.1
# Connections whose header is not decided yet: each holds a socket and at
# most MAX_HEADER plus one read (5 KiB), so strangers can make the relay hold
# at most 5 MiB; beyond it a newcomer is told BUSY at once. An honest client
# sends its header in its first segment: a thousand at once is a flood or a
# mass reconnect, which backs off (the client's BUSY backoff) and comes back.
MAX_PENDING = 1024
# A server dials a new spare uplink as soon as one is taken (one connect and
# one header); when a burst of clients takes every spare at once (the
# sessions of a relay that died all resuming here), a client waits for the
# next one rather than being refused: in the fleet's lab test, sessions
# resuming at once after a relay was killed found no spare at the relay
# holding their server's uplinks, were refused UNKNOWN_TARGET and waited
# out their reconnect backoff (the last resumed 2.75 s after the kill). A
# server that is really gone costs a client this much more before
# UNKNOWN_TARGET.
UPLINK_WAIT_S = 2.0


class DialRefused(Exception):
    """The address a client asked the relay to dial is not in its --dial-allow."""


class Refused(Exception):
    """Another relay of the fleet refused the hop (its status and reason)."""

    def __init__(self, status: Status, reason: str) -> None:
        super().__init__(f"{status.name}: {reason}")
        self.status = status
        self.reason = reason


@dataclass
class _Idle:
    sock: socket.socket
    identity: bytes
    watcher: asyncio.Task[None] | None = None
    taken: bool = False  # a client's splice owns the socket now


@dataclass
class RelayStatistics:
    spliced: int = 0  # transports spliced so far
    active: int = 0  # splicing now
    bytes_up: int = 0  # client to next hop, in finished splices
    bytes_down: int = 0
    refused: dict[str, int] = field(default_factory=dict)  # by status name


class Relay:
    def __init__(self, config: RelayConfig, *, max_pending: int = MAX_PENDING) -> None:
        self.config = config
        self.max_pending = max_pending
        self._pending = 0
        self.identity = public_key(config.private_key)
        self.admission = Admission(keys=config.admit_keys, totp=config.admit_totp,
                                   admit_any=config.admit_any,
                                   relay_private=config.private_key)
        self.uplinks = Uplinks()
        self.pipes = PipePool()  # shared by every splice
        self.stats = RelayStatistics()
        self._idle: dict[int, _Idle] = {}
        self._ids = itertools.count(1)
        self._live: dict[int, SpliceStats] = {}
        self._listener: socket.socket | None = None
        self.address: tuple[str, int] | None = None
        self.fleet: Fleet | None = None
        if config.directory is not None:
            self.fleet = Fleet(config.directory, identity=self.identity,
                               address=config.fleet_address or format_host_port(*config.listen),
                               admission=self.admission, uplinks=self.uplinks,
                               drop=self._drop_instance)
        self._hop_stamp = 0  # this relay's own hop headers (to the fleet): rising
        # Set when an uplink of the identity arrives: clients wait for a spare.
        self._offered: dict[bytes, asyncio.Event] = {}

    def open(self) -> tuple[str, int]:
        """Bind the listening socket (before run: the caller learns the port)."""
        bound = self._bind().getsockname()
        return bound[0], bound[1]

    def _bind(self) -> socket.socket:
        sock = self._listener = listening_socket(*self.config.listen)
        bound = sock.getsockname()
        self.address = (bound[0], bound[1])
        return sock

    async def run(self) -> None:
        listener = self._listener if self._listener is not None else self._bind()
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.TaskGroup() as tasks:
                self._tasks = tasks
                if self.fleet is not None:
                    tasks.create_task(self.fleet.run(), name="relay-fleet")
                while True:
                    try:
                        sock, addr = await loop.sock_accept(listener)
                    except OSError as exc:
                        log.warning("relay: accept failed: %s", exc)
                        await asyncio.sleep(ACCEPT_BACKOFF_S)
                        continue
                    sock.setblocking(False)
                    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                    peer = format_host_port(addr[0], addr[1])
                    if self._pending >= self.max_pending:
                        self._busy(sock, peer)
                        continue
                    self._pending += 1
                    tasks.create_task(self._arrival(sock, peer), name=f"relay-conn-{peer}")
        finally:
            listener.close()
            self.pipes.close()
            for idle in self._idle.values():
                idle.sock.close()
            self._idle.clear()
            if self.fleet is not None:
                # Out of the directory at once, rather than when the records run out.
                await self.fleet.leave()
                await self.fleet.close()

    # ---- one connection -----------------------------------------------------------

    def _busy(self, sock: socket.socket, peer: str) -> None:
        reason = f"{self._pending} connections are waiting to be admitted; try again"
        self._count_refusal(Status.BUSY)
        log.warning("relay: refused %s: %s", peer, reason)
        with contextlib.suppress(OSError):
            sock.send(refusal(Status.BUSY, reason))  # a fresh socket's buffer takes it
        sock.close()

    async def _arrival(self, sock: socket.socket, peer: str) -> None:
        """Counted as pending (by the accept loop) until its header is decided."""
        keep = False
        try:
            keep = await self._decide(sock, peer)
        except (OSError, TimeoutError) as exc:
            log.info("relay: connection from %s ended: %s", peer, exc or type(exc).__name__)
        except Exception:  # a peer must never end the daemon
            log.exception("relay: connection from %s failed", peer)
        finally:
            if not keep:
                sock.close()

    async def _decide(self, sock: socket.socket, peer: str) -> bool:
        """True when the socket now belongs to the idle uplinks."""
        loop = asyncio.get_running_loop()
        arrival = Arrival(self.config.private_key, self.admission)
        decision = None
        try:
            async with asyncio.timeout(HEADER_TIMEOUT_S):
                while decision is None:
                    data = await loop.sock_recv(sock, READ_SIZE)
                    if not data:
                        return False
                    decision = arrival.feed(data, time.time())
        finally:
            self._pending -= 1
        if isinstance(decision, Refuse):
            self._count_refusal(decision.status)
            log.info("relay: refused %s: %s", peer, decision.reason)
            with contextlib.suppress(OSError):
                await loop.sock_sendall(sock, decision.reply)
            return False
        if isinstance(decision, Register):
            await loop.sock_sendall(sock, decision.reply)
            conn = next(self._ids)
            idle = self._idle[conn] = _Idle(sock, decision.hop.sender)
            new = self.uplinks.held().get(decision.hop.sender) != decision.hop.instance
            for gone in self.uplinks.offer(decision.hop.sender, decision.hop.instance, conn):
                self._drop_idle(gone)
            if new and self.fleet is not None:
                self.fleet.wake()  # claim it in the directory now, not at the next refresh
            offered = self._offered.pop(decision.hop.sender, None)
            if offered is not None:
                offered.set()  # clients waiting for a spare of this server
            idle.watcher = self._tasks.create_task(self._watch(conn, idle),
                                                   name=f"relay-uplink-{conn}")
            log.info("relay: %s at %s", decision.how, peer)
            return True
        await self._splice(sock, peer, decision)
        return False

    async def _splice(self, sock: socket.socket, peer: str, decision: Splice) -> None:
        loop = asyncio.get_running_loop()
        hop = decision.hop
        if decision.step is not None and self.fleet is not None:
            # A code is accepted once in the whole fleet, not once per relay.
            fresh = await self.fleet.use_step(hop.sender, decision.step)
            if not fresh:
                await self._refuse(sock, Status.NOT_ADMITTED, (
                    f"{short_id(hop.sender)}: this one-time code was already used (at another "
                    "relay of the fleet)") if fresh is False else (
                    "the fleet's directory does not answer: a one-time code cannot be checked "
                    "now; a ticket or an admitted key still passes"))
                return
        onward: socket.socket | None = None
        by = ""  # where it goes, for the log
        crossed = None
        # The last hop: the server's uplink if it keeps one here (it may be
        # unreachable from outside), else the address the client gave.
        if hop.next is Next.UPLINK_OF_TARGET or hop.next_key == hop.target or decision.peer:
            onward = await self._take_uplink(hop.target)
            if onward is not None:
                by = f"the uplink of {short_id(hop.target)}"
            if onward is None and self.fleet is not None and not decision.peer:
                # Another relay of the fleet may hold it: one more hop, never
                # two (a relay does not pass a fleet peer's hop on).
                try:
                    crossed = await self._cross(hop, decision.rest)
                except Refused as exc:
                    await self._refuse(sock, exc.status, exc.reason)
                    return
                if crossed is not None:
                    onward, by = crossed
            if onward is None and (hop.next is Next.UPLINK_OF_TARGET or decision.peer):
                where = ("in the fleet" if self.fleet is not None and not decision.peer
                         else "at this relay")
                await self._refuse(sock, Status.UNKNOWN_TARGET,
                                   f"no uplink of server {short_id(hop.target)} {where}")
                return
        if crossed is not None:
            first = b""  # the other relay has had the client's bytes since its header
        elif onward is not None:
            first = GO + decision.rest
        else:
            try:
                onward = await self._dial(hop.address)
            except DialRefused as exc:
                await self._refuse(sock, Status.NOT_ADMITTED, str(exc))
                return
            except OSError as exc:
                if exc.errno in (errno.EMFILE, errno.ENFILE):
                    await self._refuse(sock, Status.BUSY, "the relay is out of file "
                                       "descriptors; try again")
                else:
                    await self._refuse(sock, Status.UNREACHABLE,
                                       f"cannot reach {hop.address}: {exc.strerror or exc}")
                return
            except (TimeoutError, ValueError) as exc:
                await self._refuse(sock, Status.UNREACHABLE, f"cannot reach {hop.address}: "
                                   f"{exc or type(exc).__name__}")
                return
            first = decision.rest
            by = hop.address
        if onward is None:  # every branch above gave one or returned
            raise RuntimeError("no onward connection")
        conn = next(self._ids)
        stats = self._live[conn] = SpliceStats()
        self.stats.spliced += 1
        self.stats.active += 1
        log.info("relay: %s (%s) spliced to %s", short_id(hop.sender), decision.how, by)
        try:
            await loop.sock_sendall(sock, decision.reply)
            await splice(sock, onward, stats=stats, first_to_b=first, pool=self.pipes)
        finally:
            onward.close()
            self.stats.active -= 1
            self.stats.bytes_up += stats.a_to_b
            self.stats.bytes_down += stats.b_to_a
            del self._live[conn]

    async def _cross(self, hop: Hop, rest: bytes) -> tuple[socket.socket, str] | None:
        """A connection to the relay of the fleet that holds an uplink of
        `hop.target`, its reply read: this relay's own hop header went first
        (sealed to that relay, next: the uplink held there), then `rest`.
        None when no relay of the fleet claims one; Refused when every one
        that does failed."""
        fleet = self.fleet
        if fleet is None:  # only a relay of a fleet crosses
            raise RuntimeError("a splice across the fleet on a relay without --directory")
        candidates = await fleet.onward(hop.target)
        if not candidates:
            return None
        failures: list[str] = []
        status = Status.UNREACHABLE
        for other in candidates:
            try:
                sock = await self._hop_to(other, hop.target, rest)
            except Refused as exc:
                failures.append(f"relay {short_id(other.relay)}: {exc}")
                if exc.status is Status.UNKNOWN_TARGET:
                    status = Status.UNKNOWN_TARGET  # its uplinks went meanwhile
                continue
            except (OSError, TimeoutError, ValueError, ProtocolError) as exc:
                fleet.suspect(other.relay)
                failures.append(f"relay {short_id(other.relay)} ({other.address}): "
                                f"{getattr(exc, 'strerror', None) or exc or type(exc).__name__}")
                continue
            return sock, (f"the uplink of {short_id(hop.target)} at relay "
                          f"{short_id(other.relay)} ({other.address})")
        raise Refused(status, f"the relays holding uplinks of server {short_id(hop.target)} "
                              f"refused or did not answer: {'; '.join(failures)}")

    async def _hop_to(self, other: Onward, target: bytes, rest: bytes) -> socket.socket:
        """Dial `other`, send this relay's hop header and `rest`, read its reply."""
        loop = asyncio.get_running_loop()
        host, port = split_host_port(other.address, "fleet relay")
        # Stamps rise: the other relay takes a (sender, stamp) pair once.
        self._hop_stamp = max(time.time_ns(), self._hop_stamp + 1)
        header = seal_hop(Hop(HopKind.CLIENT, self._hop_stamp, target, Next.UPLINK_OF_TARGET,
                              proof=Proof.KEY), self.config.private_key, other.relay)
        async with asyncio.timeout(DIAL_TIMEOUT_S):
            infos = await loop.getaddrinfo(host, int(port), type=socket.SOCK_STREAM)
            family, kind, proto, _, addr = infos[0]
            sock = socket.socket(family, kind, proto)
            sock.setblocking(False)
            try:
                await loop.sock_connect(sock, addr)
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                # Everything at once: the other relay's answer is read after.
                await loop.sock_sendall(sock, header + rest)
                reply = b""
                while (decoded := decode_reply(reply)) is None:
                    # Exactly the reply: what follows is the server's, for the client.
                    data = await loop.sock_recv(sock, reply_wanted(reply))
                    if not data:
                        raise ConnectionError("it closed the connection without a reply")
                    reply += data
                status, body, _ = decoded
                if status is not Status.OK:
                    raise Refused(status, body.decode("utf-8", "replace"))
            except BaseException:
                sock.close()
                raise
        return sock

    def _drop_instance(self, identity: bytes, instance: bytes) -> None:
        """The fleet saw a newer instance of this server uplinked elsewhere."""
        for conn in self.uplinks.drop(identity, instance):
            self._drop_idle(conn)

    async def _refuse(self, sock: socket.socket, status: Status, reason: str) -> None:
        self._count_refusal(status)
        log.info("relay: refused: %s", reason)
        with contextlib.suppress(OSError):
            await asyncio.get_running_loop().sock_sendall(sock, refusal(status, reason))

    def _count_refusal(self, status: Status) -> None:
        self.stats.refused[status.name] = self.stats.refused.get(status.name, 0) + 1

    async def _dial(self, address: str) -> socket.socket:
        host, port_text = split_host_port(address, "next hop")
        port = int(port_text)
        loop = asyncio.get_running_loop()
        async with asyncio.timeout(DIAL_TIMEOUT_S):
            infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
            allow = self.config.dial_allow
            if allow is not None:
                # As the server's --allow: a name rule admits the name, an
                # address rule the address it resolves to, which is the one dialled.
                try:
                    by_name = allow.allows_name(Host.parse(host), port)
                except InvalidHost as exc:
                    raise DialRefused(f"this relay does not dial {address}: {exc}") from None
                infos = [i for i in infos if by_name or allow.allows_address(str(i[4][0]), port)]
                if not infos:
                    raise DialRefused(f"this relay does not dial {address} (not in its "
                                      "--dial-allow)")
            family, kind, proto, _, addr = infos[0]
            sock = socket.socket(family, kind, proto)
            sock.setblocking(False)
            try:
                await loop.sock_connect(sock, addr)
            except BaseException:
                sock.close()
                raise
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return sock

    # ---- idle uplinks -------------------------------------------------------------

    async def _take_uplink(self, identity: bytes) -> socket.socket | None:
        """An idle uplink of `identity`; when this relay holds uplinks of it
        but none is idle right now (a burst of clients took the spares), the
        next one the server dials, up to UPLINK_WAIT_S."""
        deadline = asyncio.get_running_loop().time() + UPLINK_WAIT_S
        while (sock := await self._idle_uplink(identity)) is None and self.uplinks.known(
                identity):
            offered = self._offered.setdefault(identity, asyncio.Event())
            try:
                async with asyncio.timeout_at(deadline):
                    await offered.wait()
            except TimeoutError:
                return None
        return sock

    async def _idle_uplink(self, identity: bytes) -> socket.socket | None:
        while (conn := self.uplinks.take(identity)) is not None:
            idle = self._idle.pop(conn)
            watcher = idle.watcher
            if watcher is not None and watcher.done():
                continue  # it ended (closed) while we looked
            idle.taken = True
            if watcher is not None:
                watcher.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await watcher
            return idle.sock
        return None

    async def _watch(self, conn: int, idle: _Idle) -> None:
        """Keepalives on an idle uplink, and its end when the server closes it."""
        loop = asyncio.get_running_loop()
        try:
            while True:
                try:
                    async with asyncio.timeout(KEEPALIVE_S):
                        data = await loop.sock_recv(idle.sock, 1)
                except TimeoutError:
                    await loop.sock_sendall(idle.sock, KEEPALIVE)
                    continue
                if data:
                    log.info("relay: uplink of %s sent data while idle; closing it",
                             short_id(idle.identity))
                break
        except OSError as exc:
            log.info("relay: uplink of %s failed: %s", short_id(idle.identity), exc)
        finally:
            # The socket is closed here, after its reads were given up, and
            # never under a pending read; unless a client's splice took it.
            if not idle.taken:
                self._idle.pop(conn, None)
                self.uplinks.lost(conn)
                idle.sock.close()

    def _drop_idle(self, conn: int) -> None:
        """An uplink replaced (its server restarted): its watcher closes it."""
        idle = self._idle.get(conn)
        if idle is not None and idle.watcher is not None:
            idle.watcher.cancel()
            log.info("relay: an uplink of %s replaced", short_id(idle.identity))

    def status(self) -> dict[str, object]:
        """What `roam status` shows for a relay."""
        live_up = sum(s.a_to_b for s in self._live.values())
        live_down = sum(s.b_to_a for s in self._live.values())
        return {
            "role": "relay",
            "identity": short_id(self.identity),
            "spliced": self.stats.spliced,
            "active": self.stats.active,
            "pipes": self.pipes.open,
            "bytes_up": self.stats.bytes_up + live_up,
            "bytes_down": self.stats.bytes_down + live_down,
            "refused": dict(self.stats.refused),
            "uplinks": {short_id(k): n for k, n in self.uplinks.idle().items()},
            **({"fleet": self.fleet.status()} if self.fleet is not None else {}),
        }
