"""A client's way through relays: `--relay` names, the headers it sends, the replies it reads.

    --relay 'dmz=198.18.1.1:4434,key=BASE64'
    --path  'wifi-relayed:dev=wlan0,via=dmz'          (a chain: via=r1+r2+r3)

A transport on a relayed path connects to the route's first relay and sends,
at once, one hop header per relay (roam.relay.hop) and then its roam
preamble: each relay dials the next one, the last dials the server. The
relays' replies come back first, in route order, then the server's. A relay
that admits the client gives it a ticket, which the client presents next
time instead of a code.

Sans-IO: the wall clock comes in as an argument.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from roam.connector.allow import format_host_port
from roam.errors import ConfigError
from roam.pinned import NAME_RULE, is_name, parse_pinned
from roam.relay.hop import Hop, HopKind, Next, Proof, seal_hop

# Chains of at least 4 relays are wanted (figure 4); each hop costs the client one
# X25519 pair and the transport one header (at most 1 KiB) per connect.
MAX_HOPS = 8


@dataclass(frozen=True, slots=True)
class RelayHop:
    name: str
    host: str
    port: int
    key: bytes

    @property
    def address(self) -> str:
        return format_host_port(self.host, self.port)


def parse_relay(text: str, *, flag: str = "--relay", name: str | None = None) -> RelayHop:
    """`NAME=HOST:PORT,key=PUBLIC_KEY` (or, with `name` given, as a server's
    `--uplink`, `HOST:PORT,key=PUBLIC_KEY`); a ConfigError names the problem."""

    def fail(problem: str) -> ConfigError:
        return ConfigError(f"{flag} {text!r}: {problem}")

    if name is None:
        name, eq, rest = text.partition("=")
        name = name.strip()
        if not eq or not is_name(name):
            raise fail(f"expected NAME=HOST:PORT,key=PUBLIC_KEY (NAME: {NAME_RULE})")
    else:
        rest = text
    host, port, key = parse_pinned(rest, flag=flag, text=text, whose="relay")
    return RelayHop(name, host, port, key)


def parse_relays(texts: Sequence[str]) -> dict[str, RelayHop]:
    relays: dict[str, RelayHop] = {}
    for text in texts:
        relay = parse_relay(text)
        if relay.name in relays:
            raise ConfigError(f"--relay {text!r}: a relay named {relay.name!r} is already given")
        relays[relay.name] = relay
    return relays


def resolve_route(via: Sequence[str], relays: dict[str, RelayHop], path: str) -> tuple[
        RelayHop, ...]:
    """A path's `via=` names, as relays; ConfigError for an unknown name."""
    if len(via) > MAX_HOPS:
        raise ConfigError(f"path {path!r}: {len(via)} relays; at most {MAX_HOPS}")
    route = []
    for name in via:
        relay = relays.get(name)
        if relay is None:
            known = ", ".join(sorted(relays)) or "none: give --relay NAME=HOST:PORT,key=KEY"
            raise ConfigError(f"path {path!r}: no relay named {name!r} (known: {known})")
        route.append(relay)
    return tuple(route)


# The proof a client shows a relay: (kind, TOTP code, ticket).
ProofFor = Callable[[RelayHop, float], tuple[Proof, int, bytes]]


def route_headers(route: Sequence[RelayHop], *, sender_private: bytes, target: bytes,
                  server: str, wall: float, stamp_ns: int, proof_for: ProofFor) -> bytes:
    """Every relay's header, in route order: each relay dials the next, the
    last one `server` (`host:port`), whose identity is `target`. Stamps are
    `stamp_ns` and up, one per relay: the caller keeps them rising, since a
    relay takes a (sender, stamp) pair once."""
    out = bytearray()
    base = stamp_ns
    for i, relay in enumerate(route):
        onward = route[i + 1] if i + 1 < len(route) else None
        proof, code, ticket = proof_for(relay, wall)
        hop = Hop(HopKind.CLIENT, base + i, target, Next.DIAL,
                  onward.key if onward else target, onward.address if onward else server,
                  proof, code, ticket)
        out += seal_hop(hop, sender_private, relay.key)
    return bytes(out)
