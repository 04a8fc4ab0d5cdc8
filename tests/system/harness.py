"""Real processes for system tests: roam daemons, services, the link emulator.

Every process is started with its own Popen and ended through it (never by
name), also when a test fails: `Procs` is a context manager that does that.
"""

from __future__ import annotations

import json
import os
import random
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from roam.crypto.keys import encode_key, generate_private_key, public_key, write_private_key

ROOT = Path(__file__).resolve().parents[2]
SERVICES = ROOT / "bench" / "servers.py"
ENV = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "PYTHONUNBUFFERED": "1"}


@dataclass
class Keys:
    dir: Path
    server_key: Path
    server_pub: str
    client_key: Path
    client_pub: str
    authorized: Path

    @classmethod
    def make(cls, d: Path) -> Keys:
        d.mkdir(parents=True, exist_ok=True)
        skey, ckey = generate_private_key(), generate_private_key()
        write_private_key(d / "server.key", skey)
        write_private_key(d / "client.key", ckey)
        (d / "authorized_keys").write_text(f"# test\n{encode_key(public_key(ckey))} tester\n")
        return cls(d, d / "server.key", encode_key(public_key(skey)), d / "client.key",
                   encode_key(public_key(ckey)), d / "authorized_keys")

    def extra_client(self, name: str) -> tuple[Path, str]:
        key = generate_private_key()
        path = self.dir / f"{name}.key"
        write_private_key(path, key)
        return path, encode_key(public_key(key))


@dataclass
class Proc:
    name: str
    popen: subprocess.Popen[bytes]
    log: Path
    ready: str = ""

    def log_text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def rss_kib(self) -> int:
        status = Path(f"/proc/{self.popen.pid}/status").read_text()
        m = re.search(r"VmRSS:\s+(\d+) kB", status)
        return int(m.group(1)) if m else 0

    def wait_log(self, pattern: str, timeout: float = 10.0) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            m = re.search(pattern, self.log_text())
            if m:
                return m.group(0)
            time.sleep(0.05)
        raise AssertionError(f"{self.name}: no log line matching {pattern!r} in {timeout} s:\n"
                             f"{self.log_text()[-3000:]}")


@dataclass
class Procs:
    """Starts processes and ends every one of them on exit."""

    dir: Path
    procs: list[Proc] = field(default_factory=list)

    def __enter__(self) -> Procs:
        return self

    def __exit__(self, *exc: object) -> None:
        for p in reversed(self.procs):
            if p.popen.poll() is None:
                p.popen.send_signal(signal.SIGTERM)
        for p in reversed(self.procs):
            try:
                p.popen.wait(5)
            except subprocess.TimeoutExpired:
                p.popen.kill()
                p.popen.wait(5)
            if p.popen.stdout is not None:
                p.popen.stdout.close()

    def start(self, name: str, argv: list[str], *, ready: str | None,
              timeout: float = 20.0) -> Proc:
        log = self.dir / f"{name}.log"
        popen = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=log.open("wb"),
                                 env=ENV, cwd=self.dir)
        proc = Proc(name, popen, log)
        self.procs.append(proc)
        if ready is not None:
            proc.ready = _read_line(popen, timeout)
            if not proc.ready.startswith(ready):
                raise AssertionError(f"{name} did not become ready (got {proc.ready!r}):\n"
                                     f"{proc.log_text()[-3000:]}")
        return proc

    def service(self, kind: str) -> int:
        proc = self.start(kind, [sys.executable, str(SERVICES), kind, "--port", "0"], ready="")
        return int(proc.ready)

    def server(self, keys: Keys, *allow: str, name: str = "server",
               extra: tuple[str, ...] = ()) -> tuple[Proc, int]:
        argv = [sys.executable, "-m", "roam", "server", "--listen", "127.0.0.1:0", "--key",
                str(keys.server_key), "--authorized-keys", str(keys.authorized)]
        for a in allow:
            argv += ["--allow", a]
        proc = self.start(name, argv + list(extra), ready="listening")
        return proc, int(proc.ready.rsplit(":", 1)[1])

    def client(self, keys: Keys, server_port: int, *forwards: str, name: str = "client",
               key: Path | None = None, server_pub: str | None = None,
               ready: str | None = "forward") -> tuple[Proc, list[int]]:
        argv = [sys.executable, "-m", "roam", "client", "--server", f"127.0.0.1:{server_port}",
                "--server-key", server_pub or keys.server_pub, "--key",
                str(key or keys.client_key)]
        for f in forwards:
            argv += ["--forward", f]
        proc = self.start(name, argv, ready=ready)
        ports = []
        if ready is not None:
            line = proc.ready
            for i in range(len(forwards)):
                if i:
                    line = _read_line(proc.popen, 10)
                ports.append(int(line.split("=")[0].rsplit(":", 1)[1]))
        return proc, ports

    def link(self, target_port: int, name: str = "link") -> Link:
        control = self.dir / f"{name}.sock"
        proc = self.start(name, [sys.executable, "-m", "roam.lab.linkemu", "--listen",
                                 "127.0.0.1:0", "--target", f"127.0.0.1:{target_port}",
                                 "--control", str(control)], ready="listening")
        return Link(proc, int(proc.ready.rsplit(":", 1)[1]), control)


def _read_line(popen: subprocess.Popen[bytes], timeout: float) -> str:
    """One stdout line, or '' after `timeout` (the process may hang)."""
    out: list[bytes] = []
    stdout = popen.stdout
    if stdout is None:
        return ""
    t = threading.Thread(target=lambda: out.append(stdout.readline()), daemon=True)
    t.start()
    t.join(timeout)
    return out[0].decode().strip() if out else ""


@dataclass
class Link:
    """The link emulator between client and server, driven over its control socket."""

    proc: Proc
    port: int
    control: Path

    def command(self, line: str) -> str:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(5)
            s.connect(str(self.control))
            s.sendall(line.encode() + b"\n")
            answer = s.makefile().readline().strip()
        if answer.startswith("error"):
            raise AssertionError(f"link emulator: {line!r}: {answer}")
        return answer

    def stats(self) -> dict[str, object]:
        result: dict[str, object] = json.loads(self.command("stats"))
        return result


class Pattern:
    """A position-dependent byte stream: any loss, duplicate or reorder shows."""

    BLOCK = 1 << 20

    def __init__(self, seed: int) -> None:
        self._base = random.Random(seed).randbytes(self.BLOCK + 4096)

    def _block(self, index: int) -> bytes:
        start = (index * 61) % 4096
        return self._base[start:start + self.BLOCK]

    def slice(self, offset: int, n: int) -> bytes:
        out = bytearray()
        while n > 0:
            index, pos = divmod(offset, self.BLOCK)
            take = min(n, self.BLOCK - pos)
            out += self._block(index)[pos:pos + take]
            offset += take
            n -= take
        return bytes(out)


@dataclass
class EchoResult:
    sent: int = 0
    received: int = 0
    mismatch_at: int | None = None
    longest_stall: float = 0.0
    error: str | None = None
    done: bool = False


def echo_conversation(port: int, total: int, seed: int, result: EchoResult,
                      chunk: int = 256 * 1024, deadline: float = 600.0) -> None:
    """Send `total` pattern bytes through an echo path and check every byte back."""
    pattern = Pattern(seed)
    try:
        sock = socket.create_connection(("127.0.0.1", port), timeout=30)
        sock.settimeout(deadline)

        def writer() -> None:
            try:
                while result.sent < total:
                    n = min(chunk, total - result.sent)
                    sock.sendall(pattern.slice(result.sent, n))
                    result.sent += n
            except OSError as exc:
                result.error = f"send: {exc}"

        t = threading.Thread(target=writer, daemon=True)
        t.start()
        last = time.monotonic()
        while result.received < total:
            data = sock.recv(1 << 20)
            now = time.monotonic()
            if not data:
                result.error = f"EOF after {result.received} bytes"
                break
            result.longest_stall = max(result.longest_stall, now - last)
            last = now
            if data != pattern.slice(result.received, len(data)):
                expected = pattern.slice(result.received, len(data))
                i = next(i for i in range(len(data)) if data[i] != expected[i])
                result.mismatch_at = result.received + i
                break
            result.received += len(data)
        t.join(deadline)
        sock.close()
    except OSError as exc:
        result.error = f"{type(exc).__name__}: {exc}"
    result.done = True
