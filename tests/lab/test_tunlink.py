"""The userspace link's parts that need no root: parsing, queueing, control, forwarding.

Forwarding runs over SOCK_SEQPACKET socket pairs, which keep packet
boundaries the way a TUN fd does.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import socket
import time
from collections.abc import Awaitable, Iterator

import pytest

from roam.lab.tunlink import (
    DEFAULT_MTU,
    DelayQueue,
    Endpoint,
    TunLink,
    build_parser,
    execute,
    parse_endpoint,
    parse_loss,
)

TEST_TIMEOUT = 30.0


def run(coro: Awaitable[None]) -> None:
    async def bounded() -> None:
        await asyncio.wait_for(coro, TEST_TIMEOUT)

    asyncio.run(bounded())


# -- parsing ------------------------------------------------------------------


def test_parse_endpoint_accepts_names_and_paths() -> None:
    assert parse_endpoint("roam1x0-mobile:wifi") == Endpoint("roam1x0-mobile", "wifi")
    endpoint = parse_endpoint("/proc/42/ns/net:cell-r")
    assert endpoint == Endpoint("/proc/42/ns/net", "cell-r")
    assert endpoint.namespace_path == "/proc/42/ns/net"
    assert parse_endpoint("lab:wifi").namespace_path == "/run/netns/lab"
    assert str(parse_endpoint("lab:wifi")) == "lab:wifi"


@pytest.mark.parametrize(
    "text",
    ["wifi", ":wifi", "lab:", "a/b:wifi", "..:wifi", "lab:sixteen-bytes-xx", "lab:a b", "lab:."],
)
def test_parse_endpoint_rejects(text: str) -> None:
    with pytest.raises(argparse.ArgumentTypeError):
        parse_endpoint(text)


def test_parse_loss() -> None:
    assert parse_loss("0") == 0
    assert parse_loss("12.5") == 12.5
    assert parse_loss("100") == 100
    for bad in ("-1", "100.1", "nan", "inf", "lots"):
        with pytest.raises(argparse.ArgumentTypeError):
            parse_loss(bad)


def test_parser_defaults_and_options() -> None:
    args = build_parser().parse_args(["--a", "m:wifi", "--b", "r:wifi-r", "--control", "/tmp/c"])
    assert args.a == Endpoint("m", "wifi")
    assert args.b == Endpoint("r", "wifi-r")
    assert args.delay_ms == 0
    assert args.loss == 0
    assert args.mtu == DEFAULT_MTU
    assert args.watch_stdin is False
    args = build_parser().parse_args(
        [
            "--a",
            "m:x",
            "--b",
            "r:y",
            "--control",
            "c",
            "--delay-ms",
            "2.5",
            "--loss",
            "3",
            "--mtu",
            "1500",
            "--watch-stdin",
        ]
    )
    assert (args.delay_ms, args.loss, args.mtu, args.watch_stdin) == (2.5, 3, 1500, True)


@pytest.mark.parametrize(
    "argv",
    [
        ["--b", "r:y", "--control", "c"],
        ["--a", "m:x", "--control", "c"],
        ["--a", "m:x", "--b", "r:y"],
        ["--a", "m:x", "--b", "r:y", "--control", "c", "--delay-ms", "-1"],
        ["--a", "m:x", "--b", "r:y", "--control", "c", "--loss", "101"],
        ["--a", "m:x", "--b", "r:y", "--control", "c", "--mtu", "40"],
    ],
)
def test_parser_rejects(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        build_parser().parse_args(argv)
    assert "error" in capsys.readouterr().err


# -- the delay queue ----------------------------------------------------------


def test_delay_queue_releases_at_due_time_in_order() -> None:
    queue = DelayQueue()
    assert queue.next_due() is None
    assert queue.push(0.0, 0.010, b"one")
    assert queue.push(0.001, 0.010, b"two")
    assert queue.next_due() == pytest.approx(0.010)
    assert queue.pop_due(0.0099) == []
    assert queue.pop_due(0.010) == [b"one"]
    assert queue.pop_due(1.0) == [b"two"]
    assert len(queue) == 0
    assert queue.size_bytes == 0


def test_delay_queue_keeps_order_when_delay_shrinks() -> None:
    queue = DelayQueue()
    queue.push(0.0, 0.100, b"slow")
    # A later packet with a shorter delay would overtake without the clamp.
    queue.push(0.001, 0.0, b"fast")
    assert queue.pop_due(0.050) == []
    assert queue.pop_due(0.100) == [b"slow", b"fast"]


def test_delay_queue_order_is_preserved_for_random_delays() -> None:
    rng = random.Random(7)
    queue = DelayQueue()
    now = 0.0
    for i in range(500):
        now += rng.random() / 1000
        queue.push(now, rng.random() / 100, i.to_bytes(2, "big"))
    released: list[bytes] = []
    while queue:
        due = queue.next_due()
        assert due is not None
        released += queue.pop_due(due)
    assert [int.from_bytes(p, "big") for p in released] == list(range(500))


def test_delay_queue_limit_and_clear() -> None:
    queue = DelayQueue(limit_bytes=10)
    assert queue.push(0.0, 1.0, b"12345")
    assert queue.push(0.0, 1.0, b"67890")
    assert not queue.push(0.0, 1.0, b"x")
    assert (len(queue), queue.size_bytes) == (2, 10)
    assert queue.clear() == 2
    assert (len(queue), queue.size_bytes) == (0, 0)
    with pytest.raises(ValueError, match="queue limit"):
        DelayQueue(limit_bytes=0)


# -- control commands ---------------------------------------------------------


def idle_link() -> TunLink:
    # execute() never touches the fds of a link that was not started.
    return TunLink(-1, -1)


def test_execute_changes_settings() -> None:
    link = idle_link()
    assert execute(link, b"delay 12.5\n") == "ok"
    assert link.delay_ms == 12.5
    assert execute(link, b"LOSS 3") == "ok"
    assert link.loss == 3
    assert execute(link, b"blackhole on") == "ok"
    assert link.blackhole
    assert execute(link, b"blackhole OFF") == "ok"
    assert not link.blackhole


def test_execute_stats_is_json() -> None:
    link = TunLink(-1, -1, delay_ms=4, loss=1)
    stats = json.loads(execute(link, b"stats\n"))
    assert stats["delay_ms"] == 4
    assert stats["loss"] == 1
    assert stats["blackhole"] is False
    for direction in ("a_to_b", "b_to_a"):
        assert stats[direction]["packets"] == 0
        assert stats[direction]["dropped_loss"] == 0


@pytest.mark.parametrize(
    ("line", "fragment"),
    [
        (b"", "empty command"),
        (b"\xff\xfe", "not UTF-8"),
        (b"warp 9", "unknown command"),
        (b"delay", "exactly one argument"),
        (b"delay 1 2", "exactly one argument"),
        (b"delay -3", "delay must be"),
        (b"delay soon", "delay must be"),
        (b"loss 200", "between 0 and 100"),
        (b"blackhole maybe", "'on' or 'off'"),
        (b"stats now", "takes no argument"),
    ],
)
def test_execute_rejects(line: bytes, fragment: str) -> None:
    link = idle_link()
    answer = execute(link, line)
    assert answer.startswith("error: ")
    assert fragment in answer
    assert (link.delay_ms, link.loss, link.blackhole) == (0, 0, False)


def test_link_setters_validate() -> None:
    link = idle_link()
    with pytest.raises(ValueError, match="delay"):
        link.set_delay(float("nan"))
    with pytest.raises(ValueError, match="loss"):
        link.set_loss(-1)


# -- forwarding over packet sockets -------------------------------------------


class Wire:
    """Two SOCK_SEQPACKET pairs standing in for the two TUN devices."""

    def __init__(self) -> None:
        self.a_outer, self.a_inner = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        self.b_outer, self.b_inner = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        for sock in (self.a_outer, self.a_inner, self.b_outer, self.b_inner):
            sock.setblocking(False)

    def close(self) -> None:
        for sock in (self.a_outer, self.a_inner, self.b_outer, self.b_inner):
            sock.close()


@pytest.fixture
def wire() -> Iterator[Wire]:
    w = Wire()
    yield w
    w.close()


async def receive(sock: socket.socket, count: int, within: float = 5.0) -> list[bytes]:
    loop = asyncio.get_running_loop()
    out: list[bytes] = []
    async with asyncio.timeout(within):
        while len(out) < count:
            out.append(await loop.sock_recv(sock, 65536))
    return out


async def silent(sock: socket.socket, for_s: float = 0.2) -> bool:
    try:
        await receive(sock, 1, within=for_s)
    except TimeoutError:
        return True
    return False


def test_forwards_both_ways_in_order(wire: Wire) -> None:
    async def body() -> None:
        link = TunLink(wire.a_inner.fileno(), wire.b_inner.fileno())
        link.start(asyncio.get_running_loop())
        try:
            packets = [bytes([i]) * (i + 1) for i in range(100)]
            for packet in packets:
                wire.a_outer.send(packet)
            assert await receive(wire.b_outer, 100) == packets
            wire.b_outer.send(b"back")
            assert await receive(wire.a_outer, 1) == [b"back"]
            stats = link.statistics()
            assert stats["a_to_b"]["packets"] == 100
            assert stats["b_to_a"]["bytes"] == 4
        finally:
            link.close()

    run(body())


def test_delay_is_a_lower_bound_and_keeps_order(wire: Wire) -> None:
    async def body() -> None:
        link = TunLink(wire.a_inner.fileno(), wire.b_inner.fileno(), delay_ms=50)
        link.start(asyncio.get_running_loop())
        try:
            started = time.monotonic()
            for i in range(20):
                wire.a_outer.send(i.to_bytes(1, "big"))
            got = await receive(wire.b_outer, 20)
            assert time.monotonic() - started >= 0.050
            assert [p[0] for p in got] == list(range(20))
        finally:
            link.close()

    run(body())


def test_blackhole_and_loss_drop(wire: Wire) -> None:
    async def body() -> None:
        link = TunLink(wire.a_inner.fileno(), wire.b_inner.fileno(), rng=random.Random(1))
        link.start(asyncio.get_running_loop())
        try:
            link.set_blackhole(True)
            wire.a_outer.send(b"lost")
            wire.b_outer.send(b"lost too")
            assert await silent(wire.b_outer)
            assert await silent(wire.a_outer)
            assert link.statistics()["a_to_b"]["dropped_blackhole"] == 1
            link.set_blackhole(False)
            wire.a_outer.send(b"through")
            assert await receive(wire.b_outer, 1) == [b"through"]

            link.set_loss(100)
            for _ in range(10):
                wire.a_outer.send(b"x")
            assert await silent(wire.b_outer)
            assert link.statistics()["a_to_b"]["dropped_loss"] == 10
        finally:
            link.close()

    run(body())


def test_blackhole_drops_packets_already_delayed(wire: Wire) -> None:
    async def body() -> None:
        link = TunLink(wire.a_inner.fileno(), wire.b_inner.fileno(), delay_ms=200)
        link.start(asyncio.get_running_loop())
        try:
            wire.a_outer.send(b"in flight")
            await asyncio.sleep(0.05)
            link.set_blackhole(True)
            assert await silent(wire.b_outer, 0.4)
            assert link.statistics()["a_to_b"]["queued_packets"] == 0
        finally:
            link.close()

    run(body())
