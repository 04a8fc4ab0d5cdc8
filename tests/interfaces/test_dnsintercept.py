"""DNS interception core: the address pool, name patterns, answers, refusals and TCP framing."""

from __future__ import annotations

import struct

import dns.flags
import dns.message
import dns.opcode
import dns.rcode
import dns.rdataclass
import dns.rdatatype
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from roam.errors import ConfigError, ProtocolError
from roam.interfaces.dnsintercept import (
    ANSWER_TTL,
    IDLE_EXPIRY,
    AddressPool,
    Answer,
    DnsError,
    DnsInterceptor,
    NamePatterns,
    PoolExhausted,
    TcpDnsFramer,
    Upstream,
)


def query(name: str, rdtype: str = "A", qid: int = 0x1234, rdclass: str = "IN",
          use_edns: int | None = None) -> bytes:
    msg = dns.message.make_query(name, rdtype, rdclass, use_edns=use_edns)
    msg.id = qid
    return msg.to_wire()


def interceptor(*patterns: str, pool: str = "127.77.0.0/16") -> DnsInterceptor:
    return DnsInterceptor(NamePatterns(list(patterns) or ["*.corp.example"]), AddressPool(pool))


def answered(result: Answer | Upstream) -> dns.message.Message:
    assert isinstance(result, Answer)
    return dns.message.from_wire(result.wire)


def header_flags(wire: bytes) -> int:
    return int(struct.unpack_from("!H", wire, 2)[0])


# AddressPool


def test_pool_hands_out_stable_distinct_addresses() -> None:
    pool = AddressPool()
    a = pool.lookup_or_allocate("db.corp.example", 0.0)
    b = pool.lookup_or_allocate("web.corp.example", 0.0)
    assert a != b
    assert a.startswith("127.77.")
    assert b.startswith("127.77.")
    assert a != "127.77.0.0"  # not the network address
    assert pool.lookup_or_allocate("DB.corp.example.", 100.0) == a
    assert pool.name_for(a) == "db.corp.example"
    assert pool.name_for(b) == "web.corp.example"
    assert pool.name_for("127.77.200.200") is None


@pytest.mark.parametrize(
    ("cidr", "fragment"),
    [
        ("10.0.0.0/8", "not inside the loopback"),
        ("::1/128", "not inside the loopback"),
        ("0.0.0.0/0", "not inside the loopback"),
        ("126.0.0.0/7", "not inside the loopback"),
        ("127.1.2.0/31", "smaller than a /30"),
        ("127.1.2.3/32", "smaller than a /30"),
        ("127.77.0.1/16", "not a CIDR network"),
        ("nonsense", "not a CIDR network"),
    ],
)
def test_pool_refuses_bad_cidrs(cidr: str, fragment: str) -> None:
    with pytest.raises(ConfigError, match=fragment) as info:
        AddressPool(cidr)
    assert cidr in str(info.value)


def test_pool_expires_idle_names_only() -> None:
    pool = AddressPool("127.9.0.0/30")  # two addresses
    a = pool.lookup_or_allocate("a.example", 0.0)
    b = pool.lookup_or_allocate("b.example", 100.0)
    pool.expire(IDLE_EXPIRY - 1)
    assert pool.name_for(a) == "a.example"
    pool.expire(IDLE_EXPIRY)
    assert pool.name_for(a) is None
    assert pool.name_for(b) == "b.example"
    # The freed address goes to the next new name; b keeps its own.
    assert pool.lookup_or_allocate("c.example", IDLE_EXPIRY) == a
    assert pool.lookup_or_allocate("b.example", IDLE_EXPIRY) == b


def test_lookups_keep_a_name_alive() -> None:
    pool = AddressPool()
    a = pool.lookup_or_allocate("a.example", 0.0)
    for t in range(1, 5):
        assert pool.lookup_or_allocate("a.example", t * (IDLE_EXPIRY - 1)) == a
    pool.expire(4 * (IDLE_EXPIRY - 1) + IDLE_EXPIRY - 1)
    assert pool.name_for(a) == "a.example"


def test_held_names_never_expire_and_release_restarts_the_idle_time() -> None:
    pool = AddressPool()
    a = pool.lookup_or_allocate("a.example", 0.0)
    assert pool.hold(a) == "a.example"
    assert pool.hold(a) == "a.example"
    pool.expire(10 * IDLE_EXPIRY)
    assert pool.name_for(a) == "a.example"
    pool.release(a, 10 * IDLE_EXPIRY)
    pool.expire(20 * IDLE_EXPIRY)
    assert pool.name_for(a) == "a.example"  # one connection still open
    pool.release(a, 20 * IDLE_EXPIRY)
    pool.expire(21 * IDLE_EXPIRY - 1)
    assert pool.name_for(a) == "a.example"
    pool.expire(21 * IDLE_EXPIRY)
    assert pool.name_for(a) is None


def test_hold_of_an_unknown_address_and_extra_release() -> None:
    pool = AddressPool()
    assert pool.hold("127.77.9.9") is None
    a = pool.lookup_or_allocate("a.example", 0.0)
    pool.release(a, 1.0)  # never held: ignored
    pool.expire(IDLE_EXPIRY)
    assert pool.name_for(a) is None


def test_full_pool_reuses_the_least_recently_used_unheld_address() -> None:
    pool = AddressPool("127.9.0.0/30")
    a = pool.lookup_or_allocate("a.example", 0.0)
    b = pool.lookup_or_allocate("b.example", 1.0)
    pool.lookup_or_allocate("a.example", 2.0)  # now b is the least recently used
    assert pool.lookup_or_allocate("c.example", 3.0) == b
    assert pool.name_for(b) == "c.example"
    assert pool.name_for(a) == "a.example"
    pool.hold(a)  # a is older, but in use: c's address goes
    assert pool.lookup_or_allocate("d.example", 4.0) == b
    assert pool.name_for(a) == "a.example"


def test_exhausted_pool_says_so() -> None:
    pool = AddressPool("127.9.0.0/30")
    for name in ("a.example", "b.example"):
        pool.hold(pool.lookup_or_allocate(name, 0.0))
    with pytest.raises(PoolExhausted) as info:
        pool.lookup_or_allocate("c.example", 1.0)
    assert "127.9.0.0/30 is full" in str(info.value)
    assert "all 2 addresses" in str(info.value)
    pool.release("127.9.0.1", 2.0)
    assert pool.lookup_or_allocate("c.example", 3.0) == "127.9.0.1"


# NamePatterns


def test_patterns_match_exact_and_suffix_names() -> None:
    patterns = NamePatterns(["db.corp.example", "*.Intra.Example."])
    assert patterns.matches("db.corp.example")
    assert patterns.matches("DB.Corp.Example.")
    assert not patterns.matches("x.db.corp.example")
    assert patterns.matches("a.intra.example")
    assert patterns.matches("a.b.intra.example.")
    assert not patterns.matches("intra.example")
    assert not patterns.matches("xintra.example")
    assert not patterns.matches("a\\.intra.example")  # an escaped dot is not a label break


def test_star_matches_every_host_name_but_not_the_root() -> None:
    patterns = NamePatterns(["*."])  # the trailing dot is ignored here too
    assert patterns.matches("anything.example")
    assert not patterns.matches("")
    assert not patterns.matches("@")
    assert not NamePatterns([]).matches("anything.example")


@pytest.mark.parametrize("bad", ["", "a.*.example", "*example.com", "**.x", "bad name",
                                 "a..b", "-x.example", "\u00fc.example"])
def test_bad_patterns_are_config_errors(bad: str) -> None:
    with pytest.raises(ConfigError) as info:
        NamePatterns(["ok.example", bad])
    assert repr(bad) in str(info.value)


# Answers


def test_a_query_gets_a_pool_address() -> None:
    icpt = interceptor()
    wire = query("Db.Corp.Example", "A", qid=0xBEEF)
    resp = answered(icpt.handle_query(wire, 0.0))
    assert resp.id == 0xBEEF
    assert resp.flags & dns.flags.QR
    assert resp.flags & dns.flags.RD
    assert resp.flags & dns.flags.RA
    assert resp.rcode() == dns.rcode.NOERROR
    assert resp.question == dns.message.from_wire(wire).question
    assert str(resp.question[0].name) == "Db.Corp.Example."  # case kept (0x20 randomisation)
    [rrset] = resp.answer
    assert rrset.rdtype == dns.rdatatype.A
    assert rrset.ttl == ANSWER_TTL
    [rdata] = list(rrset)
    assert rdata.address == icpt.pool.lookup_or_allocate("db.corp.example", 1.0)
    assert icpt.pool.name_for(rdata.address) == "db.corp.example"
    again = answered(icpt.handle_query(query("db.corp.example."), 2.0))
    assert next(iter(again.answer[0])).address == rdata.address


def test_ttl_is_configurable_and_checked() -> None:
    icpt = DnsInterceptor(NamePatterns(["x.example"]), AddressPool(), ttl=1)
    assert answered(icpt.handle_query(query("x.example"), 0.0)).answer[0].ttl == 1
    with pytest.raises(ConfigError):
        DnsInterceptor(NamePatterns([]), AddressPool(), ttl=-1)
    with pytest.raises(ConfigError):
        DnsInterceptor(NamePatterns([]), AddressPool(), ttl=int(IDLE_EXPIRY))


@pytest.mark.parametrize("rdtype", ["AAAA", "MX", "TXT", "HTTPS", "ANY", "SRV"])
def test_other_types_get_noerror_without_data(rdtype: str) -> None:
    icpt = interceptor()
    wire = query("db.corp.example", rdtype, qid=7)
    resp = answered(icpt.handle_query(wire, 0.0))
    assert resp.id == 7
    assert resp.rcode() == dns.rcode.NOERROR
    assert resp.question == dns.message.from_wire(wire).question
    assert resp.answer == []
    assert resp.authority == []
    assert icpt.pool.name_for("127.77.0.1") is None  # no address spent


def test_edns_is_answered_with_edns() -> None:
    resp = answered(interceptor().handle_query(query("a.corp.example", use_edns=0), 0.0))
    assert resp.edns == 0
    assert len(resp.answer) == 1
    resp = answered(interceptor().handle_query(query("a.corp.example", use_edns=1), 0.0))
    assert resp.rcode() == dns.rcode.BADVERS


def test_exhausted_pool_answers_servfail_with_the_reason() -> None:
    icpt = interceptor(pool="127.9.0.0/30")
    for name in ("a.corp.example", "b.corp.example"):
        icpt.pool.hold(icpt.pool.lookup_or_allocate(name, 0.0))
    result = icpt.handle_query(query("c.corp.example", qid=99), 1.0)
    resp = answered(result)
    assert resp.id == 99
    assert resp.rcode() == dns.rcode.SERVFAIL
    assert len(resp.question) == 1
    assert isinstance(result, Answer)
    assert result.problem is not None
    assert "is full" in result.problem


@pytest.mark.parametrize(
    "wire",
    [
        query("other.example"),
        query("corp.example"),
        query("db.corp.example.evil"),
        query("db.corp.example", "A", rdclass="CH"),
        query("version.bind", "TXT", rdclass="CH"),
        query("."),
    ],
)
def test_unmatched_queries_go_upstream(wire: bytes) -> None:
    assert interceptor().handle_query(wire, 0.0) == Upstream()


def test_escaped_names_go_upstream_and_take_no_address() -> None:
    msg = dns.message.make_query("x\\.db.corp.example", "A")
    icpt = interceptor("*")
    assert icpt.handle_query(msg.to_wire(), 0.0) == Upstream()


# Refusals and error answers


def test_too_short_or_response_is_dns_error() -> None:
    icpt = interceptor()
    for wire in (b"", b"\x12", bytes(11)):
        with pytest.raises(DnsError, match="shorter than its header"):
            icpt.handle_query(wire, 0.0)
    response = dns.message.make_response(dns.message.make_query("a.corp.example", "A"))
    with pytest.raises(DnsError, match="QR bit") as info:
        icpt.handle_query(response.to_wire(), 0.0)
    assert isinstance(info.value, ProtocolError)


def error_answer(wire: bytes, rcode: int, fragment: str) -> None:
    result = interceptor().handle_query(wire, 0.0)
    assert isinstance(result, Answer)
    assert result.problem is not None
    assert fragment in result.problem
    assert result.wire[:2] == wire[:2]  # the ID
    assert header_flags(result.wire) & 0x8000  # QR
    assert header_flags(result.wire) & 0x0100 == header_flags(wire) & 0x0100  # RD copied
    resp = dns.message.from_wire(result.wire)
    assert resp.rcode() == rcode


def test_other_opcodes_get_notimp() -> None:
    msg = dns.message.make_query("a.corp.example", "A")
    msg.set_opcode(dns.opcode.NOTIFY)
    error_answer(msg.to_wire(), dns.rcode.NOTIMP, "opcode")
    wire = bytearray(query("a.corp.example"))
    wire[2] |= 0x7 << 3  # an opcode nobody defined, header otherwise fine
    error_answer(bytes(wire), dns.rcode.NOTIMP, "opcode")


def test_question_counts_other_than_one_get_formerr() -> None:
    msg = dns.message.make_query("a.corp.example", "A")
    msg.question = []
    error_answer(msg.to_wire(), dns.rcode.FORMERR, "0 questions")
    msg = dns.message.make_query("a.corp.example", "A")
    msg.question.append(dns.message.make_query("b.corp.example", "A").question[0])
    error_answer(msg.to_wire(), dns.rcode.FORMERR, "2 questions")


@pytest.mark.parametrize(
    "wire",
    [
        query("a.corp.example")[:-1],  # question cut short
        query("a.corp.example") + b"\x00",  # trailing junk
        b"\xab\xcd\x01\x00\x00\x05" + bytes(6),  # five questions promised, none there
        b"\xab\xcd\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00\xc0\x0c\x00\x01\x00\x01",  # loop
    ],
)
def test_unparseable_queries_get_formerr(wire: bytes) -> None:
    error_answer(wire, dns.rcode.FORMERR, "malformed")


# TCP framing


def test_tcp_frame_round_trip_and_limits() -> None:
    framer = TcpDnsFramer()
    msgs = [query("a.corp.example"), b"x", bytes(65535)]
    stream = b"".join(TcpDnsFramer.frame(m) for m in msgs)
    assert stream[:2] == len(msgs[0]).to_bytes(2, "big")
    assert framer.feed(stream) == msgs
    assert framer.feed(b"") == []
    for bad in (b"", bytes(65536)):
        with pytest.raises(DnsError):
            TcpDnsFramer.frame(bad)


def test_tcp_zero_length_is_refused() -> None:
    framer = TcpDnsFramer()
    with pytest.raises(DnsError, match="length 0"):
        framer.feed(TcpDnsFramer.frame(b"ok") + b"\x00\x00")
    framer = TcpDnsFramer()
    assert framer.feed(b"\x00") == []  # half a prefix is fine...
    with pytest.raises(DnsError):
        framer.feed(b"\x00")  # ...until it turns out to be zero


@settings(max_examples=200, deadline=None)
@given(st.lists(st.binary(min_size=1, max_size=300), max_size=6), st.data())
def test_tcp_framer_reassembles_arbitrary_splits(msgs: list[bytes], data: st.DataObject) -> None:
    stream = b"".join(TcpDnsFramer.frame(m) for m in msgs)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(stream)), max_size=10)))
    framer = TcpDnsFramer()
    out: list[bytes] = []
    for start, end in zip([0, *cuts], [*cuts, len(stream)], strict=True):
        out += framer.feed(stream[start:end])
    assert out == msgs


# Fuzz: only DnsError, and the interceptor keeps working


FUZZ = interceptor("*.corp.example", "exact.example", pool="127.9.0.0/28")
VALID = [
    query("a.corp.example"),
    query("exact.example", "AAAA", use_edns=0),
    query("other.example", "MX"),
]


def survives(wire: bytes) -> None:
    try:
        result = FUZZ.handle_query(wire, 0.0)
    except DnsError:
        pass
    else:
        if isinstance(result, Answer):
            assert result.wire[:2] == wire[:2]
            dns.message.from_wire(result.wire)  # every answer parses
    resp = answered(FUZZ.handle_query(query("after.corp.example", qid=4321), 1.0))
    assert resp.id == 4321
    assert len(resp.answer) == 1


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200))
def test_random_bytes_raise_only_dns_error(wire: bytes) -> None:
    survives(wire)


@st.composite
def mutated_queries(draw: st.DrawFn) -> bytes:
    wire = bytearray(draw(st.sampled_from(VALID)))
    for _ in range(draw(st.integers(1, 3))):
        wire[draw(st.integers(0, len(wire) - 1))] = draw(st.integers(0, 255))
    return bytes(wire)


@settings(max_examples=500, deadline=None)
@given(mutated_queries())
def test_mutated_queries_raise_only_dns_error(wire: bytes) -> None:
    survives(wire)


def test_signed_queries_are_handled_without_a_key() -> None:
    import dns.tsigkeyring

    keyring = dns.tsigkeyring.from_text({"k.": "c2VjcmV0c2VjcmV0"})
    msg = dns.message.make_query("other.example", "A")
    msg.use_tsig(keyring, "k.")
    assert interceptor().handle_query(msg.to_wire(), 0.0) == Upstream()
    msg = dns.message.make_query("a.corp.example", "A")
    msg.use_tsig(keyring, "k.")
    assert len(answered(interceptor().handle_query(msg.to_wire(), 0.0)).answer) == 1
