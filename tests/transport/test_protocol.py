"""The transport protocol's handshake reads and its switch to pushed records."""

from __future__ import annotations

import asyncio

import pytest

from roam.errors import TransportError
from roam.transport.protocol import TransportProtocol


async def _pair() -> tuple[TransportProtocol, asyncio.StreamWriter, asyncio.Server]:
    accepted: asyncio.Future[asyncio.StreamWriter] = asyncio.get_running_loop().create_future()

    async def on_client(_: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        accepted.set_result(writer)

    server = await asyncio.start_server(on_client, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    _, proto = await asyncio.get_running_loop().create_connection(
        TransportProtocol, "127.0.0.1", port)
    return proto, await accepted, server


def test_read_exactly_across_segments_then_push() -> None:
    async def main() -> list[bytes]:
        proto, peer, server = await _pair()
        peer.write(b"abc")
        await asyncio.sleep(0.01)
        peer.write(b"defgh")
        assert await proto.read_exactly(5, 5) == b"abcde"
        got: list[bytes] = []
        done = asyncio.Event()
        proto.start_push(lambda d: (got.append(d), done.set()), lambda exc: None, lambda: None)
        assert got == [b"fgh"]  # what was read ahead goes first
        done.clear()
        peer.write(b"more")
        await asyncio.wait_for(done.wait(), 5)
        proto.close()
        peer.close()
        server.close()
        return got

    assert asyncio.run(main()) == [b"fgh", b"more"]


def test_read_exactly_times_out_with_a_clear_error() -> None:
    async def main() -> None:
        proto, peer, server = await _pair()
        with pytest.raises(TransportError, match=r"no answer from .* within 0\.2 s"):
            await proto.read_exactly(1, 0.2)
        proto.close()
        peer.close()
        server.close()

    asyncio.run(main())


def test_read_exactly_reports_a_closed_peer() -> None:
    async def main() -> None:
        proto, peer, server = await _pair()
        peer.write(b"ab")
        peer.close()
        with pytest.raises(TransportError, match="connection closed by"):
            await proto.read_exactly(3, 5)
        server.close()

    asyncio.run(main())
