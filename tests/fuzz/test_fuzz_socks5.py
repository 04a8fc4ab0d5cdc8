"""Fuzz the SOCKS5 parser (greeting, username/password, request, UDP header):
only SocksError escapes, however the bytes are split, and valid input
round-trips."""

from __future__ import annotations

import ipaddress

from hypothesis import given
from hypothesis import strategies as st

from roam.interfaces.socks5 import (
    Command,
    Reply,
    Request,
    Send,
    Socks5Server,
    SocksError,
    encode_reply,
    encode_udp_datagram,
    parse_udp_datagram,
)
from tests.fuzz.conftest import fuzz_settings
from tests.fuzz.mutate import apply_mutations, cut
from tests.fuzz.provider import Provider, built

Creds = tuple[str, str] | None
CREDS: list[Creds] = [None, ("alice", "s3cret"), ("\u00e4" * 127, "p" * 255)]
_LABEL_FIRST = "abcdefghijklmnopqrstuvwxyz0123456789_"
_LABEL_MORE = _LABEL_FIRST + "-"


def label(p: Provider, first: str) -> str:
    # A hyphen neither leads nor ends a label.
    middle = "".join(p.choice(_LABEL_MORE) for _ in range(p.below(12)))
    return p.choice(first) + (middle + p.choice(_LABEL_FIRST) if middle else "")


def dns_name(p: Provider) -> str:
    """A DNS name in normal form (lower case, LDH and '_', the last label
    not a number), which a destination keeps unchanged."""
    labels = [label(p, _LABEL_FIRST) for _ in range(p.below(4))]
    return ".".join([*labels, label(p, "abcdefghijklmnopqrstuvwxyz")])


def host(p: Provider) -> str:
    match p.below(3):
        case 0:
            return str(ipaddress.IPv4Address(p.uint(32)))
        case 1:
            return str(ipaddress.IPv6Address(p.uint(128)))
        case _:
            return dns_name(p)


# Names a person or a program may send that are not plain LDH names:
# mappings (case, full width, ideographic stops), IDNA, numbers that
# resolvers read as IPv4, IPv6 scopes, empty labels, separators.
TRICKY_NAMES = [
    "ExAmple.COM.", "\uff45\uff58.jp", "a\u3002b", "bücher.example", "xn--bcher-kva.example",
    "xn--", "xn--zz.example", "\u00df.example", "a\u0301.example", "\u200d.example",
    "127.1", "0x7f.1", "2130706433", "1.2.3.4.", "fe80::1%eth0", "[::1]", "::ffff:1.2.3.4",
    "a..b", ".a", "-a.example", "a-.example", "_srv._tcp.example", "a b", "a\x00b",
    "\U0001f600.example", "\u0660.example", "a" * 63 + ".example", "a" * 64 + ".example",
]


def address(p: Provider) -> bytes:
    """ATYP | ADDR | PORT with any address type byte and any name bytes."""
    match p.below(5):
        case 0:
            name = p.choice(TRICKY_NAMES).encode()
        case 1:
            name = p.text(30).encode("utf-8", "surrogatepass")
        case 2:
            name = p.blob(40)
        case 3:
            return bytes([p.uint(8)]) + p.blob(20)
        case _:
            return encode_reply(Reply.SUCCEEDED, host(p), p.uint(16))[3:]
    name = name[:255]
    return bytes([3, len(name)]) + name + p.take(2)


def credentials(creds: tuple[str, str]) -> bytes:
    user, password = (c.encode() for c in creds)
    return bytes([1, len(user)]) + user + bytes([len(password)]) + password


Handshake = tuple[Creds, Command, str, int, bytes, bytes]


def opening(p: Provider, creds: Creds) -> bytes:
    """The greeting, and the credentials if the server wants them."""
    wanted = 0 if creds is None else 2
    # Other methods around the one the server wants, in any order.
    methods = [p.uint(8) for _ in range(p.below(4))]
    methods.insert(p.below(len(methods) + 1), wanted)
    data = bytes([5, len(methods), *methods])
    return data if creds is None else data + credentials(creds)


def build_handshake(p: Provider) -> Handshake:
    """(credentials, command, host, port, early data, the client's bytes)."""
    creds = p.choice(CREDS)
    data = opening(p, creds)
    command, where, port = p.choice(list(Command)), host(p), p.uint(16)
    early = p.blob(20)
    data += bytes([5, command, 0]) + encode_reply(Reply.SUCCEEDED, where, port)[3:] + early
    return creds, command, where, port, early, data


def feed(creds: Creds, pieces: list[bytes]) -> tuple[bytes, Request | None]:
    """What the server owes the client, and its Request (with every byte after
    the request as early data, as a driver relays it); SocksError escapes."""
    server = Socks5Server(creds)
    sent = b""
    for i, piece in enumerate(pieces):
        events = server.feed(piece)
        for event in events:
            if isinstance(event, Send):
                sent += event.data
                continue
            assert isinstance(event, Request)
            assert event is events[-1]
            assert server.done
            # Feeding after the Request is a driver bug: the rest is data.
            rest = b"".join(pieces[i + 1:])
            return sent, Request(event.command, event.host, event.port,
                                 event.early_data + rest)
    return sent, None


def only_socks_error(creds: Creds, pieces: list[bytes]) -> None:
    try:
        feed(creds, pieces)
    except SocksError as exc:
        owed = exc.reply
    else:
        return
    # What the driver sends before closing: replies RFC 1928/1929 define.
    assert owed[:1] in (b"", b"\x01", b"\x05")


@fuzz_settings()
@given(built(lambda p: (p.choice(CREDS), cut(p.blob(120), p.blob(8)))))
def test_random_bytes_raise_only_socks_error(case: tuple[Creds, list[bytes]]) -> None:
    only_socks_error(*case)


def build_mutated(p: Provider) -> tuple[Creds, list[bytes]]:
    if p.flag():
        creds, *_, data = build_handshake(p)
    else:
        # A good opening, then a request with any command to an odd address.
        creds = p.choice(CREDS)
        data = opening(p, creds) + bytes([5, p.choice([*Command, p.uint(8)]), 0]) + address(p)
    if p.flag():
        data = apply_mutations(data, p.blob(16))
    # Sometimes the server expects the other authentication method.
    if p.below(4) == 0:
        creds = p.choice(CREDS)
    return creds, cut(data, p.blob(8))


@fuzz_settings()
@given(built(build_mutated, max_size=500))
def test_mutated_handshakes_raise_only_socks_error(case: tuple[Creds, list[bytes]]) -> None:
    only_socks_error(*case)


@fuzz_settings(0.5)
@given(built(lambda p: (build_handshake(p), p.blob(8)), max_size=500))
def test_valid_handshakes_round_trip(case: tuple[Handshake, bytes]) -> None:
    (creds, command, where, port, early, data), cuts = case
    sent, request = feed(creds, cut(data, cuts))
    assert sent == (b"\x05\x00" if creds is None else b"\x05\x02\x01\x00")
    assert request == Request(command, where, port, early)


@fuzz_settings()
@given(built(lambda p: p.choice([
    p.blob(120),
    b"\x00\x00\x00" + address(p) + p.blob(30),
    apply_mutations(encode_udp_datagram(host(p), p.uint(16), p.blob(30)), p.blob(16)),
])))
def test_udp_headers_raise_only_socks_error(datagram: bytes) -> None:
    try:
        parsed = parse_udp_datagram(datagram)
    except SocksError as exc:
        owed = exc.reply
    else:
        assert datagram.endswith(parsed.payload)
        return
    assert owed == b""  # a datagram is dropped, never answered


@fuzz_settings(0.3)
@given(built(lambda p: (host(p), p.uint(16), p.blob(100))))
def test_udp_datagrams_round_trip(case: tuple[str, int, bytes]) -> None:
    where, port, payload = case
    assert parse_udp_datagram(encode_udp_datagram(where, port, payload)) == (
        0, where, port, payload)


@fuzz_settings(0.1)
@given(st.sampled_from(CREDS), st.lists(st.binary(max_size=40), max_size=6))
def test_drawn_pieces_raise_only_socks_error(creds: Creds, pieces: list[bytes]) -> None:
    # Pieces drawn by Hypothesis itself: it favours short and repeated
    # chunks (b"\x05", b"\x00") that the byte-read builders reach less often.
    only_socks_error(creds, pieces)
