"""One TCP transport: exact reads while handshaking, then pushed records.

asyncio Protocols rather than streams: the record path is the hot path. A
BufferedProtocol reads into one scratch buffer that every transport of the
process shares (only a record left unfinished by a read is kept per
transport), and hands the whole records in it to the session as views: no
allocation per read, and no copy of a record before it is decrypted.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Callable

from roam.crypto.records import RecordFramer
from roam.errors import FramingError, TransportError
from roam.eventloop import stream_transport

Records = list[tuple[int, memoryview]]

# The shared receive buffer. One read takes at most this much: a larger read
# means fewer system calls and loop iterations per byte (a 128 KiB record
# takes about 15 us to open, a loop iteration about as much), and it must
# hold an unfinished record (up to MAX_RECORD + 12 bytes) with room to spare.
SCRATCH_SIZE = 1024 * 1024
# Before records: what one read takes, and what the protocol buffers before
# it stops reading. The largest handshake step reads 1 KiB (a Noise message,
# MAX_HANDSHAKE_MESSAGE; a resume's first record, MAX_FIRST_RECORD), so an
# unauthenticated peer makes a transport hold at most about twice this.
HANDSHAKE_READ = 4096
_scratch: memoryview | None = None
# struct tcp_info (linux/tcp.h): tcpi_unacked (segments in flight) is at
# offset 24, tcpi_delivered (segments the peer's TCP acknowledged or SACKed,
# Linux 4.18 and later) at 192.
_TCPI_UNACKED = 24
_TCPI_DELIVERED = 192
_TCPI_LENGTH = 196


def _scratch_buffer() -> memoryview:
    # Made on first use: a process that never carries a session never pays.
    global _scratch
    if _scratch is None:
        _scratch = memoryview(bytearray(SCRATCH_SIZE))
    return _scratch


class TransportProtocol(asyncio.BufferedProtocol):
    # One per transport, so one per idle session on a server: slots instead
    # of an instance dict (asyncio.Protocol declares empty slots for this).
    # __weakref__: a client remembers, per relayed transport, the relays'
    # replies it still owes a read, without keeping the transport alive.
    __slots__ = ("__weakref__", "_buf", "_framer", "_gone", "_on_drain", "_on_lost",
                 "_on_made", "_paused", "_sink", "_waiter", "lost", "lost_reason", "peer",
                 "peer_host", "transport", "write_paused")

    def __init__(self, on_made: Callable[[TransportProtocol], None] | None = None,
                 prefix: bytes = b"") -> None:
        """`prefix`: bytes read from the connection before it came here (a
        transport another worker of the server handed over, roam.transport.handoff)."""
        self._on_made = on_made
        self.transport: asyncio.Transport | None = None
        self._buf = bytearray(prefix)
        self._waiter: asyncio.Future[None] | None = None
        self._sink: Callable[[Records], None] | None = None
        self._framer: RecordFramer | None = None
        self._on_lost: Callable[[Exception | None], None] | None = None
        self._on_drain: Callable[[], None] | None = None
        self._gone: Callable[[], None] | None = None
        self.lost = False
        self.lost_reason: Exception | None = None
        self.write_paused = False
        self._paused = False  # reading paused: the handshake buffer is full
        self.peer: str = "?"
        self.peer_host: str = "?"

    # ---- asyncio callbacks -------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport = stream_transport(transport)
        sock = transport.get_extra_info("socket")
        if sock is not None:
            # Records are whole messages already; Nagle would only add delay.
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        peer = transport.get_extra_info("peername")
        if peer:
            self.peer = f"{peer[0]}:{peer[1]}"
            self.peer_host = str(peer[0])
        # Paused as soon as the socket leaves part of a record unsent, resumed
        # once it took all of it: records wait in the session's replay buffer
        # (sealed only when they can go), not sealed in the write buffer.
        transport.set_write_buffer_limits(high=0, low=0)
        if self._on_made is not None:
            made, self._on_made = self._on_made, None
            made(self)

    def get_buffer(self, sizehint: int) -> memoryview:
        scratch = _scratch_buffer()
        if self._framer is not None:
            return self._framer.get_buffer(scratch)
        # Before the records begin, the peer may not be authenticated: take
        # a little at a time, and no more than the handshake reads.
        return scratch[:HANDSHAKE_READ]

    def buffer_updated(self, nbytes: int) -> None:
        scratch = _scratch_buffer()
        framer, sink = self._framer, self._sink
        if framer is not None and sink is not None:
            try:
                records = framer.buffer_updated(scratch, nbytes)
            except FramingError as exc:
                self._garbage(exc)
                return
            sink(records)
            return
        self._buf += scratch[:nbytes]
        if len(self._buf) >= HANDSHAKE_READ and self.transport is not None and not self._paused:
            # More than any handshake step reads: the rest waits in the
            # kernel (whose buffer is the peer's to fill, not our memory).
            self._paused = True
            self.transport.pause_reading()
        self._wake()

    def eof_received(self) -> bool:
        return False  # a half-closed transport is a dead one

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        self.lost_reason = exc
        self._wake()
        if self._on_lost is not None:
            self._on_lost(exc)
        if self._gone is not None:
            gone, self._gone = self._gone, None
            gone()

    def on_gone(self, callback: Callable[[], None]) -> None:
        """Call `callback` once the connection is gone (at once if it is)."""
        if self.lost:
            callback()
        else:
            self._gone = callback

    def pause_writing(self) -> None:
        self.write_paused = True

    def resume_writing(self) -> None:
        self.write_paused = False
        if self._on_drain is not None:
            self._on_drain()

    # ---- handshake phase -----------------------------------------------------

    def _wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    async def read_exactly(self, n: int, timeout: float) -> bytes:
        """Read n bytes during the handshake; TransportError on EOF or timeout."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while len(self._buf) < n:
            self._resume_reading()
            if self.lost:
                why = f": {self.lost_reason}" if self.lost_reason else ""
                raise TransportError(f"connection closed by {self.peer}{why}")
            self._waiter = loop.create_future()
            remaining = deadline - loop.time()
            if remaining <= 0:
                raise TransportError(f"no answer from {self.peer} within {timeout:g} s")
            try:
                await asyncio.wait_for(self._waiter, remaining)
            except TimeoutError:
                raise TransportError(f"no answer from {self.peer} within {timeout:g} s") from None
            finally:
                self._waiter = None
        data = bytes(self._buf[:n])
        del self._buf[:n]
        return data

    def take_buffered(self) -> bytes:
        """What was read and not yet taken by read_exactly, now the caller's."""
        data = bytes(self._buf)
        self._buf.clear()
        return data

    def _resume_reading(self) -> None:
        if self._paused and self.transport is not None:
            self._paused = False
            self.transport.resume_reading()

    def tcp_delivery(self) -> tuple[int, int]:
        """TCP's segments in flight, and those the peer's TCP acknowledged or
        SACKed so far (which counts on while a lost segment is being
        repaired: roam.core.delivery). OSError when the kernel does not say."""
        sock = self.transport.get_extra_info("socket") if self.transport is not None else None
        if sock is None:
            raise OSError("no socket")
        info = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, _TCPI_LENGTH)
        if len(info) < _TCPI_LENGTH:
            raise OSError(f"tcp_info has {len(info)} bytes, not {_TCPI_LENGTH}: no tcpi_delivered")
        return (int.from_bytes(info[_TCPI_UNACKED:_TCPI_UNACKED + 4], "little"),
                int.from_bytes(info[_TCPI_DELIVERED:_TCPI_DELIVERED + 4], "little"))

    def write(self, data: bytes | bytearray) -> None:
        if self.transport is not None and not self.lost:
            self.transport.write(data)

    # ---- record phase ----------------------------------------------------------

    def start_push(self, framer: RecordFramer, sink: Callable[[Records], None],
                   on_lost: Callable[[Exception | None], None],
                   on_drain: Callable[[], None]) -> None:
        """From now on `framer` splits every read into records for `sink`,
        starting with what is buffered. The records are views of a buffer
        that the next read overwrites: `sink` must be done with them when it
        returns."""
        self._framer = framer
        self._sink, self._on_lost, self._on_drain = sink, on_lost, on_drain
        self._resume_reading()
        if self._buf:
            leftover = bytes(self._buf)
            self._buf.clear()
            try:
                records = framer.feed(leftover)
            except FramingError as exc:
                self._garbage(exc)
                return
            sink(records)
        if self.lost:
            on_lost(self.lost_reason)

    def _garbage(self, exc: FramingError) -> None:
        """Garbage condemns this transport only; on_lost says why."""
        if self._on_lost is not None:
            self._on_lost(exc)
        self.abort()

    def detach(self) -> None:
        """Forget the callbacks and drop the connection (a replaced transport)."""
        self._sink = None
        self._framer = None
        self._on_lost = None
        self._on_drain = None
        self.abort()

    def abort(self) -> None:
        if self.transport is not None:
            self.transport.abort()

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()
