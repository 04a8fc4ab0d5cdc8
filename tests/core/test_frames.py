"""Frame encoding and decoding: round trips, limits, and every refusal of peer input."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from roam.core.frames import (
    _CLOSE,
    _DATA,
    _OPEN,
    _SEQ_CH_CODE,
    FLAG_COMPRESSED,
    HEADER,
    MAX_DATA_CHUNK,
    MAX_FRAME_BODY,
    MAX_HOST,
    MAX_MOVE_ADDRESS,
    MAX_MOVE_ADDRESSES,
    MAX_REASON,
    SWITCH_REINJECT,
    Ack,
    ChannelKind,
    Close,
    Data,
    Dgram,
    Fin,
    Frame,
    FrameType,
    HandoverBegin,
    HandoverReady,
    Join,
    Joined,
    Move,
    Open,
    OpenFail,
    OpenOk,
    Ping,
    Pong,
    Reset,
    Resume,
    Resumed,
    Switch,
    Window,
    decode_frames,
    encode,
    encode_data,
)
from roam.errors import CloseCode, ProtocolError

U8 = 2**8 - 1
U16 = 2**16 - 1
U32 = 2**32 - 1
U64 = 2**64 - 1

FRAME_CLASSES = (
    Open, OpenOk, OpenFail, Data, Fin, Reset, Window, Close, Dgram, Ack, Ping, Pong, Resume,
    Resumed, HandoverBegin, HandoverReady, Join, Joined, Switch, Move,
)

# One instance of every frame type, with values at the edges of their fields.
EXAMPLES: list[Frame] = [
    Open(1, 2, ChannelKind.STREAM, 65536, "example.org", 443),
    Open(U64, U32, ChannelKind.DATAGRAM, U32, "h" * MAX_HOST, U16),
    Open(0, 0, ChannelKind.STREAM, 0, "dns.\u00fcber.example", 0),
    OpenOk(3, 4, 1 << 20),
    OpenOk(U64, U32, U32),
    OpenFail(5, 6, CloseCode.CONNECT_FAILED, "connection refused"),
    OpenFail(0, 0, CloseCode.NOT_ALLOWED, ""),
    Data(7, 8, 0, b"hello"),
    Data(9, 10, FLAG_COMPRESSED, bytes(range(256))),
    Data(U64, U32, 0, b""),
    Fin(11, 12),
    Reset(13, 14, CloseCode.RESET_BY_APPLICATION),
    Window(15, 16, 4096),
    Window(U64, U32, U32),
    Close(17, CloseCode.SHUTDOWN, "bye \u2014 for now"),
    Close(0, CloseCode.NORMAL, ""),
    Dgram(18, b"\x00\x01datagram"),
    Dgram(U32, b""),
    Ack(19),
    Ack(U64),
    Ping(20),
    Pong(U64),
    Resume(0),
    Resumed(21),
    HandoverBegin(22),
    HandoverReady(23),
    Join(0),
    Joined(U64),
    Switch(24, 0, 1, 0),
    Switch(U64, SWITCH_REINJECT, U32, U32),
    Move(1, ("198.19.64.2:7000",)),
    Move(U32, tuple(f"[2001:db8::{i}]:{U16}" for i in range(MAX_MOVE_ADDRESSES))),
]


def raw(ftype: int, body: bytes) -> bytes:
    """One frame with the header built by hand, so any type or body can be sent."""
    return HEADER.pack(ftype, len(body)) + body


def refused(record: bytes, fragment: str) -> ProtocolError:
    with pytest.raises(ProtocolError) as info:
        decode_frames(record)
    assert fragment in str(info.value)
    assert info.value.code is CloseCode.PROTOCOL_ERROR
    return info.value


def fit(text: str, limit: int) -> str:
    """`text` cut, at a character boundary, to at most `limit` UTF-8 bytes."""
    while len(text.encode()) > limit:
        text = text[:-1]
    return text


# Strategies

u16 = st.integers(0, U16)
u32 = st.integers(0, U32)
u64 = st.integers(0, U64)
utf8_text = st.text(st.characters(codec="utf-8"), max_size=MAX_REASON)
hosts = st.text(st.characters(codec="utf-8"), min_size=1, max_size=MAX_HOST).map(
    lambda h: fit(h, MAX_HOST)
)
reasons = utf8_text.map(lambda r: fit(r, MAX_REASON))
codes = st.sampled_from(CloseCode)
payloads = st.binary(max_size=300)

frames_st: st.SearchStrategy[Frame] = st.one_of(
    st.builds(Open, u64, u32, st.sampled_from(ChannelKind), u32, hosts, u16),
    st.builds(OpenOk, u64, u32, u32),
    st.builds(OpenFail, u64, u32, codes, reasons),
    st.builds(Data, u64, u32, st.sampled_from([0, FLAG_COMPRESSED]), payloads),
    st.builds(Fin, u64, u32),
    st.builds(Reset, u64, u32, codes),
    st.builds(Window, u64, u32, u32),
    st.builds(Close, u64, codes, reasons),
    st.builds(Dgram, u32, payloads),
    st.builds(HandoverBegin, u32),
    st.builds(HandoverReady, u32),
    st.builds(Ack, u64),
    st.builds(Ping, u64),
    st.builds(Pong, u64),
    st.builds(Resume, u64),
    st.builds(Resumed, u64),
    st.builds(Join, u64),
    st.builds(Joined, u64),
    st.builds(Switch, u64, st.sampled_from([0, SWITCH_REINJECT]), st.integers(1, U32), u32),
    st.builds(Move, u32, st.lists(st.text(st.characters(min_codepoint=0x21, max_codepoint=0x7E),
                                          min_size=1, max_size=MAX_MOVE_ADDRESS),
                                  min_size=1, max_size=MAX_MOVE_ADDRESSES).map(tuple)),
)

# Records made of frame-shaped pieces with arbitrary type and body, so the
# generated garbage reaches the per-type parsers and not only the header check.
framed_garbage = st.lists(
    st.tuples(st.integers(0, U8), st.binary(max_size=40)), min_size=1, max_size=5
).map(lambda parts: b"".join(raw(t, b) for t, b in parts))


def encode_all(frames: list[Frame]) -> bytes:
    return b"".join(encode(f) for f in frames)


# Round trips


def test_examples_cover_every_frame_type() -> None:
    assert {type(f) for f in EXAMPLES} == set(FRAME_CLASSES)


@pytest.mark.parametrize("frame", EXAMPLES, ids=repr)
def test_round_trip_single_frame(frame: Frame) -> None:
    assert decode_frames(encode(frame)) == [frame]


def test_round_trip_every_frame_in_one_record() -> None:
    record = encode_all(EXAMPLES)
    assert decode_frames(record) == EXAMPLES
    assert decode_frames(memoryview(record)) == EXAMPLES


def test_decoded_enums_have_enum_types() -> None:
    open_, fail, reset, close = decode_frames(
        encode_all(
            [
                Open(1, 1, ChannelKind.DATAGRAM, 1, "h", 1),
                OpenFail(1, 1, CloseCode.TIMEOUT, "t"),
                Reset(1, 1, CloseCode.FLOW_CONTROL),
                Close(1, CloseCode.INTERNAL, ""),
            ]
        )
    )
    assert isinstance(open_, Open)
    assert type(open_.kind) is ChannelKind
    assert isinstance(fail, OpenFail)
    assert type(fail.code) is CloseCode
    assert isinstance(reset, Reset)
    assert type(reset.code) is CloseCode
    assert isinstance(close, Close)
    assert type(close.code) is CloseCode


def test_encode_data_matches_encode() -> None:
    payload = b"x" * 1000
    expected = encode(Data(5, 6, FLAG_COMPRESSED, payload))
    assert encode_data(5, 6, payload, FLAG_COMPRESSED) == expected
    assert encode_data(5, 6, memoryview(payload), FLAG_COMPRESSED) == expected
    assert encode_data(5, 6, payload[:10]) == encode(Data(5, 6, 0, payload[:10]))


def test_frame_layout() -> None:
    assert encode(Ack(0x0102030405060708)) == bytes.fromhex("09 00000008 0102030405060708")
    assert encode(Fin(1, 2)) == bytes.fromhex("05 0000000c 0000000000000001 00000002")
    assert encode(Data(1, 2, 1, b"ab")) == bytes.fromhex(
        "04 0000000f 0000000000000001 00000002 01 6162"
    )
    assert encode(Open(1, 2, ChannelKind.STREAM, 3, "h", 80)) == bytes.fromhex(
        "01 00000015 0000000000000001 00000002 01 00000003 0050 01 68"
    )


@settings(max_examples=150, deadline=None)
@given(st.lists(frames_st, min_size=1, max_size=6))
def test_random_frames_round_trip(frames: list[Frame]) -> None:
    for frame in frames:
        assert decode_frames(encode(frame)) == [frame]
    assert decode_frames(encode_all(frames)) == frames


# Limits


def test_largest_frame_body_is_accepted() -> None:
    dgram = Dgram(1, b"d" * (MAX_FRAME_BODY - 4))
    assert decode_frames(encode(dgram)) == [dgram]
    data = Data(1, 2, 0, b"p" * (MAX_FRAME_BODY - _DATA.size))
    assert decode_frames(encode(data)) == [data]


def test_full_data_chunk_fits_in_a_frame() -> None:
    data = Data(U64, U32, FLAG_COMPRESSED, b"c" * MAX_DATA_CHUNK)
    assert decode_frames(encode(data)) == [data]


def test_frame_body_one_over_the_limit_is_refused() -> None:
    record = encode(Dgram(1, b"d" * (MAX_FRAME_BODY - 3)))
    refused(record, f"frame body of {MAX_FRAME_BODY + 1} bytes exceeds {MAX_FRAME_BODY}")


def test_host_at_the_limit_round_trips() -> None:
    for host in ("a" * MAX_HOST, "\u00e9" * (MAX_HOST // 2) + "a", "\U0001f600" * 63 + "abc"):
        assert len(host.encode()) == MAX_HOST
        frame = Open(1, 1, ChannelKind.STREAM, 1, host, 1)
        assert decode_frames(encode(frame)) == [frame]


@pytest.mark.parametrize("host", ["a" * (MAX_HOST + 1), "\u00e9" * 128, "x" * 1000])
def test_overlong_host_is_refused_by_encode(host: str) -> None:
    with pytest.raises(ValueError, match=f"host is {len(host.encode())} bytes; the limit is 255"):
        encode(Open(1, 1, ChannelKind.STREAM, 1, host, 1))


def test_overlong_reasons_are_cut() -> None:
    long = "r" * (MAX_REASON + 100)
    fail, close = decode_frames(
        encode_all([OpenFail(1, 2, CloseCode.INTERNAL, long), Close(3, CloseCode.NORMAL, long)])
    )
    assert fail == OpenFail(1, 2, CloseCode.INTERNAL, "r" * MAX_REASON)
    assert close == Close(3, CloseCode.NORMAL, "r" * MAX_REASON)


@pytest.mark.parametrize("frame_type", [OpenFail, Close])
def test_overlong_multibyte_reason_is_cut_at_a_character_boundary(frame_type: type) -> None:
    reason = "\u00e9" * 200  # 400 bytes; 255 bytes would end in half a character
    frame = (
        OpenFail(1, 2, CloseCode.CONNECT_FAILED, reason)
        if frame_type is OpenFail
        else Close(1, CloseCode.NORMAL, reason)
    )
    (decoded,) = decode_frames(encode(frame))
    assert isinstance(decoded, OpenFail | Close)
    assert decoded.reason == "\u00e9" * 127


@pytest.mark.parametrize(
    "frame",
    [
        Ack(-1),
        Ping(U64 + 1),
        Window(0, U32 + 1, 0),
        Open(0, 0, ChannelKind.STREAM, 0, "h", U16 + 1),
    ],
    ids=repr,
)
def test_out_of_range_field_raises_value_error(frame: Frame) -> None:
    with pytest.raises(ValueError):  # noqa: PT011
        encode(frame)


def test_long_reason_from_the_peer_is_accepted() -> None:
    # The 255-byte cut is the encoder's; the decoder takes any length up to the body limit.
    body = _CLOSE.pack(1, CloseCode.NORMAL) + b"z" * 1000
    assert decode_frames(raw(FrameType.CLOSE, body)) == [Close(1, CloseCode.NORMAL, "z" * 1000)]


# Errors


def test_empty_record() -> None:
    refused(b"", "empty record")


@pytest.mark.parametrize("size", range(1, HEADER.size))
def test_truncated_header(size: int) -> None:
    refused(encode(Ack(1))[:size], "truncated frame header at offset 0")


def test_truncated_header_after_a_good_frame() -> None:
    first = encode(Ping(1))
    refused(first + b"\x0a\x00", f"truncated frame header at offset {len(first)}")


def test_truncated_body() -> None:
    frame = encode(Data(1, 2, 0, b"payload"))
    refused(frame[:-1], "truncated frame: body of 20 bytes, 19 left in the record")
    refused(frame[: HEADER.size], "truncated frame: body of 20 bytes, 0 left")


@pytest.mark.parametrize("length", [MAX_FRAME_BODY + 1, 1 << 20, U32])
def test_oversized_declared_length(length: int) -> None:
    # Refused on the declared length alone, before waiting for or reading the body.
    refused(HEADER.pack(FrameType.DATA, length), f"frame body of {length} bytes exceeds")
    refused(HEADER.pack(FrameType.DATA, length) + b"x" * 100, "exceeds")


@pytest.mark.parametrize("ftype", [0x00, 0x10, 0x16, 0x7F, 0xFF])
def test_unknown_frame_type(ftype: int) -> None:
    refused(raw(ftype, b""), f"unknown frame type {ftype:#04x}")
    refused(encode(Ack(1)) + raw(ftype, b"abc"), "unknown frame type")


@pytest.mark.parametrize("ftype", [FrameType.HANDOVER_BEGIN, FrameType.HANDOVER_READY])
def test_handover_frames_carry_exactly_a_token(ftype: FrameType) -> None:
    refused(raw(ftype, b""), f"{ftype.name} frame body is 0 bytes; expected 4")
    refused(raw(ftype, b"12345"), f"{ftype.name} frame body is 5 bytes; expected 4")


def test_handover_frames_round_trip() -> None:
    frames = [HandoverBegin(0), HandoverReady(2**32 - 1)]
    assert decode_frames(b"".join(encode(f) for f in frames)) == frames


@pytest.mark.parametrize(
    "record",
    [
        raw(FrameType.OPEN_FAIL, _SEQ_CH_CODE.pack(1, 2, 11) + b"why"),
        raw(FrameType.OPEN_FAIL, _SEQ_CH_CODE.pack(1, 2, 11)),
        raw(FrameType.RESET, _SEQ_CH_CODE.pack(1, 2, 11)),
        raw(FrameType.CLOSE, _CLOSE.pack(1, 11)),
    ],
    ids=["open_fail", "open_fail_no_reason", "reset", "close"],
)
def test_unknown_close_code(record: bytes) -> None:
    refused(record, "unknown close code 11")


@pytest.mark.parametrize("code", [U8, 1000, U16])
def test_unknown_close_code_wide(code: int) -> None:
    if code <= U8:
        refused(raw(FrameType.RESET, _SEQ_CH_CODE.pack(1, 2, code)), f"unknown close code {code}")
    refused(raw(FrameType.CLOSE, _CLOSE.pack(1, code)), f"unknown close code {code}")


def open_body(kind: int, host: bytes, hlen: int | None = None) -> bytes:
    return _OPEN.pack(1, 2, kind, 3, 4, len(host) if hlen is None else hlen) + host


@pytest.mark.parametrize("kind", [0, 4, U8])
def test_unknown_channel_kind(kind: int) -> None:
    refused(raw(FrameType.OPEN, open_body(kind, b"host")), f"unknown channel kind {kind}")


def test_empty_open_host() -> None:
    refused(raw(FrameType.OPEN, open_body(ChannelKind.STREAM, b"")), "empty host")


def test_open_host_length_disagrees_with_body() -> None:
    size = _OPEN.size
    refused(raw(FrameType.OPEN, open_body(1, b"host", hlen=5)),
            f"OPEN frame body is {size + 4} bytes; expected {size + 5}")
    refused(raw(FrameType.OPEN, open_body(1, b"host", hlen=3)),
            f"OPEN frame body is {size + 4} bytes; expected {size + 3}")


@pytest.mark.parametrize("bad", [b"\xff", b"ab\xc3", b"\xed\xa0\x80", b"\xc0\xaf"])
def test_non_utf8_text(bad: bytes) -> None:
    refused(raw(FrameType.OPEN, open_body(ChannelKind.STREAM, bad)), "OPEN host is not UTF-8")
    refused(raw(FrameType.OPEN_FAIL, _SEQ_CH_CODE.pack(1, 2, 0) + bad),
            "OPEN_FAIL reason is not UTF-8")
    refused(raw(FrameType.CLOSE, _CLOSE.pack(1, 0) + bad), "CLOSE reason is not UTF-8")


@pytest.mark.parametrize("flags", [0x04, 0x07, 0x80, 0xFF])
def test_unknown_data_flags(flags: int) -> None:
    refused(raw(FrameType.DATA, _DATA.pack(1, 2, flags) + b"x"),
            f"DATA frame has unknown flags {flags:#x}")


FIXED_SIZES = [
    (FrameType.ACK, 8),
    (FrameType.PING, 8),
    (FrameType.PONG, 8),
    (FrameType.RESUME, 8),
    (FrameType.RESUMED, 8),
    (FrameType.JOIN, 8),
    (FrameType.JOINED, 8),
    (FrameType.SWITCH, 17),
    (FrameType.WINDOW, 16),
    (FrameType.OPEN_OK, 16),
    (FrameType.FIN, 12),
    (FrameType.RESET, 13),
]


@pytest.mark.parametrize(("ftype", "size"), FIXED_SIZES, ids=[t.name for t, _ in FIXED_SIZES])
def test_wrong_fixed_size(ftype: FrameType, size: int) -> None:
    for wrong in (0, size - 1, size + 1, size * 2):
        refused(raw(ftype, bytes(wrong)),
                f"{ftype.name} frame body is {wrong} bytes; expected {size}")


MIN_SIZES = [
    (FrameType.DATA, 13),
    (FrameType.OPEN, 20),
    (FrameType.OPEN_FAIL, 13),
    (FrameType.CLOSE, 10),
    (FrameType.DGRAM, 4),
    (FrameType.MOVE, 5),
]


@pytest.mark.parametrize(("ftype", "size"), MIN_SIZES, ids=[t.name for t, _ in MIN_SIZES])
def test_body_below_minimum_size(ftype: FrameType, size: int) -> None:
    for wrong in range(size):
        refused(raw(ftype, bytes(wrong)),
                f"{ftype.name} frame body is {wrong} bytes; needs at least {size}")


def test_one_bad_frame_refuses_the_whole_record() -> None:
    record = encode_all([Ping(1), Data(1, 2, 0, b"ok")]) + raw(FrameType.FIN, b"")
    refused(record, "FIN frame body is 0 bytes")


# Properties


@settings(max_examples=300, deadline=None)
@given(st.one_of(st.binary(max_size=200), framed_garbage))
def test_garbage_raises_only_protocol_error(record: bytes) -> None:
    try:
        frames = decode_frames(record)
    except ProtocolError:
        return
    assert all(isinstance(f, FRAME_CLASSES) for f in frames)


def check_decodes_canonically_or_refuses(record: bytes) -> None:
    try:
        frames = decode_frames(record)
    except ProtocolError:
        return
    assert frames
    assert all(isinstance(f, FRAME_CLASSES) for f in frames)
    # Decoding keeps every field, so re-encoding gives the same bytes back
    # (unless a reason is longer than the encoder sends, which it would cut).
    if not any(isinstance(f, OpenFail | Close) and len(f.reason.encode()) > MAX_REASON
               for f in frames):
        assert encode_all(frames) == record


@st.composite
def mutated_records(draw: st.DrawFn) -> bytes:
    data = bytearray(encode_all(draw(st.lists(frames_st, min_size=1, max_size=4))))
    for _ in range(draw(st.integers(1, 4))):
        op = draw(st.sampled_from(["flip", "insert", "delete"]))
        if op == "insert":
            data.insert(draw(st.integers(0, len(data))), draw(st.integers(0, U8)))
        elif data and op == "flip":
            data[draw(st.integers(0, len(data) - 1))] ^= draw(st.integers(1, U8))
        elif data:
            del data[draw(st.integers(0, len(data) - 1))]
    return bytes(data)


@settings(max_examples=300, deadline=None)
@given(mutated_records())
def test_mutated_records_decode_or_raise_protocol_error(record: bytes) -> None:
    check_decodes_canonically_or_refuses(record)


@settings(max_examples=40, deadline=None)
@given(st.lists(frames_st, min_size=1, max_size=4))
def test_truncation_at_every_offset(frames: list[Frame]) -> None:
    encoded = [encode(f) for f in frames]
    record = b"".join(encoded)
    boundaries = [0]
    for piece in encoded:
        boundaries.append(boundaries[-1] + len(piece))
    for cut in range(len(record)):
        prefix = record[:cut]
        if cut == 0:
            refused(prefix, "empty record")
        elif cut in boundaries:
            count = boundaries.index(cut)
            assert decode_frames(prefix) == frames[:count]
        else:
            refused(prefix, "truncated frame")


def test_switch_with_unknown_flags_is_refused() -> None:
    with pytest.raises(ProtocolError, match="SWITCH frame has unknown flags 0x2"):
        decode_frames(raw(FrameType.SWITCH, bytes(8) + b"\x02" + bytes(8)))


def test_switch_serial_zero_is_refused() -> None:
    refused(raw(FrameType.SWITCH, bytes(17)), "serial 0")


MOVE_HEAD = struct.Struct("!IB")


@pytest.mark.parametrize(("body", "fragment"), [
    (MOVE_HEAD.pack(1, 0), "names 0 addresses"),
    (MOVE_HEAD.pack(1, MAX_MOVE_ADDRESSES + 1), f"names {MAX_MOVE_ADDRESSES + 1} addresses"),
    (MOVE_HEAD.pack(1, 2) + b"\x03a:1", "ends before its last address"),
    (MOVE_HEAD.pack(1, 1) + b"\x05a:1", "address of 5 bytes"),
    (MOVE_HEAD.pack(1, 1) + b"\x00", "address of 0 bytes"),
    (MOVE_HEAD.pack(1, 1) + b"\x03a 1", "not printable ASCII"),
    (MOVE_HEAD.pack(1, 1) + b"\x03a:1x", "1 bytes after its addresses"),
])
def test_bad_move_frames_are_refused(body: bytes, fragment: str) -> None:
    refused(raw(FrameType.MOVE, body), fragment)


@pytest.mark.parametrize("move", [Move(1, ()), Move(1, ("",)), Move(1, ("a" * 81,)),
                                  Move(1, ("a:1",) * (MAX_MOVE_ADDRESSES + 1))])
def test_a_move_out_of_range_is_not_encoded(move: Move) -> None:
    with pytest.raises(ValueError, match="MOVE"):
        encode(move)
