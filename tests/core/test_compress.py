"""The compression streams alone: round trips, raw fallback, flushing, limits."""

from __future__ import annotations

import json
import random

import pytest
import zstandard

from roam.core.compress import (
    AUTO,
    AUTO_MIN_RTT,
    HISTORY_SIZE,
    MAGIC,
    MAX_OUTPUT,
    MAX_SKIP,
    MAX_WINDOW_LOG,
    MIN_SIZE,
    TABLE_LOG_MAX,
    ChannelDecompressor,
    CompressionMode,
    Compressor,
    History,
    OutputTooLarge,
)
from roam.errors import ProtocolError

ZSTD3 = CompressionMode(True, 3)


def _json(n: int, seed: int = 1) -> bytes:
    rng = random.Random(seed)
    words = ["alpha", "beta", "gamma", "delta", "status", "ok", "error", "user", "account",
             "session"]
    rows = [{"id": i, "user": rng.choice(words) + str(rng.randrange(500)),
             "event": rng.choice(words), "value": round(rng.random() * 1000, 3)}
            for i in range(n // 40 + 1)]
    return json.dumps(rows).encode()[:n]


def _frames(data: bytes, size: int) -> list[bytes]:
    return [data[i:i + size] for i in range(0, len(data), size)]


@pytest.mark.parametrize(("text", "mode"), [
    ("auto", AUTO), ("off", CompressionMode(False)), ("zstd", ZSTD3),
    ("zstd:1", CompressionMode(True, 1)), ("ZSTD:19", CompressionMode(True, 19)),
])
def test_parse_modes(text: str, mode: CompressionMode) -> None:
    assert CompressionMode.parse(text) == mode
    assert CompressionMode.parse(str(mode)) == mode


@pytest.mark.parametrize(("text", "problem"), [
    ("zstd:0", "LEVEL must be a whole number from 1 to 19"),
    ("zstd:20", "LEVEL must be a whole number from 1 to 19"),
    ("zstd:x", "LEVEL must be a whole number from 1 to 19"),
    ("zstd:", "LEVEL must be a whole number from 1 to 19"),
    ("lz4", "expected auto, off, zstd or zstd:LEVEL"),
])
def test_parse_refuses(text: str, problem: str) -> None:
    with pytest.raises(ValueError, match=problem):
        CompressionMode.parse(text)


def test_round_trip_over_many_frames_shrinks_json() -> None:
    data = _json(1_000_000)
    sender = Compressor(ZSTD3).channel()
    receiver = ChannelDecompressor()
    out = bytearray()
    wire = 0
    for i, frame in enumerate(_frames(data, 60 * 1024)):
        payload, compressed = sender.compress(frame)
        assert compressed
        # Only the first frame carries the zstd frame header: the rest continue it.
        assert payload.startswith(MAGIC) == (i == 0)
        wire += len(payload)
        out += receiver.decompress(payload, MAX_OUTPUT)
    assert bytes(out) == data
    assert wire < len(data) * 0.35


def test_flush_per_frame_gives_every_byte_of_that_frame() -> None:
    sender = Compressor(ZSTD3).channel()
    receiver = ChannelDecompressor()
    for size in (64, 100, 1000, 4096, 60 * 1024, 77):
        frame = _json(size, seed=size)
        payload, compressed = sender.compress(frame)
        # Nothing of this frame waits in either stream for a later one.
        got = receiver.decompress(payload, MAX_OUTPUT) if compressed else payload
        assert got == frame


def test_incompressible_data_is_sent_raw_and_the_stream_restarts() -> None:
    rng = random.Random(3)
    sender = Compressor(ZSTD3).channel()
    receiver = ChannelDecompressor()
    first, compressed = sender.compress(_json(10_000))
    assert compressed
    assert receiver.decompress(first, MAX_OUTPUT) == _json(10_000)
    noise = rng.randbytes(30_000)
    payload, compressed = sender.compress(noise)
    assert not compressed
    assert payload is noise or payload == noise
    # The compressor took the noise in; the receiver never saw it. The next
    # compressed frame must not refer to it: a new stream begins.
    assert sender.compress(b"x" * 1000) == (b"x" * 1000, False)  # backing off: skipped
    # The same noise again, with text: zstd would find it in its history,
    # but it is not there for the receiver.
    frame = noise + _json(10_000, seed=9)
    payload, compressed = sender.compress(frame)
    assert compressed
    assert payload.startswith(MAGIC)
    assert receiver.decompress(payload, MAX_OUTPUT) == frame


def test_skipped_frames_keep_the_stream_going() -> None:
    sender = Compressor(ZSTD3).channel()
    receiver = ChannelDecompressor()
    payload, _ = sender.compress(_json(5000))
    receiver.decompress(payload, MAX_OUTPUT)
    _, compressed = sender.compress(b"x" * (MIN_SIZE - 1))
    assert not compressed  # too small to try: not taken in by the stream
    payload, compressed = sender.compress(_json(5000, seed=2))
    assert compressed
    assert not payload.startswith(MAGIC)
    assert receiver.decompress(payload, MAX_OUTPUT) == _json(5000, seed=2)


def test_random_data_costs_one_try_in_many_frames() -> None:
    rng = random.Random(4)
    for mode in (AUTO, ZSTD3):
        sender = Compressor(mode).channel()
        tries = 0
        for _ in range(1000):
            frame = rng.randbytes(60 * 1024)
            tries += sender._skip == 0  # not backing off: this frame is tried
            payload, compressed = sender.compress(frame)
            assert not compressed
            assert payload == frame
        # 1, 2, 4 ... 64 frames skipped after each miss.
        assert tries < 1000 / MAX_SKIP + 8


def test_auto_stops_trying_where_it_saves_little() -> None:
    rng = random.Random(5)
    # Mostly random bytes with a little text: shrinks by about 6% only.
    frames = [rng.randbytes(9000) + b"content-type: application/json\r\n" * 20
              for _ in range(200)]
    auto, forced = Compressor(AUTO).channel(), Compressor(ZSTD3).channel()
    auto_hits = sum(auto.compress(f)[1] for f in frames)
    forced_hits = sum(forced.compress(f)[1] for f in frames)
    assert forced_hits > 150
    assert auto_hits < 20


def test_contexts_are_bounded_and_a_taken_context_restarts_its_stream() -> None:
    pool = Compressor(ZSTD3, max_contexts=2)
    a, b, c = pool.channel(), pool.channel(), pool.channel()
    ra, rc = ChannelDecompressor(), ChannelDecompressor()
    for ch, rx in ((a, ra), (b, None), (c, rc)):
        payload, compressed = ch.compress(_json(2000))
        assert compressed
        if rx is not None:
            rx.decompress(payload, MAX_OUTPUT)
    assert len(pool._lru) == 2
    assert a._obj is None  # its context went to c
    payload, compressed = a.compress(_json(2000, seed=7))
    assert compressed
    assert payload.startswith(MAGIC)
    assert ra.decompress(payload, MAX_OUTPUT) == _json(2000, seed=7)


def test_decompression_bomb_is_refused() -> None:
    zc = zstandard.ZstdCompressor(compression_params=zstandard.ZstdCompressionParameters.
                                  from_level(3, window_log=MAX_WINDOW_LOG))
    obj = zc.compressobj()
    bomb = obj.compress(bytes(100_000_000)) + obj.flush(zstandard.COMPRESSOBJ_FLUSH_BLOCK)
    assert len(bomb) < MAX_OUTPUT
    with pytest.raises(OutputTooLarge, match=f"beyond {MAX_OUTPUT} bytes"):
        ChannelDecompressor().decompress(bomb, 10**9)
    # Within the credit left, however small.
    obj = zc.compressobj()
    small = obj.compress(bytes(5000)) + obj.flush(zstandard.COMPRESSOBJ_FLUSH_BLOCK)
    with pytest.raises(OutputTooLarge, match="beyond 4999 bytes"):
        ChannelDecompressor().decompress(small, 4999)
    assert ChannelDecompressor().decompress(small, 5000) == bytes(5000)


def test_a_window_beyond_the_limit_is_refused() -> None:
    zc = zstandard.ZstdCompressor(compression_params=zstandard.ZstdCompressionParameters.
                                  from_level(3, window_log=MAX_WINDOW_LOG + 3))
    obj = zc.compressobj()
    payload = obj.compress(_json(50_000)) + obj.flush(zstandard.COMPRESSOBJ_FLUSH_BLOCK)
    with pytest.raises(ProtocolError, match="does not decompress"):
        ChannelDecompressor().decompress(payload, MAX_OUTPUT)


def test_garbage_and_orphan_continuations_are_protocol_errors() -> None:
    with pytest.raises(ProtocolError, match="never began"):
        ChannelDecompressor().decompress(b"\x00\x01\x02\x03garbage", MAX_OUTPUT)
    rx = ChannelDecompressor()
    with pytest.raises(ProtocolError, match="does not decompress"):
        rx.decompress(MAGIC + b"\xff" * 40, MAX_OUTPUT)
    # After an error the stream is gone: a continuation cannot pick it up.
    with pytest.raises(ProtocolError, match="never began"):
        rx.decompress(b"\x10\x20\x30", MAX_OUTPUT)


def test_auto_is_wanted_beyond_the_least_rtt_and_zstd_everywhere() -> None:
    auto, forced = Compressor(AUTO), Compressor(ZSTD3)
    assert not auto.wanted(AUTO_MIN_RTT / 2)
    assert auto.wanted(AUTO_MIN_RTT)
    assert auto.wanted(None)  # not measured yet: try, the ratio decides
    assert forced.wanted(0.0)
    assert Compressor(AUTO, auto_min_rtt=0.0).wanted(0.0)


def test_history_keeps_the_last_bytes_and_makes_a_dictionary() -> None:
    history = History()
    assert history.dictionary() is None
    assert len(history) == 0
    data = random.Random(3).randbytes(3 * HISTORY_SIZE)
    for i in range(0, len(data), 10_000):
        history.add(memoryview(data)[i:i + 10_000])
    assert len(history) == HISTORY_SIZE
    primer = history.dictionary()
    assert primer is not None
    assert primer.as_bytes() == data[-HISTORY_SIZE:]


def test_a_stream_primed_with_history_needs_the_same_history_to_open() -> None:
    words = [b'{"id":', b'"status":"active"', b'"owner":"user-', b"},"]
    rng = random.Random(4)
    earlier = b"".join(rng.choice(words) + str(rng.randrange(999)).encode() for _ in range(4000))
    sent, received, wrong = History(), History(), History()
    sent.add(earlier)
    received.add(earlier)
    wrong.add(earlier[::-1])
    frame = b"".join(rng.choice(words) + str(rng.randrange(999)).encode() for _ in range(300))
    payload, compressed = Compressor(ZSTD3, history=sent).channel().compress(frame)
    assert compressed
    unprimed, _ = Compressor(ZSTD3).channel().compress(frame)
    assert len(payload) < len(unprimed)
    assert ChannelDecompressor().decompress(payload, MAX_OUTPUT, received) == frame
    # Nothing in a raw-content dictionary says which it was: a receiver with
    # another history gets other bytes (or an error). Both sides' histories are
    # the same by construction (the session's property tests hold them to it).
    try:
        got = ChannelDecompressor().decompress(payload, MAX_OUTPUT, wrong)
    except ProtocolError:
        return
    assert got != frame


def test_a_released_channel_gives_its_context_back() -> None:
    pool = Compressor(ZSTD3, max_contexts=2)
    a, b = pool.channel(), pool.channel()
    text = json.dumps(list(range(2000))).encode()
    a.compress(text)
    b.compress(text)
    a.release()
    c = pool.channel()
    c.compress(text)
    # b kept its context (and its stream): its next frame continues it.
    payload, compressed = b.compress(text)
    assert compressed
    assert not bytes(payload).startswith(MAGIC)


def test_random_bytes_never_cost_a_context_of_their_own() -> None:
    pool = Compressor(AUTO)
    channel = pool.channel()
    rng = random.Random(5)
    for _ in range(200):
        frame = rng.randbytes(60_000)
        assert channel.compress(frame) == (frame, False)
    assert not pool._lru  # the shared probe turned every try down
    # Text after it: compressed again within the back-off (at most 64 frames).
    results = [channel.compress(_json(60_000, seed=i))[1] for i in range(MAX_SKIP + 1)]
    assert any(results)
    assert len(pool._lru) == 1


def test_a_frame_that_starts_random_but_is_mostly_text_is_tried() -> None:
    channel = Compressor(AUTO).channel()
    frame = random.Random(6).randbytes(8_000) + _json(50_000)
    payload, compressed = channel.compress(frame)
    assert compressed
    assert ChannelDecompressor().decompress(payload, MAX_OUTPUT) == frame


@pytest.mark.parametrize("level", [1, 3, 5, 19])
def test_contexts_have_tables_for_the_window_not_for_gigabytes(level: int) -> None:
    params = Compressor(CompressionMode(True, level))._params
    assert params.window_log == MAX_WINDOW_LOG
    assert params.hash_log <= TABLE_LOG_MAX
    assert params.chain_log <= TABLE_LOG_MAX
    assert params.estimated_compression_context_size() < 1_100_000 or level == 19
