"""Fuzz the DNS server's query path, over UDP and over TCP: any bytes from a
client get a reply or are dropped, and nothing escapes to the event loop."""

from __future__ import annotations

import asyncio
import builtins
import ipaddress
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from unittest import mock

import dns.message
import pytest
from hypothesis import example, given

from roam.interfaces import dnsproxy
from roam.interfaces.dnsintercept import AddressPool, DnsInterceptor, NamePatterns, TcpDnsFramer
from roam.interfaces.dnsproxy import DnsProxy, default_upstream
from tests.fuzz.conftest import fuzz_settings
from tests.fuzz.fakes import FakeWriter
from tests.fuzz.mutate import apply_mutations, cut
from tests.fuzz.provider import Provider, built
from tests.fuzz.test_fuzz_dnsintercept import build_query

# What the stand-in upstream resolver does with a query it is given.
ANSWERS, FAILS, TIMES_OUT, CUTS_SHORT = range(4)


def make_proxy(upstream: int) -> DnsProxy:
    pool = AddressPool("127.9.0.0/28")
    # No --dns-ports: answers hand out pool addresses without listening on them.
    proxy = DnsProxy("127.0.0.1", 0, DnsInterceptor(NamePatterns(["*.corp.example"]), pool),
                     pool, [], ("192.0.2.1", 53), lambda: None)

    async def resolver(query: bytes) -> bytes:
        if upstream == FAILS:
            raise ConnectionRefusedError(111, "Connection refused")
        if upstream == TIMES_OUT:
            raise TimeoutError
        if upstream == CUTS_SHORT:
            raise asyncio.IncompleteReadError(b"", 2)
        return query[:2] + b"\x81\x80" + query[4:]  # the query back, as a response

    # The resolver is swapped on the instance: no packet leaves the test.
    proxy_any: Any = proxy
    proxy_any._upstream_udp = resolver
    proxy_any._upstream_tcp = resolver
    return proxy


@pytest.fixture(scope="module")
def loop() -> Iterator[asyncio.AbstractEventLoop]:
    # One loop for every input: a new one per input would cost more than the input.
    loop = asyncio.new_event_loop()
    yield loop
    loop.close()


@pytest.fixture(autouse=True, scope="module")
def _quiet() -> Iterator[None]:
    # Each bad query logs a line; pytest would keep every one of them in
    # memory over a fuzz run's hundred thousand inputs.
    logger = logging.getLogger("roam.dns")
    level = logger.level
    logger.setLevel(logging.CRITICAL)
    yield
    logger.setLevel(level)


def query(p: Provider) -> bytes:
    match p.below(3):
        case 0:
            return p.blob(120)
        case 1:
            return build_query(p)
        case _:
            return apply_mutations(build_query(p), p.blob(16))


@fuzz_settings(0.5)
@given(built(lambda p: (p.below(4), query(p))))
def test_udp_queries_get_a_reply_or_are_dropped(loop: asyncio.AbstractEventLoop,
                                                case: tuple[int, bytes]) -> None:
    upstream, wire = case
    reply = loop.run_until_complete(make_proxy(upstream).answer(wire, tcp=False))
    if reply is not None:
        assert reply[:2] == wire[:2]


def build_stream(p: Provider) -> tuple[int, list[bytes]]:
    """(upstream behaviour, a TCP client's bytes in the pieces reads give)."""
    if p.flag():
        stream = p.blob(200)
    else:
        stream = b"".join(TcpDnsFramer.frame(query(p) or b"q") for _ in range(1 + p.below(3)))
        if p.flag():
            stream = apply_mutations(stream, p.blob(8))
    return p.below(4), cut(stream, p.blob(6))


@fuzz_settings(0.5)
@given(built(build_stream, max_size=800))
def test_tcp_clients_get_framed_replies_or_are_closed(loop: asyncio.AbstractEventLoop,
                                                      case: tuple[int, list[bytes]]) -> None:
    upstream, pieces = case
    reader = asyncio.StreamReader(loop=loop)
    for piece in pieces:
        reader.feed_data(piece)
    reader.feed_eof()
    writer = FakeWriter()
    proxy_any: Any = make_proxy(upstream)
    loop.run_until_complete(proxy_any._tcp_client(reader, writer))
    assert writer.closed
    # Whatever went back is whole, framed DNS messages.
    replies = TcpDnsFramer().feed(bytes(writer.data))
    assert b"".join(TcpDnsFramer.frame(r) for r in replies) == bytes(writer.data)
    if upstream == ANSWERS:
        for reply in replies:
            dns.message.from_wire(reply, question_only=True)


@pytest.fixture(scope="module")
def resolv_conf(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A file standing in for /etc/resolv.conf while the module runs."""
    path = tmp_path_factory.mktemp("resolv") / "resolv.conf"
    real_open = builtins.open

    def fake_open(file: Any, *args: Any, **kwargs: Any) -> Any:
        assert file == "/etc/resolv.conf"
        return real_open(path, *args, **kwargs)

    # Only dnsproxy's own `open` is replaced (a module global shadows the
    # builtin): Hypothesis and pytest keep the real one.
    with mock.patch.object(dnsproxy, "open", fake_open, create=True):
        yield path


def build_resolv_conf(p: Provider) -> bytes:
    lines = []
    for _ in range(p.below(5)):
        match p.below(4):
            case 0:
                lines.append(b"nameserver " + p.choice([b"10.0.0.1", b"::1", b"fe80::1%eth0",
                                                        b"", b"\xff", p.blob(20)]))
            case 1:
                lines.append(b"# " + p.blob(30))
            case 2:
                lines.append(p.choice([b"search corp.example", b"options ndots:5", b"domain x"]))
            case _:
                lines.append(p.blob(40))
    return p.choice([b"\n", b"\r\n", b"\x00"]).join(lines)


@fuzz_settings(0.2)
@given(built(build_resolv_conf))
# A comment in Latin-1 before the nameserver line: read as UTF-8, it once
# stopped the client at startup with UnicodeDecodeError.
@example(b"# caf\xe9\nnameserver 10.0.0.1\n")
def test_resolv_conf_gives_an_upstream(resolv_conf: Path, data: bytes) -> None:
    resolv_conf.write_bytes(data)
    host, port = default_upstream()
    assert port == 53
    assert host
    # Lines as text mode reads them: universal newlines only, not splitlines().
    text = data.decode("utf-8", "replace").replace("\r\n", "\n").replace("\r", "\n")
    for line in text.split("\n"):
        parts = line.split()
        if len(parts) >= 2 and parts[0] == "nameserver":
            assert host == parts[1]
            break
    else:
        assert ipaddress.ip_address(host).is_loopback
