"""SIP responses as read, sans-IO (RFC 3261 sections 7, 18.3 and 20).

`parse_response` reads one whole response: its status line, its header
fields (folded lines unfolded, compact forms spelled out, section 7.3),
its body cut at Content-Length. `Response` answers what a REGISTER's
answer holds: the transaction it answers (top Via branch, Call-ID, CSeq),
the bindings its Contacts list (section 20.10), its challenges (read by
roam.registrar.sipdigest) and its expiry values. `MessageStream` cuts a
TCP byte stream into messages.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from roam.registrar.sipdigest import Challenge, parse_challenge
from roam.registrar.sipsyntax import (
    TOKEN,
    Params,
    SipError,
    delta_seconds,
    find_param,
    parse_params,
    split_top,
    unquote,
)
from roam.registrar.sipuri import SCHEME, SipUri, parse_uri

# Bounds on what a registrar may send us. RFC 3261 sets none; a REGISTER
# response lists an AOR's bindings and a challenge or two, a few KiB at most.
MAX_MESSAGE = 64 * 1024  # about the largest UDP datagram (RFC 3261 section 18.1.1)
MAX_HEADERS = 128  # header fields after unfolding
MAX_CONTACTS = 64  # bindings of one AOR
MAX_CSEQ = 2**31 - 1  # RFC 3261 section 8.1.1.5

# RFC 3261 section 7.3.3 and section 20, and the compact forms later RFCs
# added (3265 o/u, 3515 r, 3892 b, 4028 x, 3841 a/j/d, 4474 y/n).
COMPACT_FORMS = {
    "i": "call-id", "m": "contact", "e": "content-encoding", "l": "content-length",
    "c": "content-type", "f": "from", "s": "subject", "k": "supported", "t": "to", "v": "via",
    "o": "event", "u": "allow-events", "r": "refer-to", "b": "referred-by",
    "x": "session-expires", "a": "accept-contact", "j": "reject-contact",
    "d": "request-disposition", "y": "identity", "n": "identity-info",
}

_STATUS_LINE = re.compile(r"SIP/2\.0 ([1-6][0-9][0-9]) (.*)")
_CONTROL = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")  # all but HT (RFC 3261 section 25.1)


@dataclass(frozen=True, slots=True)
class Binding:
    """One contact bound to an AOR, as a registrar's 200 lists it."""

    uri: str
    expires_s: int | None
    params: Params = ()

    @property
    def instance(self) -> str | None:
        value = find_param(self.params, "+sip.instance")
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
                TOKEN.fullmatch(word) for word in display.split()):
            raise SipError(f"{what}: bad display name")
        if display.startswith('"'):
            unquote(display, what)
        uri = value[open_at + 1:close_at].strip()
        rest = value[close_at + 1:].strip()
    else:
        uri, sep, rest = value.partition(";")
        uri = uri.strip()
        rest = sep + rest
    if not SCHEME.match(uri):
        raise SipError(f"{what}: {uri[:60]!r} is not a URI")
    params: Params = ()
    if rest:
        if not rest.startswith(";"):
            raise SipError(f"{what}: {rest[:30]!r} after the URI is not a parameter")
        params = parse_params(rest[1:], what)
    expires = find_param(params, "expires")
    return Binding(uri, delta_seconds(expires, f"{what}: expires") if expires is not None else None,
                   params)


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
            out.extend(v.strip() for v in split_top(value, ",", name) if v.strip())
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
                or int(number) > MAX_CSEQ or not TOKEN.fullmatch(method.strip()):
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
        return find_param(parse_params(param_text, "Via"), "branch") if param_text else None

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
        return delta_seconds(value, "Expires") if value is not None else None

    def min_expires(self) -> int | None:
        value = self.first("min-expires")
        return delta_seconds(value, "Min-Expires") if value is not None else None


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
        if not colon or not TOKEN.fullmatch(name):
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
        length = delta_seconds(length_text, "Content-Length")
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
        return delta_seconds(lengths[0], "Content-Length")

    @property
    def held(self) -> int:
        return len(self._buf)
