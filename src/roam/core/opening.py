"""Opening a transport, sans-IO: what the server's and the client's side share.

Each side (`opening_server`, `opening_client`) is fed the bytes its
connection brings, `receive_data(data)`, and answers `NeedMore(size)` until
a step of the opening is whole, then an outcome: the bytes to write and what
the transport becomes. Bytes fed past the opening's last one come back as
the outcome's `rest`: they are the session's first records.
"""

from __future__ import annotations

from dataclasses import dataclass

from roam.crypto.noise import CipherState, HandshakeState
from roam.errors import LocalError


class OpeningUsageError(LocalError):
    """Our own code misused an opening (fed it after it ended, or before it started)."""


@dataclass(frozen=True, slots=True)
class NeedMore:
    """The current step lacks `size` bytes: a driver that reads exactly this
    many never reads past the opening into the records that follow it."""

    size: int


@dataclass(frozen=True, slots=True)
class SessionKeys:
    """What a completed handshake gives one side of a session."""

    send: CipherState
    receive: CipherState
    datagram_send: CipherState
    datagram_receive: CipherState
    # Proves a STANDBY transport belongs to the session (docs/protocol.md 2.7).
    standby: CipherState


def session_keys(hs: HandshakeState) -> tuple[bytes, SessionKeys]:
    """The session id (the first 16 bytes of the handshake hash) and the keys."""
    send, receive = hs.split()
    datagram_send, datagram_receive = hs.datagram_keys()
    return hs.handshake_hash[:16], SessionKeys(send, receive, datagram_send, datagram_receive,
                                               hs.standby_key())


class Steps:
    """The bytes of the step in progress, kept between `receive_data` calls.

    What is kept is always less than the current step's size, so the bounds
    on the steps bound what a peer makes an opening hold.
    """

    __slots__ = ("_buf",)

    def __init__(self) -> None:
        self._buf = bytearray()

    def __len__(self) -> int:
        return len(self._buf)

    def feed(self, data: bytes | bytearray | memoryview) -> None:
        self._buf += data

    def take(self, size: int) -> bytes | None:
        """The next `size` bytes, or None (and nothing taken) when they are not all here."""
        if len(self._buf) < size:
            return None
        out = bytes(self._buf[:size])
        del self._buf[:size]
        return out

    def rest(self) -> bytes:
        """Everything still held, which belongs to what follows the opening."""
        out = bytes(self._buf)
        self._buf.clear()
        return out
