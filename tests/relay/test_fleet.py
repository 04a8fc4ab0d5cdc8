"""The fleet's driver against a real redis-server on loopback: records, claims and the
epoch rule in Lua, codes once fleet-wide, the shared ticket key, Redis going away."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis as sync_redis

from roam.crypto.keys import generate_private_key, public_key
from roam.errors import ConfigError
from roam.lab.redis import RedisServer, find_redis, free_port
from roam.relay.admission import Admission
from roam.relay.directory import claim_refused, decode_claims
from roam.relay.fleet import (
    RELAYS,
    TICKET_KEY,
    Fleet,
    check_directory,
    claims_key,
    safe_url,
)
from roam.relay.hop import Hop, HopKind, Proof
from roam.relay.uplinks import Uplinks
from tests.conftest import require

S = b"\x05" * 32
I1, I2 = b"\xa1" * 16, b"\xa2" * 16


@pytest.fixture(scope="module")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    require(find_redis() is not None, "redis-server is not installed")
    with RedisServer(tmp_path_factory.mktemp("redis"), port=free_port()) as server:
        yield server


@pytest.fixture
def url(redis_server: RedisServer) -> str:
    sync_redis.Redis(host=redis_server.host, port=redis_server.port).flushall()
    return redis_server.url


class Unit:
    """One relay's fleet part, with its admission and uplinks, and what it dropped."""

    def __init__(self, url: str, port: int) -> None:
        self.key = generate_private_key()
        self.identity = public_key(self.key)
        self.admission = Admission(keys={}, totp={}, admit_any=True, relay_private=self.key)
        self.uplinks = Uplinks()
        self.dropped: list[tuple[bytes, bytes]] = []
        self.fleet = Fleet(url, identity=self.identity, address=f"127.0.0.1:{port}",
                           admission=self.admission, uplinks=self.uplinks,
                           drop=lambda s, i: self.dropped.append((s, i)))


def test_directory_urls_are_checked_and_passwords_never_shown() -> None:
    assert check_directory("redis://h:6379/0") == ("redis://h:6379/0", False)
    assert check_directory("redis+cluster://h:7000") == ("redis://h:7000", True)
    assert check_directory("rediss+cluster://h:7000") == ("rediss://h:7000", True)
    for bad in ("http://h:1", "redis://", "redis://h:99999/0", "h:6379"):
        with pytest.raises(ConfigError, match="--directory"):
            check_directory(bad)
    assert safe_url("redis://:hunter2@h:1/0") == "redis://:***@h:1/0"
    assert safe_url("redis://me:hunter2@h:1/0") == "redis://me:***@h:1/0"
    with pytest.raises(ConfigError) as info:
        check_directory("http://me:hunter2@h:1")
    assert "hunter2" not in str(info.value)


def test_an_unreachable_directory_at_start_is_a_config_error_naming_it() -> None:
    async def main() -> None:
        unit = Unit(f"redis://127.0.0.1:{free_port()}/0", 1)
        with pytest.raises(ConfigError, match=r"--directory 'redis://127\.0\.0\.1"):
            await unit.fleet.start()
    asyncio.run(main())


def test_a_relay_finds_the_relay_that_holds_a_servers_uplinks(url: str) -> None:
    async def main() -> None:
        a, b = Unit(url, 4001), Unit(url, 4002)
        await a.fleet.start()
        await b.fleet.start()
        assert b.identity not in a.fleet.relays  # A started first: it learns B at its sync
        a.uplinks.offer(S, I1, 1)
        await a.fleet.sync()
        assert a.fleet.holdings.epochs() == {S: 1}
        onward = await b.fleet.onward(S)
        assert [(o.relay, o.address) for o in onward] == [(a.identity, "127.0.0.1:4001")]
        # A's own lookup never answers itself; each admits the other as a peer.
        assert await a.fleet.onward(S) == []
        assert b.admission.peers == {a.identity: "127.0.0.1:4001"}
        assert a.admission.peers == {b.identity: "127.0.0.1:4002"}
        # A relay that failed is tried last; one that left is not answered at all.
        b.fleet.suspect(a.identity)
        assert b.fleet.status()["suspects"]
        await a.fleet.leave()
        assert await b.fleet.onward(S) == []
        await b.fleet.sync()
        assert a.identity not in b.admission.peers
        await a.fleet.close()
        await b.fleet.close()
    asyncio.run(main())


async def _live_claims(url: str) -> list[object]:
    r = sync_redis.Redis.from_url(url)
    claims, _ = decode_claims(S, r.hgetall(claims_key(S)))
    return [c for c in claims if c.live(time.time())]


def test_the_epoch_rule_in_redis_drops_a_restarted_servers_old_uplinks(url: str) -> None:
    async def main() -> None:
        a, b = Unit(url, 4001), Unit(url, 4002)
        await a.fleet.start()
        await b.fleet.start()
        a.uplinks.offer(S, I1, 1)
        await a.fleet.sync()
        # The server restarts (instance I2) and uplinks at B only: a newer epoch.
        b.uplinks.offer(S, I2, 1)
        await b.fleet.sync()
        assert b.fleet.holdings.epochs()[S] > a.fleet.holdings.epochs()[S]
        # A's refresh, with its old epoch and instance, is refused by the
        # script, as the directory's rule says; A drops those uplinks.
        r = sync_redis.Redis.from_url(url)
        stored, _ = decode_claims(S, r.hgetall(claims_key(S)))
        assert claim_refused(stored, a.identity, a.fleet.holdings.epochs()[S], I1, time.time())
        await a.fleet.sync()  # not due yet: a forced write
        a.fleet.holdings.failed(S)
        await a.fleet.sync()
        assert a.dropped == [(S, I1)]
        assert a.fleet.holdings.epochs() == {}
        assert [o.relay for o in await a.fleet.onward(S)] == [b.identity]
        # The same instance at two relays is two valid holders.
        a.uplinks.drop(S, I1)
        a.uplinks.offer(S, I2, 2)
        await a.fleet.sync()
        assert a.dropped == [(S, I1)]
        assert {c.relay for c in await _live_claims(url)} == {a.identity, b.identity}
        await a.fleet.close()
        await b.fleet.close()
    asyncio.run(main())


def test_a_code_step_is_used_once_in_the_fleet_and_tickets_pass_at_every_relay(
        url: str) -> None:
    async def main() -> None:
        a, b = Unit(url, 4001), Unit(url, 4002)
        await a.fleet.start()
        await b.fleet.start()
        who = public_key(generate_private_key())
        assert await a.fleet.use_step(who, 10) is True
        assert await b.fleet.use_step(who, 10) is False
        assert await b.fleet.use_step(who, 9) is False
        assert await b.fleet.use_step(who, 11) is True
        assert await a.fleet.use_step(public_key(generate_private_key()), 10) is True
        # A ticket from A's admission is B's too (one fleet key).
        client = generate_private_key()
        hop = Hop(HopKind.CLIENT, time.time_ns(), S, proof=Proof.KEY, sender=public_key(client))
        ticket = a.admission.admit(hop, time.time()).ticket
        again = Hop(HopKind.CLIENT, time.time_ns() + 1, S, proof=Proof.TICKET, ticket=ticket,
                    sender=public_key(client))
        assert b.admission.admit(again, time.time()).admitted
        # Redis restarted empty: A puts the same key back, and B keeps it.
        r = sync_redis.Redis.from_url(url)
        secret = r.get(TICKET_KEY)
        r.flushall()
        await a.fleet.sync()
        await b.fleet.sync()
        assert r.get(TICKET_KEY) == secret
        later = Hop(HopKind.CLIENT, time.time_ns() + 2, S, proof=Proof.TICKET, ticket=ticket,
                    sender=public_key(client))
        assert b.admission.admit(later, time.time()).admitted
        await a.fleet.close()
        await b.fleet.close()
    asyncio.run(main())


def test_garbage_in_redis_is_skipped_and_counted(url: str) -> None:
    async def main() -> None:
        r = sync_redis.Redis.from_url(url)
        r.hset(RELAYS, "not-hex", "x")
        r.hset(RELAYS, "ab" * 32, "\xff\xfe 12")
        r.hset(claims_key(S), "cd" * 32, "garbage")
        a = Unit(url, 4001)
        await a.fleet.start()
        assert await a.fleet.onward(S) == []
        assert a.fleet.bad_records >= 3
        assert a.fleet.relays == {}
        await a.fleet.close()
    asyncio.run(main())


def test_a_relay_that_loses_redis_serves_what_it_knows(tmp_path: Path) -> None:
    require(find_redis() is not None, "redis-server is not installed")

    async def main() -> None:
        server = RedisServer(tmp_path / "redis", port=free_port())
        server.start()
        try:
            a, b = Unit(server.url, 4001), Unit(server.url, 4002)
            await a.fleet.start()
            await b.fleet.start()
            a.uplinks.offer(S, I1, 1)
            await a.fleet.sync()
            assert await b.fleet.onward(S)
        finally:
            server.stop()
        await b.fleet.sync()  # logs, does not raise
        assert b.fleet.status()["reachable"] is False
        # The last answer and the known peers still serve; a code cannot be checked.
        assert [o.relay for o in await b.fleet.onward(S)] == [a.identity]
        assert a.identity in b.admission.peers
        assert await b.fleet.use_step(S, 1) is None
        await a.fleet.close()
        await b.fleet.close()
    asyncio.run(main())


class ClusterRedis(RedisServer):
    """A one-node Redis Cluster: every slot on one redis-server."""

    def argv(self) -> list[str]:
        # The cluster bus port defaults to the port + 10,000: given, so any
        # free port will do.
        return [*super().argv(), "--cluster-enabled", "yes", "--cluster-config-file",
                str(self.workdir / "nodes.conf"), "--cluster-port", str(free_port())]


def test_a_fleet_on_redis_cluster_claims_finds_and_uses_codes(tmp_path: Path) -> None:
    require(find_redis() is not None, "redis-server is not installed")
    server = ClusterRedis(tmp_path / "cluster", port=free_port())
    server.start()
    try:
        r = sync_redis.Redis(host=server.host, port=server.port)
        r.execute_command("CLUSTER", "ADDSLOTSRANGE", 0, 16383)
        deadline = time.monotonic() + 10
        while b"cluster_state:ok" not in r.execute_command("CLUSTER", "INFO"):
            assert time.monotonic() < deadline, "the cluster did not come up"
            time.sleep(0.05)
        url = f"redis+cluster://{server.host}:{server.port}"

        async def main() -> None:
            a, b = Unit(url, 4001), Unit(url, 4002)
            await a.fleet.start()
            await b.fleet.start()
            a.uplinks.offer(S, I1, 1)
            await a.fleet.sync()
            assert [o.relay for o in await b.fleet.onward(S)] == [a.identity]
            assert await a.fleet.use_step(S, 5) is True
            assert await b.fleet.use_step(S, 5) is False
            await a.fleet.leave()
            assert await b.fleet.onward(S) == []
            await a.fleet.close()
            await b.fleet.close()
        asyncio.run(main())
    finally:
        server.stop()
