"""The registrar's records in Redis, shared by every registrar pointed at it.

    roam registrar --db redis://HOST:PORT/DB        (rediss:// for TLS)
    roam registrar --db redis+cluster://HOST:PORT   (a Redis Cluster, any node)

One hash per identity, `roam:registrar:<identity hex>`, with two fields:
`stamp` (the registration's stamp, 20 digits so that text order is number
order: Lua's numbers are doubles and would round nanoseconds) and `record`
(the record as JSON). A registration is written by one Lua script that
compares stamps and sets in one step, so of two registrars taking
registrations of one unit at once, the newer registration wins whichever
arrives last. The hash expires (PX) when the record does, plus the replay
window: its stamp must outlive the record by WINDOW_S so that a replay of
it is still refused (records.py). So a hash may hold an expired record,
and readers compare the record's own expiry with their clock (records.py
does). Keyspace notifications are not used: nothing here waits for an
expiry, and they are lost while a subscriber is disconnected.

Every command is bounded by TIMEOUT_S; a Redis that is down or slow is a
StoreError for the request in hand, and the client reconnects by itself on
the next one, so a registrar serves again as soon as Redis is back.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import AsyncIterator, Awaitable
from contextlib import asynccontextmanager
from typing import Any, TypeVar
from urllib.parse import urlsplit, urlunsplit

import redis.asyncio as aioredis
from redis.asyncio.cluster import RedisCluster
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff
from redis.exceptions import RedisError

from roam.errors import ConfigError
from roam.registrar.records import WINDOW_S, Record
from roam.registrar.store import StoreError, record_from_json, record_to_json

KEY_PREFIX = "roam:registrar:"
# A Redis next to the registrars answers within a millisecond; a unit should
# hear a refusal (and ask its next registrar) well before its own 10 s
# request timeout when Redis is gone.
TIMEOUT_S = 2.0
# A failover or restart drops pooled connections: two quick retries on a
# new connection hide that from units, and add at most ~0.1 s when Redis is down.
RETRIES = 2
# Commands in flight at once, each on a connection of its own; more wait
# for one. A command takes well under a millisecond, so 64 carry far more
# than the registrar's few thousand requests per second.
POOL_SIZE = 64
STAMP_DIGITS = 20  # 2**63 - 1 has 19

# KEYS[1] the identity's hash; ARGV[1] the stamp (STAMP_DIGITS digits),
# ARGV[2] the record (JSON), ARGV[3] its lifetime in milliseconds.
# 1 when written, 0 when a registration as new or newer is held.
_COMPARE_AND_SET = """
local held = redis.call('HGET', KEYS[1], 'stamp')
if held and held >= ARGV[1] then
    return 0
end
redis.call('HSET', KEYS[1], 'stamp', ARGV[1], 'record', ARGV[2])
redis.call('PEXPIRE', KEYS[1], ARGV[3])
return 1
"""

T = TypeVar("T")


def redacted(url: str) -> str:
    """`url` without its password, for logs and status."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    user = parts.username or ""
    host = parts.netloc.rsplit("@", 1)[1]
    return urlunsplit(parts._replace(netloc=f"{user}:***@{host}"))


def _client(url: str) -> Any:
    retry = Retry(ExponentialBackoff(cap=0.1, base=0.02), RETRIES)
    options: dict[str, Any] = {"socket_timeout": TIMEOUT_S,
                               "socket_connect_timeout": TIMEOUT_S,
                               "max_connections": POOL_SIZE}
    scheme, _, rest = url.partition("://")
    if scheme.endswith("+cluster"):
        return RedisCluster.from_url(f"{scheme.removesuffix('+cluster')}://{rest}",
                                     retry=retry, **options)
    return aioredis.Redis.from_url(url, retry=retry, **options)


def key_of(identity: bytes) -> str:
    return KEY_PREFIX + identity.hex()


class RedisStore:
    shared = True

    def __init__(self, url: str) -> None:
        self.url = url
        self.name = redacted(url)
        try:
            self._redis = _client(url)
        except ValueError as exc:  # what redis-py says of a URL it cannot use
            raise ConfigError(f"--db {self.name}: {exc}") from None
        self._cas = self._redis.register_script(_COMPARE_AND_SET)
        # Beyond the pool redis-py fails a command at once ("Too many
        # connections"); a burst of units waits here instead.
        self._slots = asyncio.Semaphore(POOL_SIZE)

    async def open(self) -> None:
        try:
            await self._call(self._redis.ping())
        except StoreError as exc:
            raise ConfigError(f"--db {self.name}: cannot reach Redis: {exc}") from None

    async def load(self) -> list[Record]:
        out = []
        async with self._slots, self._errors():
            async for key in self._redis.scan_iter(match=KEY_PREFIX + "*", count=1000):
                text = await self._redis.hget(key, "record")
                if text is not None:  # expired between the scan and now
                    out.append(_parse(text, key))
        return out

    async def count(self) -> int:
        """How many identities are held (a scan: for status, not per request)."""
        async with self._slots, self._errors():
            return sum([1 async for _ in self._redis.scan_iter(match=KEY_PREFIX + "*",
                                                                count=1000)])

    async def get(self, identity: bytes) -> Record | None:
        key = key_of(identity)
        text = await self._call(self._redis.hget(key, "record"))
        return _parse(text, key) if text is not None else None

    async def save(self, record: Record) -> bool:
        lifetime_ms = max(1, math.ceil((record.expires_at + WINDOW_S - time.time()) * 1000))
        written = await self._call(self._cas(
            keys=[key_of(record.identity)],
            args=[str(record.stamp_ns).zfill(STAMP_DIGITS), record_to_json(record),
                  lifetime_ms]))
        return bool(written)

    async def delete(self, identities: list[bytes]) -> None:
        # One key per command: in a cluster the keys live on different nodes.
        for identity in identities:
            await self._call(self._redis.delete(key_of(identity)))

    async def lifetime_ms(self, identity: bytes) -> int:
        """Milliseconds until Redis drops the identity's hash (-2: none)."""
        ttl: int = await self._call(self._redis.pttl(key_of(identity)))
        return ttl

    async def close(self) -> None:
        await self._redis.aclose()

    async def _call(self, awaitable: Awaitable[T]) -> T:
        async with self._slots, self._errors():
            return await awaitable

    @asynccontextmanager
    async def _errors(self) -> AsyncIterator[None]:
        try:
            yield
        except (RedisError, OSError) as exc:  # TimeoutError is an OSError
            raise StoreError(f"Redis at {self.name}: {exc or type(exc).__name__}") from None


def _parse(text: str | bytes, key: object) -> Record:
    try:
        return record_from_json(text)
    except (ValueError, KeyError, TypeError) as exc:
        raise StoreError(f"{key!r} does not hold a registrar record ({exc})") from None
