"""The session core against a hostile peer, in memory with a virtual clock.

The peer here is not a Session: it writes record plaintexts frame by frame,
numbering and naming as it pleases, so that every rule of docs/protocol.md
sections 5 to 9 can be broken on purpose. Whatever it sends, only
ProtocolError (with a CloseCode, which the driver puts in its CLOSE) may
escape `receive_payload`, and what the session holds because of the peer
(channels, queued control frames, the round-robin of channels to serve,
answers waiting for an acknowledgement, events not yet taken) stays bounded.
"""

from __future__ import annotations

import tracemalloc
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from roam.core import events as ev
from roam.core import frames as fr
from roam.core.compress import AUTO
from roam.core.liveness import MAX_PINGS as _MAX_PINGS
from roam.core.session import Session, SessionConfig
from roam.core.states import ChannelState, SessionState
from roam.errors import CloseCode, ProtocolError

U32 = 2**32 - 1
U64 = 2**64 - 1
PE, FLOW = CloseCode.PROTOCOL_ERROR, CloseCode.FLOW_CONTROL


def attached(*, is_client: bool = True, config: SessionConfig | None = None,
             compressed: bool = False, history: bool = False) -> Session:
    session = Session(is_client=is_client, now=0.0, config=config,
                      compression=AUTO if compressed else None, history=history)
    session.transport_attached(0.0, resume=False)
    return session


@dataclass
class Peer:
    """The hostile side: its own sequence numbers and channel numbers."""

    victim: Session
    next_seq: int = 1
    next_channel: int = 0
    opened: list[int] = field(default_factory=list)

    def __post_init__(self) -> None:
        # The peer numbers channels with the other parity than the victim.
        self.next_channel = 2 if self.victim.is_client else 1

    def seq(self) -> int:
        seq = self.next_seq
        self.next_seq += 1
        return seq

    def reliable(self, frame: Callable[..., fr.Frame], *fields: Any) -> bytes:
        """`frame` (a reliable frame's class) with the next sequence number."""
        return fr.encode(frame(self.seq(), *fields))

    def channel(self) -> int:
        """A fresh channel number of the peer's own."""
        cid = self.next_channel
        self.next_channel += 2
        self.opened.append(cid)
        return cid

    def open(self, host: str = "svc.example", window: int = 1 << 20,
             kind: fr.ChannelKind = fr.ChannelKind.STREAM) -> bytes:
        cid = self.channel()
        return self.reliable(fr.Open, cid, kind, window, host, 22)

    def send(self, *frames: bytes, now: float = 1.0) -> None:
        self.victim.receive_payload(b"".join(frames), now)


def raw_frame(ftype: int, body: bytes) -> bytes:
    return fr.HEADER.pack(ftype, len(body)) + body


def close_frames(session: Session, now: float = 1.0) -> list[fr.Close]:
    """The CLOSE frames among what the session sends now."""
    out: list[fr.Close] = []
    for payload in session.payloads_to_send(now):
        out += [f for f in fr.decode_frames(payload) if isinstance(f, fr.Close)]
    return out


def broken(session: Session, send: Callable[[], None], code: CloseCode, match: str) -> None:
    """`send` breaks the protocol: ProtocolError with `code`, and the CLOSE
    the driver then queues carries it."""
    with pytest.raises(ProtocolError, match=match) as caught:
        send()
    assert caught.value.code is code
    session.close(caught.value.code, str(caught.value))
    (close,) = close_frames(session)
    assert close.code is code


def own_channel(session: Session, peer: Peer, window: int = 1 << 20) -> int:
    """A channel the victim opened and the peer accepted with `window`."""
    cid = session.open_channel("svc.example", 7)
    session.payloads_to_send(0.0)
    peer.send(peer.reliable(fr.OpenOk, cid, window))
    assert isinstance(session.take_events()[-1], ev.ChannelOpened)
    return cid


def held(session: Session) -> dict[str, int]:
    """What a session holds that a peer can make it hold more of."""
    return {
        "channels": len(session.channel_ids()),
        "replay_bytes": session.statistics().replay_bytes,
        "replay_frames": len(session.replay.pending or ()) + len(session.replay.unacked or ()),
        "control": len(session.control_frames()),
        "round_robin": len(session.channels.rr or ()),
        "events": len(session._events),
    }


# ---- single violations: the error and its wire code ------------------------------


@pytest.mark.parametrize(("frames", "code", "match"), [
    (lambda p: [], PE, "empty record"),
    (lambda p: [raw_frame(0x10, b"")], PE, "unknown frame type"),
    (lambda p: [raw_frame(fr.FrameType.PING, bytes(fr.MAX_FRAME_BODY + 1))], PE, "exceeds"),
    (lambda p: [p.reliable(fr.Data, 2, 0, b"x")], PE, "never opened"),
    (lambda p: [p.reliable(fr.Window, 0, 1)], PE, "never opened"),
    (lambda p: [p.reliable(fr.Open, 1, fr.ChannelKind.STREAM, 1, "h", 1)], PE,
     "ours to number"),
    (lambda p: [p.open(), p.reliable(fr.Open, 2, fr.ChannelKind.STREAM, 1, "h", 1)],
     PE, "reused"),
    (lambda p: [p.reliable(fr.OpenOk, 1, 5)], PE, "never opened"),
    (lambda p: [fr.encode(fr.Ack(1))], PE, "beyond 0 sent"),
    (lambda p: [fr.encode(fr.Ack(U64))], PE, "beyond 0 sent"),
    (lambda p: [fr.encode(fr.Resumed(0))], PE, "on a transport that is not new"),
    (lambda p: [fr.encode(fr.Resume(0))], PE, "on a transport that is not new"),
    (lambda p: [fr.encode(fr.HandoverBegin(1))], PE, "HANDOVER_BEGIN"),
    (lambda p: [fr.encode(fr.HandoverReady(1))], PE, "HANDOVER_READY"),
    (lambda p: [fr.encode(fr.Dgram(2, b"x"))], PE, "never opened"),
    (lambda p: [raw_frame(fr.FrameType.CLOSE, fr._CLOSE.pack(p.seq(), 999))], PE,
     "unknown close code"),
], ids=["empty", "unknown-type", "body-too-big", "data-unopened", "channel-0",
        "open-our-parity", "open-reused", "open-ok-unasked", "ack-1", "ack-u64",
        "resumed", "resume", "handover-begin", "handover-ready", "dgram-unopened",
        "close-code"])
def test_a_single_violation_is_a_protocol_error_with_its_code(
        frames: Callable[[Peer], list[bytes]], code: CloseCode, match: str) -> None:
    session = attached()
    peer = Peer(session)
    broken(session, lambda: peer.send(*frames(peer)), code, match)


def test_data_beyond_the_credit_is_flow_control() -> None:
    session = attached(config=SessionConfig(channel_window=64 * 1024))
    peer = Peer(session)
    cid = own_channel(session, peer)
    chunk = bytes(fr.MAX_DATA_CHUNK)
    broken(session, lambda: peer.send(peer.reliable(fr.Data, cid, 0, chunk),
                                      peer.reliable(fr.Data, cid, 0, chunk)),
           FLOW, "credit")


@pytest.mark.parametrize("increments", [[U32, 2], [2**31, 2**31, 1], [U32, U32]])
def test_window_beyond_2_to_the_32_is_flow_control(increments: list[int]) -> None:
    session = attached()
    peer = Peer(session)
    cid = own_channel(session, peer, window=0)
    broken(session, lambda: peer.send(*[peer.reliable(fr.Window, cid, i)
                                        for i in increments]), FLOW, "overflow")


def test_a_resumed_with_an_absurd_mark_is_refused_and_nothing_is_freed() -> None:
    session = attached()
    peer = Peer(session)
    cid = own_channel(session, peer)
    session.send(cid, b"x" * 1000)
    session.payloads_to_send(1.0)
    before = held(session)
    session.transport_lost(2.0)
    session.transport_attached(2.0, resume=True)
    session.payloads_to_send(2.0)  # the RESUME
    with pytest.raises(ProtocolError, match="beyond") as caught:
        peer.send(fr.encode(fr.Resumed(U64)), now=2.0)
    assert caught.value.code is PE
    # Nothing was acknowledged or resent: the replay buffer is as it was.
    assert held(session)["replay_bytes"] == before["replay_bytes"]
    assert session.state is SessionState.RESUMING


@pytest.mark.parametrize("first", [
    fr.encode(fr.Ping(1)), fr.encode(fr.Ack(0)), fr.encode(fr.Window(1, 2, 1))])
def test_a_resumed_transport_must_begin_with_resumed(first: bytes) -> None:
    session = attached()
    peer = Peer(session)
    session.transport_lost(1.0)
    session.transport_attached(1.0, resume=True)
    with pytest.raises(ProtocolError, match="expected RESUMED first"):
        peer.send(first, fr.encode(fr.Resumed(0)))


def test_a_record_on_a_detached_session_is_refused() -> None:
    session = attached()
    session.transport_lost(1.0)
    with pytest.raises(ProtocolError, match="not attached"):
        Peer(session).send(fr.encode(fr.Ping(1)))


def test_a_huge_close_reason_ends_the_session_and_nothing_follows() -> None:
    session = attached()
    peer = Peer(session)
    reason = "é" * (fr.MAX_FRAME_BODY // 2 - 5)
    body = fr._CLOSE.pack(peer.seq(), CloseCode.SHUTDOWN) + reason.encode()
    peer.send(raw_frame(fr.FrameType.CLOSE, body), fr.encode(fr.Ping(1)))
    (closed,) = session.take_events()
    assert closed == ev.SessionClosed(CloseCode.SHUTDOWN, reason, True)
    assert session.closed
    # A closed session takes nothing more and sends nothing: not even a PONG.
    peer.send(fr.encode(fr.Ping(2)), *[peer.open() for _ in range(100)])
    assert session.payloads_to_send(2.0) == []
    assert held(session)["events"] == 0
    assert held(session)["channels"] == 0


def test_duplicates_from_before_the_mark_are_ignored_however_many() -> None:
    """seq <= received is a duplicate of what an earlier transport carried:
    dropped without a trace, whatever it claims."""
    session = attached()
    peer = Peer(session)
    cid = own_channel(session, peer)
    frames = [fr.encode(fr.Data(seq, cid, 0, b"?")) for seq in (0, 1, 1, 0)]
    frames += [fr.encode(fr.Open(1, 2, fr.ChannelKind.STREAM, 1, "h", 1))]
    for _ in range(1000):
        peer.send(*frames)
    assert session.take_events() == []
    assert session.state is SessionState.ATTACHED


# ---- floods: bounded whatever the peer sends -----------------------------------------


def test_a_ping_flood_while_nothing_is_sent_queues_a_bounded_number_of_pongs() -> None:
    """A driver whose writes stall does not take records; PINGs keep coming."""
    session = attached()
    peer = Peer(session)
    for token in range(0, 100_000, 1000):
        peer.send(*[fr.encode(fr.Ping(t)) for t in range(token, token + 1000)])
    assert held(session)["control"] <= _MAX_PINGS
    # Once records go again the PONGs leave, and new PINGs are answered.
    (payload,) = session.payloads_to_send(2.0)
    pongs = [f for f in fr.decode_frames(payload) if isinstance(f, fr.Pong)]
    assert 0 < len(pongs) <= _MAX_PINGS
    peer.send(fr.encode(fr.Ping(7)))
    assert fr.encode(fr.Pong(7)) in session.payloads_to_send(3.0)[0]


def test_our_own_pings_do_not_pile_up_while_nothing_is_sent() -> None:
    """A peer that keeps the transport alive (it sends) but never reads:
    our keepalives cannot leave, and must not queue one a second forever."""
    session = attached()
    peer = Peer(session)
    now = 0.0
    for _ in range(10_000):  # almost three hours of keepalives
        now += 1.0
        peer.send(fr.encode(fr.Ack(0)), now=now)
        if (deadline := session.get_timer()) is not None and deadline <= now:
            session.handle_timer(now)
    assert session.state is SessionState.ATTACHED
    assert held(session)["control"] <= _MAX_PINGS


def test_a_window_zero_flood_does_not_grow_the_round_robin() -> None:
    session = attached()
    peer = Peer(session)
    cid = own_channel(session, peer, window=0)
    session.send(cid, bytes(1000))
    session.payloads_to_send(1.0)
    for _ in range(100):
        peer.send(*[peer.reliable(fr.Window, cid, 0) for _ in range(1000)])
    assert held(session)["round_robin"] <= 1
    # A real grant still wakes the channel.
    peer.send(peer.reliable(fr.Window, cid, 10))
    data = [f for p in session.payloads_to_send(2.0) for f in fr.decode_frames(p)
            if isinstance(f, fr.Data)]
    assert [len(d.payload) for d in data] == [10]


def test_an_open_flood_never_acknowledged_ends_at_twice_the_replay_limit() -> None:
    """Each OPEN is answered; answers wait for an acknowledgement that never
    comes. Past twice the replay limit the next OPEN is FLOW_CONTROL."""
    limit = 32 * 1024
    session = attached(config=SessionConfig(replay_limit=limit))
    peer = Peer(session)

    def opens() -> None:
        for _ in range(100_000):
            peer.send(*[peer.open() for _ in range(10)])
            for e in session.take_events():
                assert isinstance(e, ev.ChannelOpenRequested)
                # What the client's driver does with an OPEN no reverse forward names.
                session.refuse_channel(e.channel, CloseCode.NOT_ALLOWED, "this side opens nothing")
            session.payloads_to_send(1.0)  # sent, but the peer never acknowledges

    with pytest.raises(ProtocolError, match="unacknowledged") as caught:
        opens()
    assert caught.value.code is FLOW
    assert 2 * limit <= held(session)["replay_bytes"] < 2 * limit + 10 * 64
    assert len(peer.opened) < 100_000


def test_an_open_flood_acknowledged_holds_nothing() -> None:
    session = attached(config=SessionConfig(replay_limit=32 * 1024))
    peer = Peer(session)
    for _ in range(2000):
        peer.send(*[peer.open() for _ in range(10)])
        for e in session.take_events():
            assert isinstance(e, ev.ChannelOpenRequested)
            session.refuse_channel(e.channel, CloseCode.NOT_ALLOWED, "this side opens nothing")
        session.payloads_to_send(1.0)
        peer.send(fr.encode(fr.Ack(session.replay.next_seq - 1)))
    assert held(session) == {"channels": 0, "replay_bytes": 0, "replay_frames": 0,
                             "control": 0, "round_robin": 0, "events": 0}


def test_opens_beyond_the_channel_limit_are_refused_even_if_events_wait() -> None:
    """A driver that has not taken the events yet (one read holds thousands
    of OPENs) does not let the peer past max_channels."""
    session = attached(config=SessionConfig(max_channels=100))
    peer = Peer(session)
    for _ in range(50):
        peer.send(*[peer.open() for _ in range(100)])
    assert held(session)["channels"] == 100
    events = session.take_events()
    assert sum(isinstance(e, ev.ChannelOpenRequested) for e in events) == 100
    assert sum(isinstance(e, ev.ChannelRefused) for e in events) == 4900
    fails = [f for p in session.payloads_to_send(1.0) for f in fr.decode_frames(p)
             if isinstance(f, fr.OpenFail)]
    assert len(fails) == 4900
    assert {f.code for f in fails} == {FLOW}


def test_a_stalled_session_holds_a_bounded_amount_whatever_the_peer_sends() -> None:
    """The driver takes events (it always does) but cannot send: PINGs,
    WINDOW(0)s, DATA for a forgotten channel and acknowledgements from the
    peer, 16,000 frames; the memory the session keeps stays small."""
    session = attached()
    peer = Peer(session)
    stalled = own_channel(session, peer, window=0)
    session.send(stalled, bytes(1000))
    gone = own_channel(session, peer)
    peer.send(peer.reliable(fr.Reset, gone, CloseCode.NORMAL))
    session.payloads_to_send(1.0)
    session.take_events()
    # Built before tracing starts: tracing slows every allocation, and the
    # payloads are the peer's memory, not the session's.
    payloads = [b"".join(frame for t in range(token, token + 250) for frame in (
        fr.encode(fr.Ping(t)),
        peer.reliable(fr.Window, stalled, 0),
        peer.reliable(fr.Data, gone, 0, bytes(100)),
        fr.encode(fr.Ack(0)))) for token in range(0, 4_000, 250)]
    tracemalloc.start(4)
    try:
        before = tracemalloc.take_snapshot().filter_traces(_SESSION)
        for payload in payloads:
            session.receive_payload(payload, 1.0)
            for e in session.take_events():
                raise AssertionError(f"nothing should happen here: {e}")
        after = tracemalloc.take_snapshot().filter_traces(_SESSION)
    finally:
        tracemalloc.stop()
    growth = sum(s.size_diff for s in after.compare_to(before, "filename"))
    # A PONG queued per PING and the channel queued per WINDOW(0) would be
    # about 250 KiB.
    assert growth < 16 * 1024, growth
    assert held(session)["control"] <= _MAX_PINGS
    assert held(session)["round_robin"] <= 1


# Allocations made under the session's code (the frames it encodes included).
_SESSION = (tracemalloc.Filter(True, "*/roam/core/session.py", all_frames=True),)


# ---- Hypothesis: any sequence of frames from the peer ----------------------------------

# Values that sit on the edges of the fields they go into.
_EDGES = st.sampled_from([0, 1, 2, 255, 2**16, 2**31, U32, 2**32, U64])
_NUMBERS = st.one_of(_EDGES, st.integers(0, 2**20))

# A frame is drawn as a wish: with `bad` under the run's hostility it is
# built as the arguments say, whatever that breaks; otherwise it is the
# nearest frame an honest peer could send now (right sequence number, a
# channel in the right state, within credit). Runs thereby get deep into a
# session before (or without) breaking a rule.
BAD = st.integers(0, 99)
HOSTILITY = st.sampled_from([0, 0, 1, 3, 10, 50])
# How a bad reliable frame is numbered, and which channel it names.
SEQ = st.sampled_from(["next", "next", "dup", "gap", "zero", "huge"])
CHANNEL = st.sampled_from(["ours", "theirs", "new", "unused-ours", "zero", "huge"])
KINDS = st.sampled_from(["open", "open_ok", "open_fail", "data", "fin", "reset", "window",
                         "close", "dgram", "ack", "ping", "pong", "handover_begin",
                         "handover_ready", "resume", "resumed", "garbage", "mutated",
                         "pings", "windows"])
FLAGS = st.sampled_from([0, fr.FLAG_COMPRESSED, fr.FLAG_HISTORY, 3])
Spec = tuple[int, str, str, str, int, bytes, int]
FRAME = st.tuples(BAD, KINDS, SEQ, CHANNEL, _NUMBERS, st.binary(max_size=300), FLAGS)
RECORD = st.lists(FRAME, min_size=1, max_size=8)
# What happens between the peer's records on the victim's side.
LOCAL = st.sampled_from(["none", "none", "react", "react", "flush", "time", "open", "resume",
                         "end", "reset"])
STEPS = st.lists(st.tuples(RECORD, LOCAL, st.floats(0.0, 5.0)), min_size=5, max_size=40)


class Scenario:
    """The victim, the hostile peer and what the victim did on its own."""

    def __init__(self, session: Session, hostility: int) -> None:
        self.session = session
        self.peer = Peer(session)
        self.hostility = hostility
        self.now = 1.0
        self.own_opens = 0
        self.frames_since_take = 0

    # -- the peer --

    def seq(self, mode: str) -> int:
        peer = self.peer
        if mode == "next":
            return peer.seq()
        if mode == "dup":
            return max(0, peer.next_seq - 2)
        if mode == "gap":
            return peer.next_seq + 3
        return 0 if mode == "zero" else U64

    def channel(self, mode: str) -> int:
        session, peer = self.session, self.peer
        own = [c for c in session.channel_ids() if c % 2 == session.channels.next_id % 2]
        if mode == "ours" and own:
            return own[-1]
        if mode == "theirs" and peer.opened:
            return peer.opened[-1]
        if mode == "new":
            return peer.next_channel
        if mode == "unused-ours":
            return session.channels.next_id + 2
        return 0 if mode == "zero" else U32

    def frame(self, spec: Spec) -> bytes:
        bad, kind, seqmode, chanmode, n, data, flags = spec
        session = self.session
        if session.state is SessionState.RESUMING and bad >= self.hostility:
            # An honest peer's first frame on a resumed transport.
            mark = self.peer.next_seq - 1
            cls = fr.Resumed if session.is_client else fr.Resume
            return fr.encode(cls(min(mark, session.replay.next_seq - 1) if n % 2 else 0))
        if bad >= self.hostility:
            return self.honest(kind, n, data)
        return self.hostile(kind, seqmode, chanmode, n, data, flags)

    def honest(self, kind: str, n: int, data: bytes) -> bytes:
        """The frame of this kind an honest peer could send now, else a PING."""
        session, peer = self.session, self.peer
        channels = list(session.channels.by_id.values())
        small = n & 0xFFFF
        if kind == "ack":
            return fr.encode(fr.Ack(max(0, session.replay.next_seq - 1 - n % 3)))
        if kind == "pong":
            return fr.encode(fr.Pong(n & U64))
        if kind == "pings":  # legal, however many: the PONGs queue while nothing is sent
            return b"".join(fr.encode(fr.Ping(t)) for t in range(n % 100))
        if kind == "open":
            cid = peer.channel()
            okind = fr.ChannelKind.DATAGRAM if n % 3 == 0 else fr.ChannelKind.STREAM
            return peer.reliable(fr.Open, cid, okind, small, "svc.example", 22)
        pending = [c for c in channels if c.local and not c.opened]
        if kind in ("open_ok", "open_fail") and pending:
            cid = pending[n % len(pending)].id
            if kind == "open_ok":
                return peer.reliable(fr.OpenOk, cid, small)
            return peer.reliable(fr.OpenFail, cid, CloseCode.CONNECT_FAILED, "no")
        streams = [c for c in channels
                   if c.state in (ChannelState.OPEN, ChannelState.HALF_CLOSED_LOCAL)
                   and c.kind is fr.ChannelKind.STREAM]
        # WINDOW comes from a peer that has the channel open (credit for
        # our direction): never for an OPEN it has not answered.
        flowing = [c for c in channels if c.opened]
        if kind == "data" and streams:
            ch = streams[n % len(streams)]
            chunk = data[:ch.recv_left]
            if chunk:
                flags = fr.FLAG_HISTORY if session.channels.recv_history is not None else 0
                return peer.reliable(fr.Data, ch.id, flags, chunk)
        if kind == "fin" and streams:
            return peer.reliable(fr.Fin, streams[n % len(streams)].id)
        if kind == "window" and flowing:
            ch = flowing[n % len(flowing)]
            increment = min(small, 2**32 - ch.credit)
            return peer.reliable(fr.Window, ch.id, increment)
        if kind == "windows" and flowing:  # legal too: grants of nothing
            cid = flowing[n % len(flowing)].id
            return b"".join(peer.reliable(fr.Window, cid, 0)
                            for _ in range(1 + n % 100))
        if kind == "reset" and channels:
            cid = channels[n % len(channels)].id
            return peer.reliable(fr.Reset, cid, CloseCode.RESET_BY_APPLICATION)
        datagrams = [c for c in channels if c.opened and c.kind is fr.ChannelKind.DATAGRAM]
        if kind == "dgram" and datagrams:
            return fr.encode(fr.Dgram(datagrams[n % len(datagrams)].id, data))
        return fr.encode(fr.Ping(n & U64))

    def hostile(self, kind: str, seqmode: str, chanmode: str, n: int, data: bytes,
                flags: int) -> bytes:
        """The frame as drawn, whatever rule it breaks."""
        u32, code = n & U32, CloseCode(n % len(CloseCode))
        if kind == "garbage":
            return data
        if kind == "mutated":  # a well-formed PING with one byte changed
            frame = bytearray(fr.encode(fr.Ping(n & U64)))
            frame[n % len(frame)] ^= 1 + (n >> 8) % 255
            return bytes(frame)
        if kind == "ack":
            return fr.encode(fr.Ack(n & U64))
        if kind == "resume":
            return fr.encode(fr.Resume(n & U64))
        if kind == "resumed":
            return fr.encode(fr.Resumed(n & U64))
        if kind in ("ping", "pong"):
            return fr.encode((fr.Ping if kind == "ping" else fr.Pong)(n & U64))
        if kind in ("handover_begin", "handover_ready"):
            cls2 = fr.HandoverBegin if kind == "handover_begin" else fr.HandoverReady
            return fr.encode(cls2(u32))
        cid = self.channel(chanmode)
        if kind == "dgram":
            return fr.encode(fr.Dgram(cid, data))
        seq = self.seq(seqmode)
        if kind == "open":
            if chanmode == "new":
                self.peer.channel()
            host = data[:200].decode("utf-8", "ignore") or "h"
            okind = fr.ChannelKind(1 + n % 3)
            return fr.encode(fr.Open(seq, cid, okind, u32, host, n & 0xFFFF))
        if kind == "open_ok":
            return fr.encode(fr.OpenOk(seq, cid, u32))
        if kind == "open_fail":
            return fr.encode(fr.OpenFail(seq, cid, code, data[:50].hex()))
        if kind == "data":
            return fr.encode(fr.Data(seq, cid, flags, data))
        if kind == "fin":
            return fr.encode(fr.Fin(seq, cid))
        if kind == "reset":
            return fr.encode(fr.Reset(seq, cid, code))
        if kind in ("window", "windows"):
            return fr.encode(fr.Window(seq, cid, u32))
        if kind == "pings":
            return fr.encode(fr.Ping(n & U64))
        assert kind == "close"
        return fr.encode(fr.Close(seq, code, data[:40].hex()))

    # -- the victim's own side: its driver and its applications --

    def local(self, action: str, dt: float) -> None:
        session = self.session
        if action == "react":  # what a driver does with the events
            for e in session.take_events():
                if isinstance(e, ev.ChannelOpenRequested):
                    if e.channel % 4 == 0:
                        session.accept_channel(e.channel)
                    else:
                        session.refuse_channel(e.channel, CloseCode.NOT_ALLOWED, "no")
                elif isinstance(e, ev.DataReceived):
                    session.consumed(e.channel, len(e.data))
            self.frames_since_take = 0
            session.payloads_to_send(self.now)
        elif action == "flush":
            session.payloads_to_send(self.now)
        elif action == "time":
            self.now += dt
            deadline = session.get_timer()
            if deadline is not None and deadline <= self.now:
                session.handle_timer(self.now)
        elif action == "open":
            kind = fr.ChannelKind.DATAGRAM if dt > 4 else fr.ChannelKind.STREAM
            cid = session.open_channel("svc.example", 7, kind)
            self.own_opens += 1
            session.send(cid, bytes(int(dt * 10_000)))
            session.send_datagram(cid, b"d")
        elif action == "resume" and session.is_client:
            session.transport_lost(self.now)
            session.transport_attached(self.now, resume=True)
            session.payloads_to_send(self.now)
        elif action in ("end", "reset"):
            ids = session.channel_ids()
            if ids:
                (session.end_channel if action == "end" else session.reset_channel)(ids[0])

    def check_bounds(self) -> None:
        session = self.session
        room = held(session)
        # The peer opens at most max_channels; the victim's own opens come on top.
        assert room["channels"] <= session.config.max_channels + self.own_opens
        probes = sum(1 for c in session.control_frames()
                     if c[0] in (fr.FrameType.PING, fr.FrameType.PONG))
        assert probes <= _MAX_PINGS, probes
        # Each channel is queued at most a few times between two fills
        # (data, OPEN_OK, a grant, a FIN), not once per frame of the peer.
        assert room["round_robin"] <= 4 * (self.own_opens + len(self.peer.opened)) + 4
        # Events wait for the driver: at most two per frame since it took them.
        assert room["events"] <= 2 * self.frames_since_take + 4


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(steps=STEPS, hostility=HOSTILITY, is_client=st.booleans(),
       compression=st.sampled_from(["off", "zstd", "history"]))
def test_only_protocol_errors_escape_and_the_session_stays_bounded(
        steps: list[tuple[list[Spec], str, float]], hostility: int, is_client: bool,
        compression: str) -> None:
    session = attached(is_client=is_client, config=SessionConfig(max_channels=8),
                       compressed=compression != "off", history=compression == "history")
    scenario = Scenario(session, hostility)
    for record, action, dt in steps:
        payload = b"".join(scenario.frame(spec) for spec in record)
        error: ProtocolError | None = None
        try:
            session.receive_payload(payload, scenario.now)
        except ProtocolError as exc:
            error = exc
        if error is not None:
            # The driver's answer: CLOSE with the error's code.
            assert isinstance(error.code, CloseCode)
            assert str(error)
            attached_now = session.state is SessionState.ATTACHED
            session.close(error.code, str(error))
            closes = close_frames(session, scenario.now)
            if attached_now:
                assert [c.code for c in closes] == [error.code]
            return
        scenario.frames_since_take += len(record)
        scenario.check_bounds()
        if session.closed:
            return
        scenario.local(action, dt)
        scenario.check_bounds()
