"""A link driver whose state is set at run time, for the demo and the tests.

Nothing here looks at the system: the control socket calls the setters and
the driver reports whatever it was told. Every path starts present, up, with
the placeholder address `emulated:<path>` and no signal. The placeholder is
deliberately not an IP address, so nothing mistakes it for a source address
to bind; `set_addresses` replaces it with real ones. A path whose device is
itself an IP address starts with that address instead: on loopback, each
emulated network of a test or the demo is one of 127.0.0.0/8's addresses.

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


def _address_of(path: str, device: str) -> str:
    try:
        return str(ipaddress.ip_address(device))
    except ValueError:
        return placeholder_address(path)


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
                            addresses=(_address_of(path, device),), signal=None)
            for path, device in self._devices.items()
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


def change_link(driver: LinkDriver, name: str, change: str, who: str) -> LinkState:
    """`roam link NAME up|down|signal=N`: only the emulated driver takes it
    (`who` names the daemon in the error)."""
    if not isinstance(driver, EmulatedDriver):
        raise ConfigError(f"roam link changes emulated links; this {who} runs --links "
                          f"{driver.kind}")
    if change in ("up", "down"):
        driver.set_up(name, change == "up")
    elif change.startswith("signal="):
        value = change.removeprefix("signal=")
        try:
            driver.set_signal(name, None if value == "none" else int(value))
        except ValueError:
            raise ConfigError(f"signal={value!r}: not a whole number") from None
    else:
        raise ConfigError(f"unknown link change {change!r}: up, down or signal=N")
    return driver.snapshot()[name]
