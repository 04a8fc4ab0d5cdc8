"""The Noise Protocol Framework (revision 34), sans-IO.

Supports the interactive patterns NN, NK, XX and IK with DH 25519, the ciphers
AESGCM and ChaChaPoly and the hashes SHA256, SHA512, BLAKE2s and BLAKE2b. PSK
modes are not supported.

Errors:
- `CryptoError` (a `ProtocolError`): a peer's message failed authentication
  or carried a bad DH key.
- `ProtocolError`: a peer's handshake message is truncated or longer than
  Noise allows.
- `NoiseUsageError` (a `RoamError`, not a `ProtocolError`): our own caller
  misused the API, for instance writing out of turn, reading after the
  handshake completed, or encrypting with an exhausted nonce.
- `ValueError`: an unsupported protocol name or keys that do not fit it.
"""

from __future__ import annotations

import hashlib
import hmac
import struct
from collections.abc import Callable

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM, ChaCha20Poly1305

from roam.errors import CryptoError, ProtocolError, RoamError

__all__ = ["CIPHERS", "HASHES", "CipherState", "HandshakeState", "NoiseUsageError", "protocol_name"]

DHLEN = 32
TAGLEN = 16
MAX_MESSAGE = 65535
MAX_NONCE = 2**64 - 1  # reserved by the spec for REKEY; never used for data

CIPHERS = ("AESGCM", "ChaChaPoly")
# Noise hash name -> hashlib name (hmac takes the same names).
HASHES = {"SHA256": "sha256", "SHA512": "sha512", "BLAKE2s": "blake2s", "BLAKE2b": "blake2b"}

# Tokens per message; initiator sends the even-numbered messages. The second
# element lists the responder's pre-message (only "s" is used by these).
_PATTERNS: dict[str, tuple[tuple[str, ...], tuple[tuple[str, ...], ...]]] = {
    "NN": ((), (("e",), ("e", "ee"))),
    "NK": (("s",), (("e", "es"), ("e", "ee"))),
    "XX": ((), (("e",), ("e", "ee", "s", "es"), ("s", "se"))),
    "IK": (("s",), (("e", "es", "s", "ss"), ("e", "ee", "se"))),
    # One-way: a message sealed to the responder's static key that proves the
    # initiator's (the relay's admission header; no answer is needed).
    "X": (("s",), (("e", "es", "s", "ss"),)),
}


class NoiseUsageError(RoamError):
    """Our own code misused the Noise API (wrong turn, missing key, spent nonce)."""


def protocol_name(cipher: str, hash_: str) -> str:
    """The name of the IK protocol roam uses, with the given cipher and hash."""
    return f"Noise_IK_25519_{cipher}_{hash_}"


# Four zero bytes, then the counter: little-endian for ChaChaPoly, and (the
# spec's choice) big-endian for AESGCM. A struct's pack, not a function of
# our own: two records per crossing each make one.
_nonce_chachapoly: Callable[[int], bytes] = struct.Struct("<4xQ").pack
_nonce_aesgcm: Callable[[int], bytes] = struct.Struct(">4xQ").pack


class CipherState:
    """A Noise CipherState: key `k` and counter `n`.

    The AEAD object is built once per key because it is on the record path.
    """

    def __init__(self, cipher: str, key: bytes | None) -> None:
        if cipher not in CIPHERS:
            raise ValueError(f"unsupported Noise cipher {cipher!r}; expected one of {CIPHERS}")
        self.cipher = cipher
        self.n = 0
        self._nonce = _nonce_aesgcm if cipher == "AESGCM" else _nonce_chachapoly
        self._key: bytes | None = None
        self._built: AESGCM | ChaCha20Poly1305 | None = None
        if key is not None:
            self._set_key(key)

    def _set_key(self, key: bytes) -> None:
        if len(key) != 32:
            raise ValueError(f"Noise cipher keys are 32 bytes, got {len(key)}")
        self._key = key
        self._built = None

    @property
    def _aead(self) -> AESGCM | ChaCha20Poly1305 | None:
        # Built on first use: an OpenSSL AEAD context costs about 2.5 KiB, and
        # an idle session holds five keys (stream and datagrams both ways,
        # standby) of which it uses two (bench/scale.py --breakdown).
        if self._built is None and self._key is not None:
            self._built = (AESGCM(self._key) if self.cipher == "AESGCM"
                           else ChaCha20Poly1305(self._key))
        return self._built

    def has_key(self) -> bool:
        return self._key is not None

    def copy(self) -> CipherState:
        """An independent state with the same key and nonce, e.g. to try a rekey."""
        clone = CipherState(self.cipher, None)
        clone._key = self._key
        clone._built = self._built  # AEAD objects never change their key, so sharing is safe
        clone.n = self.n
        return clone

    def encrypt_with_ad(self, ad: bytes, plaintext: bytes) -> bytes:
        if self._aead is None:
            return plaintext  # spec: before a key is mixed in, payloads go in clear
        out = self.encrypt_with_nonce(self.n, ad, plaintext)
        self.n += 1
        return out

    def decrypt_with_ad(self, ad: bytes, ciphertext: bytes) -> bytes:
        if self._aead is None:
            return ciphertext
        out = self.decrypt_with_nonce(self.n, ad, ciphertext)
        self.n += 1  # only after success, so a forged message does not desync us
        return out

    def encrypt_with_nonce(self, n: int, ad: bytes, plaintext: bytes) -> bytes:
        """Encrypt with an explicit nonce; `self.n` is left alone.

        Unlike `encrypt_with_ad`, this refuses to run without a key: it is
        meant for transport records, which must never go out in clear.
        """
        if self._aead is None:
            raise NoiseUsageError("cipher state has no key")
        if not 0 <= n < MAX_NONCE:
            raise NoiseUsageError(f"nonce {n} is out of range; rekey or start a new session")
        return self._aead.encrypt(self._nonce(n), plaintext, ad)

    def encrypt_into(self, n: int, ad: bytes, plaintext: bytes | memoryview,
                     out: memoryview) -> None:
        """`encrypt_with_nonce` writing ciphertext and tag into `out` (exactly
        len(plaintext) + 16 bytes): the record path seals straight into the
        buffer that goes to the socket, with no copy of the ciphertext."""
        aead = self._built or self._aead  # the property only before first use
        if aead is None:
            raise NoiseUsageError("cipher state has no key")
        if not 0 <= n < MAX_NONCE:
            raise NoiseUsageError(f"nonce {n} is out of range; rekey or start a new session")
        aead.encrypt_into(self._nonce(n), plaintext, ad, out)

    def decrypt_with_nonce(self, n: int, ad: bytes,
                           ciphertext: bytes | memoryview) -> bytes:
        """Decrypt with an explicit nonce; `self.n` is left alone."""
        aead = self._built or self._aead  # the property only before first use
        if aead is None:
            raise NoiseUsageError("cipher state has no key")
        # The nonce may come off the wire, so an out-of-range one is the peer's fault.
        if not 0 <= n < MAX_NONCE:
            raise CryptoError(f"nonce {n} is out of range")
        if len(ciphertext) < TAGLEN:
            raise CryptoError(f"ciphertext of {len(ciphertext)} bytes is shorter than its tag")
        try:
            return aead.decrypt(self._nonce(n), ciphertext, ad)
        except InvalidTag:
            raise CryptoError("decryption failed: message was forged or corrupted") from None

    def rekey(self) -> None:
        """The spec's REKEY: k = ENCRYPT(k, 2^64-1, zerolen, zeros)[:32]; `n` is kept."""
        if self._aead is None:
            raise NoiseUsageError("cannot rekey a cipher state that has no key")
        self._set_key(self._aead.encrypt(self._nonce(MAX_NONCE), bytes(32), b"")[:32])


def _dh(private: X25519PrivateKey, public: bytes) -> bytes:
    try:
        shared = private.exchange(X25519PublicKey.from_public_bytes(public))
    except ValueError:
        # cryptography refuses an all-zero result, which a low-order point gives.
        raise CryptoError("bad DH key: peer sent a low-order point") from None
    # Checked again here so the refusal does not depend on the library version.
    if not any(shared):
        raise CryptoError("bad DH key: peer sent a low-order point")
    return shared


def _public(private: X25519PrivateKey) -> bytes:
    return private.public_key().public_bytes_raw()


def _private(raw: bytes, what: str) -> X25519PrivateKey:
    if len(raw) != DHLEN:
        raise ValueError(f"{what} must be a raw {DHLEN}-byte X25519 key, got {len(raw)} bytes")
    return X25519PrivateKey.from_private_bytes(raw)


def _parse_name(name: str) -> tuple[str, str, str]:
    parts = name.split("_")
    if len(parts) != 5 or parts[0] != "Noise":
        raise ValueError(f"malformed Noise protocol name {name!r}")
    _, pattern, dh, cipher, hash_ = parts
    if pattern not in _PATTERNS:
        raise ValueError(
            f"unsupported handshake pattern {pattern!r} in {name!r}; "
            f"supported: {', '.join(_PATTERNS)} (no PSK or other modifiers)"
        )
    if dh != "25519":
        raise ValueError(f"unsupported DH function {dh!r} in {name!r}; only 25519 is supported")
    if cipher not in CIPHERS:
        raise ValueError(f"unsupported cipher {cipher!r} in {name!r}; supported: {CIPHERS}")
    if hash_ not in HASHES:
        raise ValueError(f"unsupported hash {hash_!r} in {name!r}; supported: {tuple(HASHES)}")
    return pattern, cipher, hash_


class HandshakeState:
    """One side of a Noise handshake.

    A `read_message` that fails leaves the state as it was, so a driver may
    drop a forged or corrupted message and keep waiting for the real one.
    """

    def __init__(
        self,
        protocol_name: str,
        initiator: bool,
        prologue: bytes = b"",
        s: bytes | None = None,
        rs: bytes | None = None,
        e: bytes | None = None,
    ) -> None:
        pattern, self._cipher, hash_ = _parse_name(protocol_name)
        self._hash = HASHES[hash_]
        self._hashlen = hashlib.new(self._hash).digest_size
        pre, self._messages = _PATTERNS[pattern]
        self.initiator = initiator
        # Keys a pattern does not use are refused: silently ignoring a pinned
        # `rs` would leave the caller believing the peer is authenticated.
        uses_s = any("s" in m for m in self._messages[(0 if initiator else 1) :: 2])
        uses_s = uses_s or (not initiator and bool(pre))
        uses_rs = initiator and bool(pre)
        if uses_s != (s is not None):
            raise ValueError(f"{pattern} {'requires' if uses_s else 'takes no'} local static key")
        if uses_rs != (rs is not None):
            raise ValueError(f"{pattern} {'requires' if uses_rs else 'takes no'} remote static key")
        if rs is not None and len(rs) != DHLEN:
            raise ValueError(f"remote static key must be {DHLEN} bytes, got {len(rs)}")
        self._s = None if s is None else _private(s, "static key")
        self._e = None if e is None else _private(e, "ephemeral key")
        self._rs = None if rs is None else bytes(rs)
        self._re: bytes | None = None
        self._index = 0
        self._split_done = False

        # InitializeSymmetric
        name = protocol_name.encode("ascii")
        if len(name) <= self._hashlen:
            self._h = name.ljust(self._hashlen, b"\x00")
        else:
            self._h = hashlib.new(self._hash, name).digest()
        self._ck = self._h
        self._cs = CipherState(self._cipher, None)
        self._mix_hash(prologue)
        if pre:  # the responder's static key is known to both sides in advance
            if self._rs is not None:
                self._mix_hash(self._rs)
            elif self._s is not None:
                self._mix_hash(_public(self._s))

    # SymmetricState operations

    def _hkdf(self, ikm: bytes, outputs: int) -> list[bytes]:
        temp = hmac.digest(self._ck, ikm, self._hash)
        out: list[bytes] = []
        prev = b""
        for i in range(1, outputs + 1):
            prev = hmac.digest(temp, prev + bytes([i]), self._hash)
            out.append(prev)
        return out

    def _mix_hash(self, data: bytes) -> None:
        self._h = hashlib.new(self._hash, self._h + data).digest()

    def _mix_key(self, ikm: bytes) -> None:
        self._ck, temp_k = self._hkdf(ikm, 2)
        self._cs = CipherState(self._cipher, temp_k[:32])

    def _encrypt_and_hash(self, plaintext: bytes) -> bytes:
        ciphertext = self._cs.encrypt_with_ad(self._h, plaintext)
        self._mix_hash(ciphertext)
        return ciphertext

    def _decrypt_and_hash(self, ciphertext: bytes) -> bytes:
        plaintext = self._cs.decrypt_with_ad(self._h, ciphertext)
        self._mix_hash(ciphertext)
        return plaintext

    # Public interface

    @property
    def complete(self) -> bool:
        return self._index >= len(self._messages)

    @property
    def handshake_hash(self) -> bytes:
        if not self.complete:
            raise NoiseUsageError("handshake hash is only final once the handshake completes")
        return self._h

    @property
    def remote_static(self) -> bytes | None:
        return self._rs

    def _check_turn(self, writing: bool) -> None:
        if self.complete:
            raise NoiseUsageError("handshake already complete; use split()")
        my_turn = (self._index % 2 == 0) == self.initiator
        if my_turn != writing:
            verb = "write" if writing else "read"
            raise NoiseUsageError(f"cannot {verb} handshake message {self._index}: not our turn")

    def _dh_for(self, token: str) -> bytes:
        # A DH token names (initiator's key, responder's key), so the
        # responder reads it backwards to get (its own key, the peer's key).
        ours, theirs = (token[0], token[1]) if self.initiator else (token[1], token[0])
        local = self._e if ours == "e" else self._s
        remote = self._re if theirs == "e" else self._rs
        if local is None or remote is None:
            raise NoiseUsageError(f"token {token} needs a key this side does not have")
        return _dh(local, remote)

    def write_message(self, payload: bytes) -> bytes:
        """The next handshake message, carrying `payload`."""
        return self._step(True, self._write_tokens, payload)

    def read_message(self, message: bytes) -> bytes:
        """Process the peer's next handshake message and return its payload."""
        if len(message) > MAX_MESSAGE:
            raise ProtocolError(f"handshake message of {len(message)} bytes exceeds {MAX_MESSAGE}")
        return self._step(False, self._read_tokens, bytes(message))

    def _step(self, writing: bool, process: Callable[[bytes], bytes], data: bytes) -> bytes:
        self._check_turn(writing)
        saved = (self._ck, self._h, self._cs, self._cs.n, self._re, self._rs)
        try:
            out = process(data)
        except RoamError:
            # Roll back so one bad message (or oversized payload) is not fatal.
            self._ck, self._h, self._cs, n, self._re, self._rs = saved
            self._cs.n = n
            raise
        self._index += 1
        return out

    def _write_tokens(self, payload: bytes) -> bytes:
        out = bytearray()
        for token in self._messages[self._index]:
            if token == "e":
                if self._e is None:
                    self._e = X25519PrivateKey.generate()
                pub = _public(self._e)
                self._mix_hash(pub)
                out += pub
            elif token == "s":
                if self._s is None:
                    raise NoiseUsageError("pattern sends a static key but none was given")
                out += self._encrypt_and_hash(_public(self._s))
            else:
                self._mix_key(self._dh_for(token))
        out += self._encrypt_and_hash(payload)
        if len(out) > MAX_MESSAGE:
            raise NoiseUsageError(f"handshake message of {len(out)} bytes exceeds {MAX_MESSAGE}")
        return bytes(out)

    def _read_tokens(self, message: bytes) -> bytes:
        pos = 0
        for token in self._messages[self._index]:
            if token in ("e", "s"):
                size = DHLEN + (TAGLEN if token == "s" and self._cs.has_key() else 0)
                if len(message) < pos + size:
                    raise ProtocolError(
                        f"truncated handshake message {self._index}: "
                        f"got {len(message)} bytes, need at least {pos + size}"
                    )
                chunk = message[pos : pos + size]
                pos += size
                if token == "e":
                    self._re = chunk
                    self._mix_hash(chunk)
                else:
                    self._rs = self._decrypt_and_hash(chunk)
            else:
                self._mix_key(self._dh_for(token))
        if self._cs.has_key() and len(message) < pos + TAGLEN:
            raise ProtocolError(
                f"truncated handshake message {self._index}: "
                f"got {len(message)} bytes, need at least {pos + TAGLEN}"
            )
        return self._decrypt_and_hash(message[pos:])

    def split(self) -> tuple[CipherState, CipherState]:
        """(send, receive) cipher states for this side; callable once."""
        if not self.complete:
            raise NoiseUsageError("cannot split before the handshake completes")
        if self._split_done:
            # Two copies of the same keys would invite nonce reuse.
            raise NoiseUsageError("split() was already called")
        self._split_done = True
        k1, k2 = self._hkdf(b"", 2)
        c1 = CipherState(self._cipher, k1[:32])
        c2 = CipherState(self._cipher, k2[:32])
        return (c1, c2) if self.initiator else (c2, c1)

    def datagram_keys(self) -> tuple[CipherState, CipherState]:
        """(send, receive) keys for the session's datagram transport.

        HKDF(ck, "roam datagrams"), as split() is HKDF(ck, ""): keys apart from
        the stream's, so the two transports' counters never share a nonce.
        """
        if not self.complete:
            raise NoiseUsageError("cannot derive keys before the handshake completes")
        k1, k2 = self._hkdf(b"roam datagrams", 2)
        c1 = CipherState(self._cipher, k1[:32])
        c2 = CipherState(self._cipher, k2[:32])
        return (c1, c2) if self.initiator else (c2, c1)

    def standby_key(self) -> CipherState:
        """The key that proves a standby transport belongs to the session
        (HKDF(ck, "roam standby")); both sides hold the same one."""
        if not self.complete:
            raise NoiseUsageError("cannot derive keys before the handshake completes")
        return CipherState(self._cipher, self._hkdf(b"roam standby", 1)[0][:32])
