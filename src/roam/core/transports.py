"""One transport of a session, as the core keeps it (docs/protocol.md 5.2).

A session may have several transports at once, on different paths: one is
this side's *active* transport, which carries its new reliable frames; the
others are *standbys*, alive and measured (PING, PONG) and ready to take over
without a connect or a handshake. Each has its own liveness and RTT, its
own queue of control frames (PINGs, PONGs, and the frames that open or
switch it), and its own record-size ramp (RFC 6928's initial window).
Its role is the TRANSPORT table of roam.core.states.
"""

from __future__ import annotations

from roam.core.delivery import Delivery
from roam.core.liveness import Liveness
from roam.core.states import TRANSPORT, TransportInput, TransportState

# The first record on a new transport holds at most this much, and each next
# one twice as much, up to max_record_payload. A record is usable only whole,
# and a new TCP connection sends 10 segments (~14 KB, RFC 6928) in its first
# round trip, doubling after: records that grow the same way reach the
# application a round trip at a time instead of all after the largest.
FIRST_RECORD = 4 * 1024


class Transport:
    # Sessions hold one or two for as long as they live: slots.
    __slots__ = ("control", "control_alone", "datagram_bytes", "delivery", "id", "joining",
                 "last_seq", "live", "probes", "record_limit", "state")

    def __init__(self, tid: int, now: float) -> None:
        self.id = tid
        self.state = TransportState.OPENING
        self.live = Liveness(now)
        self.delivery = Delivery()  # what TCP beneath says (roam.core.delivery)
        self.control: list[bytes] = []  # unreliable frames for this transport
        self.probes = 0  # PINGs and PONGs among them
        self.datagram_bytes = 0  # DGRAM frames among them
        self.record_limit = FIRST_RECORD
        # After a resume the control frames (RESUMED, ACK) leave in a record
        # of their own: a new TCP connection starts with a 10-segment window
        # (RFC 6928), and a 128 KiB first record would hold RESUMED back for
        # three or four round trips of slow start.
        self.control_alone = False
        # The highest sequence number sent on it: until the peer acknowledges
        # it, losing this transport loses frames that must go again.
        self.last_seq = 0
        # Client: it sent JOIN (else RESUME), and JOINED (else RESUMED) must come.
        self.joining = False

    def move(self, event: TransportInput) -> None:
        after = TRANSPORT.get(self.state, event)
        self.state = after if after is not None else TRANSPORT.next(self.state, event,
                                                                    f"transport {self.id}")

    @property
    def usable(self) -> bool:
        """Resumed or joined: it may carry the session."""
        return self.state is TransportState.ACTIVE or self.state is TransportState.STANDBY

    def clear(self) -> None:
        self.control.clear()
        self.probes = 0
        self.datagram_bytes = 0
