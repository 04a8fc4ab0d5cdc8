"""A channel's unsent bytes: reads kept as they came, frames taken as views."""

from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from roam.core.sendbuffer import SendBuffer


def test_a_take_within_one_read_is_a_view_of_it() -> None:
    buf = SendBuffer()
    read = bytes(range(256)) * 400
    buf.append(read)
    first = buf.take(1000)
    assert isinstance(first, memoryview)
    assert first.obj is read  # no copy
    assert bytes(first) == read[:1000]
    assert len(buf) == len(read) - 1000
    rest = buf.take(len(read) - 1000)
    assert bytes(rest) == read[1000:]
    assert not buf


def test_a_whole_read_comes_back_as_itself() -> None:
    buf = SendBuffer()
    read = b"x" * 5000
    buf.append(read)
    assert buf.take(5000) is read


def test_a_take_across_reads_joins_them() -> None:
    buf = SendBuffer()
    for part in (b"abc", b"defg", b"hi"):
        buf.append(part)
    assert buf.take(2) == b"ab"
    assert buf.take(6) == b"cdefgh"
    assert buf.take(1) == b"i"
    assert len(buf) == 0


def test_mutable_input_is_copied_so_the_caller_may_reuse_it() -> None:
    buf = SendBuffer()
    scratch = bytearray(b"hello")
    buf.append(scratch)
    buf.append(memoryview(scratch))
    scratch[:] = b"XXXXX"
    assert buf.take(10) == b"hellohello"


def test_empty_appends_are_ignored_and_bad_takes_refused() -> None:
    buf = SendBuffer()
    buf.append(b"")
    assert not buf
    buf.append(b"ab")
    with pytest.raises(ValueError, match="cannot take 3 of 2 bytes"):
        buf.take(3)
    with pytest.raises(ValueError, match="cannot take 0 of 2 bytes"):
        buf.take(0)


@settings(max_examples=200, deadline=None)
@given(reads=st.lists(st.binary(min_size=0, max_size=300), max_size=30),
       seed=st.integers(0, 2**32 - 1))
def test_takes_give_back_exactly_what_was_appended(reads: list[bytes], seed: int) -> None:
    rng = random.Random(seed)
    buf = SendBuffer()
    expected = b"".join(reads)
    got = bytearray()
    for read in reads:
        buf.append(read)
        while buf and rng.random() < 0.5:
            got += buf.take(rng.randint(1, len(buf)))
    while buf:
        got += buf.take(rng.randint(1, len(buf)))
    assert bytes(got) == expected
    assert len(buf) == 0
