"""The benchmark client: throughput to a sink and 64-byte latency to an echo server.

    python bench/load.py tput --host H --port P --bytes N [--streams K] [--limit S]
    python bench/load.py latency --host H --port P --rounds N

Each prints one JSON object. bench/run.py calls these functions in its own process on
loopback; bench/tunnels.py runs this file inside the lab's mobile namespace, so every
path is driven by the same code. Every load is bounded in bytes and in time.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import socket
import sys
import threading
import time
from typing import Any

CHUNK = 256 * 1024  # sendall buffer
RUN_LIMIT = 60.0  # seconds of sending per throughput run
REPLY_LIMIT = 30.0  # seconds to wait for the sink's byte count after half-close
LATENCY_LIMIT = 30.0  # seconds for all latency rounds of one run
WARMUP = 20  # latency rounds not recorded


def split_bytes(total: int, streams: int) -> list[int]:
    """Share `total` bytes among `streams` connections, as evenly as whole bytes allow."""
    if streams <= 0 or total < 0:
        raise ValueError("streams must be positive and total not negative")
    base, extra = divmod(total, streams)
    return [base + (1 if i < extra else 0) for i in range(streams)]


def percentile(sorted_samples: list[float], p: float) -> float:
    """Nearest-rank percentile of samples sorted in ascending order."""
    if not sorted_samples:
        raise ValueError("no samples")
    return sorted_samples[max(0, math.ceil(p / 100 * len(sorted_samples)) - 1)]


def _send_one(sock: socket.socket, nbytes: int, payload: memoryview,
              deadline: float) -> tuple[int, bool]:
    sent = 0
    while sent < nbytes:
        if time.perf_counter() >= deadline:
            return sent, True
        n = min(CHUNK, nbytes - sent)
        sock.sendall(payload[:n])
        sent += n
    return sent, False


def _reply(sock: socket.socket) -> int:
    sock.shutdown(socket.SHUT_WR)
    sock.settimeout(REPLY_LIMIT)
    reply = b""
    while not reply.endswith(b"\n") and (data := sock.recv(64)):
        reply += data
    if not reply.strip().isdigit():
        raise RuntimeError(f"sink sent no byte count ({reply!r})")
    return int(reply)


def throughput(host: str, port: int, nbytes: int, streams: int = 1,
               limit: float = RUN_LIMIT) -> dict[str, Any]:
    """Send `nbytes` in all over `streams` connections at once (or what `limit` allows).

    Each connection half-closes and waits for the sink's byte count; the time runs from
    the first byte to the last count, and MB/s = 10^6 bytes/s of the aggregate.
    """
    shares = split_bytes(nbytes, streams)
    payload = memoryview(os.urandom(CHUNK))
    socks = [socket.create_connection((host, port), timeout=10) for _ in shares]
    results: list[tuple[int, int, bool] | BaseException] = [RuntimeError("not run")] * streams
    start = threading.Barrier(streams + 1)

    def worker(i: int) -> None:
        try:
            start.wait(10)
            sent, late = _send_one(socks[i], shares[i], payload, deadline)
            results[i] = (sent, _reply(socks[i]), late)
        except BaseException as exc:
            results[i] = exc

    deadline = 0.0
    try:
        threads = [threading.Thread(target=worker, args=(i,), daemon=True)
                   for i in range(streams)]
        for t in threads:
            t.start()
        t0 = time.perf_counter()
        deadline = t0 + limit
        start.wait(10)
        for t in threads:
            t.join(limit + REPLY_LIMIT + 10)
        t1 = time.perf_counter()
    finally:
        for s in socks:
            s.close()
    sent = received = 0
    timed_out = False
    for i, res in enumerate(results):
        if isinstance(res, BaseException):
            raise RuntimeError(f"stream {i}: {type(res).__name__}: {res}")
        if res[0] != res[1]:
            raise RuntimeError(f"stream {i}: sink received {res[1]} of {res[0]} bytes")
        sent, received, timed_out = sent + res[0], received + res[1], timed_out or res[2]
    secs = t1 - t0
    return {"bytes": received, "seconds": secs, "mbps": received / secs / 1e6,
            "streams": streams, "timed_out": timed_out}


def latency(host: str, port: int, rounds: int) -> dict[str, Any]:
    """64-byte request, 64-byte echo, `rounds` times on one TCP_NODELAY connection."""
    request = os.urandom(64)
    buf = bytearray(64)
    view = memoryview(buf)
    samples: list[float] = []
    with socket.create_connection((host, port), timeout=10) as s:
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        deadline = time.perf_counter() + LATENCY_LIMIT
        for i in range(WARMUP + rounds):
            if time.perf_counter() >= deadline:
                break
            t0 = time.perf_counter_ns()
            s.sendall(request)
            got = 0
            while got < 64:
                n = s.recv_into(view[got:])
                if n == 0:
                    raise RuntimeError("echo server closed the connection")
                got += n
            t1 = time.perf_counter_ns()
            if buf != request:
                raise RuntimeError("echo reply differs from the request")
            if i >= WARMUP:
                samples.append((t1 - t0) / 1000)
    if not samples:
        raise RuntimeError("no latency round completed")
    samples.sort()
    return {"p50_us": percentile(samples, 50), "p99_us": percentile(samples, 99),
            "rounds": len(samples)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="what", required=True)
    tput = sub.add_parser("tput")
    lat = sub.add_parser("latency")
    for p in (tput, lat):
        p.add_argument("--host", required=True)
        p.add_argument("--port", type=int, required=True)
    tput.add_argument("--bytes", type=int, required=True)
    tput.add_argument("--streams", type=int, default=1)
    tput.add_argument("--limit", type=float, default=RUN_LIMIT)
    lat.add_argument("--rounds", type=int, default=1000)
    args = parser.parse_args(argv)
    try:
        if args.what == "tput":
            out = throughput(args.host, args.port, args.bytes, args.streams, args.limit)
        else:
            out = latency(args.host, args.port, args.rounds)
    except (OSError, RuntimeError) as exc:
        print(json.dumps({"error": f"{type(exc).__name__}: {exc}"}), flush=True)
        return 1
    print(json.dumps(out), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
