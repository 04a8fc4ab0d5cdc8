"""The server's connector: which address it dials for a requested destination,
and how it refuses a destination that is not a valid host, through a real
client/server pair on loopback."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import pytest

from roam.connector.allow import AccessList
from roam.connector.connector import Connector
from roam.core.frames import ChannelKind
from roam.core.session import SessionConfig
from roam.crypto.keys import public_key
from roam.errors import CloseCode
from roam.names import Host
from roam.transport.driver import SessionDriver
from roam.transport.server import Server, ServerConfig
from tests.transport.stack import Stack


def _resolve(rules: list[str], host: str, port: int) -> str | None:
    connector = Connector(AccessList.parse(rules))
    return asyncio.run(connector._resolve_allowed(Host.parse(host), port))


def test_name_rule_admits_the_name_and_dials_its_address() -> None:
    assert _resolve(["localhost:80"], "localhost", 80) in {"127.0.0.1", "::1"}


def test_network_rule_checks_the_resolved_address() -> None:
    assert _resolve(["127.0.0.0/8:*"], "localhost", 22) == "127.0.0.1"
    assert _resolve(["10.0.0.0/8:*"], "localhost", 22) is None


def test_wrong_port_is_refused() -> None:
    assert _resolve(["127.0.0.1:80"], "127.0.0.1", 81) is None


def test_name_no_rule_could_admit_is_not_looked_up() -> None:
    # .invalid never resolves (RFC 6761): a lookup would raise, so None means none was made.
    assert _resolve(["intranet.example:80"], "secret.invalid", 80) is None
    assert _resolve([], "secret.invalid", 80) is None


# Through a real session: the client opens channels by hand.


@dataclass
class Target:
    """A real listener on 127.0.0.1 that counts the connections it gets."""

    server: asyncio.Server
    port: int
    accepted: list[object] = field(default_factory=list)

    @classmethod
    async def start(cls) -> Target:
        accepted: list[object] = []

        def on_connect(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            accepted.append(writer.get_extra_info("peername"))
            writer.close()

        server = await asyncio.start_server(on_connect, "127.0.0.1", 0)
        return cls(server, server.sockets[0].getsockname()[1], accepted)


class Answer:
    """The client's end of a channel opened by hand: how the server answered it."""

    def __init__(self, cid: int) -> None:
        self.cid: int | None = cid
        self.result: asyncio.Future[tuple[CloseCode | None, str]] = (
            asyncio.get_running_loop().create_future())

    def opened(self) -> None:
        if not self.result.done():
            self.result.set_result((None, "opened"))

    def open_failed(self, code: CloseCode, reason: str) -> None:
        if not self.result.done():
            self.result.set_result((code, reason))

    def deliver(self, data: bytes | memoryview) -> None:
        pass

    def end(self) -> None:
        pass

    def finish(self) -> None:
        pass

    def abort(self) -> None:
        pass


class RulesStack(Stack):
    rules: list[str]

    def make_server(self, port: int = 0) -> Server:
        return Server(ServerConfig("127.0.0.1", port, self.server_key,
                                   {public_key(self.client_key): "tester"},
                                   Connector(AccessList.parse(self.rules)),
                                   SessionConfig(detached_timeout=60)))

    @property
    def connector(self) -> Connector:
        return self.server.config.connector

    def server_driver(self) -> SessionDriver:
        (driver,) = self.server.sessions.values()
        return driver

    def client_driver(self) -> SessionDriver:
        driver = self.client.driver
        assert driver is not None
        return driver

    def open(self, host: str, port: int,
             kind: ChannelKind = ChannelKind.STREAM) -> Answer:
        driver = self.client_driver()
        answer = Answer(driver.session.open_channel(host, port, kind))
        driver.add_app(answer)
        driver.schedule()
        return answer

    async def channels_gone(self) -> None:
        """Both ends forget every channel (no leak), or this fails after 5 s."""
        async with asyncio.timeout(5):
            while (self.client_driver().session.channel_ids()  # noqa: ASYNC110
                   or self.server_driver().session.channel_ids()
                   or self.client_driver().apps or self.server_driver().apps):
                await asyncio.sleep(0.01)


def _run(rules: Callable[[int], list[str]],
         body: Callable[[RulesStack, Target], Awaitable[None]]) -> None:
    async def main() -> None:
        target = await Target.start()
        stack = RulesStack(udp=False)
        stack.rules = rules(target.port)
        await stack.start()
        try:
            await body(stack, target)
        finally:
            await stack.close()
            target.server.close()
    asyncio.run(main())


def test_a_nul_in_a_name_never_reaches_the_resolver() -> None:
    # Matched as text, 'localhost\0.corp.example' ends in '.corp.example';
    # resolved as a C string it is 'localhost'. It must be refused before either.
    async def body(stack: RulesStack, target: Target) -> None:
        answer = stack.open("localhost\0.corp.example", target.port)
        code, reason = await asyncio.wait_for(answer.result, 5)
        assert code is CloseCode.UNREACHABLE, reason
        assert "U+0000" in reason
        await stack.channels_gone()
        await asyncio.sleep(0.2)  # a connection, had one been made, would have landed
        assert target.accepted == []
        # The rule itself admits a real name below it.
        assert stack.connector.access.allows_name(Host.parse("DB.Corp.Example."), target.port)

    _run(lambda port: [f"*.corp.example:{port}"], body)


def test_a_nul_in_a_datagram_or_listen_channel_is_refused_too() -> None:
    async def body(stack: RulesStack, target: Target) -> None:
        for kind in (ChannelKind.DATAGRAM, ChannelKind.LISTEN):
            answer = stack.open("localhost\0.corp.example", target.port, kind)
            code, reason = await asyncio.wait_for(answer.result, 5)
            assert code is CloseCode.UNREACHABLE, (kind, reason)
            assert "U+0000" in reason
        await stack.channels_gone()

    _run(lambda port: [f"*.corp.example:{port}"], body)


LABEL_64 = "a" * 64 + ".corp.example"
NAME_255 = ".".join(["a" * 63, "b" * 63, "c" * 63, "d" * 50, "corp", "example"])
LABEL_255 = "a" * 255


@pytest.mark.parametrize(("host", "problem"), [
    (LABEL_64, "64 octets"),
    (NAME_255, "255 octets"),
    (LABEL_255, "255 octets"),
], ids=["label-64", "name-255", "label-255"])
def test_an_overlong_name_is_refused_with_a_reason_and_the_channel_closes(
        host: str, problem: str) -> None:
    assert len(NAME_255) == 255

    async def body(stack: RulesStack, target: Target) -> None:
        answer = stack.open(host, target.port)
        code, reason = await asyncio.wait_for(answer.result, 5)
        assert code is CloseCode.UNREACHABLE, reason
        assert problem in reason
        await stack.channels_gone()
        assert target.accepted == []
        assert not stack.connector.opening
        # The session serves on: a good destination still opens.
        code, _ = await asyncio.wait_for(stack.open("127.0.0.1", target.port).result, 5)
        assert code is None

    # Both a name rule and an address rule for the port: every name is looked up.
    _run(lambda port: [f"*.corp.example:{port}", f"127.0.0.1:{port}"], body)


def test_opens_in_flight_are_tracked_and_cancelled_when_the_session_ends() -> None:
    async def body(stack: RulesStack, target: Target) -> None:
        # A listener whose accept queue is full: the kernel drops further SYNs,
        # so the server's connect hangs until it is cancelled.
        with socket.socket() as full:
            full.bind(("127.0.0.1", 0))
            full.listen(0)
            port = full.getsockname()[1]
            with socket.create_connection(("127.0.0.1", port)):
                stack.rules.append(f"127.0.0.1:{port}")
                stack.connector.access = AccessList.parse(stack.rules)
                answer = stack.open("127.0.0.1", port)
                async with asyncio.timeout(5):
                    while not stack.connector.opening:  # noqa: ASYNC110
                        await asyncio.sleep(0.01)
                (task,) = stack.connector.opening
                assert task.get_name().endswith(f"-open-{answer.cid}")
                stack.server_driver().close(reason="test")
                async with asyncio.timeout(5):
                    while stack.connector.opening:  # noqa: ASYNC110
                        await asyncio.sleep(0.01)
                assert task.cancelled()

    _run(lambda port: [f"127.0.0.1:{port}"], body)
