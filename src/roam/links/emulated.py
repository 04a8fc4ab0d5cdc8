"""A link driver whose state is set at run time, for the demo and the tests.

Nothing here looks at the system: the control socket calls the setters and
the driver reports whatever it was told. Every path starts present, up, with
the placeholder address `emulated:<path>` and no signal. The placeholder is
deliberately not an IP address, so nothing mistakes it for a source address
to bind; `set_addresses` replaces it with real ones.

The fields are independent: an absent link may still read as up, because the
emulator exists to put the policy in any state, including odd ones.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Mapping
from dataclasses import replace

from roam.errors import ConfigError
from roam.links.driver import LinkDriver, Watcher
from roam.links.state import LinkState

PLACEHOLDER_PREFIX = "emulated:"


def placeholder_address(path: str) -> str:
    """The address an emulated path reports until `set_addresses` is called."""
    return f"{PLACEHOLDER_PREFIX}{path}"


class EmulatedDriver(LinkDriver):
    """State set through `set_up`, `set_present`, `set_signal` and `set_addresses`.

    Each setter that changes something calls the watcher (once started) with
    the full snapshot; setting a value a path already has is not a change and
    calls nothing.
    """

    kind = "emulated"
    reports_signal = True

    def __init__(self, devices: Mapping[str, str]) -> None:
        super().__init__(devices)
        self._states: dict[str, LinkState] = {
            path: LinkState(name=path, present=True, up=True,
                            addresses=(placeholder_address(path),), signal=None)
            for path in self._devices
        }

    async def start(self, watcher: Watcher) -> None:
        self._begin(watcher)
        self._notify()

    def snapshot(self) -> dict[str, LinkState]:
        return dict(self._states)

    async def close(self) -> None:
        self._closed = True
        self._watcher = None

    def set_up(self, path: str, up: bool) -> None:
        if not isinstance(up, bool):
            raise ConfigError(f"emulated path {path!r}: up must be true or false, not {up!r}")
        self._put(replace(self._get(path), up=up))

    def set_present(self, path: str, present: bool) -> None:
        if not isinstance(present, bool):
            raise ConfigError(f"emulated path {path!r}: present must be true or false, "
                              f"not {present!r}")
        self._put(replace(self._get(path), present=present))

    def set_signal(self, path: str, value: int | None) -> None:
        """Set the signal strength; None means unknown, and the policy then ignores it."""
        # bool is an int subclass, and a stray true/false from the control
        # socket would otherwise read as signal 1 or 0.
        if value is not None and (not isinstance(value, int) or isinstance(value, bool)):
            raise ConfigError(f"emulated path {path!r}: signal must be an integer or none, "
                              f"not {value!r}")
        self._put(replace(self._get(path), signal=value))

    def set_addresses(self, path: str, addresses: Iterable[str]) -> None:
        """Replace the path's addresses; each must be a textual IPv4 or IPv6 address."""
        if isinstance(addresses, str):
            # A bare string is iterable too, and would be split into characters.
            raise ConfigError(f"emulated path {path!r}: addresses must be a list of "
                              f"addresses, not the single string {addresses!r}")
        old = self._get(path)
        parsed: list[str] = []
        for text in addresses:
            try:
                parsed.append(str(ipaddress.ip_address(text)))
            except ValueError:
                raise ConfigError(f"emulated path {path!r}: {text!r} is not an IP "
                                  f"address") from None
        self._put(replace(old, addresses=tuple(parsed)))

    def _get(self, path: str) -> LinkState:
        state = self._states.get(path)
        if state is None:
            raise self._unknown_path(path)
        return state

    def _put(self, new: LinkState) -> None:
        if self._states[new.name] == new:
            return
        self._states[new.name] = new
        self._notify()
