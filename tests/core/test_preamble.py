"""The transport preamble and the server's reply."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from roam.core.preamble import (
    MAGIC,
    NO_SESSION,
    NO_TARGET,
    PREAMBLE,
    REPLY,
    VERSION,
    Preamble,
    Status,
    Suite,
    TransportKind,
    decode_preamble,
    encode_reply,
    reply_error,
)
from roam.errors import CloseCode, ProtocolError

SID = bytes(range(1, 17))
TARGET = bytes(range(100, 132))


def preamble_bytes(
    *,
    magic: bytes = MAGIC,
    version: int = VERSION,
    kind: int = TransportKind.RESUME,
    suite: int = Suite.AESGCM_SHA256,
    sid: bytes = SID,
    target: bytes = NO_TARGET,
) -> bytes:
    return PREAMBLE.pack(magic, version, kind, suite, sid, target)


def refused(data: bytes, fragment: str) -> None:
    with pytest.raises(ProtocolError) as info:
        decode_preamble(data)
    assert fragment in str(info.value)
    assert info.value.code is CloseCode.PROTOCOL_ERROR


def test_size_and_layout() -> None:
    assert PREAMBLE.size == 55
    data = Preamble(TransportKind.RESUME, Suite.CHACHAPOLY_BLAKE2S, SID, TARGET).encode()
    assert data == b"ROAM" + bytes([1, 2, 2]) + SID + TARGET


@pytest.mark.parametrize("suite", list(Suite))
@pytest.mark.parametrize("target", [NO_TARGET, TARGET])
def test_round_trip(suite: Suite, target: bytes) -> None:
    new = Preamble(TransportKind.NEW, suite, target=target)
    assert new.session_id == NO_SESSION
    assert decode_preamble(new.encode()) == new
    resume = Preamble(TransportKind.RESUME, suite, SID, target)
    assert decode_preamble(resume.encode()) == resume


def test_decoded_fields_have_enum_types() -> None:
    pre = decode_preamble(preamble_bytes())
    assert type(pre.kind) is TransportKind
    assert type(pre.suite) is Suite


@settings(max_examples=100, deadline=None)
@given(
    st.sampled_from(Suite),
    st.binary(min_size=16, max_size=16).filter(lambda s: s != NO_SESSION),
    st.binary(min_size=32, max_size=32),
)
def test_random_round_trip(suite: Suite, sid: bytes, target: bytes) -> None:
    resume = Preamble(TransportKind.RESUME, suite, sid, target)
    assert decode_preamble(resume.encode()) == resume
    new = Preamble(TransportKind.NEW, suite, NO_SESSION, target)
    assert decode_preamble(new.encode()) == new


def test_suite_noise_names() -> None:
    assert Suite.AESGCM_SHA256.noise_name == "Noise_IK_25519_AESGCM_SHA256"
    assert Suite.CHACHAPOLY_BLAKE2S.noise_name == "Noise_IK_25519_ChaChaPoly_BLAKE2s"


# Errors


@pytest.mark.parametrize("size", [n for n in range(0, 120) if n != 55])
def test_wrong_length(size: int) -> None:
    data = (preamble_bytes() * 3)[:size]
    refused(data, f"preamble is {size} bytes; expected 55")


@pytest.mark.parametrize("magic", [b"ROAN", b"roam", b"\x00\x00\x00\x00", b"GET ", b"SSH-"])
def test_bad_magic(magic: bytes) -> None:
    refused(preamble_bytes(magic=magic), f"not a roam transport (first bytes {magic!r})")


@pytest.mark.parametrize("version", [0, 2, 255])
def test_bad_version(version: int) -> None:
    refused(preamble_bytes(version=version), f"protocol version {version}; this side speaks 1")


@pytest.mark.parametrize("kind", [0, 4, 255])
def test_unknown_kind(kind: int) -> None:
    refused(preamble_bytes(kind=kind), f"unknown transport kind {kind}")


@pytest.mark.parametrize("suite", [0, 3, 255])
def test_unknown_suite(suite: int) -> None:
    refused(preamble_bytes(suite=suite), f"unknown cipher suite {suite}")


@pytest.mark.parametrize("sid", [SID, b"\x00" * 15 + b"\x01", b"\xff" * 16])
def test_new_with_session_id(sid: bytes) -> None:
    refused(preamble_bytes(kind=TransportKind.NEW, sid=sid), "NEW carries no session id")


@pytest.mark.parametrize("kind", [TransportKind.RESUME, TransportKind.STANDBY])
def test_resume_and_standby_without_session_id(kind: TransportKind) -> None:
    refused(preamble_bytes(kind=kind, sid=NO_SESSION), "RESUME and STANDBY need one")


def test_checks_run_in_field_order() -> None:
    # With several fields wrong, the first one is the one reported.
    refused(preamble_bytes(magic=b"XXXX", version=9, kind=9, suite=9), "not a roam transport")
    refused(preamble_bytes(version=9, kind=9, suite=9), "protocol version 9")
    refused(preamble_bytes(kind=9, suite=9), "unknown transport kind 9")


@settings(max_examples=300, deadline=None)
@given(
    st.one_of(
        st.binary(max_size=120),
        st.binary(min_size=PREAMBLE.size, max_size=PREAMBLE.size),
        st.binary(min_size=PREAMBLE.size - 5, max_size=PREAMBLE.size - 5).map(
            lambda rest: MAGIC + bytes([VERSION]) + rest
        ),
    )
)
def test_garbage_raises_only_protocol_error(data: bytes) -> None:
    try:
        pre = decode_preamble(data)
    except ProtocolError:
        return
    assert pre.encode() == data


# Reply


@pytest.mark.parametrize("status", list(Status))
def test_encode_reply_layout(status: Status) -> None:
    assert encode_reply(status) == bytes([status, 0, 0])
    body = b"\x01" * 300
    reply = encode_reply(status, body)
    assert reply == bytes([status]) + (300).to_bytes(2, "big") + body
    assert REPLY.unpack_from(reply) == (status, 300)


def test_encode_reply_largest_body() -> None:
    body = b"m" * 0xFFFF
    assert encode_reply(Status.OK, body)[:3] == b"\x00\xff\xff"


def test_reply_error_layout() -> None:
    reply = reply_error(Status.UNKNOWN_SESSION, "no such session")
    assert reply == bytes([Status.UNKNOWN_SESSION, 0, 15]) + b"no such session"


def test_reply_error_is_utf8() -> None:
    reason = "r\u00e9fus\u00e9"
    reply = reply_error(Status.BUSY, reason)
    status, length = REPLY.unpack_from(reply)
    assert status == Status.BUSY
    assert reply[REPLY.size:].decode("utf-8") == reason
    assert length == len(reason.encode("utf-8"))


def test_reply_error_cuts_long_reasons() -> None:
    reply = reply_error(Status.HANDSHAKE_FAILED, "x" * 5000)
    assert reply == bytes([Status.HANDSHAKE_FAILED]) + (1024).to_bytes(2, "big") + b"x" * 1024


def test_reply_error_cuts_at_a_character_boundary() -> None:
    reply = reply_error(Status.HANDSHAKE_FAILED, "a" + "\u00e9" * 600)
    assert reply[REPLY.size:].decode("utf-8") == "a" + "\u00e9" * 511
