"""The server daemon's transport side: drives each opening, keeps the session table.

What an opening's bytes decide is roam.core.opening_server's; this reads
them off the socket, under the timeouts and admission limits, and acts on
the outcome.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from roam.connector.connector import Connector
from roam.core.admission import Openings, source_of
from roam.core.compress import AUTO, ZSTD_HISTORY, CompressionMode
from roam.core.datagrams import DatagramPath
from roam.core.opening import NeedMore
from roam.core.opening_server import (
    Busy,
    NewSession,
    Park,
    Refuse,
    Resumable,
    Resume,
    ServerOpening,
    StandbyState,
)
from roam.core.preamble import PREAMBLE, Status, reply_error
from roam.core.session import Session, SessionConfig
from roam.core.states import TransportState
from roam.crypto.keys import short_id
from roam.crypto.records import RecordFramer, RecordOpener, RecordSealer
from roam.errors import ProtocolError, TransportError
from roam.tasks import Tasks
from roam.transport.datagrams import DatagramListener, SessionDatagrams
from roam.transport.driver import SessionDriver
from roam.transport.protocol import TransportProtocol
from roam.transport.ratelog import RateLimitedLog

log = logging.getLogger("roam.server")

# A peer that has not finished its half of the handshake by then is dropped:
# it holds a socket and a task, and honest peers answer within a few RTTs.
HANDSHAKE_TIMEOUT = 10.0
# NEW transports in their handshake at once; more are answered BUSY. Each
# costs two X25519 operations and a socket and a task until
# HANDSHAKE_TIMEOUT, so this bounds what unauthenticated peers can make us do.
MAX_HANDSHAKES = 256
# Of which from one source address (an IPv6 /64): one host's idle
# handshakes cannot make the server answer BUSY to everyone else.
MAX_HANDSHAKES_PER_SOURCE = 64
# Transports in their opening at once, resumes and standbys included. A
# resume costs one AEAD check, and after a network-wide outage a thousand
# clients resume at once: under the NEW limit most of them were answered
# BUSY and retried, and the last resumed after 31 s (bench/scale.py). Over
# it the oldest opening of the source holding most gives way (core/admission.py).
MAX_OPENINGS = 4096
# Once this many openings are in progress, one source may hold at most
# MAX_OPENINGS_PER_SOURCE; its next opening evicts its own oldest. Below
# it, a thousand clients behind one carrier NAT resume at once unhindered.
OPENINGS_LOAD = 1024
MAX_OPENINGS_PER_SOURCE = 256
# How long a stopping server waits for its sessions' CLOSE frames to reach
# the kernel (sockets with room take them at once).
SHUTDOWN_WAIT = 2.0
# Connections the kernel queues until the loop accepts them. asyncio's
# default of 100 overflows when a network event moves many clients at once
# (a cell tower, a gateway reboot): each dropped SYN is retried after 1 s,
# then 3 s, 7 s, and so the resume of hundreds of sessions took 5 to 10 s.
# The kernel caps this at net.core.somaxconn.
LISTEN_BACKLOG = 4096
# A parked standby waits this long for its RESUME at most: the client opens
# a new one long before (its TCP keepalives find a dead one in about a
# minute); this only bounds what a vanished client leaves behind.
STANDBY_LIFETIME = 24 * 3600.0


@dataclass(slots=True)
class _Standby(StandbyState):
    """A session's standby key, its newest stamp, and the transport parked now."""

    proto: TransportProtocol | None = None


class _Sessions:
    """The session table as an opening sees it."""

    __slots__ = ("_sessions", "_standby")

    def __init__(self, sessions: dict[bytes, SessionDriver],
                 standby: dict[bytes, _Standby]) -> None:
        self._sessions, self._standby = sessions, standby

    def resumable(self, session_id: bytes) -> Resumable | None:
        driver = self._sessions.get(session_id)
        return None if driver is None or driver.session.closed else driver

    def standby(self, session_id: bytes) -> StandbyState | None:
        return self._standby.get(session_id)


class Router(Protocol):
    """Where transports go among a server's workers (roam.transport.handoff)."""

    def take(self, preamble: bytes, proto: TransportProtocol) -> bool:
        """True when `proto`, whose preamble this is, went to another worker."""

    def created(self, session_id: bytes, client_key: bytes, stamp: int) -> None:
        """A session began here, with this client's HELLO timestamp."""

    def ended(self, session_id: bytes) -> None: ...


@dataclass
class ServerConfig:
    host: str
    port: int
    private_key: bytes
    authorized: dict[bytes, str]
    connector: Connector
    session: SessionConfig
    # UDP for datagram channels, on the same address and port as TCP.
    udp: bool = True
    # Compression this server allows, and does with what it sends.
    compression: CompressionMode = AUTO
    # One of several workers on one port (SO_REUSEPORT, docs/workers.md).
    reuse_port: bool = False


class Server:
    def __init__(self, config: ServerConfig) -> None:
        self.config = config
        self.sessions: dict[bytes, SessionDriver] = {}
        self._server: asyncio.Server | None = None
        self._tasks = Tasks("server")
        self._last_hello: dict[bytes, int] = {}
        # Transports in their opening, and of those the NEW handshakes.
        self.openings: Openings[TransportProtocol] = Openings(
            MAX_OPENINGS, MAX_OPENINGS_PER_SOURCE, load=OPENINGS_LOAD)
        self.handshakes: Openings[TransportProtocol] = Openings(
            MAX_HANDSHAKES, MAX_HANDSHAKES_PER_SOURCE, evict=False)
        # One line a second at most for what strangers can cause.
        self._log_busy = RateLimitedLog(log)
        self._log_evicted = RateLimitedLog(log)
        self._log_refused = RateLimitedLog(log)
        # Refused transports by code (`Refuse.code`, BUSY): a fixed set of
        # keys, for status and --metrics.
        self.refused: dict[str, int] = {}
        self._standby: dict[bytes, _Standby] = {}
        self._table = _Sessions(self.sessions, self._standby)
        self.udp: DatagramListener | None = None
        # Set by a worker of several (roam.workers): RESUME and STANDBY
        # transports whose session another worker holds go there.
        self.router: Router | None = None
        # Each new session's driver, for what watches sessions (--metrics).
        self.on_session: Callable[[SessionDriver], None] = lambda driver: None

    async def start(self) -> tuple[str, int]:
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(self._accept, self.config.host, self.config.port,
                                                backlog=LISTEN_BACKLOG,
                                                reuse_port=self.config.reuse_port or None)
        sock = self._server.sockets[0].getsockname()
        if self.config.udp:
            self.udp = DatagramListener()
            try:
                await self.udp.start(sock[0], sock[1], reuse_port=self.config.reuse_port)
            except TransportError:
                self._server.close()
                raise
        log.info("listening on %s:%d%s", sock[0], sock[1], " (TCP and UDP)" if self.udp else "")
        return sock[0], sock[1]

    async def close(self, timeout: float = SHUTDOWN_WAIT) -> None:
        """Stop listening and end every session with CLOSE, so that clients
        close their applications' connections now instead of resuming."""
        if self._server is not None:
            self._server.close()
        self._tasks.cancel()
        drivers = list(self.sessions.values())
        for driver in drivers:
            driver.close(reason="server shutting down")
        try:
            async with asyncio.timeout(timeout):
                for driver in drivers:
                    await driver.close_and_wait(timeout)
        except TimeoutError:
            unsent = sum(1 for d in drivers if not d.done.is_set())
            log.warning("%d session(s) could not be told that the server stops", unsent)
        if self.udp is not None:
            self.udp.close()
            await self.udp.wait_closed()

    def _accept(self) -> TransportProtocol:
        return TransportProtocol(on_made=self._admit)

    async def accept_socket(self, sock: socket.socket) -> None:
        """A transport that arrived another way (an uplink a relay handed a
        client): from here on, as if it had been accepted on the listener."""
        await asyncio.get_running_loop().connect_accepted_socket(self._accept, sock=sock)

    async def accept_handed(self, sock: socket.socket, data: bytes) -> None:
        """A transport another worker accepted and read `data` from (its
        preamble, and what came with it): opened here as if accepted here,
        and never handed on again."""
        await asyncio.get_running_loop().connect_accepted_socket(
            lambda: TransportProtocol(on_made=lambda p: self._admit(p, handed=True),
                                      prefix=data), sock=sock)

    def heard_hello(self, client_key: bytes, stamp: int) -> None:
        """Another worker of this server accepted a NEW handshake from this
        client with this timestamp: a replay of it is refused here too."""
        if stamp > self._last_hello.get(client_key, 0):
            self._last_hello[client_key] = stamp

    def _admit(self, proto: TransportProtocol, handed: bool = False) -> None:
        """A connection arrived: admit it as an opening, or refuse it before
        it costs a task (a flood's connections must be cheap to turn away)."""
        admission = self.openings.admit(proto, source_of(proto.peer_host))
        for old in admission.evict:
            self._log_evicted(f"opening from {old.peer} dropped to make room for one from "
                              f"{proto.peer}: {len(self.openings)} openings in progress, "
                              f"{self.openings.held_by(source_of(old.peer_host))} from its "
                              "source")
            old.abort()
        if not admission.admitted:
            self._refuse_busy(proto, admission.reason)
            return
        self._tasks.spawn(self._handle(proto, handed), name="opening")

    async def _handle(self, proto: TransportProtocol, handed: bool = False) -> None:
        try:
            async with asyncio.timeout(HANDSHAKE_TIMEOUT):
                await self._opening(proto, handed)
        except TimeoutError:
            log.debug("transport from %s: handshake not finished in %g s", proto.peer,
                      HANDSHAKE_TIMEOUT)
            proto.abort()
        except TransportError as exc:
            log.debug("transport from %s ended during the handshake: %s", proto.peer, exc)
            proto.abort()
        finally:
            self.handshakes.release(proto)
            self.openings.release(proto)

    async def _opening(self, proto: TransportProtocol, handed: bool = False) -> None:
        first: bytes | None = None
        if self.router is not None and not handed:
            # The preamble names the session in cleartext: one read decides
            # whether this worker opens the transport or the one holding it.
            first = await proto.read_exactly(PREAMBLE.size, HANDSHAKE_TIMEOUT)
            if self.router.take(first, proto):
                return
        cfg = self.config
        opening = ServerOpening(private_key=cfg.private_key, authorized=cfg.authorized,
                                compression=cfg.compression, sessions=self._table,
                                last_hello=self._last_hello,
                                admit_handshake=lambda: self._admit_handshake(proto),
                                peer=proto.peer)
        outcome = await self._outcome(proto, opening, HANDSHAKE_TIMEOUT, first)
        if isinstance(outcome, NewSession):
            self._new(proto, outcome)
        elif isinstance(outcome, Resume):
            self._resume(proto, outcome)
        elif isinstance(outcome, Park):
            self._park(proto, opening, outcome)
        else:
            self._refused(proto, outcome)

    @staticmethod
    async def _outcome(proto: TransportProtocol, opening: ServerOpening, timeout: float,
                       first: bytes | None = None) -> Refuse | Busy | NewSession | Resume | Park:
        """Feed the opening what it asks for until it decides, starting with
        `first` when read already. The first read may wait `timeout`; each
        next one HANDSHAKE_TIMEOUT. Exact reads: what follows the opening
        stays in `proto`'s buffer for the records."""
        if first is None:
            first = await proto.read_exactly(opening.needed, timeout)
        outcome = opening.receive_data(first)
        while isinstance(outcome, NeedMore):
            outcome = opening.receive_data(await proto.read_exactly(outcome.size,
                                                                    HANDSHAKE_TIMEOUT))
        return outcome

    def _admit_handshake(self, proto: TransportProtocol) -> str | None:
        """A NEW handshake may start (None), or why not: it is answered BUSY."""
        admission = self.handshakes.admit(proto, source_of(proto.peer_host))
        return None if admission.admitted else admission.reason

    def _new(self, proto: TransportProtocol, new: NewSession) -> None:
        sid, keys, chosen = new.session_id, new.keys, new.compression
        now = asyncio.get_running_loop().time()
        session = Session(is_client=False, now=now, config=self.config.session,
                          compression=self.config.compression if chosen else None,
                          history=chosen == ZSTD_HISTORY)
        driver = SessionDriver(session, RecordSealer(keys.send, now), RecordOpener(keys.receive),
                               name=f"session {sid.hex()[:8]} ({new.client_name})")
        self.config.connector.attach(driver)
        self.sessions[sid] = driver
        self._standby[sid] = _Standby(keys.standby)
        if self.router is not None:
            self.router.created(sid, new.client_key, self._last_hello.get(new.client_key, 0))
        if self.udp is not None:
            datagrams = SessionDatagrams(driver, DatagramPath(
                sid[:8], keys.datagram_send, keys.datagram_receive, now, is_client=False))
            driver.datagrams = datagrams
            self.udp.add(sid[:8], datagrams)
        driver.on_transport_lost = lambda reason: log.info(
            "%s: transport lost (%s); waiting for the client to resume", driver.name, reason)
        driver.closed.add_callback(lambda: self._reap(sid, driver))
        self.on_session(driver)
        proto.write(new.reply)
        session.transport_attached(now, resume=False)
        driver.attach(proto)
        log.info("%s: new session from %s, client %s", driver.name, proto.peer,
                 short_id(new.client_key))

    def _reap(self, sid: bytes, driver: SessionDriver) -> None:
        """The session ended: forget it, its standby and its UDP tag."""
        if self.sessions.get(sid) is driver:
            del self.sessions[sid]
            standby = self._standby.pop(sid, None)
            if standby is not None and standby.proto is not None:
                standby.proto.abort()
            if self.udp is not None:
                self.udp.remove(sid[:8])
            if self.router is not None:
                self.router.ended(sid)

    def _resume(self, proto: TransportProtocol, resume: Resume) -> None:
        """Move the session onto `proto`: its first record authenticated."""
        driver = self.sessions[resume.session_id]
        if resume.reply:
            proto.write(resume.reply)
        now = asyncio.get_running_loop().time()
        # A number of its own: its first frame says whether it replaces the
        # others (RESUME) or joins them (JOIN, docs/protocol.md 5.2).
        tid = driver.next_transport()
        session = driver.session
        session.transport_attached(now, resume=True, tid=tid)
        try:
            # The first frame goes in before anything the client sent after it.
            session.receive_payload(resume.payload, now, tid)
        except ProtocolError as exc:
            log.warning("%s: bad first record from %s: %s", driver.name, proto.peer, exc)
            driver.close(exc.code, str(exc))
            proto.close()
            return
        driver.attach(proto, RecordFramer(), tid=tid, alone=False)
        joined = session.transport_ids().get(tid) is TransportState.STANDBY
        log.info("%s: %s on a %s from %s", driver.name, "joined" if joined else "resumed",
                 "standby transport" if resume.standby else "new transport", proto.peer)
        driver.flush()

    def _park(self, proto: TransportProtocol, opening: ServerOpening, park: Park) -> None:
        """STANDBY proved: answer OK, and keep the transport for a resume."""
        sid = park.session_id
        driver, standby = self.sessions[sid], self._standby[sid]
        old, standby.proto = standby.proto, proto
        if old is not None:
            old.abort()  # one standby per session: the newest
        proto.write(park.reply)
        log.info("%s: standby transport parked from %s", driver.name, proto.peer)
        self._tasks.spawn(self._parked(proto, opening, driver, standby),
                          name=f"standby-{sid.hex()[:8]}")

    async def _parked(self, proto: TransportProtocol, opening: ServerOpening,
                      driver: SessionDriver, standby: _Standby) -> None:
        try:
            outcome = await self._outcome(proto, opening, STANDBY_LIFETIME)
            if isinstance(outcome, Resume):
                self._resume(proto, outcome)
            elif isinstance(outcome, Refuse | Busy):
                self._refused(proto, outcome)
        except TransportError as exc:
            log.debug("%s: standby transport from %s ended: %s", driver.name, proto.peer, exc)
            proto.abort()
        finally:
            if standby.proto is proto:
                standby.proto = None

    def _refuse_busy(self, proto: TransportProtocol, reason: str) -> None:
        """BUSY: the client retries with jittered backoff. Logged at most once
        a second: when a mass reconnect overloads the server, a line per
        refused transport (tens of thousands) costs the CPU that it lacks."""
        self._log_busy(f"transport from {proto.peer} answered BUSY: {reason}")
        self._count_refusal(Status.BUSY.name)
        proto.write(reply_error(Status.BUSY, reason))
        proto.close()

    def _refused(self, proto: TransportProtocol, outcome: Refuse | Busy) -> None:
        if isinstance(outcome, Busy):
            self._refuse_busy(proto, outcome.reason)
            return
        self._log_refused(outcome.log)
        self._count_refusal(outcome.code)
        if outcome.reply:
            proto.write(outcome.reply)
        proto.close()

    def _count_refusal(self, code: str) -> None:
        self.refused[code] = self.refused.get(code, 0) + 1
