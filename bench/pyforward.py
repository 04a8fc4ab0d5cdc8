"""A plain TCP forwarder on uvloop: the floor under any tunnel written in Python.

    python bench/pyforward.py --port 0 --to PORT [--event-loop uvloop|asyncio]

Listens on 127.0.0.1:PORT (0: any free port, printed on stdout) and carries each
connection to 127.0.0.1:--to, byte for byte: no session, no frames, no encryption.
bench/run.py chains two of them (as roam chains its client and server) to show what
two Python processes on an event loop cost by themselves, on the same machine and in
the same run as roam and ssh -L. Runs until terminated.
"""

from __future__ import annotations

import argparse
import asyncio
import socket
import sys


class _Side(asyncio.Protocol):
    """One end; writes what it reads to its peer, and pauses reading while the
    peer's write buffer is full."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.peer: _Side | None = None
        self.early: list[bytes] = []
        self.early_eof = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        sock = transport.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def data_received(self, data: bytes) -> None:
        if self.peer is None or self.peer.transport is None:
            self.early.append(data)
            return
        self.peer.transport.write(data)

    def eof_received(self) -> bool:
        if self.peer is not None and self.peer.transport is not None:
            self.peer.transport.write_eof()
        else:
            self.early_eof = True
        return True

    def connection_lost(self, exc: Exception | None) -> None:
        if self.peer is not None and self.peer.transport is not None:
            self.peer.transport.close()

    def pause_writing(self) -> None:
        if self.peer is not None and self.peer.transport is not None:
            self.peer.transport.pause_reading()

    def resume_writing(self) -> None:
        if self.peer is not None and self.peer.transport is not None:
            self.peer.transport.resume_reading()


async def serve(port: int, to: int) -> None:
    loop = asyncio.get_running_loop()
    connecting: set[asyncio.Task[None]] = set()

    def accepted() -> _Side:
        inner = _Side()

        async def connect() -> None:
            try:
                _, outer = await loop.create_connection(_Side, "127.0.0.1", to)
            except OSError:
                if inner.transport is not None:
                    inner.transport.close()
                return
            outer.peer, inner.peer = inner, outer
            assert outer.transport is not None
            for data in inner.early:
                outer.transport.write(data)
            inner.early.clear()
            if inner.early_eof:
                outer.transport.write_eof()

        task = loop.create_task(connect())
        connecting.add(task)
        task.add_done_callback(connecting.discard)
        return inner

    server = await loop.create_server(accepted, "127.0.0.1", port)
    print(server.sockets[0].getsockname()[1], flush=True)
    await asyncio.Event().wait()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--to", type=int, required=True)
    parser.add_argument("--event-loop", choices=("uvloop", "asyncio"), default="uvloop")
    args = parser.parse_args(argv)
    if args.event_loop == "uvloop":
        import uvloop

        uvloop.run(serve(args.port, args.to))
    else:
        asyncio.run(serve(args.port, args.to))
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        sys.exit(0)
