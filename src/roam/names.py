"""Hosts as they enter roam: an IP address or a DNS name, validated once, at the edge.

Every host a user configures (`--allow`, `--forward`, `--reverse`) or a peer
names (an OPEN frame, a SOCKS5 request) becomes a `Host` before anything
looks at it. Rules then compare one normal form, and the resolver is given
exactly the text the rules saw: a name that reads one way to a rule and
another way to getaddrinfo (a NUL cuts a C string short; the idna codec
refuses long labels with UnicodeError) never gets that far.

A DNS name, in its normal form (`DnsName.text`):

- UTS #46 mapping first (lower case, full-width forms, the ideographic full
  stop as a dot, NFC), non-transitional as IDNA2008 wants: 'ß' stays 'ß'.
  `idna.uts46_remap` does this, with UseSTD3ASCIIRules off so that the
  ASCII checks below can name the offending character themselves.
- One trailing dot (the root) is dropped; any other empty label is refused.
- A label with non-ASCII characters must be a valid U-label (IDNA2008,
  RFC 5891 section 4 and RFC 5892) and is replaced by its A-label ('xn--').
- After that every label is ASCII: letters, digits, '-' and '_'; a hyphen
  neither leads nor ends a label (RFC 952, RFC 1123 section 2.1). ASCII
  labels are not put through IDNA2008's other rules: 'r3---sn-x' (hyphens in
  the third and fourth place) is a name resolvers serve today, and an
  A-label stands for itself, since it is exactly what gets looked up.
- Underscores are allowed in ASCII labels. The DNS itself carries any octet
  (RFC 2181 section 11); '_' marks service and policy names (RFC 8552:
  '_sip._tcp', '_dmarc') and some internal host names; it is no separator
  and no resolver reads it specially, so it cannot make the name a rule sees
  differ from the name that is resolved, and `--allow` accepted it before.
  IDNA2008 forbids it inside a U-label, and so does `idna`.
- A label is at most 63 octets and the name at most 253 in text form: 255
  on the wire, counting each label's length octet and the root's
  (RFC 1035 section 2.3.4).
- The last label is not a number (decimal, or '0x' hex; RFC 1123 section
  2.1, RFC 3696 section 2): the C library reads '127.1', '0x7f.1' or
  '2130706433' as IPv4 addresses (inet_aton), so such a 'name' would be an
  address that no address rule was asked about.

An IP address is IPv4 in dotted-quad form or IPv6 (no brackets: those
belong to the HOST:PORT syntax). An IPv6 scope (`fe80::1%eth0`) must be an
interface name or number.
"""

from __future__ import annotations

import ipaddress
import re
import string
from dataclasses import dataclass

import idna

from roam.errors import RoamError

MAX_LABEL = 63  # octets; RFC 1035 section 2.3.4
MAX_NAME = 253  # octets in text form: 255 on the wire with the length octets and the root

# Longer input is refused before any mapping work; UTS 46 may drop ignored
# characters, so a little more than MAX_NAME can still be a name.
_MAX_INPUT = 1024
_LABEL_CHARS = frozenset(string.ascii_lowercase + string.digits + "-_")
_HEX = frozenset(string.hexdigits)
# Linux interface names are at most 15 bytes (IFNAMSIZ); a scope may also be a number.
_SCOPE = re.compile(r"[A-Za-z0-9_.-]{1,15}")

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


class InvalidHost(RoamError):
    """Text that is neither an IP address nor a valid DNS name; the message says why.

    Where it came from decides what it means: a `ConfigError` for a
    command-line argument, a refused channel or a SOCKS error for a peer.
    """


def _show(text: str, limit: int = 60) -> str:
    """`text` quoted with escapes (never a raw NUL or newline in a log), and shortened."""
    return repr(text) if len(text) <= limit else f"{text[:limit]!r}... ({len(text)} characters)"


def _normal_name(text: str) -> str:
    """The normal form of the DNS name `text` (see the module docstring), or InvalidHost."""
    bad = f"{_show(text)} is not a valid host name"
    if len(text) > _MAX_INPUT:
        raise InvalidHost(f"{bad}: {len(text)} characters; a name has at most {MAX_NAME} "
                          "octets (RFC 1035 section 2.3.4)")
    if text.isascii():
        mapped = text.lower()  # UTS 46 maps nothing else in ASCII
    else:
        try:
            mapped = idna.uts46_remap(text, std3_rules=False)
        except idna.IDNAError as exc:
            raise InvalidHost(f"{bad}: {exc} (UTS #46)") from None
    if mapped.endswith("."):
        mapped = mapped[:-1]  # the root
    if not mapped:
        raise InvalidHost(f"{bad}: it is empty")
    labels: list[str] = []
    for number, label in enumerate(mapped.split("."), 1):
        labels.append(_normal_label(label, number, bad))
    name = ".".join(labels)
    if len(name) > MAX_NAME:
        raise InvalidHost(f"{bad}: it is {len(name)} octets long; at most {MAX_NAME} "
                          "(255 on the wire, RFC 1035 section 2.3.4)")
    last = labels[-1]
    if last.isdigit() or (last.startswith("0x") and _HEX.issuperset(last[2:])):
        raise InvalidHost(f"{bad}: its last label {last!r} is a number, so resolvers would "
                          "read it as an IPv4 address; write an address as a dotted quad")
    return name


def _normal_label(label: str, number: int, bad: str) -> str:
    where = f"label {number}"
    if not label:
        raise InvalidHost(f"{bad}: {where} is empty (a leading dot, or two dots in a row)")
    for char in label:
        if char.isascii() and char not in _LABEL_CHARS:
            raise InvalidHost(f"{bad}: {where} {_show(label, 20)} contains {char!r} "
                              f"(U+{ord(char):04X}); a label holds letters, digits, '-' and '_'")
    if not label.isascii():
        try:
            label = idna.alabel(label).decode("ascii")
        except idna.IDNAError as exc:
            if len(b"xn--" + label.encode("punycode")) > MAX_LABEL:
                raise InvalidHost(f"{bad}: {where} {_show(label, 20)} is longer than "
                                  f"{MAX_LABEL} octets as an A-label (RFC 1035 section "
                                  "2.3.4)") from None
            raise InvalidHost(f"{bad}: {where} {_show(label, 20)} is not a valid "
                              f"internationalised label (IDNA2008, RFC 5891): {exc}") from None
    if len(label) > MAX_LABEL:
        raise InvalidHost(f"{bad}: {where} {_show(label, 20)} is {len(label)} octets long; "
                          f"at most {MAX_LABEL} (RFC 1035 section 2.3.4)")
    if label.startswith("-"):
        raise InvalidHost(f"{bad}: {where} {label!r} starts with a hyphen")
    if label.endswith("-"):
        raise InvalidHost(f"{bad}: {where} {label!r} ends with a hyphen")
    return label


@dataclass(frozen=True, slots=True)
class DnsName:
    """A valid DNS name in normal form: lower-case ASCII labels, no trailing dot.

    Build one with `parse`; the constructor accepts only text already in
    normal form, so a `DnsName` is always one `parse` could have returned.
    """

    text: str

    def __post_init__(self) -> None:
        if _normal_name(self.text) != self.text:
            raise InvalidHost(f"{_show(self.text)} is not in normal form: use DnsName.parse")

    @classmethod
    def parse(cls, text: str) -> DnsName:
        return cls(_normal_name(text))

    @property
    def labels(self) -> tuple[str, ...]:
        return tuple(self.text.split("."))

    def is_below(self, parent: DnsName) -> bool:
        """Strictly below `parent`, compared label by label: 'db.corp.example' is
        below 'corp.example'; 'corp.example' and 'evilcorp.example' are not."""
        mine, theirs = self.labels, parent.labels
        return len(mine) > len(theirs) and mine[-len(theirs):] == theirs

    def __str__(self) -> str:
        return self.text


def _check_scope(address: IPAddress, text: str) -> None:
    scope = address.scope_id if isinstance(address, ipaddress.IPv6Address) else None
    if scope is not None and not _SCOPE.fullmatch(scope):
        raise InvalidHost(f"{_show(text)} is not a valid address: its scope {scope!r} is "
                          "not an interface name or number")


@dataclass(frozen=True, slots=True)
class Host:
    """A destination or listen host: an IP address or a `DnsName`."""

    value: IPAddress | DnsName

    def __post_init__(self) -> None:
        if not isinstance(self.value, DnsName):
            _check_scope(self.value, str(self.value))

    @classmethod
    def parse(cls, text: str) -> Host:
        """An IP literal or a DNS name; InvalidHost, naming the problem, for anything else."""
        try:
            address = ipaddress.ip_address(text)
        except ValueError:
            return cls(DnsName.parse(text))
        _check_scope(address, text)
        return cls(address)

    @property
    def address(self) -> IPAddress | None:
        return None if isinstance(self.value, DnsName) else self.value

    @property
    def name(self) -> DnsName | None:
        return self.value if isinstance(self.value, DnsName) else None

    def __str__(self) -> str:
        """The normal form: what rules see, what is resolved, what goes on the wire."""
        return str(self.value)
