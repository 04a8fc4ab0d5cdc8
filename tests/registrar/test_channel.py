"""The unit-registrar channel: IK both ways, frames, and what does not open."""

from __future__ import annotations

import pytest

from roam.crypto.keys import generate_private_key, public_key
from roam.errors import ProtocolError
from roam.registrar.channel import MAGIC, Frames, RegistrarChannel, UnitChannel, frame

REG = generate_private_key()
UNIT = generate_private_key()


def exchange(unit: UnitChannel, reg: RegistrarChannel, payload: bytes, reply: bytes) -> bytes:
    (body,) = reg.frames.feed(unit.request(payload))
    assert reg.request(body) == payload
    (back,) = unit.frames.feed(reg.answer(reply))
    return unit.answer(back)


def test_requests_and_answers_flow_in_order_and_the_registrar_learns_who_asks() -> None:
    unit, reg = UnitChannel(UNIT, public_key(REG)), RegistrarChannel(REG)
    assert exchange(unit, reg, b"first", b"one") == b"one"
    assert reg.identity == public_key(UNIT)
    assert exchange(unit, reg, b"second", b"two") == b"two"
    assert exchange(unit, reg, b"third", b"three") == b"three"


def test_a_request_sealed_to_another_registrar_does_not_open() -> None:
    unit = UnitChannel(UNIT, public_key(generate_private_key()))
    reg = RegistrarChannel(REG)
    (body,) = reg.frames.feed(unit.request(b"hello"))
    with pytest.raises(ProtocolError, match="does not open with this registrar's key"):
        reg.request(body)


def test_a_replayed_first_message_opens_but_its_answer_is_for_the_unit_alone() -> None:
    unit = UnitChannel(UNIT, public_key(REG))
    first = unit.request(b"register")
    reg = RegistrarChannel(REG)
    (body,) = reg.frames.feed(first)
    assert reg.request(body) == b"register"  # records.py refuses it by its stamp
    thief = UnitChannel(generate_private_key(), public_key(REG))
    thief.request(b"x")
    (back,) = thief.frames.feed(reg.answer(b"addresses"))
    with pytest.raises(ProtocolError, match="does not open"):
        thief.answer(back)


def test_frames_cut_a_stream_at_any_point_and_refuse_what_is_not_one() -> None:
    data = MAGIC + frame(b"a") + frame(b"bc" * 100)
    frames = Frames(magic=True)
    got = [f for i in range(len(data)) for f in frames.feed(data[i:i + 1])]
    assert got == [b"a", b"bc" * 100]
    with pytest.raises(ProtocolError, match="not a registrar request"):
        Frames(magic=True).feed(b"GET ")
    with pytest.raises(ProtocolError, match="empty frame"):
        Frames(magic=True).feed(MAGIC + b"\x00\x00")
    with pytest.raises(ValueError, match=r"1\.\.65535"):
        frame(b"")
