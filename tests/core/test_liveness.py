"""Liveness: pings, the RTT they measure, and when silence means death."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from roam.core.liveness import MAX_PINGS, Liveness, idle_interval
from roam.core.session import SessionConfig


def test_a_pong_is_an_rtt_sample_and_forgets_older_pings() -> None:
    live = Liveness(0.0)
    first = live.ping(1.0)
    second = live.ping(1.5)
    live.pong(second, 1.6)
    assert live.rtt.latest is not None
    assert abs(live.rtt.latest - 0.1) < 1e-9
    assert not live.waiting  # the first was lost or overtaken
    live.pong(first, 2.0)  # it comes after all: no sample from it
    assert abs(live.rtt.latest - 0.1) < 1e-9


def test_pings_outstanding_are_bounded() -> None:
    live = Liveness(0.0)
    tokens = [live.ping(i * 0.01) for i in range(MAX_PINGS + 5)]
    live.pong(tokens[0], 1.0)  # evicted long ago: nothing to sample
    assert live.rtt.srtt is None
    live.pong(tokens[-1], 1.0)
    assert live.rtt.srtt is not None


def test_dead_time_has_a_floor_and_grows_with_the_rto_and_when_idle() -> None:
    cfg = SessionConfig(dead_floor=2.0, dead_rtos=4.0)
    live = Liveness(0.0)
    live.rtt.sample(0.01)
    assert live.dead_after(cfg, idle=False) == 2.0
    live.rtt.sample(3.0)
    assert live.dead_after(cfg, idle=False) == 4 * live.rtt.rto
    assert live.dead_after(cfg, idle=True) == 4 * live.rtt.rto + idle_interval(cfg)


def test_probing_every_rto_only_while_something_is_unanswered_and_the_peer_is_quiet() -> None:
    cfg = SessionConfig()
    live = Liveness(0.0)
    assert live.ping_interval(cfg, idle=False, unacked=True) == cfg.keepalive_interval
    live.ping(0.5)  # after the last arrival (0.0)
    assert live.ping_interval(cfg, idle=False, unacked=False) == live.rtt.rto
    live.last_received = 0.6
    assert live.ping_interval(cfg, idle=True, unacked=True) == idle_interval(cfg)


def test_a_new_transport_learns_its_least_rtt_again_and_voids_its_pings() -> None:
    live = Liveness(0.0)
    token = live.ping(0.0)
    live.rtt.sample(0.2)
    live.new_transport(5.0)
    assert live.rtt.min_rtt is None
    assert live.rtt.srtt is not None
    assert live.last_received == 5.0
    assert not live.waiting
    live.pong(token, 5.1)
    assert live.rtt.min_rtt is None


@given(received=st.floats(0, 100), since=st.floats(0, 100), last_ping=st.floats(0, 100),
       samples=st.lists(st.floats(0.0001, 5), max_size=4), idle=st.booleans(),
       pinging=st.booleans(), unacked=st.booleans(), waiting=st.booleans())
def test_the_next_deadline_is_death_or_the_next_ping_whichever_is_first(
        received: float, since: float, last_ping: float, samples: list[float], idle: bool,
        pinging: bool, unacked: bool, waiting: bool) -> None:
    config = SessionConfig()
    live = Liveness(0.0)
    for rtt in samples:
        live.rtt.sample(rtt)
    if waiting:
        live.ping(last_ping)
    live.last_ping = last_ping
    live.last_received = received
    dead = max(received, since) + live.dead_after(config, idle)
    ping = last_ping + live.ping_interval(config, idle, unacked)
    expected = min(dead, ping) if pinging else dead
    assert live.deadline(config, idle, since, pinging, unacked) == expected
