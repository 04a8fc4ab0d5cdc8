"""A whole roam stack in one event loop: echo service, server, proxy, client, forward."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from roam.connector.allow import AccessList
from roam.connector.connector import Connector
from roam.core.compress import AUTO, CompressionMode
from roam.core.preamble import Suite
from roam.core.session import SessionConfig
from roam.crypto.keys import generate_private_key, public_key
from roam.interfaces.forward import Forward, ForwardSpec
from roam.transport.client import Client, ClientConfig
from roam.transport.server import Server, ServerConfig

from .proxy import Proxy


async def _echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    with contextlib.suppress(ConnectionError):
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    writer.close()


def _counting(conns: set[asyncio.StreamWriter]) -> Callable[
        [asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]:
    """The echo service, keeping the connections it holds in `conns`."""
    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        conns.add(writer)
        try:
            await _echo(reader, writer)
        finally:
            conns.discard(writer)
    return serve


@dataclass
class Stack:
    server_key: bytes = field(default_factory=generate_private_key)
    client_key: bytes = field(default_factory=generate_private_key)
    suite: Suite = Suite.AESGCM_SHA256
    udp: bool = True
    compression: CompressionMode = AUTO
    server_compression: CompressionMode = AUTO
    # SessionConfig fields for both sides (auto_compress_min_rtt=0 makes
    # loopback count as a slow path for --compress auto).
    session: dict[str, float] = field(default_factory=dict)

    async def start(self) -> Stack:
        # The connections the echo service holds: the server's side of
        # every application connection.
        self.echo_conns: set[asyncio.StreamWriter] = set()
        self.echo = await asyncio.start_server(_counting(self.echo_conns), "127.0.0.1", 0)
        self.echo_port = self.echo.sockets[0].getsockname()[1]
        self.server = self.make_server()
        _, self.server_port = await self.server.start()
        self.proxy = Proxy(self.server_port)
        self.proxy_port = await self.proxy.start()
        self.client = Client(ClientConfig("127.0.0.1", self.proxy_port,
                                          public_key(self.server_key), self.client_key,
                                          SessionConfig(**self.session), self.suite,
                                          self.udp,
                                          compression=self.compression))
        await self.client.handshake()
        self.forward = Forward(ForwardSpec("127.0.0.1", 0, "127.0.0.1", self.echo_port),
                               lambda: self.client.driver)
        _, self.forward_port = await self.forward.start()
        return self

    def make_server(self, port: int = 0) -> Server:
        access = AccessList.parse([f"127.0.0.1:{self.echo_port}"])
        return Server(ServerConfig("127.0.0.1", port, self.server_key,
                                   {public_key(self.client_key): "tester"}, Connector(access),
                                   SessionConfig(detached_timeout=60, **self.session),
                                   compression=self.server_compression))

    async def close(self) -> None:
        self.client.stop()
        self.forward.close()
        await self.server.close()
        await self.proxy.close()
        self.echo.close()

    async def echo_check(self, n: int, *, during: asyncio.Future[None] | None = None,
                         conn: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None = None,
                         timeout: float = 30.0) -> None:
        """Send n random bytes through the forward and expect them back exactly."""
        reader, writer = conn or await asyncio.open_connection("127.0.0.1", self.forward_port)
        data = os.urandom(n)

        async def send() -> None:
            for i in range(0, n, 65536):
                writer.write(data[i:i + 65536])
                await writer.drain()

        sender = asyncio.create_task(send())
        got = bytearray()
        async with asyncio.timeout(timeout):
            while len(got) < n:
                chunk = await reader.read(65536)
                if not chunk:
                    raise AssertionError(f"EOF after {len(got)} of {n} bytes")
                got += chunk
        await sender
        if conn is None:
            writer.close()
        if bytes(got) != data:
            raise AssertionError("echo differs from what was sent")


def quiet() -> None:
    logging.getLogger("roam").setLevel(logging.INFO)
