"""Digest authentication of a REGISTER, sans-IO (RFC 2617, RFC 7616,
RFC 8760; RFC 3261 section 22 for SIP).

`parse_challenge` reads a WWW-Authenticate or Proxy-Authenticate value,
`choose_challenge` picks the one to answer, `digest_response` computes
the response value and `authorization` writes the Authorization (or
Proxy-Authorization) value that answers a challenge.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from roam.errors import ConfigError
from roam.registrar.sipsyntax import TOKEN, SipError, quote, split_top, unquote

MAX_AUTH_PARAMS = 32  # parameters of one challenge (the RFCs set no bound)


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
    if not TOKEN.fullmatch(scheme):
        raise SipError(f"challenge {value[:60]!r}: bad scheme")
    if scheme.lower() != "digest":
        return None
    items = [item for item in split_top(rest, ",", "challenge") if item.strip()]
    if len(items) > MAX_AUTH_PARAMS:
        raise SipError(f"challenge with more than {MAX_AUTH_PARAMS} parameters")
    params: dict[str, str] = {}
    for item in items:
        name, eq, raw = item.partition("=")
        name = name.strip().lower()
        if not eq or not TOKEN.fullmatch(name):
            raise SipError(f"challenge parameter {item.strip()[:40]!r} is not name=value")
        if name in params:
            raise SipError(f"challenge parameter {name!r} given twice")
        params[name] = unquote(raw, f"challenge parameter {name!r}")
    realm, nonce = params.get("realm"), params.get("nonce")
    if realm is None or not nonce:
        raise SipError("a Digest challenge without realm or nonce (RFC 7616 section 3.3)")
    qop = tuple(q.strip().lower() for q in params.get("qop", "").split(",") if q.strip())
    return Challenge(realm, nonce, params.get("algorithm", "MD5").upper(), qop,
                     params.get("opaque"), params.get("stale", "").lower() == "true", proxy)


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
    parts = [f"username={quote(username)}", f"realm={quote(challenge.realm)}",
             f"nonce={quote(challenge.nonce)}", f"uri={quote(uri)}",
             f"response={quote(response)}", f"algorithm={challenge.algorithm}"]
    if qop is not None or challenge.algorithm.upper().endswith("-SESS"):
        parts.append(f"cnonce={quote(cnonce)}")
    if challenge.opaque is not None:
        parts.append(f"opaque={quote(challenge.opaque)}")
    if qop is not None:
        parts += [f"qop={qop}", f"nc={nc:08x}"]
    return "Digest " + ", ".join(parts)
