"""The client's side of opening a transport, sans-IO (docs/protocol.md 2.1-2.7).

`NewOpening`, `ResumeOpening` and `StandbyOpening` give the bytes to write
(`start`), then take the server's one reply (`receive_data`): `NeedMore`
until it is whole, then `SessionOpened`, `ResumeAccepted` or
`UnknownSession`, or `StandbyParked`. A reply that ends the attempt raises:
ServerBusy (BUSY), TransportError (a status this side does not know; a
refused resume or standby), HandshakeError (a refused NEW, or a message 2
that does not prove the pinned server key), ClientRefused (the proven server
does not authorize this client).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Generic, TypeVar

from roam.core.compress import ZSTD, ZSTD_HISTORY, CompressionMode
from roam.core.opening import NeedMore, OpeningUsageError, SessionKeys, Steps, session_keys
from roam.core.preamble import (
    ACCEPTED,
    HANDSHAKE_LEN,
    HELLO,
    HELLO_COMPRESS,
    PROLOGUE,
    REFUSED,
    REPLY,
    STANDBY_PROOF,
    Preamble,
    Status,
    Suite,
    TransportKind,
)
from roam.crypto.keys import encode_key, public_key
from roam.crypto.noise import CipherState, HandshakeState
from roam.crypto.records import RecordSealer
from roam.errors import ClientRefused, HandshakeError, ProtocolError, ServerBusy, TransportError


@dataclass(frozen=True, slots=True)
class SessionOpened:
    """NEW accepted: the session's id and keys; records may follow at once."""

    session_id: bytes
    keys: SessionKeys
    compression: int  # chosen by the server: ZSTD, ZSTD_HISTORY or 0 for none
    rest: bytes = b""


@dataclass(frozen=True, slots=True)
class ResumeAccepted:
    """RESUME accepted: the server's RESUMED comes in its first record."""

    rest: bytes = b""


@dataclass(frozen=True, slots=True)
class UnknownSession:
    """The server does not hold the session (expired, closed or restarted):
    only a new session can follow."""

    reason: str


@dataclass(frozen=True, slots=True)
class StandbyParked:
    """The server parked the transport; a resume on it writes a record only."""

    rest: bytes = b""


T = TypeVar("T")


class ClientOpening(ABC, Generic[T]):
    """The bytes to write, then the reply: `status:u8 | length:u16 | body`."""

    def __init__(self, server: str) -> None:
        self.server = server  # names the server in error messages
        self._steps = Steps()
        self._started = self._ended = False
        self._status: int | None = None
        self._need = REPLY.size

    @property
    def needed(self) -> int:
        """Bytes the reply still lacks (0 once it is whole)."""
        return 0 if self._ended else self._need - len(self._steps)

    def _begin(self) -> None:
        if self._started:
            raise OpeningUsageError("this opening has started already")
        self._started = True

    def receive_data(self, data: bytes | bytearray | memoryview) -> NeedMore | T:
        if not self._started or self._ended:
            raise OpeningUsageError("the reply is read after start() and once")
        self._steps.feed(data)
        while (chunk := self._steps.take(self._need)) is not None:
            if self._status is None:
                self._status, self._need = REPLY.unpack(chunk)
                continue
            self._ended = True
            return self._answer(self._known(self._status, chunk), chunk, self._steps.rest())
        return NeedMore(self._need - len(self._steps))

    def _known(self, raw: int, body: bytes) -> Status:
        """The status, unless it is one to end the attempt on whatever its kind."""
        try:
            status = Status(raw)
        except ValueError:
            raise TransportError(f"{self.server} answered with unknown status {raw}") from None
        if status is Status.BUSY:
            raise ServerBusy(f"server {self.server} is busy "
                             f"({body.decode(errors='replace') or 'no reason given'})")
        return status

    @abstractmethod
    def _answer(self, status: Status, body: bytes, rest: bytes) -> T: ...


class NewOpening(ClientOpening[SessionOpened]):
    """A new session: preamble and Noise message 1, then message 2."""

    def __init__(self, *, suite: Suite, private_key: bytes, server_key: bytes,
                 compression: CompressionMode, server: str) -> None:
        super().__init__(server)
        self._private_key = private_key
        self._server_key = server_key
        self._raw = Preamble(TransportKind.NEW, suite).encode()
        self._hs = HandshakeState(suite.noise_name, initiator=True, prologue=PROLOGUE + self._raw,
                                  s=private_key, rs=server_key)
        # With compression off the HELLO is the plain 8-byte one, which a
        # server from before compression also takes.
        self.offer = ZSTD | ZSTD_HISTORY if compression.enabled else 0

    def start(self, wall_ns: int) -> bytes:
        """What to write: the HELLO carries `wall_ns`, the wall clock in ns
        since the Unix epoch, which the server requires to rise."""
        self._begin()
        offer = self.offer
        hello = HELLO_COMPRESS.pack(wall_ns, offer) if offer else HELLO.pack(wall_ns)
        msg1 = self._hs.write_message(hello)
        return self._raw + HANDSHAKE_LEN.pack(len(msg1)) + msg1

    def _answer(self, status: Status, body: bytes, rest: bytes) -> SessionOpened:
        if status is not Status.OK:
            raise HandshakeError(f"server {self.server} refused the handshake: "
                                 f"{body.decode(errors='replace')}")
        try:
            payload = self._hs.read_message(body)
        except ProtocolError as exc:
            raise HandshakeError(
                f"server {self.server} did not prove it holds the key pinned with --server-key "
                f"({encode_key(self._server_key)}): {exc}; refusing to proceed") from None
        if payload[:1] != ACCEPTED:
            reason = payload[1:].decode(errors="replace") if payload[:1] == REFUSED else "?"
            raise ClientRefused(
                f"server {self.server} refused this client: {reason}; add its public key "
                f"{encode_key(public_key(self._private_key))} to the server's authorized keys")
        chosen = payload[1] if len(payload) == 2 else 0
        offer = self.offer
        if len(payload) > 2 or chosen not in (0, offer & ZSTD, offer & ZSTD_HISTORY):
            raise HandshakeError(f"server {self.server} accepted with a malformed answer "
                                 f"({payload.hex()}): compression {chosen:#x} was not offered")
        sid, keys = session_keys(self._hs)
        return SessionOpened(sid, keys, chosen, rest)


class ResumeOpening(ClientOpening[ResumeAccepted | UnknownSession]):
    """A session resumed on a new transport: the preamble and its first record."""

    def __init__(self, *, suite: Suite, session_id: bytes, server: str) -> None:
        super().__init__(server)
        self._raw = Preamble(TransportKind.RESUME, suite, session_id).encode()

    def start(self, sealer: RecordSealer, payload: bytes | memoryview, now: float) -> bytes:
        """What to write: the preamble, then the session's next record holding
        `payload` (its RESUME), sealed with the preamble as associated data,
        which proves this side holds the session's keys."""
        self._begin()
        return self._raw + sealer.seal(payload, now, ad=self._raw)

    def _answer(self, status: Status, body: bytes,
                rest: bytes) -> ResumeAccepted | UnknownSession:
        if status is Status.UNKNOWN_SESSION:
            return UnknownSession(body.decode(errors="replace"))
        if status is not Status.OK:
            raise TransportError(f"resume refused by {self.server}: "
                                 f"{body.decode(errors='replace') or status.name}")
        return ResumeAccepted(rest)


class StandbyOpening(ClientOpening[StandbyParked]):
    """A spare transport parked at the server (docs/protocol.md 2.7)."""

    def __init__(self, *, suite: Suite, session_id: bytes, key: CipherState, stamp: int,
                 server: str, via: str) -> None:
        """`key` is the session's standby key; `stamp` rises with each standby."""
        super().__init__(server)
        self._raw = Preamble(TransportKind.STANDBY, suite, session_id).encode()
        self._key, self._stamp, self._via = key, stamp, via

    def start(self) -> bytes:
        """What to write: the preamble and the proof, the tag of nothing under
        the standby key with the stamp as nonce and the preamble as associated data."""
        self._begin()
        tag = self._key.encrypt_with_nonce(self._stamp, self._raw, b"")
        return self._raw + STANDBY_PROOF.pack(self._stamp, tag)

    def _answer(self, status: Status, body: bytes, rest: bytes) -> StandbyParked:
        if status is not Status.OK:
            raise TransportError(f"{self.server} refused the standby via {self._via}: "
                                 f"{body.decode(errors='replace') or status.name}")
        return StandbyParked(rest)
