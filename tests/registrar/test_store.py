"""The registrar's SQLite store: what is saved comes back after a reopen, an
older registration never replaces a newer one, and `--db` picks the store."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from roam.crypto.keys import generate_private_key, public_key
from roam.errors import ConfigError
from roam.registrar.records import Record
from roam.registrar.store import Store, open_store, record_from_json, record_to_json

A, B = (public_key(generate_private_key()) for _ in range(2))


def test_records_survive_a_reopen_and_deletes_stick(tmp_path: Path) -> None:
    first = Record(A, ("198.18.1.2:7000",), ("r=h:1,key=k",), frozenset({B}), 5, 100.5)

    async def write() -> None:
        store = Store(str(tmp_path / "reg.db"))
        await store.open()
        assert await store.save(first)
        assert await store.save(Record(B, (), (), frozenset(), 6, 7.0))
        await store.delete([B])
        await store.close()

    async def read() -> tuple[list[Record], Record | None, Record | None, int]:
        store = Store(str(tmp_path / "reg.db"))
        try:
            return await store.load(), await store.get(A), await store.get(B), \
                await store.count()
        finally:
            await store.close()

    asyncio.run(write())
    assert asyncio.run(read()) == ([first], first, None, 1)


def test_a_registration_no_newer_than_the_stored_one_is_not_written() -> None:
    async def scenario() -> list[object]:
        store = Store(":memory:")
        newer = Record(A, ("198.18.1.2:7000",), (), frozenset(), 10, 100.0)
        saved = [await store.save(newer),
                 await store.save(Record(A, ("198.18.6.6:1",), (), frozenset(), 9, 200.0)),
                 await store.save(Record(A, ("198.18.6.6:1",), (), frozenset(), 10, 200.0))]
        kept = await store.get(A)
        newest = Record(A, ("198.18.1.3:7000",), (), frozenset(), 11, 300.0)
        saved += [await store.save(newest), await store.get(A) == newest]
        await store.close()
        return [*saved, kept == newer]

    assert asyncio.run(scenario()) == [True, False, False, True, True, True]


def test_a_file_that_is_not_a_database_or_a_missing_directory_is_named(tmp_path: Path) -> None:
    (tmp_path / "junk.db").write_bytes(b"not sqlite at all" * 100)
    with pytest.raises(ConfigError, match="not a registrar database"):
        Store(str(tmp_path / "junk.db"))
    with pytest.raises(ConfigError, match="does not exist"):
        Store(str(tmp_path / "nowhere" / "reg.db"))


def test_db_names_a_file_or_a_redis_url_and_nothing_else(tmp_path: Path) -> None:
    assert isinstance(open_store(str(tmp_path / "reg.db")), Store)
    assert open_store("redis://127.0.0.1:1/0").shared  # no connection before open()
    assert open_store("redis+cluster://127.0.0.1:1").shared
    with pytest.raises(ConfigError, match=r"--db mysql://h/x: not an SQLite file"):
        open_store("mysql://h/x")


def test_a_record_reads_back_from_its_json_unchanged() -> None:
    record = Record(A, ("[2001:db8::2]:7000",), ("r=h:1,key=k",), frozenset({A, B}),
                    2**63 - 1, 1.25)
    assert record_from_json(record_to_json(record)) == record
