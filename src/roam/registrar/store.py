"""The registrar's records on disk (SQLite), so a restart loses nothing.

One row per identity; each accepted registration replaces its row in a
transaction of its own (WAL journal: a crash loses at most the registration
being written, never the file). `:memory:` keeps them in memory only.
"""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

from roam.errors import ConfigError
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


class Store:
    def __init__(self, path: str) -> None:
        self.path = path
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

    def load(self) -> list[Record]:
        out = []
        for row in self._db.execute("select identity, addresses, relays, visible_to, "
                                    "stamp_ns, expires_at from records"):
            identity, addresses, relays, visible, stamp, expires = row
            out.append(Record(bytes(identity), tuple(json.loads(addresses)),
                              tuple(json.loads(relays)),
                              frozenset(bytes.fromhex(k) for k in json.loads(visible)),
                              int(stamp), float(expires)))
        return out

    def save(self, record: Record) -> None:
        self._db.execute(
            "insert or replace into records values (?, ?, ?, ?, ?, ?)",
            (record.identity, json.dumps(list(record.addresses)),
             json.dumps(list(record.relays)),
             json.dumps(sorted(k.hex() for k in record.visible_to)), record.stamp_ns,
             record.expires_at))

    def delete(self, identities: list[bytes]) -> None:
        self._db.executemany("delete from records where identity = ?",
                             [(i,) for i in identities])

    def close(self) -> None:
        self._db.close()
