"""Crossing switches: when both units move the session at once (claim 17).

Either unit may switch the session to another of its transports (SWITCH,
docs/protocol.md 5.2): its own path changed, or its network did (a mobile
server). When both do so before hearing of the other's switch, two
handovers are under way toward different transports. The rule of the
invention settles it: the handover begun by the unit that created the
session (the client, which made the handshake) is pursued, and the other
unit abandons its own.

Each unit numbers its switches (1, 2, ...) and each SWITCH says the highest
serial of the receiver's switches its sender had heard of. A SWITCH whose
`seen` is below the receiver's own latest serial was sent before its sender
heard of that switch: the two crossed. Counting, not timing, decides, so
the rule holds whatever the delays. SWITCH frames travel on the transport
they name, so a later one can overtake an earlier one on another transport:
a serial no higher than one already heard is stale and changes nothing.

Sans-IO: no clock, no transport; the session (roam.core.session) asks and
acts on the verdict.
"""

from __future__ import annotations

from enum import Enum

from roam.errors import ProtocolError


class Verdict(Enum):
    """What a unit does with a peer's SWITCH."""

    FOLLOW = "follow"  # the peer switched knowing of ours: go there too
    STALE = "stale"  # overtaken by a later switch of the peer's: nothing moves
    KEEP_OURS = "keep ours"  # crossed ours, and this unit created the session
    YIELD = "yield"  # crossed ours, and the peer created it: ours is abandoned


class Switches:
    """The serials of one unit's switches and of its peer's."""

    __slots__ = ("creator", "seen", "sent", "target")

    def __init__(self, *, creator: bool) -> None:
        self.creator = creator
        self.sent = 0  # our latest switch's serial
        self.seen = 0  # the peer's latest switch we heard of
        # The transport our latest switch went to, while the peer may not
        # have heard of it (None once a crossing abandoned it).
        self.target: int | None = None

    def ours(self, tid: int) -> tuple[int, int]:
        """This unit switches to transport `tid`: the SWITCH's (serial, seen)."""
        self.sent += 1
        self.target = tid
        return self.sent, self.seen

    def theirs(self, serial: int, seen: int, tid: int, *, ours_alive: bool) -> Verdict:
        """The peer's SWITCH (`serial`, `seen`) to transport `tid` arrived.
        `ours_alive`: the transport of our latest switch can still carry the
        session (a switch to a transport that died since cannot win)."""
        if seen > self.sent:
            raise ProtocolError(f"SWITCH says it heard of our switch {seen}; we made "
                                f"{self.sent}")
        if serial <= self.seen:
            return Verdict.STALE
        self.seen = serial
        crossed = (seen < self.sent and self.target is not None and self.target != tid
                   and ours_alive)
        if not crossed:
            return Verdict.FOLLOW
        if self.creator:
            return Verdict.KEEP_OURS
        self.target = None
        return Verdict.YIELD
