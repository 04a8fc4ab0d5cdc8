"""SIP URIs, sans-IO (RFC 3261 section 19.1): sip: and sips: URIs read
and written back, and the contact URI a unit registers."""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass

from roam.errors import ConfigError
from roam.registrar.sipsyntax import (
    Params,
    SipError,
    find_param,
    format_params,
    parse_params,
)

SIP_PORT = 5060  # RFC 3261 section 19.1.2
SIPS_PORT = 5061

SCHEME = re.compile(r"[A-Za-z][A-Za-z0-9+.\-]*:")
_LABEL = re.compile(r"[A-Za-z0-9\-]+")
_USER = re.compile(r"[A-Za-z0-9\-_.!~*'()&=+$,;?/%]+")  # RFC 3261 section 25.1 user


@dataclass(frozen=True, slots=True)
class SipUri:
    """sip:user@host:port;params, the parts this module needs (RFC 3261
    section 19.1.1); `host` keeps an IPv6 address's brackets."""

    scheme: str
    user: str | None
    host: str
    port: int | None
    params: Params = ()
    headers: str = ""

    def __str__(self) -> str:
        text = f"{self.scheme}:"
        if self.user is not None:
            text += f"{self.user}@"
        text += self.host
        if self.port is not None:
            text += f":{self.port}"
        text += format_params(self.params)
        return text + (f"?{self.headers}" if self.headers else "")

    def param(self, name: str) -> str | None:
        return find_param(self.params, name)

    @property
    def transport(self) -> str:
        """The transport this URI asks for: its transport parameter, else UDP
        for sip and TLS for sips (RFC 3261 sections 19.1.2 and 26.2)."""
        value = self.param("transport")
        if value:
            return value.lower()
        return "tls" if self.scheme == "sips" else "udp"

    def address(self) -> tuple[str, int]:
        """(host, port) to reach, the host without brackets; the scheme's
        default port when none is given (RFC 3261 section 19.1.2)."""
        port = self.port or (SIPS_PORT if self.scheme == "sips" else SIP_PORT)
        return self.host.strip("[]"), port


def parse_uri(text: str) -> SipUri:
    """A sip: or sips: URI; SipError names what is wrong with any other text."""
    if len(text) > 1024:
        raise SipError(f"a URI of {len(text)} characters (at most 1024)")
    match = SCHEME.match(text)
    if not match:
        raise SipError(f"{text[:80]!r} is not a URI (no scheme)")
    scheme = match.group()[:-1].lower()
    if scheme not in ("sip", "sips"):
        raise SipError(f"URI {text[:80]!r}: scheme {scheme!r} is not sip or sips")
    rest = text[match.end():]
    rest, _, headers = rest.partition("?")
    user: str | None = None
    if "@" in rest:
        user, _, rest = rest.rpartition("@")
        if not user or not _USER.fullmatch(user.partition(":")[0]):
            raise SipError(f"URI {text[:80]!r}: bad user part {user[:40]!r}")
    hostport, _, param_text = rest.partition(";")
    params = parse_params(param_text, f"URI {text[:80]!r}") if param_text else ()
    if hostport.startswith("["):
        end = hostport.find("]")
        host, port_text = hostport[:end + 1], hostport[end + 1:]
        if end < 0 or not _is_ipv6(host[1:-1]):
            raise SipError(f"URI {text[:80]!r}: bad IPv6 reference {hostport[:50]!r}")
    else:
        host, colon, port_text = hostport.partition(":")
        port_text = colon + port_text
        if not _is_hostname(host):
            raise SipError(f"URI {text[:80]!r}: bad host {host[:60]!r}")
    port: int | None = None
    if port_text:
        digits = port_text[1:]
        if not port_text.startswith(":") or not (digits.isascii() and digits.isdigit()) \
                or len(digits) > 5 or not 0 < int(digits) < 65536:
            raise SipError(f"URI {text[:80]!r}: port {port_text[1:20]!r} is not 1 to 65535")
        port = int(digits)
    return SipUri(scheme, user, host, port, params, headers)


def _is_ipv6(text: str) -> bool:
    try:
        ipaddress.IPv6Address(text)
    except ValueError:
        return False
    return True


def _is_hostname(text: str) -> bool:
    """A host name or IPv4 address (RFC 3261 section 25.1 hostname, which
    takes in IPv4address): dot-separated labels, no label starting or
    ending with a hyphen, one trailing dot allowed."""
    labels = text.removesuffix(".").split(".")
    return 0 < len(text) <= 255 and all(
        _LABEL.fullmatch(label) and label[0] != "-" and label[-1] != "-" for label in labels)


def contact_uri(user: str, host: str, port: int, transport: str = "tcp") -> str:
    """The contact a unit registers: where its roam daemon listens, for
    example `sip:alice@198.18.1.2:7000;transport=tcp`."""
    if not _USER.fullmatch(user):
        raise ConfigError(f"contact user {user!r} has characters a SIP URI cannot hold")
    bracketed = f"[{host}]" if ":" in host and not host.startswith("[") else host
    try:
        return str(parse_uri(f"sip:{user}@{bracketed}:{port};transport={transport}"))
    except SipError as exc:
        raise ConfigError(f"contact: {exc}") from None
