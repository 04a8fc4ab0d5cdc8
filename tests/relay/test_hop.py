"""Hop headers: sealed to one relay, read only by it, refused when anything is off."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from roam.crypto.keys import generate_private_key, public_key
from roam.errors import ProtocolError
from roam.relay import hop as h
from roam.relay.hop import Hop, HopKind, Next, Proof, Status

RELAY = generate_private_key()
CLIENT = generate_private_key()
TARGET = public_key(generate_private_key())
NEXT_KEY = public_key(generate_private_key())


def sealed(hop: Hop, relay: bytes = RELAY) -> bytes:
    return h.seal_hop(hop, CLIENT, public_key(relay))


HOPS = [
    Hop(HopKind.CLIENT, 1, TARGET),
    Hop(HopKind.CLIENT, 2**63, TARGET, Next.DIAL, NEXT_KEY, "198.18.0.9:4433"),
    Hop(HopKind.CLIENT, 3, TARGET, Next.DIAL, NEXT_KEY, "[2001:db8::1]:4433", Proof.TOTP,
        code=123456),
    Hop(HopKind.CLIENT, 4, TARGET, proof=Proof.TICKET, ticket=b"t" * 255),
    Hop(HopKind.UPLINK, 5, instance=b"i" * 16),
]


@pytest.mark.parametrize("hop", HOPS, ids=lambda x: f"{x.kind.name}-{x.next.name}-{x.proof.name}")
def test_a_header_opens_with_the_relay_key_and_names_its_sender(hop: Hop) -> None:
    header = sealed(hop)
    assert h.header_size(header) == len(header) <= h.MAX_HEADER
    opened = h.open_hop(header, RELAY)
    assert opened.sender == public_key(CLIENT)
    assert opened == Hop(**{**{f: getattr(hop, f) for f in hop.__slots__},  # type: ignore[arg-type]
                            "sender": public_key(CLIENT)})


def test_the_largest_header_fits_the_limit() -> None:
    big = Hop(HopKind.CLIENT, 2**64 - 1, TARGET, Next.DIAL, NEXT_KEY, "a" * h.MAX_ADDRESS,
              Proof.TICKET, ticket=b"t" * h.MAX_TICKET)
    assert len(sealed(big)) <= h.MAX_HEADER


def test_a_header_sealed_to_another_relay_is_refused() -> None:
    with pytest.raises(ProtocolError, match="does not open with this relay's key"):
        h.open_hop(sealed(HOPS[0], generate_private_key()), RELAY)


def test_one_flipped_bit_is_refused() -> None:
    header = bytearray(sealed(HOPS[1]))
    header[-20] ^= 1
    with pytest.raises(ProtocolError, match="does not open"):
        h.open_hop(bytes(header), RELAY)


def test_the_size_is_known_from_six_bytes_and_garbage_is_named_at_once() -> None:
    header = sealed(HOPS[0])
    for n in range(6):
        assert h.header_size(header[:n]) is None
    assert h.header_size(header[:6]) == len(header)
    with pytest.raises(ProtocolError, match="not a relay hop header"):
        h.header_size(b"GET / HTTP/1.1\r\n")
    with pytest.raises(ProtocolError, match="not a relay hop header"):
        h.header_size(b"RO")
    with pytest.raises(ProtocolError, match="at most"):
        h.header_size(h.MAGIC + b"\xff\xff")
    with pytest.raises(ProtocolError, match="at most"):
        h.header_size(h.MAGIC + b"\x00\x00")


@pytest.mark.parametrize(("hop", "error"), [
    (Hop(HopKind.CLIENT, 1), "names no target"),
    (Hop(HopKind.UPLINK, 1, TARGET), "uplink's hop header names a target"),
])
def test_inconsistent_headers_are_refused(hop: Hop, error: str) -> None:
    with pytest.raises(ProtocolError, match=error):
        h.open_hop(sealed(hop), RELAY)


def test_a_code_of_seven_digits_is_refused() -> None:
    with pytest.raises(ProtocolError, match="more than 6 digits"):
        h.open_hop(sealed(Hop(HopKind.CLIENT, 1, TARGET, proof=Proof.TOTP, code=10**6)), RELAY)


@settings(max_examples=300)
@given(st.binary(max_size=700))
def test_any_payload_decodes_or_is_a_protocol_error(payload: bytes) -> None:
    try:
        hop = h._decode_payload(payload, public_key(CLIENT))
    except ProtocolError:
        return
    assert hop.payload() == payload


@settings(max_examples=300)
@given(st.binary(max_size=1100))
def test_any_bytes_are_a_header_or_a_protocol_error(data: bytes) -> None:
    try:
        size = h.header_size(data)
        if size is not None and len(data) >= size:
            h.open_hop(data[:size], RELAY)
    except ProtocolError:
        pass


def test_replies_carry_a_status_and_a_body_and_may_arrive_in_pieces() -> None:
    reply = h.encode_reply(Status.OK, b"ticket") + b"ROAM..."
    for n in range(len(reply) - 7):
        assert h.decode_reply(reply[:n]) is None
    assert h.decode_reply(reply) == (Status.OK, b"ticket", h.REPLY.size + 6)
    status, body, _ = h.decode_reply(h.refusal(Status.NOT_ADMITTED, "é" * 2000)) or (0, b"", 0)
    assert status is Status.NOT_ADMITTED
    assert len(body) <= h.MAX_REPLY_BODY
    body.decode("utf-8")  # cut on a character boundary
    with pytest.raises(ProtocolError, match="answered with something else"):
        h.decode_reply(b"ROAM\x00\x00\x00")
    with pytest.raises(ProtocolError, match="unknown relay status"):
        h.decode_reply(h.MAGIC + b"\x63\x00\x00")


def test_reply_wanted_reads_exactly_one_reply_and_nothing_after_it() -> None:
    reply = h.encode_reply(Status.OK, b"ticket")
    stream = reply + b"the server's bytes"
    got = b""
    while h.decode_reply(got) is None:
        got += stream[len(got):len(got) + h.reply_wanted(got)]
    assert got == reply
    assert h.reply_wanted(got) == 0
    assert h.reply_wanted(b"") == 7
