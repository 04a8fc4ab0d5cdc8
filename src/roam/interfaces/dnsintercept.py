"""DNS interception, sans IO: answer chosen names with addresses from a loopback pool.

The client answers A queries for intercepted names (`NamePatterns`) with an
address of its own from a loopback pool (`AddressPool`); a connection to that
address is later carried to the name it stands for (`AddressPool.name_for`).
Every other query goes to the upstream resolver unchanged.

Nothing here does IO or reads the clock: the driver passes `now` in and sends
what comes back. Bad input is either answered (FORMERR, NOTIMP, with the
query's ID, wherever a reply can be addressed) or refused with `DnsError`
when no reply can be: the driver logs and drops it.
"""

from __future__ import annotations

import ipaddress
import struct
from collections import OrderedDict, deque
from dataclasses import dataclass

import dns.exception
import dns.flags
import dns.message
import dns.opcode
import dns.rcode
import dns.rdataclass
import dns.rdatatype
import dns.rrset

from roam.errors import ConfigError, ProtocolError, RoamError
from roam.names import DnsName, InvalidHost  # names are validated as everywhere else

DEFAULT_POOL = "127.77.0.0/16"

# A name's address is kept while connections use it and for this long after
# its last lookup or connection. It is far longer than ANSWER_TTL, so a cached
# answer is gone long before its address can stand for another name, and it
# covers resolvers that stretch TTLs (browsers and the JVM cache for 30-60 s).
IDLE_EXPIRY = 600.0

# Short, so clients ask again instead of caching a pool address (RFC 1035 3.2.1
# TTL). Every lookup refreshes the name's idle time, so the address a client
# holds keeps meaning the same name as long as it keeps asking.
ANSWER_TTL = 5

_HEADER = struct.Struct("!HHHHHH")  # ID, flags, QD/AN/NS/ARCOUNT (RFC 1035 4.1.1)
_QR = 0x8000
_OPCODE_SHIFT = 11
_RD = 0x0100
_RA = 0x0080
_MAX_TCP_MESSAGE = 0xFFFF  # the 2-byte length prefix of RFC 1035 4.2.2


class DnsError(ProtocolError):
    """A DNS message that cannot be handled, nor answered; the message says why."""


class PoolExhausted(RoamError):
    """Every pool address has live connections; the message names the pool and its size."""


class AddressPool:
    """Loopback addresses handed to intercepted names, one per name while in use."""

    def __init__(self, cidr: str = DEFAULT_POOL) -> None:
        try:
            net = ipaddress.ip_network(cidr)
        except ValueError as e:
            raise ConfigError(f"DNS pool {cidr!r} is not a CIDR network ({e})") from None
        if not (isinstance(net, ipaddress.IPv4Network)
                and net.subnet_of(ipaddress.IPv4Network("127.0.0.0/8"))):
            raise ConfigError(f"DNS pool {cidr!r} is not inside the loopback 127.0.0.0/8")
        if net.prefixlen > 30:
            raise ConfigError(f"DNS pool {cidr!r} is smaller than a /30")
        self.network = net
        self.size = net.num_addresses - 2  # without network and broadcast addresses
        self._fresh = 0  # addresses [1, _fresh] were handed out at some point
        self._free: deque[str] = deque()  # expired addresses, to be handed out again
        self._by_name: dict[str, str] = {}
        self._by_addr: OrderedDict[str, str] = OrderedDict()  # least recently used first
        self._used: dict[str, float] = {}  # address -> last lookup or release
        self._holds: dict[str, int] = {}  # address -> live connections

    def lookup_or_allocate(self, name: str, now: float) -> str:
        """The address standing for `name`, the same one while it is in use."""
        name = name.lower().rstrip(".")
        self.expire(now)
        addr = self._by_name.get(name)
        if addr is None:
            addr = self._take()
            self._by_name[name] = addr
            self._by_addr[addr] = name
        self._by_addr.move_to_end(addr)
        self._used[addr] = now
        return addr

    def name_for(self, address: str) -> str | None:
        return self._by_addr.get(address)

    def hold(self, address: str) -> str | None:
        """A connection to `address` opened: pin it; its name, or None if it has none."""
        name = self._by_addr.get(address)
        if name is not None:
            self._holds[address] = self._holds.get(address, 0) + 1
        return name

    def release(self, address: str, now: float) -> None:
        """A held connection closed; its idle time starts again. Unheld: ignored."""
        count = self._holds.get(address, 0)
        if count <= 0:
            return
        if count == 1:
            del self._holds[address]
        else:
            self._holds[address] = count - 1
        if address in self._by_addr:
            self._by_addr.move_to_end(address)
            self._used[address] = now

    def expire(self, now: float) -> None:
        """Forget names idle for IDLE_EXPIRY with no live connections."""
        stale: list[str] = []
        for addr in self._by_addr:
            if self._used[addr] + IDLE_EXPIRY > now:
                break  # in LRU order: every later one is fresher
            if addr not in self._holds:
                stale.append(addr)
        for addr in stale:
            self._forget(addr)
            self._free.append(addr)

    def _take(self) -> str:
        # Never-used addresses first, then expired ones, so a stale address
        # keeps meaning its old name (or nothing) for as long as possible.
        if self._fresh < self.size:
            self._fresh += 1
            return str(self.network[self._fresh])
        if self._free:
            return self._free.popleft()
        for addr in self._by_addr:
            if addr not in self._holds:
                self._forget(addr)
                return addr
        raise PoolExhausted(f"DNS address pool {self.network} is full: all {self.size} "
                            "addresses have live connections")

    def _forget(self, addr: str) -> None:
        del self._by_name[self._by_addr.pop(addr)]
        del self._used[addr]


class NamePatterns:
    """Intercepted names: `name` exactly, `*.suffix` below it, or `*` for every name."""

    def __init__(self, patterns: list[str]) -> None:
        self.everything = False
        self.exact: set[DnsName] = set()
        self.parents: list[DnsName] = []  # *.parent: names strictly below it
        for text in patterns:
            pattern = text.strip()
            if pattern.rstrip(".") == "*":
                self.everything = True
                continue
            below = pattern.startswith("*.")
            if below:
                pattern = pattern[2:]
            if "*" in pattern:
                raise ConfigError(f"DNS pattern {text!r} is not a name, *.suffix or *")
            if not pattern.isascii():
                # Queries carry A-labels: say which one to write rather than
                # match a spelling no query has.
                try:
                    hint = f"; write {DnsName.parse(pattern).text!r}, as queries carry it"
                except InvalidHost:
                    hint = ""
                raise ConfigError(f"DNS pattern {text!r} is not ASCII{hint}")
            try:
                name = DnsName.parse(pattern)
            except InvalidHost as exc:
                raise ConfigError(f"DNS pattern {text!r} is not a name, *.suffix or *: "
                                  f"{exc}") from None
            if below:
                self.parents.append(name)
            else:
                self.exact.add(name)

    def matches(self, name: str) -> bool:
        try:
            parsed = DnsName.parse(name)
        except InvalidHost:
            return False  # escapes, odd bytes, the root: never ours
        return (self.everything or parsed in self.exact
                or any(parsed.is_below(parent) for parent in self.parents))


@dataclass(frozen=True, slots=True)
class Answer:
    """Send `wire` back to the client; `problem`, when set, is worth a log line."""

    wire: bytes
    problem: str | None = None


@dataclass(frozen=True, slots=True)
class Upstream:
    """Send the query, unchanged, to the upstream resolver."""


def _error_reply(header: tuple[int, ...], rcode: int) -> bytes:
    """Header-only reply with the query's ID, opcode and RD (RFC 1035 4.1.1)."""
    qid, flags = header[0], header[1]
    flags = _QR | (flags & ((0xF << _OPCODE_SHIFT) | _RD)) | _RA | rcode
    return _HEADER.pack(qid, flags, 0, 0, 0, 0)


class DnsInterceptor:
    def __init__(self, patterns: NamePatterns, pool: AddressPool,
                 ttl: int = ANSWER_TTL) -> None:
        if not 0 <= ttl < IDLE_EXPIRY:
            raise ConfigError(f"DNS answer TTL {ttl} is not from 0 to {IDLE_EXPIRY:.0f} s")
        self.patterns = patterns
        self.pool = pool
        self.ttl = ttl

    def handle_query(self, wire: bytes, now: float) -> Answer | Upstream:
        """Answer an intercepted name, or send upstream.

        Raises DnsError, and nothing else, for a message that cannot be replied
        to: shorter than a header, or a response (replying to responses can
        loop). Other bad queries get FORMERR, other opcodes NOTIMP (RFC 1035
        4.1.1), a full pool SERVFAIL; those answers carry a `problem`.
        """
        if len(wire) < _HEADER.size:
            raise DnsError(f"DNS message of {len(wire)} bytes is shorter than its header")
        header = _HEADER.unpack_from(wire)
        if header[1] & _QR:
            raise DnsError("DNS message has the QR bit set: a response, not a query")
        if (header[1] >> _OPCODE_SHIFT) & 0xF != dns.opcode.QUERY:
            return Answer(_error_reply(header, dns.rcode.NOTIMP),
                          "DNS query with an opcode other than QUERY")
        try:
            # keyring=False: TSIG is left for upstream to check, not refused here.
            query = dns.message.from_wire(wire, keyring=False)
        except (dns.exception.DNSException, ValueError) as e:
            return Answer(_error_reply(header, dns.rcode.FORMERR), f"malformed DNS query: {e}")
        if len(query.question) != 1:  # RFC 9619: QUERY carries exactly one question
            return Answer(_error_reply(header, dns.rcode.FORMERR),
                          f"DNS query with {len(query.question)} questions instead of 1")
        question = query.question[0]
        name = question.name.to_text(omit_final_dot=True)
        if question.rdclass != dns.rdataclass.IN or not self.patterns.matches(name):
            return Upstream()
        try:
            return self._answer(query, question, name, now)
        except (dns.exception.DNSException, ValueError) as e:
            raise DnsError(f"cannot build the DNS answer for {name!r}: {e}") from None

    def _answer(self, query: dns.message.Message, question: dns.rrset.RRset, name: str,
                now: float) -> Answer:
        response = dns.message.make_response(query, recursion_available=True)
        if query.edns > 0:  # RFC 6891 6.1.3: we speak EDNS version 0 only
            response.set_rcode(dns.rcode.BADVERS)
            return Answer(response.to_wire(), f"DNS query with EDNS version {query.edns}")
        if question.rdtype == dns.rdatatype.A:
            try:
                address = self.pool.lookup_or_allocate(name, now)
            except PoolExhausted as e:
                response.set_rcode(dns.rcode.SERVFAIL)
                return Answer(response.to_wire(), str(e))
            response.answer.append(dns.rrset.from_text(
                question.name, self.ttl, dns.rdataclass.IN, dns.rdatatype.A, address))
        # Anything else (AAAA included) is NOERROR with no data (RFC 2308 2.2),
        # so clients fall back to A. No SOA: nobody should cache the absence.
        return Answer(response.to_wire())


class TcpDnsFramer:
    """DNS over TCP: each message after a 2-byte length (RFC 1035 4.2.2)."""

    def __init__(self) -> None:
        self._buffer = bytearray()

    def feed(self, data: bytes) -> list[bytes]:
        """The messages completed by `data`. DnsError: drop the connection."""
        self._buffer += data
        messages: list[bytes] = []
        while len(self._buffer) >= 2:
            length = int.from_bytes(self._buffer[:2], "big")
            if length == 0:
                raise DnsError("DNS over TCP: a message of length 0")
            if len(self._buffer) < 2 + length:
                break
            messages.append(bytes(self._buffer[2:2 + length]))
            del self._buffer[:2 + length]
        return messages

    @staticmethod
    def frame(message: bytes) -> bytes:
        if not 0 < len(message) <= _MAX_TCP_MESSAGE:
            raise DnsError(f"DNS over TCP: a message of {len(message)} bytes cannot be framed")
        return len(message).to_bytes(2, "big") + message
