"""Moving a spliced transport's bytes both ways inside the kernel.

Once a relay has read a transport's cleartext header, all that is left is to
move bytes between two TCP sockets until both ends are done. recv and send
would copy every byte into Python and back out again; splice(2) moves them
from a socket into a pipe and from the pipe into the other socket by page
reference, so the relay's cost per byte is the kernel's and Python only
answers readiness.

A direction takes a pipe from a pool when its source is readable and gives it
back as soon as the destination took everything in it, so a pipe is held only
by a direction whose destination cannot take more: an idle session, or one
whose bytes go straight through, holds none (two descriptors per session, not
six, and no share of the user's pipe quota). A direction reads its source only
while its pipe is empty and stops reading while its destination cannot take
more, so a relay holds at most one pipe's worth per direction and TCP's flow
control carries the backpressure back to the sender. When no pipe can be had
(out of descriptors), one read goes through Python instead. An end of stream
is passed on as a half-close; a failure of either socket ends both directions.

The running event loop's readiness callbacks drive it, on asyncio's own loop
and on uvloop alike, with no thread. Where os.splice does not exist, a small
copy loop over the loop's socket methods does the same job.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import os
import socket
from asyncio.selector_events import BaseSelectorEventLoop
from collections.abc import Callable
from dataclasses import dataclass

log = logging.getLogger("roam")

# Pipes a direction may move per readiness callback: enough to amortise the
# callback, few enough that one fast session cannot starve the others that
# share the loop.
_BURST = 16
_COPY_SIZE = 1 << 16  # the fallback's buffer per direction: one default pipe
# A read shorter than this ends a callback on a level-triggered loop (below).
_SHORT = 16 * 1024
# Empty pipes a pool keeps for the next readable direction; beyond, they close.
SPARE_PIPES = 16
# No pipe to be had: these errors send one read through Python instead.
_NO_PIPE = (errno.EMFILE, errno.ENFILE, errno.ENOMEM)

Pipe = tuple[int, int, int]  # read end, write end, capacity in bytes


class PipePool:
    """Empty pipes for every splice of one relay (or of one splice call).

    `take` gives an empty pipe (a kept one, else a new one); `give` takes it
    back once it is empty again, keeping up to `spare` and closing the rest,
    and closes a pipe that still holds bytes (its splice ended). `size` sets
    each new pipe's capacity (None: the system's default, 64 KiB).
    """

    def __init__(self, size: int | None = None, spare: int = SPARE_PIPES) -> None:
        self.size = size
        self.spare = spare
        self.open = 0  # pipes open now, held or kept
        self._free: list[Pipe] = []

    def take(self) -> Pipe:
        if self._free:
            return self._free.pop()
        import fcntl  # absent on Windows, where only the fallback runs

        rfd, wfd = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self.open += 1
        try:
            if self.size is not None:
                fcntl.fcntl(wfd, fcntl.F_SETPIPE_SZ, self.size)
            # The kernel rounds the size up, or grants less when the user's pipe
            # quota is spent: read back what a splice into it can really take.
            return rfd, wfd, fcntl.fcntl(wfd, fcntl.F_GETPIPE_SZ)
        except BaseException:
            self._close((rfd, wfd, 0))
            raise

    def give(self, pipe: Pipe, *, empty: bool = True) -> None:
        if empty and len(self._free) < self.spare:
            self._free.append(pipe)
        else:
            self._close(pipe)

    def close(self) -> None:
        while self._free:
            self._close(self._free.pop())

    def _close(self, pipe: Pipe) -> None:
        self.open -= 1
        os.close(pipe[0])
        os.close(pipe[1])


@dataclass
class SpliceStats:
    """Bytes moved each way, readable while the splice runs (for status)."""

    a_to_b: int = 0
    b_to_a: int = 0


async def splice(a: socket.socket, b: socket.socket, *, stats: SpliceStats | None = None,
                 first_to_b: bytes = b"", first_to_a: bytes = b"",
                 pipe_size: int | None = None, pool: PipePool | None = None) -> None:
    """Move bytes between the connected TCP sockets `a` and `b` until both
    directions have ended, or until either socket fails.

    `first_to_b` and `first_to_a` reach their side before anything spliced
    that way. `stats` counts every byte delivered each way, the first ones
    included. `pipe_size` sets each direction's pipe capacity (what the relay
    may hold per direction); `pool` shares pipes with other splices (a relay's
    PipePool, whose size then applies), else the splice has its own pool of
    at most two. A peer's end of stream is passed on with
    shutdown(SHUT_WR); a peer's reset ends both directions and returns
    normally. The caller owns the sockets and closes them afterwards.
    """
    for sock in (a, b):
        if sock.fileno() < 0 or sock.type != socket.SOCK_STREAM:
            raise ValueError(f"splice needs connected stream sockets, not {sock!r}")
        # A socket with a timeout would make send() wait inside the loop.
        if sock.gettimeout() != 0:
            raise ValueError(f"splice needs non-blocking sockets, not {sock!r}")
    if pool is not None and pipe_size is not None:
        raise ValueError("a shared pool has its own pipe size")
    counts = stats if stats is not None else SpliceStats()
    if not hasattr(os, "splice"):
        await _copy(a, b, counts, first_to_b, first_to_a)
        return
    own = pool is None
    run = _Splice(asyncio.get_running_loop(), a, b,
                  pool if pool is not None else PipePool(pipe_size, spare=2))
    try:
        run.start(counts, first_to_b, first_to_a)
        await run.done
    finally:
        run.close()
        if own:
            run.pool.close()


def _add_a_to_b(stats: SpliceStats, n: int) -> None:
    stats.a_to_b += n


def _add_b_to_a(stats: SpliceStats, n: int) -> None:
    stats.b_to_a += n


class _Splice:
    """Both directions of one splice, and the one place their failures land."""

    def __init__(self, loop: asyncio.AbstractEventLoop, a: socket.socket,
                 b: socket.socket, pool: PipePool) -> None:
        self.loop, self.a, self.b, self.pool = loop, a, b, pool
        self.done: asyncio.Future[None] = loop.create_future()
        self.ways: list[_Way] = []
        # asyncio's own loops watch descriptors level-triggered (selectors):
        # a readable socket left unread is reported again. uvloop's (libuv)
        # reports an error once, so there a callback reads on until "would
        # block" (see _Way).
        self.level_triggered = isinstance(loop, BaseSelectorEventLoop)

    def start(self, stats: SpliceStats, first_to_b: bytes, first_to_a: bytes) -> None:
        self.ways = [
            _Way(self, self.a, self.b, first_to_b, lambda n: _add_a_to_b(stats, n)),
            _Way(self, self.b, self.a, first_to_a, lambda n: _add_b_to_a(stats, n)),
        ]
        for way in self.ways:
            way.start()

    def step(self, action: Callable[[], None]) -> None:
        """Run one readiness callback; every socket error ends the splice here."""
        try:
            action()
        except OSError as exc:
            # A peer's reset or an unreachable network is the peer's business:
            # both directions stop and the caller closes the sockets.
            log.debug("splice %d <-> %d ended: %s", self.a.fileno(), self.b.fileno(), exc)
            self._end(None)
        except Exception as exc:
            self._end(exc)  # our own fault: raised in the awaiting task, not lost in the loop

    def way_ended(self) -> None:
        if all(way.ended for way in self.ways):
            self._end(None)

    def _end(self, exc: Exception | None) -> None:
        for way in self.ways:
            way.stop()
        if self.done.done():
            return
        if exc is None:
            self.done.set_result(None)
        else:
            self.done.set_exception(exc)

    def close(self) -> None:
        for way in self.ways:
            way.stop()
            way.let_go()
        if self.done.done() and not self.done.cancelled():
            self.done.exception()  # seen, even when a cancellation overtook it


class _Way:
    """One direction, source -> pipe -> destination, stepped by readiness.

    The source is read only while the pipe is empty, and only while the
    destination takes everything the pipe holds; whenever the destination
    would block, reading stops until it is writable again. The pipe comes
    from the pool for a readiness callback and goes back once empty, so it is
    held across callbacks only while the destination is behind.
    """

    def __init__(self, run: _Splice, src: socket.socket, dst: socket.socket, first: bytes,
                 add: Callable[[int], None]) -> None:
        self.run, self.loop, self.pool = run, run.loop, run.pool
        self.src, self.dst = src, dst
        self.src_fd, self.dst_fd = src.fileno(), dst.fileno()
        self.pipe: Pipe | None = None
        self.first = memoryview(first)
        self.add = add
        self.in_pipe = 0
        self.reading = self.writing = self.ended = False

    def start(self) -> None:
        if self.first:
            self._want_write()
        else:
            self._want_read()

    def stop(self) -> None:
        self._no_read()
        self._no_write()

    def let_go(self) -> None:
        """The pipe back to the pool (closed if bytes are left in it)."""
        if self.pipe is not None:
            self.pool.give(self.pipe, empty=self.in_pipe == 0)
            self.pipe = None
            self.in_pipe = 0

    def _put_back(self) -> None:
        if self.pipe is not None and self.in_pipe == 0:
            self.pool.give(self.pipe)
            self.pipe = None

    # Every callback goes on until the kernel says "would block", the way
    # ends, or it parks itself; never merely until "enough for now". uvloop
    # (libuv) calls a watcher only once when its descriptor reports an error
    # and then drops it, so a callback that stopped early with the watcher
    # still wanted would never be called again.

    def on_readable(self) -> None:
        flags = os.SPLICE_F_MOVE | os.SPLICE_F_NONBLOCK
        for _ in range(_BURST):
            pipe = self.pipe
            if pipe is None:
                try:
                    pipe = self.pipe = self.pool.take()
                except OSError as exc:
                    if exc.errno not in _NO_PIPE:
                        raise
                    self._read_through_python()
                    return
            try:
                n = os.splice(self.src_fd, pipe[1], pipe[2], flags=flags)
            except BlockingIOError:
                self._put_back()
                return
            if n == 0:
                self._put_back()
                self._source_ended()
                return
            self.in_pipe = n
            if not self._drain():
                return  # the pipe keeps its bytes until the destination takes them
            if n < _SHORT and self.run.level_triggered:
                # A message, not a stream: the socket is most likely empty
                # now, and a level-triggered loop calls again when it is not
                # (an error included). One splice and one exception fewer per
                # message; a stream goes on reading until "would block".
                self._put_back()
                return
        self._put_back()
        # The burst is spent with data still coming. Data queued before a
        # reset is read before the reset is reported, so an error the loop
        # saw may not have surfaced yet: ask for it, as the next callback may
        # never come.
        self._raise_pending_error()

    def _read_through_python(self) -> None:
        """No pipe to be had (out of descriptors): one read goes through
        Python, and on as the first bytes do."""
        try:
            data = self.src.recv(_COPY_SIZE)
        except BlockingIOError:
            return
        if not data:
            self._source_ended()
            return
        self.first = memoryview(data)
        self._no_read()
        self._want_write()

    def on_writable(self) -> None:
        while self.first:
            try:
                sent = self.dst.send(self.first)
            except BlockingIOError:
                return
            self.first = self.first[sent:]
            self.add(sent)
        if not self._drain():
            return
        self._put_back()
        self._no_write()
        self._want_read()

    def _drain(self) -> bool:
        """Move the pipe into the destination; False when it would block."""
        flags = os.SPLICE_F_MOVE | os.SPLICE_F_NONBLOCK
        pipe = self.pipe  # held whenever bytes are in it
        while self.in_pipe and pipe is not None:
            try:
                n = os.splice(pipe[0], self.dst_fd, self.in_pipe, flags=flags)
            except BlockingIOError:
                self._no_read()  # backpressure: the sender's TCP window closes
                self._want_write()
                return False
            self.in_pipe -= n
            self.add(n)
        return True

    def _source_ended(self) -> None:
        # A FIN followed by a reset reads as a plain end of stream; only the
        # pending socket error tells that the peer is gone rather than done.
        self._raise_pending_error()
        self._no_read()
        self.dst.shutdown(socket.SHUT_WR)  # the half-close goes on
        self.ended = True
        self.run.way_ended()

    def _raise_pending_error(self) -> None:
        err = self.src.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        if err:
            raise OSError(err, os.strerror(err))

    def _want_read(self) -> None:
        if not self.reading:
            self.reading = True
            self.loop.add_reader(self.src_fd, self.run.step, self.on_readable)

    def _no_read(self) -> None:
        if self.reading:
            self.reading = False
            self.loop.remove_reader(self.src_fd)

    def _want_write(self) -> None:
        if not self.writing:
            self.writing = True
            self.loop.add_writer(self.dst_fd, self.run.step, self.on_writable)

    def _no_write(self) -> None:
        if self.writing:
            self.writing = False
            self.loop.remove_writer(self.dst_fd)


async def _copy(a: socket.socket, b: socket.socket, stats: SpliceStats, first_to_b: bytes,
                first_to_a: bytes) -> None:
    """The same contract without splice(2): every byte passes through Python."""
    loop = asyncio.get_running_loop()

    async def one_way(src: socket.socket, dst: socket.socket, first: bytes,
                      add: Callable[[int], None]) -> None:
        if first:
            await loop.sock_sendall(dst, first)
            add(len(first))
        buf = bytearray(_COPY_SIZE)
        view = memoryview(buf)
        while n := await loop.sock_recv_into(src, buf):
            await loop.sock_sendall(dst, view[:n])
            add(n)
        dst.shutdown(socket.SHUT_WR)

    try:
        async with asyncio.TaskGroup() as ways:
            ways.create_task(one_way(a, b, first_to_b, lambda n: _add_a_to_b(stats, n)),
                             name="copy-a-to-b")
            ways.create_task(one_way(b, a, first_to_a, lambda n: _add_b_to_a(stats, n)),
                             name="copy-b-to-a")
    except* OSError as failed:
        log.debug("copy %d <-> %d ended: %s", a.fileno(), b.fileno(), failed.exceptions[0])
