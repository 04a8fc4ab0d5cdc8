"""The registrar daemon: accept, open the channel, answer requests, store.

Every decision is records.py's and every byte's meaning channel.py's and
messages.py's; this module reads and writes sockets, reads the clock, and
writes accepted registrations to the store before it answers them. One
TaskGroup holds the accept loop, the expiry sweep and one task per
connection, each named; a connection's task catches whatever its peer
causes, so no peer can end the daemon.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import time
from dataclasses import dataclass, field

from roam.connector.allow import format_host_port
from roam.crypto.keys import public_key, short_id
from roam.errors import ProtocolError
from roam.listener import listening_socket
from roam.registrar.channel import MAX_FRAME, RegistrarChannel
from roam.registrar.config import RegistrarConfig
from roam.registrar.messages import Code, Lookup, Refused, decode_request
from roam.registrar.records import Record, Registry
from roam.registrar.store import Store

log = logging.getLogger("roam")

# A unit sends its first request with its connect; ten seconds bounds what a
# stranger who sends nothing holds (a socket, and at most one frame).
FIRST_REQUEST_TIMEOUT_S = 10.0
# A unit may keep its connection for later lookups; one idle for longer is
# closed (units open a new one when they need it).
IDLE_TIMEOUT_S = 120.0
READ_SIZE = 65536
# Connections at once: each holds at most one frame (64 KiB) while unread.
MAX_CONNECTIONS = 4096
SWEEP_S = 30.0  # expired records leave memory and the store this often
ACCEPT_BACKOFF_S = 0.1


@dataclass
class RegistrarStatistics:
    registrations: int = 0
    lookups: int = 0
    found: int = 0
    refused: dict[str, int] = field(default_factory=dict)
    connections: int = 0


class Registrar:
    def __init__(self, config: RegistrarConfig) -> None:
        self.config = config
        self.identity = public_key(config.private_key)
        self.registry = Registry(config.policy)
        self.store = Store(config.db)
        self.registry.load(self.store.load())
        self.stats = RegistrarStatistics()
        self._listener: socket.socket | None = None

    def open(self) -> tuple[str, int]:
        """Bind the listening socket (before run: the caller learns the port)."""
        bound = self._bind().getsockname()
        return bound[0], bound[1]

    def _bind(self) -> socket.socket:
        sock = self._listener = listening_socket(*self.config.listen)
        return sock

    async def run(self) -> None:
        listener = self._listener if self._listener is not None else self._bind()
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.TaskGroup() as tasks:
                tasks.create_task(self._sweep(), name="registrar-expiry")
                while True:
                    try:
                        sock, addr = await loop.sock_accept(listener)
                    except OSError as exc:
                        log.warning("registrar: accept failed: %s", exc)
                        await asyncio.sleep(ACCEPT_BACKOFF_S)
                        continue
                    peer = format_host_port(addr[0], addr[1])
                    if self.stats.connections >= MAX_CONNECTIONS:
                        log.warning("registrar: %s refused: %d connections", peer,
                                    self.stats.connections)
                        sock.close()
                        continue
                    sock.setblocking(False)
                    self.stats.connections += 1
                    tasks.create_task(self._serve(sock, peer), name=f"registrar-conn-{peer}")
        finally:
            listener.close()
            self.store.close()

    async def _sweep(self) -> None:
        while True:
            await asyncio.sleep(SWEEP_S)
            gone = self.registry.expire(time.time())
            if gone:
                self.store.delete(gone)

    async def _serve(self, sock: socket.socket, peer: str) -> None:
        try:
            await self._conversation(sock, peer)
        except (OSError, TimeoutError) as exc:
            log.debug("registrar: connection from %s ended: %s", peer,
                      exc or type(exc).__name__)
        except ProtocolError as exc:
            self._count(Code.BAD_REQUEST)
            log.info("registrar: %s: %s", peer, exc)
        except Exception:  # a peer must never end the daemon
            log.exception("registrar: connection from %s failed", peer)
        finally:
            self.stats.connections -= 1
            sock.close()

    async def _conversation(self, sock: socket.socket, peer: str) -> None:
        loop = asyncio.get_running_loop()
        channel = RegistrarChannel(self.config.private_key)
        timeout = FIRST_REQUEST_TIMEOUT_S
        while True:
            async with asyncio.timeout(timeout):
                data = await loop.sock_recv(sock, READ_SIZE)
            if not data:
                return
            for body in channel.frames.feed(data):
                request = channel.request(body)
                identity = channel.identity
                if identity is None:  # request() sets it or raises
                    raise ProtocolError("no identity after the first request")
                answer = self._answer(identity, request, peer)
                await loop.sock_sendall(sock, channel.answer(answer))
            if channel.frames.held > MAX_FRAME + 2:
                raise ProtocolError("a frame larger than any request")
            timeout = IDLE_TIMEOUT_S

    def _answer(self, identity: bytes, body: bytes, peer: str) -> bytes:
        now = time.time()
        who = short_id(identity)
        try:
            request = decode_request(body)
        except ProtocolError as exc:
            self._count(Code.BAD_REQUEST)
            log.info("registrar: %s at %s: bad request: %s", who, peer, exc)
            return Refused(Code.BAD_REQUEST, str(exc)).encode()
        if isinstance(request, Lookup):
            self.stats.lookups += 1
            found = self.registry.lookup(identity, request.target, now)
            if isinstance(found, Refused):
                self._count(found.code)
                log.debug("registrar: %s", found.reason)
            else:
                self.stats.found += 1
            return found.encode()
        result = self.registry.register(identity, request, now)
        if isinstance(result, Refused):
            self._count(result.code)
            log.info("registrar: refused %s at %s: %s", who, peer, result.reason)
            return result.encode()
        self._saved(result, who, peer)
        return self.registry.answer_registered(result, now).encode()

    def _saved(self, record: Record, who: str, peer: str) -> None:
        self.store.save(record)  # on disk before the unit hears it is registered
        self.stats.registrations += 1
        log.info("registrar: %s at %s registered %s%s", who, peer,
                 ", ".join(record.addresses) or "no address",
                 f" via {', '.join(record.relays)}" if record.relays else "")

    def _count(self, code: Code) -> None:
        self.stats.refused[code.value] = self.stats.refused.get(code.value, 0) + 1

    def status(self) -> dict[str, object]:
        return {"role": "registrar", "identity": short_id(self.identity),
                "units": len(self.registry), "registrations": self.stats.registrations,
                "lookups": self.stats.lookups, "found": self.stats.found,
                "refused": dict(self.stats.refused), "connections": self.stats.connections,
                "db": self.config.db}

