"""One handover, as the client decides it: soft, hard, standby, or a soft
one that turns hard (claims 5 and 6; docs/protocol.md 5).

The ways to move the session to a target path, best first:

1. The target has a *joined* standby and the session is attached: SWITCH
   to it at once (the session core, roam.core.session): soft sends the next
   frames there and resends nothing; hard resends every unacknowledged frame.
2. A hard move to a standby *parked* on the target (a spare transport whose
   connect and preamble are done): RESUME on it, no connect.
3. Otherwise connect on the target first (make before break). Soft, with
   the old transport still working: HANDOVER_BEGIN on the old one, and once
   its READY comes, RESUME on the new one, with nothing to resend. If the
   old one is lost, or READY is late (`timeout`), the move turns hard.

Each step's outcome comes back in (`connected`, `ready`, `old_lost`,
`resumed`, `failed`, `handle_timer`), and each answer is the next command.
The states are roam.core.states.HANDOVER. Sans-IO: times are arguments;
the driver (roam.transport.client) connects, writes and waits.
"""

from __future__ import annotations

from dataclasses import dataclass

from roam.core.states import HANDOVER, HandoverInput, HandoverState


@dataclass(frozen=True, slots=True)
class SwitchTo:
    """Move to the joined standby transport `tid` (reinject: resend all)."""

    tid: int
    reinject: bool


@dataclass(frozen=True, slots=True)
class Connect:
    """Open a new transport on the target, by `deadline`."""

    deadline: float


@dataclass(frozen=True, slots=True)
class Drain:
    """HANDOVER_BEGIN on the old transport; READY is due by `deadline`."""

    deadline: float


@dataclass(frozen=True, slots=True)
class Resume:
    """RESUME on the new transport (`parked`: on the target's parked standby)."""

    parked: bool


Command = SwitchTo | Connect | Drain | Resume


class Handover:
    """One move of the session to `target`."""

    def __init__(self, *, target: str, soft: bool, reason: str, now: float, attached: bool,
                 timeout: float, joined: int | None = None, parked: bool = False) -> None:
        """`attached`: the session has a working transport now; `joined`: the
        target's joined standby, if any; `parked`: a standby is parked on the
        target; `timeout`: one attempt's time (connect, READY)."""
        self.target = target
        self.reason = reason
        self.state = HandoverState.PLANNED
        # Soft needs the old transport: a detached session moves hard.
        self.kind = "soft" if soft and attached else "hard"
        self.started = now
        self._attached = attached
        self._timeout = timeout
        self._joined = joined
        self._parked = parked
        self._drain_until: float | None = None

    def _move(self, event: HandoverInput) -> None:
        self.state = HANDOVER.next(self.state, event, f"handover to {self.target}")

    def start(self) -> Command:
        if self._joined is not None and self._attached:
            self._move(HandoverInput.SWITCH)
            return SwitchTo(self._joined, reinject=self.kind == "hard")
        if self.kind == "hard" and self._parked:
            self._move(HandoverInput.PARKED)
            return Resume(parked=True)
        self._move(HandoverInput.CONNECT)
        return Connect(self.started + self._timeout)

    def connected(self, now: float) -> Command:
        """The new transport is open; the stall of a hard move counts from here
        at the latest."""
        self.started = now
        if self.kind == "soft":
            self._move(HandoverInput.DRAIN)
            self._drain_until = now + self._timeout
            return Drain(self._drain_until)
        self._move(HandoverInput.RESUME)
        return Resume(parked=False)

    def ready(self) -> Resume:
        self._move(HandoverInput.READY)
        return Resume(parked=False)

    def old_lost(self) -> Resume | None:
        """The old transport is gone (or READY is late): the move turns hard.
        While draining, RESUME goes now; before, the connect goes on."""
        self.kind = "hard"
        was = self.state
        self._move(HandoverInput.OLD_LOST)
        return Resume(parked=False) if was is HandoverState.DRAINING else None

    def get_timer(self) -> float | None:
        return self._drain_until if self.state is HandoverState.DRAINING else None

    def handle_timer(self, now: float) -> Resume | None:
        """READY is late: the old path went silent mid-way."""
        if (self.state is HandoverState.DRAINING and self._drain_until is not None
                and now >= self._drain_until):
            return self.old_lost()
        return None

    def resumed(self) -> None:
        self._move(HandoverInput.RESUMED)

    def failed(self) -> None:
        self._move(HandoverInput.FAILED)

    def stall_start(self, last_received: float, attached: bool,
                    lost: tuple[float, str] | None) -> tuple[float, str]:
        """Since when the application waits, and why, for the handover's
        record: an unplanned loss being repaired began its stall back then;
        a hard move's began when the old transport, lost by now (not
        `attached`), last brought anything, or when the new one opened if
        the old still works; a soft one's when it switched."""
        if lost is not None:
            return lost
        if self.kind == "hard":
            since = last_received if not attached else self.started
            return min(since, self.started), self.reason
        return self.started, self.reason
