"""Shared by the interface tests: a real HTTP server beside the server, and a
stack whose server allows it."""

from __future__ import annotations

import asyncio
import functools
import hashlib
import http.server
import os
import threading
from collections.abc import Iterator
from typing import Any

import pytest

from roam.connector.allow import AccessList
from roam.connector.connector import Connector
from roam.core.session import SessionConfig
from roam.crypto.keys import public_key
from roam.transport.server import Server, ServerConfig
from tests.transport.stack import Stack

FILE_SIZE = 8 * 1024 * 1024


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[int, str]]:
    """A real HTTP server beside the server, serving one file; (port, its sha256)."""
    root = tmp_path_factory.mktemp("site")
    data = os.urandom(FILE_SIZE)
    (root / "file.bin").write_bytes(data)
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(root))
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield httpd.server_address[1], hashlib.sha256(data).hexdigest()
    httpd.shutdown()
    httpd.server_close()


class UdpEcho(asyncio.DatagramProtocol):
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport: Any = transport

    def datagram_received(self, data: bytes, addr: Any) -> None:
        self.transport.sendto(b"echo:" + data, addr)


class SocksStack(Stack):
    http_port = 0
    udp_port = 0

    def make_server(self, port: int = 0) -> Server:
        rules = [f"127.0.0.1:{self.echo_port}"]
        if self.udp_port:
            rules.append(f"127.0.0.1:{self.udp_port}")
        if self.http_port:
            rules.append(f"*:{self.http_port}")
        access = AccessList.parse(rules)
        return Server(ServerConfig("127.0.0.1", port, self.server_key,
                                   {public_key(self.client_key): "tester"}, Connector(access),
                                   SessionConfig(detached_timeout=60)))

    def received(self) -> int:
        """Channel bytes the client has received so far, on any driver."""
        driver = self.client.driver
        return driver.session.bytes_received if driver is not None else 0


async def curl(*args: str) -> tuple[int, bytes, str]:
    proc = await asyncio.create_subprocess_exec(
        "curl", "--silent", "--show-error", "--max-time", "60", *args,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await proc.communicate()
    assert proc.returncode is not None
    return proc.returncode, out, err.decode(errors="replace")




async def fetch_across_resets(stack: SocksStack,
                              fetch: asyncio.Task[tuple[int, bytes, str]]) -> tuple[bytes, int]:
    """Cut the transport after 1 MiB and after 4 MiB of a fetch have arrived;
    the fetched bytes and how many cuts fell while it ran. Fails if curl did."""
    cuts = 0
    for mark in (1 << 20, 4 << 20):
        while not fetch.done() and stack.received() < mark:  # noqa: ASYNC110
            await asyncio.sleep(0.001)
        if not fetch.done():
            stack.proxy.cut()
            cuts += 1
    code, out, err = await fetch
    assert code == 0, err
    return out, cuts
