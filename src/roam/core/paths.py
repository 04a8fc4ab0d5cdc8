"""The path manager's decisions: suspect paths, their backoff, address changes.

A path whose transport went silent, or on which a connect failed, is
*suspect* for a while: the policy sees it as not working, so a silent black
hole (the link stays up) is left like a dead link and not retried at once.
Suspicion is for what the links do not explain: a failure on a path whose
link is down is the link's doing and does not count, a link that comes back
up is tried afresh, and once the session works again on any path, failures
during the outage (which every path shared) are forgiven down to the first
step. The address the active transport leaves from going away is a reason
to resume from the new one at once (`links_changed` says so).

Sans-IO: every method takes `now`; the driver (roam.transport.pathmanager)
feeds link snapshots, failures and handovers, and runs what this returns.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass

from roam.links.state import LinkState
from roam.policy.policy import Decision, NoUsablePath, Policy

# A suspect path is avoided this long at first, doubling on each new failure:
# long enough not to retry a black hole at once, short enough that a path
# that comes back is used again within a minute.
SUSPECT_FIRST = 2.0
SUSPECT_MAX = 60.0


@dataclass(frozen=True, slots=True)
class Suspect:
    until: float
    backoff: float  # seconds it was made suspect for, last time
    reason: str


@dataclass(frozen=True, slots=True)
class Rebind:
    """The active path lost the address its transport leaves from: resume on
    a new transport on the same path now, rather than wait for silence."""

    path: str
    reason: str


class PathDecisions:
    """The links as last seen, which paths are suspect, and what follows."""

    def __init__(self, policy: Policy) -> None:
        self.policy = policy
        self.links: dict[str, LinkState] = {}
        self.suspects: dict[str, Suspect] = {}
        self._order = {p.name: i for i, p in enumerate(policy.paths)}

    # ---- failures and successes ------------------------------------------------

    def failed(self, name: str, why: str, now: float) -> float | None:
        """A transport on `name` failed (`why`): the seconds it is now suspect
        for, or None when its link being down explains the failure (counting
        it would keep the path banned, doubling, for up to a minute after the
        link is back)."""
        if not self.policy.works(name, self.links):
            return None
        old = self.suspects.get(name)
        backoff = min(SUSPECT_MAX, (old.backoff if old else SUSPECT_FIRST / 2) * 2)
        self.suspects[name] = Suspect(now + backoff, backoff, why)
        return backoff

    def worked(self, name: str, now: float) -> None:
        """The session works again on `name`: it is not suspect, and the
        others' failures in the outage just ended count as one failure each."""
        self.suspects.pop(name, None)
        for other, s in list(self.suspects.items()):
            if s.until <= now:
                del self.suspects[other]
            elif s.backoff > SUSPECT_FIRST:
                self.suspects[other] = Suspect(min(s.until, now + SUSPECT_FIRST),
                                               SUSPECT_FIRST, s.reason)

    def suspect(self, name: str, now: float) -> Suspect | None:
        s = self.suspects.get(name)
        return s if s is not None and s.until > now else None

    # ---- links -------------------------------------------------------------------

    def links_changed(self, links: Mapping[str, LinkState],
                      current: str | None) -> Rebind | None:
        """A new snapshot of the links; a Rebind when the current path's
        transport lost its source address (then the policy waits for it)."""
        before, self.links = self.links, dict(links)
        for name in list(self.suspects):
            if not self.policy.works(name, before) and self.policy.works(name, self.links):
                # A link that comes back is a new chance: what failed on it
                # before it went down says nothing about it now.
                del self.suspects[name]
        old = before.get(current) if current else None
        new = self.links.get(current) if current else None
        if (current and old is not None and new is not None and new.addresses
                and set(old.addresses) - set(new.addresses)):
            gone = ", ".join(sorted(set(old.addresses) - set(new.addresses)))
            return Rebind(current, f"{current} lost address {gone}")
        return None

    def effective(self, now: float) -> dict[str, LinkState]:
        """Link states as the policy should see them: suspect paths do not work."""
        out = dict(self.links)
        for name, s in self.suspects.items():
            link = out.get(name)
            if s.until > now and link is not None:
                out[name] = dataclasses.replace(link, up=False)
        return out

    # ---- choices -----------------------------------------------------------------

    def ranked(self, now: float, current: str | None) -> list[str]:
        """Paths in the policy's order of preference, usable ones first."""
        views = self.policy.explain(now, self.effective(now), current)
        views.sort(key=lambda v: (not v.usable, not v.works, v.priority, self._order[v.name]))
        return [v.name for v in views]

    def backup(self, now: float, current: str | None,
               excluded: frozenset[str] = frozenset()) -> str | None:
        """The path a hard handover would go to now: the best other usable
        one, not among `excluded`."""
        links = self.effective(now)
        for name in self.ranked(now, current):
            if name != current and name not in excluded and self.policy.works(name, links):
                return name
        return None

    def decide(self, now: float, current: str | None, idle_for: float,
               pinned: str | None) -> Decision | NoUsablePath | None:
        """Where the session should be: a Decision to move, NoUsablePath, or
        None to stay. A pinned path that works keeps it (the caller unpins
        one that stopped working: `pinned_works`)."""
        links = self.effective(now)
        if pinned is not None and self.policy.works(pinned, links):
            return None
        decision = self.policy.decide(now, links, current, idle_for)
        if isinstance(decision, Decision) and decision.target == current:
            return None
        return decision

    def pinned_works(self, pinned: str, now: float) -> bool:
        return self.policy.works(pinned, self.effective(now))
