"""Admission at a relay: listed keys, one-time codes once, tickets, replays and clocks."""

from __future__ import annotations

import pytest
from cryptography.hazmat.primitives.hashes import SHA1
from cryptography.hazmat.primitives.twofactor.totp import TOTP

from roam.crypto.keys import generate_private_key, public_key
from roam.relay.admission import (
    TICKET_LIFETIME_S,
    TOTP_STEP_S,
    WINDOW_S,
    Admission,
)
from roam.relay.hop import Hop, HopKind, Proof

RELAY = generate_private_key()
LISTED, CODED, STRANGER = (public_key(generate_private_key()) for _ in range(3))
TARGET = public_key(generate_private_key())
SECRET = b"s" * 20
WALL = 1_800_000_000.0  # a wall clock in 2027


def admission(**kw: object) -> Admission:
    args: dict[str, object] = {"keys": {LISTED: "laptop"}, "totp": {CODED: SECRET},
                               "admit_any": False, "relay_private": RELAY}
    args.update(kw)
    return Admission(**args)  # type: ignore[arg-type]


def hop(sender: bytes, wall: float = WALL, **kw: object) -> Hop:
    fields: dict[str, object] = {"kind": HopKind.CLIENT, "stamp_ns": int(wall * 1e9),
                                 "target": TARGET, "sender": sender}
    fields.update(kw)
    return Hop(**fields)  # type: ignore[arg-type]


def code(at: float) -> int:
    return int(TOTP(SECRET, 6, SHA1(), TOTP_STEP_S, enforce_key_length=False).generate(at))


def test_a_listed_key_is_admitted_and_given_a_ticket() -> None:
    verdict = admission().admit(hop(LISTED), WALL)
    assert verdict.admitted, verdict.reason
    assert "laptop" in verdict.reason
    assert 40 < len(verdict.ticket) <= 255


def test_nobody_else_is_admitted_by_default_and_any_must_be_said() -> None:
    verdict = admission().admit(hop(STRANGER), WALL)
    assert not verdict.admitted
    assert "not among the relay's admitted keys" in verdict.reason
    assert admission(admit_any=True).admit(hop(STRANGER), WALL).admitted


def test_an_identity_with_a_secret_is_told_it_needs_a_code() -> None:
    verdict = admission().admit(hop(CODED), WALL)
    assert not verdict.admitted
    assert "needs a one-time code" in verdict.reason


def test_a_code_is_accepted_once_and_no_older_one_after_it() -> None:
    a = admission()
    now = code(WALL)
    first = a.admit(hop(CODED, proof=Proof.TOTP, code=now), WALL)
    assert first.admitted, first.reason
    again = a.admit(hop(CODED, WALL + 1, proof=Proof.TOTP, code=now), WALL + 1)
    assert not again.admitted
    assert "already used" in again.reason
    older = a.admit(hop(CODED, WALL + 2, proof=Proof.TOTP, code=code(WALL - TOTP_STEP_S)),
                    WALL + 2)
    assert not older.admitted
    later = WALL + TOTP_STEP_S
    assert a.admit(hop(CODED, later, proof=Proof.TOTP, code=code(later)), later).admitted


def test_a_code_one_step_off_passes_and_two_steps_off_does_not() -> None:
    ahead = code(WALL + TOTP_STEP_S)
    assert admission().admit(hop(CODED, proof=Proof.TOTP, code=ahead), WALL).admitted
    far = code(WALL + 2 * TOTP_STEP_S)
    verdict = admission().admit(hop(CODED, proof=Proof.TOTP, code=far), WALL)
    assert not verdict.admitted
    assert "wrong or expired" in verdict.reason


def test_a_wrong_code_is_refused_and_a_code_for_an_identity_without_a_secret_too() -> None:
    right = code(WALL)
    wrong = (right + 1) % 10**6
    verdict = admission().admit(hop(CODED, proof=Proof.TOTP, code=wrong), WALL)
    assert not verdict.admitted
    assert "wrong or expired one-time code" in verdict.reason
    verdict = admission().admit(hop(LISTED, proof=Proof.TOTP, code=right), WALL)
    assert "has no TOTP secret" in verdict.reason


def test_a_ticket_admits_its_owner_again_without_a_code_even_after_a_restart() -> None:
    first = admission().admit(hop(CODED, proof=Proof.TOTP, code=code(WALL)), WALL)
    later = WALL + 3600
    # A new Admission from the same relay key: a restarted relay.
    again = admission().admit(hop(CODED, later, proof=Proof.TICKET, ticket=first.ticket), later)
    assert again.admitted, again.reason
    assert again.ticket != first.ticket  # renewed


def test_a_ticket_is_refused_for_another_identity_after_expiry_or_from_another_relay() -> None:
    ticket = admission().admit(hop(LISTED), WALL).ticket
    other = admission(admit_any=True).admit(hop(STRANGER, proof=Proof.TICKET, ticket=ticket),
                                            WALL)
    assert not other.admitted
    assert "belongs to" in other.reason
    late = WALL + TICKET_LIFETIME_S + 1
    expired = admission().admit(hop(LISTED, late, proof=Proof.TICKET, ticket=ticket), late)
    assert not expired.admitted
    assert "expired" in expired.reason
    foreign = admission(relay_private=generate_private_key()).admit(
        hop(LISTED, proof=Proof.TICKET, ticket=ticket), WALL)
    assert "not issued by this relay" in foreign.reason
    garbage = admission().admit(hop(LISTED, proof=Proof.TICKET, ticket=b"x"), WALL)
    assert "not issued by this relay" in garbage.reason


def test_a_header_is_admitted_once_within_the_window() -> None:
    a = admission()
    header = hop(LISTED)
    assert a.admit(header, WALL).admitted
    replay = a.admit(header, WALL + 5)
    assert not replay.admitted
    assert "replayed" in replay.reason
    assert a.admit(hop(LISTED, WALL + 5), WALL + 5).admitted


def test_a_header_from_a_clock_too_far_off_is_refused() -> None:
    a = admission()
    for off in (WINDOW_S + 1, -WINDOW_S - 1):
        verdict = a.admit(hop(LISTED, WALL + off), WALL)
        assert not verdict.admitted
        assert "clock is" in verdict.reason


def test_uplinks_are_admitted_by_the_servers_identities() -> None:
    uplink = {"kind": HopKind.UPLINK, "target": bytes(32), "instance": b"i" * 16}
    assert admission().admit(hop(LISTED, **uplink), WALL).admitted
    verdict = admission().admit(hop(STRANGER, **uplink), WALL)
    assert not verdict.admitted
    assert "server" in verdict.reason
    assert admission().admit(hop(LISTED, **uplink), WALL).ticket == b""


def test_a_short_totp_secret_is_a_configuration_error() -> None:
    with pytest.raises(ValueError, match="at least 16"):
        admission(totp={CODED: b"x" * 10})


def test_a_relay_of_the_fleet_passes_as_it_is_and_gets_no_ticket() -> None:
    a = admission()
    a.peers = {STRANGER: "198.18.3.2:4434"}
    verdict = a.admit(hop(STRANGER), WALL)
    assert verdict.admitted
    assert verdict.peer
    assert verdict.ticket == b""
    assert "of the fleet (198.18.3.2:4434)" in verdict.reason
    # Only with its key as proof: a peer's code or ticket is not how peers pass.
    assert not a.admit(hop(STRANGER, WALL + 1, proof=Proof.TOTP, code=1), WALL).admitted


def test_a_code_reports_its_step_for_the_fleet_to_confirm() -> None:
    verdict = admission().admit(hop(CODED, proof=Proof.TOTP, code=code(WALL)), WALL)
    assert verdict.admitted
    assert verdict.step == int(WALL // TOTP_STEP_S)
    assert admission().admit(hop(LISTED), WALL).step is None


def test_tickets_under_the_fleet_key_pass_at_every_relay_of_the_fleet() -> None:
    secret = b"f" * 32
    here, there = admission(), admission(relay_private=generate_private_key())
    old = here.admit(hop(LISTED), WALL).ticket  # issued before the relay joined the fleet
    here.fleet_ticket_key(secret)
    there.fleet_ticket_key(secret)
    ticket = here.admit(hop(LISTED, WALL + 1), WALL).ticket
    assert there.admit(hop(LISTED, WALL + 2, proof=Proof.TICKET, ticket=ticket), WALL).admitted
    # The relay's own tickets from before still pass here, not there.
    assert here.admit(hop(LISTED, WALL + 3, proof=Proof.TICKET, ticket=old), WALL).admitted
    assert not there.admit(hop(LISTED, WALL + 4, proof=Proof.TICKET, ticket=old),
                           WALL).admitted
    # The fleet's key changed (its store lost it): the old fleet tickets still pass.
    there.fleet_ticket_key(b"g" * 32)
    assert there.admit(hop(LISTED, WALL + 5, proof=Proof.TICKET, ticket=ticket), WALL).admitted
