"""Structured-but-mutated input: valid encodings with a few bytes changed.

Random bytes rarely get past a parser's first check (a magic, a version, a
length); a valid message with one field broken reaches the checks behind it.

Mutations and cuts are read from one drawn byte string each (a small
"program"), not drawn op by op: one draw costs Hypothesis a fraction of a
dozen, which is most of a fuzz input's cost, and an empty or shorter program
still shrinks to fewer changes.
"""

from __future__ import annotations

from hypothesis import strategies as st

# Values that sit on the edges of u8/u16/u32 fields and of ASCII/UTF-8.
_EDGE_BYTES = (0x00, 0x01, 0x7F, 0x80, 0xC0, 0xFE, 0xFF)
_OP_SIZE = 4  # op, position (2 bytes), value
_OPS = 7


def apply_mutations(data: bytes, program: bytes) -> bytes:
    """`data` changed by each 4-byte step of `program`: flip a bit, set an edge
    value, insert, delete, cut off the rest, append bytes, or repeat a slice."""
    out = bytearray(data)
    tail = program[::-1]  # appended bytes: any bytes will do
    for i in range(0, len(program) - _OP_SIZE + 1, _OP_SIZE):
        op, hi, lo, value = program[i:i + _OP_SIZE]
        spot = hi << 8 | lo
        if op % _OPS == 0 or not out:
            out.insert(spot % (len(out) + 1), value)
            continue
        pos = spot % len(out)
        match op % _OPS:
            case 1:
                out[pos] ^= 1 << (value % 8)
            case 2:
                out[pos] = _EDGE_BYTES[value % len(_EDGE_BYTES)]
            case 3:
                del out[pos]
            case 4:
                del out[pos:]
            case 5:
                out += tail[:1 + value % len(tail)]
            case _:
                # A slice again right after itself: lengths and counts then
                # disagree with what follows them.
                end = min(len(out), pos + 1 + value % 16)
                out[end:end] = out[pos:end]
    return bytes(out)


@st.composite
def _mutate(draw: st.DrawFn, base: st.SearchStrategy[bytes], max_ops: int) -> bytes:
    data = draw(base)
    program = draw(st.binary(min_size=_OP_SIZE, max_size=_OP_SIZE * max_ops))
    return apply_mutations(data, program)


def mutated(base: st.SearchStrategy[bytes], max_ops: int = 4) -> st.SearchStrategy[bytes]:
    """`base`'s values with 1 to `max_ops` mutations (see `apply_mutations`)."""
    return _mutate(base, max_ops)


def cut(data: bytes, program: bytes) -> list[bytes]:
    """`data` in consecutive pieces (some possibly empty), cut where each
    2-byte step of `program` says, as reads deliver a stream."""
    points = sorted(int.from_bytes(program[i:i + 2], "big") % (len(data) + 1)
                    for i in range(0, len(program) - 1, 2))
    return [data[a:b] for a, b in zip([0, *points], [*points, len(data)], strict=True)]


@st.composite
def _split(draw: st.DrawFn, data: bytes, max_cuts: int) -> list[bytes]:
    return cut(data, draw(st.binary(max_size=2 * max_cuts)))


def split(data: bytes, max_cuts: int = 8) -> st.SearchStrategy[list[bytes]]:
    """`data` cut into at most `max_cuts` + 1 consecutive pieces."""
    return _split(data, max_cuts)
