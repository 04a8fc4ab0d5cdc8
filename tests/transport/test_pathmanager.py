"""The path manager with a real session: suspicion, outages, and what status says."""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Callable

from roam.core.frames import ChannelKind
from roam.core.paths import SUSPECT_FIRST
from roam.core.states import SessionState
from roam.links.emulated import EmulatedDriver
from roam.policy.paths import parse_paths
from roam.policy.policy import Policy
from roam.transport.client import HandoverRecord
from roam.transport.datagrams import ClientDatagrams
from roam.transport.pathmanager import PathManager
from tests.conftest import require

from .stack import Stack


async def _until(condition: Callable[[], bool], timeout: float = 20.0) -> None:
    """Poll the daemon's state (it has no event for these); the bound only
    turns a hang into a failure."""
    async with asyncio.timeout(timeout):
        while not condition():  # noqa: ASYNC110
            await asyncio.sleep(0.02)


async def _manager(stack: Stack, *more: str, cell: str = "cell:dev=lo,priority=50"
                   ) -> tuple[PathManager, EmulatedDriver]:
    """wifi and cell (and `more` paths, all on lo), the session on wifi."""
    texts = ["wifi:dev=lo,priority=10", cell, *more]
    links = EmulatedDriver(dict.fromkeys((text.partition(":")[0] for text in texts), "lo"))
    policy = Policy(parse_paths(texts), dwell=0.3)
    manager = PathManager(stack.client, policy, links)
    await manager.start()
    await manager.switch("wifi", soft=False, reason="start on wifi")
    return manager, links


def _path(manager: PathManager, name: str) -> dict[str, object]:
    return next(p for p in manager.status()["paths"] if p["name"] == name)


def test_failures_while_the_links_are_down_do_not_ban_the_paths() -> None:
    async def main() -> None:
        stack = await Stack().start()
        manager, links = await _manager(stack)
        try:
            failed: list[str] = []
            blame = stack.client.on_attachment_failed

            def count(via: object, why: str) -> None:
                failed.append(why)
                blame(via, why)  # type: ignore[arg-type]

            stack.client.on_attachment_failed = count
            # Both links go down and nothing gets through: every resume fails.
            links.set_up("wifi", False)
            links.set_up("cell", False)
            stack.proxy.silent = True
            stack.proxy.cut()
            await _until(lambda: len(failed) >= 2)
            assert _path(manager, "wifi")["suspect_for"] is None
            assert _path(manager, "cell")["suspect_for"] is None
            # Both come back: the session is on wifi, the preferred path, again.
            links.set_up("cell", True)
            links.set_up("wifi", True)
            stack.proxy.silent = False
            await _until(lambda: manager.status()["active_path"] == "wifi"
                         and stack.client.driver is not None
                         and stack.client.driver.session.state is SessionState.ATTACHED)
            await stack.echo_check(50_000)
        finally:
            await manager.close()
            await stack.close()

    asyncio.run(main())


def test_status_says_a_path_is_suspect_until_when_and_why_not_down() -> None:
    async def main() -> None:
        stack = await Stack().start()
        manager, _ = await _manager(stack)
        try:
            manager._make_suspect("cell", "silent for 2.0 s")
            cell = _path(manager, "cell")
            assert cell["up"] is True
            assert cell["usable"] is False
            assert str(cell["reason"]).startswith("suspect until ")
            assert "silent for 2.0 s" in str(cell["reason"])
            assert cell["suspect_reason"] == "silent for 2.0 s"
            until = cell["suspect_until"]
            assert isinstance(until, float)
            assert time.time() < until <= time.time() + SUSPECT_FIRST + 1
        finally:
            await manager.close()
            await stack.close()

    asyncio.run(main())


def test_a_link_back_up_is_tried_afresh_and_a_working_session_forgives_the_outage() -> None:
    async def main() -> None:
        stack = await Stack().start()
        manager, links = await _manager(stack)
        try:
            for _ in range(5):  # an outage that every path shared
                manager._make_suspect("wifi", "connect timed out")
                manager._make_suspect("cell", "connect timed out")
            assert manager.paths.suspects["wifi"].backoff == 32.0
            # The session works again, on cell: wifi's failures count as one.
            manager._handover_done(HandoverRecord("hard", "transport lost", "wifi", "cell", 10.0,
                                                  0, time.time()))
            assert "cell" not in manager.paths.suspects
            assert manager.paths.suspects["wifi"].backoff == SUSPECT_FIRST
            assert manager.paths.suspects["wifi"].until <= time.monotonic() + SUSPECT_FIRST
            # A link that goes down and comes back is not suspect any more.
            manager._make_suspect("wifi", "silent for 2.0 s")
            links.set_up("wifi", False)
            links.set_up("wifi", True)
            assert "wifi" not in manager.paths.suspects
        finally:
            await manager.close()
            await stack.close()

    asyncio.run(main())


def test_switching_to_the_active_path_moves_nothing_but_pins_it() -> None:
    async def main() -> None:
        stack = await Stack().start()
        manager, _ = await _manager(stack)
        try:
            before = len(manager.history)
            transports = stack.client.transports
            await manager.switch("wifi", soft=True, reason="roam switch", pin=True)
            assert len(manager.history) == before
            assert stack.client.transports == transports
            assert manager.status()["pinned"] == "wifi"
        finally:
            await manager.close()
            await stack.close()

    asyncio.run(main())


def test_the_datagram_side_is_told_the_backup_path_and_follows_it() -> None:
    # Paths are bound by device as root; without root by address, and the
    # emulated links have none.
    require(os.geteuid() == 0, "binding a socket to a device needs root")

    async def main() -> None:
        stack = await Stack().start()
        manager, links = await _manager(stack)
        try:
            driver = stack.client.driver
            assert driver is not None
            datagrams = driver.datagrams
            assert isinstance(datagrams, ClientDatagrams)
            # An open datagram channel, marked redundant: it wants a backup.
            cid = driver.session.open_channel("127.0.0.1", stack.echo_port,
                                              ChannelKind.DATAGRAM)
            datagrams.mark_redundant(cid)

            def second() -> object:
                return (datagrams.status().get("redundant") or {}).get("second_path")

            await _until(lambda: second() == "cell")
            assert manager.status()["active_path"] == "wifi"
            links.set_up("cell", False)
            await _until(lambda: second() is None)
            redundant = datagrams.status()["redundant"]
            assert isinstance(redundant, dict)
            assert (redundant["mode"], redundant["second_state"]) == (
                "one path: no backup path", None)
            links.set_up("cell", True)
            await _until(lambda: second() == "cell")
        finally:
            await manager.close()
            await stack.close()

    asyncio.run(main())


def test_a_path_refusing_copies_is_passed_over_for_them_not_for_the_standby() -> None:
    require(os.geteuid() == 0, "binding a socket to a device needs root")

    async def main() -> None:
        stack = await Stack().start()
        # cell is billed by the byte: no copies there.
        manager, links = await _manager(stack, "lte:dev=lo,priority=60",
                                        cell="cell:dev=lo,priority=50,redundant=no")
        try:
            driver = stack.client.driver
            assert driver is not None
            datagrams = driver.datagrams
            assert isinstance(datagrams, ClientDatagrams)
            datagrams.mark_redundant(driver.session.open_channel(
                "127.0.0.1", stack.echo_port, ChannelKind.DATAGRAM))

            def second() -> object:
                return (datagrams.status().get("redundant") or {}).get("second_path")

            await _until(lambda: second() == "lte" and manager.status()["standby"] == "cell")
            links.set_up("lte", False)
            await _until(lambda: second() is None)
            assert manager.status()["standby"] == "cell"
        finally:
            await manager.close()
            await stack.close()

    asyncio.run(main())
