"""Two sessions joined by several in-memory transports, on a virtual clock.

Each transport is a pair of wires (one per direction) with a delay of its
own; it can be black-holed (everything sent from then on, and everything in
flight, vanishes, while both ends still think it works), cut (a reset: what
is in flight is lost and both ends are told), or paused on one side (that
side reads nothing, as a Python peer in a long GC pause).
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


class MultiPair(Applications):
    def __init__(self, config: SessionConfig | None = None, delay: float = 0.005) -> None:
        self.now = 0.0
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

    # ---- transports ------------------------------------------------------------

    def join(self, tid: int, delay: float) -> None:
        """A standby transport on another path: JOIN and JOINED."""
        self.links[tid] = Link(delay)
        self.client.join_transport(tid, self.now)
        self.server.transport_attached(self.now, resume=True, tid=tid)

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

    def black_hole(self, tid: int) -> None:
        link = self.links[tid]
        link.black_hole = True
        link.up.clear()
        link.down.clear()

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
                side.handle_timer(now)
            for tid in list(side.transport_ids()):
                link = self.links.get(tid)
                payloads = side.payloads_to_send(now, tid=tid)
                if link is None or link.black_hole:
                    continue
                wire = link.up if side is self.client else link.down
                wire.extend((now + link.delay, p) for p in payloads)
        for tid, link in list(self.links.items()):
            for wire, name, dst in ((link.up, "server", self.server),
                                    (link.down, "client", self.client)):
                if now < self.paused_until[name]:
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
