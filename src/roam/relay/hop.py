"""The header a relay reads before it splices: who comes, to whom, by which way, and may it.

A connection to a relay begins with one hop header for that relay, sealed to
the relay's static key; on a chain (figure 4 of the original invention) the
client sends one header per relay at once, in route order, then the
transport's roam preamble, and each relay takes the first header, dials the
next hop and passes the rest on. Nothing waits for an answer: admission costs
no round trip.

    magic "RLY1" | length u16 | Noise_X_25519_AESGCM_SHA256 message

The one-way Noise X pattern (`e, es, s, ss`, prologue `roam-relay/1`): only
the relay can read the payload, and reading it proves that the sender holds
the static key it names (the client's identity, or the server's on an
uplink); the payload is bound to this relay's key, so a header recorded on
the way to one relay is useless at another. Payload:

    kind u8 (CLIENT=1, UPLINK=2) | stamp u64 (sender's wall clock, ns)
    | target (32: the server's identity; zero on an UPLINK)
    | next u8 (UPLINK_OF_TARGET=0, DIAL=1) [| next key (32) | address len u8 | "host:port"]
    | proof u8 (KEY=0, TOTP=1, TICKET=2) [| code u32 | ticket len u8 | ticket]
    | instance (16: the sending server process; zero on CLIENT)

The relay answers each header once, before anything it splices:

    magic "RLY1" | status u8 | length u16 | body

OK carries a ticket (docs/relays.md): later transports of the same client
present it instead of a new code. Any other status carries a UTF-8 reason,
and the relay closes the connection.

Sans-IO: encoding takes the wall clock as an argument; decoding raises
ProtocolError (a wire error with its status) for anything malformed.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from enum import IntEnum
from typing import TypeVar

from roam.crypto.noise import HandshakeState
from roam.errors import CryptoError, ProtocolError

MAGIC = b"RLY1"
PROTOCOL = "Noise_X_25519_AESGCM_SHA256"
PROLOGUE = b"roam-relay/1"
HEAD = struct.Struct("!4sH")
REPLY = struct.Struct("!4sBH")
# A header is one X message: 32 (e) + 48 (s) + payload (at most 1 + 8 + 32 +
# 1 + 32 + 1 + 255 + 1 + 4 + 1 + 255 + 16 = 607) + 16. Anything longer is
# refused before it is read: this is all a stranger can make a relay hold.
MAX_HEADER = 1024
MAX_REPLY_BODY = 1024
MAX_ADDRESS = 255
MAX_TICKET = 255
NO_TARGET = bytes(32)
NO_INSTANCE = bytes(16)

_FIXED = struct.Struct("!BQ32sB")  # kind, stamp, target, next
_KEY_ADDR = struct.Struct("!32sB")
_CODE = struct.Struct("!I")
_E = TypeVar("_E", bound=IntEnum)


class HopKind(IntEnum):
    CLIENT = 1  # a transport to splice toward its target
    UPLINK = 2  # a server inside a firewall offering itself for splicing


class Next(IntEnum):
    UPLINK_OF_TARGET = 0  # the target's uplink held by this relay
    DIAL = 1  # connect to an address (the next relay, or the server itself)


class Proof(IntEnum):
    KEY = 0  # the sender's identity is admitted as it is (the header proves it)
    TOTP = 1  # a one-time code (RFC 6238) from a secret the relay holds for it
    TICKET = 2  # a ticket this relay issued to the same identity before


class Status(IntEnum):
    OK = 0
    BAD_HEADER = 1
    NOT_ADMITTED = 2
    UNKNOWN_TARGET = 3
    UNREACHABLE = 4
    BUSY = 5


@dataclass(frozen=True, slots=True)
class Hop:
    """One header's payload, and (once read) who sent it."""

    kind: HopKind
    stamp_ns: int
    target: bytes = NO_TARGET
    next: Next = Next.UPLINK_OF_TARGET
    next_key: bytes = NO_TARGET
    address: str = ""
    proof: Proof = Proof.KEY
    code: int = 0
    ticket: bytes = b""
    instance: bytes = NO_INSTANCE
    sender: bytes = b""  # the sender's static public key, as the relay read it

    def payload(self) -> bytes:
        if len(self.target) != 32 or len(self.next_key) != 32 or len(self.instance) != 16:
            raise ValueError("target and next key are 32 bytes, instance 16")
        out = bytearray(_FIXED.pack(self.kind, self.stamp_ns, self.target, self.next))
        if self.next is Next.DIAL:
            address = self.address.encode("utf-8")
            if not 0 < len(address) <= MAX_ADDRESS:
                raise ValueError(f"a next hop's address is 1..{MAX_ADDRESS} bytes")
            out += _KEY_ADDR.pack(self.next_key, len(address)) + address
        out.append(self.proof)
        if self.proof is Proof.TOTP:
            out += _CODE.pack(self.code)
        elif self.proof is Proof.TICKET:
            if not 0 < len(self.ticket) <= MAX_TICKET:
                raise ValueError(f"a ticket is 1..{MAX_TICKET} bytes")
            out += bytes([len(self.ticket)]) + self.ticket
        return bytes(out + self.instance)


def seal_hop(hop: Hop, sender_private: bytes, relay_public: bytes) -> bytes:
    """The header for `relay_public`, as `sender_private` sends it."""
    state = HandshakeState(PROTOCOL, True, prologue=PROLOGUE, s=sender_private, rs=relay_public)
    message = state.write_message(hop.payload())
    return HEAD.pack(MAGIC, len(message)) + message


def header_size(data: bytes | bytearray | memoryview) -> int | None:
    """The whole header's size once its first 6 bytes are in, else None.
    ProtocolError when they are not a hop header or announce too much."""
    if len(data) < HEAD.size:
        if bytes(data[:4]) != MAGIC[:len(data[:4])]:
            raise ProtocolError(f"not a relay hop header (first bytes {bytes(data[:4])!r})")
        return None
    magic, length = HEAD.unpack_from(data)
    if magic != MAGIC:
        raise ProtocolError(f"not a relay hop header (first bytes {magic!r})")
    if not 0 < length <= MAX_HEADER - HEAD.size:
        raise ProtocolError(f"hop header of {length} bytes; at most {MAX_HEADER - HEAD.size}")
    size: int = HEAD.size + length
    return size


def open_hop(header: bytes, relay_private: bytes) -> Hop:
    """Read a whole header (`header_size` bytes) with the relay's key.
    ProtocolError for anything forged, mangled or malformed."""
    state = HandshakeState(PROTOCOL, False, prologue=PROLOGUE, s=relay_private)
    try:
        payload = state.read_message(header[HEAD.size:])
    except CryptoError:
        raise ProtocolError("hop header does not open with this relay's key "
                            "(sealed to another relay, or mangled)") from None
    sender = state.remote_static
    if sender is None:  # X always carries it: only a broken handshake state would not
        raise ProtocolError("hop header names no sender key")
    return _decode_payload(payload, sender)


def _decode_payload(payload: bytes, sender: bytes) -> Hop:
    view = memoryview(payload)
    if len(view) < _FIXED.size:
        raise ProtocolError(f"hop payload of {len(view)} bytes is truncated")
    raw_kind, stamp, target, raw_next = _FIXED.unpack_from(view)
    kind = _enum(HopKind, raw_kind, "hop kind")
    nxt = _enum(Next, raw_next, "next hop")
    pos = _FIXED.size
    next_key, address = NO_TARGET, ""
    if nxt is Next.DIAL:
        _need(view, pos, _KEY_ADDR.size, "next hop")
        next_key, size = _KEY_ADDR.unpack_from(view, pos)
        pos += _KEY_ADDR.size
        _need(view, pos, size, "next hop address")
        try:
            address = bytes(view[pos:pos + size]).decode("utf-8")
        except UnicodeDecodeError:
            raise ProtocolError("next hop address is not UTF-8") from None
        if not address:
            raise ProtocolError("next hop address is empty")
        pos += size
    _need(view, pos, 1, "proof")
    proof = _enum(Proof, view[pos], "proof")
    pos += 1
    code, ticket = 0, b""
    if proof is Proof.TOTP:
        _need(view, pos, _CODE.size, "TOTP code")
        (code,) = _CODE.unpack_from(view, pos)
        pos += _CODE.size
        if code >= 10**6:
            raise ProtocolError(f"TOTP code {code} has more than 6 digits")
    elif proof is Proof.TICKET:
        _need(view, pos, 1, "ticket")
        size = view[pos]
        pos += 1
        if size == 0:
            raise ProtocolError("empty ticket")
        _need(view, pos, size, "ticket")
        ticket = bytes(view[pos:pos + size])
        pos += size
    _need(view, pos, 16, "instance")
    instance = bytes(view[pos:pos + 16])
    pos += 16
    if pos != len(view):
        raise ProtocolError(f"{len(view) - pos} bytes after the hop payload")
    if kind is HopKind.CLIENT and target == NO_TARGET:
        raise ProtocolError("a client's hop header names no target")
    if kind is HopKind.UPLINK and (target != NO_TARGET or nxt is not Next.UPLINK_OF_TARGET):
        raise ProtocolError("an uplink's hop header names a target or a next hop")
    return Hop(kind, stamp, target, nxt, next_key, address, proof, code, ticket, instance,
               sender)


def _enum(cls: type[_E], raw: int, what: str) -> _E:
    try:
        return cls(raw)
    except ValueError:
        raise ProtocolError(f"unknown {what} {raw}") from None


def _need(view: memoryview, pos: int, size: int, what: str) -> None:
    if len(view) < pos + size:
        raise ProtocolError(f"hop payload truncated in its {what}")


def encode_reply(status: Status, body: bytes = b"") -> bytes:
    if len(body) > MAX_REPLY_BODY:
        raise ValueError(f"a reply body is at most {MAX_REPLY_BODY} bytes")
    return REPLY.pack(MAGIC, status, len(body)) + body


def refusal(status: Status, reason: str) -> bytes:
    raw = reason.encode("utf-8", "replace")[:MAX_REPLY_BODY]
    return encode_reply(status, raw.decode("utf-8", "ignore").encode("utf-8"))


def reply_wanted(data: bytes | bytearray) -> int:
    """How many more bytes make `data` a whole reply as far as its header
    tells: read exactly that many, so what follows the reply stays unread."""
    if len(data) < REPLY.size:
        return REPLY.size - len(data)
    return max(0, REPLY.size + int.from_bytes(data[5:7], "big") - len(data))


def decode_reply(data: bytes | bytearray) -> tuple[Status, bytes, int] | None:
    """(status, body, bytes used) once a whole reply is in `data`, else None."""
    if len(data) < REPLY.size:
        if bytes(data[:4]) != MAGIC[:len(data[:4])]:
            raise ProtocolError(f"the relay answered with something else ({bytes(data[:4])!r})")
        return None
    magic, raw_status, length = REPLY.unpack_from(data)
    if magic != MAGIC:
        raise ProtocolError(f"the relay answered with something else ({magic!r})")
    status = _enum(Status, raw_status, "relay status")
    if length > MAX_REPLY_BODY:
        raise ProtocolError(f"relay reply of {length} bytes; at most {MAX_REPLY_BODY}")
    if len(data) < REPLY.size + length:
        return None
    return status, bytes(data[REPLY.size:REPLY.size + length]), REPLY.size + length
