"""The registrar's SQLite store: what is saved comes back after a reopen."""

from __future__ import annotations

from pathlib import Path

import pytest

from roam.crypto.keys import generate_private_key, public_key
from roam.errors import ConfigError
from roam.registrar.records import Record
from roam.registrar.store import Store

A, B = (public_key(generate_private_key()) for _ in range(2))


def test_records_survive_a_reopen_and_deletes_stick(tmp_path: Path) -> None:
    first = Record(A, ("198.18.1.2:7000",), ("r=h:1,key=k",), frozenset({B}), 5, 100.5)
    store = Store(str(tmp_path / "reg.db"))
    store.save(first)
    store.save(Record(B, (), (), frozenset(), 6, 7.0))
    store.delete([B])
    store.close()
    assert Store(str(tmp_path / "reg.db")).load() == [first]


def test_a_file_that_is_not_a_database_or_a_missing_directory_is_named(tmp_path: Path) -> None:
    (tmp_path / "junk.db").write_bytes(b"not sqlite at all" * 100)
    with pytest.raises(ConfigError, match="not a registrar database"):
        Store(str(tmp_path / "junk.db"))
    with pytest.raises(ConfigError, match="does not exist"):
        Store(str(tmp_path / "nowhere" / "reg.db"))
