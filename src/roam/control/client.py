"""Asks a daemon over its control socket (used by `roam status`, `link`, `switch`)."""

from __future__ import annotations

import json
import os
import socket
import stat
from typing import Any

from roam.control.server import describe_uid, writers
from roam.errors import ConfigError, RoamError


class ControlError(RoamError):
    """The daemon answered with an error, or could not be asked."""


def _check_directory(path: str) -> None:
    """Refuse a socket that someone else could have put where we look.

    The daemon never makes its socket in a directory that another user owns or
    can write in (ControlServer refuses); a socket found in one is someone
    else's, and would see and answer what we ask in the daemon's place. Unlike
    the daemon, we follow a symlink: what counts is the directory we connect
    in, and root's directories are trusted as root can do anything anyway.
    """
    directory = os.path.dirname(path) or "."
    try:
        st = os.stat(directory)
    except OSError:
        return  # connecting fails as well, and says why
    if not stat.S_ISDIR(st.st_mode):
        return
    where = f"control socket directory {directory}"
    euid = os.geteuid()
    if st.st_uid not in (euid, 0):
        raise ConfigError(f"{where}: owned by {describe_uid(st.st_uid)}, not by you, "
                          f"{describe_uid(euid)}, nor root; not talking to a socket that user "
                          "could have put there (the daemon does not make its socket there: "
                          "check --control and XDG_RUNTIME_DIR)")
    mode = stat.S_IMODE(st.st_mode)
    if mode & 0o022:
        raise ConfigError(f"{where}: writable by {writers(mode)} (mode {mode:04o}); not talking "
                          "to a socket anyone could have put there (the daemon does not make "
                          "its socket there: check --control)")


def request(path: str, cmd: str, fields: dict[str, Any] | None = None,
            timeout: float = 30.0) -> Any:
    _check_directory(path)
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout)
        try:
            sock.connect(path)
        except FileNotFoundError:
            raise ConfigError(f"no control socket at {path}: is the daemon running? "
                              "(--control names another)") from None
        except ConnectionRefusedError:
            raise ConfigError(f"nothing listens on {path}: the daemon is gone") from None
        except PermissionError:
            raise ConfigError(f"{path}: permission denied (the socket is its owner's)") from None
        try:
            sock.sendall(json.dumps({**(fields or {}), "cmd": cmd}).encode() + b"\n")
        except OSError as exc:  # the daemon closed, or died, before it read the request
            raise ControlError(f"{path}: the daemon closed the connection "
                               f"({exc.strerror or exc})") from None
        data = b""
        while not data.endswith(b"\n"):
            try:
                chunk = sock.recv(65536)
            except TimeoutError:
                raise ControlError(f"{path}: no answer in {timeout:g} s") from None
            except OSError as exc:
                # A daemon that closes with the request unread resets the connection.
                raise ControlError(f"{path}: the daemon closed the connection "
                                   f"({exc.strerror or exc})") from None
            if not chunk:
                raise ControlError(f"{path}: the daemon closed the connection")
            data += chunk
    return _result(path, data)


def _result(path: str, data: bytes) -> Any:
    """The result in a daemon's answer line; ControlError for an error or garbage."""
    try:
        answer = json.loads(data)
    except (ValueError, RecursionError) as exc:
        # ValueError covers JSONDecodeError, UnicodeDecodeError and int()'s digit limit.
        raise ControlError(f"{path}: the daemon's answer is not JSON ({exc})") from None
    if not isinstance(answer, dict):
        raise ControlError(f"{path}: the daemon's answer is not a JSON object: {data[:80]!r}")
    if not answer.get("ok"):
        raise ControlError(str(answer.get("error")))
    return answer.get("result")
