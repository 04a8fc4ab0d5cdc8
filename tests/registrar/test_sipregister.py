"""roam.registrar.sipregister: REGISTERs as written, challenges answered,
intervals raised, answers told apart, refusals named, and bad local input
named."""

from __future__ import annotations

import hashlib
import itertools
from collections.abc import Callable

import pytest

from roam.errors import ConfigError
from roam.registrar.sipbindings import Lookup, Registration, instance_for
from roam.registrar.sipmessage import Response, parse_contact, parse_response
from roam.registrar.sipregister import (
    Account,
    Ignored,
    Provisional,
    Refused,
    Registered,
    Send,
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


# --- Accounts and local input ------------------------------------------------------------


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
