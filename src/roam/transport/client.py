"""The client daemon's transport side: handshake once, resume on every new transport.

What the opening bytes say is roam.core.opening_client's; this connects,
writes them, reads the reply under the attempt's timeouts, and acts on it.
"""

from __future__ import annotations

import asyncio
import logging
import random
import socket
import time
import weakref
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TypeVar

from roam.connector.allow import parse_port, split_host_port
from roam.core import events as ev
from roam.core.compress import AUTO, ZSTD_HISTORY, CompressionMode
from roam.core.datagrams import DatagramPath
from roam.core.follow import Follow, Outcome, leftovers
from roam.core.handover import Connect, Drain, Handover, Resume, SwitchTo
from roam.core.opening import NeedMore
from roam.core.opening_client import (
    ClientOpening,
    NewOpening,
    ResumeOpening,
    StandbyOpening,
    UnknownSession,
)
from roam.core.preamble import Status, Suite
from roam.core.session import Session, SessionConfig
from roam.core.states import SessionState, TransportState
from roam.crypto.noise import CipherState
from roam.crypto.records import RecordOpener, RecordSealer
from roam.errors import (
    ClientRefused,
    HandshakeError,
    RoamError,
    ServerBusy,
    TransportError,
)
from roam.relay.hop import Proof, decode_reply, reply_wanted
from roam.relay.hop import Status as RelayStatus
from roam.relay.route import RelayHop, route_headers
from roam.tasks import Tasks
from roam.transport.datagrams import ClientDatagrams
from roam.transport.driver import SessionDriver
from roam.transport.protocol import TransportProtocol

log = logging.getLogger("roam.client")

T = TypeVar("T")

# Waits between reconnect attempts: the first at once (a reset is usually a
# one-off), then doubling, capped so a returning network is found within 2 s.
BACKOFF = (0.0, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0)
# How often a move to the server's new address looks whether its transport
# joined, and whether the old one drained: a tenth of a LAN round trip's
# worth of waiting at most, and no busy loop.
FOLLOW_POLL = 0.01
# After BUSY the server is overloaded with openings, not unreachable: wait
# longer, and with jitter, so that a thousand clients refused together do not
# come back together ("equal jitter": half fixed, half random, doubling from
# 0.25 s to 8 s; AWS Architecture Blog, "Exponential Backoff and Jitter").
BUSY_BASE, BUSY_MAX = 0.25, 8.0


def busy_delay(attempt: int, rng: random.Random | None = None) -> float:
    """Seconds to wait before attempt `attempt` (from 1) after BUSY answers."""
    cap = min(BUSY_MAX, BUSY_BASE * 2.0 ** max(0, attempt - 1))
    jitter: float = (rng or random).uniform(0, cap / 2)
    return cap / 2 + jitter
# TCP keepalive on a parked standby: it carries nothing for long stretches,
# and a NAT or a dead path must not leave us trusting a corpse. Probes after
# 15 s idle, every 5 s, 3 lost: a dead standby is found within 30 s, and the
# carrier's NAT mapping (RFC 5382: at least 2 h) stays warm.
STANDBY_KEEPIDLE, STANDBY_KEEPINTVL, STANDBY_KEEPCNT = 15, 5, 3
# How long a stopping client waits for its CLOSE to reach the kernel: a
# socket with room takes it at once; only a full one to a dead path waits.
SHUTDOWN_WAIT = 2.0


@dataclass(frozen=True)
class Attachment:
    """Where a transport leaves from: a named path, bound to a device or a source address."""

    name: str
    device: str | None = None
    source: str | None = None
    # Relays in route order (roam.relay.route); empty: straight to the server.
    route: tuple[RelayHop, ...] = ()


@dataclass(frozen=True)
class HandoverRecord:
    """One handover, for `roam status` and the event log."""

    kind: str  # "soft" | "hard"
    reason: str
    origin: str | None
    target: str
    stall_ms: float  # from the last byte heard on the old transport to RESUMED
    frames_resent: int
    started: float  # wall clock, seconds since the epoch


@dataclass
class ClientConfig:
    server_host: str
    server_port: int
    server_key: bytes
    private_key: bytes
    session: SessionConfig
    suite: Suite = Suite.AESGCM_SHA256
    # UDP for datagram channels when it gets through; else they take the stream.
    udp: bool = True
    # Compression this client offers, and does with what it sends.
    compression: CompressionMode = AUTO
    # A relay's one-time code for the wall clock given (--relay-otp-secret or
    # a person's answer); None: relays admit this client by its key only.
    relay_otp: Callable[[float], int] | None = None
    # Where the server is now, asked of its registrars after a failed
    # resume (it may have moved: the double jump); None: the address is fixed.
    locate: Callable[[], Awaitable[tuple[str, int] | None]] | None = None


class Client:
    def __init__(self, config: ClientConfig) -> None:
        self.config = config
        self.driver: SessionDriver | None = None
        self.session_id: bytes | None = None
        self._reconnecting: asyncio.Task[None] | None = None
        self._need_handshake = False  # the server forgot the session
        self.stopped = asyncio.Event()
        self.transports = 0
        # Paths: where the current transport leaves from, and which one to try
        # on the n-th reconnect attempt (the path manager rotates through the
        # usable ones); without paths the system picks the route.
        self.attachment: Attachment | None = None
        self.choose_attachment: Callable[[int], Attachment | None] = lambda n: self.attachment
        self.on_handover: Callable[[HandoverRecord], None] = lambda r: None
        self.on_attachment_failed: Callable[[Attachment, str], None] = lambda a, why: None
        self.on_lost: Callable[[Attachment | None, str], None] = lambda a, why: None
        # Every new session (the first, and one after the server forgot us).
        self.on_session: Callable[[SessionDriver], None] = lambda driver: None
        self._lost: tuple[float, str] | None = None  # (last heard, reason) of a lost transport
        self._handover_ready: asyncio.Future[int] | None = None
        # RESUMED's frame count, or None when the transport was lost first.
        self._resumed: asyncio.Future[int | None] | None = None
        self._token = 0
        # A spare transport parked at the server on another path (STANDBY):
        # a hard handover to that path resumes on it without a connect.
        self.standby: tuple[Attachment, TransportProtocol] | None = None
        # The path of each transport the session has (by the core's number).
        self._paths: dict[int, Attachment | None] = {}
        self._tasks = Tasks("client")
        # Moves to the server's new address under way: the path manager
        # leaves the standby alone meanwhile (the new transport is it).
        self.following = 0
        # Set when the core moves the session (a joined standby took over).
        self._switched: asyncio.Future[None] | None = None
        self._standby_key: CipherState | None = None
        self._standby_stamp = 0
        # Relays: the ticket each gave us (by its key), the last hop header's
        # stamp (they rise: a relay takes a stamp once), and the replies each
        # relayed transport still owes before the server's.
        self._tickets: dict[bytes, bytes] = {}
        # A client admitted by code presents another relay's ticket where it
        # has none (a relay fleet takes the tickets of all its relays), once
        # per relay: a relay that refused one gets a code from then on.
        self._borrowing: set[bytes] = set()
        self._no_borrow: set[bytes] = set()
        self._relay_stamp = 0
        self._owed: weakref.WeakKeyDictionary[TransportProtocol, tuple[RelayHop, ...]] = (
            weakref.WeakKeyDictionary())

    @property
    def reconnecting(self) -> bool:
        """A transport was lost and the reconnect loop is finding another."""
        return self._reconnecting is not None and not self._reconnecting.done()

    async def _relocate(self) -> None:
        """Ask the registrars where the server is; move there if it moved."""
        if self.config.locate is None:
            return
        found = await self.config.locate()
        if found is not None and found != (self.config.server_host, self.config.server_port):
            log.info("the server moved: %s -> %s:%d (its registrar says)", self.server,
                     found[0], found[1])
            self.config.server_host, self.config.server_port = found

    @property
    def server(self) -> str:
        return f"{self.config.server_host}:{self.config.server_port}"

    async def _connect(self, timeout: float, via: Attachment | None = None) -> TransportProtocol:
        """A transport toward the server on `via`: straight, or to the first
        relay of its route, with every relay's hop header already written."""
        loop = asyncio.get_running_loop()
        route = via.route if via is not None else ()
        host, port = ((route[0].host, route[0].port) if route
                      else (self.config.server_host, self.config.server_port))
        where = f" via {via.name}" if via is not None else ""
        to = f"relay {route[0].name} ({route[0].address})" if route else self.server
        try:
            async with asyncio.timeout(timeout):
                if via is None or (via.device is None and via.source is None):
                    _, proto = await loop.create_connection(TransportProtocol, host, port)
                else:
                    sock = await self._bound_socket(via, host, port)
                    _, proto = await loop.create_connection(TransportProtocol, sock=sock)
        except TimeoutError:
            raise TransportError(f"connecting to {to}{where} timed out") from None
        except OSError as exc:
            raise TransportError(f"cannot connect to {to}{where}: "
                                 f"{exc.strerror or exc}") from None
        self.transports += 1
        if route:
            # The headers go now, the preamble right after: no relay is
            # waited for (their replies are read with the server's).
            self._relay_stamp = max(time.time_ns(), self._relay_stamp + len(route))
            proto.write(route_headers(route, sender_private=self.config.private_key,
                                      target=self.config.server_key, server=self.server,
                                      wall=time.time(), stamp_ns=self._relay_stamp,
                                      proof_for=self._relay_proof))
            self._owed[proto] = route
        return proto

    def _relay_proof(self, relay: RelayHop, wall: float) -> tuple[Proof, int, bytes]:
        ticket = self._tickets.get(relay.key)
        if ticket is not None:
            return Proof.TICKET, 0, ticket
        if self.config.relay_otp is not None:
            if self._tickets and relay.key not in self._no_borrow:
                # The code of this step may be used up fleet-wide already.
                self._borrowing.add(relay.key)
                return Proof.TICKET, 0, next(reversed(self._tickets.values()))
            return Proof.TOTP, self.config.relay_otp(wall), b""
        return Proof.KEY, 0, b""

    async def _relay_replies(self, proto: TransportProtocol, timeout: float) -> None:
        """Each relay's answer, in route order, before the server's: a ticket
        to keep, or a refusal that ends this attempt with the relay's reason."""
        for relay in self._owed.pop(proto, ()):
            reply = b""
            try:
                while (decoded := decode_reply(reply)) is None:
                    reply += await proto.read_exactly(reply_wanted(reply), timeout)
            except RoamError as exc:
                raise TransportError(f"relay {relay.name}: {exc}") from None
            status, body, _ = decoded
            borrowed = relay.key in self._borrowing
            self._borrowing.discard(relay.key)
            if status is not RelayStatus.OK:
                if status is RelayStatus.NOT_ADMITTED:
                    self._tickets.pop(relay.key, None)  # a stale ticket: a code next time
                    if borrowed:
                        self._no_borrow.add(relay.key)
                reason = body.decode("utf-8", "replace")
                raise TransportError(f"relay {relay.name} refused the transport "
                                     f"({status.name}): {reason}")
            if body:
                self._tickets[relay.key] = body

    async def _bound_socket(self, via: Attachment, host: str, port: int) -> socket.socket:
        """A connected socket that leaves by `via`: its device, else its source address."""
        loop = asyncio.get_running_loop()
        infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        family, _, _, _, addr = infos[0]
        sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            sock.setblocking(False)
            if via.device is not None:
                # SO_BINDTODEVICE needs CAP_NET_RAW; it makes the route lookup
                # use only this device's routes, as a radio-specific socket must.
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_BINDTODEVICE,
                                via.device.encode())
            if via.source is not None:
                sock.bind((via.source, 0))
            await loop.sock_connect(sock, addr)
        except BaseException:
            sock.close()
            raise
        return sock

    async def _reply(self, proto: TransportProtocol, opening: ClientOpening[T],
                     timeout: float) -> T:
        """Read the server's reply into `opening`, each read within `timeout`
        (after the relays' replies, on a relayed transport). Exact reads: the
        records that follow stay in `proto`'s buffer. The transport is
        aborted when the reply ends the attempt."""
        try:
            await self._relay_replies(proto, timeout)
            outcome = opening.receive_data(await proto.read_exactly(opening.needed, timeout))
            while isinstance(outcome, NeedMore):
                outcome = opening.receive_data(await proto.read_exactly(outcome.size, timeout))
        except RoamError:
            proto.abort()
            raise
        return outcome

    async def handshake(self, timeout: float = 10.0, via: Attachment | None = None
                        ) -> SessionDriver:
        """A new session, on `via` (else the current attachment).

        HandshakeError when the server refuses us for good or is not the one
        pinned; ServerBusy when it refuses for now; TransportError when the
        path fails.
        """
        cfg = self.config
        loop = asyncio.get_running_loop()
        if via is None:
            via = self.attachment
        proto = await self._connect(timeout, via)
        opening = NewOpening(suite=cfg.suite, private_key=cfg.private_key,
                             server_key=cfg.server_key, compression=cfg.compression,
                             server=self.server)
        hello = opening.start(time.time_ns())
        started = loop.time()
        proto.write(hello)
        opened = await self._reply(proto, opening, timeout)
        chosen, keys = opened.compression, opened.keys
        now = loop.time()
        self._standby_key = keys.standby
        self._standby_stamp = 0
        self.drop_standby()
        session = Session(is_client=True, now=now, config=cfg.session,
                          compression=cfg.compression if chosen else None,
                          history=chosen == ZSTD_HISTORY)
        session.rtt.sample(now - started)
        self.session_id = opened.session_id
        driver = SessionDriver(session, RecordSealer(keys.send, now), RecordOpener(keys.receive),
                               name=f"session {self.session_id.hex()[:8]}")
        driver.on_transport_lost = self._transport_lost
        driver.on_handover_ready = self._on_handover_ready
        driver.on_resumed = self._on_resumed
        driver.on_closed = lambda e: self._session_closed(driver, e)
        driver.on_switched = lambda e: self._on_switched(driver, e)
        driver.on_peer_moved = self._on_peer_moved
        self._paths = {0: via}
        session.transport_attached(now, resume=False)
        # The session lives on the path it was made on: a new session made
        # while reconnecting is recorded on the path it took, not the old one.
        self.attachment = via
        self._need_handshake = False
        self._lost = None
        driver.attach(proto)
        old = self.driver
        if old is not None and old.datagrams is not None:
            old.datagrams.close()
        self.driver = driver
        if cfg.udp:
            driver.datagrams = ClientDatagrams(driver, DatagramPath(
                self.session_id[:8], keys.datagram_send, keys.datagram_receive, now,
                is_client=True))
            await self._move_datagrams(proto, via)
        self.on_session(driver)
        log.info("%s: new session with %s", driver.name, self.server)
        return driver

    def _on_handover_ready(self, token: int) -> None:
        if self._handover_ready is not None and not self._handover_ready.done():
            self._handover_ready.set_result(token)

    def _on_resumed(self, frames_resent: int) -> None:
        if self._resumed is not None and not self._resumed.done():
            self._resumed.set_result(frames_resent)

    def _session_closed(self, driver: SessionDriver, event: ev.SessionClosed) -> None:
        """The session ended while the client runs: the server closed it (a
        server that stops says so), or this side did for the server's protocol
        error. Every channel is closed already; make a new session for what
        comes next. Not when the client stops, nor when the close is part of
        replacing a session the server forgot (`_need_handshake` is set)."""
        if self.stopped.is_set() or driver is not self.driver or self._need_handshake:
            return
        who = "server" if event.by_peer else "client"
        log.warning("the %s closed the session with %s (%s %s); starting a new one",
                    who, self.server, event.code.name, event.reason)
        self._need_handshake = True
        resumed = self._resumed
        if resumed is not None and not resumed.done():
            resumed.set_result(None)  # no RESUMED can come on a closed session
        self._start_reconnect()

    def _transport_lost(self, reason: str) -> None:
        if self.stopped.is_set():
            return
        if self._handover_ready is not None and not self._handover_ready.done():
            # A soft handover is under way: it finishes as a hard one.
            self._handover_ready.set_exception(TransportError(reason))
            return
        if self.driver is not None and self._lost is None:
            # The stall began with the first loss; a transport lost again
            # while resuming only makes it longer.
            self._lost = (self.driver.session.last_received, reason)
        log.warning("transport to %s lost (%s); resuming", self.server, reason)
        self.on_lost(self.attachment, reason)
        resumed = self._resumed
        if resumed is not None and not resumed.done():
            # Whoever waits for RESUMED on the transport just lost (the
            # reconnect loop, a handover) tries again at once instead of
            # waiting out its timeout.
            resumed.set_result(None)
        self._start_reconnect()

    def _start_reconnect(self) -> None:
        """One reconnect loop at a time; it runs until the session is attached
        and RESUMED (or a new session is made), however often it is lost meanwhile."""
        if self._reconnecting is None or self._reconnecting.done():
            self._reconnecting = self._tasks.spawn(self._reconnect(), name="reconnect")

    def _settled(self) -> bool:
        """Nothing for the reconnect loop to do: the session is attached on a
        transport (or closed by this client, or there is none)."""
        driver = self.driver
        if driver is None or self.stopped.is_set():
            return True
        if self._need_handshake:
            return False
        state = driver.session.state
        if state is SessionState.CLOSED:
            return True
        return driver.proto is not None and state is not SessionState.DETACHED

    async def _reconnect(self) -> None:
        # The loop ends only when it finds the session settled, checked
        # after every step: a transport lost again at any moment (even
        # between RESUMED and this task waking up, when no one waits for
        # anything) leaves the session detached, and the loop goes on.
        attempt = busy = failed = 0
        delay = BACKOFF[0]
        driver = self.driver
        if driver is not None and await self._await_join(driver):
            return
        while not self._settled():
            await asyncio.sleep(delay)
            driver = self.driver
            if driver is None or self._settled():
                return
            via = self.choose_attachment(attempt)
            attempt += 1
            delay = BACKOFF[min(attempt, len(BACKOFF) - 1)]
            try:
                if self._need_handshake:
                    await self.handshake(max(self._attempt_timeout(driver.session), 5.0), via)
                    continue
                origin = self.attachment
                self._resumed = asyncio.get_running_loop().create_future()
                if await self._resume(driver, via):
                    await self._record("hard", origin, via)
            except ServerBusy as exc:
                # Not the path's fault: no blame, a longer jittered wait.
                busy += 1
                delay = busy_delay(busy)
                log.warning("%s; waiting %.1f s before trying again", exc, delay)
            except ClientRefused as exc:
                # The server, proven by its key, refused this client: for good.
                log.error("%s", exc)
                self.stopped.set()
            except HandshakeError as exc:
                # The server was proven by this key before: an answer that
                # does not prove it now is more likely forged on the path (as
                # an UNKNOWN_SESSION can be) than a new server. Keep trying.
                failed += 1
                delay = busy_delay(failed)
                log.error("%s; trying again in %.1f s", exc, delay)
            except TransportError as exc:
                log.info("resume attempt %d failed: %s", attempt, exc)
                if via is not None:
                    self.on_attachment_failed(via, str(exc))
                await self._relocate()

    async def _await_join(self, driver: SessionDriver) -> bool:
        """The active transport was lost while a standby was still joining:
        its JOINED carries the session there (the core switches, resending
        what is unacknowledged). Wait an attempt's time for it; then give it
        up and resume as usual. True when the session is attached again."""
        session = driver.session
        joining = [tid for tid, state in session.transport_ids().items()
                   if state is TransportState.OPENING and tid in driver.carriers()]
        if session.state is not SessionState.RESUMING or not joining:
            return False
        loop = asyncio.get_running_loop()
        switched = self._switched = loop.create_future()
        timeout = self._attempt_timeout(session)
        try:
            await asyncio.wait_for(asyncio.shield(switched), timeout)
        except TimeoutError:
            log.info("%s: the standby did not join within %g s; resuming", driver.name,
                     timeout)
            driver.let_go()
            session.transport_lost(loop.time())
            return False
        finally:
            self._switched = None
        return session.active_transport is not None

    def _attempt_timeout(self, session: Session) -> float:
        # Long enough for a handshake over a slow path, short enough to move
        # on from a black-holed one well before the session's dead timer.
        return max(1.0, 3 * session.rtt.rto)

    async def _record(self, kind: str, origin: Attachment | None, target: Attachment | None,
                      reason: str | None = None) -> None:
        """Wait for RESUMED and report the handover with its stall.

        TransportError when the new transport is lost first, or RESUMED does
        not come within an attempt's time (a path that died just after the
        server's OK): the transport is dropped and the loss reported, so a
        reconnect always follows.
        """
        resumed = self._resumed
        frames = 0
        driver = self.driver
        if resumed is not None and driver is not None:
            proto = driver.proto
            timeout = self._attempt_timeout(driver.session)
            try:
                got = await asyncio.wait_for(asyncio.shield(resumed), timeout)
            except TimeoutError:
                where = target.name if target else "the default route"
                why = f"no RESUMED via {where} within {timeout:g} s"
                if proto is not None:
                    driver.drop_transport(proto, why)
                raise TransportError(why) from None
            if got is None:
                raise TransportError("the new transport was lost before RESUMED")
            frames = got
        lost = self._lost
        self._lost = None
        loop = asyncio.get_running_loop()
        since = lost[0] if lost is not None else loop.time()
        why = reason or (lost[1] if lost is not None else "transport lost")
        record = HandoverRecord(kind, why, origin.name if origin else None,
                                target.name if target else "default",
                                round((loop.time() - since) * 1000, 1), frames, time.time())
        log.info("handover %s %s -> %s (%s): stall %.0f ms, %d frames resent", kind,
                 record.origin, record.target, why, record.stall_ms, frames)
        self.on_handover(record)

    def _switch(self, driver: SessionDriver, tid: int, target: Attachment, *, soft: bool,
                reason: str) -> None:
        """Move the session to the joined standby `tid` on `target`: soft, the
        next frames go there at once and nothing is resent, while the old
        transport drains and stays as the standby; hard, every unacknowledged
        frame goes again there and the old transport is let go."""
        session = driver.session
        origin = self.attachment
        old = driver.proto
        loop = asyncio.get_running_loop()
        started = loop.time()
        last = session.last_received
        before = session.frames_resent
        session.switch(tid, started, reinject=not soft, reason=reason)
        proto = driver.carriers()[tid]
        self.attachment = target
        self.standby = None
        if soft and old is not None and origin is not None:
            self.standby = (origin, old)
        elif old is not None:
            driver.drop_transport(old, f"handed over to {target.name}: {reason}")
        driver.flush()
        stall = 0.0 if soft else max(0.0, started - last)
        self._switched_to(proto, "soft" if soft else "hard", reason, origin, target, stall,
                          session.frames_resent - before)

    async def handover(self, target: Attachment, *, soft: bool, reason: str) -> None:
        """Move the session to `target` (claims 5 and 6), as roam.core.handover
        decides: a switch to the target's joined standby, a resume on its
        parked one, or a connect first; soft, HANDOVER_BEGIN on the old
        transport and RESUME on the new one once READY comes, nothing resent;
        hard (or a soft one whose old transport dies meanwhile), the RESUME
        alone. TransportError when the new path cannot carry it (the session
        stays where it was, if it still can).
        """
        driver = self.driver
        if driver is None or self.session_id is None:
            raise TransportError("no session to hand over")
        if self._reconnecting is not None and not self._reconnecting.done():
            self._reconnecting.cancel()  # this handover is the reconnect now
        loop = asyncio.get_running_loop()
        session = driver.session
        origin = self.attachment
        timeout = self._attempt_timeout(session)
        parked = self.standby is not None and self.standby[0] == target
        plan = Handover(target=target.name, soft=soft, reason=reason, now=loop.time(),
                        attached=session.state is SessionState.ATTACHED, timeout=timeout,
                        joined=self._joined_standby(target), parked=parked)
        step = plan.start()
        if isinstance(step, SwitchTo):
            self._switch(driver, step.tid, target, soft=not step.reinject, reason=reason)
            return
        proto: TransportProtocol | None = None
        if isinstance(step, Connect):
            try:
                proto = await self._connect(max(0.0, step.deadline - loop.time()), target)
            except TransportError:
                plan.failed()
                raise
            if session.state is not SessionState.ATTACHED:
                plan.old_lost()
            step = plan.connected(loop.time())
        if isinstance(step, Drain):
            step = await self._drain(driver, plan, step)
        if self._lost is None:
            self._lost = plan.stall_start(session.last_received,
                                          session.state is SessionState.ATTACHED, None)
        if self.standby is not None and driver.transport_of(self.standby[1]) is not None:
            self.standby = None  # joined: it goes with the session's transports
        driver.let_go()
        if session.state is not SessionState.DETACHED:
            session.transport_lost(loop.time())
        self._resumed = loop.create_future()
        try:
            resumed = await self._resume(driver, target, proto)
        except TransportError as exc:
            plan.failed()
            self._transport_lost(f"handover to {target.name} failed: {exc}")
            raise
        if resumed:
            await self._record(plan.kind, origin, target, reason)
            plan.resumed()

    async def _drain(self, driver: SessionDriver, plan: Handover, step: Drain) -> Resume:
        """HANDOVER_BEGIN on the old transport, then wait for its READY: the
        RESUME that follows is soft, or hard if the old one died or went
        silent meanwhile."""
        loop = asyncio.get_running_loop()
        self._token += 1
        ready = self._handover_ready = loop.create_future()
        driver.session.begin_handover(self._token)
        driver.flush()
        try:
            await asyncio.wait_for(ready, max(0.0, step.deadline - loop.time()))
        except TimeoutError:
            late = plan.handle_timer(max(loop.time(), step.deadline))
            if late is not None:
                return late
            return plan.old_lost() or Resume(parked=False)
        except TransportError:
            return plan.old_lost() or Resume(parked=False)
        finally:
            self._handover_ready = None
        return plan.ready()

    async def _resume(self, driver: SessionDriver, via: Attachment | None = None,
                      proto: TransportProtocol | None = None) -> bool:
        """One resume attempt. True when the session is attached again and
        waits for RESUMED; False when the server had forgotten it and a new
        session was made instead (on `via`)."""
        session = driver.session
        timeout = self._attempt_timeout(session)
        if proto is None:
            parked = self._take_standby(via)
            if parked is not None:
                await self._resume_on_standby(driver, via, parked)
                return True
            proto = await self._connect(timeout, via)
        loop = asyncio.get_running_loop()
        if self.session_id is None:
            raise TransportError("no session to resume")
        opening = ResumeOpening(suite=self.config.suite, session_id=self.session_id,
                                server=self.server)
        now = loop.time()
        session.transport_attached(now, resume=True)
        first = session.payloads_to_send(now)
        proto.write(opening.start(driver.sealer, first[0], now))
        try:
            answer = await self._reply(proto, opening, timeout)
        except TransportError:
            session.transport_lost(loop.time())
            raise
        if isinstance(answer, UnknownSession):
            proto.abort()
            log.warning("server %s no longer knows the session (%s); starting a new one: "
                        "%d open connections are lost", self.server, answer.reason,
                        len(driver.apps))
            self._need_handshake = True
            driver.close(reason="session unknown to the server")
            await self.handshake(max(timeout, 5.0), via)
            return False
        if session.state is not SessionState.RESUMING:
            # The session left RESUMING (it closed) while the server answered.
            proto.abort()
            session.transport_lost(loop.time())
            raise TransportError(f"resume refused by {self.server}: {Status.OK.name}")
        self.attachment = via
        self._paths = {0: via}
        driver.attach(proto)
        await self._move_datagrams(proto, via)
        return True

    async def _resume_on_standby(self, driver: SessionDriver, via: Attachment | None,
                                 proto: TransportProtocol) -> None:
        """RESUME on the parked standby: its connect and preamble are done, so
        the session is back after one RTT of the new path. A standby whose
        path died quietly while it waited gets no RESUMED, and one the server
        closed is lost at once: `_record` finds either."""
        loop = asyncio.get_running_loop()
        session = driver.session
        now = loop.time()
        session.transport_attached(now, resume=True)
        first = session.payloads_to_send(now)
        proto.write(driver.sealer.seal(first[0], now))
        self.attachment = via
        self._paths = {0: via}
        driver.attach(proto)
        where = via.name if via else "the default route"
        log.info("%s: resuming on the standby transport via %s", driver.name, where)
        await self._move_datagrams(proto, via)

    def _take_standby(self, via: Attachment | None) -> TransportProtocol | None:
        if self.standby is None or via is None:
            return None
        where, proto = self.standby
        if where != via:
            return None
        self.standby = None
        if proto.lost or proto.transport is None or proto.transport.is_closing():
            return None  # closed with its path, or let go with a session's transports
        return proto

    async def prepare_standby(self, via: Attachment, timeout: float = 10.0) -> None:
        """Open a spare transport on `via` and park it at the server (STANDBY).

        TransportError when the path cannot reach the server or the server
        refuses; an older standby is closed once the new one is parked.
        """
        proto = await self._spare(via, timeout)
        self.drop_standby()
        self.standby = (via, proto)
        if self._join(proto, via) is not None:
            log.info("standby transport via %s joined the session at %s", via.name,
                     self.server)
        else:
            log.info("standby transport via %s parked at %s", via.name, self.server)

    async def _spare(self, via: Attachment, timeout: float) -> TransportProtocol:
        """A transport on `via` whose STANDBY preamble the server accepted."""
        if self.session_id is None or self._standby_key is None:
            raise TransportError("no session to prepare a standby for")
        proto = await self._connect(timeout, via)
        sock = proto.transport.get_extra_info("socket") if proto.transport else None
        if sock is not None:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE, STANDBY_KEEPIDLE)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL, STANDBY_KEEPINTVL)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT, STANDBY_KEEPCNT)
        self._standby_stamp += 1
        opening = StandbyOpening(suite=self.config.suite, session_id=self.session_id,
                                 key=self._standby_key, stamp=self._standby_stamp,
                                 server=self.server, via=via.name)
        proto.write(opening.start())
        await self._reply(proto, opening, timeout)
        return proto

    def _join(self, proto: TransportProtocol, via: Attachment) -> int | None:
        """JOIN: the spare becomes the session's own, measured by its PINGs,
        and takes over without a round trip (docs/protocol.md 5.2). None when
        the session has no working transport to join (it stays parked)."""
        driver = self.driver
        if driver is None or driver.session.active_transport is None:
            return None
        tid = driver.next_transport()
        self._paths[tid] = via
        driver.session.join_transport(tid, asyncio.get_running_loop().time())
        driver.attach(proto, tid=tid, alone=False)
        return tid

    def transport_roles(self) -> list[dict[str, object]]:
        """Each transport of the session: its number, role, path and the
        server's address as it sees it."""
        driver = self.driver
        if driver is None:
            return []
        states = driver.session.transport_ids()
        out: list[dict[str, object]] = []
        for tid, proto in sorted(driver.carriers().items()):
            via = self._paths.get(tid)
            out.append({"id": tid, "state": states[tid].value if tid in states else "gone",
                        "path": via.name if via is not None else None, "peer": proto.peer})
        return out

    def drop_standby(self) -> None:
        if self.standby is not None:
            _, proto = self.standby
            self.standby = None
            driver = self.driver
            if driver is not None and driver.transport_of(proto) is not None:
                driver.drop_transport(proto, "standby no longer wanted")
            proto.abort()

    def _joined_standby(self, target: Attachment) -> int | None:
        """The joined standby's transport number, if it is on `target`."""
        driver = self.driver
        if self.standby is None or self.standby[0] != target or driver is None:
            return None
        tid = driver.transport_of(self.standby[1])
        if tid is None or driver.session.transport_ids().get(tid) is not TransportState.STANDBY:
            return None
        return tid

    def _on_peer_moved(self, addresses: tuple[str, ...]) -> None:
        """The server said it moved (MOVE): follow it to the first address
        that parses. A relayed path keeps its route; the last relay dials
        the new address."""
        for address in addresses:
            try:
                host, port_text = split_host_port(address, "MOVE address")
                port = parse_port(port_text, f"MOVE address {address!r}")
            except RoamError as exc:
                log.warning("the server moved, to an address that does not parse: %s", exc)
                continue
            if port is None:
                continue
            if (host, port) != (self.config.server_host, self.config.server_port):
                self._tasks.spawn(self._follow(host, port), name="follow-server")
            return

    async def _follow(self, host: str, port: int) -> None:
        """The server moved while the session works (a mobile server's soft
        handover): open a transport to its new address on the current path,
        join it, and switch there softly; the transports to the old address
        drain and go. A session that is not attached now resumes at the new
        address (the reconnect loop reads it)."""
        self.following += 1
        try:
            await self._follow_now(host, port)
        finally:
            self.following -= 1

    async def _follow_now(self, host: str, port: int) -> None:
        old, old_at = self.server, (self.config.server_host, self.config.server_port)
        self.config.server_host, self.config.server_port = host, port
        log.info("the server moved: %s -> %s (it said so); following it", old, self.server)
        driver = self.driver
        if (driver is None or self.reconnecting
                or driver.session.state is not SessionState.ATTACHED):
            return
        via = self.attachment or Attachment("default")
        session = driver.session
        timeout = self._attempt_timeout(session)
        loop = asyncio.get_running_loop()
        try:
            proto = await self._spare(via, timeout)
        except TransportError as exc:
            log.warning("cannot reach the server at its new address %s (%s); staying at %s "
                        "while it works", self.server, exc, old)
            return
        tid = self._join(proto, via) if driver is self.driver else None
        if tid is None:
            proto.abort()
            return
        # The server began this handover; roam.core.follow decides how it ends.
        previous = driver.proto
        plan = Follow(tid=tid, crossings=session.crossings, now=loop.time(),
                      patience=2 * timeout)
        while (outcome := plan.check(loop.time(), active=session.active_transport,
                                     crossings=session.crossings,
                                     state=session.transport_ids().get(tid),
                                     closed=session.closed)) is None:
            if driver is not self.driver:
                return
            await asyncio.sleep(FOLLOW_POLL)
        if outcome is Outcome.GONE or driver is not self.driver:
            return
        if outcome is Outcome.ABANDONED:
            log.info("the server's move to %s crossed our own handover: ours stands (this "
                     "side made the session), the server's is abandoned", self.server)
            self.config.server_host, self.config.server_port = old_at
            driver.drop_transport(proto, "the server's move was abandoned")
            proto.abort()
            return
        if outcome is Outcome.SWITCH_HERE:
            self._switch(driver, tid, via, soft=True, reason=f"the server moved to {self.server}")
        else:  # FOLLOWED: the server's SWITCH moved the session (the core followed it)
            self._switched_to(proto, "soft", f"the server moved to {self.server}", via, via,
                              0.0, 0)
        if self.standby is not None and self.standby[1] is not previous:
            self.drop_standby()
        self.standby = None
        rest = leftovers(driver.carriers().values(), proto, previous)
        for other in rest.drop:
            driver.drop_transport(other, f"the server left {old}")
            other.abort()
        if rest.drain is not None:
            self._tasks.spawn(self._let_go_when_drained(driver, rest.drain, old),
                              name="drain-old-address")

    async def _let_go_when_drained(self, driver: SessionDriver, proto: TransportProtocol,
                                   where: str) -> None:
        """Close the transport to the server's old address once nothing sent
        on it waits for an acknowledgement (or after a few attempts' time:
        what is still unacknowledged then is sent again on the others)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 3 * self._attempt_timeout(driver.session)
        while loop.time() < deadline:
            tid = driver.transport_of(proto)
            if tid is None or driver.session.drained(tid):
                break
            await asyncio.sleep(FOLLOW_POLL)
        if driver.transport_of(proto) is not None:
            driver.drop_transport(proto, f"the server left {where}")
        proto.abort()

    def _on_switched(self, driver: SessionDriver, e: ev.TransportSwitched) -> None:
        """The core moved the session to another transport: the active one was
        lost or stalled, or the server switched. The old one, if alive,
        becomes the standby; UDP follows; the handover is recorded."""
        if driver is not self.driver:
            return
        switched = self._switched
        if switched is not None and not switched.done():
            switched.set_result(None)
        target = self._paths.get(e.transport)
        origin = self.attachment
        proto = driver.carriers().get(e.transport)
        if target is None or proto is None or target == origin:
            return
        old = driver.carriers().get(e.previous) if e.previous is not None else None
        self.standby = (origin, old) if origin is not None and old is not None else None
        self.attachment = target
        loop = asyncio.get_running_loop()
        lost, self._lost = self._lost, None
        # From the last byte heard on the transport left behind: the session's
        # own last_received counts the standby's pings, which a black hole
        # does not stop.
        since = lost[0] if lost is not None else (
            e.previous_heard if e.previous_heard is not None else driver.session.last_received)
        stall = max(0.0, loop.time() - since) if e.hard else 0.0
        self._switched_to(proto, "hard" if e.hard else "soft", e.reason, origin, target, stall,
                          e.frames_resent)

    def _switched_to(self, proto: TransportProtocol, kind: str, reason: str,
                     origin: Attachment | None, target: Attachment, stall: float,
                     frames: int) -> None:
        """A switch to a joined standby is done: report it; UDP follows."""
        record = HandoverRecord(kind, reason, origin.name if origin else None, target.name,
                                round(stall * 1000, 1), frames, time.time())
        log.info("handover %s %s -> %s (%s) on the joined standby: %d frames resent",
                 kind, record.origin, target.name, reason, frames)
        # UDP leaves the old path now, so nothing reads the handover as done
        # while datagrams still go the old way; it is bound anew just after.
        datagrams = self.driver.datagrams if self.driver is not None else None
        if isinstance(datagrams, ClientDatagrams):
            datagrams.unbind()
        self.on_handover(record)
        self._follow_datagrams(proto, target)

    def _follow_datagrams(self, proto: TransportProtocol, via: Attachment | None) -> None:
        self._tasks.spawn(self._move_datagrams(proto, via), name="udp-follows")

    async def _move_datagrams(self, proto: TransportProtocol, via: Attachment | None) -> None:
        """UDP follows the stream transport: same path, same server address."""
        datagrams = self.driver.datagrams if self.driver is not None else None
        server = proto.transport.get_extra_info("peername") if proto.transport else None
        if isinstance(datagrams, ClientDatagrams) and server is not None:
            await datagrams.rebind(server, via.device if via else None,
                                   via.source if via else None)

    def stop(self) -> None:
        self.stopped.set()
        self._tasks.cancel()
        self.drop_standby()
        if self._reconnecting is not None:
            self._reconnecting.cancel()
        if self.driver is not None:
            self.driver.close(reason="client shutting down")

    async def shutdown(self, timeout: float = SHUTDOWN_WAIT) -> None:
        """Stop, and tell the server: CLOSE leaves before this returns (unless
        the session is detached or its path is dead), so the server closes
        every application connection now rather than after its linger."""
        driver = self.driver
        self.stop()
        if driver is not None and not await driver.close_and_wait(timeout):
            log.warning("%s: could not tell the server that the session ends (no working "
                        "transport); it keeps the connections until its linger runs out",
                        driver.name)

