"""A REGISTER and its answer, sans-IO (RFC 3261 sections 8.1, 10.2 and 22).

What every REGISTER of one account shares, whether it binds the unit's
own contact or reads a peer's bindings (roam.registrar.sipbindings): the
`Account` it authenticates with, the request as written (Via, From, To,
Call-ID, CSeq, Contacts, Expires, the digest answer), and what an answer
means: a provisional, another transaction's answer, a challenge answered
again (roam.registrar.sipdigest), an interval raised after a 423, or a
refusal named for a person. Answers come back as the events below.

This module writes the requests and reads the parsed responses; it opens
no socket and reads no clock. Everything random (tags, branches,
Call-IDs, cnonces) comes from the `random` callable given, so tests are
repeatable.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field, replace

from roam.errors import ConfigError
from roam.registrar.sipdigest import HASHES, Challenge, authorization, choose_challenge
from roam.registrar.sipmessage import MAX_CSEQ, Binding, Response
from roam.registrar.sipsyntax import SipError
from roam.registrar.sipuri import parse_uri

Random = Callable[[int], bytes]  # n random bytes, as os.urandom

SIP_VERSION = "SIP/2.0"
BRANCH_COOKIE = "z9hG4bK"  # RFC 3261 section 8.1.1.7: marks an RFC 3261 branch
MAX_FORWARDS = 70  # RFC 3261 section 8.1.1.6

# What a user name, password and contact may hold when a REGISTER carries
# them: no quote, backslash, angle bracket or control character.
SAFE_TEXT = re.compile(r"[^\"\\<>\x00-\x1f\x7f]+")


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
            if len(value) > 256 or not SAFE_TEXT.fullmatch(value):
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
class Operation:
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
class Pending:
    """The REGISTER in progress and what identifies its answers."""

    op: Operation
    branch: str
    cseq: int


class Registering:
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
        self._pending: Pending | None = None

    @property
    def pending(self) -> bool:
        return self._pending is not None

    def _request(self, op: Operation) -> bytes:
        """`op` as a new transaction (RFC 3261 section 8.1.3.5 for one sent
        again: a new branch, CSeq one higher)."""
        self._cseq += 1
        if self._cseq > MAX_CSEQ:
            raise ConfigError("CSeq would pass 2**31 - 1 (RFC 3261 section 8.1.1.5)")
        branch = BRANCH_COOKIE + _token(self._random, 12)
        self._pending = Pending(op, branch, self._cseq)
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

    def _success(self, response: Response, p: Pending, now: float) -> Event:
        raise NotImplementedError

    def _challenged(self, response: Response, p: Pending) -> Event:
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

    def _interval_too_brief(self, response: Response, p: Pending) -> Event:
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
