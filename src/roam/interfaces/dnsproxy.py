"""DNS names to local addresses: `roam client --dns HOST:PORT --dns-intercept PATTERN ...`.

A thin driver around `interfaces.dnsintercept`. The DNS server answers on
UDP and TCP; a name matching a pattern gets an address from the loopback
pool, and roam listens on that address for each `--dns-ports` port: a
connection there becomes a channel to the *name* and port, resolved on the
server side. Other queries go to the upstream resolver unchanged.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from typing import Any

import dns.exception
import dns.message
import dns.rdatatype

from roam.errors import ConfigError, RoamError
from roam.interfaces.dnsintercept import (
    AddressPool,
    Answer,
    DnsError,
    DnsInterceptor,
    TcpDnsFramer,
)
from roam.tasks import Tasks
from roam.transport.driver import AppConnection, SessionDriver

log = logging.getLogger("roam.dns")

# A resolver that has not answered by then will not: stub resolvers retry
# after 5 s themselves (resolv.conf's default `timeout`).
UPSTREAM_TIMEOUT = 5.0
# How often listeners on pool addresses whose names expired are closed.
SWEEP_INTERVAL = 30.0
# A DNS-over-TCP client idle this long is closed (RFC 7766 6.2.3 suggests
# tens of seconds for servers under load).
TCP_IDLE = 30.0


def default_upstream() -> tuple[str, int]:
    """The first nameserver of /etc/resolv.conf, as the system resolver would ask."""
    with contextlib.suppress(OSError):
        # The C resolver reads bytes: a comment in another encoding must not
        # stop us finding the (ASCII) nameserver line after it.
        for line in open("/etc/resolv.conf", encoding="utf-8", errors="replace"):  # noqa: SIM115
            parts = line.split()
            if len(parts) >= 2 and parts[0] == "nameserver":
                return parts[1], 53
    return "127.0.0.53", 53


class _UpstreamQuery(asyncio.DatagramProtocol):
    def __init__(self, done: asyncio.Future[bytes]) -> None:
        self.done = done

    def datagram_received(self, data: bytes, addr: Any) -> None:
        if not self.done.done():
            self.done.set_result(data)

    def error_received(self, exc: Exception) -> None:
        if not self.done.done():
            self.done.set_exception(exc)


class DnsProxy(asyncio.DatagramProtocol):
    def __init__(self, host: str, port: int, interceptor: DnsInterceptor, pool: AddressPool,
                 ports: list[int], upstream: tuple[str, int],
                 current: Callable[[], SessionDriver | None]) -> None:
        self.host, self.port = host, port
        self.interceptor, self.pool = interceptor, pool
        self.ports = ports
        self.upstream = upstream
        self.current = current
        self.transport: asyncio.DatagramTransport | None = None
        self._tcp: asyncio.Server | None = None
        self._listeners: dict[str, list[asyncio.Server]] = {}
        self._tasks = Tasks("dns proxy")
        self._sweeper: asyncio.Task[None] | None = None

    async def start(self) -> tuple[str, int]:
        loop = asyncio.get_running_loop()
        # Port 0: the UDP port the system picks may be taken for TCP; try again.
        for attempt in range(1 if self.port else 10):
            try:
                transport, _ = await loop.create_datagram_endpoint(
                    lambda: self, local_addr=(self.host, self.port))
                bound = transport.get_extra_info("sockname")
                self._tcp = await asyncio.start_server(self._tcp_client, self.host, bound[1])
                break
            except OSError as exc:
                self.close()
                self.transport = None
                if self.port == 0 and attempt < 9:
                    continue
                raise ConfigError(f"--dns {self.host}:{self.port}: cannot listen: "
                                  f"{exc.strerror or exc}") from None
        self._sweeper = loop.create_task(self._sweep(), name="dns-pool-sweep")
        log.info("DNS on %s:%d (UDP and TCP), pool %s, ports %s, upstream %s:%d", bound[0],
                 bound[1], self.pool.network, ",".join(map(str, self.ports)), *self.upstream)
        return bound[0], bound[1]

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()
        if self._tcp is not None:
            self._tcp.close()
        for servers in self._listeners.values():
            for server in servers:
                server.close()
        self._listeners.clear()
        self._tasks.cancel()
        if self._sweeper is not None:
            self._sweeper.cancel()

    # ---- queries -----------------------------------------------------------

    def datagram_received(self, data: bytes, addr: Any) -> None:
        self._tasks.spawn(self._udp_query(data, addr), name="dns-query")

    async def _udp_query(self, data: bytes, addr: Any) -> None:
        answer = await self.answer(data, tcp=False)
        if answer is not None and self.transport is not None:
            self.transport.sendto(answer, addr)

    async def answer(self, query: bytes, *, tcp: bool) -> bytes | None:
        """The reply to one query: ours, the upstream's, or None (drop it)."""
        now = asyncio.get_running_loop().time()
        try:
            result = self.interceptor.handle_query(query, now)
        except DnsError as exc:
            log.debug("DNS query dropped: %s", exc)
            return None
        if isinstance(result, Answer):
            if result.problem:
                log.warning("DNS: %s", result.problem)
            await self._listen_for(result.wire)
            return result.wire
        try:
            async with asyncio.timeout(UPSTREAM_TIMEOUT):
                return await (self._upstream_tcp(query) if tcp else self._upstream_udp(query))
        except (OSError, TimeoutError, asyncio.IncompleteReadError) as exc:
            log.info("DNS upstream %s:%d did not answer: %s", *self.upstream,
                     exc or "timed out")
            return None

    async def _upstream_udp(self, query: bytes) -> bytes:
        loop = asyncio.get_running_loop()
        done: asyncio.Future[bytes] = loop.create_future()
        transport, _ = await loop.create_datagram_endpoint(
            lambda: _UpstreamQuery(done), remote_addr=self.upstream)
        try:
            transport.sendto(query)
            return await done
        finally:
            transport.close()

    async def _upstream_tcp(self, query: bytes) -> bytes:
        reader, writer = await asyncio.open_connection(*self.upstream)
        try:
            writer.write(TcpDnsFramer.frame(query))
            length = int.from_bytes(await reader.readexactly(2), "big")
            return await reader.readexactly(length)
        finally:
            writer.close()

    async def _tcp_client(self, reader: asyncio.StreamReader,
                          writer: asyncio.StreamWriter) -> None:
        framer = TcpDnsFramer()
        try:
            while True:
                async with asyncio.timeout(TCP_IDLE):
                    data = await reader.read(65536)
                if not data:
                    break
                for query in framer.feed(data):
                    answer = await self.answer(query, tcp=True)
                    if answer is not None:
                        writer.write(TcpDnsFramer.frame(answer))
                await writer.drain()
        except (DnsError, TimeoutError, ConnectionError) as exc:
            log.debug("DNS over TCP client closed: %s", exc)
        finally:
            writer.close()

    # ---- pool addresses ----------------------------------------------------

    async def _listen_for(self, wire: bytes) -> None:
        """Listen on each pool address an answer hands out, for every --dns-ports port."""
        try:
            message = dns.message.from_wire(wire)
        except dns.exception.DNSException:
            return
        for rrset in message.answer:
            if rrset.rdtype != dns.rdatatype.A:
                continue
            for rdata in rrset:
                addr = str(rdata.address)
                if addr not in self._listeners:
                    self._listeners[addr] = await self._open_listeners(addr)

    async def _open_listeners(self, addr: str) -> list[asyncio.Server]:
        loop = asyncio.get_running_loop()
        servers = []
        for port in self.ports:
            try:
                servers.append(await loop.create_server(
                    lambda a=addr, p=port: self._accept(a, p), addr, port))  # type: ignore[misc]
            except OSError as exc:
                log.warning("DNS pool: cannot listen on %s:%d: %s", addr, port,
                            exc.strerror or exc)
        return servers

    def _accept(self, addr: str, port: int) -> asyncio.Protocol:
        driver = self.current()
        if driver is None:
            raise RoamError("a connection to a pool address before the session exists")
        name = self.pool.hold(addr)

        def opened(app: AppConnection) -> None:
            if name is None:  # the name expired meanwhile: nothing to reach
                if app.transport is not None:
                    app.transport.close()
                return
            app.cid = app.driver.session.open_channel(name, port)
            app.driver.add_app(app)
            app.driver.schedule()

        return _PoolConnection(driver, opened, lambda: self._released(addr, name))

    def _released(self, addr: str, name: str | None) -> None:
        if name is not None:
            self.pool.release(addr, asyncio.get_running_loop().time())

    async def _sweep(self) -> None:
        while True:
            await asyncio.sleep(SWEEP_INTERVAL)
            self.pool.expire(asyncio.get_running_loop().time())
            for addr in [a for a in self._listeners if self.pool.name_for(a) is None]:
                for server in self._listeners.pop(addr):
                    server.close()


class _PoolConnection(AppConnection):
    """A connection to a pool address; releases the address when it ends."""

    def __init__(self, driver: SessionDriver, on_made: Callable[[AppConnection], None],
                 on_end: Callable[[], None]) -> None:
        super().__init__(driver, on_made=on_made)
        self._on_end = on_end

    def connection_lost(self, exc: Exception | None) -> None:
        self._on_end()
        super().connection_lost(exc)
