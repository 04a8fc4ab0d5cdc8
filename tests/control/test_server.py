"""The control socket answers every request, good or bad, and never dies of one."""

from __future__ import annotations

import asyncio
import json
import socket
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from roam.control.server import MAX_LINE, ControlServer
from roam.errors import ConfigError


async def _echo(request: dict[str, Any]) -> Any:
    return {"you said": request.get("x")}


async def _fails(request: dict[str, Any]) -> Any:
    raise ConfigError("no such path 'lte' (known: wifi, cell)")


async def _ask(path: str, raw: bytes) -> dict[str, Any]:
    reader, writer = await asyncio.open_unix_connection(path)
    writer.write(raw)
    line = await asyncio.wait_for(reader.readline(), 5)
    writer.close()
    answer: dict[str, Any] = json.loads(line)
    return answer


def _run(tmp_path: Path, *requests: bytes) -> list[dict[str, Any]]:
    async def main() -> list[dict[str, Any]]:
        server = ControlServer(str(tmp_path / "c.sock"), {"echo": _echo, "fails": _fails})
        await server.start()
        try:
            return [await _ask(server.path, r) for r in requests]
        finally:
            await server.close()

    return asyncio.run(main())


def test_answers_good_and_bad_requests(tmp_path: Path) -> None:
    answers = _run(tmp_path, b'{"cmd": "echo", "x": 1}\n', b"garbage\n", b"[1, 2]\n",
                   b'{"cmd": "nope"}\n', b'{"cmd": "fails"}\n', b'{"cmd": "echo"}\n')
    assert answers[0] == {"ok": True, "result": {"you said": 1}}
    assert "not a JSON request" in answers[1]["error"]
    assert "JSON object" in answers[2]["error"]
    assert answers[3]["error"] == "unknown command 'nope' (known: echo, fails)"
    assert answers[4] == {"ok": False, "error": "no such path 'lte' (known: wifi, cell)"}
    assert answers[5]["ok"]


def test_oversized_request_is_refused(tmp_path: Path) -> None:
    (answer,) = _run(tmp_path, b"x" * (MAX_LINE + 10) + b"\n")
    assert "longer than" in answer["error"]


@settings(max_examples=30, deadline=None)
@given(garbage=st.binary(max_size=200))
def test_garbage_never_kills_it(tmp_path_factory: pytest.TempPathFactory, garbage: bytes) -> None:
    tmp = tmp_path_factory.mktemp("g")
    answers = _run(tmp, garbage.replace(b"\n", b" ") + b"\n", b'{"cmd": "echo", "x": 2}\n')
    assert answers[1] == {"ok": True, "result": {"you said": 2}}


def test_second_daemon_on_the_same_socket_is_refused(tmp_path: Path) -> None:
    async def main() -> None:
        first = ControlServer(str(tmp_path / "c.sock"), {})
        await first.start()
        try:
            with pytest.raises(ConfigError, match="another daemon is listening"):
                await ControlServer(first.path, {}).start()
        finally:
            await first.close()

    asyncio.run(main())


def test_leftover_socket_is_taken_over(tmp_path: Path) -> None:
    path = tmp_path / "c.sock"
    stale = socket.socket(socket.AF_UNIX)
    stale.bind(str(path))
    stale.close()  # a daemon that died without cleaning up
    assert _run(tmp_path, b'{"cmd": "echo", "x": 3}\n')[0]["result"] == {"you said": 3}
    assert not path.exists()  # and removed on close


def test_non_socket_in_the_way_is_an_error(tmp_path: Path) -> None:
    (tmp_path / "c.sock").write_text("a file")

    async def main() -> None:
        with pytest.raises(ConfigError, match="exists and is not a socket"):
            await ControlServer(str(tmp_path / "c.sock"), {}).start()

    asyncio.run(main())
