"""Crossing switches (claim 17): the serials' rule alone, then two sessions
in memory on a virtual clock, both switching at every offset and delay
Hypothesis chooses: the creator's switch stands, the other is abandoned,
and every byte arrives once, in order."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from roam.core import events as ev
from roam.core import frames as fr
from roam.core.crossing import Switches, Verdict
from roam.core.session import Session
from roam.errors import LocalError, ProtocolError
from tests.core.multisim import Link, MultiPair

# ---- the rule ---------------------------------------------------------------


def test_a_switch_that_heard_of_ours_is_followed() -> None:
    s = Switches(creator=False)
    assert s.ours(1) == (1, 0)
    assert s.theirs(1, 1, 2, ours_alive=True) is Verdict.FOLLOW


def test_the_creator_keeps_its_own_when_they_cross() -> None:
    s = Switches(creator=True)
    s.ours(1)
    assert s.theirs(1, 0, 2, ours_alive=True) is Verdict.KEEP_OURS
    assert s.target == 1


def test_the_other_unit_yields_and_forgets_its_own() -> None:
    s = Switches(creator=False)
    s.ours(2)
    assert s.theirs(1, 0, 1, ours_alive=True) is Verdict.YIELD
    assert s.target is None
    # The creator's next switch is followed as usual.
    assert s.theirs(2, 0, 3, ours_alive=True) is Verdict.FOLLOW


def test_switches_to_the_same_transport_do_not_cross() -> None:
    s = Switches(creator=True)
    s.ours(1)
    assert s.theirs(1, 0, 1, ours_alive=True) is Verdict.FOLLOW


def test_a_switch_to_a_transport_gone_since_cannot_win() -> None:
    s = Switches(creator=True)
    s.ours(1)
    assert s.theirs(1, 0, 2, ours_alive=False) is Verdict.FOLLOW


def test_an_overtaken_switch_is_stale() -> None:
    s = Switches(creator=False)
    assert s.theirs(2, 0, 2, ours_alive=False) is Verdict.FOLLOW
    assert s.theirs(1, 0, 1, ours_alive=False) is Verdict.STALE
    assert s.theirs(2, 0, 1, ours_alive=False) is Verdict.STALE


def test_a_switch_claiming_to_have_heard_of_one_never_made_is_an_error() -> None:
    s = Switches(creator=False)
    s.ours(1)
    with pytest.raises(ProtocolError, match="heard of our switch 2; we made 1"):
        s.theirs(1, 2, 1, ours_alive=True)


def test_a_switch_with_serial_zero_never_decodes() -> None:
    with pytest.raises(ProtocolError, match="serial 0"):
        fr.decode_frames(fr.encode(fr.Switch(0, 0, 0, 0)))


# ---- two sessions, three transports -------------------------------------------

A, B, C = 0, 1, 2


def three(delays: tuple[float, float, float]) -> tuple[MultiPair, int]:
    """A session on A with B and C joined as standbys."""
    p = MultiPair(delay=delays[A])
    cid = p.open()
    p.run(30)
    p.join(B, delay=delays[B])
    p.join(C, delay=delays[C])
    p.run(int(2 * max(delays) * 1000) + 40)
    return p, cid


def crossings(p: MultiPair, side: str) -> list[ev.SwitchesCrossed]:
    return [e for name, e in p.events if name == side and isinstance(e, ev.SwitchesCrossed)]


ms = st.integers(1, 40).map(lambda n: n / 1000)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(delays=st.tuples(ms, ms, ms), offset_ms=st.integers(-60, 60),
       client_to=st.sampled_from([B, C]), server_to=st.sampled_from([A, B, C]),
       both_ways=st.booleans())
def test_crossing_soft_switches_end_on_the_creators_choice(
        delays: tuple[float, float, float], offset_ms: int, client_to: int, server_to: int,
        both_ways: bool) -> None:
    """The client switches to `client_to` and the server to `server_to`,
    `offset_ms` apart (negative: the server first), while a stream runs.
    Whatever the order and the delays: both end on one transport, the
    client's when the two crossed; each side saw the crossing, or neither
    did; nothing was resent, and every byte arrived once, in order."""
    p, cid = three(delays)
    first, second = (("server", "client") if offset_ms < 0 else ("client", "server"))
    targets = {"client": client_to, "server": server_to}
    for i in range(200):
        p.write(cid, bytes([i % 251]) * 300, from_client=True)
        if both_ways:
            p.write(cid, bytes([i % 241]) * 300, from_client=False)
        if i == 20:
            getattr(p, first).switch(targets[first], p.now, reason="planned")
        if i == 20 + abs(offset_ms):
            getattr(p, second).switch(targets[second], p.now, reason="planned")
        p.step()
    p.run(400)
    assert p.exact()
    assert p.client.active_transport == p.server.active_transport
    crossed_client, crossed_server = crossings(p, "client"), crossings(p, "server")
    assert bool(crossed_client) == bool(crossed_server)
    event("crossed" if crossed_client else "one after the other")
    if crossed_client:
        assert p.client.active_transport == client_to
        assert [e.kept for e in crossed_client] == [True]
        assert [e.kept for e in crossed_server] == [False]
        assert crossed_server[0].ours == server_to
        assert crossed_server[0].theirs == client_to
    assert p.client.frames_resent == p.server.frames_resent == 0


def test_simultaneous_switches_cross_and_the_clients_stands() -> None:
    p, cid = three((0.005, 0.020, 0.020))
    for i in range(50):
        p.write(cid, bytes([i]) * 500)
        p.step()
    p.client.switch(B, p.now, reason="its wifi fades")
    p.server.switch(C, p.now, reason="its network moves")
    for i in range(50, 300):
        p.write(cid, bytes([i % 251]) * 500, from_client=False)
        p.step()
    p.run(300)
    assert p.exact()
    assert p.client.active_transport == p.server.active_transport == B
    assert p.client.crossings == p.server.crossings == 1
    (kept,) = crossings(p, "client")
    (abandoned,) = crossings(p, "server")
    assert (kept.ours, kept.theirs, kept.kept) == (B, C, True)
    assert (abandoned.ours, abandoned.theirs, abandoned.kept) == (C, B, False)
    assert "made the session" in p.switches("server")[-1].reason


def test_a_switch_heard_before_ours_is_not_a_crossing() -> None:
    p, _cid = three((0.005, 0.005, 0.005))
    p.server.switch(C, p.now)
    p.run(50)
    p.client.switch(B, p.now)
    p.run(50)
    assert p.client.active_transport == p.server.active_transport == B
    assert p.client.crossings == p.server.crossings == 0


def test_a_hard_switch_that_loses_still_gets_its_frames_resent() -> None:
    p, cid = three((0.005, 0.020, 0.020))
    p.run(10)
    p.client.switch(B, p.now, reason="planned")
    p.server.switch(C, p.now, reinject=True, reason="its network went away")
    p.write(cid, b"after", from_client=False)
    p.run(300)
    assert p.exact()
    assert p.client.active_transport == p.server.active_transport == B


# ---- MOVE ----------------------------------------------------------------------


def test_the_server_announces_a_move_and_the_client_hears_it_once() -> None:
    p, _ = three((0.005, 0.020, 0.020))
    p.server.announce_move(["198.19.64.2:7000", "198.19.0.2:7000"])
    p.run(100)
    moved = [e for name, e in p.events if name == "client" and isinstance(e, ev.PeerMoved)]
    # It went on all three transports; the client reports it once.
    assert moved == [ev.PeerMoved(("198.19.64.2:7000", "198.19.0.2:7000"))]
    p.server.announce_move(["198.19.0.2:7000"])
    p.run(100)
    moved = [e for name, e in p.events if name == "client" and isinstance(e, ev.PeerMoved)]
    assert moved[-1] == ev.PeerMoved(("198.19.0.2:7000",))


def test_only_the_server_announces_a_move() -> None:
    s = Session(is_client=True, now=0.0)
    with pytest.raises(LocalError, match="only the server"):
        s.announce_move(["198.19.0.2:7000"])


def test_a_move_from_the_client_is_a_protocol_error() -> None:
    s = Session(is_client=False, now=0.0)
    s.transport_attached(0.0, resume=False, tid=0)
    with pytest.raises(ProtocolError, match="MOVE from the client"):
        s.receive_payload(fr.encode(fr.Move(1, ("198.18.1.2:1",))), 0.0, tid=0)


def test_the_server_may_switch_to_a_transport_the_moment_it_joins() -> None:
    # A mobile server switches to the client's transport to its new address
    # as soon as JOIN arrives: JOINED still leaves first, then SWITCH.
    p = MultiPair(delay=0.005)
    cid = p.open()
    p.run(30)
    p.links[B] = Link(0.005)
    p.client.join_transport(B, p.now)
    p.server.transport_attached(p.now, resume=True, tid=B)
    for payload in p.client.payloads_to_send(p.now, tid=B):
        p.server.receive_payload(payload, p.now, B)
    p.server.switch(B, p.now, reason="this server moved")
    p.write(cid, b"on the new address", from_client=False)
    p.run(100)
    assert p.exact()
    assert p.client.active_transport == p.server.active_transport == B
