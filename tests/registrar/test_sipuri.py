"""roam.registrar.sipuri: SIP URIs read and written back, and every bad one
named."""

from __future__ import annotations

import pytest

from roam.registrar.sipsyntax import SipError
from roam.registrar.sipuri import contact_uri, parse_uri


def test_uris_are_read_and_written_back() -> None:
    uri = parse_uri("sip:alice@[2001:db8::1]:7000;transport=TCP;lr")
    assert (uri.user, uri.host, uri.port) == ("alice", "[2001:db8::1]", 7000)
    assert uri.transport == "tcp"
    assert uri.address() == ("2001:db8::1", 7000)
    assert str(uri) == "sip:alice@[2001:db8::1]:7000;transport=TCP;lr"
    assert parse_uri("sips:example.net").address() == ("example.net", 5061)
    assert parse_uri("sip:example.net").address() == ("example.net", 5060)
    assert contact_uri("alice", "::1", 7000) == "sip:alice@[::1]:7000;transport=tcp"


@pytest.mark.parametrize(("text", "problem"), [
    ("alice@example.net", "no scheme"), ("tel:+123", "is not sip or sips"),
    ("sip:a@-bad-.example", "bad host"), ("sip:a@host:99999", "is not 1 to 65535"),
    ("sip:a@host:0", "is not 1 to 65535"), ("sip:a@[zz::1]", "bad IPv6"),
    ("sip:a b@host", "bad user"), ("sip:a@host;=x", "bad parameter name"),
])
def test_bad_uris_are_named(text: str, problem: str) -> None:
    with pytest.raises(SipError, match=problem):
        parse_uri(text)
