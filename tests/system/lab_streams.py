"""Many byte-exact echo streams at once, for the lab (run inside a namespace).

    python lab_streams.py RATE_BYTES_PER_S PORT [PORT ...]

One TCP connection per port (a client's forward to an echo service); each
writes its own pattern at RATE bytes a second and checks every byte that
comes back. Every 0.1 s one JSON line on stdout: the bytes each stream got
back so far, and any error. On "stop" (a line on stdin) the writers stop,
each stream reads until all it sent came back, and a last line with
"final": true carries, per stream, what it sent and got back, its error, and
every wait of more than GAP_S between two reads (start and end, wall clock).
"""

from __future__ import annotations

import asyncio
import json
import random
import sys
import time

# A prime period: a stream that lost, repeated or reordered bytes cannot
# line up with its pattern again by chance.
PERIOD = 1_000_003
TICK_S = 0.1
# A wait the pacing cannot explain: a few ticks without a byte.
GAP_S = 0.3


class Stream:
    def __init__(self, index: int, port: int) -> None:
        self.index, self.port = index, port
        self.pattern = random.Random(index).randbytes(PERIOD)
        self.sent = self.received = 0
        self.error: str | None = None
        self.last = time.time()
        # Waits between two reads longer than GAP_S: (start, end), wall clock.
        self.gaps: list[tuple[float, float]] = []

    def chunk(self, offset: int, n: int) -> bytes:
        out = bytearray()
        while n:
            start = offset % PERIOD
            piece = self.pattern[start:start + n]
            out += piece
            offset += len(piece)
            n -= len(piece)
        return bytes(out)


async def write(stream: Stream, writer: asyncio.StreamWriter, rate: int,
                stop: asyncio.Event) -> None:
    per_tick = max(1, int(rate * TICK_S))
    while not stop.is_set():
        writer.write(stream.chunk(stream.sent, per_tick))
        stream.sent += per_tick
        await writer.drain()
        await asyncio.sleep(TICK_S)


async def read(stream: Stream, reader: asyncio.StreamReader, stop: asyncio.Event) -> None:
    while not (stop.is_set() and stream.received >= stream.sent):
        try:
            data = await asyncio.wait_for(reader.read(65536), TICK_S)
        except TimeoutError:
            continue  # look at `stop` again
        now = time.time()
        if not data:
            raise ConnectionError(f"EOF after {stream.received} bytes")
        if now - stream.last > GAP_S and stream.received:
            stream.gaps.append((stream.last, now))
        stream.last = now
        if data != stream.chunk(stream.received, len(data)):
            raise ValueError(f"wrong bytes at {stream.received}")
        stream.received += len(data)


async def run(stream: Stream, rate: int, stop: asyncio.Event) -> None:
    try:
        while True:
            try:
                reader, writer = await asyncio.open_connection("127.0.0.1", stream.port)
                break
            except OSError:
                await asyncio.sleep(0.2)  # the client's forward is not up yet
        stream.last = time.time()
        async with asyncio.TaskGroup() as tasks:
            tasks.create_task(write(stream, writer, rate, stop), name=f"write-{stream.index}")
            tasks.create_task(read(stream, reader, stop), name=f"read-{stream.index}")
        writer.close()
    except* (OSError, ValueError, ConnectionError) as group:
        stream.error = "; ".join(str(e) for e in group.exceptions)


async def report(streams: list[Stream], done: asyncio.Event) -> None:
    while not done.is_set():
        print(json.dumps({"t": time.time(), "received": [s.received for s in streams],
                          "errors": [s.error for s in streams if s.error]}), flush=True)
        await asyncio.sleep(TICK_S)


async def main() -> None:
    rate, ports = int(sys.argv[1]), [int(p) for p in sys.argv[2:]]
    streams = [Stream(i, port) for i, port in enumerate(ports)]
    stop, done = asyncio.Event(), asyncio.Event()
    loop = asyncio.get_running_loop()
    async with asyncio.TaskGroup() as tasks:
        tasks.create_task(report(streams, done), name="report")
        runs = [tasks.create_task(run(s, rate, stop), name=f"stream-{s.index}")
                for s in streams]
        await loop.run_in_executor(None, sys.stdin.readline)
        stop.set()
        await asyncio.wait(runs)
        done.set()
    print(json.dumps({"final": True, "t": time.time(),
                      "sent": [s.sent for s in streams],
                      "received": [s.received for s in streams],
                      "errors": [s.error for s in streams],
                      "gaps": [s.gaps for s in streams]}), flush=True)


if __name__ == "__main__":
    asyncio.run(main())
