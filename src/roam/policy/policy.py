"""Which path should carry the session now, and why (design section 5).

Pure: no I/O, no clock. The caller passes `now`, what the link drivers report
(keyed by path name), the current path and how long the session has moved no
application bytes; the policy answers with a handover to make, a report that
nothing is usable, or None. Its only memory is, per path, since when the path
has been continuously usable (the dwell clocks), and whether it has already
reported that nothing is usable.

The rules, in order:

1. No current path (start): INITIAL to the best usable path.
2. The current path is not usable: hand over to the best usable path, HARD
   when the current path no longer works (absent, down, no address), SOFT when
   it still works but its signal fell below its min-signal: the soft handover
   made before the link dies, while the old path can still carry the goodbye.
3. Dwell: the best path the session may use now has a lower priority number
   than the current one (an equal number is no reason to spend a handover)
   and has been usable continuously for `dwell` seconds: SOFT to it. Every
   observation of it unusable restarts its clock, so a path that flaps faster
   than the dwell time never attracts the session. Until it has dwelled the
   policy waits for it rather than settling for a lesser path, so that one
   improvement costs one handover: two switches by choice to better paths are
   at least `dwell` apart unless the session's traffic resumed in between.
4. Cost: the current path is billed per time, has an idle-switch T, the
   session has been idle for at least T, and a per-byte path is usable (for
   the dwell time, like any switch made by choice rather than necessity):
   SOFT to the best such path.
5. Nothing usable: one NoUsablePath per change into that state.

"The best" is the lowest priority number, ties going to the path configured
first. A time-billed path with an idle-switch T is not one "the session may
use now" while the session has been idle for T or longer: rule 3 would
otherwise carry an idle session straight back to the path rule 4 just left it
for, and a forced handover (rules 1 and 2) would land on a path rule 4 leaves
at once. Such a path is still taken when it is the only usable one.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from enum import Enum

from roam.errors import ConfigError
from roam.links.state import Billing, LinkState
from roam.policy.paths import PathConfig

# How long a path must stay usable before the session moves to it by choice:
# long enough to ride out a Wi-Fi reassociation or a brief fade at the edge of
# coverage (commonly a second or two), short next to a user walking back into
# coverage, so the better path carries the session a few seconds after it is
# stable. A wrong guess costs little either way: a handover loses nothing.
DEFAULT_DWELL = 3.0


class HandoverKind(Enum):
    INITIAL = "initial"  # first path of the session: nothing to hand over from
    SOFT = "soft"  # the old path still works: make before break
    HARD = "hard"  # the old path is gone: resume on the new one


@dataclass(frozen=True, slots=True)
class Decision:
    """Move the session to `target` (from `origin`, None at start), because `reason`."""

    kind: HandoverKind
    target: str
    origin: str | None
    reason: str


@dataclass(frozen=True, slots=True)
class NoUsablePath:
    """No path is usable; the session stays where it is (if anywhere) and waits."""

    reason: str


@dataclass(frozen=True, slots=True)
class PathView:
    """One path as `roam status` shows it.

    `reason` says why the path is not usable (None when it is);
    `dwell_remaining` is how long it must still stay usable before the policy
    would move to it by choice (0.0 once it has dwelled, None when unusable).
    """

    name: str
    priority: int
    current: bool
    usable: bool
    works: bool
    reason: str | None
    dwell_remaining: float | None


class Policy:
    """The path choice of design section 5, over a fixed list of paths.

    `decide` returns the same Decision on every call until the caller reports
    the new current path: the caller knows whether a handover is already under
    way and ignores a repeat; the policy does not guess.
    """

    def __init__(self, paths: Iterable[PathConfig], *, dwell: float = DEFAULT_DWELL) -> None:
        d: object = dwell
        if isinstance(d, bool) or not isinstance(d, int | float) or not math.isfinite(d) or d < 0:
            raise ConfigError(f"dwell {dwell!r} is not a number of seconds >= 0")
        self._paths = tuple(paths)
        self._dwell = dwell
        self._by_name: dict[str, PathConfig] = {}
        for path in self._paths:
            if path.name in self._by_name:
                raise ConfigError(f"path {path.name!r} is configured twice")
            self._by_name[path.name] = path
        self._order = {path.name: i for i, path in enumerate(self._paths)}
        # Per path: the `now` of the first decide call in the current unbroken
        # run of calls that saw it usable. Absent: unusable at the last call.
        self._usable_since: dict[str, float] = {}
        # The reason last reported while nothing is usable; None while
        # something is, so the next loss is reported again.
        self._no_usable: str | None = None

    @property
    def paths(self) -> tuple[PathConfig, ...]:
        return self._paths

    @property
    def dwell(self) -> float:
        return self._dwell

    # What a path's link state means. A path the policy does not know, or one
    # missing from `links`, can carry nothing: neither works nor usable.

    def works(self, path: str, links: Mapping[str, LinkState]) -> bool:
        """The link could still carry bytes (present, up, addressed), good signal or not."""
        return path in self._by_name and _works(links.get(path))

    def usable(self, path: str, links: Mapping[str, LinkState]) -> bool:
        """The session may be on this path: it works and its signal is not below threshold."""
        config = self._by_name.get(path)
        return config is not None and _problem(config, links.get(path)) is None

    def explain(
        self, now: float, links: Mapping[str, LinkState], current: str | None
    ) -> list[PathView]:
        """Every path in configuration order, for `roam status`; changes nothing.

        Dwell clocks are those of the last `decide` call: a path that became
        usable since then shows its whole dwell time remaining.
        """
        views = []
        for path in self._paths:
            link = links.get(path.name)
            problem = _problem(path, link)
            remaining: float | None = None
            if problem is None:
                since = self._usable_since.get(path.name)
                remaining = self._dwell if since is None else max(0.0, since + self._dwell - now)
            views.append(PathView(name=path.name, priority=path.priority,
                                  current=path.name == current, usable=problem is None,
                                  works=_works(link), reason=problem,
                                  dwell_remaining=remaining))
        return views

    def decide(
        self,
        now: float,
        links: Mapping[str, LinkState],
        current: str | None,
        idle_for: float,
    ) -> Decision | NoUsablePath | None:
        """What to do now; None when nothing should change.

        `links` is keyed by path name; `idle_for` is how long the session has
        moved no application bytes. Call it on every link event and
        periodically (the dwell and idle rules fire on time alone).
        """
        usable = [p for p in self._paths if _problem(p, links.get(p.name)) is None]
        self._tick(now, usable)
        if not usable:
            return self._report_nothing_usable(links)
        self._no_usable = None

        if current is None:
            target = self._best(usable, idle_for)
            return Decision(HandoverKind.INITIAL, target.name, None,
                            f"{target.name} (priority {target.priority}) is the best usable path")

        config = self._by_name.get(current)
        if config is None:
            target = self._best(usable, idle_for)
            return Decision(HandoverKind.HARD, target.name, current,
                            f"{current} is not a configured path")

        link = links.get(current)
        problem = _problem(config, link, fell=True)
        if problem is not None:
            target = self._best(usable, idle_for)
            kind = HandoverKind.SOFT if _works(link) else HandoverKind.HARD
            return Decision(kind, target.name, current, problem)

        # The current path is usable: any move from here is a choice, made
        # only towards a path that has stayed usable for the dwell time.
        allowed = [p for p in usable if not _idle_excluded(p, idle_for)]
        if allowed:
            best = min(allowed, key=self._rank)
            if best.priority < config.priority:
                held = now - self._usable_since[best.name]
                if held < self._dwell:
                    # Wait for it, and do not spend a handover on the cost
                    # rule meanwhile: within `dwell` it either dwells or drops.
                    return None
                return Decision(HandoverKind.SOFT, best.name, current,
                                f"{best.name} (priority {best.priority}) usable for "
                                f"{held:.1f} s")

        if _idle_excluded(config, idle_for):
            per_byte = [p for p in usable if p.billing is Billing.BYTE]
            if per_byte:
                cheap = min(per_byte, key=self._rank)
                if now - self._usable_since[cheap.name] >= self._dwell:
                    return Decision(HandoverKind.SOFT, cheap.name, current,
                                    f"{current} billed per time and idle for "
                                    f"{_seconds(idle_for)} s; {cheap.name} billed per byte")
        return None

    def _tick(self, now: float, usable: list[PathConfig]) -> None:
        """Advance the dwell clocks: start those newly usable, drop the rest."""
        names = {p.name for p in usable}
        for name in list(self._usable_since):
            if name not in names:
                del self._usable_since[name]
        for name in names:
            self._usable_since.setdefault(name, now)

    def _report_nothing_usable(self, links: Mapping[str, LinkState]) -> NoUsablePath | None:
        if self._no_usable is not None:
            return None
        problems = [_problem(p, links.get(p.name)) or "" for p in self._paths]
        reason = "no usable path: " + ("; ".join(problems) or "no paths are configured")
        self._no_usable = reason
        return NoUsablePath(reason)

    def _rank(self, path: PathConfig) -> tuple[int, int]:
        return path.priority, self._order[path.name]

    def _best(self, usable: list[PathConfig], idle_for: float) -> PathConfig:
        """The best usable path, passing over time-billed ones the session is too idle for."""
        allowed = [p for p in usable if not _idle_excluded(p, idle_for)]
        return min(allowed or usable, key=self._rank)


def _works(link: LinkState | None) -> bool:
    return link is not None and link.present and link.up and bool(link.addresses)


def _problem(path: PathConfig, link: LinkState | None, *, fell: bool = False) -> str | None:
    """Why `path` is not usable, as a sentence; None when it is usable.

    `fell` words a signal problem as a change, for the path the session is on.
    """
    if link is None or not link.present:
        return f"{path.name} is absent"
    if not link.up:
        return f"{path.name} is down"
    if not link.addresses:
        return f"{path.name} has no address"
    if path.min_signal is not None and link.signal is not None and link.signal < path.min_signal:
        verb = "fell" if fell else "is"
        return f"{path.name} signal {link.signal} {verb} below min-signal {path.min_signal}"
    return None


def _idle_excluded(path: PathConfig, idle_for: float) -> bool:
    """A time-billed path the session has been idle on for its idle-switch or longer."""
    return (path.billing is Billing.TIME and path.idle_switch is not None
            and idle_for >= path.idle_switch)


def _seconds(value: float) -> str:
    """Seconds for a reason sentence: '30', '2.5'."""
    return f"{value:.1f}".removesuffix(".0")
