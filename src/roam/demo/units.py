"""The demo's units: roam daemons as processes, and the two emulated networks.

Every daemon is a real `roam` process with its own control socket in the
demo's directory (never the user's default one, where a real daemon may
live) and its log in a file there; `Units.close` ends each process by its own
handle, whatever happened before.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from roam.control.client import request
from roam.crypto.keys import encode_key, generate_private_key, public_key, write_private_key
from roam.lab.linkemu import LinkEmulator

# A daemon on this slow a machine takes about a second to import and bind;
# anything past this is a daemon that will not start.
READY_TIMEOUT = 20.0


def tail(path: Path, n: int = 3000) -> str:
    return path.read_text(errors="replace")[-n:] if path.exists() else ""


@dataclass
class Daemon:
    name: str
    proc: asyncio.subprocess.Process
    log: Path
    control: Path
    ready: list[str] = field(default_factory=list)


@dataclass
class Network:
    """One emulated network: a link emulator in front of what the network reaches."""

    name: str
    delay_ms: float
    emulator: LinkEmulator

    @property
    def address(self) -> str:
        host, port = self.emulator.address
        return f"{host}:{port}"


class Units:
    """Keys, daemons and networks of one demo run, all under `dir`."""

    def __init__(self, directory: Path) -> None:
        self.dir = directory
        self.daemons: list[Daemon] = []
        self.networks: list[Network] = []
        self.keys: dict[str, str] = {}
        for unit in ("server", "relay", "client"):
            key = generate_private_key()
            write_private_key(directory / f"{unit}.key", key)
            self.keys[unit] = encode_key(public_key(key))

    def key_file(self, unit: str) -> str:
        return str(self.dir / f"{unit}.key")

    def write(self, name: str, text: str) -> str:
        (self.dir / name).write_text(text)
        return str(self.dir / name)

    async def start(self, name: str, args: list[str], *ready: str) -> Daemon:
        """Run `roam NAME ARGS...` and read one stdout line for each of `ready`'s prefixes."""
        log, control = self.dir / f"{name}.log", self.dir / f"{name}.sock"
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "roam", name, *args, "--control", str(control),
            stdout=asyncio.subprocess.PIPE, stderr=log.open("wb"),
            env={**os.environ, "PYTHONUNBUFFERED": "1"})
        daemon = Daemon(name, proc, log, control)
        self.daemons.append(daemon)
        if proc.stdout is None:
            raise RuntimeError("no stdout pipe")
        for prefix in ready:
            try:
                line = (await asyncio.wait_for(proc.stdout.readline(), READY_TIMEOUT)).decode()
            except TimeoutError:
                line = ""
            if not line.startswith(prefix):
                raise RuntimeError(f"roam {name} did not start (expected '{prefix} ...', got "
                                   f"{line.strip()!r}):\n{tail(log)}")
            daemon.ready.append(line.strip().split(" ", 1)[1])
        return daemon

    async def network(self, name: str, delay_ms: float, target: str) -> Network:
        host, port = target.rsplit(":", 1)
        emulator = LinkEmulator(("127.0.0.1", 0), (host, int(port)), delay_ms=delay_ms)
        await emulator.start()
        network = Network(name, delay_ms, emulator)
        self.networks.append(network)
        return network

    def logs(self) -> str:
        return "".join(f"--- {d.name}.log\n{tail(d.log)}\n" for d in self.daemons)

    async def close(self) -> None:
        for daemon in reversed(self.daemons):
            with contextlib.suppress(ProcessLookupError):
                daemon.proc.terminate()
        for daemon in reversed(self.daemons):
            try:
                await asyncio.wait_for(daemon.proc.wait(), 5)
            except TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    daemon.proc.kill()
                await daemon.proc.wait()
        for network in self.networks:
            await network.emulator.close()


async def ask(daemon: Daemon, cmd: str, **fields: Any) -> Any:
    """One control-socket request (`roam link`, `roam status`), off the event loop."""
    return await asyncio.to_thread(request, str(daemon.control), cmd, fields or None, 10.0)


class EventLog:
    """The client's --event-log, read as it grows: its handover records."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._offset = 0
        self._partial = b""
        self.handovers: list[dict[str, Any]] = []

    def poll(self) -> list[dict[str, Any]]:
        """The handovers written since the last call."""
        if not self.path.exists():
            return []
        with self.path.open("rb") as f:
            f.seek(self._offset)
            data = f.read()
        self._offset += len(data)
        lines = (self._partial + data).split(b"\n")
        self._partial = lines.pop()  # a line still being written
        new = [e for e in (json.loads(line) for line in lines if line.strip())
               if e.get("kind") == "handover"]
        self.handovers += new
        return new
