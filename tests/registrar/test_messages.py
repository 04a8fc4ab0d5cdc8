"""Registrar messages: each one round-trips, anything else is named."""

from __future__ import annotations

import pytest

from roam.crypto.keys import encode_key, generate_private_key, public_key
from roam.errors import ProtocolError
from roam.registrar.messages import (
    MAX_ADDRESSES,
    Code,
    Found,
    Lookup,
    Refused,
    Register,
    Registered,
    decode_answer,
    decode_request,
)

KEY = public_key(generate_private_key())


@pytest.mark.parametrize("request_", [
    Register(1, 600, ("198.18.1.2:7000", "[::1]:1"), ("r=198.18.0.1:1,key=x",),
             frozenset({KEY})),
    Register(2**63 - 1, 1, ()),
    Lookup(KEY),
])
def test_requests_round_trip(request_: Register | Lookup) -> None:
    assert decode_request(request_.encode()) == request_


@pytest.mark.parametrize("answer", [
    Registered(600), Found(("198.18.1.2:7000",), (), 12.5),
    Refused(Code.REPLAYED, "a registration no newer than the last"),
])
def test_answers_round_trip(answer: Registered | Found | Refused) -> None:
    assert decode_answer(answer.encode()) == answer


@pytest.mark.parametrize(("data", "problem"), [
    (b"\xff", "not JSON text"),
    (b"[]", "not a JSON object"),
    (b'{"op":"delete"}', "unknown request 'delete'"),
    (b'{"op":"lookup","target":5}', "'target' must be a public key"),
    (b'{"op":"lookup","target":"abc"}', "'target'"),
    (b'{"op":"register","stamp":1,"expires":0}', "'expires' must be a whole number from 1"),
    (b'{"op":"register","stamp":true,"expires":5}', "'stamp' must be a whole number"),
    (b'{"op":"register","stamp":1,"expires":5,"addresses":["nohost"]}',
     "address 'nohost'"),
    (b'{"op":"register","stamp":1,"expires":5,"addresses":["h:0"]}', "address 'h:0'"),
    (b'{"op":"register","stamp":1,"expires":5,"addresses":'
     + str(["h:1"] * (MAX_ADDRESSES + 1)).replace("'", '"').encode() + b"}",
     f"'addresses' must be a list of at most {MAX_ADDRESSES}"),
    (b'{"op":"register","stamp":1,"expires":5,"visible_to":["x"]}', "each of 'visible_to'"),
])
def test_bad_requests_are_named(data: bytes, problem: str) -> None:
    with pytest.raises(ProtocolError) as info:
        decode_request(data)
    assert problem in str(info.value)


def test_bad_answers_are_named() -> None:
    with pytest.raises(ProtocolError, match="unknown refusal code 'NOPE'"):
        decode_answer(b'{"ok":false,"code":"NOPE","reason":"x"}')
    with pytest.raises(ProtocolError, match="needs 'ok'"):
        decode_answer(b"{}")
    with pytest.raises(ProtocolError, match="'expires_in' must be a number"):
        decode_answer(b'{"ok":true,"addresses":[]}')


def test_keys_are_written_as_roam_pubkey_prints_them() -> None:
    assert encode_key(KEY).encode() in Lookup(KEY).encode()
