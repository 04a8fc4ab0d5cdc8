"""SIP registration for a unit's address-of-record, sans-IO (RFC 3261 section 10).

A unit can use a SIP registrar (Kamailio, say) as the third unit that
records where each unit can be reached now (claim 19): it REGISTERs its
address-of-record (AOR) with its current roam address as the contact, and
finds a peer's current contact by reading the peer's bindings, a REGISTER
with the peer's AOR in To and no Contact (RFC 3261 section 10.2.3).

This module writes the requests and reads the responses; it opens no
socket and reads no clock. `Registration` keeps one unit's binding (bytes to
send and events out, responses and `now` in), `Lookup` reads a peer's,
`MessageStream` cuts a TCP byte stream into messages, and `parse_response`
reads one message. Everything random (tags, branches, Call-IDs, cnonces)
comes from the `random` callable given, so tests are repeatable.

A unit that moves replaces its binding instead of adding one: its contact
carries a `+sip.instance` that stays the same wherever the unit is (RFC 5626
section 4.1), by which a registrar keys the binding, and the REGISTER that
carries the new contact also removes the old one by name with `expires=0`
(RFC 3261 section 10.2.2), for a registrar that keys bindings by URI only.

Every malformed or oversized response raises `SipError` (a ProtocolError)
whose message names the problem; bad local input (an AOR that is not a SIP
URI, say) raises ConfigError.
"""

from __future__ import annotations

import hashlib
import ipaddress
import re
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace

from roam.errors import ConfigError, ProtocolError

Random = Callable[[int], bytes]  # n random bytes, as os.urandom

# Bounds on what a registrar may send us. RFC 3261 sets none; a REGISTER
# response lists an AOR's bindings and a challenge or two, a few KiB at most.
MAX_MESSAGE = 64 * 1024  # about the largest UDP datagram (RFC 3261 section 18.1.1)
MAX_HEADERS = 128  # header fields after unfolding
MAX_CONTACTS = 64  # bindings of one AOR
MAX_AUTH_PARAMS = 32  # parameters of one challenge
MAX_PARAMS = 32  # parameters of one URI, Contact or Via value
MAX_SECONDS = 2**32 - 1  # RFC 3261 section 20.19: expiry values are 32-bit
MAX_CSEQ = 2**31 - 1  # RFC 3261 section 8.1.1.5

SIP_VERSION = "SIP/2.0"
BRANCH_COOKIE = "z9hG4bK"  # RFC 3261 section 8.1.1.7: marks an RFC 3261 branch
MAX_FORWARDS = 70  # RFC 3261 section 8.1.1.6
# Kamailio's default too: refreshed at half, every five minutes, so a unit
# gone for good is forgotten within ten.
DEFAULT_EXPIRES_S = 600
SIP_PORT = 5060  # RFC 3261 section 19.1.2
SIPS_PORT = 5061
# Removals of contacts a unit may still have bound, carried until a 200
# confirms them; a unit that moves faster than its registrar answers keeps
# only the latest few.
MAX_REMOVALS = 4

# RFC 3261 section 7.3.3 and section 20, and the compact forms later RFCs
# added (3265 o/u, 3515 r, 3892 b, 4028 x, 3841 a/j/d, 4474 y/n).
COMPACT_FORMS = {
    "i": "call-id", "m": "contact", "e": "content-encoding", "l": "content-length",
    "c": "content-type", "f": "from", "s": "subject", "k": "supported", "t": "to", "v": "via",
    "o": "event", "u": "allow-events", "r": "refer-to", "b": "referred-by",
    "x": "session-expires", "a": "accept-contact", "j": "reject-contact",
    "d": "request-disposition", "y": "identity", "n": "identity-info",
}

_TOKEN = re.compile(r"[A-Za-z0-9\-.!%*_+`'~]+")  # RFC 3261 section 25.1
_STATUS_LINE = re.compile(r"SIP/2\.0 ([1-6][0-9][0-9]) (.*)")
_SCHEME = re.compile(r"[A-Za-z][A-Za-z0-9+.\-]*:")
_CONTROL = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")  # all but HT (RFC 3261 section 25.1)
_LABEL = re.compile(r"[A-Za-z0-9\-]+")
# A parameter value written as it is (a token, or an address with its
# colons and brackets); anything else is written as a quoted string.
_PVALUE = re.compile(r"[A-Za-z0-9\-.!%*_+`'~:\[\]]+")
# What a user name, password and contact may hold when this module writes
# them into a request: no quote, backslash, angle bracket or control character.
_SAFE_TEXT = re.compile(r"[^\"\\<>\x00-\x1f\x7f]+")
_USER = re.compile(r"[A-Za-z0-9\-_.!~*'()&=+$,;?/%]+")  # RFC 3261 section 25.1 user


class SipError(ProtocolError):
    """A SIP message from the registrar is malformed or too large; the message
    names the problem."""


# --- URIs ---------------------------------------------------------------------


Params = tuple[tuple[str, str | None], ...]


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
        text += _format_params(self.params)
        return text + (f"?{self.headers}" if self.headers else "")

    def param(self, name: str) -> str | None:
        return _param(self.params, name)

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
    match = _SCHEME.match(text)
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
    params = _parse_params(param_text, f"URI {text[:80]!r}") if param_text else ()
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


def instance_for(aor: str) -> str:
    """A unit's +sip.instance: a UUID URN named by its AOR (RFC 4122 section
    4.3), the same after every restart and on every network, as RFC 5626
    section 4.1 asks, without a file to keep it in."""
    return f"urn:uuid:{uuid.uuid5(uuid.NAMESPACE_URL, aor)}"


# --- Values: comma lists, parameters, quoted strings ---------------------------


def _split_top(text: str, sep: str, what: str) -> list[str]:
    """`text` split at `sep` outside quoted strings and <...> (RFC 3261
    section 7.3.1: a comma inside either separates nothing)."""
    parts: list[str] = []
    start = 0
    quoted = angle = False
    i = 0
    while i < len(text):
        ch = text[i]
        if quoted:
            if ch == "\\":
                i += 1
            elif ch == '"':
                quoted = False
        elif ch == '"':
            quoted = True
        elif ch == "<":
            angle = True
        elif ch == ">":
            angle = False
        elif ch == sep and not angle:
            parts.append(text[start:i])
            start = i + 1
        i += 1
    if quoted:
        raise SipError(f"{what}: a quoted string does not end")
    if angle:
        raise SipError(f"{what}: a '<' is not closed")
    parts.append(text[start:])
    return parts


def _unquote(value: str, what: str) -> str:
    """A quoted-string's content (RFC 3261 section 25.1, quoted-pair
    unescaped), or a token as it is."""
    value = value.strip()
    if not value.startswith('"'):
        return value
    if len(value) < 2 or not value.endswith('"'):
        raise SipError(f"{what}: a quoted string does not end")
    out: list[str] = []
    inner = value[1:-1]
    i = 0
    while i < len(inner):
        ch = inner[i]
        if ch == "\\":
            i += 1
            if i == len(inner):
                raise SipError(f"{what}: a quoted string ends in a lone backslash")
            ch = inner[i]
        elif ch == '"':
            raise SipError(f"{what}: a quote inside a quoted string")
        out.append(ch)
        i += 1
    return "".join(out)


def _quote(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _parse_params(text: str, what: str) -> Params:
    """`a=1;b;c="x;y"` into (name lower-cased, value unquoted or None)."""
    items = _split_top(text, ";", what)
    if len(items) > MAX_PARAMS:
        raise SipError(f"{what}: more than {MAX_PARAMS} parameters")
    out: list[tuple[str, str | None]] = []
    for item in items:
        name, eq, value = item.partition("=")
        name = name.strip()
        if not _TOKEN.fullmatch(name):
            raise SipError(f"{what}: bad parameter name {name[:40]!r}")
        out.append((name.lower(), _unquote(value, f"{what} parameter {name[:40]!r}")
                    if eq else None))
    return tuple(out)


def _format_params(params: Params) -> str:
    out = ""
    for name, value in params:
        if value is None:
            out += f";{name}"
        elif _PVALUE.fullmatch(value):
            out += f";{name}={value}"
        else:
            out += f";{name}={_quote(value)}"
    return out


def _param(params: Params, name: str) -> str | None:
    for key, value in params:
        if key == name:
            return value
    return None


def _seconds(text: str, what: str) -> int:
    """delta-seconds (RFC 3261 section 25.1), capped at 2**32-1 as section 20.19 asks."""
    text = text.strip()
    if not (text.isascii() and text.isdigit()) or len(text) > 20:
        raise SipError(f"{what} {text[:30]!r} is not a number of seconds")
    return min(int(text), MAX_SECONDS)


# --- Responses -----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Binding:
    """One contact bound to an AOR, as a registrar's 200 lists it."""

    uri: str
    expires_s: int | None
    params: Params = ()

    @property
    def instance(self) -> str | None:
        value = _param(self.params, "+sip.instance")
        return value.strip("<>") if value else None

    def sip_uri(self) -> SipUri:
        return parse_uri(self.uri)


def parse_contact(value: str) -> Binding:
    """One Contact value: `<uri>;params`, `"name" <uri>;params` or `uri;params`
    (RFC 3261 section 20.10: without brackets, what follows `;` is the
    header's parameters, not the URI's)."""
    value = value.strip()
    what = f"Contact {value[:60]!r}"
    if value == "*":
        raise SipError("Contact '*' in a response (it only removes bindings in a request)")
    if "<" in value:
        open_at = value.index("<")
        close_at = value.find(">", open_at)
        if close_at < 0:
            raise SipError(f"{what}: '<' without '>'")
        display = value[:open_at].strip()
        if display and not display.startswith('"') and not all(
                _TOKEN.fullmatch(word) for word in display.split()):
            raise SipError(f"{what}: bad display name")
        if display.startswith('"'):
            _unquote(display, what)
        uri = value[open_at + 1:close_at].strip()
        rest = value[close_at + 1:].strip()
    else:
        uri, sep, rest = value.partition(";")
        uri = uri.strip()
        rest = sep + rest
    if not _SCHEME.match(uri):
        raise SipError(f"{what}: {uri[:60]!r} is not a URI")
    params: Params = ()
    if rest:
        if not rest.startswith(";"):
            raise SipError(f"{what}: {rest[:30]!r} after the URI is not a parameter")
        params = _parse_params(rest[1:], what)
    expires = _param(params, "expires")
    return Binding(uri, _seconds(expires, f"{what}: expires") if expires is not None else None,
                   params)


@dataclass(frozen=True, slots=True)
class Challenge:
    """One Digest challenge of a 401 or 407 (RFC 7616 section 3.3)."""

    realm: str
    nonce: str
    algorithm: str = "MD5"  # upper case, as HASHES names them
    qop: tuple[str, ...] = ()  # lower case
    opaque: str | None = None
    stale: bool = False
    proxy: bool = False  # a Proxy-Authenticate (407): answer in Proxy-Authorization


def parse_challenge(value: str, *, proxy: bool = False) -> Challenge | None:
    """A WWW-Authenticate or Proxy-Authenticate value; None for a scheme other
    than Digest, which a unit cannot answer but need not refuse."""
    value = value.strip()
    scheme, _, rest = value.partition(" ")
    if not _TOKEN.fullmatch(scheme):
        raise SipError(f"challenge {value[:60]!r}: bad scheme")
    if scheme.lower() != "digest":
        return None
    items = [item for item in _split_top(rest, ",", "challenge") if item.strip()]
    if len(items) > MAX_AUTH_PARAMS:
        raise SipError(f"challenge with more than {MAX_AUTH_PARAMS} parameters")
    params: dict[str, str] = {}
    for item in items:
        name, eq, raw = item.partition("=")
        name = name.strip().lower()
        if not eq or not _TOKEN.fullmatch(name):
            raise SipError(f"challenge parameter {item.strip()[:40]!r} is not name=value")
        if name in params:
            raise SipError(f"challenge parameter {name!r} given twice")
        params[name] = _unquote(raw, f"challenge parameter {name!r}")
    realm, nonce = params.get("realm"), params.get("nonce")
    if realm is None or not nonce:
        raise SipError("a Digest challenge without realm or nonce (RFC 7616 section 3.3)")
    qop = tuple(q.strip().lower() for q in params.get("qop", "").split(",") if q.strip())
    return Challenge(realm, nonce, params.get("algorithm", "MD5").upper(), qop,
                     params.get("opaque"), params.get("stale", "").lower() == "true", proxy)


@dataclass(frozen=True, slots=True)
class Response:
    """A parsed SIP response: status, headers (names lower case, compact
    forms spelled out, one entry per field value line) and body."""

    status: int
    reason: str
    headers: tuple[tuple[str, str], ...]
    body: bytes = b""

    def values(self, name: str) -> list[str]:
        return [value for key, value in self.headers if key == name]

    def first(self, name: str) -> str | None:
        for key, value in self.headers:
            if key == name:
                return value
        return None

    def list_values(self, name: str) -> list[str]:
        """Every element of a comma-list header, over all its field lines."""
        out: list[str] = []
        for value in self.values(name):
            out.extend(v.strip() for v in _split_top(value, ",", name) if v.strip())
        return out

    @property
    def call_id(self) -> str | None:
        return self.first("call-id")

    def cseq(self) -> tuple[int, str]:
        value = self.first("cseq")
        if value is None:
            raise SipError("a response without CSeq")
        number, _, method = value.strip().partition(" ")
        if not (number.isascii() and number.isdigit()) or len(number) > 10 \
                or int(number) > MAX_CSEQ or not _TOKEN.fullmatch(method.strip()):
            raise SipError(f"CSeq {value[:40]!r} is not 'NUMBER METHOD'")
        return int(number), method.strip()

    def branch(self) -> str | None:
        """The top Via's branch: the transaction this response answers
        (RFC 3261 section 17.1.3)."""
        vias = self.list_values("via")
        if not vias:
            raise SipError("a response without Via")
        sent, _, param_text = vias[0].partition(";")
        if not sent.strip().upper().startswith("SIP/2.0/"):
            raise SipError(f"Via {vias[0][:60]!r} is not SIP/2.0/TRANSPORT HOST")
        return _param(_parse_params(param_text, "Via"), "branch") if param_text else None

    def contacts(self) -> list[Binding]:
        values = self.list_values("contact")
        if len(values) > MAX_CONTACTS:
            raise SipError(f"a response listing {len(values)} contacts (at most {MAX_CONTACTS})")
        return [parse_contact(v) for v in values]

    def challenges(self) -> list[Challenge]:
        """Digest challenges in the order given, the 401's WWW-Authenticate or
        the 407's Proxy-Authenticate."""
        proxy = self.status == 407
        name = "proxy-authenticate" if proxy else "www-authenticate"
        found = [parse_challenge(v, proxy=proxy) for v in self.values(name)]
        return [c for c in found if c is not None]

    def expires(self) -> int | None:
        value = self.first("expires")
        return _seconds(value, "Expires") if value is not None else None

    def min_expires(self) -> int | None:
        value = self.first("min-expires")
        return _seconds(value, "Min-Expires") if value is not None else None


def _split_head(data: bytes) -> tuple[bytes, bytes]:
    end = data.find(b"\r\n\r\n")
    if end < 0:
        raise SipError("the header section does not end (no empty line after it)")
    return data[:end], data[end + 4:]


def _parse_headers(lines: list[str]) -> list[tuple[str, str]]:
    headers: list[tuple[str, str]] = []
    for line in lines:
        if line[:1] in (" ", "\t"):
            # RFC 3261 section 7.3.1: a line that begins with white space
            # continues the field above it.
            if not headers:
                raise SipError("a continuation line before any header field")
            name, value = headers[-1]
            headers[-1] = (name, f"{value} {line.strip()}".strip())
            continue
        name, colon, value = line.partition(":")
        name = name.rstrip(" \t")
        if not colon or not _TOKEN.fullmatch(name):
            raise SipError(f"header line {line[:60]!r} is not 'Name: value'")
        name = name.lower()
        headers.append((COMPACT_FORMS.get(name, name), value.strip()))
        if len(headers) > MAX_HEADERS:
            raise SipError(f"more than {MAX_HEADERS} header fields")
    return headers


def parse_response(data: bytes) -> Response:
    """One whole SIP response (one UDP datagram, or one message MessageStream cut)."""
    if len(data) > MAX_MESSAGE:
        raise SipError(f"a SIP message of {len(data)} bytes (at most {MAX_MESSAGE})")
    head, body = _split_head(data)
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError:
        raise SipError("the header section is not UTF-8 (RFC 3261 section 7.3)") from None
    lines = text.split("\r\n")
    if _CONTROL.search(text.replace("\r\n", "")):
        raise SipError("a control character in the header section")
    start = _STATUS_LINE.fullmatch(lines[0])
    if not start:
        if lines[0].endswith(" SIP/2.0"):
            raise SipError(f"a request ({lines[0][:60]!r}) where a response was expected")
        raise SipError(f"status line {lines[0][:60]!r} is not 'SIP/2.0 CODE REASON'")
    headers = _parse_headers(lines[1:])
    length_text = next((v for k, v in headers if k == "content-length"), None)
    if length_text is not None:
        length = _seconds(length_text, "Content-Length")
        if length > len(body):
            raise SipError(f"Content-Length {length} but {len(body)} body bytes")
        # RFC 3261 section 18.3: bytes beyond Content-Length are not the message's.
        body = body[:length]
    return Response(int(start.group(1)), start.group(2), tuple(headers), body)


class MessageStream:
    """Cuts a stream transport's bytes into whole SIP messages by their
    Content-Length, which RFC 3261 section 18.3 makes mandatory there. The
    CRLFs of keep-alives (RFC 5626 section 3.5.1) between messages are
    skipped. Holds at most one message of MAX_MESSAGE bytes."""

    def __init__(self) -> None:
        self._buf = bytearray()
        # Where the search for the header section's end goes on, and the
        # length of the message once its header section is read: bytes that
        # trickle in one by one are not searched or parsed again each time.
        self._searched = 0
        self._total: int | None = None

    def feed(self, data: bytes) -> list[bytes]:
        self._buf += data
        out: list[bytes] = []
        while True:
            if self._total is None:
                while self._buf[:2] == b"\r\n":
                    del self._buf[:2]
                    self._searched = max(0, self._searched - 2)
                end = self._buf.find(b"\r\n\r\n", max(0, self._searched - 3))
                if end < 0:
                    if len(self._buf) > MAX_MESSAGE:
                        raise SipError(f"no end of header section within {MAX_MESSAGE} bytes")
                    self._searched = len(self._buf)
                    return out
                self._total = end + 4 + self._content_length(bytes(self._buf[:end]))
                if self._total > MAX_MESSAGE:
                    raise SipError(f"a SIP message of {self._total} bytes "
                                   f"(at most {MAX_MESSAGE})")
            if len(self._buf) < self._total:
                return out
            out.append(bytes(self._buf[:self._total]))
            del self._buf[:self._total]
            self._total = None
            self._searched = 0

    @staticmethod
    def _content_length(head: bytes) -> int:
        try:
            text = head.decode("utf-8")
        except UnicodeDecodeError:
            raise SipError("the header section is not UTF-8 (RFC 3261 section 7.3)") from None
        lengths = [v for k, v in _parse_headers(text.split("\r\n")[1:]) if k == "content-length"]
        if not lengths:
            raise SipError("a message on a stream without Content-Length (RFC 3261 section 18.3)")
        return _seconds(lengths[0], "Content-Length")

    @property
    def held(self) -> int:
        return len(self._buf)


# --- Digest (RFC 2617, RFC 7616, RFC 8760) ---------------------------------------

# RFC 7616 section 3.2 / RFC 8760 section 2.2: the hashes a unit can answer
# with, strongest first. Against a registrar that offers several, a unit
# takes the strongest (RFC 8760 section 2.4 lets local policy choose); a
# weaker challenge put above a stronger one cannot steer it to MD5.
HASHES: dict[str, Callable[[bytes], str]] = {
    "SHA-256": lambda data: hashlib.sha256(data).hexdigest(),
    "MD5": lambda data: hashlib.md5(data, usedforsecurity=False).hexdigest(),
}


def _algorithm(name: str) -> tuple[Callable[[bytes], str], bool] | None:
    """(hash, session variant) for a challenge's algorithm, or None."""
    base = name.upper().removesuffix("-SESS")
    if base not in HASHES:
        return None
    return HASHES[base], name.upper().endswith("-SESS")


def choose_challenge(challenges: Iterable[Challenge]) -> Challenge | None:
    """The challenge to answer: the strongest algorithm, then the topmost."""
    order = list(HASHES)
    usable = [c for c in challenges if _algorithm(c.algorithm) is not None
              and (not c.qop or "auth" in c.qop)]
    if not usable:
        return None
    return min(usable, key=lambda c: order.index(c.algorithm.upper().removesuffix("-SESS")))


def digest_response(*, algorithm: str, username: str, password: str, realm: str, nonce: str,
                    method: str, uri: str, qop: str | None = None, nc: int = 1,
                    cnonce: str | None = None) -> str:
    """The `response` value of RFC 7616 section 3.4.1 (RFC 2617 section 3.2.2.1
    for MD5): KD(H(A1), nonce:nc:cnonce:qop:H(A2)), or without qop the RFC
    2069 form KD(H(A1), nonce:H(A2)) that RFC 2617 section 3.2.2.1 keeps."""
    found = _algorithm(algorithm)
    if found is None:
        raise ConfigError(f"digest algorithm {algorithm!r} is not one of "
                          f"{', '.join(HASHES)} (or their -sess forms)")
    h, session = found
    ha1 = h(f"{username}:{realm}:{password}".encode())
    if session:
        if not cnonce:
            raise ConfigError(f"{algorithm} needs a cnonce (RFC 7616 section 3.4.2)")
        ha1 = h(f"{ha1}:{nonce}:{cnonce}".encode())  # RFC 7616 section 3.4.2
    ha2 = h(f"{method}:{uri}".encode())  # qop=auth: RFC 7616 section 3.4.3
    if qop is None:
        return h(f"{ha1}:{nonce}:{ha2}".encode())
    if qop != "auth":
        raise ConfigError(f"qop {qop!r} is not supported (only auth)")
    if not cnonce:
        raise ConfigError("qop=auth needs a cnonce (RFC 7616 section 3.4)")
    return h(f"{ha1}:{nonce}:{nc:08x}:{cnonce}:{qop}:{ha2}".encode())


def authorization(challenge: Challenge, *, username: str, password: str, method: str, uri: str,
                  nc: int, cnonce: str) -> str:
    """The Authorization (or Proxy-Authorization) value answering `challenge`
    (RFC 7616 section 3.4; RFC 3261 section 22.4 for SIP)."""
    qop = "auth" if "auth" in challenge.qop else None
    response = digest_response(algorithm=challenge.algorithm, username=username,
                               password=password, realm=challenge.realm, nonce=challenge.nonce,
                               method=method, uri=uri, qop=qop, nc=nc, cnonce=cnonce)
    parts = [f"username={_quote(username)}", f"realm={_quote(challenge.realm)}",
             f"nonce={_quote(challenge.nonce)}", f"uri={_quote(uri)}",
             f"response={_quote(response)}", f"algorithm={challenge.algorithm}"]
    if qop is not None or challenge.algorithm.upper().endswith("-SESS"):
        parts.append(f"cnonce={_quote(cnonce)}")
    if challenge.opaque is not None:
        parts.append(f"opaque={_quote(challenge.opaque)}")
    if qop is not None:
        parts += [f"qop={qop}", f"nc={nc:08x}"]
    return "Digest " + ", ".join(parts)


# --- Accounts and events -------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Account:
    """A unit's registrar account: its AOR (`sip:USER@DOMAIN`) and the user
    name and password it authenticates with (the AOR's user by default)."""

    aor: str
    password: str = field(repr=False)
    username: str = ""

    def __post_init__(self) -> None:
        try:
            uri = parse_uri(self.aor)
        except SipError as exc:
            raise ConfigError(f"address-of-record: {exc}") from None
        if not uri.user or uri.port is not None or uri.params or uri.headers:
            raise ConfigError(f"address-of-record {self.aor!r} must be sip:USER@DOMAIN")
        if not self.username:
            object.__setattr__(self, "username", uri.user)
        for what, value in (("user name", self.username), ("password", self.password)):
            if len(value) > 256 or not _SAFE_TEXT.fullmatch(value):
                raise ConfigError(f"the {what} of {self.aor} must be 1 to 256 characters "
                                  "without quotes, backslashes, <, > or control characters")

    @property
    def domain(self) -> str:
        return parse_uri(self.aor).host

    @property
    def registrar_uri(self) -> str:
        """The Request-URI of a REGISTER: the AOR's domain, no user part
        (RFC 3261 section 10.2)."""
        uri = parse_uri(self.aor)
        return f"{uri.scheme}:{uri.host}"


@dataclass(frozen=True, slots=True)
class Send:
    """Bytes for the registrar: a new request (a challenge answered, an
    interval raised)."""

    data: bytes


@dataclass(frozen=True, slots=True)
class Provisional:
    """A 1xx: the registrar is working on it (RFC 3261 section 17.1.2.2)."""

    status: int


@dataclass(frozen=True, slots=True)
class Ignored:
    """A response to no request in progress: a retransmission, a late answer."""

    reason: str


@dataclass(frozen=True, slots=True)
class Registered:
    aor: str
    contact: str
    expires_s: int
    bindings: tuple[Binding, ...]  # every binding of the AOR, as the 200 lists them


@dataclass(frozen=True, slots=True)
class Unregistered:
    aor: str
    bindings: tuple[Binding, ...]  # what is left bound (other units' contacts)


@dataclass(frozen=True, slots=True)
class Found:
    aor: str
    bindings: tuple[Binding, ...]  # the peer's current contacts; empty: none


@dataclass(frozen=True, slots=True)
class Refused:
    status: int
    reason: str
    detail: str  # what it means, for a person

    def __str__(self) -> str:
        return f"{self.status} {self.reason} ({self.detail})"


Event = Send | Provisional | Ignored | Registered | Unregistered | Found | Refused


# --- Requests and their transactions -------------------------------------------------


def _token(random: Random, size: int) -> str:
    data = random(size)
    if len(data) != size:
        raise ConfigError(f"the random source gave {len(data)} bytes, not {size}")
    return data.hex()


def _sent_by(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host and not host.startswith("[") else f"{host}:{port}"


@dataclass(frozen=True, slots=True)
class _Operation:
    """A REGISTER to send, and what to send again if it is challenged or its
    interval is too brief."""

    to: str
    contacts: tuple[str, ...]  # formatted Contact values; ("*",) removes all
    expires: int | None
    contact: str | None = None  # the contact a registration binds
    answered: bool = False  # carries an answer to a challenge to this operation
    stale_answers: int = 0
    interval_raised: bool = False


@dataclass(frozen=True, slots=True)
class _Pending:
    """The REGISTER in progress and what identifies its answers."""

    op: _Operation
    branch: str
    cseq: int


class _Registering:
    """What REGISTERs of one account share: the Call-ID kept for every
    request to this registrar (RFC 3261 section 10.2), the From tag, the
    increasing CSeq, the digest answers and the transaction in progress."""

    def __init__(self, account: Account, *, transport: str, random: Random) -> None:
        if transport.lower() not in ("udp", "tcp"):
            raise ConfigError(f"SIP transport {transport!r} is not udp or tcp")
        self.account = account
        self.transport = transport.upper()
        self._random = random
        self.call_id = _token(random, 16)
        self._from_tag = _token(random, 8)
        self._cseq = 0
        # The local host and port written into Via; the driver sets it to
        # its socket's before each request.
        self.sent_by: tuple[str, int] = ("0.0.0.0", 0)
        # The last challenge answered and its nonce count: answered again in
        # each later request, so a refresh needs no 401 while the nonce is
        # good (RFC 3261 section 22.3; RFC 7616 section 3.4: nc increases).
        self._cached: Challenge | None = None
        self._nc = 0
        self._pending: _Pending | None = None

    @property
    def pending(self) -> bool:
        return self._pending is not None

    def _request(self, op: _Operation) -> bytes:
        """`op` as a new transaction (RFC 3261 section 8.1.3.5 for one sent
        again: a new branch, CSeq one higher)."""
        self._cseq += 1
        if self._cseq > MAX_CSEQ:
            raise ConfigError("CSeq would pass 2**31 - 1 (RFC 3261 section 8.1.1.5)")
        branch = BRANCH_COOKIE + _token(self._random, 12)
        self._pending = _Pending(op, branch, self._cseq)
        uri = self.account.registrar_uri
        lines = [
            f"REGISTER {uri} {SIP_VERSION}",
            # rport (RFC 3581 section 3): answer to the port this came from,
            # which behind a NAT is not the one in Via.
            f"Via: {SIP_VERSION}/{self.transport} {_sent_by(*self.sent_by)};rport;branch={branch}",
            f"Max-Forwards: {MAX_FORWARDS}",
            f"From: <{self.account.aor}>;tag={self._from_tag}",
            f"To: <{op.to}>",
            f"Call-ID: {self.call_id}",
            f"CSeq: {self._cseq} REGISTER",
        ]
        lines += [f"Contact: {c}" for c in op.contacts]
        if op.expires is not None:
            lines.append(f"Expires: {op.expires}")
        if self._cached is not None:
            self._nc += 1
            name = "Proxy-Authorization" if self._cached.proxy else "Authorization"
            lines.append(f"{name}: " + authorization(
                self._cached, username=self.account.username, password=self.account.password,
                method="REGISTER", uri=uri, nc=self._nc, cnonce=_token(self._random, 12)))
        lines += ["User-Agent: roam", "Content-Length: 0", "", ""]
        return "\r\n".join(lines).encode()

    def receive(self, response: Response, now: float) -> Event:
        p = self._pending
        if p is None:
            return Ignored(f"a {response.status} with no REGISTER in progress")
        if response.branch() != p.branch or response.call_id != self.call_id \
                or response.cseq() != (p.cseq, "REGISTER"):
            return Ignored(f"a {response.status} for another transaction")
        if response.status < 200:
            return Provisional(response.status)
        self._pending = None
        if response.status < 300:
            return self._success(response, p, now)
        if response.status in (401, 407):
            return self._challenged(response, p)
        if response.status == 423:
            return self._interval_too_brief(response, p)
        return Refused(response.status, response.reason, self._meaning(response.status))

    def _success(self, response: Response, p: _Pending, now: float) -> Event:
        raise NotImplementedError

    def _challenged(self, response: Response, p: _Pending) -> Event:
        offered = response.challenges()
        chosen = choose_challenge(offered)
        if chosen is None:
            self._cached = None
            kinds = ", ".join(sorted({c.algorithm for c in offered})) or "none in Digest"
            return Refused(response.status, response.reason,
                           f"no challenge this unit can answer (offered: {kinds}; "
                           f"it answers {', '.join(HASHES)} with qop=auth or without qop)")
        op = p.op
        if op.answered and not chosen.stale:
            # RFC 3261 section 22.2: challenged again after answering with
            # these credentials, which the registrar therefore refuses.
            self._cached = None
            return Refused(response.status, response.reason,
                           f"wrong password or unknown user {self.account.username!r} "
                           f"in realm {chosen.realm!r}")
        if chosen.stale and op.stale_answers >= 2:
            self._cached = None
            return Refused(response.status, response.reason,
                           "the registrar called every answer stale (its clock or nonces "
                           "are broken)")
        # RFC 7616 section 3.3: stale=true means the password was right and
        # only the nonce is old: answer the new one without counting a failure.
        self._cached = chosen
        self._nc = 0
        return Send(self._request(replace(
            op, answered=True, stale_answers=op.stale_answers + (1 if chosen.stale else 0))))

    def _interval_too_brief(self, response: Response, p: _Pending) -> Event:
        least = response.min_expires()
        op = p.op
        if least is None or op.interval_raised or op.expires is None \
                or not 0 < op.expires < least:
            return Refused(response.status, response.reason,
                           f"the registrar wants at least {least} s and says no "
                           "to what was asked")
        # RFC 3261 section 10.2.8: ask again with at least Min-Expires.
        self._interval_raised(least)
        contacts = tuple(_with_expires(c, least) for c in op.contacts)
        return Send(self._request(replace(op, expires=least, contacts=contacts,
                                          interval_raised=True)))

    def _interval_raised(self, least: int) -> None:
        """The registrar's Min-Expires, for a subclass that asks again later."""

    def _meaning(self, status: int) -> str:
        return {
            403: f"the registrar forbids this to account {self.account.username!r}",
            404: f"the registrar does not know the domain of {self.account.aor}",
            405: "that server is not a registrar (REGISTER not allowed)",
            408: "the registrar timed out",
            420: "the registrar needs an extension this unit lacks",
            480: "the registrar is temporarily unavailable",
            500: "the registrar failed",
            503: "the registrar is overloaded or down",
        }.get(status, f"the registrar says no ({status // 100}xx)")


def _with_expires(contact: str, expires: int) -> str:
    """A formatted Contact value with its expires parameter set to `expires`
    (a removal, expires=0, stays one)."""
    if contact == "*" or contact.endswith(";expires=0"):
        return contact
    head, sep, _ = contact.rpartition(";expires=")
    return f"{head if sep else contact};expires={expires}"


class Registration(_Registering):
    """One unit's binding of its AOR to its current contact.

        data = reg.register(contact, now)       # first time, refresh, or a move
        event = reg.receive(parse_response(answer), now)
        Send -> send event.data; Registered -> registered until now + expires_s;
        Refused -> why; reg.refresh_at says when to register again.

    `sent_by` (the local host and port, for Via) is set by the driver before
    each request.
    """

    def __init__(self, account: Account, *, transport: str, random: Random,
                 expires_s: int = DEFAULT_EXPIRES_S, instance: str | None = None) -> None:
        super().__init__(account, transport=transport, random=random)
        if not 0 < expires_s <= MAX_SECONDS:
            raise ConfigError(f"registration expiry {expires_s} s is not 1 to {MAX_SECONDS}")
        self.expires_s = expires_s
        self.instance = instance or instance_for(account.aor)
        if not _SAFE_TEXT.fullmatch(self.instance):
            raise ConfigError(f"instance {self.instance!r} has characters a Contact cannot hold")
        self.contact: str | None = None  # the contact a 200 confirmed
        self.expires_at: float | None = None
        self.refresh_at: float | None = None
        # Contacts this unit may still have bound (sent, not confirmed gone),
        # newest last: a move removes them in the same REGISTER.
        self._maybe_bound: list[str] = []

    def register(self, contact: str, now: float) -> bytes:
        """A REGISTER binding the AOR to `contact`: the first, a refresh, or
        after a move one that replaces the old contact."""
        del now  # the expiry counts from the 200, not from the request
        try:
            parse_uri(contact)
        except SipError as exc:
            raise ConfigError(f"contact: {exc}") from None
        if not _SAFE_TEXT.fullmatch(contact):
            raise ConfigError(f"contact {contact!r} has characters a Contact cannot hold")
        removals = tuple(f"<{old}>;expires=0" for old in self._maybe_bound if old != contact)
        # The removals go first: a registrar processes Contacts in order, and
        # one that keys bindings by +sip.instance must not take a removal
        # for the new binding (the removals carry no instance).
        contacts = (*removals, f'<{contact}>;+sip.instance="<{self.instance}>"'
                                f";expires={self.expires_s}")
        if contact in self._maybe_bound:
            self._maybe_bound.remove(contact)
        self._maybe_bound = [*self._maybe_bound, contact][-MAX_REMOVALS:]
        return self._request(_Operation(self.account.aor, contacts, self.expires_s, contact))

    def unregister(self, now: float, *, everything: bool = False) -> bytes:
        """A REGISTER removing this unit's contacts, or with `everything`
        every binding of the AOR (`Contact: *` and `Expires: 0`, RFC 3261
        section 10.2.2), as a unit that forgot its old contacts may."""
        del now
        if everything:
            contacts: tuple[str, ...] = ("*",)
        else:
            contacts = tuple(f"<{old}>;expires=0" for old in self._maybe_bound)
            if not contacts:
                raise ConfigError("nothing to unregister: this unit registered no contact "
                                  "(unregister(everything=True) removes all)")
        return self._request(_Operation(self.account.aor, contacts, 0))

    def _success(self, response: Response, p: _Pending, now: float) -> Event:
        bindings = tuple(response.contacts())
        contact = p.op.contact
        if contact is None:
            self.contact = None
            self.expires_at = self.refresh_at = None
            self._maybe_bound = []
            return Unregistered(self.account.aor, bindings)
        granted = self._granted(response, bindings, contact, p.op.expires)
        self._maybe_bound = [contact]
        self.contact = contact
        self.expires_at = now + granted
        # RFC 3261 section 10.2.4 leaves the moment to the unit: at half the
        # granted time, the other half is left for a lost request's
        # retransmissions, a fresh challenge and a second registrar.
        self.refresh_at = now + granted / 2
        return Registered(self.account.aor, contact, granted, bindings)

    def _interval_raised(self, least: int) -> None:
        # Later refreshes ask for what the registrar accepts, not for a 423 each.
        self.expires_s = least

    def _granted(self, response: Response, bindings: tuple[Binding, ...], contact: str,
                 asked: int | None) -> int:
        """The expiry the registrar gave our contact: its expires parameter in
        the 200, else the Expires header, else what was asked (RFC 3261
        section 10.2.4)."""
        for binding in bindings:
            ours = binding.uri == contact or binding.instance == self.instance
            if ours and binding.expires_s is not None:
                return binding.expires_s
        header = response.expires()
        if header is not None:
            return header
        return asked if asked is not None else self.expires_s


class Lookup(_Registering):
    """Reads a peer's bindings: a REGISTER with the peer's AOR in To and no
    Contact (RFC 3261 section 10.2.3), authenticated by this unit's account.

        data = lookup.query("sip:bob@example.net", now)
        event = lookup.receive(parse_response(answer), now)   # Found(...)
    """

    def query(self, peer_aor: str, now: float) -> bytes:
        del now
        try:
            uri = parse_uri(peer_aor)
        except SipError as exc:
            raise ConfigError(f"peer address-of-record: {exc}") from None
        if not uri.user or not _SAFE_TEXT.fullmatch(peer_aor):
            raise ConfigError(f"peer address-of-record {peer_aor!r} must be sip:USER@DOMAIN")
        return self._request(_Operation(peer_aor, (), None))

    def _success(self, response: Response, p: _Pending, now: float) -> Event:
        del now
        return Found(p.op.to, tuple(response.contacts()))
