"""The encrypted channel between a unit and the registrar, sans-IO.

    unit -> registrar:  "RRG1" | frame(IK message 1, the first request)
    registrar -> unit:  frame(IK message 2, the first answer)
    then either way:    frame(AEAD ciphertext)      frame = length u16 | bytes

Noise IK (Noise_IK_25519_AESGCM_SHA256, prologue `roam-registrar/1`): the
unit pins the registrar's key, and the first message already proves the
unit's own key to the registrar (the `ss` and `se` terms), so a registration
is authenticated by the unit's identity key with no password and no extra
round trip; the answers are readable by that unit alone (a peer's addresses
are location data). A recorded first message can be played again, but its
registration is refused by its stamp (records.py), and the answer to a
lookup opens only for the key that asked. One connection carries any number
of requests, answered in order.
"""

from __future__ import annotations

import struct

from roam.crypto.noise import CipherState, HandshakeState
from roam.errors import CryptoError, ProtocolError

MAGIC = b"RRG1"
PROTOCOL = "Noise_IK_25519_AESGCM_SHA256"
PROLOGUE = b"roam-registrar/1"
_LEN = struct.Struct("!H")
# The largest message: a registration listing MAX_VISIBLE_TO keys (47 KiB)
# and its Noise overhead, within what a u16 length can say.
MAX_FRAME = 65535


class Frames:
    """Cuts a byte stream into frames; holds at most one frame and its length."""

    def __init__(self, *, magic: bool) -> None:
        self._buf = bytearray()
        self._magic = magic  # the magic is still to come

    def feed(self, data: bytes) -> list[bytes]:
        self._buf += data
        if self._magic:
            if len(self._buf) < len(MAGIC):
                if bytes(self._buf) != MAGIC[:len(self._buf)]:
                    raise ProtocolError(f"not a registrar request (first bytes "
                                        f"{bytes(self._buf[:4])!r})")
                return []
            if bytes(self._buf[:4]) != MAGIC:
                raise ProtocolError(f"not a registrar request (first bytes "
                                    f"{bytes(self._buf[:4])!r})")
            del self._buf[:4]
            self._magic = False
        out: list[bytes] = []
        while len(self._buf) >= _LEN.size:
            (length,) = _LEN.unpack_from(self._buf)
            if length == 0:
                raise ProtocolError("an empty frame")
            if len(self._buf) < _LEN.size + length:
                break
            out.append(bytes(self._buf[_LEN.size:_LEN.size + length]))
            del self._buf[:_LEN.size + length]
        return out

    @property
    def held(self) -> int:
        return len(self._buf)


def frame(body: bytes) -> bytes:
    if not 0 < len(body) <= MAX_FRAME:
        raise ValueError(f"a frame holds 1..{MAX_FRAME} bytes, not {len(body)}")
    return _LEN.pack(len(body)) + body


class UnitChannel:
    """The unit's side: requests out, answers in, in order."""

    def __init__(self, private_key: bytes, registrar_key: bytes) -> None:
        self._hs: HandshakeState | None = HandshakeState(
            PROTOCOL, True, prologue=PROLOGUE, s=private_key, rs=registrar_key)
        self._send: CipherState | None = None
        self._recv: CipherState | None = None
        self.frames = Frames(magic=False)
        self._first_sent = False

    def request(self, payload: bytes) -> bytes:
        if self._hs is not None:
            if self._first_sent:
                raise ProtocolError("a second request before the first answer "
                                    "(the handshake is not done)")
            self._first_sent = True
            return MAGIC + frame(self._hs.write_message(payload))
        if self._send is None:
            raise ProtocolError("the channel is not open")
        return frame(self._send.encrypt_with_ad(b"", payload))

    def answer(self, body: bytes) -> bytes:
        """One frame's body from the registrar: the answer's plaintext."""
        try:
            if self._hs is not None:
                payload = self._hs.read_message(body)
                self._send, self._recv = self._hs.split()
                self._hs = None
                return payload
            if self._recv is None:
                raise ProtocolError("an answer before any request")
            return self._recv.decrypt_with_ad(b"", body)
        except CryptoError:
            raise ProtocolError("the registrar's answer does not open (not the registrar "
                                "this unit pins, or mangled)") from None


class RegistrarChannel:
    """The registrar's side of one connection."""

    def __init__(self, private_key: bytes) -> None:
        self._hs: HandshakeState | None = HandshakeState(PROTOCOL, False, prologue=PROLOGUE,
                                                         s=private_key)
        self._send: CipherState | None = None
        self._recv: CipherState | None = None
        self.frames = Frames(magic=True)
        self.identity: bytes | None = None  # the unit's key, once its first message opened

    def request(self, body: bytes) -> bytes:
        """One frame's body from the unit: the request's plaintext."""
        try:
            if self._hs is not None:
                if self.identity is not None:
                    raise ProtocolError("a second request before the first answer")
                payload = self._hs.read_message(body)
                self.identity = self._hs.remote_static
                return payload
            if self._recv is None:
                raise ProtocolError("the channel is not open")
            return self._recv.decrypt_with_ad(b"", body)
        except CryptoError:
            raise ProtocolError("request does not open with this registrar's key (sealed to "
                                "another registrar, or mangled)") from None

    def answer(self, payload: bytes) -> bytes:
        if self._hs is not None:
            message = self._hs.write_message(payload)
            self._send, self._recv = self._hs.split()
            self._hs = None
            return frame(message)
        if self._send is None:
            raise ProtocolError("an answer before any request")
        return frame(self._send.encrypt_with_ad(b"", payload))
