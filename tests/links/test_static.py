from __future__ import annotations

import asyncio
import socket
import sys
from collections.abc import Mapping

import pytest

from roam.links import static
from roam.links.state import LinkState
from roam.links.static import StaticDriver

# Reading the loopback interface's addresses changes nothing on the host.
DEVICES = {"loop": "lo", "ghost": "roamnosuch0"}


def start_and_close(driver: StaticDriver) -> list[dict[str, LinkState]]:
    seen: list[dict[str, LinkState]] = []

    def watcher(snapshot: Mapping[str, LinkState]) -> None:
        seen.append(dict(snapshot))

    async def main() -> None:
        await driver.start(watcher)
        # Nothing is watched: a pause brings no further calls.
        await asyncio.sleep(0.1)
        await driver.close()

    asyncio.run(asyncio.wait_for(main(), 10))
    return seen


def test_every_path_is_present_and_up_without_signal() -> None:
    driver = StaticDriver(DEVICES)
    seen = start_and_close(driver)
    assert len(seen) == 1
    assert set(seen[0]) == set(DEVICES)
    for path, state in seen[0].items():
        assert state.name == path
        assert state.present is True
        assert state.up is True
        assert state.signal is None
    assert driver.snapshot() == seen[0]
    assert StaticDriver.reports_signal is False


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads addresses via rtnetlink")
def test_addresses_are_read_once_at_start() -> None:
    driver = StaticDriver(DEVICES)
    assert driver.snapshot()["loop"].addresses == ()  # nothing read before start
    seen = start_and_close(driver)
    assert "127.0.0.1" in seen[0]["loop"].addresses
    assert seen[0]["ghost"].addresses == ()
    for address in seen[0]["loop"].addresses:
        # Plain addresses, no prefix length.
        family = socket.AF_INET6 if ":" in address else socket.AF_INET
        socket.inet_pton(family, address)


def test_without_pyroute2_paths_have_no_addresses(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "pyroute2", None)
    driver = StaticDriver(DEVICES)
    seen = start_and_close(driver)
    assert all(s.addresses == () and s.present and s.up for s in seen[0].values())


def test_unreadable_device_is_left_out(monkeypatch: pytest.MonkeyPatch) -> None:
    async def broken(_query: object, name: str) -> tuple[int | None, bool, bool, tuple[str, ...]]:
        raise OSError(f"cannot read {name}")

    monkeypatch.setattr("roam.links.linux.read_device", broken)
    assert asyncio.run(asyncio.wait_for(static.read_addresses({"lo"}), 10)) == {}
