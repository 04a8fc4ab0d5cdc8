"""Following a server that moved (MOVE, claims 16 and 17; docs/mobility.md),
as the client decides it once its transport to the new address joined.

The server began this handover, so it switches to the joined transport and
the client's core follows its SWITCH. Three other endings:

- the client's own switch crossed the server's (the session's crossing
  count rose): the client made the session, so its choice stands and the
  server's move is abandoned: the new transport goes, the old address stays;
- no SWITCH came within `patience` (the server's was lost, or it has none
  to send): the client switches to the joined standby itself, softly;
- the transport or the session went meanwhile: nothing more to do.

After a move, every transport but the new one runs to the old address:
`leftovers` says which go at once (standbys) and which drains first (the
one the session was on). Sans-IO: the driver polls `check` with what the
session says and carries out the answer.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Generic, TypeVar

from roam.core.states import TransportState


class Outcome(enum.Enum):
    FOLLOWED = "followed"  # the server's SWITCH moved the session there
    SWITCH_HERE = "switch here"  # no SWITCH came: switch to it ourselves
    ABANDONED = "abandoned"  # our switch crossed the server's: ours stands
    GONE = "gone"  # the transport or the session went meanwhile


class Follow:
    """One follow, from the join of the transport to the new address."""

    def __init__(self, *, tid: int, crossings: int, now: float, patience: float) -> None:
        self.tid = tid
        self._crossings = crossings
        self.deadline = now + patience
        self.outcome: Outcome | None = None

    def check(self, now: float, *, active: int | None, crossings: int,
              state: TransportState | None, closed: bool) -> Outcome | None:
        """What the session says now (its active transport, its crossing
        count, the joined transport's state or None when it is gone, whether
        it closed); the outcome once there is one, else None (ask again)."""
        if self.outcome is not None:
            return self.outcome
        if active == self.tid:
            return self._end(Outcome.FOLLOWED)
        if crossings != self._crossings:
            return self._end(Outcome.ABANDONED)
        if closed or state is None:
            return self._end(Outcome.GONE)
        if now >= self.deadline and state is TransportState.STANDBY:
            return self._end(Outcome.SWITCH_HERE)
        return None

    def _end(self, outcome: Outcome) -> Outcome:
        self.outcome = outcome
        return outcome


T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Leftovers(Generic[T]):
    drop: list[T]  # to the old address, carrying nothing: let go now
    drain: T | None  # the one the session was on: let go once drained


def leftovers(carriers: Iterable[T], new: T, previous: T | None) -> Leftovers[T]:
    """After a move to `new`, what of `carriers` (every transport of the
    session) runs to the old address: all but `new`."""
    drop = [c for c in carriers if c is not new and c is not previous]
    return Leftovers(drop, previous if previous is not new else None)
