"""Command line and control socket for the link emulator.

    python -m roam.lab.linkemu --listen HOST:PORT --target HOST:PORT
        [--delay-ms N] [--rate BPS] [--control PATH]

Once bound it prints `listening HOST:PORT` on stdout, so a parent that asked
for port 0 learns the port. The optional control socket (a Unix stream
socket) takes one command per line and answers one line per command:

    cut | blackhole | restore | delay MS | rate BPS|none   ->  ok
    stats                                                  ->  one JSON object
    anything else                                          ->  error: <why>

SIGTERM and SIGINT close everything and exit with status 0.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import json
import math
import os
import signal
import socket
import stat
import sys
from collections.abc import Callable, Sequence

from roam.lab.linkemu import LinkEmulator

# Longest accepted control line; anything longer is garbage, not a command.
CONTROL_LINE_LIMIT = 4096

# sun_path is 108 bytes on Linux, including the terminating NUL.
_UNIX_PATH_MAX = 107

_COMMANDS = "cut, blackhole, restore, delay MS, rate BPS|none, stats"


def parse_host_port(text: str) -> tuple[str, int]:
    """Parse `HOST:PORT` or `[IPV6]:PORT`."""
    host, sep, port_text = text.rpartition(":")
    if not sep or not host or not port_text:
        raise argparse.ArgumentTypeError(f"expected HOST:PORT, got {text!r}")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    elif ":" in host:
        raise argparse.ArgumentTypeError(f"write IPv6 addresses as [ADDRESS]:PORT, got {text!r}")
    if not host:
        raise argparse.ArgumentTypeError(f"expected HOST:PORT, got {text!r}")
    try:
        port = int(port_text, 10)
    except ValueError:
        raise argparse.ArgumentTypeError(f"port must be a number, got {port_text!r}") from None
    if not 0 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"port must be between 0 and 65535, got {port}")
    return host, port


def parse_delay(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"delay must be a number of milliseconds, got {text!r}"
        ) from None
    if not math.isfinite(value) or value < 0:
        raise argparse.ArgumentTypeError(f"delay must be >= 0 milliseconds, got {text!r}")
    return value


def parse_rate(text: str) -> int | None:
    if text.lower() == "none":
        return None
    try:
        value = int(text, 10)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"rate must be a whole number of bytes per second or 'none', got {text!r}"
        ) from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"rate must be > 0 bytes per second, got {text!r}")
    return value


def format_host_port(address: tuple[str, int]) -> str:
    host, port = address
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m roam.lab.linkemu",
        description="TCP forwarder that can delay, throttle, cut or black-hole its connections.",
    )
    parser.add_argument(
        "--listen",
        required=True,
        type=parse_host_port,
        metavar="HOST:PORT",
        help="address to accept connections on (port 0 picks a free port)",
    )
    parser.add_argument(
        "--target",
        required=True,
        type=parse_host_port,
        metavar="HOST:PORT",
        help="address every accepted connection is forwarded to",
    )
    parser.add_argument(
        "--delay-ms",
        type=parse_delay,
        default=0.0,
        metavar="N",
        help="one-way latency added in each direction, in milliseconds",
    )
    parser.add_argument(
        "--rate",
        type=parse_rate,
        default=None,
        metavar="BPS",
        help="bytes per second cap per direction per connection",
    )
    parser.add_argument(
        "--control",
        default=None,
        metavar="PATH",
        help="Unix socket accepting control commands: " + _COMMANDS,
    )
    return parser


def split_command(line: bytes, commands: str) -> tuple[str, list[str]] | str:
    """A control line as (command as typed, arguments), or the error answer for it."""
    try:
        text = line.decode("utf-8").strip()
    except UnicodeDecodeError:
        return "error: command is not UTF-8 text"
    words = text.split()
    if not words:
        return f"error: empty command (expected one of: {commands})"
    return words[0], words[1:]


def execute(emulator: LinkEmulator, line: bytes) -> str:
    """Run one control command and return the one-line answer."""
    split = split_command(line, _COMMANDS)
    if isinstance(split, str):
        return split
    typed, args = split
    name = typed.lower()
    simple: dict[str, Callable[[], None]] = {
        "cut": emulator.cut,
        "blackhole": emulator.blackhole,
        "restore": emulator.restore,
    }
    if name in simple or name == "stats":
        if args:
            return f"error: {name} takes no argument"
        if name == "stats":
            return json.dumps(dataclasses.asdict(emulator.statistics()), sort_keys=True)
        simple[name]()
        return "ok"
    if name in ("delay", "rate"):
        if len(args) != 1:
            return f"error: {name} takes exactly one argument"
        try:
            if name == "delay":
                emulator.set_delay(parse_delay(args[0]))
            else:
                emulator.set_rate(parse_rate(args[0]))
        except (argparse.ArgumentTypeError, ValueError) as exc:
            return f"error: {exc}"
        return "ok"
    return f"error: unknown command {typed!r} (expected one of: {_COMMANDS})"


class LineControlServer:
    """A Unix control socket: one command per line in, `execute`'s answer per line out."""

    def __init__(self, path: str, execute: Callable[[bytes], str]) -> None:
        self.path = path
        self.execute = execute
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()

    async def start(self) -> None:
        self._server = await asyncio.start_unix_server(
            self._serve, self.path, limit=CONTROL_LINE_LIMIT
        )

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
        for writer in list(self._writers):
            writer.close()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._writers.add(writer)
        try:
            while True:
                try:
                    line = await reader.readline()
                except ValueError:
                    # The stream has lost track of line boundaries; stop here.
                    writer.write(b"error: line too long\n")
                    await writer.drain()
                    break
                if not line:
                    break
                writer.write(self.execute(line).encode("utf-8") + b"\n")
                await writer.drain()
        except ConnectionError:
            # The controller went away mid-answer; nothing left to tell it.
            return
        finally:
            self._writers.discard(writer)
            writer.close()


def _check_control_path(parser: argparse.ArgumentParser, path: str) -> None:
    if len(os.fsencode(path)) > _UNIX_PATH_MAX:
        parser.error(f"--control: path is longer than {_UNIX_PATH_MAX} bytes: {path!r}")
    try:
        mode = os.lstat(path).st_mode
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(mode):
        parser.error(f"--control: {path!r} exists and is not a socket")
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.settimeout(1.0)
        probe.connect(path)
    except OSError:
        # Nobody answers: a leftover of an earlier run, safe to replace.
        os.unlink(path)
    else:
        parser.error(f"--control: {path!r} is in use by another process")
    finally:
        probe.close()


async def _serve(args: argparse.Namespace) -> int:
    emulator = LinkEmulator(args.listen, args.target, delay_ms=args.delay_ms, rate_bps=args.rate)
    control = (LineControlServer(args.control, lambda line: execute(emulator, line))
               if args.control is not None else None)
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    try:
        try:
            await emulator.start()
            if control is not None:
                await control.start()
        except OSError as exc:
            print(f"linkemu: cannot listen: {exc}", file=sys.stderr)
            return 1
        print(f"listening {format_host_port(emulator.address)}", flush=True)
        await stop.wait()
        return 0
    finally:
        if control is not None:
            await control.close()
        await emulator.close()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(signum)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.control is not None:
        _check_control_path(parser, args.control)
    return asyncio.run(_serve(args))


if __name__ == "__main__":
    sys.exit(main())
