"""The session, sans-IO: its transport, records, resume and handover.

The driver feeds it record plaintexts (`receive_payload`), the time
(`handle_timer`) and application calls (`open_channel`, `send`, ...); it pulls
record plaintexts to send (`records_to_send`), events (`take_events`) and the
next deadline (`get_timer`). It never touches a socket or reads a clock:
every method that depends on time takes `now` (seconds, any monotonic origin).

It is made of one idea per module:
- roam.core.sessiontimers: its clock (keepalives, dead transports, stalls);
- roam.core.channels: the channels, their credit, DATA and compression;
- roam.core.replay: the replay buffer of numbered reliable frames;
- roam.core.liveness: PING, PONG, the RTT and the dead time;
- roam.core.states: the session's and the channels' transition tables.

Reliability: each reliable frame gets the next sequence number of this
direction and stays in the replay buffer until the peer acknowledges it.
When a transport breaks, the session is *detached*; on the next transport the
client sends RESUME(received up to N), the server answers RESUMED(received up
to M), and each resends every frame after the other's mark (claim 6).

Several transports (docs/protocol.md 5.2): a session may have more than one
at once, each named by the driver's number for it (`tid`). Each side sends
its new reliable frames on its active one; a standby joins with JOIN and
JOINED and takes over with SWITCH, at once and resending nothing when both
work (a soft handover), or resending every unacknowledged frame when the
active one was lost or stalled (a hard one). Reliable frames may then arrive
out of order; they are held until the gap fills, and each is delivered once.

Backpressure: the replay buffer holds at most `replay_limit` bytes; past
that, channel data waits in per-channel buffers of `channel_send_buffer`
bytes, and `send_room()` tells the driver to stop reading the application.
Per-channel credit (WINDOW) keeps one slow reader from stalling the others.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence

from roam.core import events as ev
from roam.core import frames as fr
from roam.core.channels import Channels
from roam.core.compress import CompressionMode, Compressor, History
from roam.core.crossing import Switches, Verdict
from roam.core.replay import Buffer, Entry, ReplayBuffer
from roam.core.rtt import RttEstimator
from roam.core.sessionconfig import SessionConfig, SessionStatistics
from roam.core.sessiontimers import MAX_PROBES, SessionTimers
from roam.core.states import (
    SessionInput,
    SessionState,
    TransportInput,
    TransportState,
    next_state,
)
from roam.core.transports import Transport
from roam.errors import CloseCode, LocalError, ProtocolError

__all__ = ["Buffer", "Session", "SessionConfig", "SessionStatistics"]


# Reliable frames held ahead of a gap at most (the sender's replay buffer
# holds at most about replay_limit bytes of them; this bounds their count).
_MAX_AHEAD = 1 << 16
# What a held frame costs beyond its bytes (the frame object and its entry).
_AHEAD_OVERHEAD = 128
# Datagram bytes queued for the current transport at most; beyond, datagrams
# are dropped rather than delay the stream data behind them.
_DATAGRAM_QUEUE = 256 * 1024


class Session(SessionTimers):
    # A server holds one per session for as long as it lives, idle or not:
    # slots, where an instance dict would cost about 1.5 KiB.
    # (the clock's own state is in SessionTimers' slots)
    __slots__ = ("_ack_due", "_ack_progress", "_ack_sent", "_active", "_ahead",
                 "_ahead_bytes", "_close_sent", "_detached_since", "_drained", "_events",
                 "_last_received", "_moves", "_overlap",
                 "_overlap_until", "_received", "_rtt", "_serials",
                 "_transports", "_unacked_bytes", "channels", "config", "crossings",
                 "datagrams_received", "datagrams_sent", "frames_overlapped", "frames_resent",
                 "is_client", "replay", "resumes", "state", "switches")

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
        self._transports: dict[int, Transport] = {}
        self._active: Transport | None = None
        # The RTT the session knows before its first transport (the client
        # samples the handshake's); a new transport starts from the last one's.
        self._rtt = RttEstimator()
        self._received = 0  # highest reliable seq received in order
        # Reliable frames received beyond a gap (several transports), by seq.
        self._ahead: dict[int, fr.ReliableFrame] | None = None
        self._ahead_bytes = 0
        self._ack_sent = 0
        self._unacked_bytes = 0  # reliable bytes received since our last ACK
        self._ack_due: float | None = None  # when a standalone ACK must go
        # When the peer last acknowledged something new, or when something
        # was sent with nothing outstanding: a stall counts from here.
        self._ack_progress = now
        # A stall found no standby to move to: look again from then on.
        self._stall_retry = now
        # Reliable frames either way keep a session active (fast keepalive,
        # short dead time); the silence that counts as death is measured from
        # the later of the last arrival and the moment the session woke up.
        self._last_activity = now
        self._last_received = now
        self._active_since = now
        self._idle = False
        self._detached_since: float | None = now
        self._close_sent = False
        self._drained = False  # server: HANDOVER_READY is out; nothing more on this transport
        self.frames_resent = 0
        # After a soft switch the frames sent on the new transport go on the
        # old one too for a while (below); how many went twice that way.
        self.frames_overlapped = 0
        self._overlap: Transport | None = None
        self._overlap_until = 0.0
        self.resumes = 0
        self.switches = 0
        # Switch serials, ours and the peer's (claim 17: crossing switches).
        self._serials = Switches(creator=is_client)
        self.crossings = 0
        # Server: the last MOVE's token; client: the last one heard.
        self._moves = 0
        self.datagrams_sent = 0
        self.datagrams_received = 0

    # ---- transports ------------------------------------------------------

    def transport_attached(self, now: float, *, resume: bool, tid: int = 0) -> None:
        """Transport `tid` carries the session from now on (a transport with
        the same number is let go first).

        `resume=False` only for the transport of the handshake. For a resume,
        the client speaks first (RESUME): it had lost every other transport.
        The server waits for the first frame, RESUME or JOIN, which says
        whether the transport replaces the others or joins them. A closed
        session stays closed.
        """
        if self.state is SessionState.CLOSED:
            return
        if tid in self._transports:
            self._forget(self._transports[tid], now)
        t = self._add(tid, now)
        if not resume:
            t.move(TransportInput.NEW)
            self._active = t
            self.state = next_state(self.state, SessionInput.NEW_TRANSPORT)
            return
        if self.is_client:
            for other in list(self._transports.values()):
                if other is not t:
                    self._forget(other, now)
            self.state = next_state(self.state, SessionInput.RESUME_TRANSPORT)
            t.control.append(fr.encode(fr.Resume(self._received)))
        else:
            self.state = next_state(self.state, SessionInput.OPENING_TRANSPORT)

    def join_transport(self, tid: int, now: float) -> None:
        """Client: transport `tid` joins the attached session as a standby (JOIN)."""
        if not self.is_client:
            raise LocalError("only the client joins a transport; the server answers JOIN")
        if self._active is None or tid in self._transports:
            raise LocalError(f"transport {tid} cannot join: the session is {self.state.value}"
                             f"{' and it has that transport' if tid in self._transports else ''}")
        t = self._add(tid, now)
        t.joining = True
        t.control.append(fr.encode(fr.Join(self._received)))
        self.state = next_state(self.state, SessionInput.OPENING_TRANSPORT)

    def switch(self, tid: int, now: float, *, reinject: bool = False,
               reason: str = "asked", heard: float | None = None) -> None:
        """This side's new reliable frames go on transport `tid` from now on,
        and SWITCH asks the peer's to follow. `reinject`: the active one is
        lost or stalled, so every unacknowledged frame goes again on `tid`
        (and the peer resends what it has not had acknowledged). `heard`:
        when the active transport, already let go, last delivered."""
        t = self._transports.get(tid)
        if t is None:
            raise LocalError(f"no transport {tid} to switch to")
        previous = self._active
        if previous is t and not reinject:
            return
        # Server: a transport that just joined still owes its JOINED, which
        # must be its first frame (it carries the mark: no ACK before it).
        owed = (not self.is_client and bool(t.control)
                and t.control[0][0] == fr.FrameType.JOINED)
        self._activate(t, now, TransportInput.SWITCH, reason, reinject=reinject, acked=owed,
                       heard=heard)
        # First on the transport (after JOINED), before the frames it carries
        # from now on.
        t.control.insert(1 if owed else 0, self._switch_frame(t, reinject))

    def _switch_frame(self, t: Transport, reinject: bool) -> bytes:
        serial, seen = self._serials.ours(t.id)
        return fr.encode(fr.Switch(self._received, fr.SWITCH_REINJECT if reinject else 0,
                                   serial, seen))

    def announce_move(self, addresses: Sequence[str]) -> None:
        """Server: this unit can be reached at `addresses` (HOST:PORT, best
        first) from now on; MOVE goes on every transport that works, so the
        first to arrive tells the client to open transports there."""
        if self.is_client:
            raise LocalError("only the server announces a move: the client dials")
        self._moves += 1
        frame = fr.encode(fr.Move(self._moves, tuple(addresses)))
        for t in self._transports.values():
            if t.usable:
                t.control.append(frame)

    def _activate(self, t: Transport, now: float, event: TransportInput, reason: str, *,
                  reinject: bool, acked: bool = False, heard: float | None = None) -> None:
        previous = self._active
        if heard is None and previous is not None:
            heard = previous.live.last_received
        t.move(event)
        if previous is not None and previous is not t:
            previous.move(TransportInput.SUPERSEDED)
        self._active = t
        self._rtt = t.live.rtt
        if not acked:
            # Our last ACK may have gone on the transport left behind.
            self._ack_sent = min(self._ack_sent, self._received - 1)
        resent = 0
        self._overlap = None
        if reinject:
            resent, _ = self.replay.resend_all()
            self.frames_resent += resent
        elif previous is not None and previous is not t:
            # A soft switch: the first frames on the new path arrive its
            # one-way delay later, which may be tens of ms more than the old
            # path's (wifi 3 ms, cell 30 ms), and its TCP window restarts
            # from idle. For one RTT of the new path (its RTO before it has
            # one) every frame also goes on the old one, which still works:
            # the receiver keeps the first copy, and sees no pause.
            self._overlap = previous
            srtt = t.live.rtt.srtt
            self._overlap_until = now + (srtt if srtt is not None else t.live.rtt.rto)
        self._ack_progress = now
        if previous is not None and previous is not t:
            self.switches += 1
        self._events.append(ev.TransportSwitched(
            t.id, previous.id if previous else None, reason, resent, hard=reinject,
            previous_heard=heard))

    def _add(self, tid: int, now: float) -> Transport:
        t = Transport(tid, now)
        if not self._transports:
            # The only transport carries the session's RTT on (the smoothed
            # RTT and the RTO adapt within a few samples; the least RTT is
            # learnt again). One joining others learns its own.
            t.live.rtt = self._rtt
            self._rtt.new_path()
        self._transports[tid] = t
        self._last_received = now
        self._detached_since = None
        self._drained = False
        return t

    def _forget(self, t: Transport, now: float) -> None:
        """Let go of `t` (no event: the caller knows)."""
        if self._transports.pop(t.id, None) is None:
            return
        t.move(TransportInput.LOST)
        if t is self._active:
            self._active = None
        if (not any(o.usable for o in self._transports.values())
                and self.state is not SessionState.CLOSED):
            # What is left (if anything) has not resumed or joined yet.
            self.state = next_state(self.state, SessionInput.TRANSPORT_LOST)
            self._detached_since = now
            if self._transports:
                self.state = next_state(self.state, SessionInput.OPENING_TRANSPORT)

    def transport_lost(self, now: float, tid: int | None = None, why: str = "lost") -> None:
        """The driver saw transport `tid` fail (None: every transport); `why`
        ends the reason of the handover it may cause ("transport 3 lost").

        With another transport left, the session goes on there at once: if
        the lost one was the active one, the best standby takes over and
        every unacknowledged frame is sent again on it (a hard handover
        without a connect); frames still in flight on a lost standby are
        sent again too."""
        if self.state is SessionState.CLOSED:
            return
        if tid is None:
            for t in list(self._transports.values()):
                self._forget(t, now)
            if self.state is not SessionState.DETACHED:
                self.state = next_state(self.state, SessionInput.TRANSPORT_LOST)
                self._detached_since = now
            return
        lost = self._transports.get(tid)
        if lost is None:
            return
        was_active = lost is self._active
        self._forget(lost, now)
        standbys = [t for t in self._transports.values() if t.usable]
        if not standbys:
            return
        if was_active:
            best = max(standbys, key=lambda t: t.live.last_received)
            self.switch(best.id, now, reinject=True, reason=f"transport {tid} {why}",
                        heard=lost.live.last_received)
        elif self.replay.unacked and lost.last_seq >= self.replay.unacked[0][0]:
            resent, _ = self.replay.resend_all()
            self.frames_resent += resent

    def transport_ids(self) -> dict[int, TransportState]:
        """Every transport the session has, and its role."""
        return {tid: t.state for tid, t in self._transports.items()}

    def control_frames(self) -> list[bytes]:
        """Control frames (PING, PONG, DGRAM ...) waiting on every transport."""
        return [c for t in self._transports.values() for c in t.control]

    @property
    def active_transport(self) -> int | None:
        return self._active.id if self._active is not None else None

    def drained(self, tid: int) -> bool:
        """Every frame sent on transport `tid` is acknowledged: closing it
        loses nothing (the soft handover's old transport may go)."""
        t = self._transports.get(tid)
        unacked = self.replay.unacked
        return t is None or not unacked or t.last_seq < unacked[0][0]

    def _pick(self, tid: int | None) -> Transport | None:
        if tid is not None:
            return self._transports.get(tid)
        if self._active is not None:
            return self._active
        if len(self._transports) == 1:
            return next(iter(self._transports.values()))
        return None

    @property
    def last_received(self) -> float:
        """When the last record arrived (the `now` of that call), on any transport."""
        return self._last_received

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
        """The active transport's RTT (the last one's while there is none)."""
        return self._rtt

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
        if after is self.state or self._active is None:
            return  # not attached: the resume that follows is a hard handover
        self.state = after
        self._active.control.append(fr.encode(fr.HandoverBegin(token)))

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
        """Queue one datagram on the active transport; False when it was
        dropped (unknown channel, no transport, no room)."""
        ch = self.channels.datagram(cid, data)
        if ch is None:
            return self.channels.hold(cid, data)
        t = self._active
        if (self.state is not SessionState.ATTACHED or t is None
                or t.datagram_bytes > _DATAGRAM_QUEUE):
            return False  # no transport now: a datagram may be lost, never delayed for long
        frame = fr.encode(fr.Dgram(cid, data))
        t.datagram_bytes += len(frame)
        t.control.append(frame)
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

    def payloads_to_send(self, now: float, budget: int | None = None,
                         tid: int | None = None) -> list[bytes]:
        """Record plaintexts to send on transport `tid` (None: the active
        one), in order (as `records_to_send`, each record joined)."""
        return [b"".join(parts) for parts in self.records_to_send(now, budget, tid)]

    def records_to_send(self, now: float, budget: int | None = None,
                        tid: int | None = None) -> list[list[Buffer]]:
        """Records to send on transport `tid` (None: the active one), in
        order, each the list of pieces whose concatenation is its plaintext.

        The pieces are the replay buffer's own (a DATA frame's payload is a
        view of the application's read), so the sealer's gathering of them
        is the only copy of the data before encryption. At most about
        `budget` bytes of reliable frames: the rest stays in the replay
        buffer, not in a transport's write buffer as a second copy. Only the
        active transport carries reliable frames; a standby carries its
        control frames and an ACK that is owed.
        """
        t = self._transports.get(tid) if tid is not None else self._pick(None)
        if t is None:
            return []
        state = self.state
        if (t is self._active and state is SessionState.ATTACHED and not t.control
                and t.state is TransportState.ACTIVE and not self.channels.rr
                and not self.replay.pending and not self._ack_wanted(now)):
            return []  # the usual answer to a flush after a read: nothing
        if state is SessionState.DETACHED:
            return []
        if t.state is TransportState.OPENING:
            out: list[list[Buffer]] = [list(t.control)] if t.control else []
            t.control = []
            t.probes = 0
            return out
        if state is SessionState.DRAINING:
            return self._drain_payload(t)
        replay = self.replay
        channels = self.channels
        active = t is self._active
        if t is self._overlap and not active and state is SessionState.ATTACHED:
            overlap = self._overlapping(t, now)
            if overlap:
                return overlap
        if not (t.control or (active and (channels.rr or replay.pending
                                          or self._ack_wanted(now)))):
            return []
        if state is SessionState.ATTACHED:
            if active:
                channels.fill(t.record_limit, t.live.rtt.min_rtt)
        elif not self._close_sent:
            return []
        records: list[list[Buffer]] = []
        parts: list[Buffer] = []
        size = 0
        pending = replay.pending if active else None
        # An ACK rides on what goes anyway; alone it goes only on the active
        # transport (a standby may be the black hole that lost the last one).
        if ((self._received > self._ack_sent and (pending or t.control))
                or (active and self._ack_wanted(now))):
            ack = fr.encode_ack(self._received)
            parts.append(ack)
            self._ack_sent = self._received
            self._unacked_bytes = 0
            self._ack_due = None
            size += len(ack)
        if t.control:
            parts.extend(t.control)
            size += sum(len(c) for c in t.control)
            t.control = []
            t.probes = 0
            t.datagram_bytes = 0
        if t.control_alone and parts:
            records.append(parts)
            parts, size = [], 0
            t.control_alone = False
        max_record = self.config.max_record_payload
        limit = min(t.record_limit, max_record)
        if pending:
            self._note_activity(now)
            unacked = replay.unacked
            if unacked is None:
                unacked = replay.unacked = deque()
            if not unacked:
                self._ack_progress = now  # a stall counts from the first frame out
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
                        limit = t.record_limit = limit * 2
                parts.append(item[2])
                if item[3]:
                    parts.append(item[3])
                size += frame_size
            t.last_seq = unacked[-1][0]
        if parts:
            records.append(parts)
            if limit < max_record:
                t.record_limit = limit * 2
        return records

    def _overlapping(self, t: Transport, now: float) -> list[list[Buffer]]:
        """The old transport's share of a soft switch's overlap: its control
        frames, and every frame sent on the new one it has not carried."""
        if now >= self._overlap_until or not t.usable:
            self._overlap = None
            return []
        unacked = self.replay.unacked
        fresh: list[Entry] = []
        if unacked:
            for entry in reversed(unacked):
                if entry[0] <= t.last_seq:
                    break
                fresh.append(entry)
        if not fresh:
            return []
        fresh.reverse()
        parts: list[Buffer] = list(t.control)
        t.control = []
        t.probes = 0
        t.datagram_bytes = 0
        records: list[list[Buffer]] = []
        size = sum(len(c) for c in parts)
        limit = min(t.record_limit, self.config.max_record_payload)
        for entry in fresh:
            if parts and size + entry[1] > limit:
                records.append(parts)
                parts, size = [], 0
            parts.append(entry[2])
            if entry[3]:
                parts.append(entry[3])
            size += entry[1]
        records.append(parts)
        t.last_seq = fresh[-1][0]
        self.frames_overlapped += len(fresh)
        return records

    def _ack_wanted(self, now: float) -> bool:
        """An ACK must go even with nothing else to carry it."""
        return self._received > self._ack_sent and (
            self._unacked_bytes >= self.config.ack_bytes
            or (self._ack_due is not None and now >= self._ack_due))

    def _drain_payload(self, t: Transport) -> list[list[Buffer]]:
        """While draining only the ACK and control frames (BEGIN, READY) go out."""
        if self._drained:
            return []
        parts: list[Buffer] = []
        if self._received > self._ack_sent:
            parts.append(fr.encode_ack(self._received))
            self._ack_sent = self._received
            self._unacked_bytes = 0
            self._ack_due = None
        parts.extend(t.control)
        t.control = []
        t.probes = 0
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

    def receive_payload(self, payload: bytes | memoryview, now: float,
                        tid: int | None = None) -> None:
        """Process one record plaintext that came on transport `tid` (None:
        the active one). Raises ProtocolError on a broken peer."""
        if self.state is SessionState.CLOSED:
            return
        t = self._transports.get(tid) if tid is not None else self._pick(None)
        if self.state is SessionState.DETACHED or t is None:
            raise ProtocolError("record on a transport the session is not attached to")
        if t.state is TransportState.GONE:
            return
        t.live.last_received = now
        self._last_received = now
        frames = fr.decode_frames(payload)
        self._unacked_bytes += len(payload)
        if t.state is TransportState.OPENING:
            first = frames[0]
            expected: tuple[type[fr.Frame], ...] = (
                (fr.Joined,) if t.joining else (fr.Resumed,)) if self.is_client else (
                fr.Resume, fr.Join)
            if not isinstance(first, expected):
                names = " or ".join(e.__name__.upper() for e in expected)
                raise ProtocolError(f"expected {names} first on a new transport, got "
                                    f"{type(first).__name__.upper()}")
        channels = self.channels
        for frame in frames:
            if isinstance(frame, fr.RELIABLE_CLASSES):
                seq = frame.seq
                if seq == self._received + 1:
                    if type(frame) is fr.Data:
                        # _deliver's DATA case, inline: once per DATA frame.
                        self._received = seq
                        if self._ack_due is None:
                            self._ack_due = now + self.config.ack_delay
                            self._note_activity(now)
                        channels.data(frame)
                    else:
                        self._deliver(frame, now)
                    if self._ahead:
                        self._deliver_ahead(now)
                elif seq > self._received:
                    self._hold(frame)
                elif self._ack_due is None:
                    # Had it already: the peer resent it, so it may have
                    # missed our ACK (lost with a transport): ACK again.
                    self._ack_sent = min(self._ack_sent, seq - 1)
                    self._ack_due = now + self.config.ack_delay
            else:
                self._unreliable(frame, t, now)
            if self.closed:
                return

    def _deliver_ahead(self, now: float) -> None:
        """The frames held beyond a gap that is now filled, in order."""
        ahead = self._ahead
        while ahead and not self.closed and self._received + 1 in ahead:
            held = ahead.pop(self._received + 1)
            self._ahead_bytes -= _held_size(held)
            self._deliver(held, now)
        if ahead is not None and not ahead:
            self._ahead = None

    def _deliver(self, frame: fr.ReliableFrame, now: float) -> None:
        self._received = frame.seq
        if self._ack_due is None:
            self._ack_due = now + self.config.ack_delay
            self._note_activity(now)
        if type(frame) is fr.Data:
            self.channels.data(frame)
        elif isinstance(frame, fr.Close):
            self._closed(frame.code, frame.reason, SessionInput.CLOSE_RECEIVED)
        else:
            self.channels.receive(frame)

    def _hold(self, frame: fr.ReliableFrame) -> None:
        """A frame beyond a gap: kept until the frames before it arrive (on
        another transport, or resent)."""
        ahead = self._ahead
        if ahead is None:
            ahead = self._ahead = {}
        if frame.seq in ahead:
            return
        if isinstance(frame, fr.Data):
            # The payload is a view of the whole record: keep only its bytes.
            frame = fr.Data(frame.seq, frame.channel, frame.flags, bytes(frame.payload))
        size = _held_size(frame)
        limit = 2 * self.config.replay_limit
        if len(ahead) >= _MAX_AHEAD or self._ahead_bytes + size > limit:
            raise ProtocolError(f"{len(ahead)} frames ({self._ahead_bytes} bytes) held beyond "
                                f"the gap after {self._received}, the most a peer's replay "
                                "buffer can have in flight", CloseCode.FLOW_CONTROL)
        ahead[frame.seq] = frame
        self._ahead_bytes += size

    def _unreliable(self, frame: fr.Frame, t: Transport, now: float) -> None:
        if isinstance(frame, fr.Dgram):
            self.datagrams_received += 1  # on the stream transport
            self.channels.receive_datagram(frame)
        elif isinstance(frame, fr.Ack):
            self._acked(frame.received, now)
        elif isinstance(frame, fr.Ping):
            if t.probes < MAX_PROBES:
                t.probes += 1
                t.control.append(fr.encode(fr.Pong(frame.token)))
        elif isinstance(frame, fr.Pong):
            t.live.pong(frame.token, now)
        elif isinstance(frame, fr.HandoverBegin):
            if self.is_client:
                raise ProtocolError("HANDOVER_BEGIN from the server")
            # Claim 5 step 2: stop sending here; READY is the last frame, after
            # everything already sent, so the client's mark will be exact.
            self.state = next_state(self.state, SessionInput.HANDOVER_BEGIN)
            t.control = [fr.encode(fr.HandoverReady(frame.token))]
            t.probes = 0
        elif isinstance(frame, fr.HandoverReady):
            if not self.is_client:
                raise ProtocolError("HANDOVER_READY to the server")
            next_state(self.state, SessionInput.HANDOVER_READY)
            self._events.append(ev.HandoverReady(frame.token))
        elif isinstance(frame, fr.Resume | fr.Resumed):
            self._resumed(frame, t, now)
        elif isinstance(frame, fr.Join | fr.Joined):
            self._joined(frame, t, now)
        elif isinstance(frame, fr.Switch):
            self._switched(frame, t, now)
        elif isinstance(frame, fr.Move):
            if not self.is_client:
                raise ProtocolError("MOVE from the client: only the server announces one")
            if frame.token > self._moves:
                self._moves = frame.token
                self._events.append(ev.PeerMoved(frame.addresses))
        else:
            raise ProtocolError(f"{type(frame).__name__.upper()} frames are not handled yet")

    def _switched(self, frame: fr.Switch, t: Transport, now: float) -> None:
        """The peer's SWITCH: follow it, or not when it is stale or crossed
        ours and ours stands (roam.core.crossing)."""
        if not t.usable:
            t.move(TransportInput.SWITCH_RECEIVED)  # GONE stays; OPENING is an error
            return
        self._acked(frame.received, now)
        reinject = bool(frame.flags & fr.SWITCH_REINJECT)
        ours = self._serials.target
        alive = ours is not None and ours in self._transports
        verdict = self._serials.theirs(frame.serial, frame.seen, t.id, ours_alive=alive)
        if verdict is Verdict.KEEP_OURS or verdict is Verdict.YIELD:
            self.crossings += 1
            self._events.append(ev.SwitchesCrossed(ours if ours is not None else t.id, t.id,
                                                   kept=verdict is Verdict.KEEP_OURS))
        if verdict is Verdict.FOLLOW or verdict is Verdict.YIELD:
            if t is not self._active or reinject:
                why = ("the peer found the active transport lost or stalled" if reinject
                       else "the peer switched" if verdict is Verdict.FOLLOW
                       else "the peer's switch crossed ours, and the peer made the session")
                self._activate(t, now, TransportInput.SWITCH_RECEIVED, why, reinject=reinject)
            else:
                t.move(TransportInput.SWITCH_RECEIVED)
        elif reinject and self._active is not None:
            # Ours stands (or theirs was overtaken), but the peer lost or
            # stalled something: what it has not acknowledged goes again on
            # our active transport.
            resent, _ = self.replay.resend_all()
            self.frames_resent += resent
            self._ack_progress = now

    def _resumed(self, frame: fr.Resume | fr.Resumed, t: Transport, now: float) -> None:
        """RESUME (server) or RESUMED (client), first on a new transport: the
        session moves onto it, whatever carried it before, and each side
        resends every frame after the other's mark (claim 6)."""
        if t.state is TransportState.OPENING:
            # A mark beyond what was sent condemns this transport only: it
            # is checked before anything moves.
            self._acked(frame.received, now)
        t.move(TransportInput.RESUMED)
        attached = next_state(self.state, SessionInput.RESUME)
        for other in list(self._transports.values()):
            if other is not t:
                self._forget(other, now)
        frames, size = self.replay.resend_all()
        self.frames_resent += frames
        self.resumes += 1
        self._events.append(ev.SessionResumed(frames, size))
        t.control_alone = True
        if not self.is_client:
            t.control.insert(0, fr.encode(fr.Resumed(self._received)))
            self._ack_sent = self._received
            self._ack_due = None
        self._active = t
        self._rtt = t.live.rtt
        self._ack_progress = now
        self.state = attached

    def _joined(self, frame: fr.Join | fr.Joined, t: Transport, now: float) -> None:
        """JOIN (server) or JOINED (client), first on a new transport: a
        standby now, nothing resent; on a session with no other transport
        left it takes over at once, resending what is unacknowledged."""
        if t.state is TransportState.OPENING:
            self._acked(frame.received, now)  # before anything moves, as for RESUME
        t.move(TransportInput.JOINED)
        self.state = next_state(self.state, SessionInput.JOIN)
        if not self.is_client:
            t.control.insert(0, fr.encode(fr.Joined(self._received)))
        self._events.append(ev.TransportJoined(t.id))
        # Its RTT at once: a standby is trusted to take over only once measured.
        t.probes += 1
        t.control.append(fr.encode(fr.Ping(t.live.ping(now))))
        if self._active is None:
            self._activate(t, now, TransportInput.SWITCH, "the only transport left",
                           reinject=True)
            t.control.append(self._switch_frame(t, True))
        if not self.is_client:
            # JOINED carries the mark and must come first: no ACK before it.
            self._ack_sent = self._received
            self._ack_due = None

    def _acked(self, received: int, now: float) -> None:
        if self.replay.acked(received):
            self._ack_progress = now

    def _closed(self, code: CloseCode, reason: str, event: SessionInput) -> None:
        self.state = next_state(self.state, event)
        self._events.append(ev.SessionClosed(code, reason, event.from_peer))

    # ---- events and statistics ---------------------------------------------

    def next_event(self) -> ev.Event | None:
        return self._events.pop(0) if self._events else None

    def take_events(self) -> list[ev.Event]:
        """Every event so far, in order, at once (what next_event would give one
        by one); events that handling them causes come with the next call."""
        taken = self._events
        if not taken:
            return []
        # A new list for both that append to it (the session and its channels).
        self._events = self.channels.events = []
        return taken

    def statistics(self) -> SessionStatistics:
        channels = self.channels
        compressor = channels.compressor
        return SessionStatistics(
            state=self.state.value, srtt=self._rtt.srtt, rto=self._rtt.rto,
            channels=len(channels), replay_bytes=self.replay.bytes,
            bytes_sent=channels.bytes_sent, bytes_received=channels.bytes_received,
            frames_resent=self.frames_resent, resumes=self.resumes,
            datagrams_sent=self.datagrams_sent, datagrams_received=self.datagrams_received,
            compression=str(compressor.mode) if compressor else "off",
            payload_bytes_sent=channels.payload_bytes_sent,
            payload_bytes_received=channels.payload_bytes_received,
            switches=self.switches, crossings=self.crossings,
        )


def _held_size(frame: fr.ReliableFrame) -> int:
    """What a frame held beyond a gap costs."""
    if isinstance(frame, fr.Data):
        return len(frame.payload) + _AHEAD_OVERHEAD
    return _AHEAD_OVERHEAD
