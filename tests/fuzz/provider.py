"""Structured values read from one drawn byte string.

A fuzz input built from dozens of Hypothesis draws costs several times one
built from a single `st.binary()` draw read by `Provider`: the builder takes
field values, lengths and choices from the bytes in order, and an exhausted
string reads as zeros. Hypothesis still shrinks the bytes, and shorter or
smaller bytes give simpler values (first choices, zeros, short strings).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TypeVar

from hypothesis import strategies as st

T = TypeVar("T")

# Characters worth hitting in text fields: ASCII, the edges of the UTF-8
# lengths, a combining mark, a right-to-left mark, NUL and a newline.
_CHARS = "aZ09.-_ \x00\n\x7f\x80\u00fc\u07ff\u0800\u0301\u200f\uffff\U00010000\U0010ffff"


class Provider:
    def __init__(self, data: bytes) -> None:
        self._data = data
        self._pos = 0

    def take(self, n: int) -> bytes:
        """The next `n` bytes, padded with zeros once the data runs out."""
        chunk = self._data[self._pos:self._pos + n]
        self._pos += n
        return chunk.ljust(n, b"\x00")

    def rest(self) -> bytes:
        chunk = self._data[self._pos:]
        self._pos = len(self._data)
        return chunk

    def uint(self, bits: int) -> int:
        """An unsigned `bits`-bit value; one in four is an edge (0, 1, max-1, max)."""
        size = (bits + 7) // 8
        selector = self.take(1)[0]
        top = (1 << bits) - 1
        if selector % 4 == 0:
            return (0, 1, top - 1, top)[selector // 4 % 4] & top
        return int.from_bytes(self.take(size), "big") & top

    def below(self, n: int) -> int:
        """A value from 0 to n - 1."""
        return int.from_bytes(self.take(2), "big") % n if n > 1 else 0

    def choice(self, options: Sequence[T]) -> T:
        return options[self.below(len(options))]

    def flag(self) -> bool:
        return bool(self.take(1)[0] & 1)

    def blob(self, max_size: int) -> bytes:
        return self.take(self.below(max_size + 1))

    def text(self, max_chars: int) -> str:
        """Text of code points from `_CHARS` or anywhere (no lone surrogates)."""
        out = []
        for _ in range(self.below(max_chars + 1)):
            if self.flag():
                out.append(self.choice(_CHARS))
            else:
                code = self.uint(21) % 0x110000
                out.append(chr(code if not 0xD800 <= code <= 0xDFFF else code - 0x800))
        return "".join(out)


def built(build: Callable[[Provider], T], max_size: int = 400) -> st.SearchStrategy[T]:
    """Values of `build` over drawn bytes: one draw per value."""
    return st.binary(max_size=max_size).map(lambda data: build(Provider(data)))
