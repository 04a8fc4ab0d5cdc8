"""Frames: the messages inside a record (docs/protocol.md has the diagrams).

Every frame is `type:u8 | length:u32 | body`. Reliable frames (OPEN ...
WINDOW, CLOSE) start their body with the session-level sequence number
`seq:u64`; the receiver acknowledges them cumulatively and the sender keeps
them in its replay buffer until then. ACK, PING, PONG, RESUME and RESUMED
are about the transport they travel on and are never resent.

`decode_frames` is the one parser for peer input: anything malformed raises
`ProtocolError`, nothing else.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from enum import IntEnum

from roam.errors import CloseCode, ProtocolError


class FrameType(IntEnum):
    OPEN = 0x01
    OPEN_OK = 0x02
    OPEN_FAIL = 0x03
    DATA = 0x04
    FIN = 0x05
    RESET = 0x06
    WINDOW = 0x07
    DGRAM = 0x08
    ACK = 0x09
    PING = 0x0A
    PONG = 0x0B
    HANDOVER_BEGIN = 0x0C
    HANDOVER_READY = 0x0D
    RESUME = 0x0E
    RESUMED = 0x0F
    CLOSE = 0x11
    # Several transports at once (docs/protocol.md 5.2).
    JOIN = 0x12
    JOINED = 0x13
    SWITCH = 0x14
    MOVE = 0x15


class ChannelKind(IntEnum):
    STREAM = 1
    DATAGRAM = 2
    # The client asks the server to listen on host:port (a reverse forward);
    # the server opens a STREAM channel back, named by that host:port, for
    # each connection it accepts there. No data flows on the LISTEN channel
    # itself; closing it closes the listener.
    LISTEN = 3


# A DATA frame carries at most this much application data: large enough that
# per-frame Python overhead stays small at loopback speeds, small enough that
# one channel holds the others up for at most ~5 ms on a 100 Mbit/s link.
MAX_DATA_CHUNK = 60 * 1024
# The largest frame body accepted: one full DATA frame plus its fields.
MAX_FRAME_BODY = MAX_DATA_CHUNK + 64
MAX_REASON = 255
MAX_HOST = 255

HEADER = struct.Struct("!BI")
_SEQ_CH = struct.Struct("!QI")
_OPEN = struct.Struct("!QIBIHB")
_OPEN_OK = struct.Struct("!QII")
_SEQ_CH_CODE = struct.Struct("!QIB")
_DATA = struct.Struct("!QIB")
_WINDOW = struct.Struct("!QII")
_CH = struct.Struct("!I")
_U64 = struct.Struct("!Q")
_CLOSE = struct.Struct("!QH")
_SWITCH = struct.Struct("!QBII")
# MOVE: a token, then each address as a length byte and ASCII HOST:PORT.
_MOVE = struct.Struct("!IB")
# A unit has a handful of networks: more addresses than this in one MOVE is
# garbage, and a MOVE stays one small frame.
MAX_MOVE_ADDRESSES = 16
MAX_MOVE_ADDRESS = 80
# SWITCH flags: the sender resent here every frame the receiver has not
# acknowledged, and asks the receiver to do the same after `received`.
SWITCH_REINJECT = 0x01

RELIABLE = frozenset(
    {
        FrameType.OPEN,
        FrameType.OPEN_OK,
        FrameType.OPEN_FAIL,
        FrameType.DATA,
        FrameType.FIN,
        FrameType.RESET,
        FrameType.WINDOW,
        FrameType.CLOSE,
    }
)

# DATA flags (see docs/protocol.md): bit 0 says the payload is compressed,
# bit 1 that its data joins the direction's compression history
# (roam.core.compress; only where the handshake negotiated it).
FLAG_COMPRESSED = 0x01
FLAG_HISTORY = 0x02
_DATA_FLAGS = FLAG_COMPRESSED | FLAG_HISTORY


@dataclass(slots=True, frozen=True)
class Open:
    seq: int
    channel: int
    kind: ChannelKind
    window: int
    host: str
    port: int


@dataclass(slots=True, frozen=True)
class OpenOk:
    seq: int
    channel: int
    window: int


@dataclass(slots=True, frozen=True)
class OpenFail:
    seq: int
    channel: int
    code: CloseCode
    reason: str


# Data and Ack are not frozen: one of each is decoded from most records, and a
# frozen dataclass's __init__ (a setattr per field) took 0.53 us against 0.15.
@dataclass(slots=True)
class Data:
    seq: int
    channel: int
    flags: int
    # Decoded frames carry a view of the record's plaintext, not a copy.
    payload: bytes | memoryview


@dataclass(slots=True, frozen=True)
class Fin:
    seq: int
    channel: int


@dataclass(slots=True, frozen=True)
class Reset:
    seq: int
    channel: int
    code: CloseCode


@dataclass(slots=True, frozen=True)
class Window:
    seq: int
    channel: int
    increment: int


@dataclass(slots=True, frozen=True)
class Close:
    seq: int
    code: CloseCode
    reason: str


@dataclass(slots=True, frozen=True)
class Dgram:
    channel: int
    payload: bytes


@dataclass(slots=True)
class Ack:
    received: int


@dataclass(slots=True, frozen=True)
class Ping:
    token: int


@dataclass(slots=True, frozen=True)
class Pong:
    token: int


@dataclass(slots=True, frozen=True)
class HandoverBegin:
    """Client, on the old transport: it moves to another path (token names it in logs)."""

    token: int


@dataclass(slots=True, frozen=True)
class HandoverReady:
    """Server, on the old transport: the last frame it sends there."""

    token: int


@dataclass(slots=True, frozen=True)
class Resume:
    received: int


@dataclass(slots=True, frozen=True)
class Resumed:
    received: int


@dataclass(slots=True, frozen=True)
class Join:
    """Client, first on a new transport: it joins the attached session as a
    standby; nothing is resent."""

    received: int


@dataclass(slots=True, frozen=True)
class Joined:
    """Server, first on a joined transport: it is the session's now."""

    received: int


@dataclass(slots=True, frozen=True)
class Switch:
    """The sender's new reliable frames travel on this transport from here on;
    the receiver's should too. With SWITCH_REINJECT, both resend here every
    frame the other has not acknowledged.

    `serial` numbers the sender's switches (1, 2, ...); `seen` is the
    highest serial of the receiver's switches the sender had heard of when
    it switched. A receiver whose own latest switch is above `seen` knows
    the two crossed (claim 17; roam.core.crossing decides which stands)."""

    received: int
    flags: int = 0
    serial: int = 0
    seen: int = 0


@dataclass(slots=True, frozen=True)
class Move:
    """Server: it can be reached at `addresses` (HOST:PORT, best first) from
    now on; open transports there (a mobile server's handover, claim 16).
    `token` rises with each move, so an older MOVE that arrives late on
    another transport is ignored."""

    token: int
    addresses: tuple[str, ...]


Frame = (
    Open | OpenOk | OpenFail | Data | Fin | Reset | Window | Close | Dgram | Ack | Ping | Pong
    | Resume | Resumed | HandoverBegin | HandoverReady | Join | Joined | Switch | Move
)
ReliableFrame = Open | OpenOk | OpenFail | Data | Fin | Reset | Window | Close
RELIABLE_CLASSES = (Open, OpenOk, OpenFail, Data, Fin, Reset, Window, Close)


def _frame(ftype: FrameType, body: bytes) -> bytes:
    return HEADER.pack(ftype, len(body)) + body


def cut_utf8(raw: bytes, limit: int) -> bytes:
    """At most `limit` bytes of UTF-8, never ending inside a character."""
    return raw[:limit].decode("utf-8", "ignore").encode("utf-8")


def _text(value: str, limit: int, what: str) -> bytes:
    raw = value.encode("utf-8", "replace")
    if len(raw) > limit:
        # Reasons are for people; cut them rather than fail the frame.
        if what == "reason":
            return cut_utf8(raw, limit)
        raise ValueError(f"{what} is {len(raw)} bytes; the limit is {limit}")
    return raw


_DATA_HEAD = struct.Struct("!BIQIB")
_ACK_FRAME = struct.Struct("!BIQ")
# The frame types by their byte: a dict lookup, where FrameType(byte) costs
# an Enum call per frame.
_TYPES = {t.value: t for t in FrameType}
_DATA_TYPE, _ACK_TYPE = int(FrameType.DATA), int(FrameType.ACK)


def encode_ack(received: int) -> bytes:
    """The hot path's ACK frame (one after most reads)."""
    return _ACK_FRAME.pack(FrameType.ACK, _U64.size, received)


def encode_data_header(seq: int, channel: int, length: int, flags: int = 0) -> bytes:
    """The hot path: the 18 bytes of a DATA frame before its `length`-byte
    payload (the session keeps the two apart, so the payload is not copied
    to be framed)."""
    return _DATA_HEAD.pack(FrameType.DATA, _DATA.size + length, seq, channel, flags)


def encode_data(seq: int, channel: int, payload: bytes | memoryview, flags: int = 0) -> bytes:
    """One whole DATA frame."""
    return encode_data_header(seq, channel, len(payload), flags) + payload


def encode(frame: Frame) -> bytes:
    """Encode one frame. Raises ValueError for our own out-of-range values."""
    try:
        return _encode(frame)
    except struct.error as exc:
        raise ValueError(f"cannot encode {type(frame).__name__}: {exc}") from None


def _encode(frame: Frame) -> bytes:
    match frame:
        case Data(seq, channel, flags, payload):
            return encode_data(seq, channel, payload, flags)
        case Ack(n):
            return _frame(FrameType.ACK, _U64.pack(n))
        case Window(seq, channel, inc):
            return _frame(FrameType.WINDOW, _WINDOW.pack(seq, channel, inc))
        case Open(seq, channel, kind, window, host, port):
            h = _text(host, MAX_HOST, "host")
            return _frame(FrameType.OPEN, _OPEN.pack(seq, channel, kind, window, port, len(h)) + h)
        case OpenOk(seq, channel, window):
            return _frame(FrameType.OPEN_OK, _OPEN_OK.pack(seq, channel, window))
        case OpenFail(seq, channel, code, reason):
            body = _SEQ_CH_CODE.pack(seq, channel, code) + _text(reason, MAX_REASON, "reason")
            return _frame(FrameType.OPEN_FAIL, body)
        case Fin(seq, channel):
            return _frame(FrameType.FIN, _SEQ_CH.pack(seq, channel))
        case Reset(seq, channel, code):
            return _frame(FrameType.RESET, _SEQ_CH_CODE.pack(seq, channel, code))
        case Close(seq, code, reason):
            return _frame(FrameType.CLOSE, _CLOSE.pack(seq, code) + _text(reason, MAX_REASON,
                                                                          "reason"))
        case Dgram(channel, payload):
            return _frame(FrameType.DGRAM, _CH.pack(channel) + payload)
        case Ping(token):
            return _frame(FrameType.PING, _U64.pack(token))
        case Pong(token):
            return _frame(FrameType.PONG, _U64.pack(token))
        case Resume(n):
            return _frame(FrameType.RESUME, _U64.pack(n))
        case Resumed(n):
            return _frame(FrameType.RESUMED, _U64.pack(n))
        case HandoverBegin(token):
            return _frame(FrameType.HANDOVER_BEGIN, _CH.pack(token))
        case HandoverReady(token):
            return _frame(FrameType.HANDOVER_READY, _CH.pack(token))
        case Join(n):
            return _frame(FrameType.JOIN, _U64.pack(n))
        case Joined(n):
            return _frame(FrameType.JOINED, _U64.pack(n))
        case Switch(n, flags, serial, seen):
            return _frame(FrameType.SWITCH, _SWITCH.pack(n, flags, serial, seen))
        case Move(token, addresses):
            return _frame(FrameType.MOVE, _encode_move(token, addresses))
    raise ValueError(f"cannot encode {frame!r}")


def _encode_move(token: int, addresses: tuple[str, ...]) -> bytes:
    if not 1 <= len(addresses) <= MAX_MOVE_ADDRESSES:
        raise ValueError(f"a MOVE carries 1 to {MAX_MOVE_ADDRESSES} addresses, "
                         f"not {len(addresses)}")
    body = [_MOVE.pack(token, len(addresses))]
    for address in addresses:
        raw = address.encode("ascii")
        if not 0 < len(raw) <= MAX_MOVE_ADDRESS:
            raise ValueError(f"MOVE address {address!r} is not 1 to {MAX_MOVE_ADDRESS} bytes")
        body.append(bytes([len(raw)]) + raw)
    return b"".join(body)


def _decode_move(body: memoryview) -> Move:
    _at_least(FrameType.MOVE, body, _MOVE.size)
    token, count = _MOVE.unpack_from(body)
    if not 1 <= count <= MAX_MOVE_ADDRESSES:
        raise ProtocolError(f"MOVE frame names {count} addresses; 1 to {MAX_MOVE_ADDRESSES} "
                            f"are allowed")
    addresses: list[str] = []
    offset = _MOVE.size
    for _ in range(count):
        if offset >= len(body):
            raise ProtocolError("MOVE frame ends before its last address")
        size = body[offset]
        raw = bytes(body[offset + 1:offset + 1 + size])
        if not 0 < size <= MAX_MOVE_ADDRESS or len(raw) != size:
            raise ProtocolError(f"MOVE frame has an address of {size} bytes")
        if not all(0x21 <= b < 0x7F for b in raw):
            raise ProtocolError("MOVE frame has an address that is not printable ASCII")
        addresses.append(raw.decode("ascii"))
        offset += 1 + size
    if offset != len(body):
        raise ProtocolError(f"MOVE frame has {len(body) - offset} bytes after its addresses")
    return Move(token, tuple(addresses))


def _code(value: int) -> CloseCode:
    try:
        return CloseCode(value)
    except ValueError:
        raise ProtocolError(f"unknown close code {value}") from None


def _utf8(raw: bytes | memoryview, what: str) -> str:
    try:
        return bytes(raw).decode("utf-8")
    except UnicodeDecodeError:
        raise ProtocolError(f"{what} is not UTF-8") from None


def _fixed(ftype: FrameType, body: memoryview, size: int) -> None:
    if len(body) != size:
        raise ProtocolError(f"{ftype.name} frame body is {len(body)} bytes; expected {size}")


def _at_least(ftype: FrameType, body: memoryview, size: int) -> None:
    if len(body) < size:
        raise ProtocolError(f"{ftype.name} frame body is {len(body)} bytes; needs at least {size}")


def _decode_one(ftype: FrameType, body: memoryview) -> Frame:
    if ftype is FrameType.DATA:
        _at_least(ftype, body, _DATA.size)
        seq, channel, flags = _DATA.unpack_from(body)
        if flags & ~_DATA_FLAGS:
            raise ProtocolError(f"DATA frame has unknown flags {flags:#x}")
        return Data(seq, channel, flags, body[_DATA.size:])
    if ftype in (FrameType.ACK, FrameType.PING, FrameType.PONG, FrameType.RESUME,
                 FrameType.RESUMED, FrameType.JOIN, FrameType.JOINED):
        _fixed(ftype, body, _U64.size)
        (n,) = _U64.unpack_from(body)
        if ftype is FrameType.ACK:
            return Ack(n)
        if ftype is FrameType.JOIN:
            return Join(n)
        if ftype is FrameType.JOINED:
            return Joined(n)
        if ftype is FrameType.PING:
            return Ping(n)
        if ftype is FrameType.PONG:
            return Pong(n)
        return Resume(n) if ftype is FrameType.RESUME else Resumed(n)
    if ftype is FrameType.WINDOW:
        _fixed(ftype, body, _WINDOW.size)
        seq, channel, inc = _WINDOW.unpack_from(body)
        return Window(seq, channel, inc)
    if ftype is FrameType.OPEN:
        _at_least(ftype, body, _OPEN.size)
        seq, channel, kind, window, port, hlen = _OPEN.unpack_from(body)
        _fixed(ftype, body, _OPEN.size + hlen)
        try:
            ckind = ChannelKind(kind)
        except ValueError:
            raise ProtocolError(f"OPEN frame has unknown channel kind {kind}") from None
        host = _utf8(body[_OPEN.size:], "OPEN host")
        if not host:
            raise ProtocolError("OPEN frame has an empty host")
        return Open(seq, channel, ckind, window, host, port)
    if ftype is FrameType.OPEN_OK:
        _fixed(ftype, body, _OPEN_OK.size)
        return OpenOk(*_OPEN_OK.unpack_from(body))
    if ftype is FrameType.OPEN_FAIL:
        _at_least(ftype, body, _SEQ_CH_CODE.size)
        seq, channel, code = _SEQ_CH_CODE.unpack_from(body)
        return OpenFail(seq, channel, _code(code),
                        _utf8(body[_SEQ_CH_CODE.size:], "OPEN_FAIL reason"))
    if ftype is FrameType.FIN:
        _fixed(ftype, body, _SEQ_CH.size)
        return Fin(*_SEQ_CH.unpack_from(body))
    if ftype is FrameType.RESET:
        _fixed(ftype, body, _SEQ_CH_CODE.size)
        seq, channel, code = _SEQ_CH_CODE.unpack_from(body)
        return Reset(seq, channel, _code(code))
    if ftype is FrameType.CLOSE:
        _at_least(ftype, body, _CLOSE.size)
        seq, code = _CLOSE.unpack_from(body)
        return Close(seq, _code(code), _utf8(body[_CLOSE.size:], "CLOSE reason"))
    if ftype in (FrameType.HANDOVER_BEGIN, FrameType.HANDOVER_READY):
        _fixed(ftype, body, _CH.size)
        (token,) = _CH.unpack_from(body)
        if ftype is FrameType.HANDOVER_BEGIN:
            return HandoverBegin(token)
        return HandoverReady(token)
    if ftype is FrameType.SWITCH:
        _fixed(ftype, body, _SWITCH.size)
        received, flags, serial, seen = _SWITCH.unpack_from(body)
        if flags & ~SWITCH_REINJECT:
            raise ProtocolError(f"SWITCH frame has unknown flags {flags:#x}")
        if serial == 0:
            raise ProtocolError("SWITCH frame has serial 0; a sender's switches count from 1")
        return Switch(received, flags, serial, seen)
    if ftype is FrameType.MOVE:
        return _decode_move(body)
    if ftype is FrameType.DGRAM:
        _at_least(ftype, body, _CH.size)
        (channel,) = _CH.unpack_from(body)
        return Dgram(channel, bytes(body[_CH.size:]))
    raise ProtocolError(f"{ftype.name} frames are not supported by this version")


def decode_frames(payload: bytes | memoryview) -> list[Frame]:
    """Parse a record's plaintext into frames. Raises only ProtocolError."""
    view = memoryview(payload)
    frames: list[Frame] = []
    offset = 0
    end = len(view)
    if end == 0:
        raise ProtocolError("empty record")
    while offset < end:
        if end - offset < HEADER.size:
            raise ProtocolError(f"truncated frame header at offset {offset}")
        raw_type, length = HEADER.unpack_from(view, offset)
        offset += HEADER.size
        if length > MAX_FRAME_BODY:
            raise ProtocolError(f"frame body of {length} bytes exceeds {MAX_FRAME_BODY}")
        if end - offset < length:
            raise ProtocolError(
                f"truncated frame: body of {length} bytes, {end - offset} left in the record"
            )
        if raw_type == _DATA_TYPE and length >= _DATA.size:
            # DATA, then ACK, are most frames of all: parsed here, without
            # the general dispatch (the same checks as _decode_one's).
            seq, channel, flags = _DATA.unpack_from(view, offset)
            if flags & ~_DATA_FLAGS:
                raise ProtocolError(f"DATA frame has unknown flags {flags:#x}")
            frames.append(Data(seq, channel, flags, view[offset + _DATA.size:offset + length]))
        elif raw_type == _ACK_TYPE and length == _U64.size:
            frames.append(Ack(_U64.unpack_from(view, offset)[0]))
        else:
            ftype = _TYPES.get(raw_type)
            if ftype is None:
                raise ProtocolError(f"unknown frame type {raw_type:#04x}")
            frames.append(_decode_one(ftype, view[offset:offset + length]))
        offset += length
    return frames
