"""The project's own errors.

`LocalError` is our own side's fault (bad configuration, misuse of an API);
`ProtocolError` means the peer misbehaved or sent garbage. Drivers translate
`OSError` into `TransportError` at the edge. A daemon catches `ProtocolError`
per transport or per channel and keeps serving everything else.
"""

from __future__ import annotations

from enum import IntEnum


class RoamError(Exception):
    """Base of every error roam raises on purpose."""


class LocalError(RoamError):
    """Our own side's fault: bad configuration, misuse of an API."""


class ConfigError(LocalError):
    """Bad configuration or command-line input; the message names the problem."""


class KeyFileError(ConfigError):
    """A key file or authorized-keys file is missing, unreadable or malformed."""


class CloseCode(IntEnum):
    """Reason codes carried by CLOSE, OPEN_FAIL and RESET frames (docs/protocol.md)."""

    NORMAL = 0
    PROTOCOL_ERROR = 1
    NOT_ALLOWED = 2
    CONNECT_FAILED = 3
    UNREACHABLE = 4
    TIMEOUT = 5
    FLOW_CONTROL = 6
    INTERNAL = 7
    SHUTDOWN = 8
    UNKNOWN_CHANNEL = 9
    RESET_BY_APPLICATION = 10


class ProtocolError(RoamError):
    """The peer sent something that breaks the protocol.

    `code` is the wire code sent in the CLOSE or RESET that follows.
    """

    def __init__(self, message: str, code: CloseCode = CloseCode.PROTOCOL_ERROR) -> None:
        super().__init__(message)
        self.code = code


class CryptoError(ProtocolError):
    """A record or handshake message failed authentication or was replayed."""


class FramingError(ProtocolError):
    """A transport's byte stream cannot be split into records: drop that transport."""


class HandshakeError(RoamError):
    """The handshake could not complete; the message says why, for the operator."""


class ClientRefused(HandshakeError):
    """The server, proven by its key, refused this client (its key is not
    authorized): no retry can change that."""


class TransportError(RoamError):
    """A transport failed (connection refused, reset, timed out)."""


class ServerBusy(TransportError):
    """The server refused for now (BUSY): nothing is wrong with the path or with
    us, so the attempt is repeated after a jittered backoff and the path is not
    blamed."""
