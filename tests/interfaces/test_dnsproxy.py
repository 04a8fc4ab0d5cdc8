"""DNS names to local addresses through a whole in-process stack, with real
programs: dig asks, dnsmasq is the upstream, curl connects to the pool address."""

from __future__ import annotations

import asyncio
import hashlib
import shutil
import socket
import subprocess
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path

import pytest

from roam.interfaces.dnsintercept import AddressPool, DnsInterceptor, NamePatterns
from roam.interfaces.dnsproxy import DnsProxy
from tests.conftest import require

from .conftest import FILE_SIZE, SocksStack, curl, fetch_across_resets

DNSMASQ = Path("/usr/sbin/dnsmasq")


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@pytest.fixture
def upstream(tmp_path: Path) -> Iterator[int]:
    """dnsmasq on loopback: answers upstream.test with 198.18.9.9."""
    require(DNSMASQ.exists(), "dnsmasq is missing (scripts/setup-env installs dnsmasq-base)")
    port = _free_port()
    proc = subprocess.Popen([str(DNSMASQ), "--keep-in-foreground", "--no-resolv", "--no-hosts",
                             "--listen-address=127.0.0.1", "--bind-interfaces", f"--port={port}",
                             "--user=root",
                             "--address=/upstream.test/198.18.9.9", "--log-facility=-"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        yield port
    finally:
        proc.terminate()
        proc.wait(5)


def _run(body: Callable[[SocksStack, int], Awaitable[None]], http_port: int,
         upstream: int) -> None:
    async def main() -> None:
        stack = SocksStack()
        stack.http_port = http_port
        await stack.start()
        pool = AddressPool("127.77.0.0/24")
        proxy = DnsProxy("127.0.0.1", 0, DnsInterceptor(NamePatterns(["localhost",
                                                                       "*.intercept.test"]),
                                                          pool),
                         pool, [http_port], ("127.0.0.1", upstream), lambda: stack.client.driver)
        _, port = await proxy.start()
        try:
            await body(stack, port)
        finally:
            proxy.close()
            await stack.close()
    asyncio.run(main())


async def _dig(port: int, name: str, *extra: str) -> str:
    proc = await asyncio.create_subprocess_exec(
        "dig", "@127.0.0.1", "-p", str(port), name, "+short", "+time=2", "+tries=2", *extra,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await proc.communicate()
    assert proc.returncode == 0, err
    return out.decode().strip()


def test_dig_gets_a_pool_address_and_curl_reaches_the_named_service(
        site: tuple[int, str], upstream: int) -> None:
    require(shutil.which("dig") is not None, "dig is missing (bind9-dnsutils)")
    require(shutil.which("curl") is not None, "curl is missing")
    http_port, digest = site

    async def body(stack: SocksStack, port: int) -> None:
        address = await _dig(port, "localhost")
        assert address.startswith("127.77.0.")
        assert await _dig(port, "LOCALHOST.") == address  # the same address while in use
        assert await _dig(port, "localhost", "+tcp") == address
        assert await _dig(port, "upstream.test") == "198.18.9.9"  # not intercepted
        assert await _dig(port, "upstream.test", "+tcp") == "198.18.9.9"
        code, out, err = await curl(f"http://{address}:{http_port}/file.bin")
        assert code == 0, err
        assert len(out) == FILE_SIZE
        assert hashlib.sha256(out).hexdigest() == digest
        other = await _dig(port, "svc.intercept.test")
        assert other not in ("", address)
    _run(body, http_port, upstream)


def test_garbage_queries_do_not_stop_the_dns_server(site: tuple[int, str],
                                                     upstream: int) -> None:
    require(shutil.which("dig") is not None, "dig is missing (bind9-dnsutils)")
    http_port, _ = site

    async def body(stack: SocksStack, port: int) -> None:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            for junk in (b"", b"\x00", b"\xff" * 12, bytes(range(200))):
                s.sendto(junk, ("127.0.0.1", port))
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"\x00\x00garbage")  # a zero-length TCP message: the server hangs up
        assert await asyncio.wait_for(reader.read(100), 5) == b""
        await writer.drain()
        writer.close()
        assert (await _dig(port, "localhost")).startswith("127.77.0.")
    _run(body, http_port, upstream)


def test_a_transport_reset_in_the_middle_of_a_fetch_breaks_nothing(
        site: tuple[int, str], upstream: int) -> None:
    require(shutil.which("dig") is not None, "dig is missing (bind9-dnsutils)")
    require(shutil.which("curl") is not None, "curl is missing")
    http_port, digest = site

    async def body(stack: SocksStack, port: int) -> None:
        address = await _dig(port, "localhost")
        fetch = asyncio.create_task(curl("--limit-rate", "2M",
                                         f"http://{address}:{http_port}/file.bin"))
        out, cuts = await fetch_across_resets(stack, fetch)
        assert hashlib.sha256(out).hexdigest() == digest
        assert cuts >= 1
        assert stack.client.transports == 1 + cuts
    _run(body, http_port, upstream)
