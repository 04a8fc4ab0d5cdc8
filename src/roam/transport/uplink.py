"""A server inside a firewall: uplinks kept open to relays, on which clients arrive.

    roam server ... --uplink 198.18.1.1:4434,key=RELAY_PUBLIC_KEY

The server dials out, never in: for each relay it keeps `SPARES` connections
open, each announced with an UPLINK hop header (roam.relay.hop) that proves
the server's identity. An idle uplink carries the relay's keepalive byte
every 15 s (which keeps NATs and firewalls on the way open); when a client
for this server reaches the relay, the relay writes GO and then the client's
bytes, and the uplink becomes an ordinary accepted transport of the server.
A new spare is dialled at once, so the next client finds one waiting. A
relay that goes away (restart, network) is dialled again with jittered,
doubling backoff. Each server process announces a random instance id: a
restarted server's uplinks replace its old ones at the relay at once.
"""

from __future__ import annotations

import asyncio
import logging
import os
import random
import socket
import time
from collections.abc import Awaitable, Callable

from roam.relay.hop import Hop, HopKind, Status, decode_reply, reply_wanted, seal_hop
from roam.relay.route import RelayHop

log = logging.getLogger("roam")

# Idle uplinks per relay: one client connect or resume can take one while
# the next is dialled; two cover a standby and a resume arriving together.
SPARES = 2
# The relay's keepalive comes every 15 s (roam.relay.driver.KEEPALIVE_S);
# three missed ones mean the uplink is dead.
DEAD_AFTER_S = 45.0
CONNECT_TIMEOUT_S = 10.0
BACKOFF_FIRST_S = 0.5
BACKOFF_MAX_S = 30.0
KEEPALIVE = b"\x00"
GO = b"\x01"


class UplinkKeeper:
    """Every relay's spare uplinks of one server, for as long as it runs."""

    def __init__(self, relays: list[RelayHop], private_key: bytes,
                 accept: Callable[[socket.socket], Awaitable[None]],
                 spares: int = SPARES) -> None:
        self.relays = relays
        self._key = private_key
        self._accept = accept
        self._spares = spares
        self.instance = os.urandom(16)
        self.idle: dict[str, int] = {r.name: 0 for r in relays}  # for status
        self.taken: dict[str, int] = {r.name: 0 for r in relays}

    async def run(self) -> None:
        async with asyncio.TaskGroup() as tasks:
            for relay in self.relays:
                for n in range(self._spares):
                    tasks.create_task(self._keep(relay), name=f"uplink-{relay.name}-{n}")

    async def _keep(self, relay: RelayHop) -> None:
        """One spare uplink to `relay`, again and again."""
        backoff = BACKOFF_FIRST_S
        while True:
            try:
                sock = await self._open(relay)
            except (OSError, TimeoutError, ConnectionError) as exc:
                delay = backoff * random.uniform(0.5, 1.5)
                log.warning("uplink to relay %s (%s): %s; again in %.1f s", relay.name,
                            relay.address, exc or type(exc).__name__, delay)
                await asyncio.sleep(delay)
                backoff = min(backoff * 2, BACKOFF_MAX_S)
                continue
            backoff = BACKOFF_FIRST_S
            self.idle[relay.name] += 1
            try:
                went = await self._wait_for_client(sock, relay)
            finally:
                self.idle[relay.name] -= 1
            if went:
                self.taken[relay.name] += 1
                await self._accept(sock)
            else:
                sock.close()

    async def _open(self, relay: RelayHop) -> socket.socket:
        loop = asyncio.get_running_loop()
        async with asyncio.timeout(CONNECT_TIMEOUT_S):
            infos = await loop.getaddrinfo(relay.host, relay.port, type=socket.SOCK_STREAM)
            family, kind, proto, _, addr = infos[0]
            sock = socket.socket(family, kind, proto)
            sock.setblocking(False)
            try:
                await loop.sock_connect(sock, addr)
                hop = Hop(HopKind.UPLINK, time.time_ns(), instance=self.instance)
                await loop.sock_sendall(sock, seal_hop(hop, self._key, relay.key))
                reply = b""
                while (decoded := decode_reply(reply)) is None:
                    # Exactly the reply: what follows belongs to the idle uplink.
                    data = await loop.sock_recv(sock, reply_wanted(reply))
                    if not data:
                        raise ConnectionError("the relay closed the uplink")
                    reply += data
            except BaseException:
                sock.close()
                raise
        status, body, _ = decoded
        if status is not Status.OK:
            sock.close()
            raise ConnectionError(f"refused ({status.name}): "
                                  f"{body.decode('utf-8', 'replace')}")
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        log.info("uplink to relay %s (%s) open", relay.name, relay.address)
        return sock

    async def _wait_for_client(self, sock: socket.socket, relay: RelayHop) -> bool:
        """True when a client arrived (its bytes follow); False when the
        uplink died. One byte at a time: the client's bytes stay unread."""
        loop = asyncio.get_running_loop()
        while True:
            try:
                async with asyncio.timeout(DEAD_AFTER_S):
                    byte = await loop.sock_recv(sock, 1)
            except TimeoutError:
                log.warning("uplink to relay %s: no keepalive for %.0f s; dialling again",
                            relay.name, DEAD_AFTER_S)
                return False
            except OSError as exc:
                log.info("uplink to relay %s lost: %s", relay.name, exc)
                return False
            if byte == GO:
                return True
            if not byte:
                log.info("uplink to relay %s closed by the relay", relay.name)
                return False
            if byte != KEEPALIVE:
                log.warning("uplink to relay %s: unexpected byte %r; dialling again",
                            relay.name, byte)
                return False
