"""roam.registrar.sipbindings: a unit's instance, a move that removes the old
contact, unregistering, and a peer's bindings looked up."""

from __future__ import annotations

import pytest

from roam.errors import ConfigError
from roam.registrar.sipbindings import Lookup, instance_for
from roam.registrar.sipmessage import parse_response
from roam.registrar.sipregister import Account, Found, Registered, Unregistered
from tests.registrar.test_sipregister import (
    ALICE,
    CONTACT,
    MOVED,
    answer,
    counter,
    headers_of,
    registration,
)


def test_the_instance_names_the_aor_and_stays() -> None:
    assert instance_for("sip:alice@roam.test") == instance_for("sip:alice@roam.test")
    assert instance_for("sip:alice@roam.test") != instance_for("sip:bob@roam.test")
    assert instance_for("sip:alice@roam.test").startswith("urn:uuid:")


# --- Moving: the old contact goes ------------------------------------------------------


def test_a_move_removes_the_old_contact_in_the_same_register() -> None:
    reg = registration(expires_s=600)
    first = reg.register(CONTACT, 0.0)
    reg.receive(parse_response(answer(first, 200, "OK")), 0)
    moved = reg.register(MOVED, 10.0)
    contacts = headers_of(moved)["Contact"]
    # The removal first, without the instance, so that a registrar keying
    # bindings by instance cannot take it for the new binding.
    assert contacts[0] == f"<{CONTACT}>;expires=0"
    assert contacts[1].startswith(f'<{MOVED}>;+sip.instance="<urn:uuid:')
    assert contacts[1].endswith(";expires=600")
    event = reg.receive(parse_response(answer(moved, 200, "OK", f"Contact: <{MOVED}>;expires=600")),
                        10)
    assert isinstance(event, Registered)
    assert event.contact == MOVED
    # Once confirmed, the next refresh carries no removal.
    assert headers_of(reg.register(MOVED, 20.0))["Contact"] == [contacts[1]]


def test_a_move_before_the_answer_removes_both_older_contacts() -> None:
    reg = registration()
    reg.register(CONTACT, 0.0)
    reg.register("sip:alice@198.18.3.3:7000", 0.0)  # unanswered
    contacts = headers_of(reg.register(MOVED, 0.0))["Contact"]
    assert contacts[:2] == [f"<{CONTACT}>;expires=0", "<sip:alice@198.18.3.3:7000>;expires=0"]


def test_unregister_removes_ours_or_everything() -> None:
    reg = registration()
    first = reg.register(CONTACT, 0.0)
    reg.receive(parse_response(answer(first, 200, "OK")), 0)
    data = reg.unregister(1.0)
    assert headers_of(data)["Contact"] == [f"<{CONTACT}>;expires=0"]
    assert headers_of(data)["Expires"] == ["0"]
    event = reg.receive(parse_response(answer(data, 200, "OK")), 1)
    assert isinstance(event, Unregistered)
    assert reg.contact is None
    assert reg.refresh_at is None
    everything = reg.unregister(2.0, everything=True)
    assert headers_of(everything)["Contact"] == ["*"]  # RFC 3261 section 10.2.2
    assert headers_of(everything)["Expires"] == ["0"]
    with pytest.raises(ConfigError, match="nothing to unregister"):
        registration().unregister(0.0)


# --- Lookup ---------------------------------------------------------------------------


def test_a_lookup_is_a_register_without_contact() -> None:
    lookup = Lookup(Account("sip:bob@roam.test", "bobpw"), transport="tcp", random=counter())
    lookup.sent_by = ("127.0.0.1", 5071)
    data = lookup.query("sip:alice@roam.test", 0.0)
    h = headers_of(data)
    assert "Contact" not in h
    assert "Expires" not in h
    assert h["To"] == ["<sip:alice@roam.test>"]
    assert h["From"][0].startswith("<sip:bob@roam.test>;tag=")
    ok = answer(data, 200, "OK", f"Contact: <{CONTACT}>;expires=30, <{MOVED}>;expires=90")
    found = lookup.receive(parse_response(ok), 0)
    assert isinstance(found, Found)
    assert found.aor == "sip:alice@roam.test"
    assert [(b.uri, b.expires_s) for b in found.bindings] == [(CONTACT, 30), (MOVED, 90)]
    assert found.bindings[0].sip_uri().address() == ("198.18.1.2", 7000)
    assert found.bindings[0].sip_uri().transport == "tcp"


def test_a_lookup_of_nobody_finds_nothing() -> None:
    lookup = Lookup(ALICE, transport="udp", random=counter())
    data = lookup.query("sip:nobody@roam.test", 0.0)
    found = lookup.receive(parse_response(answer(data, 200, "OK")), 0)
    assert found == Found("sip:nobody@roam.test", ())
