"""Workers of one server (roam.workers): two servers in one process joined as
workers; the settings --workers refuses. The real processes are
tests/system/test_workers.py."""

from __future__ import annotations

import asyncio
import socket
import time
from pathlib import Path

import pytest

from roam.core.datagrams import DatagramState
from roam.core.preamble import (
    HANDSHAKE_LEN,
    HELLO,
    PROLOGUE,
    REPLY,
    Preamble,
    Status,
    Suite,
    TransportKind,
)
from roam.crypto.keys import public_key
from roam.crypto.noise import HandshakeState
from roam.errors import ConfigError
from roam.transport.server import Server
from roam.workers import (
    UNSUPPORTED,
    WorkerRole,
    _reserve,
    check_settings,
    supervise,
    worker_main,
)

from .transport.stack import Stack
from .transport.test_datagrams import UdpStack


def _hello(stack: Stack) -> bytes:
    """A NEW preamble and message 1 from the stack's client, stamped now."""
    raw = Preamble(TransportKind.NEW, Suite.AESGCM_SHA256).encode()
    hs = HandshakeState(Suite.AESGCM_SHA256.noise_name, initiator=True,
                        prologue=PROLOGUE + raw, s=stack.client_key,
                        rs=public_key(stack.server_key))
    msg1 = hs.write_message(HELLO.pack(time.time_ns()))
    return raw + HANDSHAKE_LEN.pack(len(msg1)) + msg1


async def _raw(port: int, data: bytes) -> tuple[Status, bytes]:
    """Write `data` on a new connection; the server's status and body."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(data)
    status, length = REPLY.unpack(await asyncio.wait_for(reader.readexactly(REPLY.size), 5))
    body = await reader.readexactly(length)
    writer.close()
    return Status(status), body


def test_a_resume_on_the_other_worker_reaches_the_session() -> None:
    async def main() -> None:
        a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        w0, w1 = WorkerRole(0, {1: a}), WorkerRole(1, {0: b})
        stack = Stack()
        make = stack.make_server
        servers = []

        def worker_server(port: int = 0) -> object:
            server = make(port)
            (w0 if not servers else w1).attach(server)
            servers.append(server)
            return server

        stack.make_server = worker_server  # type: ignore[method-assign,assignment]
        await stack.start()  # the session is worker 0's
        other = stack.make_server()
        try:
            _, other_port = await other.start()
            w0.started()
            w1.started()
            await stack.echo_check(50_000)
            sid = stack.client.session_id
            assert sid is not None
            assert sid in stack.server.sessions
            assert w1.mesh is not None
            assert w0.mesh is not None
            async with asyncio.timeout(5):
                while w1.mesh.routes.owner(sid) != 0:  # noqa: ASYNC110 (no event for it)
                    await asyncio.sleep(0.01)
            # The client's next connection lands on worker 1.
            stack.proxy.target_port = other_port
            reader, writer = await asyncio.open_connection("127.0.0.1", stack.forward_port)
            stack.proxy.cut()
            await stack.echo_check(200_000, conn=(reader, writer))
            writer.close()
            assert (w1.mesh.handed_out, w0.mesh.handed_in) == (1, 1)
            assert stack.server.sessions[sid].session.resumes == 1
            assert sid not in other.sessions
            # A session nobody holds: refused where it landed, as by one server.
            r, w = await asyncio.open_connection("127.0.0.1", other_port)
            w.write(Preamble(TransportKind.RESUME, Suite.AESGCM_SHA256,
                             bytes(range(16))).encode() + bytes(40))
            status, _ = REPLY.unpack(await asyncio.wait_for(r.readexactly(REPLY.size), 5))
            assert Status(status) is Status.UNKNOWN_SESSION
            w.close()
            assert w1.mesh.handed_out == 1
            assert w0.status()["handed_in"] == 1
            # A NEW message 1 that worker 0 took, replayed to worker 1: refused.
            hello = _hello(stack)
            assert (await _raw(stack.server_port, hello))[0] is Status.OK
            key = public_key(stack.client_key)
            async with asyncio.timeout(5):
                while other._last_hello.get(key) != stack.server._last_hello[key]:  # noqa: ASYNC110
                    await asyncio.sleep(0.01)
            status, reason = await _raw(other_port, hello)
            assert status is Status.HANDSHAKE_FAILED
            assert b"replay" in reason
        finally:
            await stack.close()
            await other.close()
            w0.close()
            w1.close()

    asyncio.run(main())


def test_udp_packets_on_the_other_worker_reach_the_session_and_are_answered() -> None:
    """Two workers on one port: the kernel gives each new UDP source port to
    either; packets that reach the worker without the session are passed to
    the one with it, which answers from the same port."""

    async def main() -> None:
        a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        w0, w1 = WorkerRole(0, {1: a}), WorkerRole(1, {0: b})

        class WorkerStack(UdpStack):
            def make_server(self, port: int = 0) -> Server:
                server = super().make_server(port)
                (w1 if port else w0).attach(server)
                return server

        s = await WorkerStack().start()  # TCP and UDP at worker 0: the only one yet
        other = s.make_server(s.server_port)
        try:
            await other.start()
            w0.started()
            w1.started()
            assert w0.mesh is not None
            assert w1.mesh is not None
            sid = s.client.session_id
            async with asyncio.timeout(10):
                while w1.mesh.routes.owner(sid or b"") != 0 or \
                        s.client_datagrams.path.state is not DatagramState.UP:  # noqa: ASYNC110
                    await asyncio.sleep(0.01)
            assert await s.ask(b"first", timeout=5) == b"first"  # opens the channel
            for attempt in range(64):
                # A new source port: a new hash, so either worker.
                await s.relay.new_source()
                msg = f"query {attempt}".encode()
                assert await s.ask(msg, timeout=5) == msg
                if w1.mesh.datagrams_out:
                    break
            assert w1.mesh.datagrams_out >= 1
            assert w0.mesh.datagrams_in == w1.mesh.datagrams_out
            for i in range(10):
                assert await s.ask(b"again %d" % i, timeout=5) == b"again %d" % i
            assert w1.mesh.datagrams_out >= 11  # the same source stays on worker 1
            assert s.server_datagrams.status()["state"] == "up"
            session = s.server.sessions[sid or b""].session
            assert session.datagrams_received <= 1  # not the stream: UDP
        finally:
            await s.close()
            await other.close()
            w0.close()
            w1.close()

    asyncio.run(main())


@pytest.mark.parametrize("name", sorted(UNSUPPORTED))
def test_what_workers_do_not_combine_with_is_refused(name: str) -> None:
    flag, _ = UNSUPPORTED[name]
    with pytest.raises(ConfigError, match=f"--workers with {flag}"):
        check_settings(2, {"listen": "127.0.0.1:0", name: ["x"]})


def test_workers_need_a_port_to_share() -> None:
    with pytest.raises(ConfigError, match="needs --listen"):
        check_settings(2, {"listen": None})
    with pytest.raises(ConfigError, match="at least 1"):
        check_settings(0, {"listen": "127.0.0.1:0"})
    check_settings(2, {"listen": "127.0.0.1:0", "uplinks": [], "paths": None})
    # The supervisor serves --metrics for the whole server.
    check_settings(2, {"listen": "127.0.0.1:0", "metrics": "127.0.0.1:0"})


def test_supervise_refuses_before_starting_anything(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="--uplink"):
        asyncio.run(supervise(2, {"listen": "127.0.0.1:0", "key": "k",
                                  "uplinks": ["127.0.0.1:1,key=x"]}))


def test_a_port_another_server_shares_already_is_refused() -> None:
    with socket.socket() as held:
        held.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        held.bind(("127.0.0.1", 0))
        held.listen()
        port = held.getsockname()[1]
        with pytest.raises(ConfigError, match="in use"):
            _reserve("127.0.0.1", port, udp=False)
    free = _reserve("127.0.0.1", 0, udp=True)
    assert free.getsockname()[1] != 0
    free.close()


def test_worker_main_wants_its_spec() -> None:
    assert worker_main([]) == 2
