"""An in-process UDP relay with one mapping per client source, as a NAT has.

The server sees each of the client's sockets (primary, backup) from an
address of its own, and a source address can be made to lose everything it
sends and everything sent to it: a path that stopped carrying UDP.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections import Counter
from typing import Any


class NatRelay(asyncio.DatagramProtocol):
    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.dropping: set[str] = set()  # client source hosts whose packets are lost
        self.upstream: Counter[str] = Counter()  # packets relayed, by client source host
        self.transport: asyncio.DatagramTransport | None = None
        self._mappings: dict[Any, socket.socket] = {}

    async def start(self) -> int:
        loop = asyncio.get_running_loop()
        self.transport, _ = await loop.create_datagram_endpoint(
            lambda: self, local_addr=("127.0.0.1", 0))
        port: int = self.transport.get_extra_info("sockname")[1]
        return port

    def mapping(self, client: Any) -> tuple[str, int]:
        """Where the server sees `client` come from."""
        name: tuple[str, int] = self._mappings[client].getsockname()
        return name

    def datagram_received(self, data: bytes, addr: Any) -> None:
        sock = self._mappings.get(addr)
        if sock is None:
            sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            sock.setblocking(False)
            sock.connect(("127.0.0.1", self.target_port))
            asyncio.get_running_loop().add_reader(sock.fileno(), self._from_server, sock, addr)
            self._mappings[addr] = sock
        if addr[0] in self.dropping:
            return
        self.upstream[addr[0]] += 1
        with contextlib.suppress(OSError):  # the server is gone: as a NAT would, say nothing
            sock.send(data)

    def _from_server(self, sock: socket.socket, client: Any) -> None:
        while True:
            try:
                data = sock.recv(65536)
            except OSError:
                return
            if client[0] not in self.dropping and self.transport is not None:
                self.transport.sendto(data, client)

    def close(self) -> None:
        loop = asyncio.get_running_loop()
        for sock in self._mappings.values():
            loop.remove_reader(sock.fileno())
            sock.close()
        self._mappings.clear()
        if self.transport is not None:
            self.transport.close()
