"""Routes and messages between a server's workers (roam.core.workers)."""

from __future__ import annotations

import contextlib
import os

import pytest
from hypothesis import given
from hypothesis import strategies as st

from roam.core.preamble import Preamble, Suite, TransportKind
from roam.core.workers import (
    MAX_HANDED,
    MAX_HELLOS,
    MAX_IDS,
    MAX_MESSAGE,
    Datagram,
    Hellos,
    Owned,
    Routes,
    Transport,
    decode,
    encode_datagram,
    encode_hellos,
    encode_owned,
    encode_transport,
)
from roam.errors import ProtocolError


def _sid() -> bytes:
    return os.urandom(16)


def _preamble(kind: TransportKind, sid: bytes) -> bytes:
    return Preamble(kind, Suite.AESGCM_SHA256, sid).encode()


def _announce(routes: Routes, into: Routes, worker: int) -> None:
    for message in routes.announcements():
        decoded = decode(message)
        assert isinstance(decoded, Owned)
        into.owned(worker, decoded)


# ---- messages ---------------------------------------------------------------------------


def test_messages_round_trip() -> None:
    a, b, c = _sid(), _sid(), _sid()
    assert decode(encode_owned([a, b], [c])) == Owned((a, b), (c,))
    assert decode(encode_owned([], [])) == Owned((), ())
    assert decode(encode_transport(b"ROAM" + bytes(60))) == Transport(b"ROAM" + bytes(60))
    assert decode(encode_transport(b"")) == Transport(b"")
    packet = os.urandom(1200)
    assert decode(encode_datagram("192.0.2.7", 4433, packet)) == Datagram("192.0.2.7", 4433,
                                                                           packet)
    assert decode(encode_datagram("::1", 1, b"")) == Datagram("::1", 1, b"")
    key = os.urandom(32)
    assert decode(encode_hellos([(key, 1 << 63), (bytes(32), 0)])) == Hellos(
        ((key, 1 << 63), (bytes(32), 0)))


def test_encoders_refuse_what_the_decoder_would() -> None:
    with pytest.raises(ValueError, match="session ids"):
        encode_owned([b"short"], [])
    with pytest.raises(ValueError, match="session ids"):
        encode_owned([_sid()] * (MAX_IDS + 1), [])
    with pytest.raises(ValueError, match="at most"):
        encode_transport(bytes(MAX_HANDED + 1))
    with pytest.raises(ValueError, match="not an address"):
        encode_datagram("x" * 256, 1, b"")
    with pytest.raises(ValueError, match="not an address"):
        encode_datagram("192.0.2.1", 70000, b"")
    with pytest.raises(ValueError, match="at most"):
        encode_datagram("192.0.2.1", 1, bytes(MAX_MESSAGE))
    with pytest.raises(ValueError, match="stamps"):
        encode_hellos([(bytes(31), 1)])
    with pytest.raises(ValueError, match="stamps"):
        encode_hellos([(bytes(32), 1 << 64)])
    with pytest.raises(ValueError, match="stamps"):
        encode_hellos([(bytes(32), 1)] * (MAX_HELLOS + 1))


@pytest.mark.parametrize("bad", [
    b"", b"\x00", b"\x09rest", b"\x01\x00", b"\x01\x00\x01\x00\x00" + bytes(15),
    b"\x01\x00\x00\x00\x00" + bytes(16), b"\x03\x00", b"\x03\x00\x01\x05ab",
    b"\x03\x00\x01\x01\xff", b"\x02" + bytes(MAX_HANDED + 1), b"\x03" + bytes(MAX_MESSAGE),
    b"\x04\x00", b"\x04\x00\x01" + bytes(39), b"\x04\x00\x00" + bytes(40),
])
def test_bad_messages_are_protocol_errors(bad: bytes) -> None:
    with pytest.raises(ProtocolError):
        decode(bad)


@given(st.binary(max_size=300))
def test_decode_raises_nothing_but_protocol_errors(data: bytes) -> None:
    with contextlib.suppress(ProtocolError):
        decode(data)


# ---- routes -------------------------------------------------------------------------------


def test_a_resume_goes_to_the_worker_that_announced_its_session() -> None:
    w0, w1 = Routes(0), Routes(1)
    sid = _sid()
    w1.created(sid)
    _announce(w1, w0, 1)
    assert w0.owner(sid) == 1
    assert w0.route(_preamble(TransportKind.RESUME, sid), handed=False) == 1
    assert w0.route(_preamble(TransportKind.STANDBY, sid), handed=False) == 1
    # On its own worker it stays.
    assert w1.route(_preamble(TransportKind.RESUME, sid), handed=False) is None


def test_what_stays_where_it_landed() -> None:
    w0, w1 = Routes(0), Routes(1)
    sid = _sid()
    w1.created(sid)
    _announce(w1, w0, 1)
    # A transport handed over already: at most one hop.
    assert w0.route(_preamble(TransportKind.RESUME, sid), handed=True) is None
    # NEW, garbage, and a session nobody announced: refused or made here.
    assert w0.route(_preamble(TransportKind.NEW, bytes(16)), handed=False) is None
    assert w0.route(b"GET / HTTP/1.1\r\n" + bytes(39), handed=False) is None
    assert w0.route(b"ROAM", handed=False) is None
    assert w0.route(_preamble(TransportKind.RESUME, _sid()), handed=False) is None


def test_ended_sessions_and_gone_workers_are_forgotten() -> None:
    w0, w1 = Routes(0), Routes(1)
    a, b, c = _sid(), _sid(), _sid()
    for sid in (a, b, c):
        w1.created(sid)
    w1.ended(b)
    _announce(w1, w0, 1)
    assert (w0.owner(a), w0.owner(b), w0.owner(c)) == (1, None, 1)
    assert len(w0) == 2
    # Began and ended between two announcements: never seen as held.
    d = _sid()
    w1.created(d)
    w1.ended(d)
    _announce(w1, w0, 1)
    assert w0.owner(d) is None
    w0.forget(1)
    assert len(w0) == 0
    assert w0.route(_preamble(TransportKind.RESUME, a), handed=False) is None
    assert w0.route_datagram(a[:8]) is None


def test_a_worker_cannot_take_or_drop_another_workers_sessions() -> None:
    w0 = Routes(0)
    mine, theirs = _sid(), _sid()
    w0.created(mine)
    w0.owned(1, Owned((theirs,), (mine,)))  # worker 1 cannot end what is not its own
    assert w0.owner(mine) == 0
    w0.owned(2, Owned((), (theirs,)))  # nor worker 2 one of worker 1's
    assert w0.owner(theirs) == 1
    w0.owned(0, Owned((_sid(),), ()))  # nor does a message claim to be from this worker
    assert len(w0) == 2
    w0.forget(0)
    assert w0.owner(mine) == 0
    w0.ended(theirs)  # this worker's ended() is for its own sessions only
    assert w0.owner(theirs) == 1


def test_udp_packets_route_by_session_tag() -> None:
    w0 = Routes(0)
    mine, theirs = _sid(), _sid()
    w0.created(mine)
    w0.owned(1, Owned((theirs,), ()))
    assert w0.route_datagram(theirs[:8]) == 1
    assert w0.route_datagram(mine[:8]) is None
    assert w0.route_datagram(os.urandom(8)) is None
    w0.owned(1, Owned((), (theirs,)))
    assert w0.route_datagram(theirs[:8]) is None


def test_accepted_hellos_are_announced_newest_per_key() -> None:
    w1 = Routes(1)
    a, b = os.urandom(32), os.urandom(32)
    w1.created(_sid(), (a, 5))
    w1.created(_sid(), (a, 9))
    w1.created(_sid(), (b, 7))
    w1.created(_sid())  # a session whose client's stamp is not told
    hellos, owned = (decode(m) for m in w1.announcements())
    assert hellos == Hellos(((a, 9), (b, 7)))
    assert isinstance(owned, Owned)
    assert len(owned.added) == 4
    assert w1.announcements() == []


def test_announcements_are_batched_and_bounded() -> None:
    w1 = Routes(1)
    assert w1.announcements() == []
    sids = [_sid() for _ in range(MAX_IDS + 10)]
    for sid in sids:
        w1.created(sid)
    w1.ended(sids[0])
    messages = w1.announcements()
    assert len(messages) == 2
    assert all(len(m) <= MAX_MESSAGE for m in messages)
    assert w1.announcements() == []
    w0 = Routes(0)
    for m in messages:
        decoded = decode(m)
        assert isinstance(decoded, Owned)
        w0.owned(1, decoded)
    assert len(w0) == len(sids) - 1
    assert w0.owner(sids[0]) is None
    assert w0.owner(sids[-1]) == 1
