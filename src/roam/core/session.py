"""The session, sans-IO: channels, sequence numbers, replay buffer, resume.

The driver feeds it record plaintexts (`receive_payload`), the time
(`handle_timer`) and application calls (`open_channel`, `send`, ...); it pulls
record plaintexts to send (`payloads_to_send`), events (`next_event`) and the
next deadline (`get_timer`). It never touches a socket or reads a clock:
every method that depends on time takes `now` (seconds, any monotonic origin).

Reliability: each reliable frame gets the next sequence number of this
direction and stays in the replay buffer until the peer acknowledges it.
When a transport breaks, the session is *detached*; on the next transport the
client sends RESUME(received up to N), the server answers RESUMED(received up
to M), and each resends every frame after the other's mark (claim 6).

Backpressure: the replay buffer holds at most `replay_limit` bytes; past
that, channel data waits in per-channel buffers of `channel_send_buffer`
bytes, and `send_room()` tells the driver to stop reading the application.
Per-channel credit (WINDOW) keeps one slow reader from stalling the others.

Compression, when the handshake negotiated it: DATA payloads are compressed
once, when the frame is built, and the encoded frame is what the replay
buffer keeps and resends; a compressed payload is decompressed only when
its frame first arrives in order (`roam.core.compress` says why that
matters).
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

from roam.core import events as ev
from roam.core import frames as fr
from roam.core.compress import (
    AUTO_MIN_RTT,
    ChannelCompressor,
    ChannelDecompressor,
    CompressionMode,
    Compressor,
    History,
    OutputTooLarge,
)
from roam.core.rtt import RttEstimator
from roam.core.sendbuffer import SendBuffer
from roam.core.states import SessionInput, SessionState, next_state
from roam.errors import CloseCode, ProtocolError


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


# A piece of a record's plaintext: frames are built once and kept in the
# replay buffer as they are; a DATA frame's payload is a view of the
# application's read (roam.core.sendbuffer).
Buffer = bytes | memoryview
# A reliable frame in the replay buffer: (seq, size, head, body). `body` is a
# DATA frame's payload (empty for every other frame) and `head` the rest.
Entry = tuple[int, int, bytes, Buffer]

# Pings outstanding at once; a silent path is declared dead long before more.
_MAX_PINGS = 32
# PINGs and PONGs waiting in the control queue at most. They leave with the
# next records, so an honest peer never gets near this: only a transport
# whose writes stall while the peer keeps pinging (a peer that sends and
# never reads) would have us queue a PONG per PING it sends, without end.
# The peer waits for at most _MAX_PINGS answers, so more queued ones answer
# pings it has forgotten.
_MAX_PROBES = _MAX_PINGS
# Datagrams a channel holds while its OPEN is unanswered (a DNS client's
# first query and a retry or two); later ones are dropped, as UDP may.
_EARLY_DATAGRAMS = 8
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


class _Channel:
    __slots__ = ("compressor", "consumed", "credit", "decompressor", "early", "fin_pending",
                 "fin_received", "fin_sent", "id", "kind", "local", "opened", "recv_left",
                 "send_buf")

    def __init__(self, cid: int, kind: fr.ChannelKind, local: bool, window: int) -> None:
        self.id = cid
        self.kind = kind
        self.local = local  # opened by this side
        self.opened = False
        self.credit = 0  # bytes the peer still accepts from us
        self.recv_left = window  # bytes we still accept from the peer
        self.consumed = 0  # bytes the application took, not yet granted back
        self.send_buf = SendBuffer()
        self.fin_pending = False
        self.fin_sent = False
        self.fin_received = False
        self.early: list[bytes] = []  # datagrams waiting for OPEN_OK
        # Streams of compressed DATA, made when first needed.
        self.compressor: ChannelCompressor | None = None
        self.decompressor: ChannelDecompressor | None = None


def _release(ch: _Channel) -> None:
    """A closed channel's compression context goes back to its session."""
    if ch.compressor is not None:
        ch.compressor.release()
        ch.compressor = None
    ch.decompressor = None


class Session:
    # A server holds one per session for as long as it lives, idle or not:
    # slots, where an instance dict of this many attributes (past the 30 that
    # share keys) cost about 1.5 KiB.
    __slots__ = ("_ack_due", "_ack_sent", "_active_since", "_channels", "_close_sent",
                 "_compressor", "_control", "_control_alone", "_datagram_bytes",
                 "_detached_since", "_drained", "_events", "_idle", "_last_activity",
                 "_last_ping", "_last_received", "_next_channel", "_next_seq",
                 "_peer_max_channel", "_pending", "_ping_token", "_pings", "_probes", "_received",
                 "_record_limit", "_recv_history", "_replay_bytes", "_rr", "_rtt",
                 "_send_history", "_unacked", "_unacked_bytes", "bytes_received", "bytes_sent",
                 "config", "datagrams_received", "datagrams_sent", "frames_resent", "is_client",
                 "payload_bytes_received", "payload_bytes_sent", "resumes", "state")

    def __init__(self, *, is_client: bool, now: float, config: SessionConfig | None = None,
                 compression: CompressionMode | None = None, history: bool = False) -> None:
        """`compression`: None (or off) unless the handshake negotiated it; then
        this side's mode for its own sending direction, and compressed DATA
        from the peer is accepted. `history`: the handshake negotiated
        ZSTD_HISTORY (streams primed with each direction's recent data)."""
        self.is_client = is_client
        self.config = config or SessionConfig()
        self._compressor: Compressor | None = None
        self._send_history: History | None = None
        self._recv_history: History | None = None
        if compression is not None and compression.enabled:
            if history:
                self._send_history, self._recv_history = History(), History()
            self._compressor = Compressor(compression, history=self._send_history,
                                          auto_min_rtt=self.config.auto_compress_min_rtt)
        self.state = SessionState.DETACHED
        self._channels: dict[int, _Channel] = {}
        # Client channels are odd, server channels even, so both may open.
        self._next_channel = 1 if is_client else 2
        self._peer_max_channel = 0
        self._next_seq = 1
        # Reliable frames not yet sent, and sent but not yet acknowledged. Made
        # when first needed and dropped again when an idle session's keepalive
        # finds both empty: an empty deque is 0.6 KiB, and a server holds
        # thousands of idle sessions.
        self._pending: deque[Entry] | None = None
        self._unacked: deque[Entry] | None = None
        self._replay_bytes = 0
        self._control: list[bytes] = []  # unreliable frames for the current transport
        self._probes = 0  # PINGs and PONGs among them (_MAX_PROBES says why)
        self._received = 0  # highest reliable seq received in order
        self._ack_sent = 0
        self._unacked_bytes = 0  # reliable bytes received since our last ACK
        self._ack_due: float | None = None  # when a standalone ACK must go
        # A list: an idle session holds it empty (an empty deque is 0.6 KiB),
        # and the driver drains it after every read.
        self._events: list[ev.Event] = []
        self._rtt = RttEstimator()
        self._pings: dict[int, float] = {}  # token -> when sent
        self._ping_token = 0
        self._last_received = now
        self._last_ping = now
        # Reliable frames either way keep a session active (fast keepalive,
        # short dead time); the silence that counts as death is measured from
        # the later of the last arrival and the moment the session woke up.
        self._last_activity = now
        self._active_since = now
        self._idle = False
        self._detached_since: float | None = now
        # Channels with data waiting, round-robin; made when first needed.
        self._rr: deque[int] | None = None
        self._close_sent = False
        # After a resume the control frames (RESUMED, ACK) leave in a record
        # of their own: a new TCP connection starts with a 10-segment window
        # (RFC 6928), and a 128 KiB first record would hold RESUMED back for
        # three or four round trips of slow start.
        self._control_alone = False
        self._record_limit = _FIRST_RECORD
        self._drained = False  # server: HANDOVER_READY is out; nothing more on this transport
        self.bytes_sent = 0
        self.bytes_received = 0
        self.frames_resent = 0
        self.resumes = 0
        self.datagrams_sent = 0
        self.datagrams_received = 0
        self._datagram_bytes = 0
        self.payload_bytes_sent = 0
        self.payload_bytes_received = 0

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
        self._pings.clear()
        self._rtt.new_path()
        self._drained = False
        self._record_limit = _FIRST_RECORD
        self._last_received = now
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
        return self._last_received

    @property
    def closed(self) -> bool:
        return self.state is SessionState.CLOSED

    @property
    def rtt(self) -> RttEstimator:
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
        if after is self.state:
            return  # not attached: the resume that follows is a hard handover
        self.state = after
        self._control.append(fr.encode(fr.HandoverBegin(token)))

    # ---- channels: the application side ----------------------------------

    def open_channel(self, host: str, port: int,
                     kind: fr.ChannelKind = fr.ChannelKind.STREAM) -> int:
        cid = self._next_channel
        self._next_channel += 2
        ch = _Channel(cid, kind, True, self.config.channel_window)
        self._channels[cid] = ch
        self._queue(fr.Open(self._seq(), cid, kind, self.config.channel_window, host, port))
        return cid

    def accept_channel(self, cid: int) -> None:
        ch = self._channels.get(cid)
        if ch is None or ch.local or ch.opened:
            return  # the peer reset it meanwhile
        ch.opened = True
        self._queue(fr.OpenOk(self._seq(), cid, self.config.channel_window))
        if ch.send_buf or ch.fin_pending:
            self._wake(cid)

    def refuse_channel(self, cid: int, code: CloseCode, reason: str) -> None:
        if self._channels.pop(cid, None) is not None:
            self._queue(fr.OpenFail(self._seq(), cid, code, reason))

    def send(self, cid: int, data: bytes | memoryview) -> None:
        """Queue application bytes; a channel the peer already reset drops them."""
        ch = self._channels.get(cid)
        if ch is None or ch.fin_pending:
            return
        if not ch.send_buf and ch.opened:
            self._wake(cid)
        ch.send_buf.append(data)

    def send_datagram(self, cid: int, data: bytes) -> bool:
        """Queue one datagram; False when it was dropped (unknown channel, no room)."""
        ch = self._channels.get(cid)
        if ch is None or ch.kind is not fr.ChannelKind.DATAGRAM or len(data) > fr.MAX_DATA_CHUNK:
            return False
        if not ch.opened:
            if len(ch.early) >= _EARLY_DATAGRAMS:
                return False
            ch.early.append(data)
            return True
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
        ch = self._channels.get(cid)
        if (ch is None or ch.kind is not fr.ChannelKind.DATAGRAM or not ch.opened
                or len(data) > fr.MAX_DATA_CHUNK or self.state is SessionState.CLOSED):
            return None
        return fr.encode(fr.Dgram(cid, data))

    def receive_datagram(self, frame: fr.Dgram) -> None:
        """A DGRAM frame from the datagram transport (already authenticated)."""
        if self.state is not SessionState.CLOSED:
            self._datagram(frame)

    def send_room(self, cid: int) -> int:
        """How many more bytes the driver may read from the application now."""
        ch = self._channels.get(cid)
        if ch is None:
            return 0
        return max(0, self.config.channel_send_buffer - ch.send_buf.size)

    def end_channel(self, cid: int) -> None:
        """The application half-closed: FIN after the buffered data."""
        ch = self._channels.get(cid)
        if ch is None or ch.fin_pending:
            return
        ch.fin_pending = True
        if ch.opened and not ch.send_buf:
            self._wake(cid)

    def reset_channel(self, cid: int, code: CloseCode = CloseCode.RESET_BY_APPLICATION) -> None:
        ch = self._channels.pop(cid, None)
        if ch is not None:
            _release(ch)
            self._queue(fr.Reset(self._seq(), cid, code))

    def consumed(self, cid: int, n: int) -> None:
        """The application took n delivered bytes: grant the peer more credit."""
        ch = self._channels.get(cid)
        if ch is None:
            return
        ch.consumed += n
        # Granting at a quarter of the window keeps the pipe full without a
        # WINDOW frame per read.
        if ch.consumed >= self.config.channel_window // 4 and not ch.fin_received:
            ch.recv_left += ch.consumed
            self._queue(fr.Window(self._seq(), cid, ch.consumed))
            ch.consumed = 0

    def channel_ids(self) -> list[int]:
        return list(self._channels)

    def close(self, code: CloseCode = CloseCode.NORMAL, reason: str = "") -> None:
        """End the session: CLOSE goes out with the next payloads."""
        if self.state is SessionState.CLOSED or self._close_sent:
            return
        self._close_sent = True
        self._queue(fr.Close(self._seq(), code, reason))
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
        if self.state is SessionState.DETACHED:
            return []
        if self.state is SessionState.RESUMING:
            out: list[list[Buffer]] = [list(self._control)] if self._control else []
            self._control = []
            self._probes = 0
            return out
        if self.state is SessionState.DRAINING:
            return self._drain_payload()
        if not (self._rr or self._pending or self._control or self._ack_wanted(now)):
            return []  # the usual answer to a flush after a read: nothing
        if self.state is SessionState.ATTACHED:
            self._fill_data()
        elif not self._close_sent:
            return []
        records: list[list[Buffer]] = []
        parts: list[Buffer] = []
        size = 0
        if ((self._received > self._ack_sent and (self._pending or self._control))
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
        pending = self._pending
        if pending:
            self._note_activity(now)
            unacked = self._unacked
            if unacked is None:
                unacked = self._unacked = deque()
            room = budget if budget is not None else self._replay_bytes
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

    def _fill_data(self) -> None:
        """Turn buffered channel bytes into DATA frames while the replay buffer has room."""
        rr = self._rr
        if rr is None:
            return
        limit = self.config.replay_limit
        compressor = self._compressor
        if compressor is not None and not compressor.wanted(self._rtt.min_rtt):
            compressor = None  # auto, on a path faster than zstd
        history = self._send_history
        while rr and self._replay_bytes < limit:
            cid = rr.popleft()
            ch = self._channels.get(cid)
            if ch is None or not ch.opened or ch.fin_sent:
                continue
            buf = ch.send_buf
            if buf:
                # Frames no larger than the record limit: right after an
                # attach, a backlog must not become one 60 KiB frame that
                # no small first record can hold.
                n = min(len(buf), ch.credit, fr.MAX_DATA_CHUNK, self._record_limit)
                if n == 0:
                    continue  # re-queued when WINDOW arrives
                chunk = buf.take(n)
                ch.credit -= n
                self.bytes_sent += n
                flags = 0
                if compressor is not None:
                    # Credit counts the application's bytes, compressed or not.
                    if ch.compressor is None:
                        ch.compressor = compressor.channel()
                    raw = chunk
                    chunk, compressed = ch.compressor.compress(raw)
                    flags = fr.FLAG_COMPRESSED if compressed else 0
                    if history is not None:
                        # After compressing: a frame's own stream starts from
                        # the history before it, as its receiver's will.
                        history.add(raw)
                        flags |= fr.FLAG_HISTORY
                self.payload_bytes_sent += len(chunk)
                seq = self._seq()
                head = fr.encode_data_header(seq, cid, len(chunk), flags)
                entry = (seq, len(head) + len(chunk), head, chunk)
                self._pend().append(entry)
                self._replay_bytes += entry[1]
            if buf:
                rr.append(cid)
            elif ch.fin_pending:
                ch.fin_sent = True
                self._queue(fr.Fin(self._seq(), cid))
                self._maybe_finished(ch)

    def _pend(self) -> deque[Entry]:
        if self._pending is None:
            self._pending = deque()
        return self._pending

    def _wake(self, cid: int) -> None:
        """Channel `cid` has data (or a FIN) to send: queue it for _fill_data."""
        if self._rr is None:
            self._rr = deque()
        self._rr.append(cid)

    def _seq(self) -> int:
        seq = self._next_seq
        self._next_seq += 1
        return seq

    def _queue(self, frame: fr.ReliableFrame) -> None:
        self._queue_raw(fr.encode(frame))

    def _queue_raw(self, encoded: bytes) -> None:
        # Called right after _seq() numbered the frame.
        self._pend().append((self._next_seq - 1, len(encoded), encoded, b""))
        self._replay_bytes += len(encoded)

    # ---- input -----------------------------------------------------------

    def receive_payload(self, payload: bytes | memoryview, now: float) -> None:
        """Process one record plaintext. Raises ProtocolError on a broken peer."""
        if self.state is SessionState.CLOSED:
            return
        if self.state is SessionState.DETACHED:
            raise ProtocolError("record on a transport the session is not attached to")
        self._last_received = now
        frames = fr.decode_frames(payload)
        self._unacked_bytes += len(payload)
        if self.state is SessionState.RESUMING:
            first = frames[0]
            expected = fr.Resumed if self.is_client else fr.Resume
            if not isinstance(first, expected):
                raise ProtocolError(f"expected {expected.__name__.upper()} first on a resumed "
                                    f"transport, got {type(first).__name__.upper()}")
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
                self._reliable(frame)
            else:
                self._unreliable(frame, now)
            if self.closed:
                return

    def _reliable(self, frame: fr.ReliableFrame) -> None:
        if isinstance(frame, fr.Data):
            ch = self._peer_channel(frame.channel)
            if ch is None:
                return
            if not ch.opened:
                raise ProtocolError(f"DATA on channel {ch.id} before it was opened")
            if ch.fin_received:
                raise ProtocolError(f"DATA on channel {ch.id} after its FIN")
            data = frame.payload
            if frame.flags & fr.FLAG_COMPRESSED:
                data = self._decompress(ch, data)
            if frame.flags & fr.FLAG_HISTORY:
                if self._recv_history is None:
                    raise ProtocolError("DATA joins a compression history that was not "
                                        "negotiated")
                self._recv_history.add(data)
            n = len(data)
            if n > ch.recv_left:
                raise ProtocolError(f"channel {ch.id} sent {n} bytes with {ch.recv_left} of "
                                    "credit", CloseCode.FLOW_CONTROL)
            ch.recv_left -= n
            self.bytes_received += n
            self.payload_bytes_received += len(frame.payload)
            self._events.append(ev.DataReceived(ch.id, data))
        elif isinstance(frame, fr.Window):
            ch = self._peer_channel(frame.channel)
            if ch is None:
                return
            if ch.credit + frame.increment > 2**32:
                raise ProtocolError(f"channel {ch.id} credit overflow", CloseCode.FLOW_CONTROL)
            # Not for an increment of 0: the credit stays 0, and each such
            # WINDOW would queue the channel again (a peer's flood of them,
            # while our writes stall, grew the round-robin queue without end).
            if frame.increment and ch.credit == 0 and ch.send_buf:
                self._wake(ch.id)
            ch.credit += frame.increment
        elif isinstance(frame, fr.Open):
            self._peer_open(frame)
        elif isinstance(frame, fr.OpenOk):
            ch = self._peer_channel(frame.channel)
            if ch is None:
                return
            if not ch.local or ch.opened:
                raise ProtocolError(f"OPEN_OK for channel {ch.id} that was not awaiting one")
            ch.opened = True
            ch.credit = frame.window
            if ch.send_buf or ch.fin_pending:
                self._wake(ch.id)
            self._events.append(ev.ChannelOpened(ch.id))
            early, ch.early = ch.early, []
            for datagram in early:
                self.send_datagram(ch.id, datagram)
        elif isinstance(frame, fr.OpenFail):
            ch = self._peer_channel(frame.channel)
            if ch is None:
                return
            if not ch.local or ch.opened:
                raise ProtocolError(f"OPEN_FAIL for channel {ch.id} that was not awaiting one")
            del self._channels[ch.id]
            self._events.append(ev.ChannelOpenFailed(ch.id, frame.code, frame.reason))
        elif isinstance(frame, fr.Fin):
            ch = self._peer_channel(frame.channel)
            if ch is None:
                return
            if ch.fin_received or not ch.opened:
                raise ProtocolError(f"unexpected FIN on channel {ch.id}")
            ch.fin_received = True
            self._events.append(ev.EndOfStream(ch.id))
            self._maybe_finished(ch)
        elif isinstance(frame, fr.Reset):
            ch = self._peer_channel(frame.channel)
            if ch is not None:
                del self._channels[ch.id]
                _release(ch)
                self._events.append(ev.ChannelReset(ch.id, frame.code))
        else:  # Close
            self._closed(frame.code, frame.reason, SessionInput.CLOSE_RECEIVED)

    def _decompress(self, ch: _Channel, payload: bytes | memoryview) -> bytes:
        """One compressed DATA payload, expanded within the channel's credit.

        Only reached for a frame seen for the first time and in order (the
        caller dropped duplicates by sequence number): the channel's zstd
        stream must see each frame exactly once, as the sender's did.
        """
        if self._compressor is None:
            raise ProtocolError("compressed DATA was not negotiated")
        if ch.decompressor is None:
            ch.decompressor = ChannelDecompressor()
        try:
            return ch.decompressor.decompress(payload, ch.recv_left, self._recv_history)
        except OutputTooLarge:
            if ch.recv_left < fr.MAX_DATA_CHUNK:
                raise ProtocolError(f"channel {ch.id} sent compressed DATA expanding beyond "
                                    f"its {ch.recv_left} bytes of credit",
                                    CloseCode.FLOW_CONTROL) from None
            raise ProtocolError(f"compressed DATA on channel {ch.id} expands beyond "
                                f"{fr.MAX_DATA_CHUNK} bytes") from None
        except ProtocolError as exc:
            raise ProtocolError(f"channel {ch.id}: {exc}") from None

    def _peer_open(self, frame: fr.Open) -> None:
        cid = frame.channel
        if cid % 2 == self._next_channel % 2:
            raise ProtocolError(f"peer opened channel {cid}, which is ours to number")
        if cid <= self._peer_max_channel:
            raise ProtocolError(f"peer reused channel number {cid}")
        ceiling = 2 * self.config.replay_limit
        if self._replay_bytes >= ceiling:
            # Every OPEN gets an answer (OPEN_OK or OPEN_FAIL), queued past
            # the replay limit and held until the peer acknowledges it. Data
            # stops at the limit, so twice the limit is reached only by a
            # peer that keeps opening and does not acknowledge the answers:
            # it would have us hold them without end.
            raise ProtocolError(f"peer opened channel {cid} with {self._replay_bytes} bytes of "
                                f"our frames unacknowledged (at most {ceiling} before it may "
                                "open more)", CloseCode.FLOW_CONTROL)
        if len(self._channels) >= self.config.max_channels:
            self._peer_max_channel = cid
            reason = f"too many channels (this session carries {self.config.max_channels} at most)"
            self._queue(fr.OpenFail(self._seq(), cid, CloseCode.FLOW_CONTROL, reason))
            self._events.append(ev.ChannelRefused(cid, CloseCode.FLOW_CONTROL, reason))
            return
        self._peer_max_channel = cid
        ch = _Channel(cid, frame.kind, False, self.config.channel_window)
        ch.credit = frame.window
        self._channels[cid] = ch
        self._events.append(ev.ChannelOpenRequested(cid, frame.kind, frame.host, frame.port))

    def _peer_channel(self, cid: int) -> _Channel | None:
        """The channel a peer frame names; None if it closed recently (frames cross)."""
        ch = self._channels.get(cid)
        if ch is not None:
            return ch
        ours = cid % 2 == self._next_channel % 2
        known = cid < self._next_channel if ours else cid <= self._peer_max_channel
        if cid == 0 or not known:
            raise ProtocolError(f"frame for channel {cid}, which was never opened")
        return None

    def _maybe_finished(self, ch: _Channel) -> None:
        if ch.fin_sent and ch.fin_received and self._channels.pop(ch.id, None) is not None:
            _release(ch)
            self._events.append(ev.ChannelClosed(ch.id))

    def _unreliable(self, frame: fr.Frame, now: float) -> None:
        if isinstance(frame, fr.Dgram):
            self.datagrams_received += 1  # on the stream transport
            self._datagram(frame)
        elif isinstance(frame, fr.Ack):
            self._acked(frame.received)
        elif isinstance(frame, fr.Ping):
            if self._probes < _MAX_PROBES:
                self._probes += 1
                self._control.append(fr.encode(fr.Pong(frame.token)))
        elif isinstance(frame, fr.Pong):
            sent = self._pings.pop(frame.token, None)
            if sent is not None:
                self._rtt.sample(now - sent)
                # Older pings were lost or overtaken; they will never count.
                self._pings = {t: s for t, s in self._pings.items() if s > sent}
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
            self._acked(frame.received)
            self._resend_all()
            self._control_alone = True
            if not self.is_client:
                self._control.insert(0, fr.encode(fr.Resumed(self._received)))
                self._ack_sent = self._received
                self._ack_due = None
            self.state = attached
        else:
            raise ProtocolError(f"{type(frame).__name__.upper()} frames are not handled yet")

    def _datagram(self, frame: fr.Dgram) -> None:
        ch = self._peer_channel(frame.channel)
        if ch is None:
            return
        if ch.kind is not fr.ChannelKind.DATAGRAM or not ch.opened:
            raise ProtocolError(f"DGRAM on channel {ch.id}, which is not an open datagram "
                                "channel")
        self._events.append(ev.DatagramReceived(ch.id, frame.payload))

    def _acked(self, received: int) -> None:
        if received >= self._next_seq:
            raise ProtocolError(f"peer acknowledged {received}, beyond {self._next_seq - 1} sent")
        unacked = self._unacked
        while unacked and unacked[0][0] <= received:
            self._replay_bytes -= unacked.popleft()[1]
        if not unacked:
            pending = self._pending
            # After a resume the peer may acknowledge frames still queued to resend.
            while pending and pending[0][0] <= received:
                self._replay_bytes -= pending.popleft()[1]

    def _resend_all(self) -> None:
        resent = list(self._unacked or ())
        self._unacked = None
        if resent:
            self._pend().extendleft(reversed(resent))
        self.frames_resent += len(resent)
        self.resumes += 1
        self._events.append(ev.SessionResumed(len(resent), sum(entry[1] for entry in resent)))

    def _closed(self, code: CloseCode, reason: str, event: SessionInput) -> None:
        self.state = next_state(self.state, event)
        self._events.append(ev.SessionClosed(code, reason, event.from_peer))

    # ---- time ------------------------------------------------------------

    def _dead_after(self) -> float:
        dead = max(self.config.dead_floor, self.config.dead_rtos * self._rtt.rto)
        return dead + self._idle_interval() if self._idle else dead

    def _idle_interval(self) -> float:
        return max(self.config.keepalive_interval, self.config.idle_keepalive_interval)

    def _silent_since(self) -> float:
        return max(self._last_received, self._active_since)

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
        if state is SessionState.ATTACHED:
            deadline = self._silent_since() + self._dead_after()
            ping = self._last_ping + self._ping_interval()
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
        deadline = self._silent_since() + self._dead_after()
        if self._ack_due is not None and state is SessionState.DRAINING:
            deadline = min(deadline, self._ack_due)
        return deadline

    def _ping_interval(self) -> float:
        # While something is unanswered and the peer is quiet, probe every RTO
        # so a dead path shows quickly; otherwise a keepalive now and then.
        if (self._unacked or self._pings) and self._last_received < self._last_ping:
            return self._rtt.rto
        return self._idle_interval() if self._idle else self.config.keepalive_interval

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
        silence = now - self._silent_since()
        if silence >= self._dead_after():
            self.transport_lost(now)
            self._events.append(ev.TransportDead(silence))
            return
        if self.state is SessionState.ATTACHED and now - self._last_ping >= self._ping_interval():
            self._last_ping = now
            if self._probes < _MAX_PROBES:  # else our writes stall: it could not leave
                self._ping_token += 1
                if len(self._pings) >= _MAX_PINGS:
                    self._pings.pop(next(iter(self._pings)))
                self._pings[self._ping_token] = now
                self._probes += 1
                self._control.append(fr.encode(fr.Ping(self._ping_token)))
            if not self._pending and not self._unacked:
                # Nothing in flight at a keepalive: an idle session gives
                # back its deques until it carries data again.
                self._pending = self._unacked = None
                if not self._rr:
                    self._rr = None

    # ---- events and statistics ---------------------------------------------

    def next_event(self) -> ev.Event | None:
        return self._events.pop(0) if self._events else None

    def take_events(self) -> list[ev.Event]:
        """Every event so far, in order, at once (what next_event would give one
        by one); events that handling them causes come with the next call."""
        events = self._events
        if events:
            self._events = []
        return events

    @property
    def has_pending(self) -> bool:
        """Reliable frames are queued and not yet in a record: after a call to
        records_to_send that gave records, another may give more (it stopped
        at its budget); while draining or detached none may go."""
        return bool(self._pending)

    def statistics(self) -> SessionStatistics:
        return SessionStatistics(
            state=self.state.value, srtt=self._rtt.srtt, rto=self._rtt.rto,
            channels=len(self._channels), replay_bytes=self._replay_bytes,
            bytes_sent=self.bytes_sent, bytes_received=self.bytes_received,
            frames_resent=self.frames_resent, resumes=self.resumes,
            datagrams_sent=self.datagrams_sent, datagrams_received=self.datagrams_received,
            compression=str(self._compressor.mode) if self._compressor else "off",
            payload_bytes_sent=self.payload_bytes_sent,
            payload_bytes_received=self.payload_bytes_received,
        )
