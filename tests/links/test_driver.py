from __future__ import annotations

import asyncio
import logging
import sys
from collections.abc import Mapping

import pytest

from roam.errors import ConfigError
from roam.links.driver import KNOWN_KINDS, LinkDriver, make_driver
from roam.links.emulated import EmulatedDriver
from roam.links.linux import LinuxDriver
from roam.links.state import LinkState
from roam.links.static import StaticDriver

DEVICES = {"wifi": "wlan0", "cell": "wwan0"}


@pytest.mark.parametrize(("kind", "cls", "signal"), [
    ("linux", LinuxDriver, False),
    ("static", StaticDriver, False),
    ("emulated", EmulatedDriver, True),
])
def test_make_driver_builds_each_kind(kind: str, cls: type[LinkDriver], signal: bool) -> None:
    driver = make_driver(kind, DEVICES)
    assert type(driver) is cls
    assert driver.kind == kind
    assert driver.reports_signal is signal
    assert driver.devices == DEVICES
    assert set(driver.snapshot()) == set(DEVICES)


def test_known_kinds_are_exactly_the_drivers() -> None:
    assert sorted(KNOWN_KINDS) == sorted(c.kind for c in (LinuxDriver, StaticDriver,
                                                          EmulatedDriver))


def test_unknown_kind_lists_the_known_ones() -> None:
    with pytest.raises(ConfigError, match="unknown link driver 'wimax'") as err:
        make_driver("wimax", DEVICES)
    for kind in KNOWN_KINDS:
        assert kind in str(err.value)


def test_driver_keeps_its_own_copy_of_devices() -> None:
    devices = dict(DEVICES)
    driver = make_driver("emulated", devices)
    devices["extra"] = "eth9"
    driver.devices["other"] = "eth8"
    assert driver.devices == DEVICES


@pytest.mark.parametrize("kind", KNOWN_KINDS)
def test_empty_path_name_is_refused(kind: str) -> None:
    with pytest.raises(ConfigError, match="path name '' must be a non-empty string"):
        make_driver(kind, {"": "eth0"})


@pytest.mark.parametrize("kind", KNOWN_KINDS)
def test_empty_interface_name_is_refused(kind: str) -> None:
    with pytest.raises(ConfigError, match="path 'wired' names interface ''"):
        make_driver(kind, {"wired": ""})


@pytest.mark.parametrize("name", [
    "a-name-far-too-long", "é" * 8,  # 16 bytes: the limit counts bytes, not characters
    "eth/0", "eth 0", " eth0", "eth0:1", "..",
])
def test_linux_refuses_names_no_interface_can_have(name: str) -> None:
    with pytest.raises(ConfigError, match="which no Linux interface can be called"):
        make_driver("linux", {"wired": name})


def test_linux_without_pyroute2_is_a_config_error(monkeypatch: pytest.MonkeyPatch) -> None:
    # None in sys.modules makes the import fail as if the module were missing.
    monkeypatch.setitem(sys.modules, "roam.links.linux", None)
    with pytest.raises(ConfigError, match="needs pyroute2"):
        make_driver("linux", DEVICES)


def test_start_twice_is_refused() -> None:
    async def main() -> None:
        driver = make_driver("emulated", DEVICES)
        await driver.start(lambda _s: None)
        with pytest.raises(RuntimeError, match="already started"):
            await driver.start(lambda _s: None)
        await driver.close()
        await driver.close()

    asyncio.run(asyncio.wait_for(main(), 10))


def test_start_after_close_is_refused() -> None:
    async def main() -> None:
        driver = make_driver("emulated", DEVICES)
        await driver.close()
        with pytest.raises(RuntimeError, match="closed"):
            await driver.start(lambda _s: None)

    asyncio.run(asyncio.wait_for(main(), 10))


def test_a_failing_watcher_is_logged_and_watching_goes_on(
        caplog: pytest.LogCaptureFixture) -> None:
    calls: list[Mapping[str, LinkState]] = []

    def watcher(snapshot: Mapping[str, LinkState]) -> None:
        calls.append(snapshot)
        raise ValueError("watcher bug")

    async def main() -> None:
        driver = EmulatedDriver(DEVICES)
        with caplog.at_level(logging.ERROR, logger="roam.links.driver"):
            await driver.start(watcher)
            driver.set_up("wifi", False)
            driver.set_up("wifi", True)
        await driver.close()

    asyncio.run(asyncio.wait_for(main(), 10))
    assert len(calls) == 3
    assert "watcher failed" in caplog.text
    assert "watcher bug" in caplog.text
