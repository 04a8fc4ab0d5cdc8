"""What a relay does with one connection: read its hop header, admit, and say where it goes.

A connection's first bytes are a hop header (roam.relay.hop); until it is
whole the relay holds at most `roam.relay.hop.MAX_HEADER` bytes plus one
read, for anyone.
Then one decision, which the driver carries out and never revisits:

- `Refuse`: a malformed, forged or unadmitted header; the driver writes the
  reply (status and reason) and closes.
- `Register`: a server's uplink; the driver answers OK and keeps the
  connection idle in roam.relay.uplinks until a client for it arrives.
- `Splice`: a client's transport; the driver finds the next hop (the
  target's uplink here, or an address to dial), writes the reply (OK with a
  ticket) and what came after the header, then moves bytes only.

Sans-IO: bytes and the wall clock in, a decision out.
"""

from __future__ import annotations

from dataclasses import dataclass

from roam.errors import ProtocolError
from roam.relay.admission import Admission
from roam.relay.hop import (
    Hop,
    HopKind,
    Status,
    encode_reply,
    header_size,
    open_hop,
    refusal,
)


@dataclass(frozen=True, slots=True)
class Refuse:
    status: Status
    reason: str
    reply: bytes


@dataclass(frozen=True, slots=True)
class Register:
    hop: Hop
    reply: bytes
    how: str  # whose uplink, as the admitted keys name it, for the log


@dataclass(frozen=True, slots=True)
class Splice:
    hop: Hop
    reply: bytes
    rest: bytes  # what came after the header: the next header, or the roam preamble
    how: str  # how it was admitted, for the log
    # Admitted by a one-time code of this step: in a fleet the driver
    # confirms it unused fleet-wide before the splice (roam.relay.fleet).
    step: int | None = None
    peer: bool = False  # sent by another relay of the fleet: its uplinks here only


Decision = Refuse | Register | Splice


class Arrival:
    """One connection, from its first byte until the relay knows what to do with it."""

    def __init__(self, relay_private: bytes, admission: Admission) -> None:
        self._key = relay_private
        self._admission = admission
        self._buf = bytearray()
        self.decision: Decision | None = None

    def feed(self, data: bytes, wall: float) -> Decision | None:
        """More bytes; the decision once the header is whole (then no more bytes)."""
        if self.decision is not None:
            raise RuntimeError("the arrival was already decided")
        self._buf += data
        try:
            size = header_size(self._buf)
            if size is None or len(self._buf) < size:
                return None
            hop = open_hop(bytes(self._buf[:size]), self._key)
        except ProtocolError as exc:
            return self._decide(Refuse(Status.BAD_HEADER, str(exc),
                                       refusal(Status.BAD_HEADER, str(exc))))
        verdict = self._admission.admit(hop, wall)
        if not verdict.admitted:
            return self._decide(Refuse(Status.NOT_ADMITTED, verdict.reason,
                                       refusal(Status.NOT_ADMITTED, verdict.reason)))
        rest = bytes(self._buf[size:])
        self._buf = bytearray()
        if hop.kind is HopKind.UPLINK:
            if rest:
                return self._decide(Refuse(Status.BAD_HEADER, "bytes after an uplink's header",
                                           refusal(Status.BAD_HEADER,
                                                   "bytes after an uplink's header")))
            return self._decide(Register(hop, encode_reply(Status.OK), verdict.reason))
        return self._decide(Splice(hop, encode_reply(Status.OK, verdict.ticket), rest,
                                   verdict.reason, verdict.step, verdict.peer))

    @property
    def held(self) -> int:
        """Bytes held for this connection so far (bounded by MAX_HEADER plus one read)."""
        return len(self._buf)

    def _decide(self, decision: Decision) -> Decision:
        self.decision = decision
        self._buf = bytearray()
        return decision

