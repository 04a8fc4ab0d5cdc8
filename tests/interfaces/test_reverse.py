"""Reverse forwards through a whole in-process stack: a program beside the
server reaches a service on the mobile unit, across transport resets."""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
from collections.abc import Awaitable, Callable

import pytest

from roam.connector.allow import AccessList
from roam.connector.connector import Connector
from roam.core.session import SessionConfig
from roam.crypto.keys import public_key
from roam.interfaces.forward import ForwardSpec
from roam.interfaces.reverse import ReverseForwards
from roam.transport.server import Server, ServerConfig
from tests.transport.stack import Stack


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class ReverseStack(Stack):
    listen_port = 0

    def make_server(self, port: int = 0) -> Server:
        connector = Connector(AccessList.parse([f"127.0.0.1:{self.echo_port}"]),
                              AccessList.parse([f"127.0.0.1:{self.listen_port}"]))
        return Server(ServerConfig("127.0.0.1", port, self.server_key,
                                   {public_key(self.client_key): "tester"}, connector,
                                   SessionConfig(detached_timeout=60)))


async def _mobile_echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    with contextlib.suppress(ConnectionError):
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    writer.close()


def _run(body: Callable[[ReverseStack, int, int], Awaitable[None]],
         remote: Callable[[int], str] = lambda port: f"127.0.0.1:{port}") -> None:
    async def main() -> None:
        service = await asyncio.start_server(_mobile_echo, "127.0.0.1", 0)
        local = service.sockets[0].getsockname()[1]
        stack = ReverseStack()
        stack.listen_port = _free_port()
        await stack.start()
        reverse = ReverseForwards([ForwardSpec.parse(f"{remote(stack.listen_port)}="
                                                     f"127.0.0.1:{local}")])
        stack.client.on_session = reverse.attach
        assert stack.client.driver is not None
        reverse.attach(stack.client.driver)
        try:
            await body(stack, stack.listen_port, local)
        finally:
            await stack.close()
            service.close()
    asyncio.run(main())


async def _connect(port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    async with asyncio.timeout(10):
        while True:
            try:
                return await asyncio.open_connection("127.0.0.1", port)
            except ConnectionRefusedError:  # the LISTEN is still on its way
                await asyncio.sleep(0.02)


def test_a_program_beside_the_server_reaches_a_service_on_the_mobile_unit() -> None:
    async def body(stack: ReverseStack, rport: int, _: int) -> None:
        reader, writer = await _connect(rport)
        data = os.urandom(3_000_000)
        writer.write(data)
        got = bytearray()
        cut = False
        async with asyncio.timeout(30):
            while len(got) < len(data):
                got += await reader.read(65536)
                if not cut and len(got) > 1_000_000:
                    stack.proxy.cut()  # a hard handover in the middle
                    cut = True
        assert bytes(got) == data
        assert stack.client.transports == 2
        writer.close()
    _run(body)


def test_listening_where_allow_listen_does_not_permit_is_refused(
        caplog: pytest.LogCaptureFixture) -> None:
    async def body(stack: ReverseStack, rport: int, _: int) -> None:
        async with asyncio.timeout(10):
            while "refused by the server" not in caplog.text:  # noqa: ASYNC110
                await asyncio.sleep(0.02)
        with pytest.raises(ConnectionRefusedError):
            await asyncio.open_connection("127.0.0.1", rport + 1)
        await stack.echo_check(100_000)  # the session carries on
    _run(body, remote=lambda port: f"127.0.0.1:{port + 1}")
    assert "not allowed by --allow-listen" in caplog.text


def test_the_client_refuses_opens_no_reverse_forward_names() -> None:
    async def body(stack: ReverseStack, rport: int, _: int) -> None:
        (driver,) = stack.server.sessions.values()
        cid = driver.session.open_channel("127.0.0.1", 22)  # not a reverse forward
        driver.schedule()
        async with asyncio.timeout(10):
            while cid in driver.session.channel_ids():  # noqa: ASYNC110
                await asyncio.sleep(0.02)
        await stack.echo_check(100_000)
    _run(body)


def test_the_client_refuses_an_open_whose_host_is_not_a_host(
        caplog: pytest.LogCaptureFixture) -> None:
    async def body(stack: ReverseStack, rport: int, _: int) -> None:
        (driver,) = stack.server.sessions.values()
        # The listen address of a real forward, with a NUL after it.
        cid = driver.session.open_channel("127.0.0.1\0.example", rport)
        driver.schedule()
        async with asyncio.timeout(10):
            while cid in driver.session.channel_ids():  # noqa: ASYNC110
                await asyncio.sleep(0.02)
        await stack.echo_check(100_000)
    _run(body)
    assert "is not a valid host name" in caplog.text
    assert "U+0000" in caplog.text
