"""roam.registrar.sipmessage: responses as read, a stream cut into messages,
and every malformed input named."""

from __future__ import annotations

import pytest

from roam.registrar.sipmessage import MAX_HEADERS, MAX_MESSAGE, MessageStream, parse_response
from roam.registrar.sipsyntax import SipError
from tests.registrar.test_sipregister import CONTACT, answer, registration

# --- Responses as read -----------------------------------------------------------------


KAMAILIO_200 = (
    b"SIP/2.0 200 OK\r\n"
    b"v: SIP/2.0/UDP 127.0.0.1:5070;rport=5070;branch=z9hG4bKabc;received=127.0.0.1\r\n"
    b"f: <sip:alice@roam.test>;tag=1\r\n"
    b"t: <sip:alice@roam.test>;tag=2\r\n"
    b"i: call-1\r\n"
    b"CSeq: 3 REGISTER\r\n"
    b"m: <sip:alice@198.18.1.2:7000;transport=tcp>;expires=120;+sip.instance=\"<urn:uuid:1>\";"
    b"pub-gruu=\"sip:alice@roam.test;gr=urn:uuid:1\", \"Alice, mobile\" <sip:a@1.2.3.4>\r\n"
    b"Contact: sip:alice@[2001:db8::1]:7000;expires=60\r\n"
    b"Contact:\r\n <sip:alice@198.18.9.9>\r\n\t;expires=5\r\n"
    b"Server: roam-kamailio\r\n"
    b"l: 4\r\n\r\nbodyEXTRA"
)


def test_compact_forms_folding_and_lists_are_read() -> None:
    r = parse_response(KAMAILIO_200)
    assert (r.status, r.reason) == (200, "OK")
    assert r.call_id == "call-1"
    assert r.cseq() == (3, "REGISTER")
    assert r.branch() == "z9hG4bKabc"
    assert r.body == b"body"  # Content-Length (l) cuts the rest (RFC 3261 section 18.3)
    contacts = r.contacts()
    assert [c.uri for c in contacts] == [
        "sip:alice@198.18.1.2:7000;transport=tcp", "sip:a@1.2.3.4",
        "sip:alice@[2001:db8::1]:7000", "sip:alice@198.18.9.9"]
    assert [c.expires_s for c in contacts] == [120, None, 60, 5]
    assert contacts[0].instance == "urn:uuid:1"
    assert dict(contacts[0].params)["pub-gruu"] == "sip:alice@roam.test;gr=urn:uuid:1"
    assert contacts[2].sip_uri().address() == ("2001:db8::1", 7000)


# --- Streams ----------------------------------------------------------------------------


def test_a_stream_is_cut_into_messages_however_it_arrives() -> None:
    one = answer(registration().register(CONTACT, 0), 200, "OK")
    two = KAMAILIO_200.replace(b"l: 4\r\n\r\nbodyEXTRA", b"l: 4\r\n\r\nbody")
    stream = b"\r\n\r\n" + one + b"\r\n" + two  # keep-alive CRLFs between
    for size in (1, 7, len(stream)):
        s = MessageStream()
        got = [m for i in range(0, len(stream), size) for m in s.feed(stream[i:i + size])]
        assert got == [one, two]
        assert s.held == 0


def test_a_stream_needs_content_length_and_a_bound() -> None:
    with pytest.raises(SipError, match="without Content-Length"):
        MessageStream().feed(b"SIP/2.0 200 OK\r\nCall-ID: x\r\n\r\n")
    with pytest.raises(SipError, match="no end of header section"):
        MessageStream().feed(b"SIP/2.0 200 OK\r\nX: " + b"a" * MAX_MESSAGE)
    with pytest.raises(SipError, match="at most 65536"):
        MessageStream().feed(b"SIP/2.0 200 OK\r\nContent-Length: 70000\r\n\r\n")


# --- Every malformed input named ---------------------------------------------------------


GOOD_HEAD = b"SIP/2.0 200 OK\r\nVia: SIP/2.0/UDP h;branch=z9hG4bK1\r\nCSeq: 1 REGISTER\r\n"


@pytest.mark.parametrize(("data", "problem"), [
    (b"SIP/2.0 200 OK\r\n" + b"X: y\r\n" * (MAX_HEADERS + 1) + b"\r\n", "more than 128 header"),
    (b"SIP/2.0 200 OK\r\nX: " + b"a" * MAX_MESSAGE + b"\r\n\r\n", "at most 65536"),
    (b"SIP/2.0 200 OK\r\nCall-ID: x\r\n", "does not end"),
    (b"HTTP/1.1 200 OK\r\n\r\n", "is not 'SIP/2.0 CODE REASON'"),
    (b"SIP/2.0 99 Low\r\n\r\n", "is not 'SIP/2.0 CODE REASON'"),
    (b"SIP/2.0 700 High\r\n\r\n", "is not 'SIP/2.0 CODE REASON'"),
    (b"REGISTER sip:roam.test SIP/2.0\r\n\r\n", "a request"),
    (b"SIP/2.0 200 OK\r\nContent-Length: 5\r\n\r\nab", "Content-Length 5 but 2"),
    (b"SIP/2.0 200 OK\r\nContent-Length: x\r\n\r\n", "not a number of seconds"),
    (b"SIP/2.0 200 \xff\r\n\r\n", "not UTF-8"),
    (b"SIP/2.0 200 OK\r\nX: a\x00b\r\n\r\n", "control character"),
    (b"SIP/2.0 200 OK\r\n continued\r\n\r\n", "continuation line before"),
    (b"SIP/2.0 200 OK\r\nNo colon\r\n\r\n", "is not 'Name: value'"),
    (b"SIP/2.0 200 OK\r\nBad Name: v\r\n\r\n", "is not 'Name: value'"),
])
def test_malformed_responses_are_named(data: bytes, problem: str) -> None:
    with pytest.raises(SipError, match=problem):
        parse_response(data)


@pytest.mark.parametrize(("header", "call", "problem"), [
    ("Contact: <sip:a@b", "contacts", "'<' is not closed"),
    ("Contact: *", "contacts", "only removes bindings"),
    ("Contact: <sip:a@b>;expires=soon", "contacts", "not a number of seconds"),
    ("Contact: <sip:a@b>junk", "contacts", "is not a parameter"),
    ("Contact: <sip:a@b>;x=\"open", "contacts", "quoted string does not end"),
    ("Contact: <nota uri>", "contacts", "is not a URI"),
    ("Contact: " + ", ".join(["<sip:a@b>"] * 65), "contacts", "at most 64"),
    ('WWW-Authenticate: Digest realm="r"', "challenges", "without realm or nonce"),
    ('WWW-Authenticate: Digest realm="r", nonce="n", nonce="m"', "challenges", "given twice"),
    ('WWW-Authenticate: Digest realm', "challenges", "is not name=value"),
    ("Expires: forever", "expires", "not a number of seconds"),
])
def test_malformed_headers_are_named_when_read(header: str, call: str, problem: str) -> None:
    response = parse_response(GOOD_HEAD + header.encode() + b"\r\n\r\n")
    with pytest.raises(SipError, match=problem):
        getattr(response, call)()


@pytest.mark.parametrize(("cseq", "problem"), [
    ("x REGISTER", "is not 'NUMBER METHOD'"), ("2147483648 REGISTER", "is not 'NUMBER METHOD'"),
])
def test_bad_cseq_is_named(cseq: str, problem: str) -> None:
    r = parse_response(f"SIP/2.0 200 OK\r\nCSeq: {cseq}\r\n\r\n".encode())
    with pytest.raises(SipError, match=problem):
        r.cseq()


def test_a_response_without_via_or_cseq_is_named() -> None:
    r = parse_response(b"SIP/2.0 200 OK\r\n\r\n")
    with pytest.raises(SipError, match="without Via"):
        r.branch()
    with pytest.raises(SipError, match="without CSeq"):
        r.cseq()
    reg = registration()
    reg.register(CONTACT, 0.0)
    with pytest.raises(SipError, match="without Via"):
        reg.receive(r, 0.0)
