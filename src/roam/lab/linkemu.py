"""A userspace TCP link emulator: a forwarder that can break the link on purpose.

`LinkEmulator` listens on one address and, for every accepted connection,
dials a target and forwards bytes both ways. Between the two it can add a
one-way delay, cap the rate, reset every connection (`cut`) or turn into a
silent black hole (`blackhole`) that reads and discards everything while
keeping every socket open, the way a dead network path looks to both ends.

Forwarding uses asyncio Protocols rather than streams so that loopback
throughput stays in the hundreds of MB/s. Buffering is bounded everywhere:
reading from one side pauses while the other side's transport write buffer is
above its high-water mark, or while the delay/rate queue of that direction
holds more than `QUEUE_HIGH` bytes. A consequence is that with a delay `d`
one direction of one connection carries at most about `QUEUE_HIGH / d`
bytes per second, much like a TCP window limits a long path.

Run as `python -m roam.lab.linkemu` for the command-line version
(see `roam.lab.linkemu_cli`).
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import socket
import struct
from collections import deque
from dataclasses import dataclass
from typing import Literal

from roam.eventloop import stream_transport

__all__ = ["QUEUE_HIGH", "LinkEmulator", "LinkStatistics", "Mode"]

Mode = Literal["pass", "blackhole"]

# Transport write-buffer limits: bigger than asyncio's 64 KiB default so that a
# fast loopback path is not throttled by constant pause/resume flapping.
WRITE_HIGH = 1 << 20
WRITE_LOW = 256 << 10

# Bytes one direction may hold in its delay/rate queue before reading from
# its source pauses; reading resumes once the queue has drained to half.
QUEUE_HIGH = 4 << 20
QUEUE_LOW = QUEUE_HIGH // 2

# Token-bucket depth, as a fraction of one second of the configured rate:
# small enough that a cap holds over short transfers, large enough that the
# pump is not woken for every few bytes.
_BURST_SECONDS = 0.02

_HOLD_DIAL = "dial"
_HOLD_PEER = "peer"
_HOLD_QUEUE = "queue"


@dataclass(frozen=True)
class LinkStatistics:
    """A snapshot of an emulator's counters.

    `bytes_dropped` counts bytes read from one side and never handed to the
    other (black-holed, or still queued when a connection was cut or closed).
    `cuts` and `blackholes` count calls to `cut()` and `blackhole()`.
    """

    connections_total: int
    connections_open: int
    bytes_to_target: int
    bytes_to_client: int
    bytes_dropped: int
    cuts: int
    blackholes: int
    mode: str


def _reset_transport(transport: asyncio.Transport) -> None:
    """Close `transport` so that its peer sees ECONNRESET rather than a FIN."""
    sock = transport.get_extra_info("socket")
    if sock is not None:
        # The socket may already be dead; the abort below still releases it.
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    transport.abort()


class _Side(asyncio.Protocol):
    """One of the two TCP connections of a link (towards the client or the target)."""

    def __init__(self, link: _Link, name: str) -> None:
        self.link = link
        self.name = name
        self.transport: asyncio.Transport | None = None
        self.alive = False
        self.read_eof = False
        self.write_full = False
        self._holds: set[str] = set()
        self._ready = False

    # Protocol callbacks.

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport = stream_transport(transport)
        self.alive = True
        transport.set_write_buffer_limits(high=WRITE_HIGH, low=WRITE_LOW)
        # On Python 3.11 the transport registers its reader in a callback that
        # runs right after this one, undoing a pause_reading() made here, so
        # reading is paused (if it must be) one callback later.
        asyncio.get_running_loop().call_soon(self._become_ready)
        self.link.side_connected(self)

    def data_received(self, data: bytes) -> None:
        self.link.side_data(self, data)

    def eof_received(self) -> bool:
        self.read_eof = True
        self.link.side_eof(self)
        # Keep the transport open: the other direction may still be carrying data.
        return True

    def connection_lost(self, exc: Exception | None) -> None:
        self.alive = False
        self.link.side_lost(self, exc)

    def pause_writing(self) -> None:
        self.write_full = True
        self.link.side_write_full(self)

    def resume_writing(self) -> None:
        self.write_full = False
        self.link.side_write_ready(self)

    # Reading control: reading is paused while any reason to hold it exists.

    def hold(self, reason: str) -> None:
        was_free = not self._holds
        self._holds.add(reason)
        if was_free and self._can_steer():
            self.require_transport().pause_reading()

    def release(self, reason: str) -> None:
        if reason not in self._holds:
            return
        self._holds.discard(reason)
        if not self._holds and self._can_steer():
            self.require_transport().resume_reading()

    def release_all(self) -> None:
        for reason in list(self._holds):
            self.release(reason)

    def writable(self) -> bool:
        return self.alive and self.transport is not None and not self.transport.is_closing()

    def _become_ready(self) -> None:
        self._ready = True
        if self._holds and self._can_steer():
            self.require_transport().pause_reading()

    def _can_steer(self) -> bool:
        # After EOF the transport has dropped its reader; resuming would re-add
        # it and deliver a second EOF.
        return self._ready and self.alive and not self.read_eof and self.transport is not None

    def require_transport(self) -> asyncio.Transport:
        if self.transport is None:
            raise RuntimeError(f"{self.name} side has no transport")
        return self.transport


class _Direction:
    """Bytes flowing from one side to the other, with delay and rate applied in order."""

    def __init__(self, emulator: LinkEmulator, src: _Side, dst: _Side, counter: str) -> None:
        self.emulator = emulator
        self.src = src
        self.dst = dst
        self.counter = counter
        # Entries are (due time, bytes); None stands for the source's EOF.
        self.queue: deque[tuple[float, bytes | None]] = deque()
        self.queued = 0
        self.eof_delivered = False
        self._timer: asyncio.TimerHandle | None = None
        self._rate: int | None = None
        self._burst = 0.0
        self._tokens = 0.0
        self._refilled = 0.0
        self.set_rate(emulator.rate_bps)

    def push(self, data: bytes | None) -> None:
        loop = asyncio.get_running_loop()
        delay = self.emulator.delay_ms / 1000.0
        self.queue.append((loop.time() + delay if delay > 0 else 0.0, data))
        if data is not None:
            self.queued += len(data)
            if self.queued > QUEUE_HIGH:
                self.src.hold(_HOLD_QUEUE)
        if self._timer is None:
            self.pump()

    def set_rate(self, rate: int | None) -> None:
        self._rate = rate
        self._refilled = asyncio.get_running_loop().time()
        if rate is None:
            self._burst = self._tokens = 0.0
        else:
            self._burst = max(1.0, rate * _BURST_SECONDS)
            self._tokens = self._burst
        self.reschedule()

    def reschedule(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self.queue:
            self.pump()

    def drop(self) -> int:
        """Forget everything queued; returns how many bytes were lost."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        lost = self.queued
        self.queue.clear()
        self.queued = 0
        return lost

    def pump(self) -> None:
        self._timer = None
        if not self.dst.writable():
            return
        loop = asyncio.get_running_loop()
        now = loop.time()
        transport = self.dst.require_transport()
        while self.queue and not self.dst.write_full and self.dst.writable():
            due, data = self.queue[0]
            if due > now:
                self._timer = loop.call_at(due, self.pump)
                return
            if data is None:
                self.queue.popleft()
                self._deliver_eof(transport)
                continue
            chunk = data
            if self._rate is not None:
                self._tokens = min(self._burst, self._tokens + (now - self._refilled) * self._rate)
                self._refilled = now
                need = min(len(data), self._burst)
                if self._tokens < need:
                    self._timer = loop.call_at(now + (need - self._tokens) / self._rate, self.pump)
                    return
                size = min(len(data), int(self._tokens))
                self._tokens -= size
                chunk = data[:size]
                if size < len(data):
                    self.queue[0] = (due, data[size:])
                else:
                    self.queue.popleft()
            else:
                self.queue.popleft()
            self.queued -= len(chunk)
            self.emulator.count_forwarded(self.counter, len(chunk))
            transport.write(chunk)
        if self.queued <= QUEUE_LOW:
            self.src.release(_HOLD_QUEUE)

    def _deliver_eof(self, transport: asyncio.Transport) -> None:
        try:
            transport.write_eof()
        except OSError:
            # The peer is already gone; pass that on as the reset it is.
            self.dst.link.reset()
            return
        self.eof_delivered = True
        self.dst.link.maybe_finish()


class _Link:
    """One accepted connection and, unless black-holed from the start, its dialled twin."""

    def __init__(self, emulator: LinkEmulator) -> None:
        self.emulator = emulator
        self.client = _Side(self, "client")
        self.target = _Side(self, "target")
        self.up = _Direction(emulator, self.client, self.target, "to_target")
        self.down = _Direction(emulator, self.target, self.client, "to_client")
        self.blackholed = emulator.mode == "blackhole"
        self.dead = False
        self.dial: asyncio.Task[None] | None = None

    def sides(self) -> tuple[_Side, _Side]:
        return (self.client, self.target)

    # Events from the sides.

    def side_connected(self, side: _Side) -> None:
        if self.dead:
            _reset_transport(side.require_transport())
            return
        if side is self.client:
            if not self.blackholed:
                # Whatever the client sends before the target answers waits.
                self.client.hold(_HOLD_DIAL)
                self.dial = asyncio.get_running_loop().create_task(self._dial())
                self.dial.add_done_callback(self._dial_done)
        else:
            self.client.release(_HOLD_DIAL)
            self.up.pump()

    def side_data(self, side: _Side, data: bytes) -> None:
        if self.dead or self.blackholed:
            self.emulator.count_dropped(len(data))
            return
        (self.up if side is self.client else self.down).push(data)

    def side_eof(self, side: _Side) -> None:
        if self.dead:
            return
        if self.blackholed:
            # A dead path carries no FIN either.
            self._finish_if_gone()
            return
        (self.up if side is self.client else self.down).push(None)

    def side_lost(self, side: _Side, exc: Exception | None) -> None:
        side.alive = False
        if self.dead:
            return
        if not self.blackholed:
            other = self.target if side is self.client else self.client
            if exc is not None:
                # A forwarder passes an abortive close on as one.
                self.reset()
                return
            if other.writable():
                other.release_all()
                self._drop_queues()
                other.require_transport().close()
        self._finish_if_gone()

    def side_write_full(self, side: _Side) -> None:
        other = self.target if side is self.client else self.client
        if not self.blackholed:
            other.hold(_HOLD_PEER)

    def side_write_ready(self, side: _Side) -> None:
        other = self.target if side is self.client else self.client
        other.release(_HOLD_PEER)
        (self.down if side is self.client else self.up).pump()

    # Commands from the emulator.

    def reset(self) -> None:
        """Abort both connections with RST and forget the link."""
        self.dead = True
        self._cancel_dial()
        self._drop_queues()
        for side in self.sides():
            if side.alive and side.transport is not None:
                _reset_transport(side.transport)
        self.emulator.forget(self)

    def shut(self) -> None:
        """Close both connections at once (emulator shutdown)."""
        self.dead = True
        self._cancel_dial()
        self._drop_queues()
        for side in self.sides():
            if side.alive and side.transport is not None:
                side.transport.abort()
        self.emulator.forget(self)

    def blackhole(self) -> None:
        if self.blackholed or self.dead:
            return
        self.blackholed = True
        # A path that dies while the handshake is in flight never completes it.
        self._cancel_dial()
        self._drop_queues()
        for side in self.sides():
            side.release_all()
        self._finish_if_gone()

    def maybe_finish(self) -> None:
        """Close both connections once each direction has carried its EOF."""
        if self.dead or self.blackholed:
            return
        if self.up.eof_delivered and self.down.eof_delivered:
            for side in self.sides():
                if side.writable():
                    side.require_transport().close()

    def _dial_pending(self) -> bool:
        return self.dial is not None and not self.dial.done()

    async def _dial(self) -> None:
        host, port = self.emulator.target
        loop = asyncio.get_running_loop()
        try:
            await loop.create_connection(lambda: self.target, host, port)
        except OSError:
            # Answer the client the way an unreachable server would.
            if not self.dead and not self.blackholed:
                self.reset()

    def _dial_done(self, _: asyncio.Task[None]) -> None:
        # A dial cancelled by blackhole() may finish after both ends left.
        if not self.dead:
            self._finish_if_gone()

    def _cancel_dial(self) -> None:
        if self._dial_pending() and self.dial is not None:
            self.dial.cancel()

    def _drop_queues(self) -> None:
        self.emulator.count_dropped(self.up.drop() + self.down.drop())

    def _finish_if_gone(self) -> None:
        if self._dial_pending():
            return
        if self.blackholed and all(side.read_eof or not side.alive for side in self.sides()):
            # Both ends have hung up on a dead path; nobody is left to keep
            # silent for, so let the sockets go.
            for side in self.sides():
                if side.alive and side.transport is not None:
                    side.transport.close()
        if not self.client.alive and not self.target.alive:
            self.dead = True
            self._drop_queues()
            self.emulator.forget(self)


class LinkEmulator:
    """A TCP forwarder between a client and a target that can break on demand.

    `blackhole()` affects current and new connections; `restore()` only
    brings back forwarding for connections accepted afterwards. Connections
    that were black-holed stay black-holed and their bytes stay lost, as on a
    real path that died: recovering from that is the job of the endpoints,
    which is exactly what the emulator exists to exercise.
    """

    def __init__(
        self,
        listen: tuple[str, int],
        target: tuple[str, int],
        *,
        delay_ms: float = 0.0,
        rate_bps: int | None = None,
    ) -> None:
        self.listen = listen
        self.target = target
        self.delay_ms = _check_delay(delay_ms)
        self.rate_bps = _check_rate(rate_bps)
        self._mode: Mode = "pass"
        self._server: asyncio.Server | None = None
        self._links: set[_Link] = set()
        self._dials: set[asyncio.Task[None]] = set()
        self._connections_total = 0
        self._bytes_to_target = 0
        self._bytes_to_client = 0
        self._bytes_dropped = 0
        self._cuts = 0
        self._blackholes = 0

    @property
    def mode(self) -> Mode:
        return self._mode

    async def start(self) -> None:
        """Bind the listening socket (port 0 picks a free port) and start accepting."""
        if self._server is not None:
            raise RuntimeError("link emulator already started")
        loop = asyncio.get_running_loop()
        host, port = self.listen
        self._server = await loop.create_server(self._accept, host, port)

    @property
    def address(self) -> tuple[str, int]:
        """The address actually listened on."""
        if self._server is None or not self._server.sockets:
            raise RuntimeError("link emulator is not listening")
        name = self._server.sockets[0].getsockname()
        return (str(name[0]), int(name[1]))

    async def close(self) -> None:
        """Stop listening and close every connection."""
        server, self._server = self._server, None
        if server is not None:
            server.close()
        for link in list(self._links):
            link.shut()
        if self._dials:
            await asyncio.gather(*self._dials, return_exceptions=True)
        if server is not None:
            await server.wait_closed()
        # Let the transports' connection_lost callbacks run so their sockets close.
        await asyncio.sleep(0)

    def cut(self) -> None:
        """Reset every current connection on both sides; new ones are still accepted."""
        self._cuts += 1
        for link in list(self._links):
            link.reset()

    def blackhole(self) -> None:
        """Silently discard every byte of current and new connections, closing nothing.

        Queued bytes (delay, rate) are dropped too; bytes already handed to a
        socket's buffers still reach the peer, like packets already past the
        point where a real path failed. A black-holed connection is let go
        only once each of its ends has closed or was never connected.
        """
        self._blackholes += 1
        self._mode = "blackhole"
        for link in list(self._links):
            link.blackhole()

    def restore(self) -> None:
        """Forward new connections again; black-holed ones stay black-holed."""
        self._mode = "pass"

    def set_delay(self, ms: float) -> None:
        """Add `ms` milliseconds of one-way latency in each direction.

        Bytes already queued keep their delivery time; later bytes never
        overtake them, so lowering the delay cannot reorder the stream.
        """
        self.delay_ms = _check_delay(ms)

    def set_rate(self, bps: int | None) -> None:
        """Cap each direction of each connection at `bps` bytes per second (None: no cap)."""
        self.rate_bps = _check_rate(bps)
        for link in self._links:
            link.up.set_rate(self.rate_bps)
            link.down.set_rate(self.rate_bps)

    def statistics(self) -> LinkStatistics:
        return LinkStatistics(
            connections_total=self._connections_total,
            connections_open=len(self._links),
            bytes_to_target=self._bytes_to_target,
            bytes_to_client=self._bytes_to_client,
            bytes_dropped=self._bytes_dropped,
            cuts=self._cuts,
            blackholes=self._blackholes,
            mode=self._mode,
        )

    # Bookkeeping used by links.

    def count_forwarded(self, counter: str, size: int) -> None:
        if counter == "to_target":
            self._bytes_to_target += size
        else:
            self._bytes_to_client += size

    def count_dropped(self, size: int) -> None:
        self._bytes_dropped += size

    def forget(self, link: _Link) -> None:
        self._links.discard(link)
        if link.dial is not None and not link.dial.done():
            # Keep the task referenced until it has unwound, so close() can await it.
            self._dials.add(link.dial)
            link.dial.add_done_callback(self._dials.discard)

    def _accept(self) -> asyncio.Protocol:
        self._connections_total += 1
        link = _Link(self)
        self._links.add(link)
        return link.client


def _check_delay(ms: float) -> float:
    if not math.isfinite(ms) or ms < 0:
        raise ValueError(f"delay must be a finite number of milliseconds >= 0, got {ms!r}")
    return float(ms)


def _check_rate(bps: int | None) -> int | None:
    if bps is not None and (isinstance(bps, bool) or bps <= 0):
        raise ValueError(f"rate must be a positive number of bytes per second or None, got {bps!r}")
    return bps


if __name__ == "__main__":
    import sys

    from roam.lab.linkemu_cli import main

    sys.exit(main())
