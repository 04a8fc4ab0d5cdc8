"""The session with compressed DATA: negotiation, resends, limits, and the invariant."""

from __future__ import annotations

import random

import pytest
import zstandard
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from roam.core import events as ev
from roam.core import frames as fr
from roam.core.compress import AUTO, MAGIC, MAX_WINDOW_LOG, CompressionMode
from roam.core.session import SessionConfig
from roam.core.states import SessionState
from roam.errors import CloseCode, ProtocolError

from .sim import Pair

ZSTD3 = CompressionMode(True, 3)
_WORDS = [b"GET", b"/api/v1/items", b"HTTP/1.1", b"200", b"OK", b'{"id":', b'"name":',
          b'"status":"active"', b"content-type: application/json", b"\r\n", b"},", b" "]


def _text(n: int, rng: random.Random) -> bytes:
    """Compressible bytes: protocol-like words with numbers between them."""
    out = bytearray()
    while len(out) < n:
        out += rng.choice(_WORDS)
        if rng.random() < 0.3:
            out += str(rng.randrange(100_000)).encode()
    return bytes(out[:n])


def _data_frames(payloads: list[bytes]) -> list[fr.Data]:
    return [f for p in payloads for f in fr.decode_frames(p) if isinstance(f, fr.Data)]


def test_negotiated_compression_shrinks_what_crosses_and_delivers_it_exactly() -> None:
    p = Pair(compression=ZSTD3, server_compression=AUTO)
    cid = p.open()
    p.run(3)
    rng = random.Random(1)
    up, down = _text(2_000_000, rng), _text(1_000_000, rng)
    p.write(cid, up)
    p.write(cid, down, from_client=False)
    p.run(300)
    assert p.up[cid].received == up
    assert p.down[cid].received == down
    cs, ss = p.client.statistics(), p.server.statistics()
    assert (cs.compression, ss.compression) == ("zstd:3", "auto")
    assert cs.bytes_sent == ss.bytes_received == len(up)
    assert cs.payload_bytes_sent == ss.payload_bytes_received
    assert cs.payload_bytes_sent < len(up) * 0.4
    assert ss.payload_bytes_sent < len(down) * 0.4


def test_not_negotiated_sends_raw() -> None:
    p = Pair()
    cid = p.open()
    p.run(3)
    data = _text(300_000, random.Random(2))
    p.write(cid, data)
    sent = p.client.payloads_to_send(p.now)
    assert all(f.flags == 0 for f in _data_frames(sent))
    for payload in sent:
        p.server.receive_payload(payload, p.now)
    p.run(50)
    assert p.up[cid].received == data
    stats = p.client.statistics()
    assert stats.compression == "off"
    assert stats.payload_bytes_sent == stats.bytes_sent == len(data)


def test_compressed_data_without_negotiation_is_a_protocol_error() -> None:
    p = Pair()
    cid = p.open()
    p.run(3)
    obj = zstandard.ZstdCompressor().compressobj()
    payload = obj.compress(b"hello" * 100) + obj.flush(zstandard.COMPRESSOBJ_FLUSH_BLOCK)
    frame = fr.encode_data(p.client.replay.next_seq, cid, payload, fr.FLAG_COMPRESSED)
    with pytest.raises(ProtocolError, match="compressed DATA was not negotiated") as info:
        p.server.receive_payload(frame, p.now)
    assert info.value.code is CloseCode.PROTOCOL_ERROR


def test_incompressible_data_goes_raw_with_the_flag_clear() -> None:
    p = Pair(compression=ZSTD3)
    cid = p.open()
    p.run(3)
    data = random.Random(3).randbytes(500_000)
    p.write(cid, data)
    sent = p.client.payloads_to_send(p.now)
    frames = _data_frames(sent)
    assert frames
    assert all(f.flags == 0 for f in frames)
    for payload in sent:
        p.server.receive_payload(payload, p.now)
    p.run(50)
    assert p.up[cid].received == data
    assert p.client.statistics().payload_bytes_sent == len(data)


def test_mixed_data_restarts_the_stream_and_arrives_exactly() -> None:
    p = Pair(compression=ZSTD3)
    cid = p.open()
    p.run(3)
    rng = random.Random(4)
    for _ in range(6):
        p.write(cid, _text(100_000, rng))
        p.write(cid, rng.randbytes(70_000))
    p.run(200)
    assert p.up[cid].received == p.up[cid].sent


def test_duplicates_after_a_resume_are_not_decompressed_again() -> None:
    p = Pair(compression=ZSTD3)
    cid = p.open()
    p.run(3)
    p.write(cid, _text(200_000, random.Random(5)))
    records = p.client.payloads_to_send(p.now)
    compressed = [f for f in _data_frames(records) if f.flags]
    assert len(compressed) > 2
    assert bytes(compressed[0].payload).startswith(MAGIC)
    assert not bytes(compressed[1].payload).startswith(MAGIC)  # continues the stream
    for payload in records:
        p.server.receive_payload(payload, p.now)
    # The same records again (as after a resume that lost the ACK): a stream
    # fed a continuation twice would fail or produce garbage; they are dropped.
    for payload in records:
        p.server.receive_payload(payload, p.now)
    p.run(20)
    assert p.up[cid].received == p.up[cid].sent


def test_resume_with_compression_resends_the_same_bytes() -> None:
    p = Pair(compression=ZSTD3)
    cid = p.open()
    p.run(3)
    data = _text(3_000_000, random.Random(6))
    p.write(cid, data)
    p.in_flight()
    first_sent = {seq: bytes(head) + bytes(body)
                  for seq, _, head, body in p.client.replay.unacked or ()}
    p.break_transport(keep_to_server=3)
    p.reattach()
    (resume,) = p.client.payloads_to_send(p.now)
    p.server.receive_payload(resume, p.now)
    for payload in p.server.payloads_to_send(p.now):
        p.client.receive_payload(payload, p.now)
    resent = list(p.client.replay.pending or ())
    assert resent
    assert all(first_sent[seq] == bytes(head) + bytes(body)
               for seq, _, head, body in resent if seq in first_sent)
    p.run(300)
    assert p.up[cid].received == data
    assert any(isinstance(e, ev.SessionResumed) and e.frames_resent for e in p.events)


def _bomb(size: int) -> bytes:
    zc = zstandard.ZstdCompressor(compression_params=zstandard.ZstdCompressionParameters.
                                  from_level(3, window_log=MAX_WINDOW_LOG))
    obj = zc.compressobj()
    return obj.compress(bytes(size)) + obj.flush(zstandard.COMPRESSOBJ_FLUSH_BLOCK)


def test_compressed_data_beyond_the_frame_limit_is_refused() -> None:
    p = Pair(compression=ZSTD3)
    cid = p.open()
    p.run(3)
    frame = fr.encode_data(p.client.replay.next_seq, cid, _bomb(50_000_000), fr.FLAG_COMPRESSED)
    with pytest.raises(ProtocolError, match=f"expands beyond {fr.MAX_DATA_CHUNK} bytes") as info:
        p.server.receive_payload(frame, p.now)
    assert info.value.code is CloseCode.PROTOCOL_ERROR


def test_compressed_data_beyond_the_credit_is_a_flow_control_error() -> None:
    p = Pair(SessionConfig(channel_window=16 * 1024), compression=ZSTD3)
    cid = p.open()
    p.run(3)
    frame = fr.encode_data(p.client.replay.next_seq, cid, _bomb(20_000), fr.FLAG_COMPRESSED)
    with pytest.raises(ProtocolError, match="beyond its 16384 bytes of credit") as info:
        p.server.receive_payload(frame, p.now)
    assert info.value.code is CloseCode.FLOW_CONTROL


def test_corrupt_compressed_data_closes_with_a_protocol_error() -> None:
    p = Pair(compression=ZSTD3)
    cid = p.open()
    p.run(3)
    frame = fr.encode_data(p.client.replay.next_seq, cid, MAGIC + b"\xee" * 30, fr.FLAG_COMPRESSED)
    with pytest.raises(ProtocolError, match=f"channel {cid}: compressed DATA does not"):
        p.server.receive_payload(frame, p.now)


# ---- the invariant with compression: every byte arrives once, in order ------

_actions = st.lists(
    st.one_of(
        # (kind, channel, size, from_client, what: 0 random, 1 text, 2 random seen before)
        st.tuples(st.just("write"), st.integers(0, 3), st.integers(1, 200_000), st.booleans(),
                  st.integers(0, 2)),
        st.tuples(st.just("run"), st.integers(1, 30), st.just(0), st.just(False), st.just(0)),
        st.tuples(st.just("break"), st.integers(0, 8), st.integers(0, 8), st.booleans(),
                  st.just(0)),
        st.tuples(st.just("soft"), st.integers(0, 20), st.just(0), st.booleans(), st.just(0)),
        # The path turns out faster than zstd: auto stops compressing (and adding to
        # the history) until the next transport.
        st.tuples(st.just("fast"), st.just(0), st.just(0), st.booleans(), st.just(0)),
    ),
    min_size=1,
    max_size=40,
)


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(actions=_actions, seed=st.integers(0, 2**32 - 1),
       modes=st.sampled_from([(ZSTD3, ZSTD3), (AUTO, AUTO), (CompressionMode(True, 1), AUTO)]),
       history=st.booleans())
def test_every_byte_arrives_once_in_order_with_compression(
        actions: list[tuple[str, int, int, bool, int]], seed: int,
        modes: tuple[CompressionMode, CompressionMode], history: bool) -> None:
    """Compressible and random writes, transports breaking with records in
    flight, resumes and soft handovers, auto turning off on a fast path: each
    channel's streams, and each direction's history, stay in step."""
    cfg = SessionConfig(replay_limit=512 * 1024, channel_window=128 * 1024,
                        channel_send_buffer=128 * 1024, max_record_payload=32 * 1024)
    p = Pair(cfg, compression=modes[0], server_compression=modes[1], history=history)
    chans = [p.open() for _ in range(4)]
    rng = random.Random(seed)
    # Random bytes sent before, sent again: frames that did not shrink went
    # raw, and a stream that kept them as history would refer to bytes its
    # receiver never saw.
    noise = rng.randbytes(300_000)
    for kind, a, b, flag, what in actions:
        if kind == "write":
            cid = chans[a]
            side = p.client if flag else p.server
            n = min(b, side.send_room(cid))
            if n:
                data = (rng.randbytes(n), _text(n, rng), noise[:n])[what]
                p.write(cid, data, from_client=flag)
        elif kind == "run":
            if not p.attached() and p.client.state is SessionState.DETACHED:
                p.reattach()
            p.run(a)
        elif kind == "break":
            p.in_flight()
            p.break_transport(keep_to_server=a, keep_to_client=b)
            if flag:
                p.reattach()
        elif kind == "fast":
            (p.client if flag else p.server).rtt.sample(0.0001)
        elif p.attached():  # soft; flag: the old path dies after `a` steps of the drain
            p.soft_handover(token=a, die_after=a if flag else None)
    p.heal_and_check(chans)
    cs, ss = p.client.statistics(), p.server.statistics()
    assert cs.payload_bytes_sent == ss.payload_bytes_received
    assert ss.payload_bytes_sent == cs.payload_bytes_received


def test_auto_leaves_a_path_faster_than_zstd_raw_and_learns_each_path_anew() -> None:
    """--compress auto: not on a path whose least RTT is under 1 ms (loopback,
    a LAN); zstd:LEVEL compresses whatever the path; a new transport is a new
    path, measured again before it counts as fast."""
    rng = random.Random(11)
    for mode, expect_compressed in ((AUTO, False), (ZSTD3, True)):
        p = Pair(compression=mode, server_compression=mode)
        cid = p.open()
        p.run(3)
        p.client.rtt.sample(0.0003)
        data = _text(300_000, rng)
        p.write(cid, data)
        sent = p.client.payloads_to_send(p.now)
        assert any(f.flags for f in _data_frames(sent)) is expect_compressed
        for payload in sent:
            p.server.receive_payload(payload, p.now)
        p.run(50)
        assert p.up[cid].received == data

    p = Pair(compression=AUTO, server_compression=AUTO)
    cid = p.open()
    p.run(3)
    p.client.rtt.sample(0.0003)
    p.in_flight()
    p.break_transport()
    p.reattach()  # onto another path: its least RTT is not known yet
    assert p.client.rtt.min_rtt is None
    assert p.client.rtt.srtt is not None  # the RTO carries on
    data = _text(300_000, rng)
    p.write(cid, data)
    p.run(300)
    assert p.up[cid].received == data
    stats = p.client.statistics()
    assert stats.payload_bytes_sent < stats.bytes_sent * 0.5


def test_auto_compresses_where_the_least_rtt_is_long() -> None:
    p = Pair(compression=AUTO, server_compression=AUTO)
    cid = p.open()
    p.run(3)
    p.client.rtt.sample(0.030)  # a cellular path
    data = _text(300_000, random.Random(12))
    p.write(cid, data)
    assert any(f.flags for f in _data_frames(p.client.payloads_to_send(p.now)))


def test_the_auto_threshold_is_the_session_s_to_set() -> None:
    p = Pair(SessionConfig(auto_compress_min_rtt=0.0), compression=AUTO)
    cid = p.open()
    p.run(3)
    p.client.rtt.sample(0.0001)
    p.write(cid, _text(100_000, random.Random(13)))
    assert any(f.flags for f in _data_frames(p.client.payloads_to_send(p.now)))


def _api_responses(n: int, rng: random.Random) -> list[bytes]:
    """Responses of one API: the same headers and keys, other values."""
    out = []
    for i in range(n):
        rows = b",".join(b'{"id":%d,"status":"%s","owner":"user-%d","amount":%d.%02d}' % (
            rng.randrange(10**6), rng.choice([b"active", b"pending"]), rng.randrange(500),
            rng.randrange(10**4), rng.randrange(100)) for _ in range(120))
        out.append(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\nx-request: %d"
                   b"\r\n\r\n[%s]" % (i, rows))
    return out


def test_history_primes_each_new_channel_with_the_data_before_it() -> None:
    """Each response on a channel of its own: with the history, channels after
    the first start from the responses before them and come out smaller."""
    sizes = {}
    for history in (False, True):
        p = Pair(compression=ZSTD3, history=history)
        rng = random.Random(21)
        for response in _api_responses(12, rng):
            cid = p.open()
            p.run(3)
            p.write(cid, response, from_client=False)
            p.run(5)
            assert p.down[cid].received == response
        stats = p.server.statistics()
        sizes[history] = stats.payload_bytes_sent / stats.bytes_sent
    assert sizes[True] < sizes[False] * 0.95


def test_a_history_flag_that_was_not_negotiated_is_a_protocol_error() -> None:
    p = Pair(compression=ZSTD3)
    cid = p.open()
    p.run(3)
    frame = fr.encode_data(50, cid, b"x" * 100, fr.FLAG_HISTORY)
    p.client.replay.next_seq = 51  # as if the client had sent frames up to 50
    with pytest.raises(ProtocolError, match="history that was not negotiated"):
        p.server.channels.receive(fr.decode_frames(frame)[0])  # type: ignore[arg-type]
