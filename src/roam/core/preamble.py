"""The cleartext that opens every transport, and the server's one-time reply.

Client -> server, first bytes of every transport (55 bytes):

    magic "ROAM" | version u8 | kind u8 (NEW=1, RESUME=2, STANDBY=3) | suite u8
    | session id (16 bytes, zero for NEW) | target identity (32 bytes, zero: none)

NEW is followed by the first Noise message (`length:u16 | message`, its
payload a HELLO; message 2's payload starts with ACCEPTED or REFUSED); RESUME
by the first record of the resumed session, sealed with the preamble as its
associated data, which proves the sender holds the session keys. STANDBY by
a proof of the session's standby key (`STANDBY_PROOF`); the server parks the
transport, and later the client's first record on it (RESUME) resumes.

Server -> client, once: `status:u8 | length:u16 | body`. Status OK carries the
second Noise message (NEW) or nothing (RESUME; records follow). Any other
status carries a UTF-8 reason and the server closes the transport.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from enum import IntEnum

from roam.errors import ProtocolError

MAGIC = b"ROAM"
VERSION = 1
PREAMBLE = struct.Struct("!4sBBB16s32s")
REPLY = struct.Struct("!BH")
HANDSHAKE_LEN = struct.Struct("!H")
NO_SESSION = bytes(16)
NO_TARGET = bytes(32)
# Noise messages here are at most 32+48+payload bytes; 1 KiB is plenty.
MAX_HANDSHAKE_MESSAGE = 1024
# The Noise prologue is this, then the 55 preamble bytes as sent: a changed
# version, kind, suite or target makes the handshake fail.
PROLOGUE = b"roam/1 "
# Message 1 carries the client's wall clock in ns (as WireGuard's TAI64N
# does): IK's first message can be replayed verbatim, and a replay must not
# make a session. The server keeps the newest timestamp per client key.
# Exactly these 8 bytes: the client offers no compression (as before
# compression existed, so either side may be older).
HELLO = struct.Struct("!Q")
# The timestamp and the compression the client offers: a set of bits, ZSTD
# (0x01) and ZSTD_HISTORY (0x02, zstd whose streams start from the session's
# recent data); the server ignores bits it does not know. The ACCEPTED that
# answers it carries one more byte: the compression chosen, one of the
# offered bits or 0 for none.
HELLO_COMPRESS = struct.Struct("!QB")
# The first byte of message 2's payload: the client is accepted, or refused
# (a UTF-8 reason follows) inside a message that proves the server's key.
ACCEPTED = b"\x00"
REFUSED = b"\x01"
# The first record of a resume carries RESUME alone (about 40 bytes sealed):
# a stranger who read the session id off the wire may make us hold this much
# per opening, not a whole record (256 KiB).
MAX_FIRST_RECORD = 1024


class TransportKind(IntEnum):
    NEW = 1
    RESUME = 2
    # A spare transport on another path, opened before it is needed: the
    # server parks it, and a hard handover resumes on it without a connect.
    STANDBY = 3


# STANDBY is followed by `stamp:u64 | tag (16 bytes)`: an AEAD tag over the
# preamble, with the session's standby key and the stamp as nonce. Stamps
# rise with each standby of a session, so a recorded one cannot be replayed.
STANDBY_PROOF = struct.Struct("!Q16s")


class Suite(IntEnum):
    """Cipher suites; the client picks, the server accepts both."""

    AESGCM_SHA256 = 1
    CHACHAPOLY_BLAKE2S = 2

    @property
    def noise_name(self) -> str:
        if self is Suite.AESGCM_SHA256:
            return "Noise_IK_25519_AESGCM_SHA256"
        return "Noise_IK_25519_ChaChaPoly_BLAKE2s"


class Status(IntEnum):
    OK = 0
    BAD_PREAMBLE = 1
    HANDSHAKE_FAILED = 2
    UNKNOWN_SESSION = 3
    RESUME_REFUSED = 4
    BUSY = 5


@dataclass(frozen=True, slots=True)
class Preamble:
    kind: TransportKind
    suite: Suite
    session_id: bytes = NO_SESSION
    target: bytes = NO_TARGET

    def encode(self) -> bytes:
        if len(self.session_id) != 16 or len(self.target) != 32:
            raise ValueError("session id is 16 bytes and target 32")
        if (self.kind is TransportKind.NEW) != (self.session_id == NO_SESSION):
            raise ValueError("NEW carries no session id; RESUME and STANDBY need one")
        return PREAMBLE.pack(MAGIC, VERSION, self.kind, self.suite, self.session_id, self.target)


def decode_preamble(data: bytes) -> Preamble:
    if len(data) != PREAMBLE.size:
        raise ProtocolError(f"preamble is {len(data)} bytes; expected {PREAMBLE.size}")
    magic, version, kind, suite, sid, target = PREAMBLE.unpack(data)
    if magic != MAGIC:
        raise ProtocolError(f"not a roam transport (first bytes {magic!r})")
    if version != VERSION:
        raise ProtocolError(f"protocol version {version}; this side speaks {VERSION}")
    try:
        tkind = TransportKind(kind)
    except ValueError:
        raise ProtocolError(f"unknown transport kind {kind}") from None
    try:
        tsuite = Suite(suite)
    except ValueError:
        raise ProtocolError(f"unknown cipher suite {suite}") from None
    if (tkind is TransportKind.NEW) != (sid == NO_SESSION):
        raise ProtocolError("NEW carries no session id; RESUME and STANDBY need one")
    return Preamble(tkind, tsuite, sid, target)


def encode_reply(status: Status, body: bytes = b"") -> bytes:
    return REPLY.pack(status, len(body)) + body


def reply_error(status: Status, reason: str) -> bytes:
    raw = reason.encode("utf-8", "replace")[:1024]
    return encode_reply(status, raw.decode("utf-8", "ignore").encode("utf-8"))
