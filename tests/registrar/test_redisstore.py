"""The registrar's Redis store against a real redis-server: records round
trip, expire with their registration (plus the replay window), only a newer
stamp replaces a stored one even when several writers race, and a Redis
that goes away is a StoreError until it is back."""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest

from roam.crypto.keys import generate_private_key, public_key
from roam.errors import ConfigError
from roam.lab.redis import RedisServer, find_redis, free_port
from roam.registrar.records import WINDOW_S, Record
from roam.registrar.redisstore import RedisStore, key_of, redacted
from roam.registrar.store import StoreError
from tests.conftest import require

A, B = (public_key(generate_private_key()) for _ in range(2))
T = TypeVar("T")
WAIT_S = 10.0  # bound on waiting for something Redis does by itself


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    require(find_redis() is not None, "redis-server is missing (scripts/setup-env installs it)")
    with RedisServer(tmp_path / "redis", port=free_port()) as server:
        yield server


def run(url: str, scenario: Callable[[RedisStore], Awaitable[T]]) -> T:
    async def main() -> T:
        store = RedisStore(url)
        try:
            await store.open()
            return await scenario(store)
        finally:
            await store.close()

    return asyncio.run(main())


def record(identity: bytes, stamp: int, expires_in_s: float = 600.0,
           address: str = "198.18.1.2:7000") -> Record:
    return Record(identity, (address,), ("r=198.18.9.1:4434,key=k",), frozenset({B}), stamp,
                  time.time() + expires_in_s)


def test_a_record_comes_back_as_it_went_in_and_deletes_stick(
        redis_server: RedisServer) -> None:
    first, second = record(A, time.time_ns()), record(B, time.time_ns())

    async def scenario(store: RedisStore) -> None:
        assert await store.get(A) is None
        assert await store.save(first)
        assert await store.save(second)
        assert await store.get(A) == first
        assert sorted(await store.load(), key=lambda r: r.identity) == sorted(
            [first, second], key=lambda r: r.identity)
        assert await store.count() == 2
        await store.delete([B])
        assert await store.get(B) is None
        assert await store.count() == 1

    run(redis_server.url, scenario)


def test_redis_drops_a_record_with_its_expiry_plus_the_replay_window(
        redis_server: RedisServer) -> None:
    async def scenario(store: RedisStore) -> None:
        lasting = record(A, time.time_ns(), expires_in_s=600)
        assert await store.save(lasting)
        lifetime = await store.lifetime_ms(A)
        assert (600 + WINDOW_S - 5) * 1000 < lifetime <= (600 + WINDOW_S) * 1000
        # Expired a replay window ago but for a fifth of a second: its stamp
        # still refuses a replay until Redis drops it, which it does alone.
        dying = record(B, time.time_ns(), expires_in_s=0.2 - WINDOW_S)
        assert await store.save(dying)
        held = await store.get(B)
        assert held == dying
        assert held is not None
        assert held.expires_at < time.time()
        assert not await store.save(dying)
        deadline = time.monotonic() + WAIT_S
        while await store.get(B) is not None:
            assert time.monotonic() < deadline, "Redis kept an expired record"
            await asyncio.sleep(0.05)
        assert await store.lifetime_ms(B) == -2
        assert await store.get(A) == lasting

    run(redis_server.url, scenario)


def test_only_a_newer_stamp_replaces_the_record_even_one_nanosecond_newer(
        redis_server: RedisServer) -> None:
    stamp = time.time_ns()  # ~1.7e18: doubles (Lua's numbers) cannot tell stamp from stamp+1

    async def scenario(store: RedisStore) -> None:
        assert await store.save(record(A, stamp))
        assert not await store.save(record(A, stamp, address="198.18.6.6:1"))
        assert not await store.save(record(A, stamp - 1, address="198.18.6.6:1"))
        newer = record(A, stamp + 1, address="198.18.1.3:7000")
        assert await store.save(newer)
        assert await store.get(A) == newer

    run(redis_server.url, scenario)


def test_racing_writers_on_two_connections_leave_the_newest_registration(
        redis_server: RedisServer) -> None:
    base = time.time_ns()
    stamps = [base + i for i in range(300)]
    random.Random(7).shuffle(stamps)

    async def scenario(store: RedisStore) -> tuple[Record | None, int]:
        other = RedisStore(redis_server.url)
        try:
            writers = [store, other]
            written = await asyncio.gather(*(
                writers[i % 2].save(record(A, s, address=f"198.18.1.2:{1000 + s - base}"))
                for i, s in enumerate(stamps)))
            return await other.get(A), sum(written)
        finally:
            await other.close()

    final, written = run(redis_server.url, scenario)
    assert final is not None
    assert final.stamp_ns == max(stamps)
    assert final.addresses == (f"198.18.1.2:{1000 + 299}",)
    assert 1 <= written < len(stamps)  # the first write always lands; a later older one never


def test_an_unreachable_redis_names_db_and_a_lost_one_is_an_error_until_it_is_back(
        tmp_path: Path) -> None:
    require(find_redis() is not None, "redis-server is missing (scripts/setup-env installs it)")
    port = free_port()
    server = RedisServer(tmp_path / "redis", port=port)

    async def scenario() -> None:
        store = RedisStore(f"redis://127.0.0.1:{port}/0")
        try:
            with pytest.raises(ConfigError, match=rf"--db redis://127\.0\.0\.1:{port}/0: "
                                                  "cannot reach Redis"):
                await store.open()
            server.start()
            await store.open()
            assert await store.save(record(A, time.time_ns()))
            server.stop()
            with pytest.raises(StoreError, match=f"Redis at redis://127.0.0.1:{port}/0"):
                await store.get(A)
            with pytest.raises(StoreError):
                await store.save(record(A, time.time_ns()))
            server.start()  # empty (no persistence): the same client serves again
            assert await store.get(A) is None
            assert await store.save(record(A, time.time_ns()))
            assert await store.get(A) is not None
        finally:
            await store.close()

    try:
        asyncio.run(scenario())
    finally:
        server.stop()


def test_what_another_program_left_under_the_key_is_an_error_not_a_record(
        redis_server: RedisServer) -> None:
    async def scenario(store: RedisStore) -> None:
        await store._redis.hset(key_of(A), "record", "not json")
        with pytest.raises(StoreError, match="does not hold a registrar record"):
            await store.get(A)

    run(redis_server.url, scenario)


def test_a_password_never_reaches_logs_or_status() -> None:
    assert redacted("redis://:s3cret@10.0.0.1:6379/0") == "redis://:***@10.0.0.1:6379/0"
    assert redacted("rediss://roam:s3cret@h:6380/2") == "rediss://roam:***@h:6380/2"
    assert redacted("redis://10.0.0.1:6379/0") == "redis://10.0.0.1:6379/0"
    assert "s3cret" not in RedisStore("redis://:s3cret@127.0.0.1:1/0").name


class _ClusterNode(RedisServer):
    def argv(self) -> list[str]:
        return [*super().argv(), "--cluster-enabled", "yes",
                "--cluster-config-file", str(self.workdir / "nodes.conf")]


def test_a_one_node_redis_cluster_serves_as_the_store(tmp_path: Path) -> None:
    import redis

    require(find_redis() is not None, "redis-server is missing (scripts/setup-env installs it)")
    with _ClusterNode(tmp_path / "cluster", port=free_port()) as node:
        admin = redis.Redis(host="127.0.0.1", port=node.port)
        command: Callable[..., Any] = admin.execute_command
        try:
            command("CLUSTER", "ADDSLOTSRANGE", 0, 16383)
            deadline = time.monotonic() + WAIT_S
            while b"cluster_state:ok" not in command("CLUSTER", "INFO"):
                assert time.monotonic() < deadline, "the cluster did not become ready"
                time.sleep(0.05)
        finally:
            admin.close()
        stamp = time.time_ns()

        async def scenario(store: RedisStore) -> None:
            assert await store.save(record(A, stamp))
            assert not await store.save(record(A, stamp - 1))
            assert await store.save(record(B, stamp))
            assert {r.identity for r in await store.load()} == {A, B}
            await store.delete([A, B])
            assert await store.count() == 0

        run(f"redis+cluster://127.0.0.1:{node.port}", scenario)
