"""An in-process TCP proxy that records, tampers with, cuts or silences a transport."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field


@dataclass
class Conn:
    client: asyncio.StreamWriter
    server: asyncio.StreamWriter
    upstream: bytearray = field(default_factory=bytearray)  # what the client sent
    silent: bool = False  # this connection alone black-holed
    source: str = ""  # the client's address, which tells the paths apart
    downstream: int = 0  # bytes the server sent so far


class Proxy:
    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.conns: list[Conn] = []
        self.silent = False
        # Flip one byte this far into the next upstream chunk (None: never).
        self.tamper_at: int | None = None
        # Faults in what the server sends on the n-th connection (from 0):
        # flip the byte at this offset of its stream, or pass this many bytes
        # and then black-hole the rest (both directions).
        self.tamper_down: dict[int, int] = {}
        self.silence_down_after: dict[int, int] = {}
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    async def start(self) -> int:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        port: int = self._server.sockets[0].getsockname()[1]
        return port

    async def _handle(self, cr: asyncio.StreamReader, cw: asyncio.StreamWriter) -> None:
        sr, sw = await asyncio.open_connection("127.0.0.1", self.target_port)
        conn = Conn(cw, sw, source=cw.get_extra_info("peername")[0])
        index = len(self.conns)
        self.conns.append(conn)
        for coro in (self._pump(cr, sw, conn, True), self._pump(sr, cw, conn, False, index)):
            task = asyncio.create_task(coro)
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _pump(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                    conn: Conn, upstream: bool, index: int = -1) -> None:
        record = conn if upstream else None
        try:
            while data := await reader.read(65536):
                if self.silent or conn.silent:
                    continue
                if not upstream:
                    data = self._fault_down(conn, index, data)
                if record is not None:
                    if self.tamper_at is not None and len(data) > self.tamper_at:
                        i = self.tamper_at
                        data = data[:i] + bytes([data[i] ^ 0x40]) + data[i + 1:]
                        self.tamper_at = None
                    record.upstream += data
                writer.write(data)
                await writer.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            writer.close()

    def _fault_down(self, conn: Conn, index: int, data: bytes) -> bytes:
        start, conn.downstream = conn.downstream, conn.downstream + len(data)
        at = self.tamper_down.get(index)
        if at is not None and start <= at < conn.downstream:
            i = at - start
            data = data[:i] + bytes([data[i] ^ 0x40]) + data[i + 1:]
        after = self.silence_down_after.get(index)
        if after is not None and conn.downstream > after:
            conn.silent = True
            data = data[:max(0, after - start)]
        return data

    def cut(self) -> None:
        for conn in self.conns:
            conn.client.transport.abort()
            conn.server.transport.abort()

    async def close(self) -> None:
        self.cut()
        if self._server is not None:
            self._server.close()
        for task in list(self._tasks):
            task.cancel()
