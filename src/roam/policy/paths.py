"""`--path NAME:dev=IFACE[,...]`: the paths a unit may carry its session on.

A path here is the local half of design section 2's "path": a name the
operator, the event log and `roam status` use, the device it leaves by, and
what the policy needs to rank it (priority, kind, billing, thresholds). The
remote half (the peer's address, relays) is the same for every path of a
session and is configured elsewhere.

    --path 'wifi:dev=wlan0,priority=10,kind=wifi,min-signal=20'
    --path 'cell:dev=wwan0,priority=50,kind=cellular,billing=time,idle-switch=30'
    --path 'lte:dev=wwan1,priority=60,kind=cellular,redundant=no'
    --path 'wifi-relayed:dev=wlan0,priority=20,via=dmz'   (through relays: via=r1+r2)

`via` names relays (`--relay`, roam.relay.route): a path through relays on
a device is a path of its own beside the direct one on the same device, and
the policy ranks them alike.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable
from dataclasses import dataclass

from roam.errors import ConfigError
from roam.links.state import Billing, LinkKind

# A route metric's default scale: an operator who sets priorities on some
# paths only (say wifi=10, cell=50) gets the unset ones ranked after them.
DEFAULT_PRIORITY = 100

# Names appear unquoted in the event log, in `roam status` and in the policy's
# reason sentences, so they stay short and free of separators and spaces.
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
_INT = re.compile(r"-?[0-9]+")
_SECONDS = re.compile(r"[0-9]+(\.[0-9]+)?|\.[0-9]+")

_KEYS = ("dev", "priority", "kind", "billing", "idle-switch", "min-signal", "redundant", "via")
_YES_NO = {"yes": True, "no": False}


@dataclass(frozen=True, slots=True)
class PathConfig:
    """One configured path.

    `priority` works like a route metric: the LOWER number is MORE preferred.
    `idle_switch` (seconds, time-billed paths only): once the session has
    moved no application bytes for this long, leave this path for a usable
    per-byte one. `min_signal`: below it the path is not usable (its units
    are whatever the link driver reports; drivers without a signal ignore it).
    `redundant` (default yes): redundant datagram channels (`--forward
    udp:...,redundant`) may send their copies on this path when it is the
    backup; no keeps the doubled traffic off it (a path billed by the byte),
    and the copies go to the next usable path that allows them, if any.
    """

    name: str
    device: str
    priority: int = DEFAULT_PRIORITY
    kind: LinkKind = LinkKind.ETHERNET
    billing: Billing = Billing.BYTE
    idle_switch: float | None = None
    min_signal: int | None = None
    redundant: bool = True
    via: tuple[str, ...] = ()  # relay names, in route order

    def __post_init__(self) -> None:
        problem = _problem(self)
        if problem is not None:
            raise ConfigError(f"path {self.name!r}: {problem}")

    @classmethod
    def parse(cls, text: str) -> PathConfig:
        """Parse the command-line form; a ConfigError names the problem.

        `NAME:dev=IFACE[,priority=N][,kind=wifi|cellular|ethernet|circuit]
        [,billing=byte|time][,idle-switch=SECONDS][,min-signal=N][,redundant=yes|no]`
        """

        def fail(problem: str) -> ConfigError:
            return ConfigError(f"--path {text!r}: {problem}")

        name, sep, rest = text.partition(":")
        name = name.strip()
        if not sep:
            raise fail("expected NAME:dev=IFACE[,priority=N][,kind=K][,billing=B]"
                       "[,idle-switch=SECONDS][,min-signal=N][,redundant=yes|no][,via=R1+R2]")
        if not name:
            raise fail("the path needs a name before ':'")
        settings: dict[str, str] = {}
        for item in rest.split(","):
            key, eq, value = (part.strip() for part in item.partition("="))
            if not eq:
                if not key:
                    raise fail("empty setting (a stray ',')")
                raise fail(f"setting {key!r} needs a value ({key}=...)")
            if key not in _KEYS:
                raise fail(f"unknown setting {key!r} (known: {', '.join(sorted(_KEYS))})")
            if key in settings:
                raise fail(f"{key!r} is given twice")
            if not value:
                raise fail(f"{key!r} needs a value")
            settings[key] = value
        if "dev" not in settings:
            raise fail("missing dev=IFACE (the device this path leaves by)")

        priority = DEFAULT_PRIORITY
        if "priority" in settings:
            value = settings["priority"]
            if not _INT.fullmatch(value):
                raise fail(f"priority {value!r} is not a whole number")
            priority = int(value)
        kind = LinkKind.ETHERNET
        if "kind" in settings:
            value = settings["kind"]
            try:
                kind = LinkKind(value.lower())
            except ValueError:
                known = "|".join(k.value for k in LinkKind)
                raise fail(f"unknown kind {value!r} (known: {known})") from None
        billing = Billing.BYTE
        if "billing" in settings:
            value = settings["billing"]
            try:
                billing = Billing(value.lower())
            except ValueError:
                known = "|".join(b.value for b in Billing)
                raise fail(f"unknown billing {value!r} (known: {known})") from None
        idle_switch: float | None = None
        if "idle-switch" in settings:
            value = settings["idle-switch"]
            if not _SECONDS.fullmatch(value):
                raise fail(f"idle-switch {value!r} is not a number of seconds")
            idle_switch = float(value)
            if idle_switch <= 0:
                raise fail(f"idle-switch {value!r} is not a positive number of seconds")
        min_signal: int | None = None
        if "min-signal" in settings:
            value = settings["min-signal"]
            if not _INT.fullmatch(value):
                raise fail(f"min-signal {value!r} is not a whole number")
            min_signal = int(value)
        redundant = True
        if "redundant" in settings:
            value = settings["redundant"]
            if value.lower() not in _YES_NO:
                raise fail(f"redundant {value!r} is not yes or no")
            redundant = _YES_NO[value.lower()]
        via = tuple(part.strip() for part in settings.get("via", "").split("+")) \
            if "via" in settings else ()

        try:
            return cls(name=name, device=settings["dev"], priority=priority, kind=kind,
                       billing=billing, idle_switch=idle_switch, min_signal=min_signal,
                       redundant=redundant, via=via)
        except ConfigError as exc:
            # The checks shared with direct construction name the path; on the
            # command line the whole flag is the better pointer.
            message = str(exc).removeprefix(f"path {name!r}: ")
            raise fail(message) from None


def parse_paths(texts: Iterable[str]) -> list[PathConfig]:
    """Every `--path`, in the order given (the policy's tie-break); names must differ."""
    paths: list[PathConfig] = []
    seen: set[str] = set()
    for text in texts:
        path = PathConfig.parse(text)
        if path.name in seen:
            raise ConfigError(f"--path {text!r}: a path named {path.name!r} is already "
                              "configured")
        seen.add(path.name)
        paths.append(path)
    return paths


def _problem(path: PathConfig) -> str | None:
    """What is wrong with a path's settings, or None: shared by parse and construction."""
    # Settings may arrive from a TOML file rather than through parse, so the
    # types are checked at run time too; `object` keeps those checks honest.
    name: object = path.name
    device: object = path.device
    priority: object = path.priority
    kind: object = path.kind
    billing: object = path.billing
    idle_switch: object = path.idle_switch
    min_signal: object = path.min_signal
    redundant: object = path.redundant
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        return ("a path name is letters, digits, '.', '_' and '-', starting with a letter "
                "or digit")
    if (not isinstance(device, str) or not device
            or any(c.isspace() or c in ",:=" for c in device)):
        return f"dev {device!r} is not a device name"
    # bool is an int subclass: priority=true in a file is a mistake, not priority 1.
    if isinstance(priority, bool) or not isinstance(priority, int):
        return f"priority {priority!r} is not a whole number"
    if priority < 0:
        return f"priority {priority} is negative (0 is the most preferred)"
    if not isinstance(kind, LinkKind):
        return f"kind {kind!r} is not one of {'|'.join(k.value for k in LinkKind)}"
    if not isinstance(billing, Billing):
        return f"billing {billing!r} is not one of {'|'.join(b.value for b in Billing)}"
    if idle_switch is not None:
        if billing is not Billing.TIME:
            # Idle costs nothing on a per-byte path: a threshold there would
            # never mean anything, so it is most likely set on the wrong path.
            return "idle-switch only applies to a path with billing=time"
        if (isinstance(idle_switch, bool) or not isinstance(idle_switch, int | float)
                or not math.isfinite(idle_switch) or idle_switch <= 0):
            return f"idle-switch {idle_switch!r} is not a positive number of seconds"
    if min_signal is not None and (isinstance(min_signal, bool)
                                   or not isinstance(min_signal, int)):
        return f"min-signal {min_signal!r} is not a whole number"
    if not isinstance(redundant, bool):
        return f"redundant {redundant!r} is not yes or no"
    via: object = path.via
    if not isinstance(via, tuple) or not all(isinstance(v, str) and _NAME.fullmatch(v)
                                             for v in via):
        return f"via {via!r} is not relay names joined by '+' (via=r1+r2)"
    return None
