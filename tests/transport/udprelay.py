"""An in-process UDP relay between client and server: drops, replays, moves its source."""

from __future__ import annotations

import asyncio
from typing import Any


class _Upstream(asyncio.DatagramProtocol):
    def __init__(self, relay: UdpRelay) -> None:
        self.relay = relay

    def datagram_received(self, data: bytes, addr: Any) -> None:
        self.relay.from_server(self, data)


class UdpRelay(asyncio.DatagramProtocol):
    """Listens where the client sends (the TCP proxy's port number, on UDP) and
    relays to the server's UDP port from a socket of its own, as a NAT would."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.drop = False  # the network drops UDP both ways
        self.upstream_packets: list[bytes] = []  # what the client sent, in order
        self.transport: asyncio.DatagramTransport | None = None
        self._client: Any = None
        self._up: asyncio.DatagramTransport | None = None
        self._up_proto: _Upstream | None = None

    async def start(self, port: int) -> None:
        loop = asyncio.get_running_loop()
        self.transport, _ = await loop.create_datagram_endpoint(
            lambda: self, local_addr=("127.0.0.1", port))
        await self.new_source()

    async def new_source(self) -> int:
        """Relay from a new source port from now on (a NAT rebinding); returns it."""
        loop = asyncio.get_running_loop()
        if self._up is not None:
            self._up.close()
        proto = _Upstream(self)
        self._up, _ = await loop.create_datagram_endpoint(
            lambda: proto, remote_addr=("127.0.0.1", self.target_port))
        self._up_proto = proto
        port: int = self._up.get_extra_info("sockname")[1]
        return port

    def datagram_received(self, data: bytes, addr: Any) -> None:
        self._client = addr
        self.upstream_packets.append(data)
        if not self.drop:
            self.send_upstream(data)

    def send_upstream(self, data: bytes) -> None:
        if self._up is not None:
            self._up.sendto(data)

    def from_server(self, proto: _Upstream, data: bytes) -> None:
        if (proto is self._up_proto and not self.drop and self.transport is not None
                and self._client is not None):
            self.transport.sendto(data, self._client)

    def close(self) -> None:
        for t in (self.transport, self._up):
            if t is not None:
                t.close()
