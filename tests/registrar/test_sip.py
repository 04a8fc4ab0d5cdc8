"""The SIP message module: REGISTERs as written, responses as read, digest
answers against the RFCs' worked examples, and every malformed input named."""

from __future__ import annotations

import hashlib
import itertools
from collections.abc import Callable
from typing import Any

import pytest

from roam.errors import ConfigError, ProtocolError
from roam.registrar.sip import (
    MAX_HEADERS,
    MAX_MESSAGE,
    Account,
    Challenge,
    Found,
    Ignored,
    Lookup,
    MessageStream,
    Provisional,
    Refused,
    Registered,
    Registration,
    Response,
    Send,
    SipError,
    Unregistered,
    authorization,
    choose_challenge,
    contact_uri,
    digest_response,
    instance_for,
    parse_challenge,
    parse_contact,
    parse_response,
    parse_uri,
)

ALICE = Account("sip:alice@roam.test", "alicepw")
CONTACT = "sip:alice@198.18.1.2:7000;transport=tcp"
MOVED = "sip:alice@198.18.2.9:7000;transport=tcp"


def counter() -> Callable[[int], bytes]:
    """Deterministic 'random' bytes: 00 01 02 ..., so requests are repeatable."""
    numbers = itertools.count()
    return lambda n: bytes(next(numbers) % 256 for _ in range(n))


def headers_of(request: bytes) -> dict[str, list[str]]:
    lines = request.decode().split("\r\n")
    out: dict[str, list[str]] = {}
    for line in lines[1:]:
        if not line:
            break
        name, _, value = line.partition(": ")
        out.setdefault(name, []).append(value)
    return out


def answer(request: bytes, status: int, reason: str, *extra: str) -> bytes:
    """The registrar's response to `request`: its Via, From, To, Call-ID and
    CSeq copied (RFC 3261 section 8.2.6.2), `extra` header lines added."""
    h = headers_of(request)
    lines = [f"SIP/2.0 {status} {reason}", f"Via: {h['Via'][0]};received=127.0.0.1",
             f"From: {h['From'][0]}", f"To: {h['To'][0]};tag=reg", f"Call-ID: {h['Call-ID'][0]}",
             f"CSeq: {h['CSeq'][0]}", *extra, "Content-Length: 0", "", ""]
    return "\r\n".join(lines).encode()


def challenge_line(nonce: str = "n1", *, algorithm: str = "MD5", stale: bool = False) -> str:
    line = f'WWW-Authenticate: Digest realm="roam.test", nonce="{nonce}", qop="auth", ' \
           f"algorithm={algorithm}"
    return line + (", stale=true" if stale else "")


def auth_params(request: bytes) -> dict[str, str]:
    value = headers_of(request)["Authorization"][0].removeprefix("Digest ")
    params = {}
    for item in value.split(", "):
        name, _, raw = item.partition("=")
        params[name] = raw.strip('"')
    return params


def registration(expires_s: int = 600) -> Registration:
    reg = Registration(ALICE, transport="udp", random=counter(), expires_s=expires_s)
    reg.sent_by = ("127.0.0.1", 5070)
    return reg


# --- REGISTER as written -----------------------------------------------------------


def test_a_register_has_every_header_rfc_3261_asks_for() -> None:
    data = registration(expires_s=300).register(CONTACT, 0.0)
    text = data.decode()
    assert text.startswith("REGISTER sip:roam.test SIP/2.0\r\n")  # no user part (10.2)
    assert text.endswith("\r\nContent-Length: 0\r\n\r\n")
    h = headers_of(data)
    via = h["Via"][0]
    assert via.startswith("SIP/2.0/UDP 127.0.0.1:5070;rport;branch=z9hG4bK")
    assert h["Max-Forwards"] == ["70"]
    assert h["From"][0].startswith("<sip:alice@roam.test>;tag=")
    assert h["To"] == ["<sip:alice@roam.test>"]
    assert h["CSeq"] == ["1 REGISTER"]
    assert h["Expires"] == ["300"]
    instance = instance_for("sip:alice@roam.test")
    assert h["Contact"] == [f'<{CONTACT}>;+sip.instance="<{instance}>";expires=300']
    assert "Authorization" not in h
    # The random bytes went where they belong, as hex.
    assert h["Call-ID"] == [bytes(range(16)).hex()]
    assert h["From"][0].endswith(";tag=" + bytes(range(16, 24)).hex())
    assert via.endswith("branch=z9hG4bK" + bytes(range(24, 36)).hex())


def test_the_instance_names_the_aor_and_stays() -> None:
    assert instance_for("sip:alice@roam.test") == instance_for("sip:alice@roam.test")
    assert instance_for("sip:alice@roam.test") != instance_for("sip:bob@roam.test")
    assert instance_for("sip:alice@roam.test").startswith("urn:uuid:")


def test_refreshes_keep_the_call_id_and_raise_the_cseq() -> None:
    reg = registration()
    first = headers_of(reg.register(CONTACT, 0.0))
    second = headers_of(reg.register(CONTACT, 1.0))
    assert first["Call-ID"] == second["Call-ID"]
    assert first["From"] == second["From"]  # the same tag
    assert first["CSeq"] == ["1 REGISTER"]
    assert second["CSeq"] == ["2 REGISTER"]
    assert first["Via"] != second["Via"]  # a new branch: a new transaction


def test_ipv6_sent_by_gets_brackets() -> None:
    reg = Registration(ALICE, transport="tcp", random=counter())
    reg.sent_by = ("::1", 5070)
    assert "Via: SIP/2.0/TCP [::1]:5070;rport;branch=" in reg.register(CONTACT, 0.0).decode()


# --- Registration: challenge, 200, refresh -------------------------------------------


def test_a_challenge_is_answered_once_then_registered() -> None:
    reg = registration(expires_s=600)
    first = reg.register(CONTACT, 0.0)
    event = reg.receive(parse_response(answer(first, 401, "Unauthorized", challenge_line())), 0.0)
    assert isinstance(event, Send)
    second = event.data
    h = headers_of(second)
    assert h["CSeq"] == ["2 REGISTER"]
    assert h["Call-ID"] == headers_of(first)["Call-ID"]
    params = auth_params(second)
    assert params["username"] == "alice"
    assert params["realm"] == "roam.test"
    assert params["uri"] == "sip:roam.test"
    assert params["qop"] == "auth"
    assert params["nc"] == "00000001"
    assert params["algorithm"] == "MD5"
    # The response computed here independently (RFC 2617 section 3.2.2.1).
    ha1 = hashlib.md5(b"alice:roam.test:alicepw").hexdigest()
    ha2 = hashlib.md5(b"REGISTER:sip:roam.test").hexdigest()
    expected = hashlib.md5(f"{ha1}:n1:00000001:{params['cnonce']}:auth:{ha2}".encode())
    assert params["response"] == expected.hexdigest()

    ok = answer(second, 200, "OK", f"Contact: <{CONTACT}>;expires=540;+sip.instance="
                                   f'"<{reg.instance}>"', "Expires: 600")
    event = reg.receive(parse_response(ok), 100.0)
    assert isinstance(event, Registered)
    assert event.contact == CONTACT
    assert event.expires_s == 540  # the contact's own expiry wins (10.2.4)
    assert len(event.bindings) == 1
    assert reg.contact == CONTACT
    assert reg.expires_at == 640.0
    assert reg.refresh_at == 370.0  # at half the granted time
    assert not reg.pending


def test_a_refresh_answers_the_cached_nonce_with_a_higher_count() -> None:
    reg = registration()
    first = reg.register(CONTACT, 0.0)
    event = reg.receive(parse_response(answer(first, 401, "Unauthorized", challenge_line())), 0)
    assert isinstance(event, Send)
    reg.receive(parse_response(answer(event.data, 200, "OK", f"Contact: <{CONTACT}>;expires=60")),
                0)
    refresh = reg.register(CONTACT, 30.0)
    params = auth_params(refresh)
    assert params["nonce"] == "n1"
    assert params["nc"] == "00000002"


def test_a_second_challenge_after_an_answer_is_a_wrong_password() -> None:
    reg = registration()
    first = reg.register(CONTACT, 0.0)
    event = reg.receive(parse_response(answer(first, 401, "Unauthorized", challenge_line())), 0)
    assert isinstance(event, Send)
    again = answer(event.data, 401, "Unauthorized", challenge_line("n2"))
    refused = reg.receive(parse_response(again), 0)
    assert isinstance(refused, Refused)
    assert refused.status == 401
    assert "wrong password or unknown user 'alice' in realm 'roam.test'" in str(refused)


def test_a_stale_nonce_is_answered_again() -> None:
    reg = registration()
    first = reg.register(CONTACT, 0.0)
    event = reg.receive(parse_response(answer(first, 401, "Unauthorized", challenge_line())), 0)
    assert isinstance(event, Send)
    stale = answer(event.data, 401, "Unauthorized", challenge_line("n2", stale=True))
    event = reg.receive(parse_response(stale), 0)
    assert isinstance(event, Send)
    assert auth_params(event.data)["nonce"] == "n2"
    assert auth_params(event.data)["nc"] == "00000001"


def test_a_preemptive_answer_refused_gets_one_fresh_answer() -> None:
    # The cached nonce may be one the registrar forgot (it restarted): its
    # 401 is answered once before the password is called wrong.
    reg = registration()
    first = reg.register(CONTACT, 0.0)
    event = reg.receive(parse_response(answer(first, 401, "Unauthorized", challenge_line())), 0)
    assert isinstance(event, Send)
    reg.receive(parse_response(answer(event.data, 200, "OK")), 0)
    refresh = reg.register(CONTACT, 30.0)
    assert "Authorization" in headers_of(refresh)
    event = reg.receive(parse_response(answer(refresh, 401, "Unauthorized",
                                              challenge_line("fresh"))), 30)
    assert isinstance(event, Send)
    assert auth_params(event.data)["nonce"] == "fresh"


def test_sha256_is_taken_over_md5_wherever_it_is_offered() -> None:
    reg = registration()
    first = reg.register(CONTACT, 0.0)
    response = answer(first, 401, "Unauthorized", challenge_line("m", algorithm="MD5"),
                      challenge_line("s", algorithm="SHA-256"))
    event = reg.receive(parse_response(response), 0)
    assert isinstance(event, Send)
    params = auth_params(event.data)
    assert params["algorithm"] == "SHA-256"
    assert params["nonce"] == "s"
    assert len(params["response"]) == 64


def test_a_challenge_without_a_usable_digest_is_refused_by_name() -> None:
    reg = registration()
    first = reg.register(CONTACT, 0.0)
    response = answer(first, 401, "Unauthorized", challenge_line(algorithm="SHA-512-256"),
                      'WWW-Authenticate: Bearer realm="x"')
    refused = reg.receive(parse_response(response), 0)
    assert isinstance(refused, Refused)
    assert "offered: SHA-512-256" in refused.detail


def test_proxy_authenticate_is_answered_in_proxy_authorization() -> None:
    reg = registration()
    first = reg.register(CONTACT, 0.0)
    line = challenge_line().replace("WWW-Authenticate", "Proxy-Authenticate")
    event = reg.receive(parse_response(answer(first, 407, "Proxy Authentication Required",
                                              line)), 0)
    assert isinstance(event, Send)
    assert "Proxy-Authorization" in headers_of(event.data)


def test_interval_too_brief_asks_again_with_min_expires_and_keeps_it() -> None:
    reg = registration(expires_s=10)
    first = reg.register(CONTACT, 0.0)
    event = reg.receive(parse_response(answer(first, 423, "Interval Too Brief",
                                              "Min-Expires: 60")), 0)
    assert isinstance(event, Send)
    h = headers_of(event.data)
    assert h["Expires"] == ["60"]
    assert h["Contact"][0].endswith(";expires=60")
    # Refreshes ask for what the registrar accepts.
    assert headers_of(reg.register(CONTACT, 1.0))["Expires"] == ["60"]


def test_a_second_interval_too_brief_is_refused() -> None:
    reg = registration(expires_s=10)
    first = reg.register(CONTACT, 0.0)
    event = reg.receive(parse_response(answer(first, 423, "Interval Too Brief",
                                              "Min-Expires: 60")), 0)
    assert isinstance(event, Send)
    refused = reg.receive(parse_response(answer(event.data, 423, "Interval Too Brief",
                                                "Min-Expires: 600")), 0)
    assert isinstance(refused, Refused)
    assert refused.status == 423


def test_other_transactions_and_provisionals_are_told_apart() -> None:
    reg = registration()
    first = reg.register(CONTACT, 0.0)
    assert isinstance(reg.receive(parse_response(answer(first, 100, "Trying")), 0), Provisional)
    other = answer(first, 200, "OK").replace(b"branch=z9hG4bK", b"branch=z9hG4bKx")
    assert isinstance(reg.receive(parse_response(other), 0), Ignored)
    late_cseq = answer(first, 200, "OK").replace(b"CSeq: 1 ", b"CSeq: 7 ")
    assert isinstance(reg.receive(parse_response(late_cseq), 0), Ignored)
    assert isinstance(reg.receive(parse_response(answer(first, 200, "OK")), 0), Registered)
    # The same 200 again (a retransmission) answers nothing now.
    assert isinstance(reg.receive(parse_response(answer(first, 200, "OK")), 0), Ignored)


def test_a_refusal_names_the_status() -> None:
    reg = registration()
    first = reg.register(CONTACT, 0.0)
    refused = reg.receive(parse_response(answer(first, 403, "Forbidden")), 0)
    assert isinstance(refused, Refused)
    assert str(refused) == "403 Forbidden (the registrar forbids this to account 'alice')"


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


def test_rfc_7616_challenges_are_read() -> None:
    # RFC 7616 section 3.9.1: the two challenges of its example.
    sha = parse_challenge('Digest realm="http-auth@example.org", qop="auth, auth-int", '
                          'algorithm=SHA-256, nonce="7ypf/xlj9XXwfDPEoM4URrv/xwf94BcCAzFZH4GiTo0v",'
                          ' opaque="FQhe/qaU925kfnzjCev0ciny7QMkPqMAFRtzCUYo5tdS"')
    md5 = parse_challenge('Digest realm="http-auth@example.org", qop="auth, auth-int", '
                          'algorithm=MD5, nonce="7ypf/xlj9XXwfDPEoM4URrv/xwf94BcCAzFZH4GiTo0v", '
                          'opaque="FQhe/qaU925kfnzjCev0ciny7QMkPqMAFRtzCUYo5tdS"')
    assert sha is not None
    assert md5 is not None
    assert sha.qop == ("auth", "auth-int")
    assert sha.opaque == "FQhe/qaU925kfnzjCev0ciny7QMkPqMAFRtzCUYo5tdS"
    assert choose_challenge([md5, sha]) is sha
    assert parse_challenge('Basic realm="x"') is None
    stale = parse_challenge('digest REALM="a\\"b", nonce=abc, stale=TRUE')
    assert stale == Challenge('a"b', "abc", "MD5", (), None, True)


# --- Digest against the RFCs' examples -------------------------------------------------


def test_rfc_2617_section_3_5_example() -> None:
    assert digest_response(
        algorithm="MD5", username="Mufasa", password="Circle Of Life",
        realm="testrealm@host.com", nonce="dcd98b7102dd2f0e8b11d0f600bfb0c093",
        method="GET", uri="/dir/index.html", qop="auth", nc=1, cnonce="0a4f113b",
    ) == "6629fae49393a05397450978507c4ef1"


RFC_7616: dict[str, Any] = {"username": "Mufasa", "password": "Circle of Life",
            "realm": "http-auth@example.org",
            "nonce": "7ypf/xlj9XXwfDPEoM4URrv/xwf94BcCAzFZH4GiTo0v",
            "method": "GET", "uri": "/dir/index.html", "qop": "auth", "nc": 1,
            "cnonce": "f2/wE4q74E6zIJEtWaHKaf5wv/H5QzzpXusqGemxURZJ"}


@pytest.mark.parametrize(("algorithm", "expected"), [
    ("MD5", "8ca523f5e9506fed4657c9700eebdbec"),
    ("SHA-256", "753927fa0e85d155564e2e272a28d1802ca10daf4496794697cf8db5856cb6c1"),
])
def test_rfc_7616_section_3_9_1_example(algorithm: str, expected: str) -> None:
    assert digest_response(algorithm=algorithm, **RFC_7616) == expected


def test_rfc_7616_authorization_header() -> None:
    challenge = Challenge("http-auth@example.org", RFC_7616["nonce"], "SHA-256",
                          ("auth", "auth-int"), "FQhe/qaU925kfnzjCev0ciny7QMkPqMAFRtzCUYo5tdS")
    value = authorization(challenge, username="Mufasa", password="Circle of Life",
                          method="GET", uri="/dir/index.html", nc=1,
                          cnonce="f2/wE4q74E6zIJEtWaHKaf5wv/H5QzzpXusqGemxURZJ")
    assert value.startswith('Digest username="Mufasa", realm="http-auth@example.org", ')
    for part in ['uri="/dir/index.html"', "algorithm=SHA-256", "nc=00000001", "qop=auth",
                 'response="753927fa0e85d155564e2e272a28d1802ca10daf4496794697cf8db5856cb6c1"',
                 'opaque="FQhe/qaU925kfnzjCev0ciny7QMkPqMAFRtzCUYo5tdS"',
                 'cnonce="f2/wE4q74E6zIJEtWaHKaf5wv/H5QzzpXusqGemxURZJ"']:
        assert part in value


def test_digest_without_qop_and_sess() -> None:
    # RFC 2069's form, which RFC 2617 section 3.2.2.1 keeps: H(HA1:nonce:HA2).
    ha1 = hashlib.md5(b"u:r:p").hexdigest()
    ha2 = hashlib.md5(b"REGISTER:sip:r").hexdigest()
    assert digest_response(algorithm="MD5", username="u", password="p", realm="r", nonce="n",
                           method="REGISTER", uri="sip:r") == \
        hashlib.md5(f"{ha1}:n:{ha2}".encode()).hexdigest()
    # -sess (RFC 7616 section 3.4.2): HA1 again over nonce and cnonce.
    sess_ha1 = hashlib.sha256(
        f"{hashlib.sha256(b'u:r:p').hexdigest()}:n:c".encode()).hexdigest()
    sha_ha2 = hashlib.sha256(b"REGISTER:sip:r").hexdigest()
    assert digest_response(algorithm="SHA-256-sess", username="u", password="p", realm="r",
                           nonce="n", method="REGISTER", uri="sip:r", qop="auth", nc=2,
                           cnonce="c") == \
        hashlib.sha256(f"{sess_ha1}:n:00000002:c:auth:{sha_ha2}".encode()).hexdigest()
    with pytest.raises(ConfigError, match="not one of"):
        digest_response(algorithm="SHA-1", username="u", password="p", realm="r", nonce="n",
                        method="REGISTER", uri="sip:r")


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


def test_sip_error_is_a_protocol_error() -> None:
    assert issubclass(SipError, ProtocolError)


# --- URIs and accounts --------------------------------------------------------------------


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


@pytest.mark.parametrize(("aor", "password", "problem"), [
    ("alice@roam.test", "pw", "no scheme"),
    ("sip:roam.test", "pw", "must be sip:USER@DOMAIN"),
    ("sip:alice@roam.test:5060", "pw", "must be sip:USER@DOMAIN"),
    ("sip:alice@roam.test", 'p"w', "without quotes"),
    ("sip:alice@roam.test", "", "without quotes"),
])
def test_bad_accounts_are_config_errors(aor: str, password: str, problem: str) -> None:
    with pytest.raises(ConfigError, match=problem):
        Account(aor, password)


def test_bad_local_input_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="not udp or tcp"):
        Registration(ALICE, transport="sctp", random=counter())
    with pytest.raises(ConfigError, match="not 1 to"):
        Registration(ALICE, transport="udp", random=counter(), expires_s=0)
    with pytest.raises(ConfigError, match="contact"):
        registration().register("not a uri", 0.0)
    with pytest.raises(ConfigError, match="gave 3 bytes"):
        Registration(ALICE, transport="udp", random=lambda n: b"abc")
    with pytest.raises(ConfigError, match="peer address-of-record"):
        Lookup(ALICE, transport="udp", random=counter()).query("sip:roam.test", 0.0)
    assert Account("sip:alice@roam.test", "pw", "login").username == "login"
    assert "pw" not in repr(Account("sip:alice@roam.test", "pw"))
    assert isinstance(parse_contact("<sip:a@b>"), object)
    assert Response(200, "OK", ()).first("x") is None
