from __future__ import annotations

import asyncio
import socket
import sys
import threading
from collections.abc import Coroutine, Mapping
from typing import Any, TypeVar

import pytest
import uvloop

from roam.links import static
from roam.links.state import LinkState
from roam.links.static import StaticDriver

# Reading the loopback interface's addresses changes nothing on the host.
DEVICES = {"loop": "lo", "ghost": "roamnosuch0"}


T = TypeVar("T")
# The daemons run on uvloop by default, where pyroute2 cannot open its sockets.
LOOPS = pytest.mark.parametrize("event_loop", ["asyncio", "uvloop"])


def run_on(event_loop: str, main: Coroutine[Any, Any, T]) -> T:
    factory = uvloop.new_event_loop if event_loop == "uvloop" else None
    with asyncio.Runner(loop_factory=factory) as runner:
        return runner.run(asyncio.wait_for(main, 10))


def start_and_close(driver: StaticDriver,
                    event_loop: str = "asyncio") -> list[dict[str, LinkState]]:
    seen: list[dict[str, LinkState]] = []
    home = threading.get_ident()

    def watcher(snapshot: Mapping[str, LinkState]) -> None:
        # On the loop that started the driver, whatever thread read the addresses.
        assert threading.get_ident() == home
        seen.append(dict(snapshot))

    async def main() -> None:
        await driver.start(watcher)
        # Nothing is watched: a pause brings no further calls.
        await asyncio.sleep(0.1)
        await driver.close()

    run_on(event_loop, main())
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
@LOOPS
def test_addresses_are_read_once_at_start(event_loop: str) -> None:
    driver = StaticDriver(DEVICES)
    assert driver.snapshot()["loop"].addresses == ()  # nothing read before start
    seen = start_and_close(driver, event_loop)
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


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads addresses via rtnetlink")
@LOOPS
def test_read_addresses_on_either_loop(event_loop: str) -> None:
    found = run_on(event_loop, static.read_addresses({"lo", "roamnosuch0"}))
    assert set(found) == {"lo"}
    assert "127.0.0.1" in found["lo"]
