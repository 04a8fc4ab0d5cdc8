"""Who may hold an opening, and who gives way when there is no room.

An *opening* is a transport before it is authenticated: a connection that
has not yet sent its preamble, a NEW one in its handshake, a RESUME whose
first record has not arrived. Each holds a socket, a task and a few KiB on
the server, for anyone who can complete a TCP handshake (which proves the
source address, as WireGuard's cookie reply does for UDP: so limits per
source address are sound here without a cookie).

Two tables use this, with different rules (transport/server.py):

- every opening: while the table is under load (at least `load`
  openings), at most `per_source` per source, and a newcomer over it is
  refused at once (a flood from one address costs an accept and a close per
  connection, nothing more). At `capacity`, a newcomer does not wait for
  idle sockets to time out: the oldest opening of the source holding most
  is evicted to make room. An honest opening finishes within a round trip,
  so only idle or stalling ones are ever old; idle sockets from however
  many addresses therefore cannot keep a legitimate resume out.
- NEW handshakes (each costs two X25519 operations): at most `capacity`,
  and always at most `per_source` per source; a newcomer over a limit is
  refused (BUSY), and its client retries with jittered backoff.

Sans-IO: keys are whatever the caller uses for a transport; no clock.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from typing import Generic, TypeVar

K = TypeVar("K")

# IPv6 hosts get a /64 each (RFC 4291 section 2.5.1: the interface
# identifier is 64 bits): one address per host would let a single host with
# a /64 appear as 2**64 sources.
IPV6_SOURCE_PREFIX = 64


def source_of(host: str) -> str:
    """The source an address counts against: itself for IPv4, its /64 for IPv6."""
    try:
        address = ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        return host  # not an IP address (a Unix socket): its own source
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return str(address.ipv4_mapped)
        network = ipaddress.IPv6Network((address, IPV6_SOURCE_PREFIX), strict=False)
        return str(network)
    return str(address)


@dataclass(frozen=True, slots=True)
class Admission(Generic[K]):
    """The answer to a newcomer: admitted (after `evict` are dropped) or refused."""

    admitted: bool
    evict: tuple[K, ...] = ()
    reason: str = ""


@dataclass
class Openings(Generic[K]):
    capacity: int
    per_source: int
    # Below this many openings, per-source limits do not apply (0: always).
    load: int = 0
    # True: at capacity, the oldest of the heaviest source gives way; False:
    # the newcomer is refused. Over the per-source limit it is always refused.
    evict: bool = True
    _by_source: dict[str, dict[K, None]] = field(default_factory=dict)
    _source: dict[K, str] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self._source)

    def __contains__(self, key: object) -> bool:
        return key in self._source

    def held_by(self, source: str) -> int:
        return len(self._by_source.get(source, ()))

    def admit(self, key: K, source: str) -> Admission[K]:
        """Register `key` from `source`, or say why not. Evicted keys are
        forgotten here already; the caller drops their transports."""
        if key in self._source:
            raise ValueError("this opening is registered already")
        evicted: list[K] = []
        mine = self._by_source.get(source)
        held = len(mine) if mine else 0
        if held >= self.per_source and len(self._source) >= self.load:
            return Admission(False, reason=f"{held} openings from {source} already")
        if len(self._source) >= self.capacity:
            heaviest = max(self._by_source, key=lambda s: len(self._by_source[s]),
                           default=None)
            if not self.evict or heaviest is None:
                return Admission(False, reason=f"{len(self._source)} openings in progress")
            evicted.append(self._pop_oldest(heaviest))
        self._source[key] = source
        self._by_source.setdefault(source, {})[key] = None
        return Admission(True, tuple(evicted))

    def release(self, key: K) -> None:
        """The opening ended (authenticated, refused, timed out, evicted): forget it."""
        source = self._source.pop(key, None)
        if source is None:
            return
        held = self._by_source[source]
        del held[key]
        if not held:
            del self._by_source[source]

    def _pop_oldest(self, source: str) -> K:
        held = self._by_source[source]
        oldest = next(iter(held))  # dicts keep insertion order: the first is the oldest
        self.release(oldest)
        return oldest
