"""SOCKS5 server handshake, replies and UDP headers: every path, every refusal, fuzzing."""

from __future__ import annotations

import shutil
import socket
import subprocess
import threading
from dataclasses import replace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from roam.errors import CloseCode, ConfigError, ProtocolError
from roam.interfaces.socks5 import (
    Command,
    Event,
    Reply,
    Request,
    Send,
    Socks5Server,
    SocksError,
    UdpDatagram,
    encode_reply,
    encode_udp_datagram,
    parse_udp_datagram,
)

CREDS = ("alice", "s3cret")
GREETING_NOAUTH = bytes.fromhex("05 01 00")
GREETING_USERPASS = bytes.fromhex("05 01 02")
AUTH_OK = b"\x01\x05alice\x06s3cret"
# CONNECT 93.184.216.34:443
CONNECT_V4 = bytes.fromhex("05 01 00 01 5db8d822 01bb")
REFUSE_ALL = b"\x05\xff"


def general_failure() -> bytes:
    return bytes.fromhex("05 01 00 01 00000000 0000")


def feed_all(server: Socks5Server, chunks: list[bytes]) -> tuple[bytes, Request | None]:
    """Everything sent to the client, and the Request if the handshake finished."""
    sent = b""
    request = None
    for chunk in chunks:
        for event in server.feed(chunk):
            assert request is None, "no event may follow the Request"
            if isinstance(event, Send):
                sent += event.data
            else:
                request = event
    return sent, request


def refused(data: bytes, fragment: str, reply: bytes,
            creds: tuple[str, str] | None = None) -> SocksError:
    with pytest.raises(SocksError) as info:
        Socks5Server(creds).feed(data)
    assert fragment in str(info.value)
    assert info.value.reply == reply
    assert isinstance(info.value, ProtocolError)
    return info.value


# Successful handshakes


def test_no_auth_connect_ipv4() -> None:
    server = Socks5Server()
    assert server.feed(GREETING_NOAUTH) == [Send(b"\x05\x00")]
    assert not server.done
    assert server.feed(CONNECT_V4) == [Request(Command.CONNECT, "93.184.216.34", 443)]
    assert server.done


def test_connect_ipv6() -> None:
    request = bytes.fromhex("05 01 00 04") + socket.inet_pton(socket.AF_INET6, "2001:db8::1")
    sent, req = feed_all(Socks5Server(), [GREETING_NOAUTH, request + b"\x00\x50"])
    assert sent == b"\x05\x00"
    assert req == Request(Command.CONNECT, "2001:db8::1", 80)


def test_connect_domain() -> None:
    request = bytes.fromhex("05 01 00 03 0b") + b"example.org" + b"\x1f\x90"
    _, req = feed_all(Socks5Server(), [GREETING_NOAUTH + request])
    assert req == Request(Command.CONNECT, "example.org", 8080)


def domain_request(name: bytes, port: int = 1) -> bytes:
    return bytes([5, 1, 0, 3, len(name)]) + name + port.to_bytes(2, "big")


@pytest.mark.parametrize(("name", "host"), [
    ("Example.ORG.", "example.org"),
    ("B\u00fccher.example", "xn--bcher-kva.example"),
    ("127.0.0.1", "127.0.0.1"),
    ("2001:DB8::1", "2001:db8::1"),
])
def test_connect_domain_is_normalised(name: str, host: str) -> None:
    _, req = feed_all(Socks5Server(), [GREETING_NOAUTH, domain_request(name.encode())])
    assert req == Request(Command.CONNECT, host, 1)


def test_connect_longest_domain_name() -> None:
    name = ".".join(["a" * 63, "b" * 63, "c" * 63, "d" * 61])
    for raw in (name, name + "."):  # 253 octets, and 254 with the root's dot
        _, req = feed_all(Socks5Server(), [GREETING_NOAUTH, domain_request(raw.encode())])
        assert req == Request(Command.CONNECT, name, 1)


HOST_UNREACHABLE = bytes.fromhex("05 04 00 01 00000000 0000")
NAME_255 = ".".join(["a" * 63] * 4)


@pytest.mark.parametrize(("name", "problem"), [
    ("a" * 64 + ".corp.example", "label 1 'aaaaaaaaaaaaaaaaaaaa'... (64 characters) is 64 octets"),
    (NAME_255, "it is 255 octets long; at most 253"),
    ("a" * 255, "is 255 octets long; at most 63"),
    ("\u00fc" * 127 + "x", "longer than 63 octets as an A-label"),
    ("localhost\0.corp.example", "contains '\\x00' (U+0000)"),
    ("exa mple.com", "contains ' ' (U+0020)"),
    ("a..example", "label 2 is empty"),
    ("-a.example", "starts with a hyphen"),
    ("127.1", "is a number"),
], ids=["label-64", "name-255", "label-255", "u-label-255", "nul", "space", "empty-label",
        "hyphen", "number"])
def test_a_domain_that_is_not_a_dns_name_is_host_unreachable(name: str, problem: str) -> None:
    assert len(name.encode()) <= 255
    error = refused(GREETING_NOAUTH + domain_request(name.encode()), problem,
                    b"\x05\x00" + HOST_UNREACHABLE)
    assert error.code is CloseCode.UNREACHABLE
    assert "\0" not in str(error)


def test_udp_associate() -> None:
    request = bytes.fromhex("05 03 00 01 00000000 0000")
    _, req = feed_all(Socks5Server(), [GREETING_NOAUTH, request])
    assert req == Request(Command.UDP_ASSOCIATE, "0.0.0.0", 0)
    assert req.supported


def test_udp_associate_address_is_the_clients_own_and_not_checked() -> None:
    # RFC 1928 section 7: the address the client will send from; PySocks sends "0".
    request = bytes.fromhex("05 03 00 03 01") + b"0" + b"\x9c\x40"
    _, req = feed_all(Socks5Server(), [GREETING_NOAUTH, request])
    assert req == Request(Command.UDP_ASSOCIATE, "0", 40000)


def test_bind_is_reported_as_unsupported() -> None:
    request = bytes.fromhex("05 02 00 01 0a000001 0015")
    _, req = feed_all(Socks5Server(), [GREETING_NOAUTH, request])
    assert req == Request(Command.BIND, "10.0.0.1", 21)
    assert not req.supported
    assert encode_reply(Reply.COMMAND_NOT_SUPPORTED) == bytes.fromhex("05 07 00 01 00000000 0000")


def test_connect_is_supported() -> None:
    _, req = feed_all(Socks5Server(), [GREETING_NOAUTH + CONNECT_V4])
    assert req is not None
    assert req.supported


def test_no_auth_is_picked_among_several_methods() -> None:
    assert Socks5Server().feed(bytes.fromhex("05 03 01 02 00")) == [Send(b"\x05\x00")]


def test_username_password_right() -> None:
    server = Socks5Server(CREDS)
    assert server.feed(bytes.fromhex("05 02 00 02")) == [Send(b"\x05\x02")]
    assert server.feed(AUTH_OK) == [Send(b"\x01\x00")]
    assert server.feed(CONNECT_V4) == [Request(Command.CONNECT, "93.184.216.34", 443)]


def test_whole_pipelined_handshake_in_one_feed() -> None:
    events = Socks5Server(CREDS).feed(GREETING_USERPASS + AUTH_OK + CONNECT_V4 + b"GET /")
    assert events == [Send(b"\x05\x02"), Send(b"\x01\x00"),
                      Request(Command.CONNECT, "93.184.216.34", 443, b"GET /")]


def test_pipelined_application_data_is_kept() -> None:
    server = Socks5Server()
    server.feed(GREETING_NOAUTH)
    (req,) = server.feed(CONNECT_V4 + b"\x00hello\xff")
    assert req == Request(Command.CONNECT, "93.184.216.34", 443, b"\x00hello\xff")


def test_feeding_after_the_request_is_a_driver_bug() -> None:
    server = Socks5Server()
    server.feed(GREETING_NOAUTH + CONNECT_V4)
    with pytest.raises(RuntimeError, match="handshake is done"):
        server.feed(b"more")


def test_feeding_after_a_refusal_is_a_driver_bug() -> None:
    server = Socks5Server()
    with pytest.raises(SocksError):
        server.feed(b"\x04")
    with pytest.raises(RuntimeError, match="handshake is failed"):
        server.feed(GREETING_NOAUTH)


def test_empty_feed_does_nothing() -> None:
    server = Socks5Server()
    assert server.feed(b"") == []
    assert server.feed(GREETING_NOAUTH) == [Send(b"\x05\x00")]
    assert server.feed(b"") == []


# Refusals


def test_username_password_wrong() -> None:
    server = Socks5Server(CREDS)
    server.feed(GREETING_USERPASS)
    with pytest.raises(SocksError, match="authentication failed for user 'alice'") as info:
        server.feed(b"\x01\x05alice\x05wrong")
    assert info.value.reply == b"\x01\x01"
    assert info.value.code is CloseCode.NOT_ALLOWED


@pytest.mark.parametrize("auth", [
    b"\x01\x03bob\x06s3cret",
    b"\x01\x05alice\x07s3cret!",
    b"\x01\x00\x00",
    b"\x01\x05ALICE\x06s3cret",
], ids=["user", "password", "empty", "case"])
def test_wrong_credentials_variants(auth: bytes) -> None:
    refused(GREETING_USERPASS + auth, "authentication failed", b"\x05\x02\x01\x01", CREDS)


def test_wrong_password_pipelined_gets_method_selection_too() -> None:
    # The method selection produced in the same call is owed before the failure status.
    error = refused(GREETING_USERPASS + b"\x01\x05alice\x01x" + CONNECT_V4,
                    "authentication failed", b"\x05\x02\x01\x01", CREDS)
    assert "s3cret" not in str(error)


def test_no_acceptable_method_without_credentials() -> None:
    error = refused(bytes.fromhex("05 02 01 02"), "client offers 0x01, 0x02, roam requires 0x00",
                    REFUSE_ALL)
    assert error.code is CloseCode.NOT_ALLOWED


def test_no_acceptable_method_with_credentials() -> None:
    refused(GREETING_NOAUTH, "client offers 0x00, roam requires 0x02", REFUSE_ALL, CREDS)


def test_zero_methods() -> None:
    refused(b"\x05\x00", "greeting lists no authentication methods", REFUSE_ALL)


def test_socks4() -> None:
    refused(bytes.fromhex("04 01 0050 7f000001 00"),
            "SOCKS version 4 is not supported: roam speaks SOCKS5", b"")


def test_not_socks_at_all() -> None:
    refused(b"GET / HTTP/1.1\r\n", "not a SOCKS5 greeting: version byte 0x47", b"")


def test_wrong_auth_version() -> None:
    refused(GREETING_USERPASS + b"\x05\x05alice\x06s3cret",
            "username/password version 5; RFC 1929 defines only 1", b"\x05\x02\x01\x01", CREDS)


def test_wrong_request_version() -> None:
    refused(GREETING_NOAUTH + b"\x04" + CONNECT_V4[1:], "request has SOCKS version 4; expected 5",
            b"\x05\x00" + general_failure())


@pytest.mark.parametrize("cmd", [0, 4, 0xFF])
def test_unknown_command(cmd: int) -> None:
    request = bytes([5, cmd]) + CONNECT_V4[2:]
    refused(GREETING_NOAUTH + request, f"unknown command {cmd:#04x}",
            b"\x05\x00" + bytes.fromhex("05 07 00 01 00000000 0000"))


def test_unknown_command_is_refused_before_the_rest_arrives() -> None:
    server = Socks5Server()
    server.feed(GREETING_NOAUTH)
    with pytest.raises(SocksError) as info:
        server.feed(b"\x05\x09")
    assert info.value.reply == bytes.fromhex("05 07 00 01 00000000 0000")


def test_nonzero_reserved_byte() -> None:
    refused(GREETING_NOAUTH + b"\x05\x01\x01" + CONNECT_V4[3:],
            "reserved byte of the request is 0x01; must be 0x00", b"\x05\x00" + general_failure())


@pytest.mark.parametrize("atyp", [0, 2, 5, 0xFF])
def test_unknown_address_type(atyp: int) -> None:
    refused(GREETING_NOAUTH + bytes([5, 1, 0, atyp]), f"unknown address type {atyp:#04x}",
            b"\x05\x00" + bytes.fromhex("05 08 00 01 00000000 0000"))


def test_empty_domain_name() -> None:
    refused(GREETING_NOAUTH + bytes.fromhex("05 01 00 03 00 0050"), "domain name of 0 bytes",
            b"\x05\x00" + general_failure())


def test_domain_name_not_utf8() -> None:
    refused(GREETING_NOAUTH + bytes.fromhex("05 01 00 03 02 c328 0050"),
            "domain name is not UTF-8", b"\x05\x00" + general_failure())


@pytest.mark.parametrize("creds", [("", "pw"), ("u", ""), ("u" * 256, "pw"), ("u", "\u00e9" * 128)])
def test_bad_credentials_configuration(creds: tuple[str, str]) -> None:
    with pytest.raises(ConfigError, match="1 to 255 bytes"):
        Socks5Server(creds)


def test_incomplete_handshake_waits() -> None:
    server = Socks5Server(CREDS)
    whole = GREETING_USERPASS + AUTH_OK + CONNECT_V4
    for byte in whole[:-1]:
        server.feed(bytes([byte]))
    assert not server.done
    assert server.feed(whole[-1:]) == [Request(Command.CONNECT, "93.184.216.34", 443)]


# Replies


@pytest.mark.parametrize(("rep", "host", "port", "expected"), [
    (Reply.SUCCEEDED, "127.0.0.1", 1080, "05 00 00 01 7f000001 0438"),
    (Reply.SUCCEEDED, "::1", 443, "05 00 00 04 00000000000000000000000000000001 01bb"),
    (Reply.SUCCEEDED, "relay.example", 53, "05 00 00 03 0d 72656c61792e6578616d706c65 0035"),
    (Reply.GENERAL_FAILURE, "0.0.0.0", 0, "05 01 00 01 00000000 0000"),
    (Reply.NOT_ALLOWED, "0.0.0.0", 0, "05 02 00 01 00000000 0000"),
    (Reply.NETWORK_UNREACHABLE, "0.0.0.0", 0, "05 03 00 01 00000000 0000"),
    (Reply.HOST_UNREACHABLE, "0.0.0.0", 0, "05 04 00 01 00000000 0000"),
    (Reply.CONNECTION_REFUSED, "0.0.0.0", 0, "05 05 00 01 00000000 0000"),
    (Reply.TTL_EXPIRED, "0.0.0.0", 0, "05 06 00 01 00000000 0000"),
    (Reply.COMMAND_NOT_SUPPORTED, "0.0.0.0", 0, "05 07 00 01 00000000 0000"),
    (Reply.ADDRESS_TYPE_NOT_SUPPORTED, "0.0.0.0", 65535, "05 08 00 01 00000000 ffff"),
])
def test_encode_reply(rep: Reply, host: str, port: int, expected: str) -> None:
    assert encode_reply(rep, host, port) == bytes.fromhex(expected)


def test_reply_codes() -> None:
    assert [int(r) for r in Reply] == list(range(9))
    assert encode_reply(Reply.HOST_UNREACHABLE) == encode_reply(Reply.HOST_UNREACHABLE,
                                                                "0.0.0.0", 0)


@pytest.mark.parametrize(("host", "port"), [("0.0.0.0", -1), ("::", 65536), ("", 1),
                                            ("x" * 256, 1)])
def test_encode_reply_refuses_bad_values(host: str, port: int) -> None:
    with pytest.raises(ValueError):  # noqa: PT011
        encode_reply(Reply.SUCCEEDED, host, port)


def test_encode_reply_refuses_unknown_code() -> None:
    with pytest.raises(ValueError):  # noqa: PT011
        encode_reply(9)  # type: ignore[arg-type]


# UDP ASSOCIATE datagram header


@pytest.mark.parametrize(("host", "port", "header"), [
    ("192.0.2.7", 53, "000000 01 c0000207 0035"),
    ("2001:db8::53", 5353, "000000 04 20010db8000000000000000000000053 14e9"),
    ("dns.example", 53, "000000 03 0b 646e732e6578616d706c65 0035"),
])
def test_udp_datagram_layout(host: str, port: int, header: str) -> None:
    datagram = encode_udp_datagram(host, port, b"query")
    assert datagram == bytes.fromhex(header) + b"query"
    assert parse_udp_datagram(datagram) == UdpDatagram(0, host, port, b"query")
    assert parse_udp_datagram(memoryview(datagram)) == (0, host, port, b"query")


def test_udp_datagram_empty_payload_and_longest_name() -> None:
    name = ".".join(["n" * 63, "n" * 63, "n" * 63, "n" * 61])
    assert parse_udp_datagram(encode_udp_datagram(name, 1, b"")) == (0, name, 1, b"")
    with pytest.raises(ValueError, match="domain name of 256 bytes"):
        encode_udp_datagram("n" * 256, 1, b"")


@pytest.mark.parametrize("name", ["n" * 255, "n" * 64, "localhost\0.corp.example", "a b"])
def test_udp_datagram_to_a_name_that_is_not_a_dns_name_is_refused(name: str) -> None:
    with pytest.raises(SocksError, match="is not a valid host name") as info:
        parse_udp_datagram(encode_udp_datagram(name, 53, b"query"))
    assert info.value.reply == b""  # a datagram is dropped, not answered


# Valid DNS names in normal form: LDH-and-underscore labels, the last one not a number.
labels = st.from_regex(r"[a-z0-9_]([a-z0-9_-]{0,20}[a-z0-9_])?", fullmatch=True)
names = st.tuples(st.lists(labels, max_size=4),
                  st.from_regex(r"[a-z]([a-z0-9-]{0,10}[a-z0-9])?", fullmatch=True)).map(
    lambda parts: ".".join([*parts[0], parts[1]]))
hosts = st.one_of(st.ip_addresses().map(str), names)


def _is_ip(text: str) -> bool:
    try:
        socket.inet_pton(socket.AF_INET6 if ":" in text else socket.AF_INET, text)
    except (OSError, ValueError):
        return False
    return True


@settings(max_examples=200, deadline=None)
@given(hosts, st.integers(0, 65535), st.binary(max_size=100))
def test_udp_datagram_round_trip(host: str, port: int, payload: bytes) -> None:
    frag, got_host, got_port, got_payload = parse_udp_datagram(
        encode_udp_datagram(host, port, payload))
    assert (frag, got_port, got_payload) == (0, port, payload)
    assert got_host == host or _is_ip(host)


@pytest.mark.parametrize(("datagram", "fragment"), [
    (b"", "UDP datagram of 0 bytes is shorter than a SOCKS header"),
    (b"\x00\x00\x00", "UDP datagram of 3 bytes is shorter"),
    (bytes.fromhex("000001 01 7f000001 0035") + b"x", "fragmented UDP datagram (FRAG 0x01)"),
    (bytes.fromhex("000080 01 7f000001 0035"), "FRAG 0x80"),
    (bytes.fromhex("000100 01 7f000001 0035"), "reserved bytes of the UDP header are not zero"),
    (bytes.fromhex("000000 01 7f0000"), "UDP datagram of 7 bytes ends inside its SOCKS header"),
    (bytes.fromhex("000000 03 05 6162"), "ends inside its SOCKS header"),
    (bytes.fromhex("000000 03"), "ends inside its SOCKS header"),
    (bytes.fromhex("000000 03 00 0035"), "domain name of 0 bytes"),
    (bytes.fromhex("000000 05 7f000001 0035"), "unknown address type 0x05"),
    (bytes.fromhex("000000 03 01 ff 0035"), "domain name is not UTF-8"),
])
def test_udp_datagram_refusals(datagram: bytes, fragment: str) -> None:
    with pytest.raises(SocksError) as info:
        parse_udp_datagram(datagram)
    assert fragment in str(info.value)
    assert info.value.reply == b""


# Fuzzing


def outcome(creds: tuple[str, str] | None, chunks: list[bytes]) -> tuple[object, ...]:
    """All bytes owed to the client, the Request, and the error (message, code) if any.

    Chunks after the Request go to the application, as a driver would relay
    them: they are appended to the Request's early data.
    """
    server = Socks5Server(creds)
    sent = b""
    try:
        for index, chunk in enumerate(chunks):
            events: list[Event] = server.feed(chunk)
            for event in events:
                if isinstance(event, Send):
                    sent += event.data
                else:
                    assert isinstance(event, Request)
                    assert event is events[-1]
                    assert server.done
                    rest = b"".join(chunks[index + 1:])
                    return sent, replace(event, early_data=event.early_data + rest), None
    except SocksError as exc:  # a ProtocolError; anything else fails the test
        return sent + exc.reply, None, (str(exc), exc.code)
    return sent, None, None


creds_st = st.sampled_from([None, CREDS])


@st.composite
def handshakes(draw: st.DrawFn) -> tuple[tuple[str, str] | None, bytes]:
    creds = draw(creds_st)
    methods = draw(st.lists(st.integers(0, 255), min_size=1, max_size=4))
    methods.append(0 if creds is None else 2)
    data = bytes([5, len(methods)]) + bytes(methods)
    if creds is not None:
        data += AUTH_OK
    host = draw(hosts)
    command = draw(st.sampled_from(Command))
    data += bytes([5, command, 0])
    data += encode_reply(Reply.SUCCEEDED, host, draw(st.integers(0, 65535)))[3:]
    return creds, data + draw(st.binary(max_size=20))


@st.composite
def mutated(draw: st.DrawFn) -> tuple[tuple[str, str] | None, bytes]:
    creds, raw = draw(handshakes())
    data = bytearray(raw)
    for _ in range(draw(st.integers(1, 3))):
        op = draw(st.sampled_from(["flip", "insert", "delete"]))
        if op == "insert":
            data.insert(draw(st.integers(0, len(data))), draw(st.integers(0, 255)))
        elif data and op == "flip":
            data[draw(st.integers(0, len(data) - 1))] ^= draw(st.integers(1, 255))
        elif data:
            del data[draw(st.integers(0, len(data) - 1))]
    return creds, bytes(data)


garbage = st.tuples(creds_st, st.one_of(
    st.binary(max_size=300),
    st.binary(max_size=300).map(lambda b: GREETING_NOAUTH + b),
    st.binary(max_size=300).map(lambda b: GREETING_USERPASS + AUTH_OK + b),
))


@settings(max_examples=400, deadline=None)
@given(st.one_of(garbage, mutated()))
def test_garbage_raises_only_socks_error_whole_or_bytewise(
        case: tuple[tuple[str, str] | None, bytes]) -> None:
    creds, data = case
    whole = outcome(creds, [data])
    bytewise = outcome(creds, [data[i:i + 1] for i in range(len(data))])
    # Fields are checked as soon as they arrive: the split never changes the outcome.
    assert whole == bytewise


@settings(max_examples=200, deadline=None)
@given(handshakes(), st.data())
def test_valid_handshake_in_any_split(case: tuple[tuple[str, str] | None, bytes],
                                      data: st.DataObject) -> None:
    creds, raw = case
    whole = outcome(creds, [raw])
    sent, request, error = whole
    assert error is None
    assert isinstance(request, Request)
    assert sent == (b"\x05\x00" if creds is None else b"\x05\x02\x01\x00")
    cuts = sorted(data.draw(st.lists(st.integers(0, len(raw)), max_size=8)))
    chunks = [raw[a:b] for a, b in zip([0, *cuts], [*cuts, len(raw)], strict=True)]
    assert outcome(creds, chunks) == whole


# An independent client: curl's SOCKS5 implementation


def serve_one(listener: socket.socket, creds: tuple[str, str] | None,
              seen: list[Request | SocksError]) -> None:
    """Act as the driver and as the target: answer one HTTP request through the handshake."""
    conn, _ = listener.accept()
    with conn:
        conn.settimeout(10)
        server = Socks5Server(creds)
        request = None
        try:
            while request is None:
                data = conn.recv(4096)
                if not data:
                    return
                for event in server.feed(data):
                    if isinstance(event, Send):
                        conn.sendall(event.data)
                    else:
                        request = event
        except SocksError as exc:
            seen.append(exc)
            conn.sendall(exc.reply)
            return
        seen.append(request)
        conn.sendall(encode_reply(Reply.SUCCEEDED, "127.0.0.1", 40000))
        head = request.early_data
        while b"\r\n\r\n" not in head:
            more = conn.recv(4096)
            if not more:
                return
            head += more
        conn.sendall(b"HTTP/1.0 200 OK\r\nContent-Length: 5\r\n\r\nhello")


def curl_through(proxy: str, url: str, creds: tuple[str, str] | None,
                 ) -> tuple[subprocess.CompletedProcess[bytes], list[Request | SocksError]]:
    curl = shutil.which("curl")
    assert curl is not None
    seen: list[Request | SocksError] = []
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)
        port = listener.getsockname()[1]
        thread = threading.Thread(target=serve_one, args=(listener, creds, seen), daemon=True)
        thread.start()
        result = subprocess.run(
            [curl, "-sS", "--max-time", "10", "--proxy", proxy.format(port=port), url],
            capture_output=True, timeout=20, check=False)
        thread.join(10)
    return result, seen


needs_curl = pytest.mark.skipif(shutil.which("curl") is None, reason="curl is not installed")


@needs_curl
@pytest.mark.parametrize(("proxy", "url", "creds", "expected"), [
    ("socks5h://127.0.0.1:{port}", "http://service.example:8080/", None,
     Request(Command.CONNECT, "service.example", 8080)),
    ("socks5://127.0.0.1:{port}", "http://127.0.0.1:9/", None,
     Request(Command.CONNECT, "127.0.0.1", 9)),
    ("socks5://127.0.0.1:{port}", "http://[::1]:9/", None, Request(Command.CONNECT, "::1", 9)),
    ("socks5h://alice:s3cret@127.0.0.1:{port}", "http://db.example/", CREDS,
     Request(Command.CONNECT, "db.example", 80)),
], ids=["domain", "ipv4", "ipv6", "userpass"])
def test_curl_connects(proxy: str, url: str, creds: tuple[str, str] | None,
                       expected: Request) -> None:
    result, seen = curl_through(proxy, url, creds)
    assert seen == [expected]
    assert result.returncode == 0, result.stderr
    assert result.stdout == b"hello"


@needs_curl
def test_curl_wrong_password() -> None:
    result, seen = curl_through("socks5h://alice:nope@127.0.0.1:{port}", "http://x.example/",
                                CREDS)
    assert result.returncode != 0
    assert len(seen) == 1
    assert isinstance(seen[0], SocksError)
    assert "authentication failed for user 'alice'" in str(seen[0])
