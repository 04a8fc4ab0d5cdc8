"""Fuzz the registrar's parsers: whatever a unit or a stranger sends is a
request, frames, or a ProtocolError; nothing else escapes."""

from __future__ import annotations

import contextlib
import time

from hypothesis import given
from hypothesis import strategies as st

from roam.crypto.keys import generate_private_key, public_key
from roam.errors import ProtocolError
from roam.registrar.channel import MAGIC, RegistrarChannel, UnitChannel, frame
from roam.registrar.messages import Lookup, Register, decode_answer, decode_request
from tests.fuzz.conftest import fuzz_settings
from tests.fuzz.mutate import mutated, split

REG = generate_private_key()
UNIT = generate_private_key()
GOOD = [Register(time.time_ns(), 600, ("198.18.1.2:7000", "[::1]:1"), ("r=h:1,key=k",),
                 frozenset({public_key(UNIT)})).encode(), Lookup(public_key(REG)).encode(),
        b'{"ok":true,"expires":600}', b'{"ok":false,"code":"REPLAYED","reason":"x"}',
        b'{"ok":true,"addresses":["h:1"],"relays":[],"expires_in":5}']


@fuzz_settings()
@given(st.one_of(st.binary(max_size=300), mutated(st.sampled_from(GOOD), max_ops=6)))
def test_any_message_is_decoded_or_a_protocol_error(data: bytes) -> None:
    for decode in (decode_request, decode_answer):
        with contextlib.suppress(ProtocolError):
            decode(data)


def _stream() -> bytes:
    unit = UnitChannel(UNIT, public_key(REG))
    return unit.request(GOOD[0]) + frame(b"later")


@fuzz_settings(0.5)
@given(st.one_of(st.binary(max_size=300).flatmap(lambda b: split(MAGIC + b)),
                 mutated(st.just(_stream()), max_ops=4).flatmap(split)))
def test_the_registrar_side_takes_any_stream_in_any_cuts(chunks: list[bytes]) -> None:
    channel = RegistrarChannel(REG)
    try:
        for chunk in chunks:
            for body in channel.frames.feed(chunk):
                channel.request(body)
                channel.answer(b"{}")
            assert channel.frames.held <= 65537 + len(chunk)
    except ProtocolError:
        pass
