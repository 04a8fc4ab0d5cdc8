"""A session's channels, sans-IO: opening, data and credit, half-close, reset.

Each channel is one application conversation (a TCP connection, a UDP
flow). Its life is the CHANNEL table of roam.core.states; every frame and
every call moves it through `Table.next`, so a frame out of place is a
protocol error however it arrives.

Flow control: per channel, `credit` is what the peer still accepts from us
and `recv_left` what we still accept from it; the application's reads give
credit back with WINDOW (a quarter of the window at a time). Buffered
application bytes become DATA frames in `fill`, round-robin over the
channels with data, while the replay buffer has room.

Compression, when negotiated: DATA payloads are compressed once, when the
frame is built, and decompressed only when the frame first arrives in
order (roam.core.compress says why that matters).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING

from roam.core import events as ev
from roam.core import frames as fr
from roam.core.compress import (
    ChannelCompressor,
    ChannelDecompressor,
    Compressor,
    History,
    OutputTooLarge,
)
from roam.core.replay import ReplayBuffer
from roam.core.sendbuffer import SendBuffer
from roam.core.states import CHANNEL, ChannelInput, ChannelState
from roam.errors import CloseCode, ProtocolError

if TYPE_CHECKING:
    from roam.core.sessionconfig import SessionConfig

CI, CS = ChannelInput, ChannelState
# Where data flows from us (the peer's credit counts) and to us.
_SENDING = frozenset((CS.OPEN, CS.HALF_CLOSED_REMOTE))
_OPEN = frozenset((CS.OPEN, CS.HALF_CLOSED_LOCAL, CS.HALF_CLOSED_REMOTE))
# The states DATA leaves as they are (the CHANNEL table says which): a DATA
# frame for a channel in one of them needs no table lookup, once per frame.
_DATA_STAYS = frozenset(s for s in CS if CHANNEL.get(s, CI.DATA) is s)
# Datagrams a channel holds while its OPEN is unanswered (a DNS client's
# first query and a retry or two); later ones are dropped, as UDP may.
EARLY_DATAGRAMS = 8


class Channel:
    __slots__ = ("compressor", "consumed", "credit", "decompressor", "early", "fin_pending",
                 "id", "kind", "local", "recv_left", "send_buf", "state")

    def __init__(self, cid: int, kind: fr.ChannelKind, local: bool, window: int) -> None:
        self.id = cid
        self.kind = kind
        self.local = local  # opened by this side
        self.state = CS.OPENING if local else CS.REQUESTED
        self.credit = 0  # bytes the peer still accepts from us
        self.recv_left = window  # bytes we still accept from the peer
        self.consumed = 0  # bytes the application took, not yet granted back
        self.send_buf = SendBuffer()
        # The application half-closed: FIN goes after the buffered data.
        self.fin_pending = False
        self.early: list[bytes] = []  # datagrams waiting for OPEN_OK
        # Streams of compressed DATA, made when first needed.
        self.compressor: ChannelCompressor | None = None
        self.decompressor: ChannelDecompressor | None = None

    def move(self, event: ChannelInput) -> None:
        # Once per frame: the error's text is made only for an error.
        after = CHANNEL.get(self.state, event)
        self.state = after if after is not None else CHANNEL.next(self.state, event,
                                                                  f"channel {self.id}")

    @property
    def opened(self) -> bool:
        return self.state in _OPEN

    def release(self) -> None:
        """A closed channel's compression context goes back to its session."""
        if self.compressor is not None:
            self.compressor.release()
            self.compressor = None
        self.decompressor = None


class Channels:
    """Every channel of one session, both sides' numbers."""

    __slots__ = (
        "_peer_max",
        "by_id",
        "bytes_received",
        "bytes_sent",
        "compressor",
        "config",
        "events",
        "next_id",
        "payload_bytes_received",
        "payload_bytes_sent",
        "recv_history",
        "replay",
        "rr",
        "send_datagram",
        "send_history",
    )

    def __init__(self, config: SessionConfig, replay: ReplayBuffer, events: list[ev.Event], *,
                 is_client: bool, compressor: Compressor | None,
                 send_history: History | None, recv_history: History | None) -> None:
        self.config = config
        self.replay = replay
        self.events = events
        self.compressor = compressor
        self.send_history = send_history
        self.recv_history = recv_history
        self.by_id: dict[int, Channel] = {}
        # Client channels are odd, server channels even, so both may open.
        self.next_id = 1 if is_client else 2
        self._peer_max = 0
        # Channels with data waiting, round-robin; made when first needed.
        self.rr: deque[int] | None = None
        # How a datagram held until OPEN_OK leaves (the session's queue).
        self.send_datagram: Callable[[int, bytes], bool] = lambda cid, data: False
        self.bytes_sent = 0
        self.bytes_received = 0
        self.payload_bytes_sent = 0
        self.payload_bytes_received = 0

    def __len__(self) -> int:
        return len(self.by_id)

    def ids(self) -> list[int]:
        return list(self.by_id)

    def get(self, cid: int) -> Channel | None:
        return self.by_id.get(cid)

    def state_of(self, cid: int) -> ChannelState:
        """A channel's state, also for numbers not (or no longer) in use."""
        ch = self.by_id.get(cid)
        if ch is not None:
            return ch.state
        ours = cid % 2 == self.next_id % 2
        used = cid < self.next_id if ours else cid <= self._peer_max
        return CS.CLOSED if used and cid > 0 else CS.IDLE

    # ---- the application's side ---------------------------------------------

    def open(self, host: str, port: int, kind: fr.ChannelKind) -> int:
        cid = self.next_id
        self.next_id += 2
        self.by_id[cid] = Channel(cid, kind, True, self.config.channel_window)
        self.replay.queue(fr.Open(self.replay.seq(), cid, kind, self.config.channel_window,
                                  host, port))
        return cid

    def accept(self, cid: int) -> None:
        ch = self.by_id.get(cid)
        if ch is None or ch.state is not CS.REQUESTED:
            return  # the peer reset it meanwhile
        ch.move(CI.ACCEPT)
        self.replay.queue(fr.OpenOk(self.replay.seq(), cid, self.config.channel_window))
        if ch.send_buf or ch.fin_pending:
            self.wake(cid)

    def refuse(self, cid: int, code: CloseCode, reason: str) -> None:
        ch = self.by_id.get(cid)
        if ch is not None and ch.state is CS.REQUESTED:
            ch.move(CI.REFUSE)
            del self.by_id[cid]
            self.replay.queue(fr.OpenFail(self.replay.seq(), cid, code, reason))

    def send(self, cid: int, data: bytes | memoryview) -> None:
        ch = self.by_id.get(cid)
        if ch is None or ch.fin_pending:
            return  # the peer reset it; or the application wrote after its EOF
        if not ch.send_buf and ch.opened:
            self.wake(cid)
        ch.send_buf.append(data)

    def send_room(self, cid: int) -> int:
        ch = self.by_id.get(cid)
        if ch is None:
            return 0
        return max(0, self.config.channel_send_buffer - ch.send_buf.size)

    def end(self, cid: int) -> None:
        ch = self.by_id.get(cid)
        if ch is None or ch.fin_pending:
            return
        ch.fin_pending = True
        if ch.opened and not ch.send_buf:
            self.wake(cid)

    def reset(self, cid: int, code: CloseCode) -> None:
        ch = self.by_id.pop(cid, None)
        if ch is not None:
            ch.move(CI.RESET)
            ch.release()
            self.replay.queue(fr.Reset(self.replay.seq(), cid, code))

    def consumed(self, cid: int, n: int) -> None:
        ch = self.by_id.get(cid)
        if ch is None:
            return
        ch.consumed += n
        # Granting at a quarter of the window keeps the pipe full without a
        # WINDOW frame per read; none once the peer's FIN ended its data.
        if (ch.consumed >= self.config.channel_window // 4
                and ch.state is not CS.HALF_CLOSED_REMOTE):
            ch.recv_left += ch.consumed
            self.replay.queue(fr.Window(self.replay.seq(), cid, ch.consumed))
            ch.consumed = 0

    def datagram(self, cid: int, data: bytes) -> Channel | None:
        """The open datagram channel a datagram may leave on now; None when it
        was held for OPEN_OK (`held` says) or must be dropped."""
        ch = self.by_id.get(cid)
        if ch is None or ch.kind is not fr.ChannelKind.DATAGRAM or len(data) > fr.MAX_DATA_CHUNK:
            return None
        return ch if ch.opened else None

    def hold(self, cid: int, data: bytes) -> bool:
        """Keep a datagram until the channel's OPEN is answered; False: no room."""
        ch = self.by_id.get(cid)
        if (ch is None or ch.state is not CS.OPENING or ch.kind is not fr.ChannelKind.DATAGRAM
                or len(data) > fr.MAX_DATA_CHUNK or len(ch.early) >= EARLY_DATAGRAMS):
            return False
        ch.early.append(data)
        return True

    # ---- building DATA -----------------------------------------------------------

    def wake(self, cid: int) -> None:
        """Channel `cid` has data (or a FIN) to send: queue it for `fill`."""
        if self.rr is None:
            self.rr = deque()
        self.rr.append(cid)

    def fill(self, record_limit: int, min_rtt: float | None) -> None:
        """Turn buffered channel bytes into DATA frames while the replay buffer has room.

        Frames are no larger than `record_limit`: right after an attach, a
        backlog must not become one 60 KiB frame that no small first record
        can hold.
        """
        rr = self.rr
        if rr is None:
            return
        replay = self.replay
        limit = self.config.replay_limit
        compressor = self.compressor
        if compressor is not None and not compressor.wanted(min_rtt):
            compressor = None  # auto, on a path faster than zstd
        history = self.send_history
        by_id = self.by_id
        while rr and replay.bytes < limit:
            cid = rr.popleft()
            ch = by_id.get(cid)
            if ch is None or ch.state not in _SENDING:
                continue
            buf = ch.send_buf
            if buf:
                n = min(len(buf), ch.credit, fr.MAX_DATA_CHUNK, record_limit)
                if n == 0:
                    continue  # queued again when WINDOW arrives
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
                # replay.seq() and replay.add(), inline: once per DATA frame.
                seq = replay.next_seq
                replay.next_seq = seq + 1
                head = fr.encode_data_header(seq, cid, len(chunk), flags)
                size = len(head) + len(chunk)
                pending = replay.pending
                if pending is None:
                    pending = replay.pend()
                pending.append((seq, size, head, chunk))
                replay.bytes += size
            if buf:
                rr.append(cid)
            elif ch.fin_pending:
                ch.move(CI.SEND_FIN)
                replay.queue(fr.Fin(replay.seq(), cid))
                self._maybe_finished(ch)

    # ---- the peer's frames ---------------------------------------------------------

    def receive(self, frame: fr.ReliableFrame) -> None:
        """One in-order reliable channel frame (not CLOSE)."""
        if type(frame) is fr.Data:
            self.data(frame)
        elif isinstance(frame, fr.Window):
            ch = self._peer_channel(frame.channel, CI.WINDOW)
            if ch is None:
                return
            if ch.credit + frame.increment > 2**32:
                raise ProtocolError(f"channel {ch.id} credit overflow", CloseCode.FLOW_CONTROL)
            # Not for an increment of 0: the credit stays 0, and each such
            # WINDOW would queue the channel again (a peer's flood of them,
            # while our writes stall, grew the round-robin queue without end).
            if frame.increment and ch.credit == 0 and ch.send_buf:
                self.wake(ch.id)
            ch.credit += frame.increment
        elif isinstance(frame, fr.Open):
            self._peer_open(frame)
        elif isinstance(frame, fr.OpenOk):
            ch = self._peer_channel(frame.channel, CI.OPEN_OK)
            if ch is None:
                return
            ch.credit = frame.window
            if ch.send_buf or ch.fin_pending:
                self.wake(ch.id)
            self.events.append(ev.ChannelOpened(ch.id))
            early, ch.early = ch.early, []
            for datagram in early:
                self.send_datagram(ch.id, datagram)
        elif isinstance(frame, fr.OpenFail):
            ch = self._peer_channel(frame.channel, CI.OPEN_FAIL)
            if ch is None:
                return
            del self.by_id[ch.id]
            self.events.append(ev.ChannelOpenFailed(ch.id, frame.code, frame.reason))
        elif isinstance(frame, fr.Fin):
            ch = self._peer_channel(frame.channel, CI.FIN)
            if ch is None:
                return
            self.events.append(ev.EndOfStream(ch.id))
            self._maybe_finished(ch)
        elif isinstance(frame, fr.Reset):
            ch = self._peer_channel(frame.channel, CI.RESET_RECEIVED)
            if ch is not None:
                del self.by_id[ch.id]
                ch.release()
                self.events.append(ev.ChannelReset(ch.id, frame.code))
        else:
            raise ProtocolError(f"{type(frame).__name__.upper()} is not a channel frame")

    def receive_datagram(self, frame: fr.Dgram) -> None:
        ch = self._peer_channel(frame.channel, CI.DGRAM)
        if ch is None:
            return
        if ch.kind is not fr.ChannelKind.DATAGRAM:
            raise ProtocolError(f"DGRAM on channel {ch.id}, which is not an open datagram "
                                "channel")
        self.events.append(ev.DatagramReceived(ch.id, frame.payload))

    def data(self, frame: fr.Data) -> None:
        """One in-order DATA frame (the most frequent of all: no dispatch)."""
        ch = self.by_id.get(frame.channel)
        if ch is None or ch.state not in _DATA_STAYS:
            ch = self._peer_channel(frame.channel, CI.DATA)
            if ch is None:
                return
        data = frame.payload
        if frame.flags & fr.FLAG_COMPRESSED:
            data = self._decompress(ch, data)
        if frame.flags & fr.FLAG_HISTORY:
            if self.recv_history is None:
                raise ProtocolError("DATA joins a compression history that was not negotiated")
            self.recv_history.add(data)
        n = len(data)
        if n > ch.recv_left:
            raise ProtocolError(f"channel {ch.id} sent {n} bytes with {ch.recv_left} of "
                                "credit", CloseCode.FLOW_CONTROL)
        ch.recv_left -= n
        self.bytes_received += n
        self.payload_bytes_received += len(frame.payload)
        self.events.append(ev.DataReceived(ch.id, data))

    def _decompress(self, ch: Channel, payload: bytes | memoryview) -> bytes:
        """One compressed DATA payload, expanded within the channel's credit.

        Only reached for a frame seen for the first time and in order (the
        session dropped duplicates by sequence number): the channel's zstd
        stream must see each frame exactly once, as the sender's did.
        """
        if self.compressor is None:
            raise ProtocolError("compressed DATA was not negotiated")
        if ch.decompressor is None:
            ch.decompressor = ChannelDecompressor()
        try:
            return ch.decompressor.decompress(payload, ch.recv_left, self.recv_history)
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
        if cid % 2 == self.next_id % 2:
            raise ProtocolError(f"peer opened channel {cid}, which is ours to number")
        if cid <= self._peer_max:
            raise ProtocolError(f"peer reused channel number {cid}")
        ceiling = 2 * self.config.replay_limit
        if self.replay.bytes >= ceiling:
            # Every OPEN gets an answer (OPEN_OK or OPEN_FAIL), queued past
            # the replay limit and held until the peer acknowledges it. Data
            # stops at the limit, so twice the limit is reached only by a
            # peer that keeps opening and does not acknowledge the answers:
            # it would have us hold them without end.
            raise ProtocolError(f"peer opened channel {cid} with {self.replay.bytes} bytes of "
                                f"our frames unacknowledged (at most {ceiling} before it may "
                                "open more)", CloseCode.FLOW_CONTROL)
        self._peer_max = cid
        if len(self.by_id) >= self.config.max_channels:
            reason = f"too many channels (this session carries {self.config.max_channels} at most)"
            self.replay.queue(fr.OpenFail(self.replay.seq(), cid, CloseCode.FLOW_CONTROL, reason))
            self.events.append(ev.ChannelRefused(cid, CloseCode.FLOW_CONTROL, reason))
            return
        ch = Channel(cid, frame.kind, False, self.config.channel_window)
        ch.credit = frame.window
        self.by_id[cid] = ch
        self.events.append(ev.ChannelOpenRequested(cid, frame.kind, frame.host, frame.port))

    def _peer_channel(self, cid: int, event: ChannelInput) -> Channel | None:
        """The channel a peer frame names, moved by it; None when the channel
        is closed (frames cross on the wire); ProtocolError when the table
        has no place for the frame."""
        ch = self.by_id.get(cid)
        if ch is None:
            state = self.state_of(cid)
            if state is CS.IDLE:
                raise ProtocolError(f"frame for channel {cid}, which was never opened")
            CHANNEL.next(state, event, f"channel {cid}")
            return None
        ch.move(event)
        return ch

    def _maybe_finished(self, ch: Channel) -> None:
        if ch.state is CS.CLOSED and self.by_id.pop(ch.id, None) is not None:
            ch.release()
            self.events.append(ev.ChannelClosed(ch.id))

    def release_rr_if_empty(self) -> None:
        if not self.rr:
            self.rr = None
