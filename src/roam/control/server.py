"""The control socket: one JSON object per line in, one per line out.

Request: `{"cmd": "status"}` or `{"cmd": "link", "path": "wifi", "up": false}`.
Answer: `{"ok": true, "result": ...}` or `{"ok": false, "error": "..."}`.
A malformed request gets an error answer; the daemon never dies of one.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import pwd
import stat
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from roam.errors import ConfigError, RoamError

log = logging.getLogger("roam.control")

Handler = Callable[[dict[str, Any]], Awaitable[Any]]
# A request larger than this is not a control request.
MAX_LINE = 64 * 1024


def default_control_path(role: str, *, tmp: str | os.PathLike[str] = "/tmp") -> str:
    """Where a daemon's control socket lives unless --control says otherwise.

    `tmp` is where a user without XDG_RUNTIME_DIR gets a directory of their own.
    """
    if os.geteuid() == 0:
        base = Path("/run/roam")
    else:
        runtime = os.environ.get("XDG_RUNTIME_DIR")
        base = Path(runtime) / "roam" if runtime else Path(tmp) / f"roam-{os.geteuid()}"
    return str(base / f"{role}.sock")


def describe_uid(uid: int) -> str:
    """`uid 1000 (alice)`, or `uid 1000` for a number no account has."""
    try:
        return f"uid {uid} ({pwd.getpwuid(uid).pw_name})"
    except KeyError:
        return f"uid {uid}"


def writers(mode: int) -> str:
    """Who besides the owner may write, by the group and other write bits of `mode`."""
    if mode & 0o022 == 0o022:
        return "group and others"
    return "group" if mode & 0o020 else "others"


def check_socket_directory(directory: Path) -> None:
    """Refuse a directory that anyone but this process's user could write in.

    Whoever can write there can replace the control socket with their own and
    answer `roam status` and `roam switch` in the daemon's place; /tmp/roam-UID
    in particular may have been made by another user before the daemon ran.
    """
    # lstat: a symlink is refused, not followed, since where it leads is up
    # to whoever made it and can change after this check.
    st = directory.lstat()
    euid = os.geteuid()
    elsewhere = ("give --control PATH" if euid == 0 else
                 "set XDG_RUNTIME_DIR or give --control PATH")
    where = f"control socket directory {directory}"
    if stat.S_ISLNK(st.st_mode):
        raise ConfigError(f"{where}: is a symbolic link, not a directory, so the socket would "
                          f"go wherever it leads; remove it (rm {directory}) or {elsewhere}")
    if not stat.S_ISDIR(st.st_mode):
        raise ConfigError(f"{where}: exists and is not a directory; remove it or {elsewhere}")
    if st.st_uid != euid:
        raise ConfigError(f"{where}: owned by {describe_uid(st.st_uid)}, not by this daemon's "
                          f"{describe_uid(euid)}: that user could replace the socket in it; "
                          f"have it removed (rm -r {directory}, as its owner or root), "
                          f"or {elsewhere}")
    mode = stat.S_IMODE(st.st_mode)
    if mode & 0o022:
        raise ConfigError(f"{where}: writable by {writers(mode)} (mode {mode:04o}), who could "
                          f"replace the socket in it; run chmod go-w {directory}, "
                          f"or {elsewhere}")


class ControlServer:
    def __init__(self, path: str, handlers: dict[str, Handler]) -> None:
        self.path = path
        self.handlers = handlers
        self._server: asyncio.Server | None = None

    def _existing_socket(self) -> bool:
        """Make or check the directory; True when an old socket sits at the path."""
        p = Path(self.path)
        # One made before, maybe not by us, is checked next just as a new one is.
        with contextlib.suppress(FileExistsError):
            p.parent.mkdir(parents=True, mode=0o700)
        check_socket_directory(p.parent)
        if p.is_socket():
            return True
        if p.exists():
            raise ConfigError(f"--control {self.path}: exists and is not a socket")
        return False

    async def start(self) -> None:
        try:
            if self._existing_socket():
                await self._refuse_if_live(Path(self.path))
                os.unlink(self.path)
            self._server = await asyncio.start_unix_server(self._client, path=self.path,
                                                           limit=MAX_LINE)
            os.chmod(self.path, 0o600)  # the control socket changes links: owner only
        except OSError as exc:
            raise ConfigError(f"--control {self.path}: {exc.strerror or exc}") from None

    async def _refuse_if_live(self, p: Path) -> None:
        try:
            _, writer = await asyncio.wait_for(asyncio.open_unix_connection(str(p)), 1)
        except (OSError, TimeoutError):
            return  # a leftover from a daemon that died: take it over
        writer.close()
        raise ConfigError(f"--control {self.path}: another daemon is listening there")

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.path)

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                try:
                    line = await reader.readline()
                except (ValueError, asyncio.LimitOverrunError):
                    writer.write(_answer(False, f"request longer than {MAX_LINE} bytes"))
                    writer.write_eof()
                    await writer.drain()
                    # Closing with the rest unread would reset the connection,
                    # and the client could lose this answer: read what the
                    # client still sends (a bounded amount, briefly) first.
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout(1.0):
                            for _ in range(16):
                                if not await reader.read(MAX_LINE):
                                    break
                    break
                if not line:
                    break
                writer.write(await self._handle(line))
                await writer.drain()
        except ConnectionError:
            pass
        finally:
            writer.close()

    async def _handle(self, line: bytes) -> bytes:
        try:
            request = json.loads(line)
        except RecursionError:
            # json decodes nested arrays and objects by recursion, without
            # a depth limit of its own.
            return _answer(False, "not a JSON request: nested too deeply")
        except ValueError as exc:
            # JSONDecodeError and UnicodeDecodeError are ValueErrors, and so
            # is int()'s limit on digits, which json lets through bare.
            return _answer(False, f"not a JSON request: {exc}")
        if not isinstance(request, dict) or not isinstance(request.get("cmd"), str):
            return _answer(False, 'a request is a JSON object with a "cmd" string')
        cmd = request["cmd"]
        handler = self.handlers.get(cmd)
        if handler is None:
            known = ", ".join(sorted(self.handlers))
            return _answer(False, f"unknown command {cmd!r} (known: {known})")
        try:
            return _answer(True, await handler(request))
        except RoamError as exc:
            return _answer(False, str(exc))
        except (KeyError, TypeError, ValueError) as exc:
            return _answer(False, f"bad {cmd} request: {exc}")


def _answer(ok: bool, value: Any) -> bytes:
    body = {"ok": True, "result": value} if ok else {"ok": False, "error": value}
    return json.dumps(body, default=str).encode() + b"\n"
