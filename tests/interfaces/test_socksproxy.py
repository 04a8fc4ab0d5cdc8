"""SOCKS5 through a whole in-process stack, with real clients: curl for
CONNECT (names resolved on the server side), PySocks for UDP ASSOCIATE."""

from __future__ import annotations

import asyncio
import hashlib
import shutil
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest
import socks

from roam.errors import ConfigError
from roam.interfaces.socks5 import Reply
from roam.interfaces.socksproxy import SocksProxy, load_credentials
from tests.conftest import require

from .conftest import FILE_SIZE, SocksStack, UdpEcho, curl, fetch_across_resets


def _run(body: Callable[[SocksStack, int], Awaitable[None]], http_port: int = 0,
         credentials: tuple[str, str] | None = None) -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        echo, _ = await loop.create_datagram_endpoint(UdpEcho, local_addr=("127.0.0.1", 0))
        stack = SocksStack()
        stack.http_port = http_port
        stack.udp_port = echo.get_extra_info("sockname")[1]
        await stack.start()
        proxy = SocksProxy("127.0.0.1", 0, lambda: stack.client.driver, credentials)
        _, port = await proxy.start()
        try:
            await body(stack, port)
        finally:
            proxy.close()
            await stack.close()
            echo.close()
    asyncio.run(main())


def _need_curl() -> None:
    require(shutil.which("curl") is not None, "curl is missing (scripts/setup-env installs it)")


def test_curl_fetches_a_file_by_a_name_the_server_resolves(site: tuple[int, str]) -> None:
    _need_curl()
    http_port, digest = site

    async def body(stack: SocksStack, port: int) -> None:
        # "localhost" is resolved by the server side (--socks5-hostname).
        code, out, err = await curl("--socks5-hostname", f"127.0.0.1:{port}",
                                     f"http://localhost:{http_port}/file.bin")
        assert code == 0, err
        assert hashlib.sha256(out).hexdigest() == digest
        stack.proxy.cut()  # a transport reset in the middle of nothing: a new fetch works
        code, out, err = await curl("--socks5", f"127.0.0.1:{port}",
                                     f"http://127.0.0.1:{http_port}/file.bin")
        assert code == 0, err
        assert len(out) == FILE_SIZE
    _run(body, http_port)


def test_username_and_password(site: tuple[int, str], tmp_path: Path) -> None:
    _need_curl()
    http_port, digest = site

    async def body(stack: SocksStack, port: int) -> None:
        url = f"http://127.0.0.1:{http_port}/file.bin"
        code, _, err = await curl("--socks5", f"alice:wrong@127.0.0.1:{port}", url)
        assert code != 0
        code, out, err = await curl("--socks5", f"alice:s3cret@127.0.0.1:{port}", url)
        assert code == 0, err
        assert hashlib.sha256(out).hexdigest() == digest
    _run(body, http_port, ("alice", "s3cret"))


def test_a_destination_the_server_refuses_gets_a_socks_error(site: tuple[int, str]) -> None:
    _need_curl()
    http_port, _ = site

    async def body(stack: SocksStack, port: int) -> None:
        code, _, err = await curl("--socks5", f"127.0.0.1:{port}", "http://127.0.0.1:9/")
        assert code == 97, err  # curl: "proxy handshake error"
        assert "(2)" in err, err  # REP 2: connection not allowed by ruleset
        code, _, err = await curl("--socks5", f"127.0.0.1:{port}",
                                   f"http://127.0.0.1:{http_port}/file.bin")
        assert code == 0, err
    _run(body, http_port)


def test_udp_associate_with_an_independent_client() -> None:
    async def body(stack: SocksStack, port: int) -> None:
        def exchange() -> list[bytes]:
            s = socks.socksocket(socks.socket.AF_INET, socks.socket.SOCK_DGRAM)
            s.set_proxy(socks.SOCKS5, "127.0.0.1", port)
            s.settimeout(5)
            try:
                answers = []
                for i in range(5):
                    s.sendto(f"ping {i}".encode(), ("127.0.0.1", stack.udp_port))
                    answers.append(s.recvfrom(2048)[0])
                return answers
            finally:
                s.close()
        answers = await asyncio.to_thread(exchange)
        assert answers == [f"echo:ping {i}".encode() for i in range(5)]
    _run(body)


def test_garbage_on_the_socks_port_is_refused_and_the_proxy_serves_on(
        site: tuple[int, str]) -> None:
    _need_curl()
    http_port, _ = site

    async def body(stack: SocksStack, port: int) -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"\x04\x01\x00\x50" + bytes(10))  # SOCKS4
        assert await asyncio.wait_for(reader.read(100), 5) == b""
        writer.close()
        code, _, err = await curl("--socks5", f"127.0.0.1:{port}",
                                   f"http://127.0.0.1:{http_port}/file.bin")
        assert code == 0, err
    _run(body, http_port)


def test_socks_auth_file_errors_name_the_problem(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="expected USER:PASSFILE"):
        load_credentials("alice")
    with pytest.raises(ConfigError, match="does not exist"):
        load_credentials(f"alice:{tmp_path / 'missing'}")
    (tmp_path / "empty").write_text("\n")
    with pytest.raises(ConfigError, match="is empty"):
        load_credentials(f"alice:{tmp_path / 'empty'}")
    (tmp_path / "pw").write_text("s3cret\n")
    assert load_credentials(f"alice:{tmp_path / 'pw'}") == ("alice", "s3cret")


def test_a_transport_reset_in_the_middle_of_a_fetch_breaks_nothing(
        site: tuple[int, str]) -> None:
    _need_curl()
    http_port, digest = site

    async def body(stack: SocksStack, port: int) -> None:
        fetch = asyncio.create_task(curl("--socks5-hostname",
                                         f"127.0.0.1:{port}",
                                         f"http://localhost:{http_port}/file.bin"))
        out, cuts = await fetch_across_resets(stack, fetch)
        assert hashlib.sha256(out).hexdigest() == digest
        assert cuts >= 1
        assert stack.client.transports == 1 + cuts
    _run(body, http_port)


# Names that are not DNS names: refused at the proxy, and nothing leaks


async def _socks_connect(port: int, name: bytes, dest_port: int) -> tuple[bytes, bytes]:
    """A raw SOCKS5 CONNECT by name: the reply, and what follows it before EOF."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(b"\x05\x01\x00")
        assert await asyncio.wait_for(reader.readexactly(2), 5) == b"\x05\x00"
        writer.write(bytes([5, 1, 0, 3, len(name)]) + name + dest_port.to_bytes(2, "big"))
        reply = await asyncio.wait_for(reader.readexactly(10), 5)
        if reply[1] != Reply.SUCCEEDED:
            return reply, await asyncio.wait_for(reader.read(100), 5)
        writer.write(b"ping")
        return reply, await asyncio.wait_for(reader.readexactly(4), 5)
    finally:
        writer.close()


async def _no_channels(stack: SocksStack) -> None:
    """Every channel is gone on both ends, or this fails after 5 s."""
    client = stack.client.driver
    assert client is not None
    (server,) = stack.server.sessions.values()
    async with asyncio.timeout(5):
        while (client.session.channel_ids() or client.apps  # noqa: ASYNC110
               or server.session.channel_ids() or server.apps):
            await asyncio.sleep(0.01)


LABEL_64 = b"a" * 64 + b".corp.example"
NAME_255 = b".".join([b"a" * 63, b"b" * 63, b"c" * 63, b"d" * 50, b"corp", b"example"])


@pytest.mark.parametrize("name", [
    LABEL_64, NAME_255, b"a" * 255, b"localhost\x00.corp.example", b"exa mple.com",
], ids=["label-64", "name-255", "label-255", "nul", "space"])
def test_a_name_that_is_not_a_dns_name_gets_a_socks_error_and_leaks_nothing(
        name: bytes) -> None:
    async def body(stack: SocksStack, port: int) -> None:
        # The server allows the echo service by address: any name for that
        # port would be looked up, so only the proxy's check stands in the way.
        reply, rest = await _socks_connect(port, name, stack.echo_port)
        assert reply == bytes([5, Reply.HOST_UNREACHABLE, 0, 1, 0, 0, 0, 0, 0, 0])
        assert rest == b""  # and the proxy closed the connection
        await _no_channels(stack)
        # The proxy serves on: a real name for the same destination opens.
        reply, echoed = await _socks_connect(port, b"LocalHost.", stack.echo_port)
        assert reply[1] == Reply.SUCCEEDED
        assert echoed == b"ping"
        await _no_channels(stack)
    _run(body)
