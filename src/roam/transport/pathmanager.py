"""The client's path manager: link drivers in, policy decisions, handovers out.

It feeds every link snapshot and every failure to the decisions
(roam.core.paths: suspect paths, their backoff, address changes) and the
policy, runs the handover they decide (soft when the old path still works,
hard when it does not), tells the client which path to try on each
reconnect attempt, keeps a standby transport on the backup path, and keeps
the handover history for `roam status` and the event log, which shows a
suspect path as such, with until when and why.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import os
import time
from collections import deque
from collections.abc import Mapping
from typing import Any

from roam.control.eventlog import EventLog
from roam.core.paths import PathDecisions, Rebind
from roam.core.states import SessionState
from roam.errors import ConfigError, TransportError
from roam.links.driver import LinkDriver
from roam.links.emulated import change_link
from roam.links.state import LinkState
from roam.policy.policy import HandoverKind, NoUsablePath, Policy
from roam.relay.route import RelayHop
from roam.tasks import Tasks
from roam.transport.client import Attachment, Client, HandoverRecord
from roam.transport.datagrams import ClientDatagrams

log = logging.getLogger("roam.paths")

# How often the policy is asked even without a link event: dwell clocks and
# idle timers run out on their own. A tenth of the default dwell (3 s).
TICK = 0.25
HISTORY = 100


@dataclasses.dataclass
class _PathCounters:
    bytes_sent: int = 0
    bytes_received: int = 0
    srtt: float | None = None


class PathManager:
    def __init__(self, client: Client, policy: Policy, driver: LinkDriver,
                 events: EventLog | None = None,
                 routes: dict[str, tuple[RelayHop, ...]] | None = None) -> None:
        self.client = client
        self._routes = routes or {}  # path name -> its relays (via=)
        self.policy = policy
        self.driver = driver
        self.events = events or EventLog(None)
        self.history: deque[HandoverRecord] = deque(maxlen=HISTORY)
        self.paths = PathDecisions(policy)
        self._busy = False
        # `roam switch NAME` pins the session to NAME: the policy's choices by
        # preference wait until that path stops working or `roam switch auto`.
        self._pinned: str | None = None
        self._tasks = Tasks("path manager")
        self._standby_task: asyncio.Task[None] | None = None
        self._last_activity = time.monotonic()
        self._last_bytes = (0, 0)
        self._counters = {p.name: _PathCounters() for p in policy.paths}
        self._mark = (0, 0)  # session byte counters when the current path began
        # Paths set redundant=no: redundant datagrams send no copies there.
        self._no_copies = frozenset(p.name for p in policy.paths if not p.redundant)
        # Binding to a device needs CAP_NET_RAW; without it, the path's address.
        self._by_device = os.geteuid() == 0
        client.choose_attachment = self._choose
        client.on_attachment_failed = self._failed
        client.on_handover = self._handover_done
        client.on_lost = self._lost

    async def start(self) -> None:
        await self.driver.start(self._links_changed)
        self.paths.links_changed(self.driver.snapshot(), None)
        self._tasks.spawn(self._ticker(), name="path-policy")

    async def close(self) -> None:
        await self._tasks.close()
        await self.driver.close()
        self.events.close()

    # ---- attachments ---------------------------------------------------------

    def attachment(self, name: str) -> Attachment:
        cfg = next((p for p in self.policy.paths if p.name == name), None)
        if cfg is None:
            known = ", ".join(p.name for p in self.policy.paths)
            raise ConfigError(f"no path {name!r} (known: {known})")
        route = self._routes.get(name, ())
        if self._by_device:
            return Attachment(name, device=cfg.device, route=route)
        link = self.paths.links.get(name)
        source = next((a for a in (link.addresses if link else ()) if ":" not in a
                       and not a.startswith("emulated")), None)
        return Attachment(name, source=source, route=route)

    def initial(self) -> Attachment | None:
        """The path to open the session on: the policy's first choice, if any."""
        decision = self.paths.decide(time.monotonic(), None, 0.0, None)
        if decision is None or isinstance(decision, NoUsablePath):
            return None
        return self.attachment(decision.target)

    def _choose(self, attempt: int) -> Attachment | None:
        """Reconnect attempt n: rotate through the paths, best first."""
        ranked = self.paths.ranked(time.monotonic(), self._current())
        if not ranked:
            return self.client.attachment
        return self.attachment(ranked[attempt % len(ranked)])

    def _lost(self, via: Attachment | None, why: str) -> None:
        if via is not None and len(self.policy.paths) > 1:
            self._make_suspect(via.name, why)

    def _failed(self, via: Attachment, why: str) -> None:
        self._make_suspect(via.name, why)

    def _make_suspect(self, name: str, why: str) -> None:
        backoff = self.paths.failed(name, why, time.monotonic())
        if backoff is None:
            log.debug("path %s failed while its link is down (%s): not held against it",
                      name, why)
            return
        log.info("path %s suspect for %.0f s: %s", name, backoff, why)
        self.events.write("path", name=name, state="suspect", seconds=backoff, reason=why)

    # ---- link state and the policy -----------------------------------------------

    def _links_changed(self, links: Mapping[str, LinkState]) -> None:
        self.events.write("links", links={k: dataclasses.asdict(v) for k, v in links.items()})
        rebind = self.paths.links_changed(links, self._current())
        if isinstance(rebind, Rebind) and not self._busy:
            # The address our transport leaves from is gone: its packets (and
            # the answers to them) go nowhere now.
            self._tasks.spawn(self._rebind(rebind.path, rebind.reason), name="rebind")
            return
        asyncio.get_running_loop().call_soon(self._evaluate)

    async def _decided(self, name: str, soft: bool, reason: str) -> None:
        """A handover the policy decided: a failure is logged (and the path
        made suspect by switch), never left in a task nobody awaits."""
        try:
            await self.switch(name, soft=soft, reason=reason)
        except TransportError as exc:
            log.warning("handover to %s (%s) failed: %s", name, reason, exc)

    async def _rebind(self, name: str, reason: str) -> None:
        try:
            await self.switch(name, soft=False, reason=reason)
        except TransportError as exc:
            log.warning("%s: %s", reason, exc)

    def _current(self) -> str | None:
        att = self.client.attachment
        return att.name if att is not None else None

    def _idle_for(self) -> float:
        driver = self.client.driver
        now = time.monotonic()
        if driver is not None:
            stats = driver.session.statistics()
            current = (stats.bytes_sent, stats.bytes_received)
            if current != self._last_bytes:
                self._last_bytes = current
                self._last_activity = now
        return now - self._last_activity

    async def _ticker(self) -> None:
        while True:
            await asyncio.sleep(TICK)
            self._evaluate()

    def _evaluate(self) -> None:
        driver = self.client.driver
        if (self._busy or driver is None or driver.session.state is SessionState.CLOSED
                or self.client.reconnecting):
            # A lost transport is being replaced, best path first: let it finish
            # rather than race it with a second handover.
            return
        now = time.monotonic()
        if self._pinned is not None:
            if self.paths.pinned_works(self._pinned, now):
                self._keep_standby()
                return
            log.info("pinned path %s stopped working; the policy chooses again", self._pinned)
            self._pinned = None
        decision = self.paths.decide(now, self._current(), self._idle_for(), None)
        if isinstance(decision, NoUsablePath):
            log.warning("%s", decision.reason)
            self.events.write("path", state="none usable", reason=decision.reason)
            return
        if decision is None:
            self._keep_standby()
            return
        soft = decision.kind is HandoverKind.SOFT
        self._tasks.spawn(self._decided(decision.target, soft, decision.reason),
                          name=f"handover-{decision.target}")

    # ---- the standby transport ------------------------------------------------

    def _keep_standby(self) -> None:
        """Keep a standby transport parked on the backup path, and only there."""
        now, current = time.monotonic(), self._current()
        want = self.paths.backup(now, current)
        # Redundant datagrams' copies go to the backup, or the best path
        # after it that takes them.
        self._tell_datagrams(self.paths.backup(now, current, self._no_copies)
                             if want in self._no_copies else want)
        if ((self._standby_task is not None and not self._standby_task.done())
                or self.client.following):
            return
        have = self.client.standby
        if have is not None and (have[1].lost or have[0].name != want):
            self.client.drop_standby()
            have = None
        if want is None or have is not None:
            return
        self._standby_task = self._tasks.spawn(self._open_standby(want),
                                               name=f"standby-{want}")

    def _tell_datagrams(self, backup: str | None) -> None:
        """Redundant datagram channels send a copy on the backup path too: the
        datagram side binds its second socket there, as this path's transports
        are bound (the device, or the address without root)."""
        driver = self.client.driver
        datagrams = driver.datagrams if driver is not None else None
        if not isinstance(datagrams, ClientDatagrams):
            return
        if backup is None:
            datagrams.set_backup(None)
            return
        where = self.attachment(backup)
        datagrams.set_backup(where.name, where.device, where.source)

    async def _open_standby(self, name: str) -> None:
        driver = self.client.driver
        timeout = max(1.0, 3 * driver.session.rtt.rto) if driver is not None else 5.0
        try:
            await self.client.prepare_standby(self.attachment(name), timeout)
        except TransportError as exc:
            # Suspect, so the next try waits (and a hard handover prefers
            # another path while this one cannot even connect).
            self._make_suspect(name, f"standby: {exc}")
            return
        self.events.write("path", name=name, state="standby")

    def pin(self, name: str | None) -> None:
        self._pinned = name
        self.events.write("path", state="pinned" if name else "automatic", name=name)

    async def switch(self, name: str, *, soft: bool = True, reason: str = "asked for",
                     pin: bool = False) -> None:
        """Hand the session over to path `name` now (soft if the old path allows)."""
        target = self.attachment(name)
        driver = self.client.driver
        if (soft and name == self._current() and driver is not None and driver.proto is not None
                and driver.session.state is SessionState.ATTACHED):
            # Already there: a handover to the same path would only cost a
            # stall (a hard one to it is a rebind, for a new address).
            if pin:
                self.pin(name)
            return
        if self._busy:
            raise TransportError("a handover is already under way")
        self._busy = True
        try:
            await self.client.handover(target, soft=soft, reason=reason)
            if pin:
                self.pin(name)
        except TransportError as exc:
            self._make_suspect(name, str(exc))
            self.events.write("handover_failed", to=name, reason=reason, error=str(exc))
            raise
        finally:
            self._busy = False

    def _handover_done(self, record: HandoverRecord) -> None:
        driver = self.client.driver
        if driver is not None:
            stats = driver.session.statistics()
            old = self._counters.get(record.origin or "")
            if old is not None:
                old.bytes_sent += stats.bytes_sent - self._mark[0]
                old.bytes_received += stats.bytes_received - self._mark[1]
                old.srtt = stats.srtt
            self._mark = (stats.bytes_sent, stats.bytes_received)
        if record.kind == "hard" and record.origin and record.origin != record.target:
            self._make_suspect(record.origin, record.reason)
        self.paths.worked(record.target, time.monotonic())
        self.history.append(record)
        self.events.write("handover", type=record.kind, reason=record.reason,
                          **{"from": record.origin}, to=record.target,
                          stall_ms=record.stall_ms, frames_resent=record.frames_resent)

    # ---- control -----------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        now = time.monotonic()
        wall = time.time()
        links = self.paths.effective(now)
        current = self._current()
        driver = self.client.driver
        stats = driver.session.statistics() if driver is not None else None
        paths = []
        for view in self.policy.explain(now, links, current):
            link = self.paths.links.get(view.name)
            counters = self._counters.get(view.name, _PathCounters())
            sent, received = counters.bytes_sent, counters.bytes_received
            srtt = counters.srtt
            if view.name == current and stats is not None:
                sent += stats.bytes_sent - self._mark[0]
                received += stats.bytes_received - self._mark[1]
                srtt = stats.srtt
            suspect = self.paths.suspect(view.name, now)
            reason = view.reason
            if suspect is not None and self.policy.works(view.name, self.paths.links):
                # The policy saw it as down; the link is up: say what it is.
                until = wall + suspect.until - now
                reason = (f"suspect until {time.strftime('%H:%M:%S', time.localtime(until))} "
                          f"({suspect.until - now:.0f} s more): {suspect.reason}")
            paths.append({
                "name": view.name, "active": view.name == current, "usable": view.usable,
                # The relays this path goes through, in order; [] is direct.
                "route": [hop.name for hop in self._routes.get(view.name, ())],
                "works": view.works, "reason": reason, "priority": view.priority,
                "present": link.present if link else False, "up": link.up if link else False,
                "addresses": list(link.addresses) if link else [],
                "signal": link.signal if link else None,
                "signal_known": self.driver.reports_signal,
                "rtt_ms": round(srtt * 1000, 2) if srtt is not None else None,
                "bytes_sent": sent, "bytes_received": received,
                "suspect_for": round(suspect.until - now, 1) if suspect else None,
                "suspect_until": round(wall + suspect.until - now, 1) if suspect else None,
                "suspect_reason": suspect.reason if suspect else None,
            })
        return {
            "active_path": current,
            "pinned": self._pinned,
            "links": self.driver.kind,
            "session": dataclasses.asdict(stats) if stats is not None else None,
            "channels": driver.session.channel_ids() if driver is not None else [],
            "udp": driver.datagrams.status() if driver and driver.datagrams else None,
            "standby": self.client.standby[0].name if self.client.standby else None,
            "transports": self.client.transport_roles(),
            "paths": paths,
            "handovers": [dataclasses.asdict(r) for r in self.history],
        }

    def set_link(self, name: str, change: str) -> dict[str, Any]:
        """`roam link NAME up|down|signal=N`: only the emulated driver takes it."""
        return dataclasses.asdict(change_link(self.driver, name, change, "client"))
