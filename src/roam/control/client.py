"""Asks a daemon over its control socket (used by `roam status`, `link`, `switch`)."""

from __future__ import annotations

import json
import socket
from typing import Any

from roam.errors import ConfigError, RoamError


class ControlError(RoamError):
    """The daemon answered with an error, or could not be asked."""


def request(path: str, cmd: str, fields: dict[str, Any] | None = None,
            timeout: float = 30.0) -> Any:
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
        sock.sendall(json.dumps({**(fields or {}), "cmd": cmd}).encode() + b"\n")
        data = b""
        while not data.endswith(b"\n"):
            try:
                chunk = sock.recv(65536)
            except TimeoutError:
                raise ControlError(f"{path}: no answer in {timeout:g} s") from None
            if not chunk:
                raise ControlError(f"{path}: the daemon closed the connection")
            data += chunk
    answer = json.loads(data)
    if not answer.get("ok"):
        raise ControlError(str(answer.get("error")))
    return answer.get("result")
