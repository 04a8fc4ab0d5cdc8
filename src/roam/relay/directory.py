"""A relay fleet's shared directory: what each relay claims, and what a lookup answer means.

Relays of one fleet share a directory (roam.relay.fleet keeps it in Redis):

- a *relay record* per relay: the address the other relays dial it at and
  until when the record holds (its public key is the record's name);
- an *uplink claim* per (server identity, relay) while that relay holds
  idle uplinks of the server: the server process's instance, an *epoch*
  and until when the claim holds.

Every record carries its own expiry time (the writer's wall clock, in ms),
and a reader compares it with its own clock: a relay that died is noticed
when its records' times run out, not when the store deletes them (Redis
deletes an expired key lazily or in its background sweep, so a keyspace
notification can come long after the time is up).

The epoch rule. A relay takes an epoch for a server (a counter per server
identity, incremented at each new claim) when it first holds an uplink of
a server instance, and keeps that epoch while it holds uplinks of that
instance. A write of a claim (epoch e, instance I) is refused when a live
claim with a greater epoch names another instance: the server restarted
and uplinked elsewhere since, so what the writer holds belongs to a dead
process. A relay back from a partition with an old epoch therefore cannot
overwrite a newer claim; it drops its uplinks of the old instance instead.
A lookup takes the instance of the live claim with the greatest epoch and
answers every live claim of that instance, newest first.

Sans-IO: the wall clock comes in as an argument (`now`, seconds); records
are text in and out, and anything malformed in the store is skipped, never
raised past the decoder.
"""

from __future__ import annotations

import binascii
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from roam.errors import ProtocolError

# A claim or relay record holds this long after its last write. Four refreshes
# fit in it (REFRESH_S), so one lost round trip to the store, or a Redis
# failover (a few seconds with Sentinel), does not take a live relay out of
# the fleet; and a dead relay's claims stop steering clients within 6 s.
TTL_S = 6.0
REFRESH_S = TTL_S / 4
# A relay that refused a connection or did not answer is not dialled again
# for a claim's lifetime: by then its records have run out, or it is back.
SUSPECT_S = TTL_S
# The epoch counter outlives every claim made under it by far, so a counter
# that Redis dropped (a restart without persistence) cannot start below a
# claim that is still live.
EPOCH_TTL_S = 24 * 3600.0
# A code's step can be accepted for (2 * skew + 1) steps of 30 s (RFC 6238,
# roam.relay.admission); the fleet remembers a used step a little longer.
TOTP_USED_TTL_S = 150.0
# What one relay record may say: an address is at most 255 bytes (hop.MAX_ADDRESS).
MAX_RECORD = 512
ID_BYTES = 32
INSTANCE_BYTES = 16


def ms(t: float) -> int:
    return int(t * 1000)


@dataclass(frozen=True, slots=True)
class RelayRecord:
    identity: bytes  # the relay's public key
    address: str  # host:port, where the other relays dial it
    expires: float  # wall clock, s

    def encode(self) -> str:
        return f"{self.address} {ms(self.expires)}"

    def live(self, now: float) -> bool:
        return self.expires > now


@dataclass(frozen=True, slots=True)
class Claim:
    server: bytes  # the server's identity
    relay: bytes  # the relay that holds its uplinks
    epoch: int
    instance: bytes  # the server process's instance (its uplinks' hop headers)
    expires: float  # wall clock, s

    def encode(self) -> str:
        return f"{self.epoch} {self.instance.hex()} {ms(self.expires)}"

    def live(self, now: float) -> bool:
        return self.expires > now


def _hex_id(text: str | bytes, size: int, what: str) -> bytes:
    raw = text.decode("ascii", "replace") if isinstance(text, bytes) else text
    try:
        value = bytes.fromhex(raw)
    except (ValueError, binascii.Error):
        raise ProtocolError(f"{what} {raw[:80]!r} is not hex") from None
    if len(value) != size:
        raise ProtocolError(f"{what} is {len(value)} bytes, not {size}")
    return value


def _text(value: str | bytes, what: str) -> str:
    if isinstance(value, bytes):
        if len(value) > MAX_RECORD:
            raise ProtocolError(f"{what} of {len(value)} bytes")
        try:
            return value.decode("ascii")
        except UnicodeDecodeError:
            raise ProtocolError(f"{what} is not ASCII") from None
    if len(value) > MAX_RECORD:
        raise ProtocolError(f"{what} of {len(value)} characters")
    return value


def _expiry(text: str, what: str) -> float:
    if not text.isdigit() or len(text) > 16:
        raise ProtocolError(f"{what}: expiry {text[:20]!r} is not a time in ms")
    return int(text) / 1000


def decode_relay(name: str | bytes, value: str | bytes) -> RelayRecord:
    """One relay record (name: the relay's key in hex); ProtocolError if malformed."""
    identity = _hex_id(name, ID_BYTES, "relay id")
    fields = _text(value, "relay record").split(" ")
    if len(fields) != 2 or not fields[0] or len(fields[0]) > 255:
        raise ProtocolError("a relay record is 'HOST:PORT EXPIRES_MS'")
    return RelayRecord(identity, fields[0], _expiry(fields[1], "relay record"))


def decode_claim(server: bytes, name: str | bytes, value: str | bytes) -> Claim:
    """One uplink claim of `server` (name: the holding relay's key in hex)."""
    relay = _hex_id(name, ID_BYTES, "relay id")
    fields = _text(value, "uplink claim").split(" ")
    if len(fields) != 3 or not fields[0].isdigit() or len(fields[0]) > 18:
        raise ProtocolError("an uplink claim is 'EPOCH INSTANCE EXPIRES_MS'")
    instance = _hex_id(fields[1], INSTANCE_BYTES, "server instance")
    return Claim(server, relay, int(fields[0]), instance, _expiry(fields[2], "uplink claim"))


def decode_relays(raw: Mapping[str, str] | Mapping[bytes, bytes]) -> tuple[
        list[RelayRecord], int]:
    """Every well-formed relay record of a hash, and how many were not."""
    out: list[RelayRecord] = []
    bad = 0
    for name, value in raw.items():
        try:
            out.append(decode_relay(name, value))
        except ProtocolError:
            bad += 1
    return out, bad


def decode_claims(server: bytes, raw: Mapping[str, str] | Mapping[bytes, bytes]) -> tuple[
        list[Claim], int]:
    out: list[Claim] = []
    bad = 0
    for name, value in raw.items():
        try:
            out.append(decode_claim(server, name, value))
        except ProtocolError:
            bad += 1
    return out, bad


def claim_refused(claims: Iterable[Claim], relay: bytes, epoch: int, instance: bytes,
                  now: float) -> bool:
    """The epoch rule (the store's claim script checks the same, atomically):
    a write of (epoch, instance) by `relay` is refused when another live
    claim has a greater epoch and another instance."""
    return any(c.relay != relay and c.live(now) and c.epoch > epoch and c.instance != instance
               for c in claims)


def holders(claims: Iterable[Claim], now: float, *, exclude: bytes = b"") -> list[Claim]:
    """A lookup's answer: the live claims of the newest server instance (the
    instance of the live claim with the greatest epoch), newest epoch first,
    without `exclude` (the asking relay itself)."""
    live = [c for c in claims if c.live(now)]
    if not live:
        return []
    newest = max(live, key=lambda c: c.epoch)
    return sorted((c for c in live if c.instance == newest.instance and c.relay != exclude),
                  key=lambda c: -c.epoch)


@dataclass(frozen=True, slots=True)
class Onward:
    """Where a relay splices a client whose server's uplink it does not hold."""

    relay: bytes
    address: str
    epoch: int


def route(claims: Iterable[Claim], relays: Mapping[bytes, RelayRecord], now: float, *,
          me: bytes, suspects: Mapping[bytes, float]) -> list[Onward]:
    """The relays to try, in order, for a client of a server whose uplinks
    this relay (`me`) does not hold: each holder with a live relay record,
    those that failed recently (`suspects`: until when) last."""
    fresh: list[Onward] = []
    doubtful: list[Onward] = []
    for claim in holders(claims, now, exclude=me):
        record = relays.get(claim.relay)
        if record is None or not record.live(now):
            continue  # its relay record ran out: the relay is gone
        onward = Onward(claim.relay, record.address, claim.epoch)
        (doubtful if suspects.get(claim.relay, 0.0) > now else fresh).append(onward)
    return fresh + doubtful


@dataclass
class _Held:
    instance: bytes
    epoch: int | None = None  # None until the store gave one
    written: float = 0.0  # when it was last written (wall clock)


@dataclass(frozen=True, slots=True)
class Write:
    """Claim (epoch 0: take a new epoch) or refresh a claim in the store."""

    server: bytes
    instance: bytes
    epoch: int
    expires: float


@dataclass(frozen=True, slots=True)
class Release:
    """This relay holds no uplink of `server` any more: remove its claim."""

    server: bytes
    epoch: int


@dataclass
class Holdings:
    """This relay's claims: what it holds, what the store knows, what to write next.

    The driver calls `plan(held, now)` with the uplinks it holds (server
    identity: instance) and carries out the writes and releases it returns,
    then reports each outcome: `claimed` with the epoch the store gave, or
    `stale` when the epoch rule refused it (drop those uplinks).
    """

    claims: dict[bytes, _Held] = field(default_factory=dict)

    def plan(self, held: Mapping[bytes, bytes], now: float, *, force: bool = False) -> tuple[
            list[Write], list[Release]]:
        writes: list[Write] = []
        releases: list[Release] = []
        for server, instance in held.items():
            mine = self.claims.get(server)
            if mine is None or mine.instance != instance:
                if mine is not None and mine.epoch is not None:
                    releases.append(Release(server, mine.epoch))
                mine = self.claims[server] = _Held(instance)
            # A refresh is due well before the claim runs out (REFRESH_S of TTL_S).
            if mine.epoch is None or force or now - mine.written >= REFRESH_S * 0.9:
                writes.append(Write(server, instance, mine.epoch or 0, now + TTL_S))
        for server in [s for s in self.claims if s not in held]:
            gone = self.claims.pop(server)
            if gone.epoch is not None:
                releases.append(Release(server, gone.epoch))
        return writes, releases

    def claimed(self, server: bytes, instance: bytes, epoch: int, now: float) -> None:
        mine = self.claims.get(server)
        if mine is not None and mine.instance == instance:
            mine.epoch = epoch
            mine.written = now

    def stale(self, server: bytes, instance: bytes) -> None:
        """The store refused the claim: a newer instance of the server claimed elsewhere."""
        mine = self.claims.get(server)
        if mine is not None and mine.instance == instance:
            del self.claims[server]

    def failed(self, server: bytes) -> None:
        """The write did not reach the store: try again at the next plan."""
        mine = self.claims.get(server)
        if mine is not None:
            mine.written = 0.0

    def epochs(self) -> dict[bytes, int]:
        return {s: h.epoch for s, h in self.claims.items() if h.epoch is not None}


def peers(records: Iterable[RelayRecord], now: float, *, me: bytes) -> dict[bytes, RelayRecord]:
    """The other relays of the fleet whose records have not run out."""
    return {r.identity: r for r in records if r.identity != me and r.live(now)}


def expired(records: Iterable[RelayRecord], now: float) -> list[RelayRecord]:
    """Records whose time ran out: the driver removes them (compare-and-delete)."""
    return [r for r in records if not r.live(now)]
