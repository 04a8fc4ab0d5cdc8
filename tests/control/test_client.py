"""Asking a daemon: what a user sees when there is none, or it says no."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path
from typing import Any

import pytest

from roam.control.client import ControlError, request
from roam.control.server import ControlServer
from roam.errors import ConfigError


def test_missing_socket_says_so(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="is the daemon running"):
        request(str(tmp_path / "none.sock"), "status")


def test_answers_and_errors_come_back(tmp_path: Path) -> None:
    path = str(tmp_path / "c.sock")
    ready = threading.Event()
    stop: list[asyncio.Event] = []

    async def status(_: dict[str, Any]) -> Any:
        return {"paths": []}

    async def switch(req: dict[str, Any]) -> Any:
        raise ConfigError(f"unknown path {req['path']!r}")

    async def serve() -> None:
        server = ControlServer(path, {"status": status, "switch": switch})
        await server.start()
        stop.append(asyncio.Event())
        ready.set()
        await stop[0].wait()
        await server.close()

    loop = asyncio.new_event_loop()
    t = threading.Thread(target=loop.run_until_complete, args=(serve(),), daemon=True)
    t.start()
    assert ready.wait(5)
    try:
        assert request(path, "status") == {"paths": []}
        with pytest.raises(ControlError, match="unknown path 'lte'"):
            request(path, "switch", {"path": "lte"})
    finally:
        loop.call_soon_threadsafe(stop[0].set)
        t.join(5)
