"""Stand-ins for what a connection handler writes to, so a fuzz input runs
without a socket (a socket per input would cost more than the parsing)."""

from __future__ import annotations


class FakeWriter:
    """The part of asyncio.StreamWriter the connection handlers use."""

    def __init__(self) -> None:
        self.data = bytearray()
        self.eof = False
        self.closed = False

    def write(self, data: bytes) -> None:
        self.data += data

    def write_eof(self) -> None:
        self.eof = True

    async def drain(self) -> None:
        pass

    def close(self) -> None:
        self.closed = True
