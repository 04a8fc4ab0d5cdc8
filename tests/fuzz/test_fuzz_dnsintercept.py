"""Fuzz DNS interception: a query is answered, sent upstream or refused with
DnsError, nothing else; every answer parses and carries the query's ID; the
interceptor keeps working; DNS-over-TCP framing raises only DnsError."""

from __future__ import annotations

import struct

import dns.message
import dns.rdatatype
import dns.tsigkeyring
from hypothesis import given

from roam.interfaces.dnsintercept import (
    AddressPool,
    Answer,
    DnsError,
    DnsInterceptor,
    NamePatterns,
    TcpDnsFramer,
    Upstream,
)
from tests.fuzz.conftest import fuzz_settings
from tests.fuzz.mutate import apply_mutations, cut
from tests.fuzz.provider import Provider, built

HEADER = struct.Struct("!HHHHHH")
QUESTION_TAIL = struct.Struct("!HH")
# A small pool, so addresses are reused and handed out again within a run.
INTERCEPTOR = DnsInterceptor(NamePatterns(["*.corp.example", "exact.example"]),
                             AddressPool("127.9.0.0/28"))
AFTER = dns.message.make_query("after.corp.example", "A").to_wire()
NAMES = ["a.corp.example", "A.Corp.Example.", "exact.example", "other.example",
         "x.y.corp.example", "corp.example", "*.corp.example", "xn--bcher-kva.corp.example",
         "_srv._tcp.corp.example", "1.corp.example", "a.corp.example.evil"]
QTYPES = [dns.rdatatype.A, dns.rdatatype.A, dns.rdatatype.AAAA, dns.rdatatype.MX,
          dns.rdatatype.ANY, dns.rdatatype.TXT, dns.rdatatype.OPT, dns.rdatatype.AXFR, 0, 65535]
QCLASSES = [1, 1, 1, 3, 254, 255, 0, 65535]


def wire_name(text: str) -> bytes:
    labels = [label.encode() for label in text.rstrip(".").split(".")]
    return b"".join(bytes([len(label)]) + label for label in labels) + b"\x00"


def qname(p: Provider) -> bytes:
    match p.below(5):
        case 0 | 1:
            return wire_name(p.choice(NAMES))
        case 2:
            # Raw labels: any bytes, lengths past 63 and names past 255.
            return b"".join(bytes([len(raw)]) + raw for raw in
                            (p.blob(p.choice([3, 63, 70])) for _ in range(p.below(6)))) + b"\x00"
        case 3:
            # A compression pointer, maybe to itself or past the end.
            return wire_name(p.choice(NAMES))[:p.below(8)] + bytes([0xC0 | p.below(4), p.uint(8)])
        case _:
            return b"\x00"  # the root


def signed(name: str) -> bytes:
    """A TSIG-signed query (RFC 8945), for a key the interceptor does not have."""
    query = dns.message.make_query(name, "A", use_edns=0)
    query.use_tsig(dns.tsigkeyring.from_text({"k.": "c2VjcmV0c2VjcmV0"}), "k.")
    wire: bytes = query.to_wire()
    return wire


SIGNED = [signed("a.corp.example"), signed("other.example")]
# EDNS option codes (RFC 6891 registry): client subnet, cookie, padding,
# extended error, keepalive, chain, and unassigned ones.
OPTION_CODES = [8, 8, 10, 10, 12, 15, 11, 13, 0, 65535]


def edns_option(p: Provider) -> bytes:
    code = p.choice(OPTION_CODES)
    if code == 8 and p.flag():
        # Client subnet: family, source and scope prefix, address bytes.
        data = struct.pack("!HBB", p.choice([1, 2, 0, 3]), p.uint(8), p.uint(8)) + p.blob(17)
    else:
        data = p.blob(40)
    length = len(data) if p.below(8) else p.uint(16)
    return struct.pack("!HH", code, length) + data


def build_query(p: Provider) -> bytes:
    """A query as a client (or an attacker) may write it: mostly well-formed,
    with odd opcodes, flags, counts, names, types, classes, EDNS and TSIG."""
    if p.below(16) == 0:
        return p.choice(SIGNED)
    questions = [qname(p) + QUESTION_TAIL.pack(p.choice(QTYPES), p.choice(QCLASSES))
                 for _ in range(p.choice([1, 1, 1, 0, 2]))]
    # Opcode QUERY and a clear QR bit most of the time; any flags otherwise.
    flags = p.choice([0x0100, 0x0000, 0x0120, p.uint(16), 0x2800, 0x8100])
    additional = []
    if p.flag():
        # OPT (RFC 6891): root name, type 41, payload size as class,
        # extended rcode / version / DO in the TTL, options as data.
        options = b"".join(edns_option(p) for _ in range(p.below(3)))
        additional.append(b"\x00" + struct.pack("!HHBBHH", 41, p.uint(16), p.uint(8),
                                                p.choice([0, 0, 1, 255]), p.uint(16),
                                                len(options)) + options)
    counts = [len(questions), 0, 0, len(additional)]
    if p.below(8) == 0:
        counts[p.below(4)] = p.uint(16)
    return HEADER.pack(p.uint(16), flags, *counts) + b"".join(questions) + b"".join(additional)


def survives(wire: bytes) -> None:
    try:
        result = INTERCEPTOR.handle_query(wire, 0.0)
    except DnsError:
        pass
    else:
        assert isinstance(result, Answer | Upstream)
        if isinstance(result, Answer):
            assert result.wire[:2] == wire[:2]  # the client matches it by ID
            reply = dns.message.from_wire(result.wire)
            for rrset in reply.answer:
                for rdata in rrset:
                    assert INTERCEPTOR.pool.name_for(rdata.address) is not None
    # One bad query never stops the next good one.
    after = INTERCEPTOR.handle_query(AFTER, 1.0)
    assert isinstance(after, Answer)
    assert after.wire[:2] == AFTER[:2]
    assert len(after.wire) > len(AFTER)  # with its A record


@fuzz_settings()
@given(built(lambda p: p.blob(200)))
def test_random_bytes_raise_only_dns_error(wire: bytes) -> None:
    survives(wire)


@fuzz_settings()
@given(built(build_query))
def test_built_queries_raise_only_dns_error(wire: bytes) -> None:
    survives(wire)


@fuzz_settings()
@given(built(lambda p: apply_mutations(build_query(p), p.blob(16))))
def test_mutated_queries_raise_only_dns_error(wire: bytes) -> None:
    survives(wire)


@fuzz_settings(0.5)
@given(built(lambda p: cut(p.blob(200) if p.flag() else apply_mutations(
    b"".join(TcpDnsFramer.frame(p.blob(40) or b"q") for _ in range(p.below(4))),
    p.blob(8)), p.blob(8))))
def test_tcp_framing_raises_only_dns_error(pieces: list[bytes]) -> None:
    framer = TcpDnsFramer()
    messages: list[bytes] = []
    try:
        for piece in pieces:
            messages += framer.feed(piece)
    except DnsError:
        return
    stream = b"".join(pieces)
    # What came out is exactly the stream's frames, in order.
    assert b"".join(TcpDnsFramer.frame(m) for m in messages) == stream[:sum(
        2 + len(m) for m in messages)]


@fuzz_settings(0.3)
@given(built(lambda p: ([p.blob(300) or b"q" for _ in range(p.below(5))], p.blob(8)),
             max_size=1600))
def test_tcp_frames_round_trip(case: tuple[list[bytes], bytes]) -> None:
    messages, cuts = case
    framer = TcpDnsFramer()
    out: list[bytes] = []
    for piece in cut(b"".join(TcpDnsFramer.frame(m) for m in messages), cuts):
        out += framer.feed(piece)
    assert out == messages
