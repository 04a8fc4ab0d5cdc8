"""The registrar's decisions: who is where, until when, and who may know it.

Per identity (a unit's public key) the current record: its addresses, the
relays it can be reached through, who may look it up, the stamp of the
registration that made it, and when it expires. Sans-IO: the wall clock
comes in as `now` (seconds), requests as decoded messages, and the store
(SQLite or Redis, store.py) is written by the driver from what `register` returns.

Rules:
- A registration's stamp is the unit's wall clock. One more than WINDOW_S
  away from the registrar's is refused (CLOCK); one not newer than the last
  accepted for that identity is refused (REPLAYED). The last stamp is kept
  in the record, so the store carries it over a restart; an expired record
  is kept WINDOW_S more for its stamp alone.
- A lookup is answered only when the asker is the unit itself, is in the
  unit's own `visible_to`, or the registrar's policy (`--allow-lookup`)
  lets it; to anyone else a unit that is registered looks exactly like one
  that is not (NOT_FOUND), since addresses are location data.
- At most MAX_RECORDS identities: a new one beyond it is refused (FULL).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from roam.crypto.keys import short_id
from roam.registrar.messages import Code, Found, Refused, Register, Registered

# Clocks of units and registrar agree within this (NTP keeps them within
# milliseconds; a unit waking from sleep may lag until it syncs): as a
# relay's admission (roam.relay.admission.WINDOW_S).
WINDOW_S = 120.0
# Memory bound: a record is about 1 KiB with a few addresses; 100,000 of
# them is 100 MiB at most, far above a fleet of units per registrar.
MAX_RECORDS = 100_000

# Who may look up whom beyond a unit's own list: asker -> targets, with
# None (as a target, from `*`) meaning any; the key ANY as asker: anyone.
ANY = b"*"
Policy = Mapping[bytes, frozenset[bytes | None]]


@dataclass(frozen=True, slots=True)
class Record:
    identity: bytes
    addresses: tuple[str, ...]
    relays: tuple[str, ...]
    visible_to: frozenset[bytes]
    stamp_ns: int
    expires_at: float  # wall clock, seconds


class Registry:
    def __init__(self, policy: Policy | None = None, *, max_records: int = MAX_RECORDS) -> None:
        self._records: dict[bytes, Record] = {}
        self._policy = policy or {}
        self._max = max_records

    def load(self, records: Iterable[Record]) -> None:
        for record in records:
            self._records[record.identity] = record

    def __len__(self) -> int:
        return len(self._records)

    def register(self, identity: bytes, req: Register, now: float) -> Record | Refused:
        """The new record to store, or the refusal to send."""
        who = short_id(identity)
        if abs(req.stamp_ns / 1e9 - now) > WINDOW_S:
            return Refused(Code.CLOCK, f"{who}: the registration's clock is more than "
                                       f"{WINDOW_S:.0f} s away from the registrar's")
        old = self._records.get(identity)
        if old is not None and req.stamp_ns <= old.stamp_ns:
            return Refused(Code.REPLAYED, f"{who}: a registration no newer than the last "
                                          "(replayed)")
        if old is None and len(self._records) >= self._max:
            self.expire(now)
            if len(self._records) >= self._max:
                return Refused(Code.FULL, f"the registrar holds {self._max} units")
        record = Record(identity, req.addresses, req.relays, req.visible_to, req.stamp_ns,
                        now + req.expires_s)
        self._records[identity] = record
        return record

    def answer_registered(self, record: Record, now: float) -> Registered:
        return Registered(max(1, round(record.expires_at - now)))

    def lookup(self, asker: bytes, target: bytes, now: float) -> Found | Refused:
        record = self._records.get(target)
        if record is None or record.expires_at <= now or not self.may_see(asker, record):
            return Refused(Code.NOT_FOUND, f"no current address of {short_id(target)} for "
                                           f"{short_id(asker)}")
        return Found(record.addresses, record.relays, record.expires_at - now)

    def may_see(self, asker: bytes, record: Record) -> bool:
        if asker == record.identity or asker in record.visible_to:
            return True
        for who in (asker, ANY):
            targets = self._policy.get(who, frozenset())
            if None in targets or record.identity in targets:
                return True
        return False

    def expire(self, now: float) -> list[bytes]:
        """Forget records past their expiry and the replay window: their identities."""
        gone = [k for k, r in self._records.items() if r.expires_at + WINDOW_S <= now]
        for identity in gone:
            del self._records[identity]
        return gone

    def records(self) -> list[Record]:
        return list(self._records.values())
