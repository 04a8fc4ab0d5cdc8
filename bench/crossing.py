"""roam's own work per crossing, in one process: no sockets, no system calls.

    python bench/crossing.py [--rounds 20000] [--compress off|auto|zstd] [--profile]

A client and a server `SessionDriver`, each with a real session, real AEAD records and
a real `TransportProtocol`, joined by fake transports that hand each written record
straight to the other side's protocol; an `AppConnection` on each side with a fake
socket. A 64-byte round trip crosses four times, as through the daemons: the client
seals what its application wrote, the server opens it and writes it to its
application, which echoes it; the server seals the echo, the client opens it and
writes it to its application. Prints the microseconds per round trip and per
crossing; with --profile, the functions that took them (cProfile).

What it leaves out is the event loop, the system calls and the cold caches a daemon
wakes up to (docs/performance.md compares it with the daemons' CPU per round trip).
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import pstats
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "src"))

from roam.core import events as ev
from roam.core.compress import CompressionMode
from roam.core.session import Session
from roam.crypto.noise import CipherState
from roam.crypto.records import RecordOpener, RecordSealer
from roam.transport.driver import AppConnection, SessionDriver
from roam.transport.protocol import TransportProtocol


class FakeTransport(asyncio.Transport):
    """Keeps what is written; everything else a transport is asked is a no-op."""

    def __init__(self) -> None:
        super().__init__()
        self.out: list[bytes] = []

    def write(self, data: Any) -> None:
        self.out.append(bytes(data))

    def get_write_buffer_size(self) -> int:
        return 0

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        pass

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass

    def is_closing(self) -> bool:
        return False

    def can_write_eof(self) -> bool:
        return True

    def write_eof(self) -> None:
        pass

    def abort(self) -> None:
        pass

    def close(self) -> None:
        pass


def deliver(proto: TransportProtocol, data: bytes) -> None:
    """One read of `data`, as the event loop would make it."""
    view = proto.get_buffer(-1)
    view[:len(data)] = data
    proto.buffer_updated(len(data))


class Pair:
    """Two drivers and an echoing application channel between them."""

    def __init__(self, compression: CompressionMode | None) -> None:
        loop = asyncio.get_running_loop()
        now = loop.time()
        up, down = bytes(32), bytes([1]) * 32
        client = Session(is_client=True, now=now, compression=compression)
        server = Session(is_client=False, now=now, compression=compression)
        client.transport_attached(now, resume=False)
        server.transport_attached(now, resume=False)
        self.client = SessionDriver(client, RecordSealer(CipherState("AESGCM", up), now),
                                    RecordOpener(CipherState("AESGCM", down)), name="client")
        self.server = SessionDriver(server, RecordSealer(CipherState("AESGCM", down), now),
                                    RecordOpener(CipherState("AESGCM", up)), name="server")
        self.client_wire, self.server_wire = FakeTransport(), FakeTransport()
        self.client_proto, self.server_proto = TransportProtocol(), TransportProtocol()
        self.client_proto.connection_made(self.client_wire)
        self.server_proto.connection_made(self.server_wire)
        self.client.attach(self.client_proto)
        self.server.attach(self.server_proto)
        accepted: list[AppConnection] = []

        def on_open(e: ev.ChannelOpenRequested) -> None:
            app = AppConnection(self.server, e.channel)
            app.connection_made(FakeTransport())
            self.server.accept(e.channel, app)
            accepted.append(app)

        self.server.on_open_request = on_open
        self.app = AppConnection(self.client)
        self.app.connection_made(FakeTransport())
        self.app.cid = client.open_channel("echo.example", 7)
        self.client.add_app(self.app)
        for _ in range(5):
            self.pump()
        self.echo = accepted[0]

    def pump(self) -> None:
        self.client.flush()
        self.server.flush()
        while self.client_wire.out:
            deliver(self.server_proto, self.client_wire.out.pop(0))
        while self.server_wire.out:
            deliver(self.client_proto, self.server_wire.out.pop(0))

    def round_trip(self, message: bytes) -> None:
        self.app.data_received(message)  # 1: the client seals
        while self.client_wire.out:  # 2: the server opens and writes to its application
            deliver(self.server_proto, self.client_wire.out.pop(0))
        echo = self.echo.transport
        assert isinstance(echo, FakeTransport)
        self.echo.data_received(echo.out.pop())  # 3: the server seals the echo
        while self.server_wire.out:  # 4: the client opens it
            deliver(self.client_proto, self.server_wire.out.pop(0))
        mine = self.app.transport
        assert isinstance(mine, FakeTransport)
        if mine.out.pop() != message:
            raise RuntimeError("the echo came back different")


async def measure(rounds: int, compression: CompressionMode | None,
                  profile: bool) -> float:
    pair = Pair(compression)
    message = b"x" * 64
    for _ in range(500):
        pair.round_trip(message)
    profiler = cProfile.Profile() if profile else None
    if profiler is not None:
        profiler.enable()
    started = time.perf_counter()
    for _ in range(rounds):
        pair.round_trip(message)
    took = time.perf_counter() - started
    if profiler is not None:
        profiler.disable()
        pstats.Stats(profiler).sort_stats("tottime").print_stats(25)
    return took / rounds


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=20000)
    parser.add_argument("--compress", default="off", help="off, auto or zstd[:LEVEL]")
    parser.add_argument("--profile", action="store_true", help="cProfile the measured rounds")
    args = parser.parse_args(argv[1:])
    if not 0 < args.rounds <= 10**6:
        parser.error("--rounds must be 1..1000000")
    try:
        mode = CompressionMode.parse(args.compress)
    except ValueError as exc:
        parser.error(str(exc))
    per_round = asyncio.run(measure(args.rounds, mode if mode.enabled else None, args.profile))
    print(f"{per_round * 1e6:.1f} us per round trip, {per_round * 1e6 / 4:.1f} us per crossing "
          f"(--compress {args.compress}, {args.rounds} rounds, one process, no system calls)")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
