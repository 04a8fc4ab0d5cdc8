"""Asking a daemon: what a user sees when there is none, or it says no."""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from roam.control.client import ControlError, request
from roam.control.server import ControlServer
from roam.errors import ConfigError
from tests.conftest import require


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


# A socket is only as trustworthy as the directory it is in: whoever can write
# there could have put it there, and would see (and answer) what we ask.

OTHER_UID = 12345  # an account that is neither ours nor root (no such user needed)


@contextlib.contextmanager
def _daemon(path: Path) -> Iterator[None]:
    """A control server at `path`, answering status, in a thread of its own."""
    ready = threading.Event()
    stop: list[asyncio.Event] = []

    async def status(_: dict[str, Any]) -> Any:
        return {"paths": []}

    async def serve() -> None:
        server = ControlServer(str(path), {"status": status})
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
        yield
    finally:
        loop.call_soon_threadsafe(stop[0].set)
        t.join(5)
        loop.close()


@pytest.mark.root
def test_socket_in_another_users_directory_is_refused(tmp_path: Path) -> None:
    require(os.geteuid() == 0, "giving a directory to another user needs root")
    squatted = tmp_path / "roam-1000"
    with _daemon(squatted / "client.sock"):
        # As if that user had made the directory and put a socket of theirs in it.
        os.chown(squatted, OTHER_UID, OTHER_UID)
        with pytest.raises(ConfigError) as caught:
            request(str(squatted / "client.sock"), "status")
        os.chown(squatted, 0, 0)
    message = str(caught.value)
    assert f"{squatted}: owned by uid {OTHER_UID}" in message
    assert "not talking to" in message


def test_socket_in_a_directory_others_can_write_is_refused(tmp_path: Path) -> None:
    shared = tmp_path / "shared"
    with _daemon(shared / "client.sock"):
        shared.chmod(0o777)
        with pytest.raises(ConfigError,
                           match=re.escape(f"{shared}: ") + ".*writable by (group|others)"):
            request(str(shared / "client.sock"), "status")
        shared.chmod(0o700)


def test_socket_through_a_symlinked_directory_of_our_own_is_asked(tmp_path: Path) -> None:
    with _daemon(tmp_path / "real" / "client.sock"):
        (tmp_path / "link").symlink_to(tmp_path / "real")
        assert request(str(tmp_path / "link" / "client.sock"), "status") == {"paths": []}
