"""The daemons' event loop: the choice, and what differs between the two."""

from __future__ import annotations

import asyncio

import pytest
import uvloop

from roam.eventloop import DEFAULT, EVENT_LOOPS, loop_factory, stream_transport


def test_the_default_is_uvloop_and_both_are_offered() -> None:
    assert DEFAULT == "uvloop"
    assert set(EVENT_LOOPS) == {"uvloop", "asyncio"}
    assert loop_factory("asyncio") is None
    with pytest.raises(ValueError, match="unknown event loop 'trio'"):
        loop_factory("trio")


@pytest.mark.parametrize("name", EVENT_LOOPS)
def test_a_stream_transport_is_recognised_on_either_loop(name: str) -> None:
    async def main() -> str:
        loop = asyncio.get_running_loop()
        server = await loop.create_server(asyncio.Protocol, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        transport, _ = await loop.create_connection(asyncio.Protocol, "127.0.0.1", port)
        udp, _ = await loop.create_datagram_endpoint(asyncio.DatagramProtocol,
                                                     local_addr=("127.0.0.1", 0))
        try:
            assert stream_transport(transport) is transport
            with pytest.raises(TypeError, match="expected a stream transport"):
                stream_transport(udp)
            return type(loop).__module__
        finally:
            transport.close()
            udp.close()
            server.close()

    with asyncio.Runner(loop_factory=loop_factory(name)) as runner:
        loop_module = runner.run(main())
    if name == "uvloop":
        assert loop_module.startswith("uvloop")
        # Not an asyncio.Transport subclass: the reason stream_transport exists.
        assert not issubclass(uvloop.new_event_loop().__class__, asyncio.BaseEventLoop)
    else:
        assert loop_module.startswith("asyncio")
