"""roam.core.handover: every way of moving the session, on a virtual clock:
a switch to a joined standby (soft, hard), a resume on a parked standby, a
connect then soft, a soft one turning hard (old transport lost, READY late),
and failures."""

from __future__ import annotations

import pytest

from roam.core.handover import Connect, Drain, Handover, Resume, SwitchTo
from roam.core.states import HandoverState
from roam.errors import LocalError

TIMEOUT = 1.0


def _plan(*, soft: bool = True, attached: bool = True, joined: int | None = None,
          parked: bool = False, now: float = 10.0) -> Handover:
    return Handover(target="cell", soft=soft, reason="wifi (priority 10) usable", now=now,
                    attached=attached, timeout=TIMEOUT, joined=joined, parked=parked)


@pytest.mark.parametrize("soft", [True, False])
def test_a_joined_standby_is_switched_to_at_once(soft: bool) -> None:
    plan = _plan(soft=soft, joined=3, parked=True)
    assert plan.start() == SwitchTo(3, reinject=not soft)
    assert plan.state is HandoverState.DONE
    assert plan.kind == ("soft" if soft else "hard")


def test_a_joined_standby_of_a_detached_session_is_not_switched_to() -> None:
    # Nothing to switch from: the session resumes (here on the parked one).
    plan = _plan(attached=False, joined=3, parked=True)
    assert plan.start() == Resume(parked=True)
    assert plan.kind == "hard"


def test_a_hard_move_to_a_parked_standby_needs_no_connect() -> None:
    plan = _plan(soft=False, parked=True)
    assert plan.start() == Resume(parked=True)
    assert plan.state is HandoverState.RESUMING
    plan.resumed()
    assert plan.state is HandoverState.DONE


def test_soft_connects_first_then_drains_then_resumes_with_its_stall_from_the_switch() -> None:
    plan = _plan(parked=True)  # soft connects even with a parked standby
    assert plan.start() == Connect(10.0 + TIMEOUT)
    assert plan.connected(10.2) == Drain(10.2 + TIMEOUT)
    assert plan.get_timer() == 10.2 + TIMEOUT
    assert plan.handle_timer(10.5) is None  # READY is not late yet
    assert plan.ready() == Resume(parked=False)
    assert plan.kind == "soft"
    assert plan.get_timer() is None
    assert plan.stall_start(last_received=10.1, attached=True, lost=None) == (
        10.2, "wifi (priority 10) usable")
    plan.resumed()
    assert plan.state is HandoverState.DONE


def test_soft_turns_hard_when_ready_is_late() -> None:
    plan = _plan()
    plan.start()
    plan.connected(10.2)
    assert plan.handle_timer(10.2 + TIMEOUT) == Resume(parked=False)
    assert plan.kind == "hard"
    assert plan.state is HandoverState.RESUMING
    # The old transport is gone by the resume: the stall began with its silence.
    assert plan.stall_start(last_received=10.05, attached=False, lost=None)[0] == 10.05
    plan.ready()  # a READY after all changes nothing
    assert plan.state is HandoverState.RESUMING


def test_soft_turns_hard_when_the_old_transport_dies_while_draining() -> None:
    plan = _plan()
    plan.start()
    plan.connected(10.2)
    assert plan.old_lost() == Resume(parked=False)
    assert plan.kind == "hard"


def test_the_old_transport_lost_while_connecting_makes_the_move_hard() -> None:
    plan = _plan()
    assert isinstance(plan.start(), Connect)
    assert plan.old_lost() is None  # the connect goes on
    assert plan.connected(10.3) == Resume(parked=False)
    assert plan.kind == "hard"


def test_a_hard_move_with_the_old_transport_still_up_stalls_from_the_new_one() -> None:
    plan = _plan(soft=False)
    assert isinstance(plan.start(), Connect)
    assert plan.connected(10.3) == Resume(parked=False)
    assert plan.stall_start(last_received=10.29, attached=True, lost=None)[0] == 10.3
    # An unplanned loss being repaired began the stall back then, with its reason.
    assert plan.stall_start(last_received=10.29, attached=False, lost=(9.0, "silent")) == (
        9.0, "silent")


def test_a_failed_connect_or_resume_fails_the_handover_for_good() -> None:
    plan = _plan()
    plan.start()
    plan.failed()
    assert plan.state is HandoverState.FAILED
    with pytest.raises(LocalError, match="handover to cell"):
        plan.connected(11.0)
    plan = _plan(soft=False, parked=True)
    plan.start()
    plan.failed()
    with pytest.raises(LocalError):
        plan.resumed()
