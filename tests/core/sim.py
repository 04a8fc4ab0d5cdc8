"""Two sessions pumped through an in-memory wire with a virtual clock.

The wire is a queue of record plaintexts per direction; breaking it drops a
chosen number of records still in flight, as a reset or a black hole does.
"""

from __future__ import annotations

import hashlib
from collections import deque
from dataclasses import dataclass, field

from roam.core import events as ev
from roam.core.compress import CompressionMode
from roam.core.session import Session, SessionConfig
from roam.core.states import SessionState


@dataclass
class Stream:
    """What one application wrote into a channel and what its peer got."""

    sent: bytearray = field(default_factory=bytearray)
    received: bytearray = field(default_factory=bytearray)
    eof: bool = False


class Applications:
    """The applications at both ends: what each channel's writer sent."""

    client: Session
    server: Session
    up: dict[int, Stream]  # channel id -> what the client's side wrote and the server got
    down: dict[int, Stream]

    def open(self) -> int:
        cid = self.client.open_channel("echo.example", 7)
        self.up[cid] = Stream()
        self.down[cid] = Stream()
        return cid

    def write(self, cid: int, data: bytes, *, from_client: bool = True) -> None:
        side, streams = (self.client, self.up) if from_client else (self.server, self.down)
        side.send(cid, data)
        streams[cid].sent += data


class Pair(Applications):
    def __init__(self, config: SessionConfig | None = None,
                 compression: CompressionMode | None = None,
                 server_compression: CompressionMode | None = None,
                 history: bool = False) -> None:
        """`compression`: what the handshake negotiated, the client's mode (and
        the server's too unless `server_compression` gives its own); `history`:
        ZSTD_HISTORY was negotiated."""
        self.now = 0.0
        self.client = Session(is_client=True, now=0.0, config=config, compression=compression,
                              history=history)
        self.server = Session(is_client=False, now=0.0, config=config,
                              compression=server_compression or compression, history=history)
        self.client.transport_attached(0.0, resume=False)
        self.server.transport_attached(0.0, resume=False)
        self.to_server: deque[bytes] = deque()
        self.to_client: deque[bytes] = deque()
        # channel id -> streams in each direction
        self.up: dict[int, Stream] = {}
        self.down: dict[int, Stream] = {}
        self.events: list[ev.Event] = []
        self.auto_accept = True
        self.not_reading: set[int] = set()  # channels whose application stopped reading


    def step(self, dt: float = 0.001) -> None:
        self.now += dt
        for s in (self.client, self.server):
            t = s.get_timer()
            if t is not None and t <= self.now:
                s.handle_timer(self.now)
        self.to_server.extend(self.client.payloads_to_send(self.now))
        self.to_client.extend(self.server.payloads_to_send(self.now))
        while self.to_server:
            self.server.receive_payload(self.to_server.popleft(), self.now)
        while self.to_client:
            self.client.receive_payload(self.to_client.popleft(), self.now)
        self._drain_events()

    def run(self, steps: int = 200, dt: float = 0.001) -> None:
        for _ in range(steps):
            self.step(dt)

    def _drain_events(self) -> None:
        for side, streams in ((self.server, self.up), (self.client, self.down)):
            while (e := side.next_event()) is not None:
                self.events.append(e)
                if isinstance(e, ev.ChannelOpenRequested) and self.auto_accept:
                    side.accept_channel(e.channel)
                elif isinstance(e, ev.DataReceived):
                    streams[e.channel].received += e.data
                    if e.channel not in self.not_reading:
                        side.consumed(e.channel, len(e.data))
                elif isinstance(e, ev.EndOfStream):
                    streams[e.channel].eof = True

    def break_transport(self, keep_to_server: int = 0, keep_to_client: int = 0) -> None:
        """The transport dies: only the first `keep_*` records in flight arrive."""
        for wire, keep, dst in ((self.to_server, keep_to_server, self.server),
                                (self.to_client, keep_to_client, self.client)):
            kept = list(wire)[:keep]
            wire.clear()
            for payload in kept:
                dst.receive_payload(payload, self.now)
        self._drain_events()
        self.client.transport_lost(self.now)
        self.server.transport_lost(self.now)

    def reattach(self) -> None:
        self.client.transport_attached(self.now, resume=True)
        self.server.transport_attached(self.now, resume=True)

    def soft_handover(self, token: int = 7, die_after: int | None = None) -> bool:
        """Claim 5 in memory: BEGIN, drain, READY, resume on a new wire.

        With `die_after`, the old transport dies after that many steps of the
        drain: the handover becomes hard. True when it completed softly.
        """
        self.client.begin_handover(token)
        steps = 0
        while not any(isinstance(e, ev.HandoverReady) for e in self.events):
            if die_after is not None and steps >= die_after:
                self.in_flight()
                self.break_transport()
                self.reattach()
                return False
            self.step()
            steps += 1
            if steps > 10_000:
                raise AssertionError("HANDOVER_READY never came")
        self.events = [e for e in self.events if not isinstance(e, ev.HandoverReady)]
        # The old wire is empty by construction: READY was the server's last frame.
        leftover = self.in_flight()
        self.to_server.clear()
        self.to_client.clear()
        self.reattach()
        return leftover == (0, 0)

    def in_flight(self) -> tuple[int, int]:
        """Records each side would put on the wire now (pulled and queued)."""
        self.to_server.extend(self.client.payloads_to_send(self.now))
        self.to_client.extend(self.server.payloads_to_send(self.now))
        return len(self.to_server), len(self.to_client)

    def heal_and_check(self, chans: list[int]) -> None:
        """A final transport and time to drain; then every byte of every channel
        arrived once, in order, and nothing is left to acknowledge."""
        if not self.attached():
            if self.client.state is not SessionState.DETACHED:
                self.break_transport()
            self.reattach()
        for _ in range(2000):
            self.step()
            if all(self.up[c].received == self.up[c].sent
                   and self.down[c].received == self.down[c].sent for c in chans):
                break
        for c in chans:
            assert bytes(self.up[c].received) == bytes(self.up[c].sent)
            assert bytes(self.down[c].received) == bytes(self.down[c].sent)
        self.run(20)  # the last ACKs (delayed by at most ack_delay)
        assert self.client.statistics().replay_bytes == 0
        assert self.server.statistics().replay_bytes == 0

    def attached(self) -> bool:
        return (self.client.state is SessionState.ATTACHED
                and self.server.state is SessionState.ATTACHED)


def digest(data: bytes | bytearray) -> str:
    return hashlib.sha256(data).hexdigest()[:16]
