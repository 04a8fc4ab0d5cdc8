"""A mobile server: its own networks, the one it is reached on, and telling
its peers when that changes (claim 16; docs/mobility.md).

A server with `--path` options has networks as a client has paths, watched
by a link driver and chosen by the same policy (roam.policy): preference,
dwell, a network that fails. The chosen network's addresses, on the port
the server listens on, are where it says it can be reached: first in its
registrations, and in a MOVE to every session's client whenever the choice
changes. A planned move (`roam switch NAME --server`, or a better network
that has dwelled) is soft: MOVE leaves on the old network while it still
works and each client opens a transport to the new address, joins it, and
switches without a pause. A network that fails is hard: the MOVE may not
get through, the client's resume to the old address fails, and it asks the
registrars, which the server told at once.

The decisions are the policy's (sans-IO); this driver moves them to the
sessions, the registrations and the log.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import logging
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from roam.connector.allow import format_host_port
from roam.control.eventlog import EventLog
from roam.links.driver import LinkDriver
from roam.links.emulated import change_link
from roam.links.state import LinkState
from roam.policy.policy import Decision, NoUsablePath, Policy
from roam.tasks import Tasks
from roam.transport.driver import SessionDriver
from roam.transport.server import Server

log = logging.getLogger("roam")

# The policy's dwell and a falling signal act on time alone: look again this
# often (the client's path manager's tick).
TICK = 0.5
HISTORY = 50


@dataclass(frozen=True)
class Move:
    """One change of the network a server is reached on."""

    kind: str  # initial, soft, hard
    origin: str | None
    target: str
    reason: str
    addresses: tuple[str, ...]
    sessions: int  # told by MOVE
    at: float  # wall clock


class ServerNetworks:
    """Which of its networks a server is reached on, and who hears of a change."""

    def __init__(self, policy: Policy, driver: LinkDriver, port: int, server: Server,
                 changed: Callable[[], None], events: EventLog | None = None) -> None:
        self.policy = policy
        self.driver = driver
        self.port = port
        self.server = server
        self._changed = changed
        self.events = events or EventLog(None)
        self.current: str | None = None
        self.pinned: str | None = None
        self.history: deque[Move] = deque(maxlen=HISTORY)
        self._links: Mapping[str, LinkState] = {}
        self._tasks = Tasks("server networks")

    async def start(self) -> None:
        await self.driver.start(self._links_changed)
        self._links = self.driver.snapshot()
        self._evaluate()
        self._tasks.spawn(self._ticker(), name="network-policy")

    async def close(self) -> None:
        await self._tasks.close()
        await self.driver.close()

    def addresses(self) -> list[str]:
        """Where this server can be reached, best first: the chosen network's
        addresses, then the other usable networks' (a client that cannot
        reach the first may reach another)."""
        order = [self.current] if self.current is not None else []
        order += [p.name for p in self.policy.paths
                  if p.name != self.current and self.policy.usable(p.name, self._links)]
        out: list[str] = []
        for name in order:
            link = self._links.get(name)
            for address in link.addresses if link is not None else ():
                if not address.startswith("emulated"):
                    out.append(format_host_port(address, self.port))
        return out

    def _links_changed(self, links: Mapping[str, LinkState]) -> None:
        before = self.addresses()
        self._links = links
        self._evaluate()
        if self.addresses() != before:
            # An address came or went without a move (a second address, a
            # backup network up or down): the registrations say it.
            self._changed()

    async def _ticker(self) -> None:
        while True:
            await asyncio.sleep(TICK)
            self._evaluate()

    def _evaluate(self) -> None:
        now = time.monotonic()
        if self.pinned is not None:
            if self.policy.works(self.pinned, self._links):
                return
            log.info("pinned network %s stopped working; the policy chooses again",
                     self.pinned)
            self.pinned = None
        decision = self.policy.decide(now, self._links, self.current, 0.0)
        if isinstance(decision, NoUsablePath):
            log.warning("server: %s", decision.reason)
            self.events.write("network", state="none usable", reason=decision.reason)
        elif isinstance(decision, Decision):
            self._move(decision.target, decision.kind.value, decision.reason)

    def _local_on_current(self, driver: SessionDriver, tid: int | None) -> bool:
        """Transport `tid` arrived at an address of the current network."""
        proto = driver.carriers().get(tid) if tid is not None else None
        sockname = (proto.transport.get_extra_info("sockname")
                    if proto is not None and proto.transport is not None else None)
        link = self._links.get(self.current) if self.current is not None else None
        if not sockname or link is None:
            return False
        return str(sockname[0]) in link.addresses

    def _joined(self, driver: SessionDriver, tid: int) -> None:
        """A client followed the MOVE: its transport to the new address
        joined. This unit began the handover, so it switches (SWITCH), and
        the client follows; if the client switched elsewhere meanwhile, the
        two cross and the client's stands (claim 17)."""
        session = driver.session
        if (session.closed or not self._local_on_current(driver, tid)
                or self._local_on_current(driver, session.active_transport)):
            return
        session.switch(tid, asyncio.get_running_loop().time(),
                       reason=f"this server moved to {self.current}")
        driver.flush()

    def switch(self, name: str) -> dict[str, Any]:
        """`roam switch NAME --server`: be reached on network NAME now (a
        planned, soft move) and stay there while it works; `auto` gives the
        choice back to the policy."""
        if name == "auto":
            self.pinned = None
            self._evaluate()
            return {"pinned": None, "current": self.current}
        if name not in {p.name for p in self.policy.paths}:
            known = ", ".join(p.name for p in self.policy.paths)
            raise ValueError(f"no network {name!r} (known: {known})")
        if not self.policy.works(name, self._links):
            raise ValueError(f"network {name} does not work now")
        self.pinned = name
        if name != self.current:
            self._move(name, "soft", "asked for")
        return {"pinned": name, "current": self.current}

    def _move(self, target: str, kind: str, reason: str) -> None:
        origin, self.current = self.current, target
        addresses = tuple(self.addresses())
        told = 0
        if origin is not None and addresses:
            for driver in list(self.server.sessions.values()):
                if driver.session.closed:
                    continue
                driver.on_joined = functools.partial(self._joined, driver)
                driver.session.announce_move(addresses)
                driver.flush()
                told += 1
        move = Move(kind, origin, target, reason, addresses, told, time.time())
        self.history.append(move)
        log.info("server network %s -> %s (%s, %s): reached at %s; %d sessions told",
                 origin, target, kind, reason, ", ".join(addresses) or "no address", told)
        self.events.write("move", type=kind, **{"from": origin}, to=target, reason=reason,
                          addresses=list(addresses), sessions=told)
        self._changed()

    def set_link(self, name: str, change: str) -> dict[str, Any]:
        """`roam link NAME up|down|signal=N --server` (emulated links only)."""
        return dataclasses.asdict(change_link(self.driver, name, change, "server"))

    def status(self) -> dict[str, Any]:
        return {
            "current": self.current,
            "pinned": self.pinned,
            "addresses": self.addresses(),
            "networks": [{"name": v.name, "usable": v.usable, "reason": v.reason,
                          "current": v.current}
                         for v in self.policy.explain(time.monotonic(), self._links,
                                                      self.current)],
            "moves": [{"type": m.kind, "from": m.origin, "to": m.target, "reason": m.reason,
                       "addresses": list(m.addresses), "sessions": m.sessions, "at": m.at}
                      for m in self.history],
        }
