"""Fuzz the transport preamble and the server's reply: only ProtocolError escapes."""

from __future__ import annotations

from hypothesis import given
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
from roam.errors import ProtocolError
from tests.fuzz.conftest import fuzz_settings
from tests.fuzz.mutate import mutated
from tests.fuzz.provider import Provider, built


def build_preamble(p: Provider) -> Preamble:
    kind = p.choice(list(TransportKind))
    sid = NO_SESSION
    if kind is not TransportKind.NEW:
        sid = p.take(16)
        if sid == NO_SESSION:
            sid = b"\x01" * 16
    return Preamble(kind, p.choice(list(Suite)), sid, p.choice([NO_TARGET, p.take(32)]))


def build_near_valid(p: Provider) -> bytes:
    """The right size, each field one of its valid values or a few invalid
    ones, so every check is reached in turn."""
    return PREAMBLE.pack(
        p.choice([MAGIC, MAGIC, b"ROAN", b"\x00ROA", b"SSH-"]),
        p.choice([VERSION, VERSION, 0, 2, 255]),
        p.uint(8),
        p.uint(8),
        p.choice([NO_SESSION, p.take(16)]),
        p.take(32),
    )


def decodes_canonically_or_refuses(data: bytes) -> None:
    try:
        pre = decode_preamble(data)
    except ProtocolError:
        return
    # Every field is kept, so what decodes re-encodes to the same bytes.
    assert pre.encode() == data


@fuzz_settings()
@given(st.one_of(st.binary(max_size=120), st.binary(min_size=PREAMBLE.size,
                                                    max_size=PREAMBLE.size)))
def test_random_bytes_raise_only_protocol_error(data: bytes) -> None:
    decodes_canonically_or_refuses(data)


@fuzz_settings()
@given(st.one_of(built(build_near_valid), mutated(built(build_preamble).map(Preamble.encode))))
def test_mutated_preambles_raise_only_protocol_error(data: bytes) -> None:
    decodes_canonically_or_refuses(data)


@fuzz_settings(0.2)
@given(built(build_preamble))
def test_round_trip(pre: Preamble) -> None:
    assert decode_preamble(pre.encode()) == pre


@fuzz_settings(0.2)
@given(st.sampled_from(Status), st.text(max_size=1200))
def test_reply_error_is_well_formed(status: Status, reason: str) -> None:
    # The client reads `status | length | body` and shows the body as UTF-8.
    reply = reply_error(status, reason)
    raw_status, length = REPLY.unpack_from(reply)
    body = reply[REPLY.size:]
    assert raw_status == status
    assert length == len(body) <= 1024
    text = body.decode("utf-8")
    assert reason.encode("utf-8", "replace").decode("utf-8").startswith(text)
    assert encode_reply(status, body) == reply
