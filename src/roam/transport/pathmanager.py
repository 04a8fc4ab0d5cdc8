"""The client's path manager: link drivers in, policy decisions, handovers out.

It feeds every link snapshot to the policy, runs the handover the policy
decides (soft when the old path still works, hard when it does not), tells
the client which path to try on each reconnect attempt, and keeps the
handover history for `roam status` and the event log.

A path whose transport went silent, or on which a connect failed, is
*suspect* for a while: the policy sees it as not working, so a silent black
hole (the link stays up) is left like a dead link and not retried at once.
Suspicion is for what the links do not explain: a failure on a path whose
link is down is the link's doing and does not count, a link that comes back
up is tried afresh, and once the session works again on any path, failures
during the outage (which every path shared) are forgiven down to the first
step. `roam status` shows a suspect path as such, with until when and why.
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
from roam.core.states import SessionState
from roam.errors import ConfigError, TransportError
from roam.links.driver import LinkDriver
from roam.links.emulated import EmulatedDriver
from roam.links.state import LinkState
from roam.policy.policy import Decision, HandoverKind, NoUsablePath, Policy
from roam.transport.client import Attachment, Client, HandoverRecord
from roam.transport.datagrams import ClientDatagrams

log = logging.getLogger("roam.paths")

# How often the policy is asked even without a link event: dwell clocks and
# idle timers run out on their own. A tenth of the default dwell (3 s).
TICK = 0.25
# A suspect path is avoided this long at first, doubling on each new failure:
# long enough not to retry a black hole at once, short enough that a path
# that comes back is used again within a minute.
SUSPECT_FIRST = 2.0
SUSPECT_MAX = 60.0
HISTORY = 100


@dataclasses.dataclass
class _PathCounters:
    bytes_sent: int = 0
    bytes_received: int = 0
    srtt: float | None = None


class PathManager:
    def __init__(self, client: Client, policy: Policy, driver: LinkDriver,
                 events: EventLog | None = None) -> None:
        self.client = client
        self.policy = policy
        self.driver = driver
        self.events = events or EventLog(None)
        self.history: deque[HandoverRecord] = deque(maxlen=HISTORY)
        self._links: Mapping[str, LinkState] = {}
        # path -> (until, backoff, why): monotonic time, seconds, the failure
        self._suspect: dict[str, tuple[float, float, str]] = {}
        self._busy = False
        # `roam switch NAME` pins the session to NAME: the policy's choices by
        # preference wait until that path stops working or `roam switch auto`.
        self._pinned: str | None = None
        self._task: asyncio.Task[None] | None = None
        self._standby_task: asyncio.Task[None] | None = None
        self._last_activity = time.monotonic()
        self._last_bytes = (0, 0)
        self._counters = {p.name: _PathCounters() for p in policy.paths}
        self._mark = (0, 0)  # session byte counters when the current path began
        # Paths set redundant=no: redundant datagrams send no copies there.
        self._no_copies = {p.name for p in policy.paths if not p.redundant}
        # Binding to a device needs CAP_NET_RAW; without it, the path's address.
        self._by_device = os.geteuid() == 0
        client.choose_attachment = self._choose
        client.on_attachment_failed = self._failed
        client.on_handover = self._handover_done
        client.on_lost = self._lost

    async def start(self) -> None:
        await self.driver.start(self._links_changed)
        self._links = self.driver.snapshot()
        self._task = asyncio.get_running_loop().create_task(self._ticker(), name="path-policy")

    async def close(self) -> None:
        for task in (self._task, self._standby_task):
            if task is not None:
                task.cancel()
        await self.driver.close()
        self.events.close()

    # ---- attachments ---------------------------------------------------------

    def attachment(self, name: str) -> Attachment:
        cfg = next((p for p in self.policy.paths if p.name == name), None)
        if cfg is None:
            known = ", ".join(p.name for p in self.policy.paths)
            raise ConfigError(f"no path {name!r} (known: {known})")
        if self._by_device:
            return Attachment(name, device=cfg.device)
        link = self._links.get(name)
        source = next((a for a in (link.addresses if link else ()) if ":" not in a
                       and not a.startswith("emulated")), None)
        return Attachment(name, source=source)

    def initial(self) -> Attachment | None:
        """The path to open the session on: the policy's first choice, if any."""
        decision = self.policy.decide(time.monotonic(), self._effective(), None, 0.0)
        if isinstance(decision, Decision):
            return self.attachment(decision.target)
        return None

    def _ranked(self) -> list[str]:
        """Paths in the policy's order of preference, usable ones first."""
        links = self._effective()
        views = self.policy.explain(time.monotonic(), links, self._current())
        order = {p.name: i for i, p in enumerate(self.policy.paths)}
        views.sort(key=lambda v: (not v.usable, not v.works, v.priority, order[v.name]))
        return [v.name for v in views]

    def _choose(self, attempt: int) -> Attachment | None:
        """Reconnect attempt n: rotate through the paths, best first."""
        ranked = self._ranked()
        if not ranked:
            return self.client.attachment
        return self.attachment(ranked[attempt % len(ranked)])

    def _lost(self, via: Attachment | None, why: str) -> None:
        if via is not None and len(self.policy.paths) > 1:
            self._make_suspect(via.name, why)

    def _failed(self, via: Attachment, why: str) -> None:
        self._make_suspect(via.name, why)

    def _make_suspect(self, name: str, why: str) -> None:
        if not self.policy.works(name, self._links):
            # The link is down (or gone, or has no address): that explains the
            # failure, and counting it would keep the path banned, doubling,
            # for up to a minute after the link is back.
            log.debug("path %s failed while its link is down (%s): not held against it",
                      name, why)
            return
        now = time.monotonic()
        _, backoff, _ = self._suspect.get(name, (0.0, SUSPECT_FIRST / 2, ""))
        backoff = min(SUSPECT_MAX, backoff * 2)
        self._suspect[name] = (now + backoff, backoff, why)
        log.info("path %s suspect for %.0f s: %s", name, backoff, why)
        self.events.write("path", name=name, state="suspect", seconds=backoff, reason=why)

    def _forgive(self, working: str) -> None:
        """The session works again on `working`: it is not suspect, and the
        others' failures in the outage just ended count as one failure each."""
        now = time.monotonic()
        self._suspect.pop(working, None)
        for name, (until, backoff, why) in list(self._suspect.items()):
            if until <= now:
                del self._suspect[name]
            elif backoff > SUSPECT_FIRST:
                self._suspect[name] = (min(until, now + SUSPECT_FIRST), SUSPECT_FIRST, why)

    # ---- link state and the policy -----------------------------------------------

    def _links_changed(self, links: Mapping[str, LinkState]) -> None:
        before, self._links = self._links, dict(links)
        self.events.write("links", links={k: dataclasses.asdict(v) for k, v in links.items()})
        for name in list(self._suspect):
            if (not self.policy.works(name, before)
                    and self.policy.works(name, self._links)):
                # A link that comes back is a new chance: what failed on it
                # before it went down says nothing about it now.
                del self._suspect[name]
        current = self._current()
        old = before.get(current) if current else None
        new = self._links.get(current) if current else None
        if (current and old is not None and new is not None and new.addresses
                and set(old.addresses) - set(new.addresses) and not self._busy):
            # The address our transport leaves from is gone: its packets (and
            # the answers to them) go nowhere now. Resume on a fresh transport
            # from the new address at once rather than wait for silence.
            gone = ", ".join(sorted(set(old.addresses) - set(new.addresses)))
            asyncio.get_running_loop().create_task(
                self._rebind(current, f"{current} lost address {gone}"), name="rebind")
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

    def _effective(self) -> dict[str, LinkState]:
        """Link states as the policy should see them: suspect paths do not work."""
        now = time.monotonic()
        out = dict(self._links)
        for name, (until, _, _) in list(self._suspect.items()):
            if until <= now:
                continue
            link = out.get(name)
            if link is not None:
                out[name] = dataclasses.replace(link, up=False)
        return out

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
        links = self._effective()
        if self._pinned is not None:
            if self.policy.works(self._pinned, links):
                self._keep_standby(links)
                return
            log.info("pinned path %s stopped working; the policy chooses again", self._pinned)
            self._pinned = None
        decision = self.policy.decide(time.monotonic(), links, self._current(),
                                      self._idle_for())
        if isinstance(decision, NoUsablePath):
            log.warning("%s", decision.reason)
            self.events.write("path", state="none usable", reason=decision.reason)
            return
        if decision is None or decision.target == self._current():
            self._keep_standby(links)
            return
        soft = decision.kind is HandoverKind.SOFT
        asyncio.get_running_loop().create_task(
            self._decided(decision.target, soft, decision.reason),
            name=f"handover-{decision.target}")

    # ---- the standby transport ------------------------------------------------

    def _backup(self, links: Mapping[str, LinkState], *, copies: bool = False) -> str | None:
        """The path a hard handover would go to now: the best other usable one
        (copies: of those that take redundant datagrams' copies)."""
        current = self._current()
        for name in self._ranked():
            if (name != current and not (copies and name in self._no_copies)
                    and self.policy.works(name, links)):
                return name
        return None

    def _keep_standby(self, links: Mapping[str, LinkState]) -> None:
        """Keep a standby transport parked on the backup path, and only there."""
        want = self._backup(links)
        self._tell_datagrams(self._backup(links, copies=True)
                             if want in self._no_copies else want)
        if self._standby_task is not None and not self._standby_task.done():
            return
        have = self.client.standby
        if have is not None and (have[1].lost or have[0].name != want):
            self.client.drop_standby()
            have = None
        if want is None or have is not None:
            return
        self._standby_task = asyncio.get_running_loop().create_task(
            self._open_standby(want), name=f"standby-{want}")

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
        self._forgive(record.target)
        self.history.append(record)
        self.events.write("handover", type=record.kind, reason=record.reason,
                          **{"from": record.origin}, to=record.target,
                          stall_ms=record.stall_ms, frames_resent=record.frames_resent)

    # ---- control -----------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        now = time.monotonic()
        wall = time.time()
        links = self._effective()
        current = self._current()
        driver = self.client.driver
        stats = driver.session.statistics() if driver is not None else None
        paths = []
        for view in self.policy.explain(now, links, current):
            link = self._links.get(view.name)
            counters = self._counters.get(view.name, _PathCounters())
            sent, received = counters.bytes_sent, counters.bytes_received
            srtt = counters.srtt
            if view.name == current and stats is not None:
                sent += stats.bytes_sent - self._mark[0]
                received += stats.bytes_received - self._mark[1]
                srtt = stats.srtt
            suspect = self._suspect.get(view.name)
            if suspect is not None and suspect[0] <= now:
                suspect = None
            reason = view.reason
            if suspect is not None and self.policy.works(view.name, self._links):
                # The policy saw it as down; the link is up: say what it is.
                until = wall + suspect[0] - now
                reason = (f"suspect until {time.strftime('%H:%M:%S', time.localtime(until))} "
                          f"({suspect[0] - now:.0f} s more): {suspect[2]}")
            paths.append({
                "name": view.name, "active": view.name == current, "usable": view.usable,
                "works": view.works, "reason": reason, "priority": view.priority,
                "present": link.present if link else False, "up": link.up if link else False,
                "addresses": list(link.addresses) if link else [],
                "signal": link.signal if link else None,
                "signal_known": self.driver.reports_signal,
                "rtt_ms": round(srtt * 1000, 2) if srtt is not None else None,
                "bytes_sent": sent, "bytes_received": received,
                "suspect_for": round(suspect[0] - now, 1) if suspect else None,
                "suspect_until": round(wall + suspect[0] - now, 1) if suspect else None,
                "suspect_reason": suspect[2] if suspect else None,
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
        if not isinstance(self.driver, EmulatedDriver):
            raise ConfigError(f"roam link changes emulated links; this client runs --links "
                              f"{self.driver.kind}")
        if change in ("up", "down"):
            self.driver.set_up(name, change == "up")
        elif change.startswith("signal="):
            value = change.removeprefix("signal=")
            try:
                self.driver.set_signal(name, None if value == "none" else int(value))
            except ValueError:
                raise ConfigError(f"signal={value!r}: not a whole number") from None
        else:
            raise ConfigError(f"unknown link change {change!r}: up, down or signal=N")
        return dataclasses.asdict(self.driver.snapshot()[name])
