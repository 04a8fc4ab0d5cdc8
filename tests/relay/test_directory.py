"""The fleet directory's decisions: records, the epoch rule, lookups, claims to write."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from roam.errors import ProtocolError
from roam.relay.directory import (
    REFRESH_S,
    TTL_S,
    Claim,
    Holdings,
    Onward,
    RelayRecord,
    Release,
    Write,
    claim_refused,
    decode_claim,
    decode_claims,
    decode_relay,
    decode_relays,
    expired,
    holders,
    peers,
    route,
)

S = b"\x05" * 32  # a server
R1, R2, R3 = (bytes([i]) * 32 for i in (1, 2, 3))  # relays
I1, I2 = b"\xa1" * 16, b"\xa2" * 16  # server instances
NOW = 1_800_000_000.0


def claim(relay: bytes, epoch: int, instance: bytes = I1, expires: float = NOW + 3) -> Claim:
    return Claim(S, relay, epoch, instance, expires)


def test_records_round_trip_through_their_text() -> None:
    record = RelayRecord(R1, "198.18.3.2:4434", NOW + TTL_S)
    assert decode_relay(R1.hex(), record.encode()) == record
    assert decode_relay(R1.hex().encode(), record.encode().encode()) == record
    c = claim(R2, 7)
    assert decode_claim(S, R2.hex(), c.encode()) == c


@pytest.mark.parametrize(("name", "value"), [
    ("zz", "1.2.3.4:5 100"), (R1.hex()[:10], "1.2.3.4:5 100"), (R1.hex(), "1.2.3.4:5"),
    (R1.hex(), "1.2.3.4:5 soon"), (R1.hex(), " 100"), (R1.hex(), "a b c"),
    (R1.hex(), "x" * 600 + " 1"),
])
def test_a_malformed_relay_record_is_a_protocol_error(name: str, value: str) -> None:
    with pytest.raises(ProtocolError):
        decode_relay(name, value)


@pytest.mark.parametrize("value", ["7 a1 100", "x " + I1.hex() + " 100", "7 " + I1.hex(),
                                   "7 " + I1.hex() + " -1", "", "1" * 30 + " " + I1.hex() + " 1"])
def test_a_malformed_claim_is_a_protocol_error(value: str) -> None:
    with pytest.raises(ProtocolError):
        decode_claim(S, R1.hex(), value)


@given(st.binary(max_size=80), st.binary(max_size=700))
def test_garbage_in_the_store_is_skipped_never_raised(name: bytes, value: bytes) -> None:
    records, bad_r = decode_relays({name: value})
    claims, bad_c = decode_claims(S, {name: value})
    assert len(records) + bad_r == 1
    assert len(claims) + bad_c == 1


def test_a_lookup_answers_live_claims_of_the_newest_instance_newest_first() -> None:
    claims = [claim(R1, 3), claim(R2, 5), claim(R3, 4, expires=NOW - 0.001)]
    assert [c.relay for c in holders(claims, NOW)] == [R2, R1]
    assert [c.relay for c in holders(claims, NOW, exclude=R2)] == [R1]
    # The server restarted and uplinked at R3 (epoch 6): R1 and R2 hold the
    # dead instance's uplinks, and are not answered.
    restarted = [*claims, claim(R3, 6, I2)]
    assert [c.relay for c in holders(restarted, NOW)] == [R3]
    assert holders([], NOW) == []
    # A claim is live until its time, by the reader's clock.
    assert holders([claim(R1, 1, expires=NOW)], NOW) == []


def test_the_epoch_rule_refuses_a_stale_relay_and_lets_a_live_one_refresh() -> None:
    newer = [claim(R2, 9, I2)]
    # R1 comes back from a partition with epoch 4 of the old instance: refused.
    assert claim_refused(newer, R1, 4, I1, NOW)
    # The same instance at another relay (the server uplinks to both): fine.
    assert not claim_refused([claim(R2, 9, I1)], R1, 4, I1, NOW)
    # The newer claim ran out: nothing to refuse by.
    assert not claim_refused([claim(R2, 9, I2, expires=NOW - 1)], R1, 4, I1, NOW)
    # Its own field does not refuse it; an older one of another instance neither.
    assert not claim_refused([claim(R1, 9, I2), claim(R2, 2, I2)], R1, 4, I1, NOW)


def test_route_skips_relays_whose_records_ran_out_and_puts_suspects_last() -> None:
    claims = [claim(R1, 3), claim(R2, 5), claim(R3, 4)]
    relays = {R1: RelayRecord(R1, "a:1", NOW + 5), R2: RelayRecord(R2, "b:1", NOW - 1),
              R3: RelayRecord(R3, "c:1", NOW + 5)}
    assert route(claims, relays, NOW, me=b"", suspects={}) == [
        Onward(R3, "c:1", 4), Onward(R1, "a:1", 3)]
    assert [o.relay for o in route(claims, relays, NOW, me=b"",
                                   suspects={R3: NOW + 1})] == [R1, R3]
    assert [o.relay for o in route(claims, relays, NOW, me=R1, suspects={R3: NOW - 1})] == [R3]
    assert route(claims, {}, NOW, me=b"", suspects={}) == []


def test_peers_and_expired_records() -> None:
    records = [RelayRecord(R1, "a:1", NOW + 1), RelayRecord(R2, "b:1", NOW - 1),
               RelayRecord(R3, "c:1", NOW + 1)]
    assert set(peers(records, NOW, me=R1)) == {R3}
    assert [r.identity for r in expired(records, NOW)] == [R2]


def test_holdings_claim_once_refresh_in_time_and_release_what_is_gone() -> None:
    h = Holdings()
    writes, releases = h.plan({S: I1}, NOW)
    assert writes == [Write(S, I1, 0, NOW + TTL_S)]
    assert releases == []
    # Until the store answers, every plan asks again (the write may have failed).
    assert h.plan({S: I1}, NOW + 0.1)[0] == [Write(S, I1, 0, NOW + 0.1 + TTL_S)]
    h.claimed(S, I1, 7, NOW + 0.1)
    assert h.plan({S: I1}, NOW + 0.2) == ([], [])
    later = NOW + 0.1 + REFRESH_S
    assert h.plan({S: I1}, later) == ([Write(S, I1, 7, later + TTL_S)], [])
    assert h.plan({S: I1}, NOW + 0.3, force=True)[0][0].epoch == 7
    assert h.epochs() == {S: 7}
    # A write that did not reach the store is due again at once.
    h.failed(S)
    assert h.plan({S: I1}, NOW + 0.4)[0] == [Write(S, I1, 7, NOW + 0.4 + TTL_S)]
    # The server restarted (a new instance here): the old claim goes, a new one is taken.
    assert h.plan({S: I2}, NOW + 1) == ([Write(S, I2, 0, NOW + 1 + TTL_S)], [Release(S, 7)])
    h.claimed(S, I2, 9, NOW + 1)
    # No uplink of it any more: released.
    assert h.plan({}, NOW + 2) == ([], [Release(S, 9)])
    assert h.epochs() == {}


def test_a_stale_claim_is_forgotten_and_an_answer_for_another_instance_ignored() -> None:
    h = Holdings()
    h.plan({S: I1}, NOW)
    h.claimed(S, I2, 5, NOW)  # an answer about another instance: not ours
    assert h.epochs() == {}
    h.stale(S, I1)
    assert h.claims == {}
    # Unclaimed and gone: nothing to release.
    h.plan({S: I1}, NOW)
    assert h.plan({}, NOW) == ([], [])
