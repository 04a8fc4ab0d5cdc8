"""The demo's application: one TCP conversation through the client's forward.

It writes a steady stream to an echo service beside the server and checks
every byte that comes back against what it sent, as it arrives, so a lost,
duplicated, reordered or altered byte is caught where it happens. It knows
nothing of roam: its one connection goes to a local port, as any program's.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from dataclasses import dataclass

# 16 KiB every 10 ms (1.6 MB/s each way): enough to keep tens of records in
# flight, so every break catches some, while leaving this slow a machine's
# two CPUs to the daemons; the 10 ms pace is the resolution of the stall
# the application measures.
CHUNK = 16 * 1024
INTERVAL = 0.01
# Waits for the echo longer than this are kept, to tell each break's cost;
# shorter ones are the pace and the paths' round trips.
WAIT_NOTED = 0.05

# A pattern position-dependent over more than any break holds in flight:
# a loss, duplicate or reorder shifts every later byte.
_BLOCK = 1 << 20


class Pattern:
    """A repeatable byte stream: `slice(offset, n)` is the same on both sides of the echo."""

    def __init__(self, seed: int) -> None:
        self._base = random.Random(seed).randbytes(_BLOCK + 4096)

    def slice(self, offset: int, n: int) -> bytes:
        out = bytearray()
        while n > 0:
            index, pos = divmod(offset, _BLOCK)
            start = (index * 61) % 4096 + pos  # each block shifted: no period of 1 MiB
            take = min(n, _BLOCK - pos)
            out += self._base[start:start + take]
            offset += take
            n -= take
        return bytes(out)


@dataclass(frozen=True)
class AppStatistics:
    bytes_sent: int
    bytes_echoed: int
    mismatch_at: int | None  # offset of the first echoed byte that differs, if any
    longest_wait: float  # the longest time without an echoed byte while some were owed
    error: str | None

    @property
    def intact(self) -> bool:
        return (self.error is None and self.mismatch_at is None
                and self.bytes_sent == self.bytes_echoed)


class App:
    """Streams until `stop()`, then waits for the rest of the echo."""

    def __init__(self, seed: int = 1) -> None:
        self._pattern = Pattern(seed)
        self._stop = asyncio.Event()
        self.bytes_sent = 0
        self.bytes_echoed = 0
        self.mismatch_at: int | None = None
        self.error: str | None = None
        self.last_echo = 0.0  # monotonic time of the latest echoed bytes
        self._waits: list[tuple[float, float]] = []  # (start, end) of every long wait

    def stop(self) -> None:
        self._stop.set()

    def statistics(self) -> AppStatistics:
        return AppStatistics(self.bytes_sent, self.bytes_echoed, self.mismatch_at,
                             self.longest_wait(0.0), self.error)

    def longest_wait(self, since: float) -> float:
        """The longest wait for echoed bytes that ended after `since` (monotonic)."""
        return max((end - start for start, end in self._waits if end > since), default=0.0)

    async def run(self, host: str, port: int, drain_timeout: float = 30.0) -> None:
        """The conversation; problems end up in `error` rather than raised."""
        try:
            reader, writer = await asyncio.open_connection(host, port)
        except OSError as exc:
            self.error = f"could not connect to the forward {host}:{port}: {exc}"
            return
        self.last_echo = time.monotonic()
        reading = asyncio.create_task(self._read(reader), name="demo-app-read")
        try:
            while not self._stop.is_set() and not reading.done():
                writer.write(self._pattern.slice(self.bytes_sent, CHUNK))
                self.bytes_sent += CHUNK
                await writer.drain()
                with contextlib.suppress(TimeoutError):  # the pace, not a problem
                    await asyncio.wait_for(self._stop.wait(), INTERVAL)
            writer.write_eof()
            await asyncio.wait_for(asyncio.shield(reading), drain_timeout)
        except TimeoutError:
            self.error = (f"the echo of the last {self.bytes_sent - self.bytes_echoed} bytes "
                          f"did not come back within {drain_timeout:g} s")
        except OSError as exc:
            self.error = f"the application's connection broke: {exc}"
        finally:
            reading.cancel()
            writer.close()

    async def _read(self, reader: asyncio.StreamReader) -> None:
        while data := await reader.read(256 * 1024):
            now = time.monotonic()
            if now - self.last_echo > WAIT_NOTED:
                self._waits.append((self.last_echo, now))
            self.last_echo = now
            if self.mismatch_at is None:
                expected = self._pattern.slice(self.bytes_echoed, len(data))
                if data != expected:
                    i = next(i for i in range(len(data)) if data[i] != expected[i])
                    self.mismatch_at = self.bytes_echoed + i
            self.bytes_echoed += len(data)
        if self.bytes_echoed < self.bytes_sent and self.error is None:
            self.error = f"the echo ended after {self.bytes_echoed} of {self.bytes_sent} bytes"

