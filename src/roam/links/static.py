"""A link driver that takes the configuration's word for it.

Every configured attachment is present and up for as long as the driver
runs; nothing is watched. Addresses are read once, at start, from the
system through rtnetlink when it can be read; where it cannot (no pyroute2,
not Linux, the device missing), a path simply has no addresses. The driver
has no way to know signal strength.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping

from roam.links.driver import LinkDriver, Watcher
from roam.links.state import LinkState

log = logging.getLogger(__name__)


class StaticDriver(LinkDriver):
    kind = "static"
    reports_signal = False

    def __init__(self, devices: Mapping[str, str]) -> None:
        super().__init__(devices)
        self._states: dict[str, LinkState] = {
            path: LinkState(name=path, present=True, up=True) for path in self._devices
        }

    async def start(self, watcher: Watcher) -> None:
        self._begin(watcher)
        addresses = await read_addresses(set(self._devices.values()))
        self._states = {
            path: LinkState(name=path, present=True, up=True,
                            addresses=addresses.get(device, ()))
            for path, device in self._devices.items()
        }
        self._notify()

    def snapshot(self) -> dict[str, LinkState]:
        return dict(self._states)

    async def close(self) -> None:
        self._closed = True
        self._watcher = None


async def read_addresses(devices: set[str]) -> dict[str, tuple[str, ...]]:
    """Usable addresses of each device that can be read; the others are left out.

    pyroute2's sockets need asyncio's own event loop; on any other (uvloop,
    the daemons' default, refuses AF_NETLINK endpoints) the read runs on an
    asyncio loop of its own in a worker thread, as the linux driver's does.
    """
    try:
        # Imported here so that a host without pyroute2 can still run this driver.
        from pyroute2 import AsyncIPRoute  # type: ignore[import-untyped]
        from pyroute2.netlink.exceptions import NetlinkError  # type: ignore[import-untyped]

        from roam.links.linux import pyroute2_runs_on, read_device
    except ImportError as exc:
        log.info("static link driver: cannot read interface addresses (%s); "
                 "paths will have none", exc)
        return {}

    async def read() -> dict[str, tuple[str, ...]]:
        found: dict[str, tuple[str, ...]] = {}
        try:
            query = AsyncIPRoute()
        except OSError as exc:
            log.info("static link driver: cannot open rtnetlink (%s); paths will have no "
                     "addresses", exc)
            return {}
        try:
            for device in sorted(devices):
                try:
                    index, _present, _up, addresses = await read_device(query, device)
                except (OSError, NetlinkError) as exc:
                    log.info("static link driver: cannot read %s (%s); it will have no "
                             "addresses", device, exc)
                    continue
                if index is None:
                    log.info("static link driver: no interface %s on this host; it will have "
                             "no addresses", device)
                    continue
                found[device] = addresses
        finally:
            query.close()
        return found

    if pyroute2_runs_on(asyncio.get_running_loop()):
        return await read()
    # Read once, at start: a thread and a loop for the few milliseconds it takes.
    return await asyncio.to_thread(asyncio.run, read())
