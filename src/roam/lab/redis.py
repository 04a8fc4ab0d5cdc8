"""A real Redis server (Debian's `redis-server`) for tests, the lab and the demo.

    with RedisServer(workdir, port=free_port()) as redis:
        ...  # redis://127.0.0.1:redis.port/0

`start()` runs redis-server in the foreground as a child process of its own
session, with no persistence (nothing written to disk but its log, in
`workdir/redis.log`) and bound only to `host`. It returns once a PING over
a plain socket is answered PONG; a server that exits first, or does not
answer in time, is reported with the end of its log. `stop()` ends it by
its process id.

`prefix` runs it (and the readiness probe) inside something, such as
`("ip", "netns", "exec", NAMESPACE)` for a lab namespace.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

from roam.errors import RoamError
from roam.lab.child import ChildServer

__all__ = ["RedisError", "RedisServer", "find_redis", "free_port", "probe"]

READY_TIMEOUT_S = 15.0


class RedisError(RoamError):
    """redis-server is missing, could not start, or did not become ready."""


def find_redis() -> str | None:
    """The redis-server binary, or None."""
    found = shutil.which("redis-server")
    if found:
        return found
    return "/usr/bin/redis-server" if os.access("/usr/bin/redis-server", os.X_OK) else None


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port free on `host` right now (redis-server has no port 0)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        port: int = s.getsockname()[1]
        return port


def probe(host: str, port: int, timeout_s: float = 0.5) -> bool:
    """True when a Redis server at host:port answers PING with PONG."""
    try:
        with socket.create_connection((host, port), timeout=timeout_s) as s:
            s.sendall(b"PING\r\n")
            return s.recv(64).startswith(b"+PONG")
    except OSError:
        return False


class RedisServer(ChildServer):
    program = "redis-server"
    error = RedisError

    def __init__(self, workdir: Path, *, port: int, host: str = "127.0.0.1",
                 prefix: Sequence[str] = (), binary: str | None = None) -> None:
        super().__init__(Path(workdir) / "redis.log")
        self.workdir = Path(workdir)
        self.host = host
        self.port = port
        self.prefix = tuple(prefix)
        self.binary = binary or find_redis()

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"redis://{host}:{self.port}/0"

    def argv(self) -> list[str]:
        if self.binary is None:
            raise RedisError("redis-server is not installed (Debian: apt install redis-server)")
        return [*self.prefix, self.binary, "--port", str(self.port), "--bind", self.host,
                "--save", "", "--appendonly", "no", "--daemonize", "no",
                "--dir", str(self.workdir), "--logfile", str(self.log_path),
                # Tests and the demo share a small machine.
                "--maxmemory", "64mb", "--protected-mode", "no"]

    def start(self, timeout_s: float = READY_TIMEOUT_S) -> None:
        argv = self.argv()
        try:
            self.workdir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise RedisError(f"cannot prepare {self.workdir}: {exc}") from None
        self._spawn(argv, self.workdir, timeout_s, log_output=False)

    def _ready(self) -> bool:
        if not self.prefix:
            return probe(self.host, self.port)
        done = subprocess.run([*self.prefix, sys.executable, "-c",
                               "import sys; from roam.lab.redis import probe; "
                               f"sys.exit(0 if probe({self.host!r}, {self.port}) else 1)"],
                              capture_output=True, timeout=10, check=False)
        return done.returncode == 0
