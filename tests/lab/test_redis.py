"""The Redis launcher runs a real redis-server and ends it by its pid."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from roam.lab.redis import RedisError, RedisServer, find_redis, free_port, probe

pytestmark = pytest.mark.skipif(find_redis() is None and not os.environ.get("CI"),
                                reason="redis-server is not installed")


def test_starts_answers_and_stops(tmp_path: Path) -> None:
    import redis

    server = RedisServer(tmp_path, port=free_port())
    with server:
        assert server.running
        client = redis.Redis.from_url(server.url)
        try:
            client.set("k", "v")
            assert client.get("k") == b"v"
        finally:
            client.close()
        pid = server.pid
        assert pid is not None
    assert not server.running
    assert not probe("127.0.0.1", server.port)
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)


def test_a_server_that_cannot_start_is_reported(tmp_path: Path) -> None:
    server = RedisServer(tmp_path, port=free_port(), binary="/bin/false")
    with pytest.raises(RedisError, match="exited with status 1"):
        server.start(timeout_s=3)
    assert not server.running


def test_missing_binary_is_named(tmp_path: Path) -> None:
    server = RedisServer(tmp_path, port=free_port())
    server.binary = None
    with pytest.raises(RedisError, match="not installed"):
        server.start()
