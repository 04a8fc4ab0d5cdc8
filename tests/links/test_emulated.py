from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Mapping

import pytest

from roam.errors import ConfigError
from roam.links.emulated import EmulatedDriver, placeholder_address
from roam.links.state import LinkState

DEVICES = {"wifi": "wlan0", "cell": "wwan0"}


def last(seen: list[dict[str, LinkState]]) -> dict[str, LinkState]:
    # A call rather than seen[-1], so a type checker does not carry what one
    # assertion narrowed over to the next.
    return seen[-1]


def run(body: Callable[[EmulatedDriver, list[dict[str, LinkState]]], Awaitable[None]]) -> None:
    """Start a driver on DEVICES, run `body` with it and the snapshots it emitted."""
    seen: list[dict[str, LinkState]] = []

    def watcher(snapshot: Mapping[str, LinkState]) -> None:
        seen.append(dict(snapshot))

    async def main() -> None:
        driver = EmulatedDriver(DEVICES)
        await driver.start(watcher)
        try:
            await body(driver, seen)
        finally:
            await driver.close()

    asyncio.run(asyncio.wait_for(main(), 10))


def test_starts_present_up_with_a_placeholder_and_no_signal() -> None:
    async def body(driver: EmulatedDriver, seen: list[dict[str, LinkState]]) -> None:
        expected = {
            path: LinkState(name=path, present=True, up=True,
                            addresses=(f"emulated:{path}",), signal=None)
            for path in DEVICES
        }
        assert seen == [expected]
        assert driver.snapshot() == expected

    run(body)


def test_placeholder_is_not_an_ip_address() -> None:
    assert placeholder_address("wifi") == "emulated:wifi"


def test_set_up_emits_the_full_snapshot() -> None:
    async def body(driver: EmulatedDriver, seen: list[dict[str, LinkState]]) -> None:
        driver.set_up("wifi", False)
        assert len(seen) == 2
        assert set(last(seen)) == set(DEVICES)
        assert last(seen)["wifi"].up is False
        assert last(seen)["wifi"].present is True
        assert last(seen)["cell"] == seen[0]["cell"]
        driver.set_up("wifi", True)
        assert last(seen) == seen[0]

    run(body)


def test_set_present_emits_the_full_snapshot() -> None:
    async def body(driver: EmulatedDriver, seen: list[dict[str, LinkState]]) -> None:
        driver.set_present("cell", False)
        assert len(seen) == 2
        assert last(seen)["cell"].present is False
        # The fields are independent: the emulator can show any state.
        assert last(seen)["cell"].up is True
        assert last(seen)["wifi"] == seen[0]["wifi"]

    run(body)


def test_set_signal_emits_the_full_snapshot() -> None:
    async def body(driver: EmulatedDriver, seen: list[dict[str, LinkState]]) -> None:
        driver.set_signal("wifi", -67)
        assert last(seen)["wifi"].signal == -67
        driver.set_signal("wifi", 0)
        assert last(seen)["wifi"].signal == 0
        driver.set_signal("wifi", None)
        assert last(seen)["wifi"].signal is None
        assert len(seen) == 4
        assert all(set(s) == set(DEVICES) for s in seen)

    run(body)


def test_set_addresses_emits_the_full_snapshot_and_normalises() -> None:
    async def body(driver: EmulatedDriver, seen: list[dict[str, LinkState]]) -> None:
        driver.set_addresses("wifi", ("198.18.0.7", "2001:DB8:0::1"))
        assert last(seen)["wifi"].addresses == ("198.18.0.7", "2001:db8::1")
        driver.set_addresses("wifi", ())
        assert last(seen)["wifi"].addresses == ()
        assert last(seen)["cell"].addresses == ("emulated:cell",)
        assert len(seen) == 3

    run(body)


def test_setting_what_is_already_there_emits_nothing() -> None:
    async def body(driver: EmulatedDriver, seen: list[dict[str, LinkState]]) -> None:
        driver.set_up("wifi", True)
        driver.set_present("wifi", True)
        driver.set_signal("wifi", None)
        assert len(seen) == 1
        driver.set_addresses("wifi", [])
        driver.set_addresses("wifi", [])
        assert len(seen) == 2

    run(body)


@pytest.mark.parametrize("call", [
    lambda d: d.set_up("wimax", False),
    lambda d: d.set_present("wimax", False),
    lambda d: d.set_signal("wimax", -50),
    lambda d: d.set_addresses("wimax", ("198.18.0.1",)),
])
def test_unknown_path_names_the_known_ones(call: Callable[[EmulatedDriver], None]) -> None:
    driver = EmulatedDriver(DEVICES)
    with pytest.raises(ConfigError, match=r"no path 'wimax' \(known: cell, wifi\)"):
        call(driver)
    assert driver.snapshot() == EmulatedDriver(DEVICES).snapshot()


@pytest.mark.parametrize(("call", "message"), [
    (lambda d: d.set_up("wifi", "yes"), "up must be true or false"),
    (lambda d: d.set_present("wifi", 1), "present must be true or false"),
    (lambda d: d.set_signal("wifi", True), "signal must be an integer or none"),
    (lambda d: d.set_signal("wifi", -50.5), "signal must be an integer or none"),
    (lambda d: d.set_addresses("wifi", "198.18.0.1"), "not the single string"),
    (lambda d: d.set_addresses("wifi", ["198.18.0.1", "nowhere"]),
     "'nowhere' is not an IP address"),
])
def test_bad_values_are_refused_and_change_nothing(call: Callable[[EmulatedDriver], None],
                                                   message: str) -> None:
    driver = EmulatedDriver(DEVICES)
    with pytest.raises(ConfigError, match=message):
        call(driver)
    assert driver.snapshot() == EmulatedDriver(DEVICES).snapshot()


def test_changes_before_start_show_in_the_first_snapshot() -> None:
    seen: list[dict[str, LinkState]] = []

    async def main() -> None:
        driver = EmulatedDriver(DEVICES)
        driver.set_up("cell", False)
        assert seen == []
        await driver.start(lambda s: seen.append(dict(s)))
        assert len(seen) == 1
        assert seen[0]["cell"].up is False
        await driver.close()

    asyncio.run(asyncio.wait_for(main(), 10))


def test_no_watcher_calls_after_close() -> None:
    seen: list[dict[str, LinkState]] = []

    async def main() -> None:
        driver = EmulatedDriver(DEVICES)
        await driver.start(lambda s: seen.append(dict(s)))
        await driver.close()
        driver.set_up("wifi", False)
        assert driver.snapshot()["wifi"].up is False

    asyncio.run(asyncio.wait_for(main(), 10))
    assert len(seen) == 1


def test_snapshot_is_a_copy() -> None:
    driver = EmulatedDriver(DEVICES)
    snap = driver.snapshot()
    del snap["wifi"]
    assert set(driver.snapshot()) == set(DEVICES)
