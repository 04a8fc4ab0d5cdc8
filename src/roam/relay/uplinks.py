"""The idle uplinks a relay holds, per server identity: the newest server instance only.

A server inside a firewall keeps a few authenticated connections open to the
relay (roam.relay.hop UPLINK headers); each client transport for that server
takes one, so a connect or a resume costs no round trip to the server. What
users of other relays complain about is that a server that reconnects is
refused while the relay still holds its old connection: here an uplink from
a new instance of the server (a restart: a new random instance id) replaces
every uplink of the old instance at once, and uplinks of the same instance
add up to `MAX_PER_IDENTITY` (beyond it the oldest goes).

Sans-IO: connections are whatever ids the driver gives.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

# A server keeps a few spares (roam server --uplink); more than this from
# one identity is a misconfiguration or an attack, and the oldest go.
MAX_PER_IDENTITY = 16


@dataclass
class _Pool:
    instance: bytes
    idle: deque[int] = field(default_factory=deque)


class Uplinks:
    def __init__(self, max_per_identity: int = MAX_PER_IDENTITY) -> None:
        self._max = max_per_identity
        self._pools: dict[bytes, _Pool] = {}
        self._owner: dict[int, bytes] = {}

    def offer(self, identity: bytes, instance: bytes, conn: int) -> list[int]:
        """An admitted uplink; the connections the driver must close now."""
        pool = self._pools.get(identity)
        gone: list[int] = []
        if pool is None or pool.instance != instance:
            if pool is not None:
                gone.extend(pool.idle)  # the server restarted: its old uplinks are dead
                for old in pool.idle:
                    self._owner.pop(old, None)
            pool = self._pools[identity] = _Pool(instance)
        pool.idle.append(conn)
        self._owner[conn] = identity
        while len(pool.idle) > self._max:
            old = pool.idle.popleft()
            self._owner.pop(old, None)
            gone.append(old)
        return gone

    def take(self, identity: bytes) -> int | None:
        """An idle uplink of `identity` for a client, newest first (the
        likeliest to be alive); None when the relay holds none."""
        pool = self._pools.get(identity)
        if pool is None or not pool.idle:
            return None
        conn = pool.idle.pop()
        del self._owner[conn]
        return conn

    def lost(self, conn: int) -> None:
        """An idle uplink closed or failed."""
        identity = self._owner.pop(conn, None)
        if identity is None:
            return
        pool = self._pools[identity]
        pool.idle.remove(conn)

    def known(self, identity: bytes) -> bool:
        """This relay has held uplinks of `identity` (idle now or not): the
        server dials a new spare whenever one is taken."""
        return identity in self._pools

    def held(self) -> dict[bytes, bytes]:
        """The server instance of each identity with idle uplinks here (what
        a relay of a fleet claims in the directory)."""
        return {identity: pool.instance for identity, pool in self._pools.items() if pool.idle}

    def drop(self, identity: bytes, instance: bytes) -> list[int]:
        """The fleet found a newer instance of `identity` elsewhere: every
        idle uplink of `instance`, for the driver to close."""
        pool = self._pools.get(identity)
        if pool is None or pool.instance != instance:
            return []
        del self._pools[identity]
        for conn in pool.idle:
            self._owner.pop(conn, None)
        return list(pool.idle)

    def idle(self) -> dict[bytes, int]:
        """Idle uplinks per identity (for status)."""
        return {identity: len(pool.idle) for identity, pool in self._pools.items() if pool.idle}
