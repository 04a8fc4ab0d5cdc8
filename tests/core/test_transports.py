"""Several transports per session, in memory on a virtual clock: join, soft
and hard switches, black holes found in a few RTTs, and every byte once, in
order, whichever transport brought it."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from roam.core import events as ev
from roam.core import frames as fr
from roam.core.session import Session, SessionConfig
from roam.core.states import SessionState, TransportInput, TransportState
from roam.core.transports import Transport
from roam.errors import CloseCode, LocalError, ProtocolError
from tests.core.multisim import MultiPair

WIFI, CELL = 0, 1


def streaming(p: MultiPair, cid: int, ms: int, size: int = 1024) -> None:
    """The server sends `size` bytes every ms for `ms` ms (bench/paced.py's stream)."""
    for i in range(ms):
        p.write(cid, bytes([i % 251]) * size, from_client=False)
        p.step()


def joined(kernel: bool = False) -> tuple[MultiPair, int]:
    p = MultiPair(delay=0.003, kernel=kernel)  # wifi: 6 ms RTT
    cid = p.open()
    p.run(50)
    p.join(CELL, delay=0.030)  # cell: 60 ms RTT
    p.run(100)
    return p, cid


def test_a_joined_transport_is_a_standby_on_both_sides() -> None:
    p, _ = joined()
    for side in (p.client, p.server):
        assert side.transport_ids() == {WIFI: TransportState.ACTIVE, CELL: TransportState.STANDBY}
        assert side.state is SessionState.ATTACHED
    assert [e.transport for n, e in p.events if isinstance(e, ev.TransportJoined)] == [CELL, CELL]
    assert p.client.frames_resent == p.server.frames_resent == 0


def test_a_soft_switch_resends_nothing_and_the_application_sees_no_pause() -> None:
    p, cid = joined()
    streaming(p, cid, 200)
    p.longest_gap["client"] = 0.0
    p.client.switch(CELL, p.now, reason="planned")
    streaming(p, cid, 300)
    p.run(200)
    assert p.exact()
    assert p.client.active_transport == p.server.active_transport == CELL
    assert p.client.frames_resent == p.server.frames_resent == 0
    # For one RTT of the new path every frame also went on the old one, so
    # the only gap left is the new path's longer one-way delay (30 - 3 ms):
    # the frames sent after the overlap come that much later. No scheme
    # does better for a stream paced by its application.
    assert p.longest_gap["client"] <= 0.030 - 0.003 + 0.001
    assert p.server.frames_overlapped > 0
    assert p.client.drained(WIFI)
    assert p.server.drained(WIFI)


def test_frames_arriving_ahead_on_the_faster_transport_wait_for_the_gap() -> None:
    # The client switches to the faster transport while its frames are in
    # flight on the slow one: the new ones arrive first and are held.
    p = MultiPair(delay=0.030)
    cid = p.open()
    p.run(100)
    p.join(1, delay=0.002)
    p.run(100)
    for i in range(20):
        p.write(cid, bytes([i]) * 100)
        p.step()
    p.client.switch(1, p.now)
    for i in range(20, 40):
        p.write(cid, bytes([i]) * 100)
        p.step()
    p.run(100)
    assert p.exact()
    assert p.server.frames_resent == p.client.frames_resent == 0


@pytest.mark.parametrize("kernel", [False, True], ids=["acks", "acks-and-tcp"])
def test_a_black_hole_on_the_active_transport_moves_the_session_in_a_few_rtts(
        kernel: bool) -> None:
    p, cid = joined(kernel)
    streaming(p, cid, 300)
    p.longest_gap["client"] = 0.0
    holed_at = p.now
    p.black_hole(WIFI)
    streaming(p, cid, 1000)
    p.run(500)
    assert p.exact()
    assert p.server.active_transport == CELL
    assert p.client.active_transport == CELL
    switched = p.switches("server")
    assert len(switched) == 1
    assert "stalled" in switched[0].reason
    assert switched[0].frames_resent > 0
    # The stall a handover reports runs from the last thing heard on the old
    # transport (within a wifi RTT of the black hole), not from the standby's
    # last ping.
    heard = switched[0].previous_heard
    assert heard is not None
    assert holed_at - 0.01 <= heard <= holed_at + 0.01
    # Stall floor, then a cell RTT for the resent frames to come.
    cfg = SessionConfig()
    assert p.longest_gap["client"] < cfg.stall_floor + 0.1
    assert p.longest_gap["client"] < 2 * cfg.dead_floor / 8


def test_losing_the_active_transport_moves_to_the_standby_without_a_connect() -> None:
    p, cid = joined()
    streaming(p, cid, 200)
    cut_at = p.now
    p.cut(WIFI)
    streaming(p, cid, 300)
    p.run(300)
    assert p.exact()
    # The handover's stall runs from the last frame the lost transport brought,
    # which the session had let go of before it switched.
    heard = p.switches("client")[0].previous_heard
    assert heard is not None
    assert cut_at - 0.01 <= heard <= cut_at
    for side in (p.client, p.server):
        assert side.transport_ids() == {CELL: TransportState.ACTIVE}
        assert side.state is SessionState.ATTACHED
    assert p.client.resumes == p.server.resumes == 0


def test_losing_a_standby_resends_what_it_still_carried() -> None:
    p, cid = joined()
    p.client.switch(CELL, p.now)
    for i in range(10):
        p.write(cid, bytes([i]) * 500)
        p.step()
    p.cut(CELL)  # the frames on it are lost with it; the session is on wifi again
    p.run(300)
    assert p.exact()
    assert p.client.active_transport == WIFI


def test_a_segment_tcp_repairs_moves_nothing_when_tcp_says_it_delivers() -> None:
    # 5% loss on wifi: TCP repairs a segment after its RTO (200 ms at least)
    # and the session's ACKs stop meanwhile, while the peer's host SACKs all
    # that follows. The readings of tcpi_delivered show the path works.
    p, cid = joined(kernel=True)
    streaming(p, cid, 300)
    p.repair(WIFI, 0.25)
    streaming(p, cid, 600)
    p.run(300)
    assert p.exact()
    assert not p.switches("server")
    assert not p.switches("client")
    assert p.server.active_transport == WIFI


def test_without_tcp_readings_the_same_repair_is_taken_for_a_black_hole() -> None:
    # What the readings are for: the session's ACKs alone cannot tell.
    p, cid = joined(kernel=False)
    streaming(p, cid, 300)
    p.repair(WIFI, 0.25)
    streaming(p, cid, 600)
    p.run(300)
    assert p.exact()
    (switched,) = p.switches("server")
    assert "stalled" in switched.reason


def test_a_paused_peer_moves_nothing_when_tcp_says_its_host_took_everything() -> None:
    p, cid = joined(kernel=True)
    streaming(p, cid, 200)
    p.pause("client", 0.5)
    streaming(p, cid, 1500)
    p.run(500)
    assert p.exact()
    assert not p.switches("server")
    assert not p.switches("client")


def test_a_paused_peer_moves_the_session_at_most_once_and_loses_nothing() -> None:
    p, cid = joined()
    streaming(p, cid, 200)
    p.pause("client", 0.5)
    streaming(p, cid, 1500)
    p.run(500)
    assert p.exact()
    assert len(p.switches("server")) + len(p.switches("client")) <= 2  # one move, both sides
    assert {p.client.active_transport, p.server.active_transport} <= {WIFI, CELL}
    assert p.client.active_transport == p.server.active_transport


def test_a_frame_held_beyond_a_gap_is_bounded() -> None:
    cfg = SessionConfig(replay_limit=64 * 1024)
    s = Session(is_client=False, now=0.0, config=cfg)
    s.transport_attached(0.0, resume=False)
    s.receive_payload(fr.encode(fr.Open(1, 1, fr.ChannelKind.STREAM, 1 << 20, "h", 1)), 0.0)
    record = b"".join(fr.encode_data(seq, 1, b"x" * 4000) for seq in range(3, 100))
    with pytest.raises(ProtocolError) as caught:
        s.receive_payload(record, 0.0)
    assert caught.value.code is CloseCode.FLOW_CONTROL


def test_a_frame_held_twice_counts_once() -> None:
    s = Session(is_client=False, now=0.0)
    s.transport_attached(0.0, resume=False)
    s.receive_payload(fr.encode(fr.Open(1, 1, fr.ChannelKind.STREAM, 1 << 20, "h", 1)), 0.0)
    s.accept_channel(1)
    for _ in range(3):
        s.receive_payload(fr.encode_data(3, 1, b"later"), 0.0)
    s.receive_payload(fr.encode_data(2, 1, b"first "), 0.0)
    got = [e.data for e in s.take_events() if isinstance(e, ev.DataReceived)]
    assert b"".join(bytes(d) for d in got) == b"first later"


def test_switch_is_refused_before_a_transport_joined() -> None:
    p = MultiPair()
    p.run(10)
    p.client.join_transport(1, p.now)
    with pytest.raises(LocalError):
        p.client.switch(1, p.now)
    with pytest.raises(LocalError):
        p.client.join_transport(1, p.now)


def test_a_switch_on_a_transport_that_has_not_joined_is_a_protocol_error() -> None:
    s = Session(is_client=False, now=0.0)
    s.transport_attached(0.0, resume=False, tid=0)
    s.transport_attached(0.0, resume=True, tid=1)
    with pytest.raises(ProtocolError, match="expected RESUME or JOIN first"):
        s.receive_payload(fr.encode(fr.Switch(0, 0, 1, 0)), 0.0, tid=1)


def test_a_transport_starts_opening_and_moves_by_its_table() -> None:
    t = Transport(3, 0.0)
    assert t.state is TransportState.OPENING
    assert not t.usable
    with pytest.raises(ProtocolError, match="transport 3"):
        t.move(TransportInput.FRAME)


EVENTS = st.lists(st.tuples(st.sampled_from(["write", "up", "switch", "hole", "cut", "pause",
                                             "join", "repair", "wait"]),
                            st.integers(0, 3), st.integers(1, 3000)), max_size=25)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(EVENTS, st.sampled_from([0.001, 0.004, 0.025]), st.sampled_from([0.002, 0.03]),
       st.booleans())
def test_every_byte_once_in_order_whatever_the_transports_do(
        events: list[tuple[str, int, int]], wifi: float, cell: float, kernel: bool) -> None:
    p = MultiPair(delay=wifi, kernel=kernel)
    cid = p.open()
    p.run(30)
    p.join(1, cell)
    p.run(30)
    next_tid = 2
    for kind, which, n in events:
        tids = sorted(p.links)
        tid = tids[which % len(tids)] if tids else None
        if kind == "write":
            p.write(cid, bytes([n % 256]) * n, from_client=False)
        elif kind == "up":
            p.write(cid, bytes([n % 256]) * n)
        elif kind == "switch" and tid is not None and p.client.transport_ids().get(tid) in (
                TransportState.ACTIVE, TransportState.STANDBY):
            p.client.switch(tid, p.now, reinject=bool(n % 2))
        elif kind == "hole" and tid is not None and len(p.links) > 1:
            p.black_hole(tid)
        elif kind == "cut" and tid is not None and len(p.links) > 1:
            p.cut(tid)
        elif kind == "pause":
            p.pause("client" if n % 2 else "server", (n % 600) / 1000)
        elif kind == "repair" and tid is not None:
            p.repair(tid, (n % 400) / 1000, "up" if n % 2 else "down")
        elif kind == "join" and p.client.active_transport is not None and len(p.links) < 4:
            p.join(next_tid, (wifi, cell)[n % 2])
            next_tid += 1
        p.run(1 + n % 50)
    # Whatever happened, the session delivers everything once, in order,
    # and holds nothing for long: on what is left, or after a resume on a
    # new transport when nothing is left.
    def settled() -> bool:
        return (p.exact() and p.client.statistics().replay_bytes == 0
                and p.server.statistics().replay_bytes == 0)

    for _ in range(100):
        p.run(100)
        if settled():
            break
        if p.client.state is SessionState.DETACHED or not p.links:
            p.resume(100 + next_tid, wifi)
            next_tid += 1
    assert settled(), (p.client.transport_ids(), p.server.transport_ids())


def test_readings_are_asked_for_only_while_a_stall_may_build_and_the_driver_can_read() -> None:
    p, cid = joined(kernel=True)
    assert p.server.delivery_due(p.now) is None  # nothing outstanding
    p.write(cid, b"x" * 1000, from_client=False)
    p.black_hole(WIFI)
    p.step()
    stall_after = SessionConfig().stall_floor
    assert p.server.delivery_due(p.now + stall_after / 2 - 0.01) is None
    assert p.server.delivery_due(p.now + stall_after / 2 + 0.001) == WIFI
    timer = p.server.get_timer()
    assert timer is not None
    assert timer <= p.now + stall_after / 2 + 0.001
    p.server.delivery_unknown(WIFI)  # the socket no longer says
    assert p.server.delivery_due(p.now + stall_after) is None


def _uploading(p: MultiPair, cid: int, ms: int) -> None:
    for i in range(ms):
        p.write(cid, bytes([i % 251]) * 1024)
        p.step()


def _alone(kernel: bool = True) -> tuple[MultiPair, int]:
    """One transport (60 ms RTT), 200 ms of upload on it."""
    p = MultiPair(delay=0.030, kernel=kernel)
    cid = p.open()
    p.run(100)
    _uploading(p, cid, 200)
    return p, cid


def test_the_clients_last_transport_is_dead_once_tcp_beneath_delivers_nothing() -> None:
    # Both units moved at once: the only transport leads to an address that
    # is gone. TCP beneath shows it (nothing delivered for alone_dead_after),
    # well before the 2 s dead floor.
    p, cid = _alone()
    p.black_hole(0)
    _uploading(p, cid, 1500)
    dead = [e for name, e in p.events if name == "client" and isinstance(e, ev.TransportDead)]
    assert len(dead) == 1
    config = SessionConfig()
    assert dead[0].silence >= config.alone_dead_after
    assert p.client.state is SessionState.DETACHED
    # Found a little after alone_dead_after from the hole (the last ACK
    # came up to one RTT before), far sooner than the dead floor.
    assert p.client.transport_ids() == {}
    assert dead[0].silence < config.dead_floor / 2


def test_a_paused_server_never_kills_the_clients_only_transport() -> None:
    # The server's kernel goes on acknowledging while its process is paused.
    p, cid = _alone()
    p.pause("server", 1.0)
    _uploading(p, cid, 1500)
    p.run(500)
    assert p.exact()
    assert not [e for name, e in p.events if isinstance(e, ev.TransportDead)]
    assert p.client.state is SessionState.ATTACHED


def test_without_tcp_readings_the_last_transport_waits_for_the_dead_floor() -> None:
    p, cid = _alone(kernel=False)
    p.black_hole(0)
    _uploading(p, cid, 1500)
    assert not [e for name, e in p.events if isinstance(e, ev.TransportDead)]
    p.run(5000)
    dead = [e for name, e in p.events if name == "client" and isinstance(e, ev.TransportDead)]
    assert dead
    assert dead[0].silence >= SessionConfig().dead_floor


def test_a_downloading_clients_last_transport_is_dead_soon_after_the_path_goes() -> None:
    # Only the server sends: the client's ACKs into the hole are what TCP
    # beneath never delivers.
    p = MultiPair(delay=0.030, kernel=True)
    cid = p.open()
    p.run(100)
    streaming(p, cid, 300)
    p.black_hole(0)
    streaming(p, cid, 1500)
    dead = [e for name, e in p.events if name == "client" and isinstance(e, ev.TransportDead)]
    assert len(dead) == 1
    assert SessionConfig().alone_dead_after <= dead[0].silence < SessionConfig().dead_floor / 2


def test_an_idle_clients_quiet_transport_is_not_read_while_nothing_is_unanswered() -> None:
    p = MultiPair(delay=0.030, kernel=True)
    p.open()
    p.run(40_000)  # past idle_after: keepalives only, every one answered
    assert p.client.state is SessionState.ATTACHED
    assert not [e for name, e in p.events if isinstance(e, ev.TransportDead)]
    assert p.client.delivery_due(p.now) is None


def test_a_standby_that_takes_over_alone_is_not_dead_for_its_quiet_past() -> None:
    # A standby hears only its keepalives' answers; when the active one is
    # lost and it carries the session alone, its quiet counts from then.
    p, cid = joined(kernel=True)
    standby = p.client._transports[CELL].live
    while p.now - standby.last_received < 0.7:  # its last PONG is 0.7 s old
        p.write(cid, b"x" * 1024, from_client=False)
        p.step()
    p.cut(WIFI)
    streaming(p, cid, 300)
    p.run(300)
    assert p.exact()
    assert not [e for name, e in p.events if isinstance(e, ev.TransportDead)]
    assert p.client.transport_ids() == {CELL: TransportState.ACTIVE}
