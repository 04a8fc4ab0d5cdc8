"""Following a moved server (roam.core.follow), on a virtual clock: the
server's SWITCH, a crossing our own switch wins, no SWITCH at all, and what
of the old transports goes at once or drains."""

from __future__ import annotations

import pytest

from roam.core.follow import Follow, Outcome, leftovers
from roam.core.states import TransportState

JOINED = TransportState.STANDBY


def plan() -> Follow:
    return Follow(tid=5, crossings=0, now=10.0, patience=0.5)


def test_the_servers_switch_ends_it_followed() -> None:
    p = plan()
    assert p.check(10.1, active=1, crossings=0, state=JOINED, closed=False) is None
    assert p.check(10.2, active=5, crossings=0, state=TransportState.ACTIVE,
                   closed=False) is Outcome.FOLLOWED
    # Decided once: later readings change nothing.
    assert p.check(11.0, active=1, crossings=3, state=None, closed=True) is Outcome.FOLLOWED


def test_a_crossing_abandons_the_servers_move() -> None:
    p = plan()
    assert p.check(10.1, active=2, crossings=1, state=JOINED, closed=False) is Outcome.ABANDONED


def test_without_a_switch_the_client_switches_once_patience_runs_out() -> None:
    p = plan()
    assert p.check(10.49, active=1, crossings=0, state=JOINED, closed=False) is None
    assert p.check(10.5, active=1, crossings=0, state=JOINED, closed=False) is (
        Outcome.SWITCH_HERE)


def test_a_transport_still_joining_is_waited_for_past_the_deadline() -> None:
    p = plan()
    assert p.check(12.0, active=1, crossings=0, state=TransportState.OPENING,
                   closed=False) is None


@pytest.mark.parametrize(("state", "closed"), [(None, False), (JOINED, True)])
def test_a_transport_or_session_gone_ends_it(state: TransportState | None,
                                             closed: bool) -> None:
    assert plan().check(10.1, active=1, crossings=0, state=state, closed=closed) is Outcome.GONE


def test_the_server_switching_wins_over_a_crossing_seen_at_the_same_time() -> None:
    # The session is already on the new transport: the move happened.
    assert plan().check(10.1, active=5, crossings=1, state=TransportState.ACTIVE,
                        closed=False) is Outcome.FOLLOWED


def test_leftovers_drop_standbys_now_and_drain_the_old_active() -> None:
    new, old, standby, other = object(), object(), object(), object()
    rest = leftovers([old, standby, new, other], new, old)
    assert rest.drop == [standby, other]
    assert rest.drain is old
    assert leftovers([new], new, new).drain is None
    assert leftovers([new, standby], new, None).drop == [standby]
