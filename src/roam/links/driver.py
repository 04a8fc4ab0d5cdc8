"""The common shape of every link driver (the patent's "drive routines").

A driver knows one kind of network attachment. It is configured with a map
from path name to interface name and reports, per path, a `LinkState`:
hardware present, up, addresses, and signal when it can know it.

Addresses are plain textual IP addresses ("198.18.0.1", "2001:db8::1"),
without prefix length, because their consumers use them as source addresses.
"""

from __future__ import annotations

import logging
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from typing import ClassVar

from roam.errors import ConfigError
from roam.links.state import LinkState

log = logging.getLogger(__name__)

Watcher = Callable[[Mapping[str, LinkState]], None]
"""Called with the full snapshot, keyed by path name, whenever it changes."""

KNOWN_KINDS: tuple[str, ...] = ("linux", "static", "emulated")


class LinkDriver(ABC):
    """Watches the attachments behind a set of paths.

    `start` calls the watcher once with the initial snapshot, then again with
    the full snapshot on every change; `snapshot` answers at any time. The
    watcher runs on the event loop and must not block it.
    """

    kind: ClassVar[str]
    reports_signal: ClassVar[bool]
    """False when this driver cannot know signal strength: its `signal` is always None."""

    def __init__(self, devices: Mapping[str, str]) -> None:
        for path, device in devices.items():
            if not isinstance(path, str) or not path:
                raise ConfigError(f"{self.kind} link driver: path name {path!r} must be a "
                                  f"non-empty string")
            if not isinstance(device, str) or not device:
                raise ConfigError(f"{self.kind} link driver: path {path!r} names interface "
                                  f"{device!r}; it must be a non-empty string")
        self._devices: dict[str, str] = dict(devices)
        self._watcher: Watcher | None = None
        self._started = False
        self._closed = False

    @property
    def devices(self) -> dict[str, str]:
        """Path name -> interface name, as configured."""
        return dict(self._devices)

    @abstractmethod
    async def start(self, watcher: Watcher) -> None:
        """Begin watching; calls `watcher` with the full snapshot now and on every change."""

    @abstractmethod
    def snapshot(self) -> dict[str, LinkState]:
        """The current state of every configured path, keyed by path name."""

    @abstractmethod
    async def close(self) -> None:
        """Stop watching and release what `start` acquired; safe to call more than once."""

    def _begin(self, watcher: Watcher) -> None:
        """Record the watcher; a driver watches for one owner, once."""
        if self._closed:
            raise RuntimeError(f"{self.kind} link driver is closed; make a new one")
        if self._started:
            raise RuntimeError(f"{self.kind} link driver is already started")
        self._started = True
        self._watcher = watcher

    def _notify(self) -> None:
        """Hand the watcher the full snapshot.

        A failing watcher is logged rather than raised: the exception would
        otherwise end the driver's watching (or the control call that caused
        the change), and every later change would go unreported.
        """
        if self._watcher is None or self._closed:
            return
        try:
            self._watcher(self.snapshot())
        except Exception:
            log.exception("%s link driver: the watcher failed on a new snapshot", self.kind)

    def _unknown_path(self, path: str) -> ConfigError:
        known = ", ".join(sorted(self._devices)) or "none"
        return ConfigError(f"{self.kind} link driver has no path {path!r} (known: {known})")


def make_driver(kind: str, devices: Mapping[str, str]) -> LinkDriver:
    """Build the driver named `kind` for `devices` (path name -> interface name)."""
    # Imported here: the drivers import this module, and only the linux driver
    # needs pyroute2, which a host running the static or emulated one may lack.
    if kind == "linux":
        try:
            from roam.links.linux import LinuxDriver
        except ImportError as exc:
            raise ConfigError(f"the linux link driver needs pyroute2>=0.9.1 with AsyncIPRoute "
                              f"({exc})") from exc
        return LinuxDriver(devices)
    if kind == "static":
        from roam.links.static import StaticDriver

        return StaticDriver(devices)
    if kind == "emulated":
        from roam.links.emulated import EmulatedDriver

        return EmulatedDriver(devices)
    raise ConfigError(f"unknown link driver {kind!r} (known: {', '.join(KNOWN_KINDS)})")
