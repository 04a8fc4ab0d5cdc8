"""The demo's story: a client with wifi and cell, a relay and a server, and
wifi failing two ways while an application streams.

    wifi  client -> link emulator (10 ms each way) -> server
    cell  client -> link emulator (40 ms each way) -> relay -> server's uplink

The server accepts wifi's transports itself; cell reaches it only through
the relay, which the server keeps uplinks to, as a server behind a firewall
does. Every handover is read from the client's event log as it is written.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from roam.demo.app import WAIT_NOTED, App
from roam.demo.report import Screen, handover_line, summary, wait_line
from roam.demo.units import Daemon, EventLog, Network, Units, ask

WIFI_DELAY_MS = 10.0
CELL_DELAY_MS = 40.0
# The client moves back to wifi once it has been usable this long: short
# for the demo (the default is 3 s), long enough to show the hysteresis.
DWELL = 1.0
# Longer than any handover takes here: a silent transport is declared dead
# within about 2 s, and a path held suspect after it is tried again 2 s later.
HANDOVER_TIMEOUT = 20.0


async def _echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """The service beside the server that the application talks to."""
    with contextlib.suppress(ConnectionError):
        while data := await reader.read(256 * 1024):
            writer.write(data)
            await writer.drain()
        writer.write_eof()
    writer.close()


async def _poll(done: Callable[[], bool], until: float) -> bool:
    """Whether `done()` came true before `until` (monotonic), looking every 20 ms."""
    while True:
        if done():
            return True
        if time.monotonic() > until:
            return False
        await asyncio.sleep(0.02)


class Stage:
    """The running system, and what the story does with it."""

    def __init__(self, screen: Screen, client: Daemon, wifi: Network, events: EventLog,
                 app: App) -> None:
        self.screen = screen
        self.client = client
        self.wifi = wifi
        self.events = events
        self.app = app
        self.problems: list[str] = []

    async def watch(self) -> None:
        """Print each handover as the client logs it."""
        while True:
            for h in self.events.poll():
                self.screen.at(handover_line(h), h["time"])
            await asyncio.sleep(0.05)

    async def expect(self, what: str, action: Callable[[], Any], kind: str, origin: str,
                     target: str) -> bool:
        """Say `what`, do it, and wait for the handover it must cause and for
        the stream to flow again; a missing handover is a problem that ends
        the story."""
        self.screen.at(what)
        began = time.monotonic()
        seen = len(self.events.handovers)
        result = action()
        if asyncio.iscoroutine(result):
            await result
        deadline = began + HANDOVER_TIMEOUT
        if not await _poll(lambda: any((h["type"], h["from"], h["to"]) == (kind, origin, target)
                                       for h in self.events.handovers[seen:]), deadline):
            self.problems.append(f"no {kind} handover {origin} -> {target} within "
                                 f"{HANDOVER_TIMEOUT:g} s of: {what}")
            return False
        arrived = time.monotonic()
        await _poll(lambda: self.app.last_echo > arrived, deadline)
        await asyncio.sleep(0.06)  # the watcher prints the handover first
        self.screen.line(wait_line(self.app.longest_wait(began), WAIT_NOTED))
        return True

    async def link(self, change: str) -> None:
        await ask(self.client, "link", path="wifi", change=change)


async def _story(stage: Stage, hold: float) -> None:
    wifi = stage.wifi.emulator

    async def down() -> None:
        await stage.link("down")
        wifi.cut()

    await asyncio.sleep(hold)
    if not await stage.expect("wifi goes down: its link says so, its connections are reset",
                              down, "hard", "wifi", "cell"):
        return
    await asyncio.sleep(hold)
    if not await stage.expect(f"wifi comes back up (the client waits {DWELL:g} s to trust it)",
                              lambda: stage.link("up"), "soft", "cell", "wifi"):
        return
    await asyncio.sleep(hold)
    if not await stage.expect("wifi turns into a black hole: every byte dropped, no reset, "
                              "its link still says up", wifi.blackhole, "hard", "wifi", "cell"):
        return
    # Restored at once: the client tries wifi again 2 s after it failed, and
    # a try that fell into the hole would keep wifi suspect for 4 s more.
    if not await stage.expect("the black hole ends", wifi.restore, "soft", "cell", "wifi"):
        return
    await asyncio.sleep(hold)


async def _start(units: Units, screen: Screen, echo_port: int) -> tuple[Daemon, Network, str]:
    """Relay, server, the two networks and the client; returns the forward's address."""
    admitted = units.write("relay-admitted", f"{units.keys['client']} phone\n"
                                             f"{units.keys['server']} server\n")
    authorized = units.write("authorized_keys", f"{units.keys['client']} phone\n")
    relay = await units.start("relay", ["--listen", "127.0.0.1:0", "--key",
                                        units.key_file("relay"), "--admit-keys", admitted],
                              "listening")
    server = await units.start(
        "server", ["--listen", "127.0.0.1:0", "--uplink",
                   f"{relay.ready[0]},key={units.keys['relay']}", "--key",
                   units.key_file("server"), "--authorized-keys", authorized, "--allow",
                   f"127.0.0.1:{echo_port}", "--no-udp"], "listening", "uplinks")
    wifi = await units.network("wifi", WIFI_DELAY_MS, server.ready[0])
    cell = await units.network("cell", CELL_DELAY_MS, relay.ready[0])
    client = await units.start(
        "client", ["--server", wifi.address, "--server-key", units.keys["server"], "--key",
                   units.key_file("client"), "--relay",
                   f"relay={cell.address},key={units.keys['relay']}",
                   "--path", "wifi:dev=lo,priority=10,kind=wifi",
                   "--path", "cell:dev=lo,priority=20,kind=cellular,via=relay",
                   "--links", "emulated", "--dwell", str(DWELL), "--no-udp",
                   "--event-log", str(units.dir / "events.jsonl"),
                   "--forward", f"127.0.0.1:0=127.0.0.1:{echo_port}",
                   "--metrics", "127.0.0.1:0"], "metrics", "forward")
    forward = client.ready[-1].split("=")[0]
    screen.line("roam demo: a client with two networks, a relay and a server, on loopback")
    screen.line(f"  wifi  {WIFI_DELAY_MS:.0f} ms each way: client -> link emulator "
                f"{wifi.address} -> server {server.ready[0]}")
    screen.line(f"  cell  {CELL_DELAY_MS:.0f} ms each way: client -> link emulator "
                f"{cell.address} -> relay {relay.ready[0]} -> server")
    screen.line("  the relay: cell reaches the server only through it, by the uplinks the "
                "server keeps to it (as from behind a firewall)")
    screen.line(f"  the application: an echo conversation through the client's forward "
                f"{forward}, every byte checked")
    screen.line(f"status page: {client.ready[0]} (the client's, while the demo runs)")
    screen.line()
    return client, wifi, forward


async def run_demo(hold: float) -> int:
    """The whole demo; the exit status is 0 only when every byte came back.

    SIGTERM ends it as Ctrl-C does: by cancelling it, so that the daemons
    are ended and the directory removed on the way out.
    """
    loop, task = asyncio.get_running_loop(), asyncio.current_task()
    if task is None:
        raise RuntimeError("run_demo runs in a task")
    terminated = False

    def terminate() -> None:
        nonlocal terminated
        terminated = True
        task.cancel()

    loop.add_signal_handler(signal.SIGTERM, terminate)
    try:
        return await _run(hold)
    except asyncio.CancelledError:
        if not terminated:
            raise
        print("roam demo: stopped", flush=True)
        return 128 + signal.SIGTERM
    finally:
        loop.remove_signal_handler(signal.SIGTERM)


async def _run(hold: float) -> int:
    screen = Screen()
    with tempfile.TemporaryDirectory(prefix="roam-demo-") as tmp:
        units = Units(Path(tmp))
        echo = await asyncio.start_server(_echo, "127.0.0.1", 0)
        tasks: list[asyncio.Task[Any]] = []
        try:
            client, wifi, forward = await _start(units, screen,
                                                 echo.sockets[0].getsockname()[1])
            app = App()
            stage = Stage(screen, client, wifi, EventLog(units.dir / "events.jsonl"), app)
            tasks.append(asyncio.create_task(stage.watch(), name="demo-watch"))
            screen.at("the application starts streaming, on wifi")
            host, port = forward.rsplit(":", 1)
            streaming = asyncio.create_task(app.run(host, int(port)), name="demo-app")
            tasks.append(streaming)
            await _story(stage, hold)
            app.stop()
            await streaming
            await asyncio.sleep(0.1)  # the watcher's last lines come first
            screen.at("the application has its last byte back")
            lines, code = summary(app.statistics(), stage.events.handovers, stage.problems,
                                  screen.began)
            screen.line()
            for line in lines:
                screen.line(line)
            if code:
                screen.line(f"\nthe daemons' logs:\n{units.logs()}")
            return code
        except Exception as exc:
            screen.line(f"roam demo failed: {exc}\n{units.logs()}")
            return 1
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            await units.close()
            echo.close()
