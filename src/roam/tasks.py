"""Tasks started from callbacks (a protocol's data_received, a link event),
held by their owner until done.

The event loop keeps only a weak reference to a task, so a task nobody holds
may be collected before it finishes; and one whose failure nobody reads is
lost. An owner (a server's listener, a path manager, a proxy) starts such
tasks here: each is named, held until it ends, its failure logged, and the
owner's close() cancels whatever still runs. Where the owner has one long
coroutine of its own, an asyncio.TaskGroup does this instead (the relay,
the uplinks, the client daemon); callbacks cannot enter one.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Coroutine
from typing import Any, TypeVar

log = logging.getLogger("roam")

T = TypeVar("T")


class Tasks:
    __slots__ = ("_owner", "_tasks")

    def __init__(self, owner: str) -> None:
        self._owner = owner
        self._tasks: set[asyncio.Task[Any]] = set()

    def spawn(self, coro: Coroutine[Any, Any, T], name: str) -> asyncio.Task[T]:
        task = asyncio.get_running_loop().create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._done)
        return task

    def _done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and (exc := task.exception()) is not None:
            log.error("%s: task %s failed: %r", self._owner, task.get_name(), exc,
                      exc_info=exc)

    def __len__(self) -> int:
        return len(self._tasks)

    def cancel(self) -> None:
        """Cancel every task still running (they end at their next await)."""
        for task in list(self._tasks):
            task.cancel()

    async def close(self) -> None:
        """Cancel every task still running and wait until each has ended."""
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
