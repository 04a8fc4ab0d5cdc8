"""A channel's unsent application bytes, kept as the chunks they arrived in.

The driver hands the session each read from an application socket as a
`bytes` object. Appending those to one `bytearray` and slicing frames back
out of it copied every byte sent twice; here the reads are kept as they are
and a frame's payload is a view of one of them (a copy only when a frame
spans two reads, which large reads make rare).
"""

from __future__ import annotations

from collections import deque


class SendBuffer:
    """Chunks of immutable bytes, taken from the front `n` bytes at a time."""

    __slots__ = ("_chunks", "_offset", "size")

    def __init__(self) -> None:
        self._chunks: deque[bytes] = deque()
        self._offset = 0  # bytes of the first chunk already taken
        self.size = 0

    def __len__(self) -> int:
        return self.size

    def __bool__(self) -> bool:
        return self.size > 0

    def append(self, data: bytes | bytearray | memoryview) -> None:
        """Queue `data`. Only `bytes` is kept by reference: a caller may reuse
        a bytearray (or what a memoryview shows) after this returns."""
        if not data:
            return
        chunk = data if type(data) is bytes else bytes(data)
        self._chunks.append(chunk)
        self.size += len(chunk)

    def take(self, n: int) -> bytes | memoryview:
        """The next `n` bytes (1 <= n <= size): a view into a queued chunk
        when they lie in one, else a joined copy."""
        if not 0 < n <= self.size:
            raise ValueError(f"cannot take {n} of {self.size} bytes")
        chunks = self._chunks
        first = chunks[0]
        offset = self._offset
        left = len(first) - offset
        self.size -= n
        if n < left:
            self._offset = offset + n
            return memoryview(first)[offset:offset + n]
        if n == left:
            chunks.popleft()
            self._offset = 0
            return first if offset == 0 else memoryview(first)[offset:]
        parts: list[bytes | memoryview] = []
        need = n
        while need:
            first = chunks[0]
            left = len(first) - offset
            if need < left:
                parts.append(memoryview(first)[offset:offset + need])
                offset += need
                need = 0
            else:
                parts.append(memoryview(first)[offset:] if offset else first)
                chunks.popleft()
                need -= left
                offset = 0
        self._offset = offset
        return b"".join(parts)
