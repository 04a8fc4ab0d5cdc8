"""Whom a relay admits: listed identities, one-time codes, and the tickets it gave.

A hop header (roam.relay.hop) proves who sent it. What this module decides
is whether that identity may pass, with no round trip and no person asked
twice:

- a listed identity (`--admit-keys`) passes as it is: the header's Noise X
  message is the MAC from both units' static keys that the original
  invention's intermediate unit checks;
- an identity with a TOTP secret (`--admit-totp`) passes with a code of the
  current 30 s step or one step either side (RFC 6238 section 5.2), and a
  code passes once: after a step is used, no code of that step or an
  earlier one does for that identity;
- a ticket this relay issued to the same identity passes until it expires:
  every admitted client gets a fresh one, so its resumes and standby
  transports (and a restart of the relay: the ticket key comes from the
  relay's own key) need no new code;
- `--admit any` lets every identity pass; without it nobody does;
- in a fleet (roam.relay.fleet), another relay of the fleet passes as it
  is (`peers`, kept by the fleet's driver), a ticket issued by any relay of
  the fleet passes (`fleet_ticket_key`), and a code's step, accepted here,
  is confirmed once fleet-wide by the driver (`Verdict.step`) before the
  client is let through.

Every header carries the sender's wall clock; one more than `WINDOW_S` away
from the relay's is refused, and a (sender, stamp) pair is accepted once
within the window, so a recorded header cannot be played again. Only
admitted headers are remembered, so memory grows with admitted use, not
with what strangers send. Sans-IO: `wall` is the caller's wall clock.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import struct
from collections.abc import Mapping
from dataclasses import dataclass

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.hashes import SHA1
from cryptography.hazmat.primitives.twofactor.totp import TOTP

from roam.crypto.keys import short_id
from roam.relay.hop import Hop, HopKind, Proof

# Clocks of units that keep NTP agree within a second; a header's journey
# takes at most a connect timeout. Two minutes tolerates a laptop's clock
# drift after a long sleep and keeps the replay memory small.
WINDOW_S = 120.0
# RFC 6238's recommended step and its one step of skew either side.
TOTP_STEP_S = 30
TOTP_DIGITS = 6
TOTP_SKEW = 1
# RFC 4226 section 4: a shared secret of at least 128 bits (160 advised);
# authenticator apps' 80-bit secrets are refused here.
MIN_TOTP_SECRET = 16
# A session lives through the night: half a day, renewed at every admission.
TICKET_LIFETIME_S = 12 * 3600.0
# Remembered (sender, stamp) pairs within the window: admitted headers only,
# so this is reached only by admitted units opening 800 transports a second.
MAX_REMEMBERED = 100_000

_TICKET_AD = b"roam-relay-ticket/1"
_TICKET_BODY = struct.Struct("!32sQ")  # identity, expiry (wall clock, s)
_NONCE = 12


@dataclass(frozen=True, slots=True)
class Verdict:
    admitted: bool
    reason: str  # why not, or how (for the relay's log and status)
    ticket: bytes = b""  # for an admitted client: to present next time
    # Admitted by a one-time code of this step: in a fleet the driver checks,
    # once for the whole fleet, that no relay accepted this step (or a
    # later one) for this identity before letting the client through.
    step: int | None = None
    peer: bool = False  # the sender is another relay of this relay's fleet


class Admission:
    def __init__(self, *, keys: Mapping[bytes, str], totp: Mapping[bytes, bytes],
                 admit_any: bool, relay_private: bytes) -> None:
        for identity, secret in totp.items():
            if len(secret) < MIN_TOTP_SECRET:
                raise ValueError(f"the TOTP secret for {short_id(identity)} is {len(secret)} "
                                 f"bytes; at least {MIN_TOTP_SECRET} (128 bits)")
        self._keys = dict(keys)
        self._totp = {identity: TOTP(secret, TOTP_DIGITS, SHA1(), TOTP_STEP_S,
                                     enforce_key_length=False)
                      for identity, secret in totp.items()}
        self._used_step: dict[bytes, int] = {}
        self.admit_any = admit_any
        # From the relay's own key: tickets outlive a restart of the relay.
        self._ticket = AESGCM(hmac.digest(relay_private, _TICKET_AD, hashlib.sha256))
        # In a fleet, tickets are issued under the fleet's key, and checked
        # under it, the keys the fleet had before, and the relay's own.
        self._accepting: list[AESGCM] = [self._ticket]
        # Other relays of the fleet (key: address), admitted as they are.
        self.peers: dict[bytes, str] = {}
        self._seen: dict[tuple[bytes, int], float] = {}
        self._seen_prune_at = 0.0

    def fleet_ticket_key(self, secret: bytes) -> None:
        """Issue tickets under the fleet's secret from now on; keep accepting
        those issued under the keys used before (they run out by themselves)."""
        fleet = AESGCM(hmac.digest(secret, _TICKET_AD, hashlib.sha256))
        self._accepting.insert(0, fleet)
        # The relay's own key and the last few fleet keys: a fleet's key
        # changes only when its store lost it, so this list stays short.
        del self._accepting[4:]
        self._ticket = fleet

    def admit(self, hop: Hop, wall: float) -> Verdict:
        who = short_id(hop.sender)
        skew = hop.stamp_ns / 1e9 - wall
        if abs(skew) > WINDOW_S:
            return Verdict(False, f"{who}'s clock is {skew:+.0f} s from the relay's "
                                  f"(more than {WINDOW_S:.0f} s): header refused")
        verdict = self._proof(hop, wall, who)
        if not verdict.admitted:
            return verdict
        key = (hop.sender, hop.stamp_ns)
        self._prune(wall)
        if key in self._seen:
            return Verdict(False, f"{who}: this header was seen before (replayed)")
        if len(self._seen) >= MAX_REMEMBERED:
            return Verdict(False, f"{who}: too many admissions within {WINDOW_S:.0f} s")
        self._seen[key] = wall + WINDOW_S
        if hop.kind is HopKind.CLIENT and not verdict.peer:
            return Verdict(True, verdict.reason, self._issue(hop.sender, wall), verdict.step)
        return verdict

    def _proof(self, hop: Hop, wall: float, who: str) -> Verdict:
        if hop.kind is HopKind.UPLINK:
            if hop.sender in self._keys:
                return Verdict(True, f"uplink of {who} ({self._keys[hop.sender]})")
            if self.admit_any:
                return Verdict(True, f"uplink of {who} (any admitted)")
            return Verdict(False, f"server {who} is not among the relay's admitted keys")
        if hop.proof is Proof.KEY and hop.sender in self.peers:
            return Verdict(True, f"relay {who} of the fleet ({self.peers[hop.sender]})",
                           peer=True)
        if hop.proof is Proof.TICKET:
            return self._check_ticket(hop, wall, who)
        if hop.proof is Proof.TOTP:
            return self._check_code(hop, wall, who)
        if hop.sender in self._keys:
            return Verdict(True, f"{who} ({self._keys[hop.sender]}) is admitted")
        if self.admit_any:
            return Verdict(True, f"{who} (any admitted)")
        if hop.sender in self._totp:
            return Verdict(False, f"{who} needs a one-time code (TOTP) at this relay")
        return Verdict(False, f"{who} is not among the relay's admitted keys")

    def _check_code(self, hop: Hop, wall: float, who: str) -> Verdict:
        totp = self._totp.get(hop.sender)
        if totp is None:
            return Verdict(False, f"{who} has no TOTP secret at this relay")
        now_step = int(wall // TOTP_STEP_S)
        code = f"{hop.code:0{TOTP_DIGITS}d}".encode()
        for step in range(now_step - TOTP_SKEW, now_step + TOTP_SKEW + 1):
            if hmac.compare_digest(totp.generate(step * TOTP_STEP_S), code):
                if step <= self._used_step.get(hop.sender, -1):
                    return Verdict(False, f"{who}: this one-time code was already used")
                self._used_step[hop.sender] = step
                return Verdict(True, f"{who} admitted by one-time code", step=step)
        return Verdict(False, f"{who}: wrong or expired one-time code")

    def _issue(self, identity: bytes, wall: float) -> bytes:
        nonce = os.urandom(_NONCE)
        body = _TICKET_BODY.pack(identity, int(wall + TICKET_LIFETIME_S))
        return nonce + self._ticket.encrypt(nonce, body, _TICKET_AD)

    def _check_ticket(self, hop: Hop, wall: float, who: str) -> Verdict:
        ticket = hop.ticket
        body = b""
        for key in self._accepting:
            try:
                body = key.decrypt(ticket[:_NONCE], ticket[_NONCE:], _TICKET_AD)
                break
            except (InvalidTag, ValueError):
                continue
        else:
            return Verdict(False, f"{who}: the ticket was not issued by this relay")
        if len(body) != _TICKET_BODY.size:
            return Verdict(False, f"{who}: the ticket was not issued by this relay")
        identity, expiry = _TICKET_BODY.unpack(body)
        if identity != hop.sender:
            return Verdict(False, f"{who}: the ticket belongs to {short_id(identity)}")
        if expiry <= wall:
            return Verdict(False, f"{who}: the ticket expired")
        return Verdict(True, f"{who} admitted by ticket")

    def _prune(self, wall: float) -> None:
        # Amortized: a sweep at most once a second, not per header.
        if wall < self._seen_prune_at:
            return
        self._seen_prune_at = wall + 1.0
        self._seen = {k: until for k, until in self._seen.items() if until > wall}
