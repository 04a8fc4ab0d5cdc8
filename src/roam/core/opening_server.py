"""The server's side of opening a transport, sans-IO (docs/protocol.md 2.1-2.7).

In: the transport's bytes (`ServerOpening.receive_data`); the server's
private key, authorized keys and compression mode; its sessions (record
opener, standby key and stamp) and the newest HELLO per client key, both of
which an accepted opening updates. Out: `NeedMore`, then `Refuse`, `Busy`,
`NewSession`, `Resume` or `Park`, each with the reply to write. After `Park`
the same opening takes the parked transport's first record, to `Resume`.

A peer's fault is a `Refuse`, never an exception. An opening holds at most
one step of a peer's bytes: a Noise message or a first record whose length
is over its bound (MAX_HANDSHAKE_MESSAGE, MAX_FIRST_RECORD) is refused on
its length, before its bytes are asked for.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, MutableMapping
from dataclasses import dataclass
from enum import Enum, auto
from typing import Protocol

from roam.core.compress import ZSTD, ZSTD_HISTORY, CompressionMode
from roam.core.opening import NeedMore, OpeningUsageError, SessionKeys, Steps, session_keys
from roam.core.preamble import (
    ACCEPTED,
    HANDSHAKE_LEN,
    HELLO,
    HELLO_COMPRESS,
    MAX_FIRST_RECORD,
    MAX_HANDSHAKE_MESSAGE,
    PREAMBLE,
    PROLOGUE,
    REFUSED,
    STANDBY_PROOF,
    Status,
    Suite,
    TransportKind,
    decode_preamble,
    encode_reply,
    reply_error,
)
from roam.crypto.keys import short_id
from roam.crypto.noise import CipherState, HandshakeState
from roam.crypto.records import HEADER, TAG, Lane, RecordOpener
from roam.errors import CryptoError, ProtocolError

# The shortest record: its counter and an AEAD tag around nothing.
MIN_RECORD = 8 + TAG


@dataclass(frozen=True, slots=True)
class Refuse:
    """Write `reply`, close the transport, log `log`: anyone can cause one,
    so a server logs these at a bounded rate."""

    status: Status
    reason: str  # for the peer's operator; `reply` carries it (cut at 1024 bytes)
    log: str  # for ours: the problem and the peer
    # reply_error(status, reason), except: an unauthorized client's refusal
    # is status OK with a message 2 saying so (it proves the server's key);
    # a parked standby's failed resume gets none (its OK went out already).
    reply: bytes

    @property
    def code(self) -> str:
        """What the refusal is counted as (one of a fixed set): the status's
        name, and NOT_AUTHORIZED for an unauthorized client, whose reply says
        OK and refuses inside message 2."""
        return "NOT_AUTHORIZED" if self.status is Status.OK else self.status.name


@dataclass(frozen=True, slots=True)
class Busy:
    """Too many handshakes in progress: answer BUSY and close; the client retries."""

    reason: str

    @property
    def reply(self) -> bytes:
        return reply_error(Status.BUSY, self.reason)


@dataclass(frozen=True, slots=True)
class NewSession:
    """A NEW handshake completed: write `reply` (message 2); records follow."""

    session_id: bytes
    client_key: bytes
    client_name: str  # as the authorized keys name it
    compression: int  # chosen: ZSTD, ZSTD_HISTORY or 0 for none
    keys: SessionKeys
    reply: bytes
    rest: bytes = b""


@dataclass(frozen=True, slots=True)
class Resume:
    """The first record authenticated: write `reply`, move the session to this
    transport and give it `payload` (its RESUME) before any other record."""

    session_id: bytes
    payload: bytes
    standby: bool  # on a parked standby: `reply` is empty, its OK went out at `Park`
    reply: bytes
    rest: bytes = b""


@dataclass(frozen=True, slots=True)
class Park:
    """A STANDBY proved itself: write `reply` and keep feeding this opening,
    which waits for the first record of a resume on it."""

    session_id: bytes
    stamp: int
    reply: bytes
    rest: bytes = b""


ServerOutcome = NeedMore | Refuse | Busy | NewSession | Resume | Park


@dataclass(slots=True)
class StandbyState:
    """A session's standby key, and the newest stamp accepted with it: an
    opening that parks raises it, so a recorded STANDBY cannot come again."""

    key: CipherState
    stamp: int = 0


class Resumable(Protocol):
    """A session as an opening sees it."""

    @property
    def opener(self) -> RecordOpener: ...

    @property
    def name(self) -> str: ...


class SessionTable(Protocol):
    """The server's sessions by id."""

    def resumable(self, session_id: bytes) -> Resumable | None:
        """The session (the same object each time), or None when there is
        none or it has closed."""

    def standby(self, session_id: bytes) -> StandbyState | None:
        """The session's standby key, or None when there is no such session."""


class _Step(Enum):
    PREAMBLE = auto()
    LENGTH = auto()  # NEW: message 1's length
    MESSAGE = auto()  # NEW: message 1
    PROOF = auto()  # STANDBY: stamp and tag
    HEADER = auto()  # RESUME, or a parked STANDBY: the first record's header
    BODY = auto()  # ... and its ciphertext
    DONE = auto()


def _admitted() -> str | None:
    return None


class ServerOpening:
    """One transport's opening, from its first byte to its session."""

    def __init__(self, *, private_key: bytes, authorized: Mapping[bytes, str],
                 compression: CompressionMode, sessions: SessionTable,
                 last_hello: MutableMapping[bytes, int],
                 admit_handshake: Callable[[], str | None] = _admitted,
                 peer: str = "?") -> None:
        """`admit_handshake` is asked once a NEW preamble arrives: None admits
        it, a reason answers BUSY. `peer` names the transport in log lines."""
        self._private_key = private_key
        self._authorized = authorized
        self._compression = compression
        self._sessions = sessions
        self._last_hello = last_hello
        self._admit_handshake = admit_handshake
        self._peer = peer
        self._steps = Steps()
        self._step = _Step.PREAMBLE
        self._need = PREAMBLE.size
        self._raw = b""  # the preamble as sent: prologue, and the resume's associated data
        self._suite = Suite.AESGCM_SHA256
        self._sid = b""
        self._target: Resumable | None = None
        self._parked = False
        self._counter = 0

    @property
    def needed(self) -> int:
        """Bytes the current step still lacks (0 once the opening has ended)."""
        return 0 if self._step is _Step.DONE else self._need - len(self._steps)

    @property
    def buffered(self) -> int:
        """Bytes of an unfinished step held: less than the step's size."""
        return len(self._steps)

    def receive_data(self, data: bytes | bytearray | memoryview) -> ServerOutcome:
        if self._step is _Step.DONE:
            raise OpeningUsageError("this opening has ended: its bytes are records now")
        self._steps.feed(data)
        while (chunk := self._steps.take(self._need)) is not None:
            outcome = self._advance(chunk)
            if outcome is not None:
                return outcome
        return NeedMore(self._need - len(self._steps))

    # ---- the steps -----------------------------------------------------------

    def _advance(self, chunk: bytes) -> ServerOutcome | None:
        """The outcome of a whole step, or None when the next step begins."""
        step = self._step
        if step is _Step.PREAMBLE:
            return self._preamble(chunk)
        if step is _Step.LENGTH:
            (length,) = HANDSHAKE_LEN.unpack(chunk)
            if length > MAX_HANDSHAKE_MESSAGE:
                return self._refuse(Status.HANDSHAKE_FAILED, f"handshake message of {length} bytes")
            self._expect(_Step.MESSAGE, length)
            return None
        if step is _Step.MESSAGE:
            return self._hello(chunk)
        if step is _Step.PROOF:
            return self._proof(chunk)
        if step is _Step.HEADER:
            length, self._counter = HEADER.unpack(chunk)
            if not MIN_RECORD <= length <= MAX_FIRST_RECORD:
                return self._refuse(Status.RESUME_REFUSED, f"first record length {length} (a "
                                    f"resume's first record carries RESUME alone: at most "
                                    f"{MAX_FIRST_RECORD} bytes)")
            self._expect(_Step.BODY, length - 8)
            return None
        return self._first_record(chunk)

    def _preamble(self, raw: bytes) -> ServerOutcome | None:
        try:
            pre = decode_preamble(raw)
        except ProtocolError as exc:
            return self._refuse(Status.BAD_PREAMBLE, str(exc))
        self._raw, self._suite, self._sid = raw, pre.suite, pre.session_id
        if pre.kind is TransportKind.NEW:
            busy = self._admit_handshake()
            if busy is not None:
                self._end()
                return Busy(f"too many handshakes in progress ({busy})")
            self._expect(_Step.LENGTH, HANDSHAKE_LEN.size)
            return None
        if pre.kind is TransportKind.STANDBY:
            self._expect(_Step.PROOF, STANDBY_PROOF.size)
            return None
        self._target = self._sessions.resumable(self._sid)
        if self._target is None:
            return self._unknown()
        self._expect(_Step.HEADER, HEADER.size)
        return None

    def _hello(self, msg1: bytes) -> ServerOutcome:
        """Message 1 of NEW: who the client is, whether it may, and message 2."""
        hs = HandshakeState(self._suite.noise_name, initiator=False,
                            prologue=PROLOGUE + self._raw, s=self._private_key)
        try:
            hello = hs.read_message(msg1)
        except ProtocolError as exc:
            return self._refuse(Status.HANDSHAKE_FAILED,
                                f"cannot decrypt the client's handshake ({exc}): the client's "
                                "--server-key is not this server's public key")
        client_key = hs.remote_static
        if client_key is None:
            return self._refuse(Status.HANDSHAKE_FAILED, "handshake carried no client key")
        who = self._authorized.get(client_key)
        if who is None:
            reason = "this client's key is not authorized by the server"
            msg2 = hs.write_message(REFUSED + reason.encode())
            self._end()
            return Refuse(Status.OK, reason, f"refused client {short_id(client_key)} from "
                          f"{self._peer}: its key is not in the authorized keys",
                          encode_reply(Status.OK, msg2))
        offer: int | None
        if len(hello) == HELLO.size:
            (stamp,), offer = HELLO.unpack(hello), None
        elif len(hello) == HELLO_COMPRESS.size:
            stamp, offer = HELLO_COMPRESS.unpack(hello)
        else:
            return self._refuse(Status.HANDSHAKE_FAILED,
                                f"handshake payload of {len(hello)} bytes from client "
                                f"{short_id(client_key)}; expected {HELLO.size} or "
                                f"{HELLO_COMPRESS.size}")
        if stamp <= self._last_hello.get(client_key, 0):
            return self._refuse(Status.HANDSHAKE_FAILED,
                                f"handshake from client {short_id(client_key)} is a replay (its "
                                "timestamp is not newer than the last one; is the client's "
                                "clock going backwards?)")
        self._last_hello[client_key] = stamp
        # Compression only when both sides allow it; each then compresses
        # what it sends as its own mode says.
        chosen = 0
        if offer is not None and self._compression.enabled:
            chosen = (ZSTD_HISTORY if offer & ZSTD_HISTORY else ZSTD) & offer
        msg2 = hs.write_message(ACCEPTED if offer is None else ACCEPTED + bytes([chosen]))
        sid, keys = session_keys(hs)
        return NewSession(sid, client_key, who, chosen, keys, encode_reply(Status.OK, msg2),
                          self._end())

    def _proof(self, proof: bytes) -> ServerOutcome:
        """STANDBY: the tag over the preamble under the session's standby key,
        with a stamp newer than the last one accepted."""
        stamp, tag = STANDBY_PROOF.unpack(proof)
        target, standby = self._sessions.resumable(self._sid), self._sessions.standby(self._sid)
        if target is None or standby is None:
            return self._unknown()
        try:
            standby.key.decrypt_with_nonce(stamp, self._raw, tag)
        except CryptoError:
            return self._refuse(Status.RESUME_REFUSED, "standby proof does not authenticate")
        if stamp <= standby.stamp:
            return self._refuse(Status.RESUME_REFUSED,
                                f"standby stamp {stamp} is not newer than {standby.stamp} "
                                "(a replay)")
        standby.stamp = stamp
        self._target, self._parked = target, True
        self._expect(_Step.HEADER, HEADER.size)
        return Park(self._sid, stamp, encode_reply(Status.OK), self._steps.rest())

    def _first_record(self, body: bytes) -> ServerOutcome:
        """Open it with the session's own opener: after a RESUME preamble with
        the preamble as associated data, on a parked standby with none."""
        target = self._target
        if target is None or self._sessions.resumable(self._sid) is not target:
            return self._refuse(Status.UNKNOWN_SESSION, "the session ended meanwhile")
        try:
            # A lane of its own: on a parked standby joining a session whose
            # active transport carries records meanwhile, counters interleave
            # (docs/protocol.md 3.3); the window still refuses a replay.
            payload = target.opener.open(self._counter, body, ad=b"" if self._parked else self._raw,
                                         lane=Lane())
        except CryptoError as exc:
            reason = "resume does not authenticate"
            self._end()
            return Refuse(Status.RESUME_REFUSED, reason,
                          f"{target.name}: refused resume from {self._peer}: {exc}",
                          b"" if self._parked else reply_error(Status.RESUME_REFUSED, reason))
        reply = b"" if self._parked else encode_reply(Status.OK)
        return Resume(self._sid, payload, self._parked, reply, self._end())

    # ---- helpers -------------------------------------------------------------

    def _expect(self, step: _Step, size: int) -> None:
        self._step, self._need = step, size

    def _end(self) -> bytes:
        """The opening is over; what it holds past its last byte."""
        self._step, self._need = _Step.DONE, 0
        return self._steps.rest()

    def _unknown(self) -> Refuse:
        return self._refuse(Status.UNKNOWN_SESSION,
                            f"no session {self._sid.hex()[:8]} here (expired or restarted)")

    def _refuse(self, status: Status, reason: str) -> Refuse:
        self._end()
        return Refuse(status, reason, f"transport from {self._peer} refused: {reason}",
                      reply_error(status, reason))
