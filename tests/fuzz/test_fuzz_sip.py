"""Fuzz the SIP messages (roam.registrar.sipmessage, sipdigest, sipregister):
any bytes a registrar sends, whole or cut however a stream delivers them,
parse or raise SipError, and a registration in progress turns any answer
into an event or SipError."""

from __future__ import annotations

import contextlib
import itertools

from hypothesis import example, given
from hypothesis import strategies as st

from roam.registrar.sipbindings import Registration
from roam.registrar.sipdigest import parse_challenge
from roam.registrar.sipmessage import MessageStream, Response, parse_contact, parse_response
from roam.registrar.sipregister import Account, Event, Registered, Send
from roam.registrar.sipsyntax import SipError
from roam.registrar.sipuri import parse_uri
from tests.fuzz.conftest import fuzz_settings
from tests.fuzz.mutate import apply_mutations, cut
from tests.fuzz.provider import Provider, built

ACCOUNT = Account("sip:alice@roam.test", "alicepw")
CONTACT = "sip:alice@198.18.1.2:7000;transport=tcp"

HOSTS = ["198.18.1.2", "[2001:db8::1]", "roam.test", "a-b.example.", "[::1]", "-bad", "",
         "1.2.3.4.5", "[zz]", "x" * 70]
PARAMS = [";transport=tcp", ";lr", ";expires=60", ';+sip.instance="<urn:uuid:1>"',
          ";expires=0", ";expires=99999999999999999999999", ";q=0.5", ';x="a,b;c"', ";=",
          ";expires=", ';pub-gruu="sip:a@b;gr=1"', ';y="\\"q\\""', ';z="open']


def uri(p: Provider) -> str:
    scheme = p.choice(["sip:", "sips:", "SIP:", "tel:", "sip", ""])
    user = p.choice(["alice@", "", "a;b@", "a b@", "@", "%41@"])
    port = p.choice(["", ":7000", ":0", ":65536", ":x", ":5060"])
    params = "".join(p.choice(PARAMS) for _ in range(p.below(3)))
    return scheme + user + p.choice(HOSTS) + port + params


def contact_value(p: Provider) -> str:
    match p.below(5):
        case 0:
            return f"<{uri(p)}>" + "".join(p.choice(PARAMS) for _ in range(p.below(4)))
        case 1:
            return f'"Alice, {p.text(4)}" <{uri(p)}>;expires={p.uint(32)}'
        case 2:
            return uri(p)
        case 3:
            return p.choice(["*", "<", ">", '"', "<sip:a@b", "Alice <sip:a@b>"])
        case _:
            return p.text(20)


def challenge_value(p: Provider) -> str:
    params = [p.choice(['realm="roam.test"', 'realm=""', "realm=r"]),
              p.choice(['nonce="n1"', 'nonce=""', "nonce=abc", 'nonce="a\\"b"']),
              p.choice(['qop="auth"', 'qop="auth,auth-int"', 'qop="auth-int"', "qop=auth", ""]),
              p.choice(["algorithm=MD5", "algorithm=SHA-256", "algorithm=SHA-256-sess",
                        "algorithm=SHA-512-256", "algorithm=md5-sess", ""]),
              p.choice(["stale=true", "stale=FALSE", 'opaque="o"', "", "realm=again", "x"])]
    scheme = p.choice(["Digest ", "digest ", "Bearer ", "Digest", ""])
    return scheme + ", ".join(x for x in params if x or p.flag())


def header(p: Provider) -> str:
    """One header line (maybe folded), often one of a REGISTER response's."""
    match p.below(9):
        case 0:
            via = "SIP/2.0/UDP 127.0.0.1:5060;branch=z9hG4bKx"
            return p.choice(["Via: ", "v: "]) + via + p.choice(["", ";received=1.2.3.4", ";;"])
        case 1:
            return p.choice(["Call-ID: ", "i: "]) + p.choice(["call-1", p.text(10)])
        case 2:
            return "CSeq: " + p.choice(["1 REGISTER", f"{p.uint(32)} REGISTER", "x", "1 ",
                                        "2 INVITE"])
        case 3:
            return p.choice(["Contact: ", "m: ", "contact:"]) + ", ".join(
                contact_value(p) for _ in range(1 + p.below(3)))
        case 4:
            return p.choice(["WWW-Authenticate: ", "Proxy-Authenticate: "]) + challenge_value(p)
        case 5:
            return p.choice(["Expires: ", "Min-Expires: "]) + p.choice(
                [str(p.uint(32)), "60", "x", "", "0"])
        case 6:
            # A folded line: the value goes on after CRLF and white space.
            return f"Contact: <{CONTACT}>\r\n {p.choice([';expires=5', ', <sip:b@c>', ''])}"
        case 7:
            return p.choice(["To: ", "t: ", "From: ", "f: "]) + f"<{uri(p)}>;tag=1"
        case _:
            return p.text(6) + ": " + p.text(12)


def build_response(p: Provider) -> bytes:
    status = p.choice([100, 200, 200, 401, 407, 423, 403, 503, p.uint(16)])
    head = [f"SIP/2.0 {status} {p.choice(['OK', 'Unauthorized', '', p.text(8)])}"]
    head += [header(p) for _ in range(p.below(9))]
    body = p.blob(8)
    if p.below(4):
        head.append(f"{p.choice(['Content-Length', 'l'])}: {len(body)}")
    return ("\r\n".join(head) + "\r\n\r\n").encode("utf-8", "surrogatepass") + body


def read_everything(response: Response) -> None:
    """Every accessor a unit uses; each either answers or raises SipError."""
    for call in (response.cseq, response.branch, response.contacts, response.challenges,
                 response.expires, response.min_expires):
        with contextlib.suppress(SipError):
            call()


def response_input(p: Provider) -> bytes:
    match p.below(3):
        case 0:
            return p.blob(300)
        case 1:
            return build_response(p)
        case _:
            return apply_mutations(build_response(p), p.blob(16))


@fuzz_settings()
@given(built(response_input, max_size=800))
@example(b"SIP/2.0 200 OK\r\nContact: <sip:a@b>;x=\"\\\r\n\r\n")
@example(b"SIP/2.0 401 x\r\nWWW-Authenticate: Digest realm=\"r\", nonce=\"n\", qop=\"\"\r\n\r\n")
def test_any_bytes_parse_or_raise_sip_error(data: bytes) -> None:
    try:
        response = parse_response(data)
    except SipError:
        return
    assert 100 <= response.status <= 699
    read_everything(response)


def build_stream(p: Provider) -> tuple[list[bytes], list[bytes], bool]:
    """(messages, the stream's pieces, whether the stream was mutated)."""
    messages = []
    for _ in range(1 + p.below(3)):
        body = p.blob(6)
        messages.append(f"SIP/2.0 200 OK\r\nCall-ID: {p.below(99)}\r\n"
                        f"Content-Length: {len(body)}\r\n\r\n".encode() + body)
    stream = b"".join(p.choice([b"", b"\r\n", b"\r\n\r\n"]) + m for m in messages)
    mutated = p.flag()
    if mutated:
        stream = apply_mutations(stream, p.blob(12))
    return messages, cut(stream, p.blob(8)), mutated


@fuzz_settings(0.5)
@given(built(build_stream))
def test_a_stream_gives_its_messages_however_cut(case: tuple[list[bytes], list[bytes],
                                                             bool]) -> None:
    messages, pieces, mutated = case
    stream = MessageStream()
    got: list[bytes] = []
    try:
        for piece in pieces:
            got += stream.feed(piece)
    except SipError:
        assert mutated
        return
    if not mutated:
        assert got == messages
        assert stream.held == 0


def new_registration() -> tuple[Registration, bytes]:
    numbers = itertools.count()
    reg = Registration(ACCOUNT, transport="udp", expires_s=60,
                       random=lambda n: bytes(next(numbers) % 256 for _ in range(n)))
    reg.sent_by = ("127.0.0.1", 5070)
    return reg, reg.register(CONTACT, 0.0)


def answer_to(p: Provider, request: bytes) -> bytes:
    """A response to `request` as a registrar might send it: its Via,
    Call-ID and CSeq mostly kept (so it answers the transaction), a status
    a registration meets, challenges, contacts and intervals, sometimes
    mutated."""
    copied = dict(line.split(": ", 1) for line in request.decode().split("\r\n")[1:] if line)
    status = p.choice([100, 180, 200, 200, 401, 401, 407, 423, 423, 403, 500, 100 + p.below(600)])
    lines = [f"SIP/2.0 {status} {p.choice(['OK', 'Unauthorized', 'Interval Too Brief', ''])}"]
    for name in ("Via", "From", "To", "Call-ID", "CSeq"):
        if p.below(12):
            lines.append(f"{name}: {copied[name]}")
    for _ in range(p.below(4)):
        match p.below(4):
            case 0:
                good = (f'Digest realm="roam.test", nonce="n{p.below(3)}", qop="auth", '
                        f"algorithm={p.choice(['MD5', 'SHA-256'])}"
                        + p.choice(["", ", stale=true", ', opaque="o"']))
                lines.append(p.choice(["WWW-Authenticate: ", "Proxy-Authenticate: "])
                             + (good if p.below(3) else challenge_value(p)))
            case 1:
                lines.append(f"Min-Expires: {p.choice([120, 3600, 60, 0, 2**32, p.uint(32)])}")
            case 2:
                lines.append("Contact: " + ", ".join(contact_value(p)
                                                     for _ in range(1 + p.below(2))))
            case _:
                lines.append(f"Contact: <{CONTACT}>;expires={p.uint(32)}")
    data = ("\r\n".join(lines) + "\r\nContent-Length: 0\r\n\r\n").encode()
    return apply_mutations(data, p.blob(8)) if p.below(4) == 0 else data


@fuzz_settings(0.5)
@given(st.binary(max_size=800))
def test_a_registration_turns_any_answer_into_an_event(data: bytes) -> None:
    p = Provider(data)
    reg, request = new_registration()
    for _ in range(1 + p.below(5)):
        try:
            event: Event = reg.receive(parse_response(answer_to(p, request)), 1.0)
        except SipError:
            continue
        if isinstance(event, Send):
            # A challenge answered or an interval raised: the next answer
            # goes to the new request.
            assert event.data.startswith(b"REGISTER sip:roam.test SIP/2.0\r\n")
            assert event.data.endswith(b"\r\nContent-Length: 0\r\n\r\n")
            request = event.data
        elif isinstance(event, Registered):
            assert event.contact == CONTACT
            assert reg.refresh_at is not None


def text_input(p: Provider) -> tuple[int, str]:
    kind = p.below(3)
    match p.below(3):
        case 0:
            text = p.text(40)
        case 1:
            text = [uri, contact_value, challenge_value][kind](p)
        case _:
            base = [uri, contact_value, challenge_value][kind](p).encode()
            text = apply_mutations(base, p.blob(8)).decode("utf-8", "replace")
    return kind, text


@fuzz_settings(0.5)
@given(built(text_input))
def test_uris_contacts_and_challenges_parse_or_raise_sip_error(case: tuple[int, str]) -> None:
    kind, text = case
    with contextlib.suppress(SipError):
        if kind == 0:
            parsed = parse_uri(text)
            # What is read is written back the same way and read the same.
            assert parse_uri(str(parsed)) == parsed
        elif kind == 1:
            binding = parse_contact(text)
            assert binding.expires_s is None or 0 <= binding.expires_s < 2**32
        else:
            parse_challenge(text)
