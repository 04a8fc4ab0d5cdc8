"""`--allow HOST:PORT` rules: which destinations the server opens.

HOST is `*`, an IP address, a CIDR network, a name, or `*.suffix`; PORT is a
number or `*`. IPv6 goes in brackets: `[2001:db8::/32]:443`. A name rule
matches the name the client asked for; an address or network rule matches
the address the name resolves to, and that address is the one connected to,
so a name cannot be pointed somewhere the rules do not allow. No rule: nothing
is allowed (the server is never an open proxy).

Names on both sides are `roam.names` values: a rule's name is validated and
normalised when the rule is parsed, a requested name when it arrives, so
matching compares two normal forms, label by label (`*.corp.example` admits
`db.corp.example`, never `evilcorp.example` nor a name with a NUL in it).
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

from roam.errors import ConfigError
from roam.names import DnsName, Host, InvalidHost, IPAddress

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


def split_host_port(text: str, what: str) -> tuple[str, str]:
    """'host:port' or '[v6]:port' into its parts, with an error naming `what`."""
    text = text.strip()
    if text.startswith("["):
        end = text.find("]")
        if end < 0 or text[end + 1:end + 2] != ":":
            raise ConfigError(f"{what} {text!r}: expected [IPv6]:PORT")
        return text[1:end], text[end + 2:]
    host, sep, port = text.rpartition(":")
    if not sep or not host:
        raise ConfigError(f"{what} {text!r}: expected HOST:PORT")
    if ":" in host:
        raise ConfigError(f"{what} {text!r}: put an IPv6 address in brackets, [addr]:PORT")
    return host, port


def format_host_port(host: str, port: int) -> str:
    """The inverse of split_host_port: IPv6 addresses get their brackets back."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def parse_port(text: str, what: str, *, wildcard: bool = False) -> int | None:
    if wildcard and text == "*":
        return None
    if not (text.isascii() and text.isdigit()) or not 0 < int(text) < 65536:
        raise ConfigError(f"{what}: port {text!r} is not a number from 1 to 65535"
                          + (" or *" if wildcard else ""))
    return int(text)


@dataclass(frozen=True, slots=True)
class AllowRule:
    text: str
    network: IPNetwork | None  # address or CIDR rule
    name: DnsName | None  # the name, or the parent of *.name; None with no network: any host
    port: int | None  # None: any port
    below: bool = False  # *.name: only names strictly below `name`

    @classmethod
    def parse(cls, text: str, flag: str = "--allow") -> AllowRule:
        host, port_text = split_host_port(text, flag)
        port = parse_port(port_text, f"{flag} {text!r}", wildcard=True)
        if host == "*":
            return cls(text, None, None, port)
        try:
            return cls(text, ipaddress.ip_network(host, strict=False), None, port)
        except ValueError:
            pass
        if "/" in host:
            raise ConfigError(f"{flag} {text!r}: {host!r} is not a valid CIDR network")
        below = host.startswith("*.")
        if below:
            host = host[2:]
        if "*" in host:
            raise ConfigError(f"{flag} {text!r}: a wildcard may only lead a name (*.example.com)")
        try:
            name = DnsName.parse(host)
        except InvalidHost as exc:
            raise ConfigError(f"{flag} {text!r}: {exc}") from None
        return cls(text, None, name, port, below)

    def port_ok(self, port: int) -> bool:
        return self.port is None or self.port == port

    @property
    def any_host(self) -> bool:
        return self.network is None and self.name is None

    def name_ok(self, host: Host) -> bool:
        name = host.name
        if self.name is None or name is None:
            return False
        return name.is_below(self.name) if self.below else name == self.name

    def address_ok(self, addr: IPAddress) -> bool:
        return self.network is not None and addr in self.network


class AccessList:
    def __init__(self, rules: list[AllowRule]) -> None:
        self.rules = rules

    @classmethod
    def parse(cls, texts: list[str], flag: str = "--allow") -> AccessList:
        return cls([AllowRule.parse(t, flag) for t in texts])

    def allows_name(self, host: Host, port: int) -> bool:
        """True when a rule admits this host by name (or any host) on this port."""
        return any(r.port_ok(port) and (r.any_host or r.name_ok(host)) for r in self.rules)

    def has_address_rules(self, port: int) -> bool:
        """Whether some address or network rule covers this port."""
        return any(r.network is not None and r.port_ok(port) for r in self.rules)

    def allows_address(self, addr: str, port: int) -> bool:
        try:
            ip = ipaddress.ip_address(addr)
        except ValueError:
            return False
        return any(r.port_ok(port) and (r.any_host or r.address_ok(ip)) for r in self.rules)
