"""The session, sans-IO: its transport, records, resume and handover.

The driver feeds it record plaintexts (`receive_payload`), the time
(`handle_timer`) and application calls (`open_channel`, `send`, ...); it pulls
record plaintexts to send (`records_to_send`), events (`take_events`) and the
next deadline (`get_timer`). It never touches a socket or reads a clock:
every method that depends on time takes `now` (seconds, any monotonic origin).

It is made of one idea per module:
- roam.core.channels: the channels, their credit, DATA and compression;
- roam.core.replay: the replay buffer of numbered reliable frames;
- roam.core.liveness: PING, PONG, the RTT and the dead time;
- roam.core.states: the session's and the channels' transition tables.

Reliability: each reliable frame gets the next sequence number of this
direction and stays in the replay buffer until the peer acknowledges it.
When a transport breaks, the session is *detached*; on the next transport the
client sends RESUME(received up to N), the server answers RESUMED(received up
to M), and each resends every frame after the other's mark (claim 6).

Backpressure: the replay buffer holds at most `replay_limit` bytes; past
that, channel data waits in per-channel buffers of `channel_send_buffer`
bytes, and `send_room()` tells the driver to stop reading the application.
Per-channel credit (WINDOW) keeps one slow reader from stalling the others.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

from roam.core import events as ev
from roam.core import frames as fr
from roam.core.channels import Channels
from roam.core.compress import AUTO_MIN_RTT, CompressionMode, Compressor, History
from roam.core.liveness import MAX_PINGS, Liveness
from roam.core.replay import Buffer, ReplayBuffer
from roam.core.rtt import RttEstimator
from roam.core.states import SessionInput, SessionState, next_state
from roam.errors import CloseCode, ProtocolError

__all__ = ["Buffer", "Session", "SessionConfig", "SessionStatistics"]

@dataclass(frozen=True, slots=True)
class SessionConfig:
    # 8 MiB covers the bandwidth-delay product of 1 Gbit/s at 60 ms RTT; it
    # is also the most a session holds for an outage however long it lasts.
    replay_limit: int = 8 * 1024 * 1024
    # Per-channel receive window: 1 MiB keeps one stream at ~170 Mbit/s on a
    # 50 ms path, and bounds what a non-reading application costs us.
    channel_window: int = 1024 * 1024
    # Application bytes a channel buffers before its reading pauses.
    channel_send_buffer: int = 256 * 1024
    # Largest record plaintext we build; records this size keep per-record
    # costs (AEAD call, length prefix, Python overhead) under 1% of the data.
    max_record_payload: int = 128 * 1024
    # A PING this often measures the RTT and keeps NAT bindings warm while the
    # session carries data; mosh uses 3 s, we want a dead path found sooner.
    keepalive_interval: float = 1.0
    # A session that sent and received no reliable frame for this long is idle
    # (an interactive one typing now and then is not) ...
    idle_after: float = 30.0
    # ... and then pings this often (never more often than keepalive_interval),
    # and its transport is dead after this plus the dead time below. Every ping
    # costs the server (10,000 idle sessions pinged every second kept one
    # server CPU 78% busy) and wakes a mobile unit's radio; NAT bindings of TCP
    # last hours (RFC 5382: at least 2 h 4 min), so this is about finding a
    # silent black hole on an idle session within about 12 s. A link driver's
    # link-down event is acted on at once either way.
    idle_keepalive_interval: float = 10.0
    # A transport is dead after this much silence at least, however small the
    # RTT: a loaded Python peer can pause for hundreds of ms (GC, big writes).
    dead_floor: float = 2.0
    # ... and after this many RTOs when the RTT is large.
    dead_rtos: float = 4.0
    # How long a detached session waits for a resume before it closes
    # (None: forever). The client keeps trying; the server gives up.
    detached_timeout: float | None = None
    max_channels: int = 4096
    # An ACK rides on any record going the other way; alone, it waits until
    # this much arrived (1/32 of the peer's replay buffer, so the peer never
    # stalls on it) ...
    ack_bytes: int = 256 * 1024
    # ... or this long, far below any RTO, so it never looks like a loss.
    ack_delay: float = 0.005
    # --compress auto leaves paths with a least RTT under this uncompressed
    # (roam.core.compress.AUTO_MIN_RTT says why).
    auto_compress_min_rtt: float = AUTO_MIN_RTT

# PINGs and PONGs waiting in the control queue at most. They leave with the
# next records, so an honest peer never gets near this: only a transport
# whose writes stall while the peer keeps pinging (a peer that sends and
# never reads) would have us queue a PONG per PING it sends, without end.
# The peer waits for at most MAX_PINGS answers, so more queued ones answer
# pings it has forgotten.
_MAX_PROBES = MAX_PINGS
# Datagram bytes queued for the current transport at most; beyond, datagrams
# are dropped rather than delay the stream data behind them.
_DATAGRAM_QUEUE = 256 * 1024
# The first record on a new transport holds at most this much, and each next
# one twice as much, up to max_record_payload. A record is usable only whole,
# and a new TCP connection sends 10 segments (~14 KB, RFC 6928) in its first
# round trip, doubling after: records that grow the same way reach the
# application a round trip at a time instead of all after the largest.
_FIRST_RECORD = 4 * 1024


@dataclass(frozen=True, slots=True)
class SessionStatistics:
    state: str
    srtt: float | None
    rto: float
    channels: int
    replay_bytes: int
    bytes_sent: int
    bytes_received: int
    frames_resent: int
    resumes: int
    # Datagrams carried on the stream transport (UDP's own count is apart).
    datagrams_sent: int
    datagrams_received: int
    # This side's compression of its sending direction ("off" when the
    # handshake did not negotiate it, else "auto" or "zstd:LEVEL").
    compression: str
    # DATA payload bytes as carried in frames, after compression; bytes_sent
    # and bytes_received count the application's bytes, before it. Their
    # quotient is the compression ratio.
    payload_bytes_sent: int
    payload_bytes_received: int


class Session:
    # A server holds one per session for as long as it lives, idle or not:
    # slots, where an instance dict would cost about 1.5 KiB.
    __slots__ = ("_ack_due", "_ack_sent", "_active_since", "_close_sent", "_control",
                 "_control_alone", "_datagram_bytes", "_detached_since", "_drained", "_events",
                 "_idle", "_last_activity", "_live", "_probes", "_received", "_record_limit",
                 "_unacked_bytes", "channels", "config", "datagrams_received", "datagrams_sent",
                 "frames_resent", "is_client", "replay", "resumes", "state")

    def __init__(self, *, is_client: bool, now: float, config: SessionConfig | None = None,
                 compression: CompressionMode | None = None, history: bool = False) -> None:
        """`compression`: None (or off) unless the handshake negotiated it; then
        this side's mode for its own sending direction, and compressed DATA
        from the peer is accepted. `history`: the handshake negotiated
        ZSTD_HISTORY (streams primed with each direction's recent data)."""
        self.is_client = is_client
        self.config = config = config or SessionConfig()
        compressor: Compressor | None = None
        send_history = recv_history = None
        if compression is not None and compression.enabled:
            if history:
                send_history, recv_history = History(), History()
            compressor = Compressor(compression, history=send_history,
                                    auto_min_rtt=config.auto_compress_min_rtt)
        self.state = SessionState.DETACHED
        # A list: an idle session holds it empty (an empty deque is 0.6 KiB),
        # and the driver drains it after every read.
        self._events: list[ev.Event] = []
        self.replay = ReplayBuffer()
        self.channels = Channels(config, self.replay, self._events, is_client=is_client,
                                 compressor=compressor, send_history=send_history,
                                 recv_history=recv_history)
        self.channels.send_datagram = self.send_datagram
        self._live = Liveness(now)
        self._control: list[bytes] = []  # unreliable frames for the current transport
        self._probes = 0  # PINGs and PONGs among them (_MAX_PROBES says why)
        self._received = 0  # highest reliable seq received in order
        self._ack_sent = 0
        self._unacked_bytes = 0  # reliable bytes received since our last ACK
        self._ack_due: float | None = None  # when a standalone ACK must go
        # Reliable frames either way keep a session active (fast keepalive,
        # short dead time); the silence that counts as death is measured from
        # the later of the last arrival and the moment the session woke up.
        self._last_activity = now
        self._active_since = now
        self._idle = False
        self._detached_since: float | None = now
        self._close_sent = False
        # After a resume the control frames (RESUMED, ACK) leave in a record
        # of their own: a new TCP connection starts with a 10-segment window
        # (RFC 6928), and a 128 KiB first record would hold RESUMED back for
        # three or four round trips of slow start.
        self._control_alone = False
        self._record_limit = _FIRST_RECORD
        self._drained = False  # server: HANDOVER_READY is out; nothing more on this transport
        self.frames_resent = 0
        self.resumes = 0
        self.datagrams_sent = 0
        self.datagrams_received = 0
        self._datagram_bytes = 0

    # ---- transports ------------------------------------------------------

    def transport_attached(self, now: float, *, resume: bool) -> None:
        """A new transport carries the session from now on.

        `resume=False` only for the transport of the handshake. For a resume,
        the client speaks first (RESUME); the server waits for it. A closed
        session stays closed.
        """
        if self.state is SessionState.CLOSED:
            return
        self._control.clear()
        self._probes = 0
        self._datagram_bytes = 0
        self._live.new_transport(now)
        self._drained = False
        self._record_limit = _FIRST_RECORD
        self._detached_since = None
        if not resume:
            self.state = next_state(self.state, SessionInput.NEW_TRANSPORT)
            return
        self.state = next_state(self.state, SessionInput.RESUME_TRANSPORT)
        if self.is_client:
            self._control.append(fr.encode(fr.Resume(self._received)))

    def transport_lost(self, now: float) -> None:
        """The driver saw the transport fail; wait for (or make) another."""
        if self.state is not SessionState.CLOSED:
            self.state = next_state(self.state, SessionInput.TRANSPORT_LOST)
            self._detached_since = now
            self._control.clear()
            self._probes = 0
            self._datagram_bytes = 0

    @property
    def last_received(self) -> float:
        """When the last record arrived (the `now` of that call)."""
        return self._live.last_received

    @property
    def bytes_sent(self) -> int:
        """Application bytes sent on every channel (before compression)."""
        return self.channels.bytes_sent

    @property
    def bytes_received(self) -> int:
        """Application bytes received on every channel (after decompression)."""
        return self.channels.bytes_received

    @property
    def closed(self) -> bool:
        return self.state is SessionState.CLOSED

    @property
    def rtt(self) -> RttEstimator:
        return self._live.rtt

    def begin_handover(self, token: int) -> None:
        """Client: start a soft handover; HANDOVER_BEGIN leaves on the current transport.

        From now on nothing reliable is sent here; HandoverReady says when the
        server has emptied its side, and `transport_attached(resume=True)` on
        the new transport finishes it. If this transport dies first, the
        same resume is a hard handover.
        """
        if not self.is_client:
            raise ValueError("only the client begins a handover")
        after = next_state(self.state, SessionInput.BEGIN_HANDOVER)
        if after is self.state:
            return  # not attached: the resume that follows is a hard handover
        self.state = after
        self._control.append(fr.encode(fr.HandoverBegin(token)))

    # ---- channels: the application side ----------------------------------

    def open_channel(self, host: str, port: int,
                     kind: fr.ChannelKind = fr.ChannelKind.STREAM) -> int:
        return self.channels.open(host, port, kind)

    def accept_channel(self, cid: int) -> None:
        self.channels.accept(cid)

    def refuse_channel(self, cid: int, code: CloseCode, reason: str) -> None:
        self.channels.refuse(cid, code, reason)

    def send(self, cid: int, data: bytes | memoryview) -> None:
        """Queue application bytes; a channel the peer already reset drops them."""
        self.channels.send(cid, data)

    def send_room(self, cid: int) -> int:
        """How many more bytes the driver may read from the application now."""
        return self.channels.send_room(cid)

    def end_channel(self, cid: int) -> None:
        """The application half-closed: FIN after the buffered data."""
        self.channels.end(cid)

    def reset_channel(self, cid: int, code: CloseCode = CloseCode.RESET_BY_APPLICATION) -> None:
        self.channels.reset(cid, code)

    def consumed(self, cid: int, n: int) -> None:
        """The application took n delivered bytes: grant the peer more credit."""
        self.channels.consumed(cid, n)

    def channel_ids(self) -> list[int]:
        return self.channels.ids()

    def send_datagram(self, cid: int, data: bytes) -> bool:
        """Queue one datagram; False when it was dropped (unknown channel, no room)."""
        ch = self.channels.datagram(cid, data)
        if ch is None:
            return self.channels.hold(cid, data)
        if self.state is not SessionState.ATTACHED or self._datagram_bytes > _DATAGRAM_QUEUE:
            return False  # no transport now: a datagram may be lost, never delayed for long
        frame = fr.encode(fr.Dgram(cid, data))
        self._datagram_bytes += len(frame)
        self._control.append(frame)
        self.datagrams_sent += 1
        return True

    def datagram_frame(self, cid: int, data: bytes) -> bytes | None:
        """The DGRAM frame for a datagram that may take the datagram transport;
        None when it must go through `send_datagram` (channel not open yet) or
        be dropped (not a datagram channel)."""
        if self.state is SessionState.CLOSED or self.channels.datagram(cid, data) is None:
            return None
        return fr.encode(fr.Dgram(cid, data))

    def receive_datagram(self, frame: fr.Dgram) -> None:
        """A DGRAM frame from the datagram transport (already authenticated)."""
        if self.state is not SessionState.CLOSED:
            self.channels.receive_datagram(frame)

    def close(self, code: CloseCode = CloseCode.NORMAL, reason: str = "") -> None:
        """End the session: CLOSE goes out with the next payloads."""
        if self.state is SessionState.CLOSED or self._close_sent:
            return
        self._close_sent = True
        self.replay.queue(fr.Close(self.replay.seq(), code, reason))
        self._closed(code, reason, SessionInput.CLOSE)

    # ---- output ----------------------------------------------------------

    def payloads_to_send(self, now: float, budget: int | None = None) -> list[bytes]:
        """Record plaintexts to send on the current transport, in order (as
        `records_to_send`, each record joined into one bytes object)."""
        return [b"".join(parts) for parts in self.records_to_send(now, budget)]

    def records_to_send(self, now: float, budget: int | None = None) -> list[list[Buffer]]:
        """Records to send on the current transport, in order, each the list
        of pieces whose concatenation is its plaintext.

        The pieces are the replay buffer's own (a DATA frame's payload is a
        view of the application's read), so the sealer's gathering of them
        is the only copy of the data before encryption. At most about
        `budget` bytes of reliable frames: the rest stays in the replay
        buffer, not in a transport's write buffer as a second copy.
        """
        state = self.state
        if state is SessionState.DETACHED:
            return []
        if state is SessionState.RESUMING:
            out: list[list[Buffer]] = [list(self._control)] if self._control else []
            self._control = []
            self._probes = 0
            return out
        if state is SessionState.DRAINING:
            return self._drain_payload()
        replay = self.replay
        channels = self.channels
        if not (channels.rr or replay.pending or self._control or self._ack_wanted(now)):
            return []  # the usual answer to a flush after a read: nothing
        if state is SessionState.ATTACHED:
            channels.fill(self._record_limit, self._live.rtt.min_rtt)
        elif not self._close_sent:
            return []
        records: list[list[Buffer]] = []
        parts: list[Buffer] = []
        size = 0
        pending = replay.pending
        if ((self._received > self._ack_sent and (pending or self._control))
                or self._ack_wanted(now)):
            # An ACK rides on what goes anyway, or goes alone when due.
            ack = fr.encode_ack(self._received)
            parts.append(ack)
            self._ack_sent = self._received
            self._unacked_bytes = 0
            self._ack_due = None
            size += len(ack)
        if self._control:
            parts.extend(self._control)
            size += sum(len(c) for c in self._control)
            self._control = []
            self._probes = 0
            self._datagram_bytes = 0
        if self._control_alone and parts:
            records.append(parts)
            parts, size = [], 0
            self._control_alone = False
        max_record = self.config.max_record_payload
        limit = min(self._record_limit, max_record)
        if pending:
            self._note_activity(now)
            unacked = replay.unacked
            if unacked is None:
                unacked = replay.unacked = deque()
            room = budget if budget is not None else replay.bytes
            while pending and room > 0:
                item = pending.popleft()
                unacked.append(item)
                frame_size = item[1]
                room -= frame_size
                if parts and size + frame_size > limit:
                    records.append(parts)
                    parts, size = [], 0
                    if limit < max_record:
                        limit = self._record_limit = limit * 2
                parts.append(item[2])
                if item[3]:
                    parts.append(item[3])
                size += frame_size
        if parts:
            records.append(parts)
            if limit < max_record:
                self._record_limit = limit * 2
        return records

    def _ack_wanted(self, now: float) -> bool:
        """An ACK must go even with nothing else to carry it."""
        return self._received > self._ack_sent and (
            self._unacked_bytes >= self.config.ack_bytes
            or (self._ack_due is not None and now >= self._ack_due))

    def _drain_payload(self) -> list[list[Buffer]]:
        """While draining only the ACK and control frames (BEGIN, READY) go out."""
        if self._drained:
            return []
        parts: list[Buffer] = []
        if self._received > self._ack_sent:
            parts.append(fr.encode_ack(self._received))
            self._ack_sent = self._received
            self._unacked_bytes = 0
            self._ack_due = None
        parts.extend(self._control)
        self._control = []
        self._probes = 0
        if not self.is_client and parts:
            self._drained = True
        return [parts] if parts else []

    @property
    def has_pending(self) -> bool:
        """Reliable frames are queued and not yet in a record: after a call to
        records_to_send that gave records, another may give more (it stopped
        at its budget); while draining or detached none may go."""
        return bool(self.replay.pending)

    # ---- input -----------------------------------------------------------

    def receive_payload(self, payload: bytes | memoryview, now: float) -> None:
        """Process one record plaintext. Raises ProtocolError on a broken peer."""
        if self.state is SessionState.CLOSED:
            return
        if self.state is SessionState.DETACHED:
            raise ProtocolError("record on a transport the session is not attached to")
        self._live.last_received = now
        frames = fr.decode_frames(payload)
        self._unacked_bytes += len(payload)
        if self.state is SessionState.RESUMING:
            first = frames[0]
            expected = fr.Resumed if self.is_client else fr.Resume
            if not isinstance(first, expected):
                raise ProtocolError(f"expected {expected.__name__.upper()} first on a resumed "
                                    f"transport, got {type(first).__name__.upper()}")
        channels = self.channels
        for frame in frames:
            if isinstance(frame, fr.RELIABLE_CLASSES):
                if frame.seq <= self._received:
                    continue  # already had it before the transport changed
                if frame.seq != self._received + 1:
                    raise ProtocolError(f"sequence gap: got {frame.seq}, "
                                        f"expected {self._received + 1}")
                self._received = frame.seq
                if self._ack_due is None:
                    self._ack_due = now + self.config.ack_delay
                    self._note_activity(now)
                if isinstance(frame, fr.Close):
                    self._closed(frame.code, frame.reason, SessionInput.CLOSE_RECEIVED)
                else:
                    channels.receive(frame)
            else:
                self._unreliable(frame, now)
            if self.closed:
                return

    def _unreliable(self, frame: fr.Frame, now: float) -> None:
        if isinstance(frame, fr.Dgram):
            self.datagrams_received += 1  # on the stream transport
            self.channels.receive_datagram(frame)
        elif isinstance(frame, fr.Ack):
            self.replay.acked(frame.received)
        elif isinstance(frame, fr.Ping):
            if self._probes < _MAX_PROBES:
                self._probes += 1
                self._control.append(fr.encode(fr.Pong(frame.token)))
        elif isinstance(frame, fr.Pong):
            self._live.pong(frame.token, now)
        elif isinstance(frame, fr.HandoverBegin):
            if self.is_client:
                raise ProtocolError("HANDOVER_BEGIN from the server")
            # Claim 5 step 2: stop sending here; READY is the last frame, after
            # everything already sent, so the client's mark will be exact.
            self.state = next_state(self.state, SessionInput.HANDOVER_BEGIN)
            self._control = [fr.encode(fr.HandoverReady(frame.token))]
            self._probes = 0
        elif isinstance(frame, fr.HandoverReady):
            if not self.is_client:
                raise ProtocolError("HANDOVER_READY to the server")
            next_state(self.state, SessionInput.HANDOVER_READY)
            self._events.append(ev.HandoverReady(frame.token))
        elif isinstance(frame, fr.Resume | fr.Resumed):
            attached = next_state(self.state, SessionInput.RESUME)
            self.replay.acked(frame.received)
            frames, size = self.replay.resend_all()
            self.frames_resent += frames
            self.resumes += 1
            self._events.append(ev.SessionResumed(frames, size))
            self._control_alone = True
            if not self.is_client:
                self._control.insert(0, fr.encode(fr.Resumed(self._received)))
                self._ack_sent = self._received
                self._ack_due = None
            self.state = attached
        else:
            raise ProtocolError(f"{type(frame).__name__.upper()} frames are not handled yet")

    def _closed(self, code: CloseCode, reason: str, event: SessionInput) -> None:
        self.state = next_state(self.state, event)
        self._events.append(ev.SessionClosed(code, reason, event.from_peer))

    # ---- time ------------------------------------------------------------

    def _silent_since(self) -> float:
        return max(self._live.last_received, self._active_since)

    def _note_activity(self, now: float) -> None:
        if self._idle:
            # Woken up: the peer may have been pinging only now and then, so
            # silence counts from here, not from its last idle ping.
            self._idle = False
            self._active_since = now
        self._last_activity = now

    @property
    def idle(self) -> bool:
        """No reliable frame either way for `idle_after`: slow keepalive."""
        return self._idle

    def get_timer(self) -> float | None:
        # Called after every read and write: plain comparisons, no min().
        state = self.state
        live = self._live
        if state is SessionState.ATTACHED:
            deadline = self._silent_since() + live.dead_after(self.config, self._idle)
            ping = live.last_ping + live.ping_interval(self.config, self._idle,
                                                       bool(self.replay.unacked))
            if ping < deadline:
                deadline = ping
            ack = self._ack_due
            if ack is not None and ack < deadline:
                deadline = ack
            return deadline
        if state is SessionState.CLOSED:
            return None
        if state is SessionState.DETACHED:
            limit = self.config.detached_timeout
            if limit is None or self._detached_since is None:
                return None
            return self._detached_since + limit
        deadline = self._silent_since() + live.dead_after(self.config, self._idle)
        if self._ack_due is not None and state is SessionState.DRAINING:
            deadline = min(deadline, self._ack_due)
        return deadline

    def handle_timer(self, now: float) -> None:
        if self.state is SessionState.DETACHED:
            limit = self.config.detached_timeout
            if (limit is not None and self._detached_since is not None
                    and now - self._detached_since >= limit):
                self._closed(CloseCode.TIMEOUT, f"no transport for {limit:g} s",
                             SessionInput.DETACHED_TIMEOUT)
            return
        if self.state is SessionState.CLOSED:
            return
        if not self._idle and now - self._last_activity >= self.config.idle_after:
            self._idle = True
        live = self._live
        silence = now - self._silent_since()
        if silence >= live.dead_after(self.config, self._idle):
            self.transport_lost(now)
            self._events.append(ev.TransportDead(silence))
            return
        if (self.state is SessionState.ATTACHED and now - live.last_ping
                >= live.ping_interval(self.config, self._idle, bool(self.replay.unacked))):
            if self._probes < _MAX_PROBES:  # else our writes stall: it could not leave
                self._probes += 1
                self._control.append(fr.encode(fr.Ping(live.ping(now))))
            else:
                live.last_ping = now
            # Nothing in flight at a keepalive: an idle session gives back
            # its deques until it carries data again.
            self.replay.release_if_empty()
            if not self.replay.pending and not self.replay.unacked:
                self.channels.release_rr_if_empty()

    # ---- events and statistics ---------------------------------------------

    def next_event(self) -> ev.Event | None:
        return self._events.pop(0) if self._events else None

    def take_events(self) -> list[ev.Event]:
        """Every event so far, in order, at once (what next_event would give one
        by one); events that handling them causes come with the next call."""
        events = self._events
        if not events:
            return []
        taken = events.copy()
        events.clear()  # the same list: the channels append to it too
        return taken

    def statistics(self) -> SessionStatistics:
        channels = self.channels
        compressor = channels.compressor
        return SessionStatistics(
            state=self.state.value, srtt=self._live.rtt.srtt, rto=self._live.rtt.rto,
            channels=len(channels), replay_bytes=self.replay.bytes,
            bytes_sent=channels.bytes_sent, bytes_received=channels.bytes_received,
            frames_resent=self.frames_resent, resumes=self.resumes,
            datagrams_sent=self.datagrams_sent, datagrams_received=self.datagrams_received,
            compression=str(compressor.mode) if compressor else "off",
            payload_bytes_sent=channels.payload_bytes_sent,
            payload_bytes_received=channels.payload_bytes_received,
        )
