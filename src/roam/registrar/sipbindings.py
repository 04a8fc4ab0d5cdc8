"""A unit's binding at a SIP registrar and a peer's, sans-IO (RFC 3261
sections 10.2.1 to 10.2.4; RFC 5626 section 4.1).

A unit can use a SIP registrar (Kamailio, say) as the third unit that
records where each unit can be reached now (claim 19): it REGISTERs its
address-of-record (AOR) with its current roam address as the contact
(`Registration`), and finds a peer's current contact by reading the
peer's bindings, a REGISTER with the peer's AOR in To and no Contact
(`Lookup`, RFC 3261 section 10.2.3). Both take responses and `now` in and
give bytes to send and events out (roam.registrar.sipregister).

A unit that moves replaces its binding instead of adding one: its contact
carries a `+sip.instance` that stays the same wherever the unit is (RFC 5626
section 4.1), by which a registrar keys the binding, and the REGISTER that
carries the new contact also removes the old one by name with `expires=0`
(RFC 3261 section 10.2.2), for a registrar that keys bindings by URI only.
"""

from __future__ import annotations

import uuid

from roam.errors import ConfigError
from roam.registrar.sipmessage import Binding, Response
from roam.registrar.sipregister import (
    SAFE_TEXT,
    Account,
    Event,
    Found,
    Operation,
    Pending,
    Random,
    Registered,
    Registering,
    Unregistered,
)
from roam.registrar.sipsyntax import MAX_SECONDS, SipError
from roam.registrar.sipuri import parse_uri

# Kamailio's default too: refreshed at half, every five minutes, so a unit
# gone for good is forgotten within ten.
DEFAULT_EXPIRES_S = 600
# Removals of contacts a unit may still have bound, carried until a 200
# confirms them; a unit that moves faster than its registrar answers keeps
# only the latest few.
MAX_REMOVALS = 4


def instance_for(aor: str) -> str:
    """A unit's +sip.instance: a UUID URN named by its AOR (RFC 4122 section
    4.3), the same after every restart and on every network, as RFC 5626
    section 4.1 asks, without a file to keep it in."""
    return f"urn:uuid:{uuid.uuid5(uuid.NAMESPACE_URL, aor)}"


class Registration(Registering):
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
        if not SAFE_TEXT.fullmatch(self.instance):
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
        if not SAFE_TEXT.fullmatch(contact):
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
        return self._request(Operation(self.account.aor, contacts, self.expires_s, contact))

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
        return self._request(Operation(self.account.aor, contacts, 0))

    def _success(self, response: Response, p: Pending, now: float) -> Event:
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


class Lookup(Registering):
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
        if not uri.user or not SAFE_TEXT.fullmatch(peer_aor):
            raise ConfigError(f"peer address-of-record {peer_aor!r} must be sip:USER@DOMAIN")
        return self._request(Operation(peer_aor, (), None))

    def _success(self, response: Response, p: Pending, now: float) -> Event:
        del now
        return Found(p.op.to, tuple(response.contacts()))
