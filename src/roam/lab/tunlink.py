"""A userspace point-to-point IP link between two network namespaces.

    python -m roam.lab.tunlink --a NS:IFACE --b NS:IFACE
        [--delay-ms N] [--loss PCT] [--mtu BYTES] [--watch-stdin] --control PATH

It opens a TUN device named IFACE in each namespace (NS is a name under
/run/netns, as `ip netns` makes them, or the path of a namespace file such as
/proc/PID/ns/net), brings both up and forwards every IP packet one device
reads to the other. On the way it can add a one-way delay (each direction,
order preserved), drop a random share of packets, or swallow everything
(`blackhole`) while both devices stay up, the way a dead radio path looks.

The devices belong to this process: they disappear when it exits, together
with every address and route on them.

Once both devices are up and the control socket listens, it prints `ready` on
stdout. The control socket (a Unix stream socket) takes one command per line
and answers one line per command:

    delay MS | loss PCT | blackhole on|off   ->  ok
    stats                                    ->  one JSON object
    anything else                            ->  error: <why>

SIGTERM and SIGINT close everything and exit with status 0; so does the end
of stdin with `--watch-stdin`, which lets a parent's death end the link even
when the parent had no chance to clean up.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ctypes
import errno
import fcntl
import json
import math
import os
import random
import signal
import socket
import struct
import sys
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from roam.lab.linkemu_cli import (
    LineControlServer,
    _check_control_path,
    parse_delay,
    split_command,
)

__all__ = [
    "DEFAULT_MTU",
    "QUEUE_LIMIT",
    "DelayQueue",
    "Endpoint",
    "TunLink",
    "build_parser",
    "execute",
    "main",
    "open_tun",
    "parse_endpoint",
    "parse_loss",
]

# A large MTU means fewer packets per byte, and per-packet work is what costs
# in Python.
DEFAULT_MTU = 9000

# Bytes one direction may hold in its delay queue; beyond that packets are
# dropped, like a router whose buffer is full, so memory stays bounded.
QUEUE_LIMIT = 8 << 20

# Packets read from one device per wake-up, so a busy direction cannot starve
# the other one or the control socket.
_READ_BATCH = 64

# Linux ABI constants (linux/if_tun.h, linux/sched.h, linux/sockios.h, net/if.h).
_TUNSETIFF = 0x400454CA
_IFF_TUN = 0x0001
_IFF_NO_PI = 0x1000
_IFF_UP = 0x1
_CLONE_NEWNET = 0x40000000
_SIOCGIFFLAGS = 0x8913
_SIOCSIFFLAGS = 0x8914
_SIOCSIFMTU = 0x8922
_IFNAMSIZ = 16

_NETNS_DIR = Path("/run/netns")
_COMMANDS = "delay MS, loss PCT, blackhole on|off, stats"


@dataclass(frozen=True)
class Endpoint:
    """One end of the link: a network namespace and a TUN device name in it."""

    namespace: str
    interface: str

    @property
    def namespace_path(self) -> str:
        if self.namespace.startswith("/"):
            return self.namespace
        return str(_NETNS_DIR / self.namespace)

    def __str__(self) -> str:
        return f"{self.namespace}:{self.interface}"


def parse_endpoint(text: str) -> Endpoint:
    """Parse `NS:IFACE` (NS a name under /run/netns or an absolute path)."""
    namespace, sep, interface = text.rpartition(":")
    if not sep or not namespace or not interface:
        raise argparse.ArgumentTypeError(f"expected NAMESPACE:INTERFACE, got {text!r}")
    if not namespace.startswith("/") and ("/" in namespace or namespace in (".", "..")):
        raise argparse.ArgumentTypeError(
            f"namespace must be a name under {_NETNS_DIR} or an absolute path, got {namespace!r}"
        )
    encoded = interface.encode("utf-8", "surrogateescape")
    if len(encoded) >= _IFNAMSIZ:
        raise argparse.ArgumentTypeError(
            f"interface name must be at most {_IFNAMSIZ - 1} bytes, got {interface!r}"
        )
    if interface in (".", "..") or any(c in interface for c in "/: \t\n") or b"\0" in encoded:
        raise argparse.ArgumentTypeError(f"not a valid interface name: {interface!r}")
    return Endpoint(namespace, interface)


def parse_loss(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"loss must be a percentage, got {text!r}") from None
    if not math.isfinite(value) or not 0 <= value <= 100:
        raise argparse.ArgumentTypeError(f"loss must be between 0 and 100 percent, got {text!r}")
    return value


def parse_mtu(text: str) -> int:
    try:
        value = int(text, 10)
    except ValueError:
        raise argparse.ArgumentTypeError(f"MTU must be a whole number, got {text!r}") from None
    # 68 is IPv4's minimum; 65535 is the largest IP packet.
    if not 68 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"MTU must be between 68 and 65535, got {text!r}")
    return value


class DelayQueue:
    """Packets waiting for their release time, strictly first in, first out.

    A packet is due `delay` after it arrived, but never before the packet in
    front of it: shrinking the delay must not reorder a link.
    """

    def __init__(self, limit_bytes: int = QUEUE_LIMIT) -> None:
        if limit_bytes <= 0:
            raise ValueError(f"queue limit must be > 0 bytes, got {limit_bytes}")
        self.limit_bytes = limit_bytes
        self._items: deque[tuple[float, bytes]] = deque()
        self._bytes = 0
        self._last_due = -math.inf

    def __len__(self) -> int:
        return len(self._items)

    @property
    def size_bytes(self) -> int:
        return self._bytes

    def push(self, now: float, delay: float, packet: bytes) -> bool:
        """Queue `packet`; False (and nothing queued) when the queue is full."""
        if self._bytes + len(packet) > self.limit_bytes:
            return False
        due = max(now + delay, self._last_due)
        self._last_due = due
        self._items.append((due, packet))
        self._bytes += len(packet)
        return True

    def next_due(self) -> float | None:
        return self._items[0][0] if self._items else None

    def pop_due(self, now: float) -> list[bytes]:
        """Remove and return, in order, every packet due at `now` or earlier."""
        out: list[bytes] = []
        items = self._items
        while items and items[0][0] <= now:
            packet = items.popleft()[1]
            self._bytes -= len(packet)
            out.append(packet)
        return out

    def clear(self) -> int:
        """Drop everything queued; returns how many packets that was."""
        count = len(self._items)
        self._items.clear()
        self._bytes = 0
        return count


_libc = ctypes.CDLL(None, use_errno=True)


def _setns(fd: int) -> None:
    # os.setns only exists from Python 3.12.
    if _libc.setns(fd, _CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"setns: {os.strerror(err)}")


@contextlib.contextmanager
def _inside(namespace_path: str) -> Iterator[None]:
    """Run the body with this thread inside another network namespace."""
    own = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
    try:
        try:
            target = os.open(namespace_path, os.O_RDONLY | os.O_CLOEXEC)
        except OSError as exc:
            raise OSError(
                exc.errno, f"cannot open network namespace {namespace_path}: {exc.strerror}"
            ) from None
        try:
            _setns(target)
        finally:
            os.close(target)
        try:
            yield
        finally:
            # Staying in the wrong namespace would silently misplace every
            # later device, so a failure here is fatal to the caller.
            _setns(own)
    finally:
        os.close(own)


def _ifreq(name: str, payload: bytes = b"") -> bytes:
    return struct.pack("16s", name.encode()) + payload.ljust(24, b"\0")


def open_tun(endpoint: Endpoint, mtu: int = DEFAULT_MTU) -> int:
    """Create TUN device `endpoint.interface` in its namespace, up, with `mtu`.

    Returns the non-blocking file descriptor. The fd keeps serving the
    device after this thread has gone back to its own namespace.
    """
    with _inside(endpoint.namespace_path):
        fd = os.open("/dev/net/tun", os.O_RDWR | os.O_NONBLOCK | os.O_CLOEXEC)
        try:
            flags = struct.pack("H", _IFF_TUN | _IFF_NO_PI)
            fcntl.ioctl(fd, _TUNSETIFF, _ifreq(endpoint.interface, flags))
            # An ioctl socket acts on the namespace it was created in.
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
                fcntl.ioctl(sock, _SIOCSIFMTU, _ifreq(endpoint.interface, struct.pack("i", mtu)))
                answer = fcntl.ioctl(sock, _SIOCGIFFLAGS, _ifreq(endpoint.interface))
                (current,) = struct.unpack_from("H", answer, _IFNAMSIZ)
                up = struct.pack("H", current | _IFF_UP)
                fcntl.ioctl(sock, _SIOCSIFFLAGS, _ifreq(endpoint.interface, up))
        except OSError as exc:
            os.close(fd)
            raise OSError(
                exc.errno, f"cannot set up TUN device {endpoint}: {exc.strerror}"
            ) from None
    return fd


@dataclass
class DirectionStatistics:
    packets: int = 0
    bytes: int = 0
    dropped_loss: int = 0
    dropped_blackhole: int = 0
    dropped_queue_full: int = 0
    dropped_write_error: int = 0


class _Direction:
    def __init__(self, name: str, src: int, dst: int) -> None:
        self.name = name
        self.src = src
        self.dst = dst
        self.queue = DelayQueue()
        self.stats = DirectionStatistics()
        self.timer: asyncio.TimerHandle | None = None


class TunLink:
    """Forwards packets between two TUN fds with delay, loss and a black hole.

    `delay_ms` is added to each direction, so the round trip grows by twice
    that. `loss` is the percentage of packets dropped in each direction.
    """

    def __init__(
        self,
        a_fd: int,
        b_fd: int,
        *,
        mtu: int = DEFAULT_MTU,
        delay_ms: float = 0.0,
        loss: float = 0.0,
        rng: random.Random | None = None,
    ) -> None:
        self.mtu = mtu
        self.delay_ms = 0.0
        self.loss = 0.0
        self.blackhole = False
        self.set_delay(delay_ms)
        self.set_loss(loss)
        self._rng = rng if rng is not None else random.Random()
        self._directions = (_Direction("a_to_b", a_fd, b_fd), _Direction("b_to_a", b_fd, a_fd))
        self._loop: asyncio.AbstractEventLoop | None = None

    def set_delay(self, delay_ms: float) -> None:
        if not math.isfinite(delay_ms) or delay_ms < 0:
            raise ValueError(f"delay must be >= 0 milliseconds, got {delay_ms}")
        self.delay_ms = delay_ms

    def set_loss(self, loss: float) -> None:
        if not math.isfinite(loss) or not 0 <= loss <= 100:
            raise ValueError(f"loss must be between 0 and 100 percent, got {loss}")
        self.loss = loss

    def set_blackhole(self, on: bool) -> None:
        self.blackhole = on
        if on:
            # Packets in flight die with the path too.
            for direction in self._directions:
                direction.stats.dropped_blackhole += direction.queue.clear()

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        for direction in self._directions:
            loop.add_reader(direction.src, self._on_readable, direction)

    def close(self) -> None:
        loop = self._loop
        if loop is None:
            return
        self._loop = None
        for direction in self._directions:
            loop.remove_reader(direction.src)
            if direction.timer is not None:
                direction.timer.cancel()
                direction.timer = None

    def statistics(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "delay_ms": self.delay_ms,
            "loss": self.loss,
            "blackhole": self.blackhole,
        }
        for direction in self._directions:
            out[direction.name] = {
                **vars(direction.stats),
                "queued_packets": len(direction.queue),
                "queued_bytes": direction.queue.size_bytes,
            }
        return out

    def _on_readable(self, direction: _Direction) -> None:
        loop = self._loop
        if loop is None:
            return
        stats = direction.stats
        size = self.mtu + 64
        for _ in range(_READ_BATCH):
            try:
                packet = os.read(direction.src, size)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                # EIO is what a TUN fd reports while its device is down, so
                # a link_down does not bring the forwarder down.
                if exc.errno != errno.EIO:
                    print(f"tunlink: read {direction.name}: {exc}", file=sys.stderr)
                return
            if not packet:
                return
            if self.blackhole:
                stats.dropped_blackhole += 1
                continue
            if self.loss and self._rng.random() * 100 < self.loss:
                stats.dropped_loss += 1
                continue
            if self.delay_ms == 0 and not direction.queue:
                self._write(direction, packet)
            elif not direction.queue.push(loop.time(), self.delay_ms / 1000, packet):
                stats.dropped_queue_full += 1
            elif direction.timer is None:
                self._schedule(direction)

    def _schedule(self, direction: _Direction) -> None:
        due = direction.queue.next_due()
        if due is None or self._loop is None:
            direction.timer = None
            return
        direction.timer = self._loop.call_at(due, self._flush, direction)

    def _flush(self, direction: _Direction) -> None:
        direction.timer = None
        if self._loop is None:
            return
        for packet in direction.queue.pop_due(self._loop.time()):
            self._write(direction, packet)
        self._schedule(direction)

    def _write(self, direction: _Direction, packet: bytes) -> None:
        try:
            os.write(direction.dst, packet)
        except OSError:
            # The receiving device is down or its backlog is full: the packet
            # is lost, as on a real link, and the sender's transport recovers.
            direction.stats.dropped_write_error += 1
            return
        direction.stats.packets += 1
        direction.stats.bytes += len(packet)


def execute(link: TunLink, line: bytes) -> str:
    """Run one control command and return the one-line answer."""
    split = split_command(line, _COMMANDS)
    if isinstance(split, str):
        return split
    typed, args = split
    name = typed.lower()
    if name == "stats":
        if args:
            return "error: stats takes no argument"
        return json.dumps(link.statistics(), sort_keys=True)
    setters: dict[str, Callable[[str], None]] = {
        "delay": lambda arg: link.set_delay(parse_delay(arg)),
        "loss": lambda arg: link.set_loss(parse_loss(arg)),
        "blackhole": lambda arg: link.set_blackhole(_parse_switch(arg)),
    }
    setter = setters.get(name)
    if setter is None:
        return f"error: unknown command {typed!r} (expected one of: {_COMMANDS})"
    if len(args) != 1:
        return f"error: {name} takes exactly one argument"
    try:
        setter(args[0])
    except (argparse.ArgumentTypeError, ValueError) as exc:
        return f"error: {exc}"
    return "ok"


def _parse_switch(text: str) -> bool:
    value = text.lower()
    if value == "on":
        return True
    if value == "off":
        return False
    raise ValueError(f"expected 'on' or 'off', got {text!r}")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m roam.lab.tunlink",
        description="Userspace IP link between TUN devices in two network namespaces.",
    )
    parser.add_argument(
        "--a",
        required=True,
        type=parse_endpoint,
        metavar="NS:IFACE",
        help="first end: namespace (name under /run/netns, or a path) and TUN device name",
    )
    parser.add_argument(
        "--b", required=True, type=parse_endpoint, metavar="NS:IFACE", help="second end"
    )
    parser.add_argument(
        "--delay-ms",
        type=parse_delay,
        default=0.0,
        metavar="N",
        help="one-way latency added in each direction, in milliseconds",
    )
    parser.add_argument(
        "--loss",
        type=parse_loss,
        default=0.0,
        metavar="PCT",
        help="percentage of packets dropped at random in each direction",
    )
    parser.add_argument(
        "--mtu", type=parse_mtu, default=DEFAULT_MTU, metavar="BYTES", help="MTU of both devices"
    )
    parser.add_argument(
        "--control",
        required=True,
        metavar="PATH",
        help="Unix socket accepting control commands: " + _COMMANDS,
    )
    parser.add_argument(
        "--watch-stdin",
        action="store_true",
        help="exit when stdin reaches end of file (a parent holding the pipe has gone)",
    )
    return parser


def _watch_stdin(loop: asyncio.AbstractEventLoop, stop: asyncio.Event) -> None:
    fd = sys.stdin.fileno()

    def on_readable() -> None:
        try:
            data = os.read(fd, 4096)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:
            loop.remove_reader(fd)
            stop.set()

    os.set_blocking(fd, False)
    loop.add_reader(fd, on_readable)


async def _serve(args: argparse.Namespace, a_fd: int, b_fd: int) -> int:
    link = TunLink(a_fd, b_fd, mtu=args.mtu, delay_ms=args.delay_ms, loss=args.loss)
    control = LineControlServer(args.control, lambda line: execute(link, line))
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    try:
        try:
            await control.start()
        except OSError as exc:
            print(f"tunlink: cannot listen on {args.control}: {exc}", file=sys.stderr)
            return 1
        link.start(loop)
        if args.watch_stdin:
            _watch_stdin(loop, stop)
        print("ready", flush=True)
        await stop.wait()
        return 0
    finally:
        link.close()
        await control.close()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(signum)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.a == args.b:
        parser.error(f"--a and --b name the same device: {args.a}")
    _check_control_path(parser, args.control)
    fds: list[int] = []
    try:
        try:
            for endpoint in (args.a, args.b):
                fds.append(open_tun(endpoint, args.mtu))
        except OSError as exc:
            print(f"tunlink: {exc.strerror or exc}", file=sys.stderr)
            return 1
        return asyncio.run(_serve(args, fds[0], fds[1]))
    finally:
        # Closing the fds removes both devices.
        for fd in fds:
            os.close(fd)


if __name__ == "__main__":
    sys.exit(main())
