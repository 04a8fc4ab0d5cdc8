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


class Proxy:
    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.conns: list[Conn] = []
        self.silent = False
        # Flip one byte this far into the next upstream chunk (None: never).
        self.tamper_at: int | None = None
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    async def start(self) -> int:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        port: int = self._server.sockets[0].getsockname()[1]
        return port

    async def _handle(self, cr: asyncio.StreamReader, cw: asyncio.StreamWriter) -> None:
        sr, sw = await asyncio.open_connection("127.0.0.1", self.target_port)
        conn = Conn(cw, sw, source=cw.get_extra_info("peername")[0])
        self.conns.append(conn)
        for coro in (self._pump(cr, sw, conn, True), self._pump(sr, cw, conn, False)):
            task = asyncio.create_task(coro)
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _pump(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                    conn: Conn, upstream: bool) -> None:
        record = conn if upstream else None
        try:
            while data := await reader.read(65536):
                if self.silent or conn.silent:
                    continue
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
