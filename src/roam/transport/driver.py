"""Runs one session: moves bytes between its transport, its core and its apps.

The driver is thin: it feeds records to the core, hands the core's payloads
to the record sealer and the socket, dispatches the core's events to the
application sockets, and keeps one timer armed at the core's deadline.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import Callable, Iterable
from typing import Protocol, runtime_checkable

from roam.core import events as ev
from roam.core.session import Session
from roam.core.states import SessionState, TransportState
from roam.crypto.records import Lane, RecordFramer, RecordOpener, RecordSealer, SealScratch
from roam.errors import CloseCode, CryptoError, FramingError, ProtocolError
from roam.eventloop import stream_transport
from roam.transport.protocol import Records, TransportProtocol
from roam.transport.ratelog import RateLimitedLog

log = logging.getLogger("roam.session")

# Bytes an application socket may hold unsent before its channel's credit
# stops being returned to the peer: this, plus the channel window, is all a
# non-reading application costs.
APP_WRITE_HIGH = 256 * 1024
# Record plaintext pulled from the core per batch: about one full record.
# Batches go on while the transport's write buffer is empty, so a record is
# sealed only when the socket can take it: sealed copies of the replay
# buffer never pile up in the write buffer, and the one scratch buffer the
# records are sealed in can be reused at once.
SEND_BATCH = 128 * 1024
# Shared by every session of the process: one record is sealed, written and
# done with before the next (see SealScratch).
_SCRATCH = SealScratch()
# How long a closed session's transport may take to hand its last records
# to a peer that does not read, before it is aborted: a stopping daemon waits
# 2 s at most anyway, and an honest peer reads within a round trip.
CLOSE_LINGER = 5.0


class ChannelApp(Protocol):
    """What the driver needs of whatever a channel carries (a socket, a UDP flow)."""

    cid: int | None

    def deliver(self, data: bytes | memoryview) -> None: ...
    def end(self) -> None: ...
    def finish(self) -> None: ...
    def abort(self) -> None: ...


@runtime_checkable
class OpenWatcher(Protocol):
    """A channel application that must know how its OPEN was answered (a
    SOCKS5 client is owed a reply before any data)."""

    def opened(self) -> None: ...
    def open_failed(self, code: CloseCode, reason: str) -> None: ...


class DatagramRoute(Protocol):
    """Where a session's datagrams go when UDP carries them (transport.datagrams)."""

    def send(self, cid: int, data: bytes) -> bool: ...
    def close(self) -> None: ...
    def status(self) -> dict[str, object]: ...


class AppConnection(asyncio.Protocol):
    """An application socket carried by one channel."""

    def __init__(self, driver: SessionDriver, cid: int | None = None,
                 on_made: Callable[[AppConnection], None] | None = None) -> None:
        self.driver = driver
        self.cid = cid
        self.transport: asyncio.Transport | None = None
        self._on_made = on_made
        self._write_blocked = False
        self._owed = 0
        self.finished = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport = stream_transport(transport)
        transport.set_write_buffer_limits(high=APP_WRITE_HIGH, low=APP_WRITE_HIGH // 4)
        sock = transport.get_extra_info("socket")
        if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
            # The application chose its own write sizes; Nagle on our copy of
            # its stream would only add delay to what it already sent.
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if self._on_made is not None:
            self._on_made(self)

    def data_received(self, data: bytes) -> None:
        if self.cid is None:
            return
        session = self.driver.session
        session.send(self.cid, data)
        self.driver.flush()
        # After the flush: what the replay buffer took left room, and a
        # pause and resume would be two epoll_ctl calls for each read.
        if session.send_room(self.cid) <= 0 and self.transport is not None:
            self.transport.pause_reading()
            self.driver.paused.add(self.cid)

    def eof_received(self) -> bool:
        if self.cid is not None:
            self.driver.session.end_channel(self.cid)
            self.driver.schedule()
        return True  # keep the socket open: the other direction may still flow

    def connection_lost(self, exc: Exception | None) -> None:
        if self.cid is not None and not self.finished:
            self.finished = True
            self.driver.apps.pop(self.cid, None)
            self.driver.session.reset_channel(self.cid)
            self.driver.schedule()

    def pause_writing(self) -> None:
        self._write_blocked = True

    def resume_writing(self) -> None:
        self._write_blocked = False
        if self._owed and self.cid is not None:
            self.driver.session.consumed(self.cid, self._owed)
            self._owed = 0
            self.driver.schedule()

    def deliver(self, data: bytes | memoryview) -> None:
        if self.transport is None or self.cid is None:
            return
        self.transport.write(data)
        # Credit goes back only once the application's socket takes the bytes.
        if self._write_blocked:
            self._owed += len(data)
        else:
            self.driver.session.consumed(self.cid, len(data))

    def end(self) -> None:
        if self.transport is not None and self.transport.can_write_eof():
            self.transport.write_eof()

    def finish(self) -> None:
        self.finished = True
        if self.transport is not None:
            self.transport.close()

    def abort(self) -> None:
        self.finished = True
        if self.transport is not None:
            self.transport.abort()


def _ignore(_: object) -> None:
    """The default of a driver hook nobody set."""


class ClosedFlag:
    """Set once when the session ends; what `asyncio.Event` offers, for less.

    Every session holds one for as long as it lives, idle or not, and an
    Event carries a deque of waiters (about 0.8 KiB) that a flag almost
    never waited on by more than one task does not need.
    """

    __slots__ = ("_set", "_waiters")

    def __init__(self) -> None:
        self._set = False
        self._waiters: list[asyncio.Future[None]] | None = None

    def is_set(self) -> bool:
        return self._set

    def set(self) -> None:
        if self._set:
            return
        self._set = True
        waiters, self._waiters = self._waiters, None
        for waiter in waiters or ():
            if not waiter.done():
                waiter.set_result(None)

    def add_callback(self, callback: Callable[[], None]) -> None:
        """Call `callback` soon after the flag is set: for each session a
        future with a callback costs a fraction of a task waiting on it."""
        waiter = asyncio.get_running_loop().create_future()
        waiter.add_done_callback(lambda _: callback())
        if self._set:
            waiter.set_result(None)
            return
        if self._waiters is None:
            self._waiters = []
        self._waiters.append(waiter)

    async def wait(self) -> None:
        if self._set:
            return
        waiter = asyncio.get_running_loop().create_future()
        if self._waiters is None:
            self._waiters = []
        self._waiters.append(waiter)
        try:
            await waiter
        finally:
            if self._waiters is not None and waiter in self._waiters:
                self._waiters.remove(waiter)


class _Carrier:
    """One transport of the session as the driver holds it: the socket, its
    record framer, and its share of the record counters."""

    __slots__ = ("framer", "lane", "proto")

    def __init__(self, proto: TransportProtocol, framer: RecordFramer) -> None:
        self.proto = proto
        self.framer = framer
        self.lane = Lane()


class SessionDriver:
    """One session and its transports (usually one), on either side.

    Each transport has the number the core knows it by (`tid`); `proto` is
    the active one's socket. A transport the core lets go of (replaced by a
    resume, dead, lost) is closed here.
    """

    # A server holds one driver per session for as long as the session
    # lives: slots instead of an instance dict (about 0.5 KiB less each).
    __slots__ = (
        "_again",
        "_carriers",
        "_closing",
        "_flushing",
        "_lanes",
        "_limit_logs",
        "_next_tid",
        "_scheduled",
        "_timer",
        "_timer_at",
        "apps",
        "closed",
        "datagrams",
        "done",
        "loop",
        "name",
        "on_closed",
        "on_handover_ready",
        "on_joined",
        "on_open_request",
        "on_peer_moved",
        "on_resumed",
        "on_switched",
        "on_transport_lost",
        "opener",
        "paused",
        "proto",
        "sealer",
        "session",
    )

    def __init__(self, session: Session, sealer: RecordSealer, opener: RecordOpener, *,
                 name: str) -> None:
        self.session = session
        self.sealer = sealer
        self.opener = opener
        self.name = name
        self.loop = asyncio.get_running_loop()
        self.proto: TransportProtocol | None = None
        self._carriers: dict[int, _Carrier] = {}
        self._next_tid = 0  # the handshake's transport is 0
        # Once the session had two transports at once, records are checked
        # per transport within the window for good: what is still in flight
        # on one may be older than what the other brought.
        self._lanes = False
        self.apps: dict[int, ChannelApp] = {}
        self.paused: set[int] = set()
        self._scheduled = False
        self._flushing = False
        self._again = False
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at: float | None = None
        self.closed = ClosedFlag()
        # Set once the session is closed and its last records (CLOSE) were
        # handed to the kernel, or could not be: what a stopping daemon waits for.
        self.done = ClosedFlag()
        self._closing = False
        self._limit_logs: dict[str, RateLimitedLog] | None = None
        # UDP for datagram channels, when the side set it up; else the stream.
        self.datagrams: DatagramRoute | None = None
        # Hooks for the side that owns the driver. The defaults are shared
        # module functions: a lambda here would be three function objects
        # per session.
        self.on_transport_lost: Callable[[str], None] = _ignore
        self.on_open_request: Callable[[ev.ChannelOpenRequested], None] = self._refuse_open
        self.on_handover_ready: Callable[[int], None] = _ignore
        self.on_resumed: Callable[[int], None] = _ignore
        self.on_closed: Callable[[ev.SessionClosed], None] = _ignore
        # The core moved its sending to another transport (a lost or stalled
        # one's standby took over, or the peer switched).
        self.on_switched: Callable[[ev.TransportSwitched], None] = _ignore
        # A transport joined the session as a standby (JOIN, JOINED).
        self.on_joined: Callable[[int], None] = _ignore
        # Client: the server said where it can be reached now (MOVE).
        self.on_peer_moved: Callable[[tuple[str, ...]], None] = _ignore

    # ---- transports ----------------------------------------------------------

    def attach(self, proto: TransportProtocol, framer: RecordFramer | None = None, *,
               tid: int = 0, alone: bool = True) -> None:
        """Carry the session on `proto` as transport `tid` (the core was told
        already). `alone`: every other transport goes (a new session, a
        resume); else it joins them."""
        old = self._carriers.pop(tid, None)
        if old is not None and old.proto is not proto:
            old.proto.detach()
        if alone:
            for other in self._carriers.values():
                if other.proto is not proto:
                    other.proto.detach()
            self._carriers.clear()
        carrier = _Carrier(proto, framer or RecordFramer())
        self._carriers[tid] = carrier
        if len(self._carriers) > 1:
            self._lanes = True
        self._current()
        proto.start_push(carrier.framer, lambda records: self._on_records(tid, carrier, records),
                         lambda exc: self._on_lost(tid, carrier, exc), self.schedule)
        self._read_delivery(tid, proto)
        self.schedule()

    def _read_delivery(self, tid: int, proto: TransportProtocol) -> None:
        """Tell the core what TCP beneath `tid` delivered (roam.core.delivery);
        nothing when the kernel does not say."""
        try:
            in_flight, delivered = proto.tcp_delivery()
        except OSError:
            self.session.delivery_unknown(tid)
            return
        self.session.delivery_read(tid, self.loop.time(), delivered if in_flight else None)

    def transport_of(self, proto: TransportProtocol) -> int | None:
        """The number of the transport `proto` carries, if it carries one."""
        for tid, carrier in self._carriers.items():
            if carrier.proto is proto:
                return tid
        return None

    def next_transport(self) -> int:
        """A number no transport of this session had before."""
        self._next_tid += 1
        return self._next_tid

    def carriers(self) -> dict[int, TransportProtocol]:
        return {tid: c.proto for tid, c in self._carriers.items()}

    def _current(self) -> None:
        """`proto` is the active transport's (or the only one's)."""
        active = self.session.active_transport
        carrier = self._carriers.get(active) if active is not None else None
        if carrier is None and len(self._carriers) == 1:
            carrier = next(iter(self._carriers.values()))
        self.proto = carrier.proto if carrier is not None else None

    def _on_records(self, tid: int, carrier: _Carrier, records: Records) -> None:
        if self._carriers.get(tid) is not carrier:
            return
        proto = carrier.proto
        now = self.loop.time()
        # One transport: every counter above the last (the strict rule);
        # several: each its own lane, within the window over all of them.
        lane = carrier.lane if self._lanes else None
        try:
            opener, session = self.opener, self.session
            for counter, ct in records:
                session.receive_payload(opener.open(counter, ct, lane=lane), now, tid)
        except CryptoError as exc:
            # Forged, replayed or mangled bytes condemn this transport only;
            # the session resumes on another.
            log.warning("%s: dropping transport from %s: %s", self.name, proto.peer, exc)
            self._drop(tid, str(exc))
        except ProtocolError as exc:
            if self.session.transport_ids().get(tid) is TransportState.OPENING:
                # The first record of a new transport (RESUME, RESUMED, JOIN,
                # JOINED) is bad: that transport goes, the session resumes on
                # another (docs/protocol.md sections 2.4 and 9).
                log.warning("%s: dropping transport from %s: bad first record: %s", self.name,
                            proto.peer, exc)
                self._drop(tid, f"bad first record: {exc}")
            else:
                # An authenticated peer broke the protocol: the session ends,
                # and CLOSE says why (the transport closes gracefully after it).
                log.warning("%s: peer broke the protocol: %s; closing the session", self.name,
                            exc)
                self.session.close(exc.code, str(exc))
        self.flush()

    def _on_lost(self, tid: int, carrier: _Carrier, exc: Exception | None) -> None:
        if self._carriers.get(tid) is not carrier:
            return
        if isinstance(exc, FramingError):
            log.warning("%s: dropping transport from %s: %s", self.name, carrier.proto.peer, exc)
            self._drop(tid, str(exc))
        else:
            self._drop(tid, f"transport closed ({exc or 'EOF'})")

    def drop_transport(self, proto: TransportProtocol, reason: str) -> None:
        """Give up on `proto` if it still carries the session."""
        tid = self.transport_of(proto)
        if tid is not None:
            self._drop(tid, reason)

    def _drop(self, tid: int, reason: str) -> None:
        carrier = self._carriers.pop(tid, None)
        if carrier is None:
            return
        carrier.proto.detach()
        session = self.session
        if session.state is not SessionState.CLOSED:
            now = self.loop.time()
            session.transport_lost(now, tid)
            if session.state is SessionState.ATTACHED or session.state is SessionState.DRAINING:
                log.info("%s: transport %d lost (%s); the session goes on on another", self.name,
                         tid, reason)
            elif session.state is SessionState.RESUMING and self._carriers:
                # One still joining may carry it once its JOINED comes: the
                # side that owns the driver decides how long to wait.
                self.on_transport_lost(reason)
            else:
                self.let_go()
                session.transport_lost(now)
                self.on_transport_lost(reason)
        self._current()
        self.schedule()

    def let_go(self) -> None:
        """Drop every transport without a word to anyone (the client moves the
        session by a resume elsewhere)."""
        for carrier in self._carriers.values():
            carrier.proto.detach()
        self._carriers.clear()
        self.proto = None

    def _sync(self) -> None:
        """Close what the core let go of (a resume replaced it, it died)."""
        known = self.session.transport_ids()
        for tid in [t for t in self._carriers if t not in known]:
            carrier = self._carriers.pop(tid)
            carrier.proto.detach()
        self._current()

    # ---- the pump -------------------------------------------------------------

    def schedule(self) -> None:
        """Flush once the loop has handled what is ready now (batches small events)."""
        if not self._scheduled:
            self._scheduled = True
            self.loop.call_soon(self._scheduled_flush)

    def _scheduled_flush(self) -> None:
        self._scheduled = False
        self.flush()

    def flush(self) -> None:
        """Run the core now: reads call this directly, since a deferred flush
        costs an event-loop iteration per hop (about 40 us of a 64-byte round
        trip); each read is already a batch."""
        if self._flushing:
            self._again = True
            return
        self._flushing = True
        try:
            self._flush()
            while self._again:
                self._again = False
                self._flush()
        finally:
            self._flushing = False

    def _flush(self) -> None:
        # Timers are _fire's: a read's flush does not look at the clock's
        # deadlines (the armed timer runs in the same loop iteration anyway).
        session = self.session
        now = self.loop.time()
        self._dispatch()
        # The active transport first: data and the ACK go there; then each
        # standby's PINGs and PONGs. (One transport, the usual case: no sort.)
        carriers = self._carriers
        active = session.active_transport
        order: Iterable[tuple[int, _Carrier]] = carriers.items()
        if len(carriers) != 1 or active not in carriers:
            self._sync()
            active = session.active_transport
            if len(carriers) > 1:
                order = sorted(carriers.items(), key=lambda i: i[0] != active)
        for tid, carrier in order:
            proto = carrier.proto
            transport = proto.transport
            if transport is None:
                continue
            while not proto.write_paused and not proto.lost:
                records = session.records_to_send(now, SEND_BATCH, tid)
                if not records:
                    break  # nothing, or nothing that may go now (draining)
                seal, write = self.sealer.seal_parts, transport.write
                for parts in records:
                    write(seal(parts, now, _SCRATCH))
                    if transport.get_write_buffer_size():
                        # The socket left part of it: asyncio copied that
                        # part, uvloop keeps the buffer itself.
                        _SCRATCH.surrender()
                if not session.has_pending or tid != active:
                    break  # all of it went: no second call to find nothing
        if self._closing:
            self._finish_closing()
        if self.paused:
            for cid in list(self.paused):
                if session.send_room(cid) > 0:
                    self.paused.discard(cid)
                    app = self.apps.get(cid)
                    if (isinstance(app, AppConnection) and app.transport is not None
                            and not app.finished):
                        app.transport.resume_reading()
        self._arm()

    def _arm(self) -> None:
        deadline = self.session.get_timer()
        # A later deadline needs no new timer: the armed one fires early,
        # flush() finds nothing due and arms again. Re-arming on every read
        # (the dead deadline moves with each record) would cost more.
        if deadline is not None and self._timer_at is not None and deadline >= self._timer_at:
            return
        if deadline == self._timer_at:
            return
        if self._timer is not None:
            self._timer.cancel()
        self._timer_at = deadline
        self._timer = None if deadline is None else self.loop.call_at(deadline, self._fire)

    def _fire(self) -> None:
        self._timer = None
        self._timer_at = None
        # `_arm` leaves an early timer armed when the deadline moves later
        # (a PING answered: the next one is due a keepalive later). Such a
        # wake finds nothing due; re-arming without a whole flush keeps the
        # cost of an idle session to about one flush per keepalive.
        session = self.session
        deadline = session.get_timer()
        now = self.loop.time()
        if deadline is not None and deadline > now:
            if not self._scheduled and not self._flushing:
                self._timer_at = deadline
                self._timer = self.loop.call_at(deadline, self._fire)
                return
        elif deadline is not None:
            tid = session.delivery_due(now)
            if tid is not None:
                carrier = self._carriers.get(tid)
                if carrier is not None:
                    self._read_delivery(tid, carrier.proto)
                else:
                    session.delivery_unknown(tid)
            session.handle_timer(now)
        self.flush()

    # ---- events ----------------------------------------------------------------

    def _dispatch(self) -> None:
        session = self.session
        while events := session.take_events():
            for e in events:
                if isinstance(e, ev.DataReceived):
                    app = self.apps.get(e.channel)
                    if app is not None:
                        app.deliver(e.data)
                    else:
                        session.consumed(e.channel, len(e.data))
                elif isinstance(e, ev.DatagramReceived):
                    app = self.apps.get(e.channel)
                    if app is not None:
                        app.deliver(e.data)
                elif isinstance(e, ev.EndOfStream):
                    app = self.apps.get(e.channel)
                    if app is not None:
                        app.end()
                elif isinstance(e, ev.ChannelClosed):
                    app = self.apps.pop(e.channel, None)
                    if app is not None:
                        app.finish()
                elif isinstance(e, ev.ChannelReset):
                    app = self.apps.pop(e.channel, None)
                    if app is not None:
                        app.abort()
                elif isinstance(e, ev.ChannelOpenRequested):
                    self.on_open_request(e)
                elif isinstance(e, ev.ChannelOpened):
                    watcher: object = self.apps.get(e.channel)
                    if isinstance(watcher, OpenWatcher):
                        watcher.opened()
                elif isinstance(e, ev.ChannelRefused):
                    self._refusals("here")(f"{self.name}: refused the peer's channel "
                                           f"{e.channel}: {e.reason}")
                elif isinstance(e, ev.ChannelOpenFailed):
                    if e.code is CloseCode.FLOW_CONTROL:
                        # A limit, not the destination: the application only
                        # sees its connection close, so the log must say why.
                        self._refusals("peer")(f"{self.name}: the peer refused channel "
                                               f"{e.channel}: "
                                     f"{e.reason}")
                    app = self.apps.pop(e.channel, None)
                    failed: object = app
                    if isinstance(failed, OpenWatcher):
                        failed.open_failed(e.code, e.reason)
                    elif app is not None:
                        app.abort()
                elif isinstance(e, ev.TransportDead):
                    log.warning("%s: nothing heard for %.1f s: transport declared dead",
                                self.name, e.silence)
                    carrier = self._carriers.pop(e.transport, None)
                    if carrier is not None:
                        carrier.proto.detach()
                        self._current()
                        if session.state is SessionState.DETACHED or not self._carriers:
                            self.on_transport_lost(f"silent for {e.silence:.1f} s")
                elif isinstance(e, ev.TransportSwitched):
                    log.info("%s: now sending on transport %d (was %s): %s; %d frames sent "
                             "again", self.name, e.transport, e.previous, e.reason,
                             e.frames_resent)
                    self._current()
                    self.on_switched(e)
                elif isinstance(e, ev.SessionResumed):
                    log.info("%s: resumed; resent %d frames (%d bytes)", self.name,
                             e.frames_resent, e.bytes_resent)
                    self.on_resumed(e.frames_resent)
                elif isinstance(e, ev.HandoverReady):
                    self.on_handover_ready(e.token)
                elif isinstance(e, ev.TransportJoined):
                    self.on_joined(e.transport)
                elif isinstance(e, ev.PeerMoved):
                    log.info("%s: the peer moved: it can be reached at %s", self.name,
                             ", ".join(e.addresses))
                    self.on_peer_moved(e.addresses)
                elif isinstance(e, ev.SwitchesCrossed):
                    log.info("%s: our switch to transport %d crossed the peer's to %d: %s",
                             self.name, e.ours, e.theirs,
                             "ours stands (this side made the session)" if e.kept
                             else "ours is abandoned (the peer made the session)")
                elif isinstance(e, ev.SessionClosed):
                    who = "peer" if e.by_peer else "this side"
                    log.info("%s: session closed by %s: %s %s", self.name, who, e.code.name,
                             e.reason)
                    self._shutdown()
                    self.on_closed(e)

    def _refusals(self, by: str) -> RateLimitedLog:
        """The session's log of channels refused for a limit (by this side, or
        the peer): a burst of thousands must not be a line each. Made on
        first use: most sessions never refuse a channel."""
        if self._limit_logs is None:
            self._limit_logs = {}
        return self._limit_logs.setdefault(by, RateLimitedLog(log))

    def _refuse_open(self, e: ev.ChannelOpenRequested) -> None:
        self.session.refuse_channel(e.channel, CloseCode.NOT_ALLOWED, "this side opens nothing")

    def send_datagram(self, cid: int, data: bytes) -> bool:
        """One datagram from an application: by UDP when it gets through, else
        on the stream transport. False when it was dropped."""
        if self.datagrams is not None:
            return self.datagrams.send(cid, data)
        return self.session.send_datagram(cid, data)

    def accept(self, cid: int, app: ChannelApp) -> bool:
        """The peer's OPEN `cid` is served by `app` (its socket is ready): OPEN_OK.
        False, with `app` aborted, when the peer gave up on the channel meanwhile."""
        if cid not in self.session.channel_ids():
            app.abort()
            return False
        self.add_app(app)
        self.session.accept_channel(cid)
        self.schedule()
        return True

    def add_app(self, app: ChannelApp) -> None:
        if app.cid is not None:
            self.apps[app.cid] = app

    def _shutdown(self) -> None:
        if self.datagrams is not None:
            self.datagrams.close()
        for app in list(self.apps.values()):
            app.abort()
        self.apps.clear()
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        # The transport stays until the last records (CLOSE among them) are
        # written: _flush writes them after this dispatch and then lets go.
        self._closing = True
        self.closed.set()

    def _finish_closing(self) -> None:
        """After the session closed: once nothing is left to write (or it can
        never be written), close the transport gracefully (close(), not
        abort(): asyncio's own buffer goes out first) and set `done`."""
        proto = self.proto
        if proto is not None and not proto.lost and proto.write_paused and self.session.has_pending:
            return  # the socket is full: resume_writing flushes again
        self.proto = None
        for carrier in self._carriers.values():
            if carrier.proto is not proto:
                carrier.proto.detach()  # standbys: nothing of the session's is on them
        self._carriers.clear()
        if proto is None or proto.lost:
            self.done.set()
            return
        if proto.transport is not None and proto.transport.get_write_buffer_size():
            proto.on_gone(self.done.set)
            # A peer that never reads would keep the socket (and `done`
            # unset) for as long as it likes: it gets CLOSE_LINGER.
            self.loop.call_later(CLOSE_LINGER, proto.abort)
        else:
            self.done.set()
        proto.close()

    def close(self, code: CloseCode = CloseCode.SHUTDOWN, reason: str = "") -> None:
        if self.session.state is not SessionState.CLOSED:
            self.session.close(code, reason)
            self.flush()

    async def close_and_wait(self, timeout: float, code: CloseCode = CloseCode.SHUTDOWN,
                             reason: str = "") -> bool:
        """Close, and wait (at most `timeout`) until CLOSE is handed to the
        kernel, which delivers it even after the process exits. False when
        it could not be in time (no transport, a full socket to a dead path)."""
        self.close(code, reason)
        if not self.done.is_set() and self.proto is None:
            self.done.set()  # detached: nothing can carry it
        try:
            async with asyncio.timeout(timeout):
                await self.done.wait()
        except TimeoutError:
            return False
        return True

