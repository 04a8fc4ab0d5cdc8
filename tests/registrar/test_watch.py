"""A server without --path registers again when its addresses change
(roam.registrar.watch), with the reading of addresses given as a function."""

from __future__ import annotations

import asyncio

import pytest

from roam.registrar.watch import watch_addresses


def test_a_change_wakes_the_registrations_once_per_change() -> None:
    async def main() -> list[list[str]]:
        addresses = ["198.18.200.1:7000"]
        seen: list[list[str]] = []
        woke = asyncio.Event()

        def changed() -> None:
            seen.append(list(addresses))
            woke.set()

        task = asyncio.create_task(watch_addresses(lambda: list(addresses), changed, 0.001),
                                   name="watch")
        await asyncio.sleep(0.02)  # readings with no change: nothing woken
        assert seen == []
        addresses[:] = ["198.18.200.2:7000", "198.18.200.1:7000"]
        await asyncio.wait_for(woke.wait(), 5)
        woke.clear()
        addresses.reverse()  # the same set in another order is no change
        addresses[:] = ["198.18.200.2:7000"]
        await asyncio.wait_for(woke.wait(), 5)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        return seen

    assert asyncio.run(main()) == [["198.18.200.2:7000", "198.18.200.1:7000"],
                                   ["198.18.200.2:7000"]]


def test_an_unreadable_moment_is_skipped_not_taken_for_a_change() -> None:
    async def main() -> int:
        calls = 0
        woken = 0
        enough = asyncio.Event()

        def reachable() -> list[str]:
            nonlocal calls
            calls += 1
            if calls == 6:
                enough.set()
            if calls == 3:
                raise OSError("netlink went away")
            return ["198.18.200.1:7000"]

        def changed() -> None:
            nonlocal woken
            woken += 1

        task = asyncio.create_task(watch_addresses(reachable, changed, 0.001), name="watch")
        await asyncio.wait_for(enough.wait(), 5)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        return woken

    assert asyncio.run(main()) == 0
