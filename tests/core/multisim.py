"""Two sessions joined by several in-memory transports, on a virtual clock.

Each transport is a pair of wires (one per direction) with a delay of its
own; it can be black-holed (everything sent from then on, and everything in
flight, vanishes, while both ends still think it works), cut (a reset: what
is in flight is lost and both ends are told), or paused on one side (that
side reads nothing, as a Python peer in a long GC pause). With `kernel`, each
wire also counts what the TCP beneath delivered, as Linux's tcpi_delivered
(roam.core.delivery): the peer's host acknowledges each payload a round trip
after it left, paused or not, and a lost segment under repair (`repair`)
holds what follows from the peer's session, not from its host.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

from roam.core import events as ev
from roam.core.session import Session, SessionConfig
from tests.core.sim import Applications, Stream


@dataclass
class Link:
    delay: float  # one way, seconds
    up: deque[tuple[float, bytes]] = field(default_factory=deque)  # to the server
    down: deque[tuple[float, bytes]] = field(default_factory=deque)  # to the client
    black_hole: bool = False
    # The beneath: when each payload's TCP ACK comes back, per direction
    # ("up": sent by the client), and how many of them came.
    acks: dict[str, deque[float]] = field(
        default_factory=lambda: {"up": deque(), "down": deque()})
    acked: dict[str, int] = field(default_factory=lambda: {"up": 0, "down": 0})
    # A lost segment being repaired: nothing on the wire reaches the
    # receiving session before then (everything after the hole waits).
    held_until: dict[str, float] = field(default_factory=lambda: {"up": 0.0, "down": 0.0})


class MultiPair(Applications):
    def __init__(self, config: SessionConfig | None = None, delay: float = 0.005,
                 kernel: bool = False) -> None:
        self.now = 0.0
        self.kernel = kernel
        self.client = Session(is_client=True, now=0.0, config=config)
        self.server = Session(is_client=False, now=0.0, config=config)
        self.links: dict[int, Link] = {0: Link(delay)}
        self.client.transport_attached(0.0, resume=False, tid=0)
        self.server.transport_attached(0.0, resume=False, tid=0)
        self.up: dict[int, Stream] = {}
        self.down: dict[int, Stream] = {}
        self.events: list[tuple[str, ev.Event]] = []
        self.paused_until = {"client": 0.0, "server": 0.0}
        # When each side's application got its last bytes: the longest
        # silence an application saw is what a handover costs it.
        self.last_delivery = {"client": 0.0, "server": 0.0}
        self.longest_gap = {"client": 0.0, "server": 0.0}
        self._readable(0)

    # ---- transports ------------------------------------------------------------

    def join(self, tid: int, delay: float) -> None:
        """A standby transport on another path: JOIN and JOINED."""
        self.links[tid] = Link(delay)
        self.client.join_transport(tid, self.now)
        self.server.transport_attached(self.now, resume=True, tid=tid)
        self._readable(tid)

    def _readable(self, tid: int) -> None:
        """Both ends read what TCP beneath `tid` delivered, if the pair has it."""
        if self.kernel:
            for side in (self.client, self.server):
                side.delivery_read(tid, self.now, self._delivered(side, tid))

    def _delivered(self, side: Session, tid: int) -> int | None:
        link = self.links.get(tid)
        if link is None:
            return None
        way = "up" if side is self.client else "down"
        acks = link.acks[way]
        while acks and acks[0] <= self.now:
            acks.popleft()
            link.acked[way] += 1
        wire = link.up if way == "up" else link.down
        in_flight = bool(acks) or (link.black_hole and bool(wire)) or bool(
            link.held_until[way] > self.now and wire)
        return link.acked[way] if in_flight else None

    def repair(self, tid: int, seconds: float, way: str = "down") -> None:
        """A segment on `tid` was lost and TCP repairs it after `seconds` (its
        RTO): the receiving session gets nothing from that wire until then,
        while the receiving host acknowledges (SACKs) everything after it."""
        self.links[tid].held_until[way] = self.now + seconds

    def cut(self, tid: int) -> None:
        """Transport `tid` resets: what is in flight is lost, both ends are told."""
        link = self.links.pop(tid)
        link.up.clear()
        link.down.clear()
        self.client.transport_lost(self.now, tid)
        self.server.transport_lost(self.now, tid)

    def resume(self, tid: int, delay: float) -> None:
        """Every transport is gone; the client resumes on a new one (RESUME)."""
        self.links = {tid: Link(delay)}
        self.client.transport_lost(self.now)
        self.client.transport_attached(self.now, resume=True, tid=tid)
        self.server.transport_attached(self.now, resume=True, tid=tid)
        self._readable(tid)

    def black_hole(self, tid: int) -> None:
        link = self.links[tid]
        link.black_hole = True
        # What was in flight vanishes, its TCP ACKs with it; the marker
        # keeps it in flight as the sender's kernel sees it.
        for way, wire in (("up", link.up), ("down", link.down)):
            if wire or link.acks[way]:
                wire.clear()
                wire.append((self.now, b""))
            link.acks[way].clear()

    def pause(self, side: str, seconds: float) -> None:
        self.paused_until[side] = self.now + seconds

    # ---- the clock -------------------------------------------------------------------

    def step(self, dt: float = 0.001) -> None:
        self.now += dt
        now = self.now
        for name, side in (("client", self.client), ("server", self.server)):
            if now < self.paused_until[name]:
                continue
            t = side.get_timer()
            if t is not None and t <= now:
                due = side.delivery_due(now)
                if due is not None:
                    side.delivery_read(due, now, self._delivered(side, due))
                side.handle_timer(now)
            for tid in list(side.transport_ids()):
                link = self.links.get(tid)
                payloads = side.payloads_to_send(now, tid=tid)
                if link is None or link.black_hole:
                    if link is not None and payloads:
                        # Into the hole: in flight for good, never acknowledged.
                        (link.up if side is self.client else link.down).append((now, b""))
                    continue
                way = "up" if side is self.client else "down"
                wire = link.up if way == "up" else link.down
                wire.extend((now + link.delay, p) for p in payloads)
                link.acks[way].extend(now + 2 * link.delay for _ in payloads)
        for tid, link in list(self.links.items()):
            if link.black_hole:
                continue
            for wire, name, dst, way in ((link.up, "server", self.server, "up"),
                                         (link.down, "client", self.client, "down")):
                if now < self.paused_until[name] or now < link.held_until[way]:
                    continue  # its socket buffers fill; nothing is lost
                while wire and wire[0][0] <= now:
                    _, payload = wire.popleft()
                    if tid in dst.transport_ids():
                        dst.receive_payload(payload, now, tid)
        self._drain_events()

    def run(self, steps: int = 200, dt: float = 0.001) -> None:
        for _ in range(steps):
            self.step(dt)

    def _drain_events(self) -> None:
        for name, side, streams in (("server", self.server, self.up),
                                    ("client", self.client, self.down)):
            for e in side.take_events():
                self.events.append((name, e))
                if isinstance(e, ev.ChannelOpenRequested):
                    side.accept_channel(e.channel)
                elif isinstance(e, ev.DataReceived):
                    streams[e.channel].received += e.data
                    side.consumed(e.channel, len(e.data))
                    gap = self.now - self.last_delivery[name]
                    self.longest_gap[name] = max(self.longest_gap[name], gap)
                    self.last_delivery[name] = self.now
                elif isinstance(e, ev.TransportDead):
                    link = self.links.pop(e.transport, None)
                    other = self.client if side is self.server else self.server
                    if link is not None:
                        other.transport_lost(self.now, e.transport)

    def switches(self, side: str = "client") -> list[ev.TransportSwitched]:
        return [e for name, e in self.events
                if name == side and isinstance(e, ev.TransportSwitched)]

    def exact(self) -> bool:
        return all(bytes(s.received) == bytes(s.sent)
                   for streams in (self.up, self.down) for s in streams.values())
