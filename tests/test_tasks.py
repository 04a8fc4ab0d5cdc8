"""Tasks started from callbacks: held until done, named, failures logged, closed."""

from __future__ import annotations

import asyncio
import gc
import logging

import pytest

from roam.tasks import Tasks


def test_a_task_nobody_else_holds_runs_to_its_end() -> None:
    async def main() -> list[str]:
        done: list[str] = []
        finished = asyncio.Event()
        tasks = Tasks("test")

        async def work() -> None:
            await asyncio.sleep(0)
            gc.collect()  # the loop's weak reference alone would not keep it
            await asyncio.sleep(0)
            done.append("done")
            finished.set()

        tasks.spawn(work(), name="work")
        assert len(tasks) == 1
        await finished.wait()
        await asyncio.sleep(0)  # the done callback was queued right behind this wake-up
        assert len(tasks) == 0
        return done

    assert asyncio.run(main()) == ["done"]


def test_a_failure_is_logged_with_the_owner_and_the_task_name(
        caplog: pytest.LogCaptureFixture) -> None:
    async def main() -> None:
        tasks = Tasks("the owner")

        async def fail() -> None:
            raise ValueError("broken")

        tasks.spawn(fail(), name="failing-task")
        await asyncio.sleep(0.01)

    with caplog.at_level(logging.ERROR, logger="roam"):
        asyncio.run(main())
    assert "the owner: task failing-task failed: ValueError('broken')" in caplog.text


def test_close_cancels_and_waits_for_every_task() -> None:
    async def main() -> tuple[bool, int]:
        tasks = Tasks("test")
        ended = asyncio.Event()

        async def forever() -> None:
            try:
                await asyncio.Event().wait()
            finally:
                ended.set()

        task = tasks.spawn(forever(), name="forever")
        await asyncio.sleep(0)
        await tasks.close()
        return task.cancelled() and ended.is_set(), len(tasks)

    assert asyncio.run(main()) == (True, 0)
