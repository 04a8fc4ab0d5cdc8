"""A relay's arrivals: a header in pieces, then one decision, and what it holds before."""

from __future__ import annotations

from roam.crypto.keys import generate_private_key, public_key
from roam.relay.admission import Admission
from roam.relay.core import Arrival, Refuse, Register, Splice
from roam.relay.hop import MAX_HEADER, Hop, HopKind, Next, Status, decode_reply, seal_hop

RELAY = generate_private_key()
CLIENT, SERVER = generate_private_key(), generate_private_key()
WALL = 1_800_000_000.0


def arrival(admit_any: bool = False) -> Arrival:
    keys = {public_key(CLIENT): "laptop", public_key(SERVER): "db server"}
    return Arrival(RELAY, Admission(keys=keys, totp={}, admit_any=admit_any,
                                    relay_private=RELAY))


def client_header(sender: bytes = CLIENT, **kw: object) -> bytes:
    fields: dict[str, object] = {"kind": HopKind.CLIENT, "stamp_ns": int(WALL * 1e9),
                                 "target": public_key(SERVER)}
    fields.update(kw)
    return seal_hop(Hop(**fields), sender, public_key(RELAY))  # type: ignore[arg-type]


def test_a_header_fed_byte_by_byte_decides_once_with_what_followed_it() -> None:
    a = arrival()
    data = client_header(next=Next.DIAL, next_key=public_key(SERVER),
                         address="198.18.0.2:4433") + b"ROAM-preamble"
    decision, fed = None, 0
    while decision is None:
        decision = a.feed(data[fed:fed + 1], WALL)
        fed += 1
        assert a.held <= MAX_HEADER
    assert isinstance(decision, Splice)
    # Decided on the header's last byte: the rest comes with later reads.
    assert fed == len(data) - len(b"ROAM-preamble")
    assert decision.hop.address == "198.18.0.2:4433"
    status, ticket, _ = decode_reply(decision.reply) or (None, b"", 0)
    assert status is Status.OK
    assert ticket


def test_what_came_in_the_same_read_after_the_header_goes_on() -> None:
    decision = arrival().feed(client_header() + b"ROAM-preamble", WALL)
    assert isinstance(decision, Splice)
    assert decision.rest == b"ROAM-preamble"
    assert decision.hop.next is Next.UPLINK_OF_TARGET


def test_an_uplink_registers() -> None:
    header = seal_hop(Hop(HopKind.UPLINK, int(WALL * 1e9), instance=b"i" * 16), SERVER,
                      public_key(RELAY))
    decision = arrival().feed(header, WALL)
    assert isinstance(decision, Register)
    assert decision.hop.sender == public_key(SERVER)
    assert decode_reply(decision.reply) == (Status.OK, b"", 7)


def test_garbage_and_strangers_are_refused_with_a_reason_in_the_reply() -> None:
    bad = arrival().feed(b"SSH-2.0-OpenSSH_9.2\r\n", WALL)
    assert isinstance(bad, Refuse)
    assert bad.status is Status.BAD_HEADER
    stranger = arrival().feed(client_header(generate_private_key()), WALL)
    assert isinstance(stranger, Refuse)
    assert stranger.status is Status.NOT_ADMITTED
    status, reason, _ = decode_reply(stranger.reply) or (None, b"", 0)
    assert status is Status.NOT_ADMITTED
    assert b"not among the relay's admitted keys" in reason


def test_an_uplink_that_sends_more_than_its_header_is_refused() -> None:
    header = seal_hop(Hop(HopKind.UPLINK, int(WALL * 1e9), instance=b"i" * 16), SERVER,
                      public_key(RELAY))
    decision = arrival().feed(header + b"x", WALL)
    assert isinstance(decision, Refuse)
    assert decision.status is Status.BAD_HEADER


def test_a_splice_carries_a_codes_step_and_whether_a_fleet_relay_sent_it() -> None:
    admission = Admission(keys={}, totp={}, admit_any=False, relay_private=RELAY)
    admission.peers = {public_key(SERVER): "198.18.3.2:4434"}
    decision = Arrival(RELAY, admission).feed(client_header(SERVER), WALL)
    assert isinstance(decision, Splice)
    assert decision.peer
    assert decision.step is None
    status, body, _ = decode_reply(decision.reply) or (None, b"x", 0)
    assert status is Status.OK
    assert body == b""  # no ticket for a relay of the fleet
