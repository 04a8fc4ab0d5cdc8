"""The registrar daemon: accept, open the channel, answer requests, store.

Every decision is records.py's and every byte's meaning channel.py's and
messages.py's; this module reads and writes sockets, reads the clock, and
writes accepted registrations to the store before it answers them. A store
of its own (SQLite) is read once at start and then mirrored in memory; a
shared one (Redis, several registrars) is read per request, so what another
registrar accepted is seen at once, and a registration is written only if
no newer one got there first. A store that fails is a refusal (UNAVAILABLE)
of the request in hand, never the end of the daemon. One
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
from roam.registrar.messages import Code, Lookup, Refused, Register, decode_request
from roam.registrar.records import Record, Registry
from roam.registrar.store import StoreError, open_store

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
        self.store = open_store(config.db)
        self.stats = RegistrarStatistics()
        self._listener: socket.socket | None = None
        self._connected = False
        self._store_down = False
        self._shared_units = 0  # counted at each sweep when the store is shared

    async def connect(self) -> None:
        """Reach the store (a ConfigError naming --db when it cannot be); a
        store of its own is read into memory."""
        if self._connected:
            return
        await self.store.open()
        if self.store.shared:
            self._shared_units = await self.store.count()
        else:
            self.registry.load(await self.store.load())
        self._connected = True

    def open(self) -> tuple[str, int]:
        """Bind the listening socket (before run: the caller learns the port)."""
        bound = self._bind().getsockname()
        return bound[0], bound[1]

    def _bind(self) -> socket.socket:
        sock = self._listener = listening_socket(*self.config.listen)
        return sock

    async def run(self) -> None:
        await self.connect()
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
            await self.store.close()

    async def _sweep(self) -> None:
        while True:
            await asyncio.sleep(SWEEP_S)
            if self.store.shared:  # Redis expires the records itself
                try:
                    self._shared_units = await self.store.count()
                except StoreError as exc:
                    self._store_failed(exc)
                continue
            gone = self.registry.expire(time.time())
            if gone:
                await self.store.delete(gone)

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
                answer = await self._answer(identity, request, peer)
                await loop.sock_sendall(sock, channel.answer(answer))
            if channel.frames.held > MAX_FRAME + 2:
                raise ProtocolError("a frame larger than any request")
            timeout = IDLE_TIMEOUT_S

    async def _answer(self, identity: bytes, body: bytes, peer: str) -> bytes:
        now = time.time()
        who = short_id(identity)
        try:
            request = decode_request(body)
        except ProtocolError as exc:
            self._count(Code.BAD_REQUEST)
            log.info("registrar: %s at %s: bad request: %s", who, peer, exc)
            return Refused(Code.BAD_REQUEST, str(exc)).encode()
        try:
            return await self._decide(identity, request, who, peer, now)
        except StoreError as exc:
            self._store_failed(exc)
            self._count(Code.UNAVAILABLE)
            return Refused(Code.UNAVAILABLE, "the registrar cannot reach its records just "
                                             "now; ask another registrar").encode()

    async def _registry(self, identity: bytes) -> Registry:
        """Who decides: the registry in memory, or for a shared store one
        holding only what the store has of `identity` now (the store's own
        memory bounds it, not MAX_RECORDS)."""
        if not self.store.shared:
            return self.registry
        view = Registry(self.config.policy)
        record = await self.store.get(identity)
        if self._store_down:
            self._store_down = False
            log.warning("registrar: its store %s answers again", self.store.name)
        if record is not None:
            view.load([record])
        return view

    async def _decide(self, identity: bytes, request: Lookup | Register, who: str, peer: str,
                      now: float) -> bytes:
        if isinstance(request, Lookup):
            self.stats.lookups += 1
            registry = await self._registry(request.target)
            found = registry.lookup(identity, request.target, now)
            if isinstance(found, Refused):
                self._count(found.code)
                log.debug("registrar: %s", found.reason)
            else:
                self.stats.found += 1
            return found.encode()
        registry = await self._registry(identity)
        result = registry.register(identity, request, now)
        # Stored before the unit hears it is registered; a shared store may
        # hold a newer registration that another registrar took meanwhile.
        if not isinstance(result, Refused) and not await self.store.save(result):
            result = Refused(Code.REPLAYED, f"{who}: a registration no newer than the last "
                                            "(replayed)")
        if isinstance(result, Refused):
            self._count(result.code)
            log.info("registrar: refused %s at %s: %s", who, peer, result.reason)
            return result.encode()
        self._saved(result, who, peer)
        return registry.answer_registered(result, now).encode()

    def _store_failed(self, exc: StoreError) -> None:
        # Once per outage: every request fails alike until the store is back.
        if not self._store_down:
            self._store_down = True
            log.warning("registrar: refusing requests until its store answers: %s", exc)

    def _saved(self, record: Record, who: str, peer: str) -> None:
        self.stats.registrations += 1
        log.info("registrar: %s at %s registered %s%s", who, peer,
                 ", ".join(record.addresses) or "no address",
                 f" via {', '.join(record.relays)}" if record.relays else "")

    def _count(self, code: Code) -> None:
        self.stats.refused[code.value] = self.stats.refused.get(code.value, 0) + 1

    def status(self) -> dict[str, object]:
        return {"role": "registrar", "identity": short_id(self.identity),
                "units": self._shared_units if self.store.shared else len(self.registry),
                "registrations": self.stats.registrations,
                "lookups": self.stats.lookups, "found": self.stats.found,
                "refused": dict(self.stats.refused), "connections": self.stats.connections,
                "db": self.store.name}

