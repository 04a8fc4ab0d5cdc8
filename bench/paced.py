"""A paced, sequence-numbered stream: one side sends, the other times every arrival.

    python bench/paced.py send --listen HOST:PORT [--mptcp] [--interval-ms 1] [--size 1024]
    python bench/paced.py recv --connect HOST:PORT [--mptcp] [--bind-dev DEV] [--size 1024]

`send` listens and, on every connection it accepts, sends one message of `--size`
bytes every `--interval-ms`: a magic, a sequence number counting from 0, the time
(CLOCK_MONOTONIC, which every network namespace shares) the message was due, and a
payload that depends on the sequence number. When the connection cannot take a
message in time the due messages are sent together as soon as it can, so a stall
shows as a gap at the receiver and never as a skipped number. It prints
`listening HOST:PORT` once ready.

`recv` connects, reads the stream, and checks that every message is the next one,
intact: nothing lost, duplicated, reordered or altered. It takes commands on stdin,
one per line: `event T` (T in CLOCK_MONOTONIC seconds: the moment the network was
changed), `restore T` (the moment it was put back, if that is part of the event)
and `stop`. While running it prints a JSON progress line every 50 ms; at the end
one JSON line `{"result": ...}` with the longest gap between two arrivals that ends
after the event, among other figures.

`--mptcp` makes either side use an IPPROTO_MPTCP socket. Both sides stop on their
own after `--max-seconds`, so a forgotten process cannot stream for ever.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import select
import socket
import struct
import sys
import threading
import time
from array import array
from dataclasses import asdict, dataclass, field
from typing import Any, TextIO

IPPROTO_MPTCP = 262
SOL_MPTCP = 284
MPTCP_INFO = 1
MPTCP_INFO_FLAG_FALLBACK = 1
MAGIC = b"PACE"
HEADER = struct.Struct("!4sQQ")  # magic, sequence number, due time in ns
CYCLE = 251  # payloads shift by one byte per message over a prime cycle: any slip shows
PROGRESS_EVERY = 0.05
MAX_BATCH = 4096  # messages joined into one sendall when catching up
LONG_GAP = 0.02  # gaps after the event at least this long (s) are listed one by one
MAX_LONG_GAPS = 50
MAX_CONNECTIONS = 32  # streams served at once; a lingering old one must not block a new one
SEND_SLICE = 0.2  # seconds one send may block before the sender looks for the receiver's close


def payloads(size: int) -> list[bytes]:
    """The payload of message n is payloads(size)[n % CYCLE]."""
    body = size - HEADER.size
    base = bytes(i % CYCLE for i in range(body + CYCLE))
    return [base[k:k + body] for k in range(CYCLE)]


def host_port(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    if not host or not port.isdigit():
        raise argparse.ArgumentTypeError(f"expected HOST:PORT, got {text!r}")
    return host, int(port)


def make_socket(mptcp: bool) -> socket.socket:
    proto = IPPROTO_MPTCP if mptcp else socket.IPPROTO_TCP
    return socket.socket(socket.AF_INET, socket.SOCK_STREAM, proto)


def nodelay(sock: socket.socket) -> None:
    # Each message should leave when it is due, not wait for the one after it.
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


# -- sender -------------------------------------------------------------------


def peer_gone(conn: socket.socket) -> bool:
    """True once the receiver closed or reset its end (it never sends anything else)."""
    readable, _, _ = select.select([conn], [], [], 0)
    if not readable:
        return False
    try:
        return conn.recv(4096, socket.MSG_DONTWAIT) == b""
    except BlockingIOError:
        return False
    except OSError:
        return True


def send_all(conn: socket.socket, data: bytes, end_ns: int) -> bool:
    """Send data, watching for the receiver's close meanwhile; False when the stream is over.

    A plain sendall would sit blocked for as long as the path is dead, even after the
    receiver has gone (an MPTCP connection whose subflows are all dead never fails
    the send), and would keep a connection slot for the whole stream time.
    """
    view = memoryview(data)
    while view:
        if time.monotonic_ns() >= end_ns or peer_gone(conn):
            return False
        conn.settimeout(SEND_SLICE)
        try:
            view = view[conn.send(view):]
        except TimeoutError:
            continue
        except OSError:
            return False
    return True


def stream(conn: socket.socket, interval_ns: int, size: int, max_seconds: float) -> None:
    bodies = payloads(size)
    nodelay(conn)
    t0 = time.monotonic_ns()
    end = t0 + int(max_seconds * 1e9)
    seq = 0
    with conn:
        while True:
            now = time.monotonic_ns()
            if now >= end:
                return
            due = min((now - t0) // interval_ns + 1, seq + MAX_BATCH)
            if due <= seq:
                # Sleep until the next message is due, but wake up if the receiver goes.
                readable, _, _ = select.select([conn], [], [], (t0 + seq * interval_ns - now) / 1e9)
                if readable and peer_gone(conn):
                    return
                continue
            batch = b"".join(HEADER.pack(MAGIC, n, t0 + n * interval_ns) + bodies[n % CYCLE]
                             for n in range(seq, due))
            if not send_all(conn, batch, end):
                return  # the receiver went away, or the time ran out: this stream is over
            seq = due


def serve(args: argparse.Namespace) -> int:
    host, port = args.listen
    listener = make_socket(args.mptcp)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind((host, port))
    listener.listen(16)
    print(f"listening {host}:{listener.getsockname()[1]}", flush=True)
    interval_ns = int(args.interval_ms * 1e6)
    deadline = time.monotonic() + args.max_seconds
    workers: list[threading.Thread] = []
    with listener:
        while time.monotonic() < deadline:
            listener.settimeout(max(0.05, deadline - time.monotonic()))
            try:
                conn, _ = listener.accept()
            except TimeoutError:
                break
            workers = [w for w in workers if w.is_alive()]
            if len(workers) >= MAX_CONNECTIONS:
                print(f"paced: {len(workers)} streams running: refusing another",
                      file=sys.stderr, flush=True)
                conn.close()
                continue
            worker = threading.Thread(target=stream, daemon=True, args=(
                conn, interval_ns, args.size, min(args.stream_seconds,
                                                  max(0.0, deadline - time.monotonic()))))
            worker.start()
            workers.append(worker)
    return 0


# -- receiver -----------------------------------------------------------------


@dataclass
class Marks:
    """What the controlling program told us, from the stdin thread."""

    event: float | None = None
    restore: float | None = None
    stop: threading.Event = field(default_factory=threading.Event)


def read_commands(marks: Marks, stdin: TextIO) -> None:
    for line in stdin:
        word, _, value = line.strip().partition(" ")
        if word == "event":
            marks.event = float(value)
        elif word == "restore":
            marks.restore = float(value)
        elif word == "stop":
            break
    marks.stop.set()  # also on EOF: the controller is gone


@dataclass
class Check:
    """The sequence and content check; exact means every message arrived once, in order."""

    expected: int = 0
    lost: int = 0
    duplicated_or_reordered: int = 0
    corrupt: int = 0
    first_error: str | None = None

    @property
    def exact(self) -> bool:
        return not (self.lost or self.duplicated_or_reordered or self.corrupt)

    def error(self, text: str) -> None:
        if self.first_error is None:
            self.first_error = text


def mptcp_info(sock: socket.socket) -> dict[str, int] | None:
    """Subflow count and fallback flag of an MPTCP socket (None for plain TCP)."""
    try:
        raw = sock.getsockopt(SOL_MPTCP, MPTCP_INFO, 256)
    except OSError:
        return None
    if len(raw) < 12:
        return None
    subflows, flags = raw[0], struct.unpack_from("=I", raw, 8)[0]
    # mptcpi_subflows counts the subflows the path manager added beside the first.
    return {"extra_subflows": subflows, "fallback": int(bool(flags & MPTCP_INFO_FLAG_FALLBACK))}


def window_figures(arrivals: array[float], due: array[float], marks: Marks,
                   stopped: float) -> dict[str, Any]:
    """The stall: the longest gap between two arrivals whose second lies after the event."""
    out: dict[str, Any] = {"stall_ms": None, "recovered": False}
    if marks.event is None:
        return out
    event = marks.event
    back = event if marks.restore is None else max(event, marks.restore)
    # Recovered once a message that was due after the network was back has arrived.
    first_fresh = next((i for i in range(len(due)) if due[i] >= back), None)
    before = [arrivals[i] - arrivals[i - 1] for i in range(1, len(arrivals))
              if event - 1.0 <= arrivals[i - 1] and arrivals[i] <= event]
    out["baseline_longest_gap_ms"] = round(max(before) * 1000, 3) if before else None
    best, at = -1.0, -1
    long_gaps: list[list[float]] = []
    for i in range(1, len(arrivals)):
        if arrivals[i] > event:
            gap = arrivals[i] - arrivals[i - 1]
            if gap > best:
                best, at = gap, i
            if gap >= LONG_GAP and len(long_gaps) < MAX_LONG_GAPS:
                long_gaps.append([round((arrivals[i - 1] - event) * 1000, 3),
                                  round(gap * 1000, 3)])
    # Where the time went when a stall came in pieces: [start after the event, length] in ms.
    out["long_gaps"] = long_gaps
    last = arrivals[-1] if len(arrivals) else None
    open_gap = stopped - last if last is not None else None
    out["open_gap_at_stop_ms"] = round(open_gap * 1000, 3) if open_gap is not None else None
    if first_fresh is None:
        return out
    out["recovered"] = True
    out["recovered_after_ms"] = round((arrivals[first_fresh] - event) * 1000, 3)
    if at >= 0:
        out["stall_ms"] = round(best * 1000, 3)
        out["stall_from_ms"] = round((arrivals[at - 1] - event) * 1000, 3)
        out["stall_to_ms"] = round((arrivals[at] - event) * 1000, 3)
        out["stall_ends_at_seq"] = at
    return out


def receive(args: argparse.Namespace) -> int:
    host, port = args.connect
    size = args.size
    bodies = payloads(size)
    marks = Marks()
    threading.Thread(target=read_commands, args=(marks, sys.stdin), daemon=True).start()
    sock = make_socket(args.mptcp)
    if args.bind_dev:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_BINDTODEVICE, args.bind_dev.encode())
    sock.settimeout(10)
    sock.connect((host, port))
    nodelay(sock)
    # For MPTCP this is the first subflow's address: it tells the controller which of
    # the subflows the server lists belong to this connection.
    local = "{}:{}".format(*sock.getsockname())
    sock.setblocking(False)
    arrivals: array[float] = array("d")
    due: array[float] = array("d")
    check = Check()
    pending = bytearray()
    buf = bytearray(1 << 18)
    view = memoryview(buf)
    eof = False
    start = time.monotonic()
    deadline = start + args.max_seconds
    next_progress = start
    with sock:
        while not marks.stop.is_set():
            now = time.monotonic()
            if now >= deadline:
                break
            if now >= next_progress:
                next_progress = now + PROGRESS_EVERY
                print(json.dumps({"progress": len(arrivals), "now": now, "local": local,
                                  "last_due": due[-1] if len(due) else None,
                                  "last_arrival": arrivals[-1] if len(arrivals) else None,
                                  "exact": check.exact, "mptcp": mptcp_info(sock)}), flush=True)
            ready, _, _ = select.select([sock], [], [], PROGRESS_EVERY)
            if not ready:
                continue
            try:
                n = sock.recv_into(view)
            except BlockingIOError:
                continue
            except OSError as exc:
                check.error(f"recv failed: {exc}")
                break
            if n == 0:
                eof = True
                break
            arrived = time.monotonic()
            pending += view[:n]
            whole = len(pending) - len(pending) % size
            for off in range(0, whole, size):
                magic, seq, due_ns = HEADER.unpack_from(pending, off)
                if magic != MAGIC or pending[off + HEADER.size:off + size] != bodies[seq % CYCLE]:
                    check.corrupt += 1
                    check.error(f"message {len(arrivals)}: bad magic or payload")
                elif seq > check.expected:
                    check.lost += seq - check.expected
                    check.error(f"expected message {check.expected}, got {seq}")
                elif seq < check.expected:
                    check.duplicated_or_reordered += 1
                    check.error(f"expected message {check.expected}, got {seq} again")
                check.expected = max(check.expected, seq + 1)
                arrivals.append(arrived)
                due.append(due_ns / 1e9)
            del pending[:whole]
        stopped = time.monotonic()
        info = mptcp_info(sock)
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_RDWR)  # tells the sender at once that the stream is over
    result: dict[str, Any] = {
        "messages": len(arrivals), "bytes": len(arrivals) * size + len(pending),
        "size": size, "interval_ms": args.interval_ms, "eof": eof,
        "event": marks.event, "restore": marks.restore, **asdict(check), "exact": check.exact,
        "partial_bytes_at_end": len(pending), "mptcp": info,
        **window_figures(arrivals, due, marks, stopped),
    }
    print(json.dumps({"result": result}), flush=True)
    return 0


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="role", required=True)
    send = sub.add_parser("send", help="listen and send a paced stream to each connection")
    send.add_argument("--listen", type=host_port, required=True, metavar="HOST:PORT")
    send.add_argument("--max-seconds", type=float, default=3600.0,
                      help="the listener's lifetime")
    send.add_argument("--stream-seconds", type=float, default=60.0,
                      help="the longest one connection is streamed to")
    recv = sub.add_parser("recv", help="connect, check and time the stream")
    recv.add_argument("--connect", type=host_port, required=True, metavar="HOST:PORT")
    recv.add_argument("--bind-dev", default="", help="SO_BINDTODEVICE to this interface")
    recv.add_argument("--max-seconds", type=float, default=120.0)
    for p in (send, recv):
        p.add_argument("--mptcp", action="store_true", help="IPPROTO_MPTCP sockets")
        p.add_argument("--interval-ms", type=float, default=1.0)
        p.add_argument("--size", type=int, default=1024)
    args = parser.parse_args(argv)
    if args.size < HEADER.size + 1 or args.interval_ms <= 0 or args.max_seconds <= 0:
        parser.error(f"--size must be > {HEADER.size}; --interval-ms and --max-seconds > 0")
    return args


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    return serve(args) if args.role == "send" else receive(args)


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt, BrokenPipeError):
        sys.exit(main(sys.argv[1:]))
    os._exit(1)
