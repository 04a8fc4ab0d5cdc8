"""What the layer beneath a transport says about delivery (TCP's own ACKs).

The session's ACKs stop advancing for two very different reasons. The path
may drop everything (a black hole: the session must move at once), or the
path delivers and the peer's application is behind: a lost segment that TCP
is repairing (everything after the hole waits in the peer's kernel until the
retransmission, after an RTO of at least 200 ms, Linux's TCP_RTO_MIN), or a
peer paused by a GC or a signal. Moving on the second kind makes a session
flap: in the lab, 5% loss on wifi moved it to cell and back about once a
minute (tests/system/test_redundant.py).

The kernel knows the difference. The segments the peer's TCP acknowledged
or SACKed (Linux's tcpi_delivered) keep counting while the path delivers,
and nothing of ours is in flight once the peer's kernel took it all. The
driver reads that count when the core asks (`Delivery.due`), from half the
stall time on; growth between two readings is dated at the earlier one, as
it happened after it, so a black hole is found no later than without them.

Sans-IO: the driver reads the socket; this only compares numbers and times.
"""

from __future__ import annotations

import math


class Delivery:
    """The readings of one transport's delivery count."""

    __slots__ = ("at", "count", "read_at", "reports")

    def __init__(self) -> None:
        self.reports = False  # the driver can read the layer beneath
        self.count: int | None = None
        self.read_at = -math.inf
        # The latest moment the path is known to have delivered.
        self.at = -math.inf

    def reading(self, now: float, count: int | None) -> None:
        """The layer beneath delivered `count` segments so far; None: nothing
        of ours is in flight there (whatever is unacknowledged reached the
        peer's host)."""
        if count is None:
            self.at = now
        elif self.count is not None and count != self.count and self.read_at > self.at:
            self.at = self.read_at
        self.reports = True
        self.count = count
        self.read_at = now

    def due(self, since: float, stall_after: float, interval: float) -> float | None:
        """When to read next, given no progress since `since` and a stall
        after `stall_after`: a first reading halfway (the baseline), then
        one every `interval`. None when the driver cannot read."""
        if not self.reports:
            return None
        return max(since + stall_after / 2, self.read_at + interval)
