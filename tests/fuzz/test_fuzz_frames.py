"""Fuzz frame decoding: only ProtocolError escapes, and frames round-trip."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from roam.core.frames import (
    _DATA_FLAGS,
    HEADER,
    MAX_FRAME_BODY,
    MAX_HOST,
    MAX_REASON,
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
    Open,
    OpenFail,
    OpenOk,
    Ping,
    Pong,
    Reset,
    Resume,
    Resumed,
    Window,
    decode_frames,
    encode,
)
from roam.errors import CloseCode, ProtocolError
from tests.fuzz.conftest import fuzz_settings
from tests.fuzz.mutate import mutated
from tests.fuzz.provider import Provider, built

U32 = 2**32 - 1
U64 = 2**64 - 1

seq = st.integers(0, U64)
channel = st.integers(0, U32)
u32 = st.integers(0, U32)
codes = st.sampled_from(CloseCode)


def _fits(text: str, limit: int) -> bool:
    return len(text.encode("utf-8")) <= limit


# Text the decoder gives back unchanged: UTF-8 (no lone surrogates), and
# within the limit the encoder would otherwise cut reasons to.
reasons = st.text(st.characters(exclude_categories=["Cs"]), max_size=80).filter(
    lambda t: _fits(t, MAX_REASON))
hosts = st.text(st.characters(exclude_categories=["Cs"]), min_size=1, max_size=80).filter(
    lambda t: _fits(t, MAX_HOST))
payloads = st.binary(max_size=300)

frames: st.SearchStrategy[Frame] = st.one_of(
    st.builds(Open, seq, channel, st.sampled_from(ChannelKind), u32, hosts,
              st.integers(0, 0xFFFF)),
    st.builds(OpenOk, seq, channel, u32),
    st.builds(OpenFail, seq, channel, codes, reasons),
    st.builds(Data, seq, channel, st.integers(0, _DATA_FLAGS), payloads),
    st.builds(Fin, seq, channel),
    st.builds(Reset, seq, channel, codes),
    st.builds(Window, seq, channel, u32),
    st.builds(Close, seq, codes, reasons),
    st.builds(Dgram, channel, payloads),
    st.builds(Ack, seq),
    st.builds(Ping, seq),
    st.builds(Pong, seq),
    st.builds(Resume, seq),
    st.builds(Resumed, seq),
    st.builds(HandoverBegin, u32),
    st.builds(HandoverReady, u32),
)


def encode_all(fs: list[Frame]) -> bytes:
    return b"".join(encode(f) for f in fs)


def build_frame(p: Provider) -> Frame:
    """Any frame, its fields read from `p` (see `frames` for the same in draws)."""
    ftype = p.choice(sorted(FrameType))
    seq_, ch, n32 = p.uint(64), p.uint(32), p.uint(32)
    code = p.choice(list(CloseCode))
    text = p.text(20)  # at most 80 bytes: within every text field's limit
    match ftype:
        case FrameType.OPEN:
            return Open(seq_, ch, p.choice(list(ChannelKind)), n32, text or "h", p.uint(16))
        case FrameType.OPEN_OK:
            return OpenOk(seq_, ch, n32)
        case FrameType.OPEN_FAIL:
            return OpenFail(seq_, ch, code, text)
        case FrameType.DATA:
            return Data(seq_, ch, p.below(_DATA_FLAGS + 1), p.blob(64))
        case FrameType.FIN:
            return Fin(seq_, ch)
        case FrameType.RESET:
            return Reset(seq_, ch, code)
        case FrameType.WINDOW:
            return Window(seq_, ch, n32)
        case FrameType.CLOSE:
            return Close(seq_, code, text)
        case FrameType.DGRAM:
            return Dgram(ch, p.blob(64))
        case FrameType.ACK:
            return Ack(seq_)
        case FrameType.PING:
            return Ping(seq_)
        case FrameType.PONG:
            return Pong(seq_)
        case FrameType.RESUME:
            return Resume(seq_)
        case FrameType.RESUMED:
            return Resumed(seq_)
        case FrameType.HANDOVER_BEGIN:
            return HandoverBegin(n32)
        case _:
            return HandoverReady(n32)


def build_record(p: Provider) -> bytes:
    return encode_all([build_frame(p) for _ in range(1 + p.below(4))])


# Frame headers with any type byte and a length near the body that follows
# (or near the limit), so body checks of every type are reached.
framed_garbage = st.builds(
    lambda ftype, body, delta: HEADER.pack(ftype, min(U32, max(0, len(body) + delta))) + body,
    st.one_of(st.sampled_from([int(t) for t in FrameType]), st.integers(0, 255)),
    st.binary(max_size=64),
    st.sampled_from([0, 0, 0, -1, 1, 8, MAX_FRAME_BODY, MAX_FRAME_BODY + 1, U32]),
)


def decodes_canonically_or_refuses(record: bytes) -> None:
    try:
        decoded = decode_frames(record)
    except ProtocolError:
        return
    assert decoded
    # Decoding keeps every field, so re-encoding gives the same bytes back;
    # reasons over the limit are the exception (the encoder cuts them).
    if not any(isinstance(f, OpenFail | Close) and not _fits(f.reason, MAX_REASON)
               for f in decoded):
        assert encode_all(decoded) == record


@fuzz_settings()
@given(st.binary(max_size=200))
def test_random_bytes_raise_only_protocol_error(record: bytes) -> None:
    decodes_canonically_or_refuses(record)


@fuzz_settings()
@given(mutated(built(build_record)))
def test_mutated_records_raise_only_protocol_error(record: bytes) -> None:
    decodes_canonically_or_refuses(record)


@fuzz_settings(0.2)
@given(st.one_of(mutated(st.lists(frames, min_size=1, max_size=4).map(encode_all)),
                 st.lists(framed_garbage, min_size=1, max_size=3).map(b"".join)))
def test_drawn_garbage_raises_only_protocol_error(record: bytes) -> None:
    # Fewer inputs than the others, each dearer: field values chosen by
    # Hypothesis itself, which favours edges the byte-read builder may miss.
    decodes_canonically_or_refuses(record)


@fuzz_settings(0.5)
@given(built(lambda p: [build_frame(p) for _ in range(1 + p.below(4))]))
def test_round_trip(fs: list[Frame]) -> None:
    assert decode_frames(encode_all(fs)) == fs


@fuzz_settings(0.1)
@given(st.lists(frames, min_size=1, max_size=4))
def test_round_trip_drawn(fs: list[Frame]) -> None:
    assert decode_frames(encode_all(fs)) == fs

