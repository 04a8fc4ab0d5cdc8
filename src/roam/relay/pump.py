"""Moving a spliced transport's bytes both ways, in the kernel: splice(2) through a pipe.

After a relay has read a transport's header it only moves bytes. `splice`
moves them from one socket into a pipe and from the pipe into the other
socket without copying them through Python (or through user space at all):
the relay's CPU per byte is the kernel's. Each direction has its own pipe;
while a destination cannot take more, its source is not read, so a relay
holds at most one pipe per direction and TCP carries the backpressure to the
sender. Driven by the event loop's readiness callbacks (asyncio or uvloop),
no thread. Where os.splice does not exist, a plain copy loop does the same.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import logging
import os
import socket
from collections.abc import Callable
from dataclasses import dataclass

log = logging.getLogger("roam")

CHUNK = 1 << 16  # a default pipe's capacity
_FLAGS = getattr(os, "SPLICE_F_MOVE", 1) | getattr(os, "SPLICE_F_NONBLOCK", 2)
_F_SETPIPE_SZ = getattr(fcntl, "F_SETPIPE_SZ", 1031)


@dataclass
class SpliceStats:
    """Bytes moved each way, readable while the splice runs (for status)."""

    a_to_b: int = 0
    b_to_a: int = 0


class _Direction:
    """One way: src -> pipe -> dst, stepped by readiness callbacks."""

    def __init__(self, loop: asyncio.AbstractEventLoop, src: socket.socket,
                 dst: socket.socket, first: bytes, add: Callable[[int], None],
                 pipe_size: int | None) -> None:
        self.loop, self.src, self.dst = loop, src, dst
        self.first = memoryview(first)
        self.add = add  # bytes delivered to dst, counted as they go
        self.rpipe, self.wpipe = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        if pipe_size is not None:
            fcntl.fcntl(self.wpipe, _F_SETPIPE_SZ, pipe_size)
        self.in_pipe = 0
        self.eof = False
        self.done: asyncio.Future[None] = loop.create_future()
        self.reading = self.writing = False

    def start(self) -> None:
        if self.first:
            self._want_write()
        else:
            self._want_read()

    def _want_read(self) -> None:
        if not self.reading:
            self.reading = True
            self.loop.add_reader(self.src.fileno(), self._readable)

    def _no_read(self) -> None:
        if self.reading:
            self.reading = False
            self.loop.remove_reader(self.src.fileno())

    def _want_write(self) -> None:
        if not self.writing:
            self.writing = True
            self.loop.add_writer(self.dst.fileno(), self._writable)

    def _no_write(self) -> None:
        if self.writing:
            self.writing = False
            self.loop.remove_writer(self.dst.fileno())

    def _readable(self) -> None:
        try:
            n = os.splice(self.src.fileno(), self.wpipe, CHUNK, flags=_FLAGS)
        except BlockingIOError:
            return
        except OSError as exc:
            self._fail(exc)
            return
        if n == 0:
            self.eof = True
            self._no_read()
            if not self.in_pipe:
                self._finish()
            return
        self.in_pipe += n
        self._flush()

    def _writable(self) -> None:
        if self.first:
            try:
                sent = self.dst.send(self.first)
            except BlockingIOError:
                return
            except OSError as exc:
                self._fail(exc)
                return
            self.add(sent)
            self.first = self.first[sent:]
            if self.first:
                return
            self._no_write()
            self._want_read()
            return
        self._flush()

    def _flush(self) -> None:
        """The pipe into dst, as far as dst takes; reading pauses while it is full."""
        while self.in_pipe:
            try:
                n = os.splice(self.rpipe, self.dst.fileno(), self.in_pipe, flags=_FLAGS)
            except BlockingIOError:
                self._no_read()  # backpressure: dst is full
                self._want_write()
                return
            except OSError as exc:
                self._fail(exc)
                return
            self.in_pipe -= n
            self.add(n)
        self._no_write()
        if self.eof:
            self._finish()
        else:
            self._want_read()

    def _finish(self) -> None:
        with contextlib.suppress(OSError):
            self.dst.shutdown(socket.SHUT_WR)  # the half-close goes on
        if not self.done.done():
            self.done.set_result(None)

    def _fail(self, exc: OSError) -> None:
        log.debug("splice %s -> %s ended: %s", self.src.fileno(), self.dst.fileno(), exc)
        if not self.done.done():
            self.done.set_exception(exc)

    def close(self) -> None:
        self._no_read()
        self._no_write()
        if not self.done.done():
            self.done.cancel()
        elif not self.done.cancelled():
            self.done.exception()  # seen: a failure that ended the other way too
        for fd in (self.rpipe, self.wpipe):
            with contextlib.suppress(OSError):
                os.close(fd)


async def splice(a: socket.socket, b: socket.socket, *, stats: SpliceStats | None = None,
                 first_to_b: bytes = b"", first_to_a: bytes = b"",
                 pipe_size: int | None = None) -> None:
    """Move bytes between `a` and `b` until both directions ended or one
    failed; `first_to_*` go before anything spliced that way. The caller
    closes the sockets."""
    if a.getblocking() or b.getblocking():
        raise ValueError("splice needs non-blocking sockets")
    if not hasattr(os, "splice"):
        await _copy(a, b, stats or SpliceStats(), first_to_b, first_to_a)
        return
    loop = asyncio.get_running_loop()
    counts = stats if stats is not None else SpliceStats()

    def add_ab(n: int) -> None:
        counts.a_to_b += n

    def add_ba(n: int) -> None:
        counts.b_to_a += n

    ways = [_Direction(loop, a, b, first_to_b, add_ab, pipe_size)]
    try:
        ways.append(_Direction(loop, b, a, first_to_a, add_ba, pipe_size))
        for way in ways:
            way.start()
        pending = {way.done for way in ways}
        while pending:
            done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
            if any(f.exception() is not None for f in done):
                break  # one side failed (a reset): both directions stop
    finally:
        for way in ways:
            way.close()


async def _copy(a: socket.socket, b: socket.socket, stats: SpliceStats, first_to_b: bytes,
                first_to_a: bytes) -> None:
    loop = asyncio.get_running_loop()

    async def one(src: socket.socket, dst: socket.socket, first: bytes, ab: bool) -> None:
        if first:
            await loop.sock_sendall(dst, first)
        buf = bytearray(CHUNK)
        while True:
            n = await loop.sock_recv_into(src, buf)
            if not n:
                with contextlib.suppress(OSError):
                    dst.shutdown(socket.SHUT_WR)
                return
            await loop.sock_sendall(dst, memoryview(buf)[:n])
            if ab:
                stats.a_to_b += n
            else:
                stats.b_to_a += n

    try:
        async with asyncio.TaskGroup() as tasks:
            tasks.create_task(one(a, b, first_to_b, True), name="copy-a-b")
            tasks.create_task(one(b, a, first_to_a, False), name="copy-b-a")
    except* OSError as group:
        log.debug("copy between %s and %s ended: %s", a.fileno(), b.fileno(),
                  group.exceptions[0])
