"""Events the session hands to its driver through `Session.next_event()`."""

from __future__ import annotations

from dataclasses import dataclass

from roam.core.frames import ChannelKind
from roam.errors import CloseCode


@dataclass(slots=True, frozen=True)
class ChannelOpenRequested:
    """The peer wants a channel to host:port; answer with accept or refuse."""

    channel: int
    kind: ChannelKind
    host: str
    port: int


@dataclass(slots=True, frozen=True)
class ChannelOpened:
    """Our OPEN was accepted: data may flow."""

    channel: int


@dataclass(slots=True, frozen=True)
class ChannelOpenFailed:
    channel: int
    code: CloseCode
    reason: str


@dataclass(slots=True, frozen=True)
class ChannelRefused:
    """The peer's OPEN was refused by this side's own limits (OPEN_FAIL sent):
    the peer's application sees a close, so this side must say why."""

    channel: int
    code: CloseCode
    reason: str


@dataclass(slots=True)  # not frozen: one per DATA frame (roam.core.frames.Data says why)
class DataReceived:
    """Application bytes for a channel; report them with `consumed()` once written.
    A view of the record that carried them, valid for as long as it is held."""

    channel: int
    data: bytes | memoryview


@dataclass(slots=True, frozen=True)
class DatagramReceived:
    """One datagram for a datagram channel (no credit, no order across transports)."""

    channel: int
    data: bytes


@dataclass(slots=True, frozen=True)
class EndOfStream:
    """The peer half-closed the channel (FIN): no more data will arrive on it."""

    channel: int


@dataclass(slots=True, frozen=True)
class ChannelReset:
    """The peer aborted the channel."""

    channel: int
    code: CloseCode


@dataclass(slots=True, frozen=True)
class ChannelClosed:
    """Both directions of the channel finished cleanly; the session forgot it."""

    channel: int


@dataclass(slots=True, frozen=True)
class TransportDead:
    """Nothing arrived on transport `transport` for `silence` seconds: the
    driver drops it (the core has already let go of it)."""

    silence: float
    transport: int = 0


@dataclass(slots=True, frozen=True)
class TransportJoined:
    """A transport joined the attached session as a standby (JOIN, JOINED)."""

    transport: int


@dataclass(slots=True, frozen=True)
class TransportSwitched:
    """This side's new reliable frames go on `transport` now (was `previous`):
    the peer asked (SWITCH), a transport was lost, or the active one stalled.
    `frames_resent` frames were sent again on it (0 for a soft switch)."""

    transport: int
    previous: int | None
    reason: str
    frames_resent: int
    # The active one was lost or stalled (REINJECT): a hard handover.
    hard: bool = False
    # When the previous transport last delivered anything: a hard handover's
    # stall, as the application sees it, began then (None without one).
    previous_heard: float | None = None


@dataclass(slots=True, frozen=True)
class SwitchesCrossed:
    """Both units switched before hearing of the other's (claim 17): ours
    to `ours`, the peer's to `theirs`. `kept`: ours stands, this unit made
    the session; else ours is abandoned and the session follows the peer's."""

    ours: int
    theirs: int
    kept: bool


@dataclass(slots=True, frozen=True)
class PeerMoved:
    """Client: the server can be reached at `addresses` now (MOVE): open
    transports there and move the session onto them."""

    addresses: tuple[str, ...]


@dataclass(slots=True, frozen=True)
class HandoverReady:
    """Client: the server drained the old transport; resume on the new one now."""

    token: int


@dataclass(slots=True, frozen=True)
class SessionResumed:
    """A resume completed on a new transport."""

    frames_resent: int
    bytes_resent: int


@dataclass(slots=True, frozen=True)
class SessionClosed:
    code: CloseCode
    reason: str
    by_peer: bool


Event = (
    ChannelOpenRequested | ChannelOpened | ChannelOpenFailed | ChannelRefused | DataReceived
    | DatagramReceived | EndOfStream
    | ChannelReset | ChannelClosed | TransportDead | SessionResumed | SessionClosed
    | HandoverReady | TransportJoined | TransportSwitched | SwitchesCrossed | PeerMoved
)
