"""A relay fleet's directory in Redis: the relays, their uplink claims, used codes, tickets.

    roam relay --listen 0.0.0.0:4434 --key relay.key --admit-keys admitted \\
        --directory redis://directory.example:6379/0 --fleet-address 198.18.3.2:4434

Every relay of a fleet writes its relay record (the address the others dial
it at) and a claim per server whose uplinks it holds, with the times they
run out (roam.relay.directory decides; this module only talks to Redis).
Writes that must not race are Lua scripts, atomic in Redis: a claim
compares epochs before it writes, a used code's step is stored only when
it is greater than the one stored, a record is removed only if it is still
the expired one that was read. Failure is detected by comparing the
records' times with the clock, never by keyspace notifications (they fire
when Redis deletes a key, which may be long after its time ran out).

A relay that cannot reach Redis keeps serving what it holds: its own
uplinks, the fleet's last known relays and claims, keys and tickets; it
logs once when the directory goes away and once when it is back. A new
one-time code is refused meanwhile: whether a code was used at another
relay cannot be known.

`redis+cluster://` (or `rediss+cluster://`) URLs use RedisCluster. Each
server's claims and its epoch counter share a hash tag (`{SERVER}`), so
the claim script's two keys live in one slot.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from roam.crypto.keys import short_id
from roam.errors import ConfigError
from roam.relay.admission import Admission
from roam.relay.directory import (
    EPOCH_TTL_S,
    REFRESH_S,
    SUSPECT_S,
    TOTP_USED_TTL_S,
    TTL_S,
    Claim,
    Holdings,
    Onward,
    RelayRecord,
    decode_claims,
    decode_relays,
    expired,
    ms,
    peers,
    route,
)
from roam.relay.uplinks import Uplinks

log = logging.getLogger("roam")

PREFIX = "roam:fleet:"
RELAYS = PREFIX + "relays"
TICKET_KEY = PREFIX + "ticket-key"
TICKET_SECRET_BYTES = 32
# Redis on the same site answers in well under a millisecond; two seconds
# covers a failover's first retry and keeps a dead Redis from holding a
# client's connection (a lookup) for long.
REDIS_TIMEOUT_S = 2.0
# A lookup is on a client's way in: past this, the last known answer is used.
LOOKUP_TIMEOUT_S = 1.0
# Last answers kept per server for an outage of Redis: one per inside
# server a fleet serves; a few thousand lists of a few claims each.
MAX_REMEMBERED = 4096
SCHEMES = ("redis", "rediss", "unix")
CLUSTER_SCHEMES = ("redis+cluster", "rediss+cluster")

# KEYS[1] the server's epoch counter, KEYS[2] its claims (field: relay id).
# ARGV: relay id, instance, epoch (0: take a new one), now ms, expires ms,
# claims' TTL ms, epoch counter's TTL ms. Returns the epoch, or -1 when a live
# claim of another relay has a greater epoch and another instance (the
# directory's epoch rule), or this relay's own field a greater epoch.
_CLAIM = """
local epoch = tonumber(ARGV[3])
local now = tonumber(ARGV[4])
local all = redis.call('HGETALL', KEYS[2])
for i = 1, #all, 2 do
  local e, inst, exp = string.match(all[i + 1], '^(%d+) (%x+) (%d+)$')
  if not e or tonumber(exp) <= now then
    redis.call('HDEL', KEYS[2], all[i])
  elseif epoch > 0 and tonumber(e) > epoch then
    if all[i] == ARGV[1] or inst ~= ARGV[2] then
      return -1
    end
  end
end
if epoch == 0 then
  epoch = redis.call('INCR', KEYS[1])
  redis.call('PEXPIRE', KEYS[1], ARGV[7])
end
redis.call('HSET', KEYS[2], ARGV[1], epoch .. ' ' .. ARGV[2] .. ' ' .. ARGV[5])
redis.call('PEXPIRE', KEYS[2], ARGV[6])
return epoch
"""
# KEYS[1] a server's claims; ARGV relay id, epoch: removed if still that epoch's.
_RELEASE = """
local v = redis.call('HGET', KEYS[1], ARGV[1])
if v and string.match(v, '^(%d+) ') == ARGV[2] then
  redis.call('HDEL', KEYS[1], ARGV[1])
  return 1
end
return 0
"""
# KEYS[1] an identity's last used step; ARGV step, TTL ms: 1 when stored
# (greater than what was), 0 when this step or a later one was used.
_USE_STEP = """
local v = tonumber(redis.call('GET', KEYS[1]) or '-1')
if tonumber(ARGV[1]) > v then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  return 1
end
return 0
"""
# KEYS[1] a hash; ARGV field, value: removed only if it still holds that value.
_DELETE_IF = """
if redis.call('HGET', KEYS[1], ARGV[1]) == ARGV[2] then
  return redis.call('HDEL', KEYS[1], ARGV[1])
end
return 0
"""


def epoch_key(server: bytes) -> str:
    return f"{PREFIX}{{{server.hex()}}}:epoch"


def claims_key(server: bytes) -> str:
    return f"{PREFIX}{{{server.hex()}}}:uplinks"


def totp_key(identity: bytes) -> str:
    return f"{PREFIX}totp:{identity.hex()}"


def check_directory(url: str) -> tuple[str, bool]:
    """The URL for the client library and whether it names a cluster;
    ConfigError naming --directory for anything else."""
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme in CLUSTER_SCHEMES:
        parts = parts._replace(scheme=scheme.split("+", 1)[0])
        cluster = True
    elif scheme in SCHEMES:
        cluster = False
    else:
        raise ConfigError(f"--directory {safe_url(url)!r}: expected redis://HOST:PORT/DB, "
                          "rediss://, unix:///PATH, or redis+cluster://HOST:PORT for a "
                          "Redis Cluster")
    if scheme != "unix" and not parts.hostname:
        raise ConfigError(f"--directory {safe_url(url)!r}: no host")
    try:
        parts.port  # noqa: B018 (a bad port raises here)
    except ValueError as exc:
        raise ConfigError(f"--directory {safe_url(url)!r}: {exc}") from None
    return urlunsplit(parts), cluster


def safe_url(url: str) -> str:
    """`url` without its password (for logs and status)."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.netloc.rsplit("@", 1)[1]
    user = f"{parts.username}:***@" if parts.username else ":***@"
    return urlunsplit(parts._replace(netloc=user + host))


class Fleet:
    """One relay's part in a fleet: its records, its claims, its view of the others."""

    def __init__(self, url: str, *, identity: bytes, address: str, admission: Admission,
                 uplinks: Uplinks, drop: Callable[[bytes, bytes], None]) -> None:
        self.url, self.cluster = check_directory(url)
        self.shown = safe_url(url)
        self.identity = identity
        self.address = address
        self._admission = admission
        self._uplinks = uplinks
        self._drop = drop  # (server, instance): close those idle uplinks
        self.holdings = Holdings()
        self.relays: dict[bytes, RelayRecord] = {}
        self._claims: dict[bytes, list[Claim]] = {}  # last lookup per server
        self.suspects: dict[bytes, float] = {}
        self._secret = b""
        self._wake = asyncio.Event()
        self.reachable = False
        self.last_error = ""
        self.bad_records = 0  # malformed entries met in the store (skipped)
        self._redis: Any = None
        self._scripts: dict[str, Any] = {}

    # ---- start, run, stop ------------------------------------------------------------

    async def start(self) -> None:
        """Connect, write this relay's record, learn the fleet and its ticket
        key; ConfigError naming --directory when Redis cannot be used."""
        kwargs: dict[str, Any] = {"socket_timeout": REDIS_TIMEOUT_S,
                                  "socket_connect_timeout": REDIS_TIMEOUT_S}
        try:
            if self.cluster:
                self._redis = aioredis.RedisCluster.from_url(self.url, **kwargs)
            else:
                self._redis = aioredis.from_url(self.url, **kwargs)
            self._scripts = {name: self._redis.register_script(text) for name, text in (
                ("claim", _CLAIM), ("release", _RELEASE), ("use_step", _USE_STEP),
                ("delete_if", _DELETE_IF))}
            async with asyncio.timeout(REDIS_TIMEOUT_S * 2):
                await self._redis.ping()
                await self._ticket_key()
                await self._write_record(time.time())
                await self._read_relays(time.time())
        except (RedisError, OSError, TimeoutError, ValueError) as exc:
            await self.close()
            raise ConfigError(f"--directory {self.shown!r}: {exc or type(exc).__name__}"
                              ) from None
        self.reachable = True
        log.info("relay fleet %s: %d other relays", self.shown, len(self.relays))

    async def run(self) -> None:
        """Refresh records and claims every REFRESH_S (at once when woken)."""
        while True:
            try:
                await self.sync()
            except Exception:  # what Redis returns must never end the relay
                log.exception("relay fleet: a refresh failed")
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(REFRESH_S):
                    await self._wake.wait()
            self._wake.clear()

    def wake(self) -> None:
        """Something changed (a new uplink, an unknown peer): sync now."""
        self._wake.set()

    async def close(self) -> None:
        redis, self._redis = self._redis, None
        if redis is not None:
            with contextlib.suppress(RedisError, OSError, RuntimeError):
                await redis.aclose()

    async def leave(self) -> None:
        """Remove this relay's record and claims (a clean stop)."""
        if self._redis is None:
            return
        with contextlib.suppress(RedisError, OSError, TimeoutError):
            async with asyncio.timeout(REDIS_TIMEOUT_S):
                for server, epoch in self.holdings.epochs().items():
                    await self._scripts["release"](keys=[claims_key(server)],
                                                   args=[self.identity.hex(), epoch])
                await self._redis.hdel(RELAYS, self.identity.hex())

    async def sync(self) -> None:
        now = time.time()
        try:
            async with asyncio.timeout(REDIS_TIMEOUT_S * 2):
                await self._write_record(now)
                await self._claim(now)
                await self._read_relays(now)
                await self._ticket_key()
        except (RedisError, OSError, TimeoutError) as exc:
            self._unreachable(exc)
            return
        if not self.reachable:
            log.warning("relay fleet: the directory %s is back", self.shown)
        self.reachable = True

    def _unreachable(self, exc: BaseException) -> None:
        self.last_error = str(exc) or type(exc).__name__
        if self.reachable:
            log.warning("relay fleet: the directory %s is unreachable (%s); serving what this "
                        "relay holds", self.shown, self.last_error)
        self.reachable = False

    # ---- the records -------------------------------------------------------------------

    async def _write_record(self, now: float) -> None:
        record = RelayRecord(self.identity, self.address, now + TTL_S)
        await self._redis.hset(RELAYS, self.identity.hex(), record.encode())
        await self._redis.pexpire(RELAYS, ms(EPOCH_TTL_S))

    async def _read_relays(self, now: float) -> None:
        raw = await self._redis.hgetall(RELAYS)
        records, bad = decode_relays(raw)
        self.bad_records += bad
        for gone in expired(records, now):
            # Compare-and-delete: a relay that refreshed meanwhile stays.
            await self._scripts["delete_if"](keys=[RELAYS],
                                             args=[gone.identity.hex(), gone.encode()])
        self.relays = peers(records, now, me=self.identity)
        self._admission.peers = {k: r.address for k, r in self.relays.items()}
        self.suspects = {k: t for k, t in self.suspects.items() if t > now}

    async def _claim(self, now: float) -> None:
        writes, releases = self.holdings.plan(self._uplinks.held(), now)
        me = self.identity.hex()
        for release in releases:
            await self._scripts["release"](keys=[claims_key(release.server)],
                                           args=[me, release.epoch])
        for write in writes:
            try:
                epoch = int(await self._scripts["claim"](
                    keys=[epoch_key(write.server), claims_key(write.server)],
                    args=[me, write.instance.hex(), write.epoch, ms(now), ms(write.expires),
                          ms(TTL_S * 2), ms(EPOCH_TTL_S)]))
            except BaseException:
                self.holdings.failed(write.server)
                raise
            if epoch < 0:
                self.holdings.stale(write.server, write.instance)
                log.warning("relay fleet: server %s restarted and uplinked elsewhere; dropping "
                            "its old uplinks here", short_id(write.server))
                self._drop(write.server, write.instance)
            else:
                if write.epoch == 0:
                    log.info("relay fleet: claimed the uplinks of %s (epoch %d)",
                             short_id(write.server), epoch)
                self.holdings.claimed(write.server, write.instance, epoch, now)

    async def _ticket_key(self) -> None:
        """The fleet's ticket secret: the first relay's, put back by any relay
        that finds it gone (Redis restarted without persistence)."""
        if self._secret:
            await self._redis.set(TICKET_KEY, self._secret, nx=True)
        else:
            await self._redis.set(TICKET_KEY, os.urandom(TICKET_SECRET_BYTES), nx=True)
        stored = await self._redis.get(TICKET_KEY)
        if not isinstance(stored, bytes) or len(stored) != TICKET_SECRET_BYTES:
            self.bad_records += 1
            return
        if stored != self._secret:
            if self._secret:
                log.warning("relay fleet: the fleet's ticket key changed; tickets issued "
                            "before still pass here until they expire")
            self._secret = stored
            self._admission.fleet_ticket_key(stored)

    # ---- what the relay asks --------------------------------------------------------

    async def onward(self, server: bytes) -> list[Onward]:
        """The other relays that hold uplinks of `server`, to try in order
        (from the last known answer when the directory does not answer)."""
        now = time.time()
        try:
            async with asyncio.timeout(LOOKUP_TIMEOUT_S):
                raw = await self._redis.hgetall(claims_key(server))
                claims, bad = decode_claims(server, raw)
                self.bad_records += bad
                self._remember(server, claims)
                if any(c.relay not in self.relays and c.relay != self.identity
                       for c in claims if c.live(now)):
                    await self._read_relays(now)  # a relay newer than the last refresh
        except (RedisError, OSError, TimeoutError) as exc:
            self._unreachable(exc)
        return route(self._claims.get(server, ()), self.relays, now, me=self.identity,
                     suspects=self.suspects)

    def _remember(self, server: bytes, claims: list[Claim]) -> None:
        """The last answer per server, for when Redis does not answer: only
        servers some relay claimed, and at most MAX_REMEMBERED of them (an
        admitted client can name any target)."""
        self._claims.pop(server, None)
        if claims:
            self._claims[server] = claims
            while len(self._claims) > MAX_REMEMBERED:
                del self._claims[next(iter(self._claims))]  # the oldest answer

    def suspect(self, relay: bytes) -> None:
        """Dialling `relay` failed: try it last until SUSPECT_S from now."""
        self.suspects[relay] = time.time() + SUSPECT_S

    async def use_step(self, identity: bytes, step: int) -> bool | None:
        """Record `step` as used by `identity` fleet-wide: True when no relay
        used it (or a later one) before, False when one did, None when the
        directory did not answer."""
        try:
            async with asyncio.timeout(REDIS_TIMEOUT_S):
                stored = await self._scripts["use_step"](keys=[totp_key(identity)],
                                                         args=[step, ms(TOTP_USED_TTL_S)])
        except (RedisError, OSError, TimeoutError) as exc:
            self._unreachable(exc)
            return None
        return int(stored) == 1

    def status(self) -> dict[str, object]:
        now = time.time()
        return {
            "directory": self.shown,
            "reachable": self.reachable,
            **({"last_error": self.last_error} if not self.reachable else {}),
            "address": self.address,
            "peers": {short_id(k): {"address": r.address, "expires_in_s": round(r.expires - now, 1)}
                      for k, r in sorted(self.relays.items())},
            "claims": {short_id(k): e for k, e in sorted(self.holdings.epochs().items())},
            "suspects": [short_id(k) for k, t in self.suspects.items() if t > now],
            "bad_records": self.bad_records,
        }
