"""The session's clock alone (roam.core.sessiontimers): the detached limit,
idleness, keepalives and a silent transport let go, on a virtual clock."""

from __future__ import annotations

from roam.core import events as ev
from roam.core import frames as fr
from roam.core.session import Session, SessionConfig
from roam.core.states import SessionState


def attached(config: SessionConfig | None = None) -> Session:
    s = Session(is_client=True, now=0.0, config=config)
    s.transport_attached(0.0, resume=False, tid=0)
    s.take_events()
    return s


def test_a_detached_session_closes_when_its_limit_runs_out() -> None:
    s = Session(is_client=False, now=10.0, config=SessionConfig(detached_timeout=30.0))
    assert s.get_timer() == 40.0
    s.handle_timer(39.9)
    assert s.state is SessionState.DETACHED
    s.handle_timer(40.0)
    assert s.state is SessionState.CLOSED
    closed = [e for e in s.take_events() if isinstance(e, ev.SessionClosed)]
    assert len(closed) == 1
    assert "no transport for 30 s" in closed[0].reason
    assert s.get_timer() is None


def test_without_a_limit_a_detached_session_waits_for_ever() -> None:
    s = Session(is_client=False, now=0.0, config=SessionConfig(detached_timeout=None))
    assert s.get_timer() is None
    s.handle_timer(1e9)
    assert s.state is SessionState.DETACHED


def test_an_attached_session_pings_at_its_keepalive_interval() -> None:
    config = SessionConfig()
    s = attached(config)
    deadline = s.get_timer()
    assert deadline is not None
    assert deadline <= config.keepalive_interval
    s.handle_timer(deadline)
    pings = [f for c in s.control_frames() for f in fr.decode_frames(c)
             if isinstance(f, fr.Ping)]
    assert len(pings) == 1


def test_no_reliable_frame_for_idle_after_makes_the_session_idle() -> None:
    config = SessionConfig()
    s = attached(config)
    now = 0.0
    # Keep the transport alive with the peer's PONGs, send nothing reliable.
    while now < config.idle_after + 1:
        now += config.keepalive_interval / 2
        s.handle_timer(now)
        for frame in (f for c in s.control_frames() for f in fr.decode_frames(c)):
            if isinstance(frame, fr.Ping):
                s.receive_payload(fr.encode(fr.Pong(frame.token)), now, tid=0)
    assert s.idle
    assert s.state is SessionState.ATTACHED


def test_a_transport_silent_past_its_dead_time_is_let_go() -> None:
    config = SessionConfig()
    s = attached(config)
    now = 0.0
    while s.state is SessionState.ATTACHED and now < 60:
        deadline = s.get_timer()
        assert deadline is not None
        now = max(now, deadline)
        s.handle_timer(now)
        s.control_frames()
    dead = [e for e in s.take_events() if isinstance(e, ev.TransportDead)]
    assert len(dead) == 1
    assert dead[0].silence >= config.dead_floor
    assert s.state is SessionState.DETACHED


def test_the_clocks_state_lives_in_slots() -> None:
    # A server holds a session per client for as long as it lives: no
    # instance dict (about 1.5 KiB each) from the mixed-in part either.
    assert not hasattr(attached(), "__dict__")
