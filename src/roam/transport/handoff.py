"""A worker's sockets to the other workers of `roam server --workers N`.

What goes where is roam.core.workers'; this moves its messages. One
SOCK_SEQPACKET Unix socket pair joins each two workers (the supervisor makes
them, roam.workers): messages keep their bounds, arrive in order, and a
full socket says so (EAGAIN) instead of dropping. A transport travels as its
file descriptor (SCM_RIGHTS) beside the bytes already read from it, so the
worker that holds its session opens it as if it had accepted it, and the
client sees no extra round trip.

What cannot wait is not queued: a transport the peer worker cannot take now
is answered BUSY (the client retries with backoff), and a UDP packet is
dropped, as the network may drop it. Announcements of sessions are queued
until they go: they are how every worker finds every session.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from collections import deque
from collections.abc import Callable
from typing import Any

from roam.core.preamble import Status, reply_error
from roam.core.workers import (
    MAX_MESSAGE,
    Datagram,
    Hellos,
    Owned,
    Routes,
    Transport,
    decode,
    encode_datagram,
    encode_transport,
)
from roam.errors import ProtocolError
from roam.transport.protocol import TransportProtocol
from roam.transport.ratelog import RateLimitedLog

log = logging.getLogger("roam.server")

Address = Any  # (host, port) or (host, port, flow, scope), as the socket layer gives
# Messages taken from one peer per wakeup, so that one busy peer cannot
# keep the loop from everything else.
READ_BATCH = 64


class Mesh:
    """This worker's end of the pairs; `on_transport` and `on_datagram` take
    what other workers hand over."""

    def __init__(self, routes: Routes, peers: dict[int, socket.socket],
                 on_transport: Callable[[socket.socket, bytes], None],
                 on_datagram: Callable[[bytes, Address], None] | None = None,
                 on_hello: Callable[[bytes, int], None] | None = None) -> None:
        """`on_hello(client_key, stamp)`: another worker accepted a NEW
        handshake from this client with this timestamp."""
        self.routes = routes
        self._peers = dict(peers)
        self._outbox: dict[int, deque[bytes]] = {w: deque() for w in peers}
        self._on_transport = on_transport
        self._on_datagram = on_datagram
        self._on_hello = on_hello
        self._flush_soon: asyncio.Handle | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._log_busy = RateLimitedLog(log)
        # Counters for status: transports and packets sent on and taken in.
        self.handed_out = 0
        self.handed_in = 0
        self.refused_busy = 0
        self.datagrams_out = 0
        self.datagrams_in = 0

    def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        for worker, sock in self._peers.items():
            sock.setblocking(False)
            self._loop.add_reader(sock.fileno(), self._readable, worker)
        # Sessions made before the mesh started are announced now.
        self._schedule_flush()

    def close(self) -> None:
        if self._flush_soon is not None:
            self._flush_soon.cancel()
        for worker in list(self._peers):
            self._drop_peer(worker)

    def status(self) -> dict[str, object]:
        return {"index": self.routes.me, "peers": sorted(self._peers),
                "known_sessions": len(self.routes), "handed_out": self.handed_out,
                "handed_in": self.handed_in, "refused_busy": self.refused_busy,
                "datagrams_out": self.datagrams_out, "datagrams_in": self.datagrams_in}

    # ---- this worker's sessions --------------------------------------------------

    def created(self, session_id: bytes, client_key: bytes | None = None,
                stamp: int = 0) -> None:
        self.routes.created(session_id, (client_key, stamp) if client_key else None)
        self._schedule_flush()

    def ended(self, session_id: bytes) -> None:
        self.routes.ended(session_id)
        self._schedule_flush()

    def _schedule_flush(self) -> None:
        # One announcement per loop iteration: a thousand sessions made at
        # once go out as one message, not a thousand.
        if self._flush_soon is None and self._loop is not None:
            self._flush_soon = self._loop.call_soon(self._announce)

    def _announce(self) -> None:
        self._flush_soon = None
        for message in self.routes.announcements():
            for worker in self._peers:
                self._outbox[worker].append(message)
        for worker in list(self._peers):
            self._flush(worker)

    def _flush(self, worker: int) -> None:
        sock, box = self._peers.get(worker), self._outbox.get(worker)
        if sock is None or box is None or self._loop is None:
            return
        while box:
            try:
                sock.send(box[0])
            except BlockingIOError:
                self._loop.add_writer(sock.fileno(), self._writable, worker)
                return
            except OSError as exc:
                log.error("worker %d: gone (%s)", worker, exc.strerror or exc)
                self._drop_peer(worker)
                return
            box.popleft()

    def _writable(self, worker: int) -> None:
        sock = self._peers.get(worker)
        if sock is not None and self._loop is not None:
            self._loop.remove_writer(sock.fileno())
        self._flush(worker)

    # ---- handing over ----------------------------------------------------------------

    def take(self, preamble: bytes, proto: TransportProtocol) -> bool:
        """Hand `proto` to the worker holding its session, if another does:
        True when it is no longer this worker's (handed over, or answered
        BUSY because that worker cannot take it now)."""
        worker = self.routes.route(preamble, handed=False)
        if worker is None:
            return False
        sock = proto.transport.get_extra_info("socket") if proto.transport is not None else None
        peer = self._peers.get(worker)
        if sock is None or peer is None:
            return False
        data = preamble + proto.take_buffered()
        try:
            socket.send_fds(peer, [encode_transport(data)], [sock.fileno()])
        except (BlockingIOError, ValueError) as exc:
            self.refused_busy += 1
            why = ("its queue is full" if isinstance(exc, BlockingIOError)
                   else f"{len(data)} bytes read already")
            self._log_busy(f"transport from {proto.peer} answered BUSY: worker {worker} holds "
                           f"its session and cannot take it now ({why})")
            proto.write(reply_error(Status.BUSY, "server busy"))
            proto.close()
            return True
        except OSError as exc:
            log.error("worker %d: gone (%s)", worker, exc.strerror or exc)
            self._drop_peer(worker)
            return False
        self.handed_out += 1
        # The other worker holds the socket now: closing this descriptor
        # neither sends a FIN nor resets (no SO_LINGER here).
        proto.abort()
        return True

    def forward_datagram(self, tag: bytes, packet: bytes, addr: Address) -> bool:
        """Pass a UDP packet to the worker holding its session: True when it
        is that worker's (sent, or dropped as a full network would)."""
        worker = self.routes.route_datagram(tag)
        peer = self._peers.get(worker) if worker is not None else None
        if peer is None:
            return False
        try:
            peer.send(encode_datagram(str(addr[0]), int(addr[1]), packet))
        except (BlockingIOError, ValueError):
            return True
        except OSError:
            return True
        self.datagrams_out += 1
        return True

    # ---- taking in ---------------------------------------------------------------------

    def _readable(self, worker: int) -> None:
        sock = self._peers.get(worker)
        for _ in range(READ_BATCH):
            if sock is None:
                return
            try:
                data, fds, flags, _ = socket.recv_fds(sock, MAX_MESSAGE, 1)
            except BlockingIOError:
                return
            except OSError as exc:
                log.error("worker %d: gone (%s)", worker, exc.strerror or exc)
                self._drop_peer(worker)
                return
            if not data and not fds:
                # Also how a stopping server's workers see each other go.
                log.warning("worker %d: gone; its sessions with it", worker)
                self._drop_peer(worker)
                return
            self._message(worker, data, fds, bool(flags & socket.MSG_CTRUNC))

    def _message(self, worker: int, data: bytes, fds: list[int], truncated: bool) -> None:
        taken: socket.socket | None = None
        try:
            message = decode(data)
            if isinstance(message, Owned):
                self.routes.owned(worker, message)
            elif isinstance(message, Transport):
                if len(fds) != 1 or truncated:
                    raise ProtocolError(f"a transport with {len(fds)} descriptors")
                taken, fds = socket.socket(fileno=fds[0]), []
                self.handed_in += 1
                self._on_transport(taken, message.data)
            elif isinstance(message, Datagram) and self._on_datagram is not None:
                self.datagrams_in += 1
                self._on_datagram(message.packet, (message.host, message.port))
            elif isinstance(message, Hellos) and self._on_hello is not None:
                for key, stamp in message.entries:
                    self._on_hello(key, stamp)
        except ProtocolError as exc:
            log.error("worker %d sent a bad message (%s): dropped", worker, exc)
            if taken is not None:
                taken.close()
        finally:
            for fd in fds:
                socket.close(fd)

    def _drop_peer(self, worker: int) -> None:
        sock = self._peers.pop(worker, None)
        self._outbox.pop(worker, None)
        self.routes.forget(worker)
        if sock is not None:
            if self._loop is not None:
                self._loop.remove_reader(sock.fileno())
                self._loop.remove_writer(sock.fileno())
            sock.close()
