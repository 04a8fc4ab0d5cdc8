"""The grammar SIP header values share, sans-IO (RFC 3261 sections 7.3.1 and 25.1).

Tokens, quoted strings and their escapes, `;name=value` parameter lists,
comma lists split outside quotes and <...>, and delta-seconds: what the
URI, Contact, Via and challenge parsers of roam.registrar.sipuri,
sipmessage and sipdigest are built from.

Every malformed or oversized response raises `SipError` (a ProtocolError)
whose message names the problem; bad local input (an AOR that is not a SIP
URI, say) raises ConfigError.
"""

from __future__ import annotations

import re

from roam.errors import ProtocolError

# Bounds on what a registrar may send us (RFC 3261 sets none).
MAX_PARAMS = 32  # parameters of one URI, Contact or Via value
MAX_SECONDS = 2**32 - 1  # RFC 3261 section 20.19: expiry values are 32-bit

TOKEN = re.compile(r"[A-Za-z0-9\-.!%*_+`'~]+")  # RFC 3261 section 25.1
# A parameter value written as it is (a token, or an address with its
# colons and brackets); anything else is written as a quoted string.
_PVALUE = re.compile(r"[A-Za-z0-9\-.!%*_+`'~:\[\]]+")


class SipError(ProtocolError):
    """A SIP message from the registrar is malformed or too large; the message
    names the problem."""


Params = tuple[tuple[str, str | None], ...]


def split_top(text: str, sep: str, what: str) -> list[str]:
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


def unquote(value: str, what: str) -> str:
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


def quote(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def parse_params(text: str, what: str) -> Params:
    """`a=1;b;c="x;y"` into (name lower-cased, value unquoted or None)."""
    items = split_top(text, ";", what)
    if len(items) > MAX_PARAMS:
        raise SipError(f"{what}: more than {MAX_PARAMS} parameters")
    out: list[tuple[str, str | None]] = []
    for item in items:
        name, eq, value = item.partition("=")
        name = name.strip()
        if not TOKEN.fullmatch(name):
            raise SipError(f"{what}: bad parameter name {name[:40]!r}")
        out.append((name.lower(), unquote(value, f"{what} parameter {name[:40]!r}")
                    if eq else None))
    return tuple(out)


def format_params(params: Params) -> str:
    out = ""
    for name, value in params:
        if value is None:
            out += f";{name}"
        elif _PVALUE.fullmatch(value):
            out += f";{name}={value}"
        else:
            out += f";{name}={quote(value)}"
    return out


def find_param(params: Params, name: str) -> str | None:
    for key, value in params:
        if key == name:
            return value
    return None


def delta_seconds(text: str, what: str) -> int:
    """delta-seconds (RFC 3261 section 25.1), capped at 2**32-1 as section 20.19 asks."""
    text = text.strip()
    if not (text.isascii() and text.isdigit()) or len(text) > 20:
        raise SipError(f"{what} {text[:30]!r} is not a number of seconds")
    return min(int(text), MAX_SECONDS)
