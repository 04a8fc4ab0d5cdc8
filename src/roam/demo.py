"""`roam demo`: a whole roam system on loopback, without privileges.

A server daemon and a client daemon run as processes; between them sits a
link emulator that this demo resets and black-holes on purpose. An
application (an echo conversation through a forward) writes lines and a
stream of bulk data the whole time and checks every byte that comes back.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import sys
import tempfile
import time
from pathlib import Path

from roam.crypto.keys import encode_key, generate_private_key, public_key, write_private_key
from roam.lab.linkemu import LinkEmulator

# A line every 50 ms shows a stall to the eye; 64 KiB of bulk data with each
# keeps tens of records in flight, so every break loses some.
LINE_INTERVAL = 0.05
BULK = 64 * 1024


async def _echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    while data := await reader.read(256 * 1024):
        writer.write(data)
        await writer.drain()
    writer.close()


def _tail(path: Path, n: int = 3000) -> str:
    return path.read_text(errors="replace")[-n:] if path.exists() else ""


async def _daemon(args: list[str], log: Path, ready_prefix: str) -> tuple[
        asyncio.subprocess.Process, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "roam", *args, stdout=asyncio.subprocess.PIPE,
        stderr=log.open("wb"), env={**os.environ, "PYTHONUNBUFFERED": "1"})
    if proc.stdout is None:
        raise RuntimeError("no stdout pipe")
    try:
        line = await asyncio.wait_for(proc.stdout.readline(), 15)
    except TimeoutError:
        line = b""
    text = line.decode().strip()
    if not text.startswith(ready_prefix):
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        raise RuntimeError(f"roam {args[0]} did not start:\n{_tail(log)}")
    return proc, text.split(" ", 1)[1]


class _App:
    """The application: writes numbered lines plus bulk data, checks the echo."""

    def __init__(self) -> None:
        self.sent = hashlib.sha256()
        self.received = hashlib.sha256()
        self.bytes_sent = 0
        self.bytes_received = 0
        self.lines = 0
        self.last_arrival = time.monotonic()
        self.longest_stall = 0.0

    async def run(self, host: str, port: int, until: float) -> None:
        reader, writer = await asyncio.open_connection(host, port)
        reading = asyncio.create_task(self._read(reader), name="demo-app-read")
        n = 0
        while time.monotonic() < until:
            n += 1
            chunk = f"line {n}\n".encode() + os.urandom(BULK)
            self.sent.update(chunk)
            self.bytes_sent += len(chunk)
            writer.write(chunk)
            await writer.drain()
            self.lines = n
            await asyncio.sleep(LINE_INTERVAL)
        writer.write_eof()
        await asyncio.wait_for(reading, 30)
        writer.close()

    async def _read(self, reader: asyncio.StreamReader) -> None:
        while data := await reader.read(256 * 1024):
            now = time.monotonic()
            self.longest_stall = max(self.longest_stall, now - self.last_arrival)
            self.last_arrival = now
            self.received.update(data)
            self.bytes_received += len(data)


async def run_demo(duration: float) -> int:
    def say(text: str) -> None:
        print(f"[{time.monotonic() - t0:5.1f}s] {text}", flush=True)

    t0 = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="roam-demo-") as tmp:
        d = Path(tmp)
        skey, ckey = generate_private_key(), generate_private_key()
        write_private_key(d / "server.key", skey)
        write_private_key(d / "client.key", ckey)
        (d / "authorized_keys").write_text(encode_key(public_key(ckey)) + " demo-client\n")
        echo = await asyncio.start_server(_echo, "127.0.0.1", 0)
        echo_port = echo.sockets[0].getsockname()[1]
        procs: list[asyncio.subprocess.Process] = []
        link: LinkEmulator | None = None
        try:
            server, saddr = await _daemon(
                ["server", "--listen", "127.0.0.1:0", "--key", str(d / "server.key"),
                 "--authorized-keys", str(d / "authorized_keys"),
                 "--allow", f"127.0.0.1:{echo_port}"], d / "server.log", "listening")
            procs.append(server)
            shost, sport = saddr.rsplit(":", 1)
            link = LinkEmulator(("127.0.0.1", 0), (shost, int(sport)))
            await link.start()
            lhost, lport = link.address
            client, forward = await _daemon(
                ["client", "--server", f"{lhost}:{lport}", "--server-key",
                 encode_key(public_key(skey)), "--key", str(d / "client.key"),
                 "--forward", f"127.0.0.1:0=127.0.0.1:{echo_port}"],
                d / "client.log", "forward")
            procs.append(client)
            fhost, fport = forward.split("=")[0].rsplit(":", 1)
            say(f"server on {saddr}, link emulator on {lhost}:{lport}, echo service on "
                f"127.0.0.1:{echo_port}")
            say(f"client forward {forward}: the application talks to 127.0.0.1:{fport}")
            app = _App()
            app_task = asyncio.create_task(app.run(fhost, int(fport), t0 + duration),
                                           name="demo-app")
            script = [(duration * 0.25, "reset", link.cut),
                      (duration * 0.45, "black hole (bytes silently dropped)", link.blackhole),
                      (duration * 0.45 + 3.0, "restore", link.restore)]
            for at, what, action in script:
                while time.monotonic() - t0 < at:
                    await asyncio.sleep(0.5)
                    say(f"app: {app.lines} lines, {app.bytes_received / 1e6:.1f} MB echoed")
                action()
                say(f"LINK: {what}")
            await app_task
            ok = (app.sent.digest() == app.received.digest()
                  and app.bytes_sent == app.bytes_received)
            stats = link.statistics()
            print()
            print("summary")
            print(f"  application bytes sent     {app.bytes_sent}")
            print(f"  application bytes echoed   {app.bytes_received}")
            print(f"  byte-exact (sha256)        {'yes' if ok else 'NO'}")
            print(f"  longest stall              {app.longest_stall * 1000:.0f} ms")
            print(f"  transports over the link   {stats.connections_total}")
            print("  the application's one TCP connection never broke" if ok else
                  "  FAILED: the echo differs from what was sent")
            return 0 if ok else 1
        except Exception as exc:
            print(f"roam demo failed: {exc}", file=sys.stderr)
            for name in ("server.log", "client.log"):
                print(f"--- {name}\n{_tail(d / name)}", file=sys.stderr)
            return 1
        finally:
            for proc in procs:
                with contextlib.suppress(ProcessLookupError):
                    proc.terminate()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(proc.wait(), 5)
            if link is not None:
                await link.close()
            echo.close()
