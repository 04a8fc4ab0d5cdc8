"""Where the registrar keeps its records: SQLite here, Redis in redisstore.py.

Both stores offer the same coroutines (`RecordStore`); `open_store` picks one
by what `--db` names. SQLite: one row per identity; each accepted
registration replaces its row in a transaction of its own (WAL journal: a
crash loses at most the registration being written, never the file), and a
restart loses nothing. `:memory:` keeps them in memory only. The file
belongs to one registrar, so the driver keeps every record in memory and
writes through; a shared store (Redis) is read per request instead.
"""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path
from typing import Protocol

from roam.errors import ConfigError, RoamError
from roam.registrar.records import Record

_SCHEMA = """
create table if not exists records (
    identity blob primary key,
    addresses text not null,
    relays text not null,
    visible_to text not null,
    stamp_ns integer not null,
    expires_at real not null
)
"""
_COLUMNS = "identity, addresses, relays, visible_to, stamp_ns, expires_at"

REDIS_SCHEMES = ("redis://", "rediss://", "redis+cluster://", "rediss+cluster://")


class StoreError(RoamError):
    """The store could not be read or written just now (Redis unreachable):
    the request in hand is refused, and the registrar goes on serving."""


class RecordStore(Protocol):
    # Other registrars write to it too: records are read from it per
    # request, never trusted from memory.
    shared: bool
    # What the store is, for logs and status (a URL without its password).
    name: str

    async def open(self) -> None:
        """Reach the store; a ConfigError naming --db when it cannot be."""

    async def load(self) -> list[Record]:
        """Every record held, expired or not."""

    async def get(self, identity: bytes) -> Record | None:
        """The record of one identity, expired or not."""

    async def count(self) -> int:
        """How many identities are held."""

    async def save(self, record: Record) -> bool:
        """Store `record` unless one with a stamp as new or newer is there
        (compare and set in one step: of two registrars taking registrations
        of one unit at once, the newer registration wins): False then."""

    async def delete(self, identities: list[bytes]) -> None: ...

    async def close(self) -> None: ...


def open_store(db: str) -> RecordStore:
    """The store `--db` names: a redis:// URL, or an SQLite file (`:memory:`)."""
    if db.startswith(REDIS_SCHEMES):
        from roam.registrar.redisstore import RedisStore

        return RedisStore(db)
    if "://" in db:
        raise ConfigError(f"--db {db}: not an SQLite file nor a URL of "
                          f"{', '.join(REDIS_SCHEMES)}")
    return Store(db)


def record_to_json(record: Record) -> str:
    return json.dumps({"identity": record.identity.hex(), "addresses": list(record.addresses),
                       "relays": list(record.relays),
                       "visible_to": sorted(k.hex() for k in record.visible_to),
                       "stamp_ns": record.stamp_ns, "expires_at": record.expires_at},
                      separators=(",", ":"))


def record_from_json(text: str | bytes) -> Record:
    obj = json.loads(text)
    return Record(bytes.fromhex(obj["identity"]), tuple(obj["addresses"]),
                  tuple(obj["relays"]), frozenset(bytes.fromhex(k) for k in obj["visible_to"]),
                  int(obj["stamp_ns"]), float(obj["expires_at"]))


class Store:
    shared = False

    def __init__(self, path: str) -> None:
        self.path = self.name = path
        if path != ":memory:":
            parent = Path(path).expanduser().parent
            if not parent.is_dir():
                raise ConfigError(f"--db {path}: directory {parent} does not exist")
        try:
            self._db = sqlite3.connect(str(Path(path).expanduser()) if path != ":memory:"
                                       else path, isolation_level=None)
            self._db.execute("pragma journal_mode=wal")
            self._db.execute(_SCHEMA)
        except sqlite3.DatabaseError as exc:
            raise ConfigError(f"--db {path}: not a registrar database ({exc})") from None

    # The coroutines below do their work at once: SQLite answers within
    # microseconds from the page cache, well under what a thread hop costs.

    async def open(self) -> None:
        pass  # the constructor opened the file and named what was wrong

    async def load(self) -> list[Record]:
        return [_row(row) for row in self._db.execute(f"select {_COLUMNS} from records")]

    async def count(self) -> int:
        total: int = self._db.execute("select count(*) from records").fetchone()[0]
        return total

    async def get(self, identity: bytes) -> Record | None:
        row = self._db.execute(f"select {_COLUMNS} from records where identity = ?",
                               (identity,)).fetchone()
        return _row(row) if row is not None else None

    async def save(self, record: Record) -> bool:
        done = self._db.execute(
            "insert into records values (?, ?, ?, ?, ?, ?) on conflict(identity) do update "
            "set addresses = excluded.addresses, relays = excluded.relays, "
            "visible_to = excluded.visible_to, stamp_ns = excluded.stamp_ns, "
            "expires_at = excluded.expires_at where excluded.stamp_ns > records.stamp_ns",
            (record.identity, json.dumps(list(record.addresses)),
             json.dumps(list(record.relays)),
             json.dumps(sorted(k.hex() for k in record.visible_to)), record.stamp_ns,
             record.expires_at))
        return done.rowcount > 0

    async def delete(self, identities: list[bytes]) -> None:
        self._db.executemany("delete from records where identity = ?",
                             [(i,) for i in identities])

    async def close(self) -> None:
        self._db.close()


def _row(row: tuple[bytes, str, str, str, int, float]) -> Record:
    identity, addresses, relays, visible, stamp, expires = row
    return Record(bytes(identity), tuple(json.loads(addresses)), tuple(json.loads(relays)),
                  frozenset(bytes.fromhex(k) for k in json.loads(visible)), int(stamp),
                  float(expires))
