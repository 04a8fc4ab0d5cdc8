"""The control socket answers every request, good or bad, and never dies of one."""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import socket
import stat
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from roam.control.client import ControlError, request
from roam.control.server import MAX_LINE, ControlServer, default_control_path
from roam.errors import ConfigError
from tests.conftest import require


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


# The directory that holds the socket: whoever can write there can replace
# the socket and answer `roam status` and `roam switch` in the daemon's place.

OTHER_UID = 12345  # an account that is not the daemon's (no such user needed)
NOBODY = 65534


def _start(path: Path) -> None:
    async def main() -> None:
        server = ControlServer(str(path), {"echo": _echo})
        await server.start()
        await server.close()

    asyncio.run(main())


@pytest.mark.root
def test_directory_of_another_user_is_refused(tmp_path: Path) -> None:
    require(os.geteuid() == 0, "giving a directory to another user needs root")
    squatted = tmp_path / "roam-1000"
    squatted.mkdir(mode=0o700)
    os.chown(squatted, OTHER_UID, OTHER_UID)
    with pytest.raises(ConfigError) as caught:
        _start(squatted / "client.sock")
    message = str(caught.value)
    assert str(squatted) in message
    assert f"owned by uid {OTHER_UID}" in message
    assert f"rm -r {squatted}" in message
    # Root's default is /run/roam whatever XDG_RUNTIME_DIR says: only --control helps.
    assert "give --control PATH" in message
    assert not (squatted / "client.sock").exists()


@pytest.mark.parametrize("mode", [0o770, 0o707, 0o777, 0o1777], ids=oct)
def test_directory_writable_by_others_is_refused(tmp_path: Path, mode: int) -> None:
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(mode)
    with pytest.raises(ConfigError,
                       match=re.escape(f"{shared}: ") + ".*writable by (group|others)") as caught:
        _start(shared / "client.sock")
    assert f"chmod go-w {shared}" in str(caught.value)
    assert not (shared / "client.sock").exists()


def test_symlinked_directory_is_refused(tmp_path: Path) -> None:
    real = tmp_path / "real"
    real.mkdir(mode=0o700)
    link = tmp_path / "roam-1000"
    link.symlink_to(real)
    with pytest.raises(ConfigError, match=re.escape(f"{link}: ") + ".*symbolic link"):
        _start(link / "client.sock")
    assert not (real / "client.sock").exists()


def test_non_directory_in_the_way_is_refused(tmp_path: Path) -> None:
    (tmp_path / "roam-1000").write_text("a file")
    with pytest.raises(ConfigError, match="not a directory"):
        _start(tmp_path / "roam-1000" / "client.sock")


def test_missing_directory_is_made_private(tmp_path: Path) -> None:
    made = tmp_path / "run" / "roam"
    _start(made / "client.sock")
    st = made.lstat()
    assert stat.S_ISDIR(st.st_mode)
    assert st.st_uid == os.geteuid()
    assert stat.S_IMODE(st.st_mode) & 0o077 == 0


def test_own_private_directory_is_reused(tmp_path: Path) -> None:
    mine = tmp_path / "roam-1000"
    mine.mkdir(mode=0o755)  # read by others is fine: the socket itself is 0600
    _start(mine / "client.sock")
    _start(mine / "client.sock")


def test_default_path_prefers_xdg_runtime_dir(tmp_path: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path))
    assert default_control_path("client") == str(tmp_path / "roam" / "client.sock")
    monkeypatch.delenv("XDG_RUNTIME_DIR")
    assert default_control_path("client", tmp=tmp_path) == str(tmp_path / "roam-1000" /
                                                               "client.sock")
    assert default_control_path("server") == "/tmp/roam-1000/server.sock"


# The /tmp fallback for real: a daemon run as `nobody` without XDG_RUNTIME_DIR.
_AS_DAEMON = """
import asyncio, sys
from roam.control.server import ControlServer, default_control_path
from roam.errors import ConfigError

async def main() -> None:
    server = ControlServer(default_control_path("client", tmp=sys.argv[1]), {})
    try:
        await server.start()
    except ConfigError as exc:
        print("refused:", exc)
        return
    print("listening", server.path)
    await server.close()

asyncio.run(main())
"""


@pytest.fixture
def shared_tmp() -> Iterator[Path]:
    """A directory like /tmp (sticky, everyone writes), that the test removes."""
    base = Path(tempfile.mkdtemp(prefix="roam-test-tmp-"))
    base.chmod(0o1777)
    try:
        yield base
    finally:
        shutil.rmtree(base)


def _as_nobody(base: Path) -> str:
    require(os.geteuid() == 0, "running a daemon as nobody needs root")
    require(shutil.which("setpriv") is not None, "setpriv is missing (util-linux)")
    env = {k: v for k, v in os.environ.items() if k != "XDG_RUNTIME_DIR"}
    out = subprocess.run(["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}",
                          "--clear-groups", sys.executable, "-c", _AS_DAEMON, str(base)],
                         capture_output=True, text=True, timeout=30, env=env)
    assert out.returncode == 0, out.stderr
    return out.stdout


@pytest.mark.root
def test_tmp_fallback_made_by_another_user_is_refused(shared_tmp: Path) -> None:
    squatted = shared_tmp / f"roam-{NOBODY}"
    squatted.mkdir()
    squatted.chmod(0o777)  # so that the daemon could bind there, and the squatter replace it
    os.chown(squatted, OTHER_UID, OTHER_UID)
    said = _as_nobody(shared_tmp)
    assert said.startswith("refused:"), said
    assert f"{squatted}: owned by uid {OTHER_UID}" in said
    assert "set XDG_RUNTIME_DIR or give --control PATH" in said
    assert list(squatted.iterdir()) == []


@pytest.mark.root
def test_tmp_fallback_is_made_for_the_daemon(shared_tmp: Path) -> None:
    said = _as_nobody(shared_tmp)
    made = shared_tmp / f"roam-{NOBODY}"
    assert said == f"listening {made / 'client.sock'}\n"
    st = made.lstat()
    assert st.st_uid == NOBODY
    assert stat.S_IMODE(st.st_mode) == 0o700


def test_an_oversized_request_from_the_real_client_gets_the_answer_not_a_reset(
        tmp_path: Path) -> None:
    path = tmp_path / "c.sock"

    async def main() -> None:
        server = ControlServer(str(path), {"echo": _echo})
        await server.start()
        try:
            # The client sends all of it: the server answers after 64 KiB and
            # must not reset the connection under the rest of it.
            with pytest.raises(ControlError, match="longer than"):
                await asyncio.to_thread(request, str(path), "echo", {"x": "y" * 500_000})
        finally:
            await server.close()

    asyncio.run(main())
