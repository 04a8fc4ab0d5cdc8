"""The session in memory, with a virtual clock (design section 10.1)."""

from __future__ import annotations

import random

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from roam.core import events as ev
from roam.core import frames as fr
from roam.core.session import Session, SessionConfig
from roam.core.states import SessionState
from roam.errors import CloseCode, ProtocolError

from .sim import Pair


def _blob(n: int, seed: int) -> bytes:
    return random.Random(seed).randbytes(n)


def test_open_data_fin_both_ways() -> None:
    p = Pair()
    cid = p.open()
    p.write(cid, b"hello")
    p.run(5)
    p.write(cid, b"world", from_client=False)
    p.client.end_channel(cid)
    p.server.end_channel(cid)
    p.run(5)
    assert p.up[cid].received == b"hello"
    assert p.down[cid].received == b"world"
    assert p.up[cid].eof
    assert p.down[cid].eof
    closed = [e for e in p.events if isinstance(e, ev.ChannelClosed)]
    assert len(closed) == 2
    assert p.client.channel_ids() == []
    assert p.server.channel_ids() == []


def test_refused_open_fails_only_that_channel() -> None:
    p = Pair()
    p.auto_accept = False
    a = p.open()
    b = p.open()
    p.run(2)
    p.server.refuse_channel(a, CloseCode.NOT_ALLOWED, "not in --allow")
    p.server.accept_channel(b)
    p.write(b, b"x" * 1000)
    p.run(5)
    failed = [e for e in p.events if isinstance(e, ev.ChannelOpenFailed)]
    assert failed == [ev.ChannelOpenFailed(a, CloseCode.NOT_ALLOWED, "not in --allow")]
    assert p.up[b].received == b"x" * 1000


def test_opens_beyond_the_channel_limit_are_refused_and_said_on_both_sides() -> None:
    p = Pair(SessionConfig(max_channels=3))
    cids = [p.open() for _ in range(5)]
    p.run(5)
    refused = [e for e in p.events if isinstance(e, ev.ChannelRefused)]
    failed = [e for e in p.events if isinstance(e, ev.ChannelOpenFailed)]
    assert [e.channel for e in refused] == cids[3:]
    assert [e.channel for e in failed] == cids[3:]
    assert all(e.code is CloseCode.FLOW_CONTROL for e in refused + failed)
    assert all("3 at most" in e.reason for e in refused + failed)


def test_resume_resends_what_was_lost() -> None:
    p = Pair()
    cid = p.open()
    p.run(3)
    data = _blob(3_000_000, 1)
    p.write(cid, data)
    p.in_flight()
    p.break_transport(keep_to_server=3)
    assert p.client.state is SessionState.DETACHED
    p.run(10)  # nothing moves while detached
    p.reattach()
    p.run(200)
    assert p.up[cid].received == data
    resumed = [e for e in p.events if isinstance(e, ev.SessionResumed)]
    assert len(resumed) == 2
    assert max(r.frames_resent for r in resumed) > 0


def test_silent_transport_declared_dead_after_floor() -> None:
    cfg = SessionConfig()
    p = Pair(cfg)
    p.open()
    p.run(1100)  # past the first keepalive: the RTT is known
    took = _black_hole(p, p.client)
    dead = [e for e in (p.client.next_event(),) if isinstance(e, ev.TransportDead)]
    assert dead
    # Silence counts from the last record received (the keepalive pong, just before).
    assert cfg.dead_floor - 0.2 <= took < cfg.dead_floor + 0.05


def test_ping_measures_rtt() -> None:
    p = Pair()
    p.run(1500)  # 1.5 virtual seconds: at least one keepalive each way
    assert p.client.rtt.srtt is not None
    assert p.client.rtt.srtt < 0.01


def test_replay_buffer_bounded_and_backpressure() -> None:
    cfg = SessionConfig(replay_limit=256 * 1024, channel_send_buffer=64 * 1024)
    p = Pair(cfg)
    cid = p.open()
    p.run(3)
    p.break_transport()
    # Detached: the application keeps writing as long as send_room allows.
    written = 0
    while p.client.send_room(cid) > 0:
        p.write(cid, b"z" * 16384)
        written += 16384
        p.client.payloads_to_send(p.now)
    stats = p.client.statistics()
    assert stats.replay_bytes <= cfg.replay_limit + fr.MAX_DATA_CHUNK + 64
    assert written <= cfg.channel_send_buffer + 16384
    p.reattach()
    p.run(100)
    assert p.up[cid].received == p.up[cid].sent


def test_slow_reader_does_not_stall_other_channels() -> None:
    cfg = SessionConfig(channel_window=64 * 1024)
    p = Pair(cfg)
    slow, fast = p.open(), p.open()
    p.run(3)
    # The server application never reads `slow`: credit runs out after one window.
    p.not_reading.add(slow)
    p.write(slow, b"s" * 500_000)
    p.run(20)
    assert len(p.up[slow].received) == cfg.channel_window
    before = len(p.up[fast].received)
    p.write(fast, b"f" * 500_000)
    p.run(50)
    assert len(p.up[fast].received) - before == 500_000
    assert len(p.up[slow].received) == cfg.channel_window


def test_data_beyond_credit_is_a_flow_control_error() -> None:
    p = Pair()
    cid = p.open()
    p.run(3)
    # One record holding more DATA than the 1 MiB window the server granted.
    seq = p.client.replay.next_seq
    record = b"".join(fr.encode_data(seq + i, cid, b"a" * fr.MAX_DATA_CHUNK) for i in range(20))
    with pytest.raises(ProtocolError) as info:
        p.server.receive_payload(record, p.now)
    assert info.value.code is CloseCode.FLOW_CONTROL


def test_a_frame_beyond_a_gap_waits_for_the_gap() -> None:
    # With several transports the frames before it may be on another one.
    s = Session(is_client=False, now=0.0)
    s.transport_attached(0.0, resume=False)
    s.receive_payload(fr.encode(fr.Open(2, 3, fr.ChannelKind.STREAM, 1000, "h", 1)), 0.0)
    assert s.take_events() == []
    s.receive_payload(fr.encode(fr.Open(1, 1, fr.ChannelKind.STREAM, 1000, "h", 1)), 0.0)
    assert [e.channel for e in s.take_events()
            if isinstance(e, ev.ChannelOpenRequested)] == [1, 3]


def test_resume_must_come_first() -> None:
    s = Session(is_client=False, now=0.0)
    s.transport_attached(0.0, resume=True)
    with pytest.raises(ProtocolError, match="expected RESUME"):
        s.receive_payload(fr.encode(fr.Ping(1)), 0.0)


def test_close_reaches_peer() -> None:
    p = Pair()
    p.client.close(CloseCode.SHUTDOWN, "bye")
    p.run(2)
    closed = [e for e in p.events if isinstance(e, ev.SessionClosed)]
    assert ev.SessionClosed(CloseCode.SHUTDOWN, "bye", True) in closed
    assert p.server.state is SessionState.CLOSED


def test_detached_server_gives_up_after_timeout() -> None:
    s = Session(is_client=False, now=0.0, config=SessionConfig(detached_timeout=30.0))
    s.transport_attached(0.0, resume=False)
    s.transport_lost(1.0)
    assert s.get_timer() == 31.0
    s.handle_timer(31.0)
    assert s.state is SessionState.CLOSED
    e = s.next_event()
    assert isinstance(e, ev.SessionClosed)
    assert e.code is CloseCode.TIMEOUT


def test_soft_handover_resends_nothing() -> None:
    p = Pair()
    cid = p.open()
    p.run(3)
    up, down = _blob(2_000_000, 3), _blob(2_000_000, 4)
    p.write(cid, up)
    p.write(cid, down, from_client=False)
    p.step()  # records in flight both ways when the handover begins
    assert p.soft_handover() is True
    p.run(300)
    assert p.up[cid].received == up
    assert p.down[cid].received == down
    resumed = [e for e in p.events if isinstance(e, ev.SessionResumed)]
    assert len(resumed) == 2
    assert all(r.frames_resent == 0 for r in resumed)


def test_soft_handover_whose_old_path_dies_becomes_hard() -> None:
    p = Pair()
    cid = p.open()
    p.run(3)
    up = _blob(3_000_000, 5)
    p.write(cid, up)
    p.step()
    assert p.soft_handover(die_after=0) is False
    p.run(300)
    assert p.up[cid].received == up
    resumed = [e for e in p.events if isinstance(e, ev.SessionResumed)]
    assert max(r.frames_resent for r in resumed) > 0


def test_handover_frames_out_of_place_are_protocol_errors() -> None:
    s = Session(is_client=True, now=0.0)
    s.transport_attached(0.0, resume=False)
    with pytest.raises(ProtocolError, match="HANDOVER_BEGIN"):
        s.receive_payload(fr.encode(fr.HandoverBegin(1)), 0.0)
    srv = Session(is_client=False, now=0.0)
    srv.transport_attached(0.0, resume=False)
    with pytest.raises(ProtocolError, match="HANDOVER_READY"):
        srv.receive_payload(fr.encode(fr.HandoverReady(1)), 0.0)


# ---- the invariant: every byte arrives once, in order ---------------------

_actions = st.lists(
    st.one_of(
        st.tuples(st.just("write"), st.integers(0, 3), st.integers(1, 200_000),
                  st.booleans()),
        st.tuples(st.just("run"), st.integers(1, 30), st.just(0), st.just(False)),
        st.tuples(st.just("break"), st.integers(0, 8), st.integers(0, 8), st.booleans()),
        st.tuples(st.just("silence"), st.integers(0, 3), st.just(0), st.just(False)),
        st.tuples(st.just("soft"), st.integers(0, 20), st.just(0), st.booleans()),
    ),
    min_size=1,
    max_size=40,
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(actions=_actions, seed=st.integers(0, 2**32 - 1))
def test_every_byte_arrives_once_in_order(actions: list[tuple[str, int, int, bool]],
                                          seed: int) -> None:
    """Hypothesis chooses writes, when transports break and how much was in flight."""
    cfg = SessionConfig(replay_limit=512 * 1024, channel_window=128 * 1024,
                        channel_send_buffer=128 * 1024, max_record_payload=32 * 1024)
    p = Pair(cfg)
    chans = [p.open() for _ in range(4)]
    rng = random.Random(seed)
    for kind, a, b, flag in actions:
        if kind == "write":
            cid = chans[a]
            side = p.client if flag else p.server
            n = min(b, side.send_room(cid))
            if n:
                p.write(cid, rng.randbytes(n), from_client=flag)
        elif kind == "run":
            if not p.attached() and p.client.state is SessionState.DETACHED:
                p.reattach()
            p.run(a)
        elif kind == "break":
            p.in_flight()
            p.break_transport(keep_to_server=a, keep_to_client=b)
            if flag:
                p.reattach()
        elif kind == "soft":
            if p.attached():
                # flag: the old path dies after `a` steps of the drain
                p.soft_handover(token=a, die_after=a if flag else None)
        else:  # silence: the path black-holes for a while, then a new one comes
            for _ in range(a * 100):
                p.now += 0.01
                for s in (p.client, p.server):
                    t = s.get_timer()
                    if t is not None and t <= p.now:
                        s.handle_timer(p.now)
                    s.payloads_to_send(p.now)
            p.break_transport()
            p.reattach()
    # Heal: a final transport, and time for everything to drain.
    p.heal_and_check(chans)


def test_closed_session_is_not_revived_by_a_transport() -> None:
    s = Session(is_client=False, now=0.0)
    s.transport_attached(0.0, resume=False)
    s.close(CloseCode.SHUTDOWN, "done")
    s.transport_attached(1.0, resume=True)
    assert s.state is SessionState.CLOSED


def test_send_budget_keeps_the_rest_in_the_replay_buffer() -> None:
    p = Pair()
    cid = p.open()
    p.run(3)
    p.write(cid, b"q" * 200_000)
    first = p.client.payloads_to_send(p.now, budget=50_000)
    sent = sum(len(x) for x in first)
    assert 50_000 <= sent < 50_000 + fr.MAX_DATA_CHUNK + 200
    rest = p.client.payloads_to_send(p.now)
    for payload in first + rest:
        p.server.receive_payload(payload, p.now)
    p.run(5)
    assert p.up[cid].received == b"q" * 200_000


def _datagrams(p: Pair) -> list[tuple[int, bytes]]:
    return [(e.channel, e.data) for e in p.events if isinstance(e, ev.DatagramReceived)]


def test_datagram_channel_both_ways_and_early_datagrams_wait_for_open_ok() -> None:
    p = Pair()
    cid = p.client.open_channel("dns.example", 53, fr.ChannelKind.DATAGRAM)
    assert p.client.send_datagram(cid, b"query 1")  # before OPEN_OK: held
    p.run(5)
    assert _datagrams(p) == [(cid, b"query 1")]
    assert p.server.send_datagram(cid, b"answer 1")
    p.run(5)
    assert _datagrams(p)[-1] == (cid, b"answer 1")


def test_datagrams_are_dropped_not_queued_while_detached() -> None:
    p = Pair()
    cid = p.client.open_channel("dns.example", 53, fr.ChannelKind.DATAGRAM)
    p.run(5)
    p.break_transport()
    assert p.client.send_datagram(cid, b"lost") is False
    p.reattach()
    p.run(20)
    assert p.client.send_datagram(cid, b"after")
    p.run(5)
    assert [d for _, d in _datagrams(p)] == [b"after"]


def test_datagram_on_a_stream_channel_is_a_protocol_error() -> None:
    p = Pair()
    cid = p.open()
    p.run(3)
    assert p.client.send_datagram(cid, b"x") is False
    with pytest.raises(ProtocolError, match="not an open datagram channel"):
        p.server.receive_payload(fr.encode(fr.Dgram(cid, b"x")), p.now)


def test_after_a_resume_resumed_leaves_in_a_record_of_its_own() -> None:
    p = Pair()
    cid = p.open()
    p.run(3)
    p.write(cid, _blob(1_000_000, 5), from_client=False)
    p.in_flight()
    p.break_transport()
    p.reattach()
    (resume,) = p.client.payloads_to_send(p.now)
    p.server.receive_payload(resume, p.now)
    first, *rest = p.server.payloads_to_send(p.now)
    # A new connection's first window is about 14 KB: RESUMED must not wait
    # behind the data being resent.
    frames = fr.decode_frames(first)
    assert isinstance(frames[0], fr.Resumed)
    assert all(not isinstance(f, fr.Data) for f in frames)
    assert len(first) < 100
    assert rest  # the resent data follows in the next records
    for payload in [first, *rest]:
        p.client.receive_payload(payload, p.now)
    p.run(300)
    assert p.down[cid].received == p.down[cid].sent


def test_records_on_a_new_transport_start_small_and_double() -> None:
    p = Pair()
    cid = p.open()
    p.run(3)
    for _ in range(200):  # an interactive stream: 1 KiB frames, all lost in flight
        p.write(cid, _blob(1024, 9), from_client=False)
        p.in_flight()
    p.break_transport()
    p.reattach()
    (resume,) = p.client.payloads_to_send(p.now)
    p.server.receive_payload(resume, p.now)
    sizes = [len(x) for x in p.server.payloads_to_send(p.now)]
    # RESUMED alone, then records of at most 4, 8, 16 ... KiB: the first ones
    # fit a new connection's first window and reach the application at once.
    assert sizes[0] < 100
    limits = [4096 * 2**i for i in range(len(sizes) - 1)]
    assert all(size <= limit + 1100 for size, limit in zip(sizes[1:], limits, strict=True))
    assert sizes[1] < sizes[2] < sizes[3]


def test_a_backlog_built_while_detached_leaves_in_small_frames_first() -> None:
    p = Pair()
    cid = p.open()
    p.run(3)
    p.break_transport()
    p.write(cid, _blob(200_000, 3), from_client=False)  # waits in the channel buffer
    p.reattach()
    (resume,) = p.client.payloads_to_send(p.now)
    p.server.receive_payload(resume, p.now)
    payloads = p.server.payloads_to_send(p.now)
    sizes = [len(x) for x in payloads]
    assert sizes[0] < 100
    assert sizes[1] <= 4096 + 64  # not one 60 KiB DATA frame
    assert sizes[1] <= sizes[2] <= sizes[3] < sizes[4]
    for payload in payloads:
        p.client.receive_payload(payload, p.now)
    p.run(300)
    assert p.down[cid].received == p.down[cid].sent


def _black_hole(p: Pair, side: Session, limit: float = 60.0) -> float:
    """Time passes and nothing is delivered either way; seconds until `side`
    declares its transport dead."""
    t0 = p.now
    while side.state is SessionState.ATTACHED:
        p.now += 0.01
        for s in (p.client, p.server):
            t = s.get_timer()
            if t is not None and t <= p.now:
                s.handle_timer(p.now)
            s.payloads_to_send(p.now)  # lost
        if p.now - t0 > limit:
            raise AssertionError(f"still attached after {limit} s of silence")
    return p.now - t0


def _pings(payloads: list[bytes]) -> int:
    return sum(isinstance(f, fr.Ping) for payload in payloads for f in fr.decode_frames(payload))


def test_an_idle_session_pings_slowly_and_wakes_up_on_data() -> None:
    cfg = SessionConfig()
    p = Pair(cfg)
    cid = p.open()
    p.write(cid, b"hello")
    p.run(100)
    assert not p.client.idle
    p.run(int((cfg.idle_after + 1) * 1000))
    assert p.client.idle
    assert p.server.idle
    # Idle: a ping every idle_keepalive_interval, not every second.
    sent = 0
    for _ in range(int(3 * cfg.idle_keepalive_interval * 100)):
        p.now += 0.01
        for s, peer in ((p.client, p.server), (p.server, p.client)):
            t = s.get_timer()
            if t is not None and t <= p.now:
                s.handle_timer(p.now)
            out = s.payloads_to_send(p.now)
            if s is p.client:
                sent += _pings(out)
            for payload in out:
                peer.receive_payload(payload, p.now)
    assert 2 <= sent <= 4
    assert p.client.state is SessionState.ATTACHED
    # Data wakes both sides up; nobody takes the long silence before for death.
    p.write(cid, b"again")
    p.run(50)
    assert not p.client.idle
    assert not p.server.idle
    assert p.up[cid].received == b"helloagain"
    p.run(3000)
    assert p.attached()


def test_a_black_hole_on_an_idle_session_is_found_after_the_slow_keepalive() -> None:
    cfg = SessionConfig()
    p = Pair(cfg)
    p.open()
    p.run(int((cfg.idle_after + 1) * 1000))
    assert p.client.idle
    took = _black_hole(p, p.client)
    assert took <= cfg.idle_keepalive_interval + cfg.dead_floor + 0.1
    assert any(isinstance(e, ev.TransportDead) for e in iter(p.client.next_event, None))


def test_an_active_session_still_finds_a_black_hole_after_the_floor() -> None:
    cfg = SessionConfig()
    p = Pair(cfg)
    cid = p.open()
    p.run(1100)
    p.write(cid, b"x" * 1000)
    p.run(5)
    assert not p.client.idle
    assert cfg.dead_floor - 0.2 <= _black_hole(p, p.client) < cfg.dead_floor + 0.05


def test_the_slow_keepalive_is_never_faster_than_the_fast_one() -> None:
    # As bench/scale.py's load generator sets its clients: one ping in 30 s.
    cfg = SessionConfig(keepalive_interval=30.0, idle_keepalive_interval=10.0, idle_after=5.0)
    s = Session(is_client=True, now=0.0, config=cfg)
    s.transport_attached(0.0, resume=False)
    s.handle_timer(6.0)  # no reliable frame for idle_after: idle
    assert s.idle
    s.payloads_to_send(6.0)
    # The next PING is due a whole fast keepalive after the last (at 0).
    assert s.get_timer() == 30.0
