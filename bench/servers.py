"""Loopback servers for the benchmark harness, run in a process of their own.

    python bench/servers.py sink --port 0   # reads and discards; on EOF replies "<count>\\n"
    python bench/servers.py echo --port 0   # echoes every byte back
    python bench/servers.py source --port 0 # sends without end until the peer goes
    python bench/servers.py stuck --port 0  # accepts and never reads (a hung service)

Each prints the port it listens on (one line, then flushes) and serves until it
is terminated. Each connection gets a thread of its own.
"""

from __future__ import annotations

import argparse
import socket
import sys
import threading
from collections.abc import Callable

RECV_SIZE = 1 << 20  # 1 MiB receive buffer for the sink


def serve_sink(conn: socket.socket) -> None:
    """Read until the peer half-closes, then reply with the byte count."""
    buf = bytearray(RECV_SIZE)
    view = memoryview(buf)
    count = 0
    with conn:
        while True:
            n = conn.recv_into(view)
            if n == 0:
                break
            count += n
        conn.sendall(f"{count}\n".encode())


def serve_echo(conn: socket.socket) -> None:
    """Send back whatever arrives, until EOF."""
    conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    with conn:
        while True:
            data = conn.recv(65536)
            if not data:
                break
            conn.sendall(data)


def serve_source(conn: socket.socket) -> None:
    """Write as fast as the peer takes it, until it goes away."""
    block = bytes(range(256)) * 1024
    with conn:
        while True:
            conn.sendall(block)


def serve_stuck(conn: socket.socket) -> None:
    """Hold the connection open and read nothing: the peer's sends back up."""
    with conn:
        threading.Event().wait()


SERVES: dict[str, Callable[[socket.socket], None]] = {
    "sink": serve_sink, "echo": serve_echo, "source": serve_source, "stuck": serve_stuck,
}


def handle(serve: Callable[[socket.socket], None], conn: socket.socket) -> None:
    try:
        serve(conn)
    except OSError as exc:  # a reset peer ends that connection only
        print(f"servers.py: connection error: {exc}", file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("kind", choices=sorted(SERVES))
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    args = parser.parse_args(argv)
    serve = SERVES[args.kind]

    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind((args.host, args.port))
    listener.listen(128)
    print(listener.getsockname()[1], flush=True)
    with listener:
        while True:
            conn, _ = listener.accept()
            threading.Thread(target=handle, args=(serve, conn), daemon=True).start()


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        sys.exit(0)
