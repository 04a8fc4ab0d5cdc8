"""The replay buffer: this side's reliable frames, numbered, kept until acknowledged.

Every reliable frame gets the next sequence number of this direction when
it is queued, and stays here until the peer's cumulative ACK covers it:
first in `pending` (not yet in a record), then in `unacked` (sent on a
transport). A lost transport moves every unacknowledged frame back to the
front of `pending` (claim 6: the peer's mark says where to start again).

Frames are built once and kept as they are: an entry is
(seq, size, head, body), `body` being a DATA frame's payload (a view of the
application's read, roam.core.sendbuffer) and `head` the rest of the frame.
"""

from __future__ import annotations

from collections import deque

from roam.core import frames as fr
from roam.errors import ProtocolError

Buffer = bytes | memoryview
Entry = tuple[int, int, bytes, Buffer]


class ReplayBuffer:
    # A server holds one per session: slots. The deques are made when first
    # needed and dropped again when an idle session's keepalive finds both
    # empty: an empty deque is 0.6 KiB, and a server holds thousands.
    __slots__ = ("bytes", "next_seq", "pending", "unacked")

    def __init__(self) -> None:
        self.next_seq = 1
        self.pending: deque[Entry] | None = None
        self.unacked: deque[Entry] | None = None
        self.bytes = 0  # every entry's size, pending and unacked

    def seq(self) -> int:
        """The next sequence number, used up."""
        seq = self.next_seq
        self.next_seq += 1
        return seq

    def pend(self) -> deque[Entry]:
        if self.pending is None:
            self.pending = deque()
        return self.pending

    def queue(self, frame: fr.ReliableFrame) -> None:
        """A reliable frame numbered by `seq()` just before, as the last to send."""
        self.queue_raw(fr.encode(frame))

    def queue_raw(self, encoded: bytes) -> None:
        self.pend().append((self.next_seq - 1, len(encoded), encoded, b""))
        self.bytes += len(encoded)

    def acked(self, received: int) -> bool:
        """The peer has every frame up to `received`: forget them. True when
        a frame sent and not yet acknowledged is acknowledged now (progress)."""
        if received >= self.next_seq:
            raise ProtocolError(f"peer acknowledged {received}, beyond {self.next_seq - 1} sent")
        unacked = self.unacked
        progress = False
        while unacked and unacked[0][0] <= received:
            self.bytes -= unacked.popleft()[1]
            progress = True
        if not unacked:
            pending = self.pending
            # After a resume the peer may acknowledge frames still queued to resend.
            while pending and pending[0][0] <= received:
                self.bytes -= pending.popleft()[1]
        return progress

    def resend_all(self) -> tuple[int, int]:
        """Every sent, unacknowledged frame goes again, first: (frames, bytes)."""
        resent = list(self.unacked or ())
        self.unacked = None
        if resent:
            self.pend().extendleft(reversed(resent))
        return len(resent), sum(entry[1] for entry in resent)

    def release_if_empty(self) -> None:
        """An idle session gives its deques back until it carries data again."""
        if not self.pending and not self.unacked:
            self.pending = self.unacked = None
