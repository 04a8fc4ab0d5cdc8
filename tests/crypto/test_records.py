"""AEAD records with real keys: framing, replay and tamper refusal, rekeying."""

from __future__ import annotations

import contextlib
import itertools
import os
from collections.abc import Callable, Iterable

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from roam.crypto.noise import CIPHERS, CipherState
from roam.crypto.records import (
    HEADER,
    MAX_EPOCH_SKIP,
    MAX_RECORD,
    RECORD_WINDOW,
    REKEY_BYTES,
    REKEY_SECONDS,
    TAG,
    DatagramOpener,
    Lane,
    RecordFramer,
    RecordOpener,
    RecordSealer,
    ReplayWindow,
)
from roam.errors import CryptoError, ProtocolError

EPOCH = 1 << 32
MIN_LENGTH = 8 + TAG
MAX_LENGTH = MAX_RECORD + 8

Record = tuple[int, bytes]
Feed = Callable[[RecordFramer, bytes], list[Record]]


def make_pair(
    cipher: str,
    now: float = 0.0,
    *,
    rekey_bytes: int = REKEY_BYTES,
    rekey_seconds: float = REKEY_SECONDS,
) -> tuple[RecordSealer, RecordOpener]:
    """A sealer and an opener for one direction, from two copies of one CipherState."""
    state = CipherState(cipher, os.urandom(32))
    sealer = RecordSealer(
        state.copy(), now, rekey_bytes=rekey_bytes, rekey_seconds=rekey_seconds
    )
    opener = RecordOpener(state.copy())
    return sealer, opener


def feed_whole(framer: RecordFramer, stream: bytes) -> list[Record]:
    return framer.feed(stream)


def feed_bytewise(framer: RecordFramer, stream: bytes) -> list[Record]:
    out: list[Record] = []
    for i in range(len(stream)):
        out += framer.feed(stream[i : i + 1])
    return out


def only_record(framer: RecordFramer, data: bytes) -> Record:
    records = framer.feed(data)
    assert len(records) == 1
    return records[0]


def open_all(opener: RecordOpener, records: Iterable[Record], ad: bytes = b"") -> list[bytes]:
    return [opener.open(counter, ct, ad) for counter, ct in records]


def refuse(
    opener: RecordOpener, record: Record, fragment: str | None = None, ad: bytes = b""
) -> None:
    """The opener refuses `record` and is left exactly as it was."""
    last, rekeys = opener.last, opener.rekeys
    with pytest.raises(CryptoError, match=fragment):
        opener.open(*record, ad)
    assert (opener.last, opener.rekeys) == (last, rekeys)


def framer_refuses(data: bytes, fragment: str) -> None:
    for feed in (feed_whole, feed_bytewise):
        with pytest.raises(ProtocolError, match=fragment) as info:
            feed(RecordFramer(), data)
        assert isinstance(info.value, ProtocolError)


@pytest.fixture(params=CIPHERS)
def cipher(request: pytest.FixtureRequest) -> str:
    name: str = request.param
    return name


PAYLOADS = [b"", b"a", b"hello, world", bytes(range(256)) * 4, os.urandom(5000)]


# Round trips


def test_record_layout(cipher: str) -> None:
    sealer, _ = make_pair(cipher)
    record = sealer.seal(b"abc", 0.0)
    length, counter = HEADER.unpack_from(record)
    assert counter == 0
    assert length == 8 + 3 + TAG == len(record) - 4
    assert sealer.seal(b"", 0.0)[:HEADER.size] == HEADER.pack(MIN_LENGTH, 1)
    assert sealer.counter == 2
    assert sealer.epoch == 0


@pytest.mark.parametrize("feed", [feed_whole, feed_bytewise])
def test_seal_feed_open_round_trip(cipher: str, feed: Feed) -> None:
    sealer, opener = make_pair(cipher)
    stream = b"".join(sealer.seal(p, 1.0) for p in PAYLOADS)
    framer = RecordFramer()
    records = feed(framer, stream)
    assert [c for c, _ in records] == list(range(len(PAYLOADS)))
    assert open_all(opener, records) == PAYLOADS
    assert opener.last == len(PAYLOADS) - 1
    assert framer.take_buffer() == b""


def test_bytewise_gives_the_same_records_as_whole(cipher: str) -> None:
    sealer, _ = make_pair(cipher)
    stream = b"".join(sealer.seal(p, 1.0) for p in PAYLOADS)
    assert feed_bytewise(RecordFramer(), stream) == feed_whole(RecordFramer(), stream)


@settings(max_examples=50, deadline=None)
@given(
    st.sampled_from(CIPHERS),
    st.lists(st.binary(max_size=200), min_size=1, max_size=6),
    st.lists(st.integers(0, 2000), max_size=8),
)
def test_any_split_of_the_stream_gives_the_same_records(
    cipher: str, payloads: list[bytes], cuts: list[int]
) -> None:
    sealer, opener = make_pair(cipher)
    stream = b"".join(sealer.seal(p, 0.0) for p in payloads)
    points = sorted({0, len(stream), *(c % (len(stream) + 1) for c in cuts)})
    framer = RecordFramer()
    records: list[Record] = []
    for start, end in itertools.pairwise(points):
        records += framer.feed(stream[start:end])
    assert records == feed_whole(RecordFramer(), stream)
    assert open_all(opener, records) == payloads


def test_take_buffer_hands_partial_record_to_a_new_framer(cipher: str) -> None:
    sealer, opener = make_pair(cipher)
    first, second = sealer.seal(b"one", 0.0), sealer.seal(b"two", 0.0)
    old = RecordFramer()
    records = old.feed(first + second[:10])
    assert open_all(opener, records) == [b"one"]
    rest = old.take_buffer()
    assert rest == second[:10]
    assert old.take_buffer() == b""
    new = RecordFramer()
    assert new.feed(rest) == []
    assert open_all(opener, new.feed(second[10:])) == [b"two"]


# Replay, reordering and tampering


def test_replay_on_the_same_framer_is_refused(cipher: str) -> None:
    sealer, opener = make_pair(cipher)
    framer = RecordFramer()
    first = sealer.seal(b"first", 0.0)
    assert open_all(opener, framer.feed(first)) == [b"first"]
    replayed = only_record(framer, first)
    refuse(opener, replayed, "replayed record: counter 0, already accepted up to 0")
    assert open_all(opener, framer.feed(sealer.seal(b"second", 0.0))) == [b"second"]
    assert opener.last == 1


def test_replay_on_a_new_transport_is_refused(cipher: str) -> None:
    sealer, opener = make_pair(cipher)
    records = [sealer.seal(b"r%d" % i, 0.0) for i in range(3)]
    assert open_all(opener, RecordFramer().feed(b"".join(records))) == [b"r0", b"r1", b"r2"]
    replay = RecordFramer()
    for record in records:
        refuse(opener, only_record(replay, record), "replayed record")
    assert opener.last == 2
    assert open_all(opener, replay.feed(sealer.seal(b"r3", 0.0))) == [b"r3"]


def test_reordered_record_is_refused(cipher: str) -> None:
    sealer, opener = make_pair(cipher)
    r0, r1, r2 = (only_record(RecordFramer(), sealer.seal(b"x", 0.0)) for _ in range(3))
    assert open_all(opener, [r0, r2]) == [b"x", b"x"]
    refuse(opener, r1, "replayed record: counter 1, already accepted up to 2")


def test_counters_may_skip(cipher: str) -> None:
    # Only "above the last accepted" is required; lost records leave gaps.
    sealer, opener = make_pair(cipher)
    records = [only_record(RecordFramer(), sealer.seal(b"%d" % i, 0.0)) for i in range(5)]
    assert open_all(opener, [records[1], records[4]]) == [b"1", b"4"]
    assert opener.last == 4


@settings(max_examples=200, deadline=None)
@given(st.sampled_from(CIPHERS), st.binary(max_size=64), st.data())
def test_tampered_record_is_refused(cipher: str, payload: bytes, data: st.DataObject) -> None:
    sealer, opener = make_pair(cipher)
    framer = RecordFramer()
    assert open_all(opener, framer.feed(sealer.seal(b"first", 0.0))) == [b"first"]
    genuine = sealer.seal(payload, 0.0)
    # Every byte after the length field: the counter (bytes 4..11) and the ciphertext.
    position = data.draw(st.integers(4, len(genuine) - 1), label="position")
    mask = data.draw(st.integers(1, 255), label="mask")
    tampered = bytearray(genuine)
    tampered[position] ^= mask
    refuse(opener, only_record(framer, bytes(tampered)))
    assert open_all(opener, framer.feed(genuine)) == [payload]
    assert opener.last == 1


def test_associated_data_must_match(cipher: str) -> None:
    sealer, opener = make_pair(cipher)
    record = only_record(RecordFramer(), sealer.seal(b"resumed", 0.0, ad=b"preamble"))
    refuse(opener, record, "decryption failed")
    refuse(opener, record, "decryption failed", ad=b"preamblf")
    refuse(opener, record, "decryption failed", ad=b"preamble\x00")
    assert opener.last is None
    assert opener.open(*record, b"preamble") == b"resumed"
    plain = only_record(RecordFramer(), sealer.seal(b"plain", 0.0))
    refuse(opener, plain, "decryption failed", ad=b"preamble")
    assert opener.open(*plain) == b"plain"


def test_keys_differ_between_sessions(cipher: str) -> None:
    sealer, _ = make_pair(cipher)
    _, other = make_pair(cipher)
    refuse(other, only_record(RecordFramer(), sealer.seal(b"x", 0.0)), "decryption failed")


# Framing bounds and garbage


@pytest.mark.parametrize("length", [0, 1, 8, MIN_LENGTH - 1])
def test_record_too_small(length: int) -> None:
    framer_refuses(HEADER.pack(length, 0) + bytes(length), f"record length {length} is outside")


@pytest.mark.parametrize("length", [MAX_LENGTH + 1, 1 << 24, 2**32 - 1])
def test_record_too_large(length: int) -> None:
    # Refused from the header alone, without waiting for the body.
    framer_refuses(HEADER.pack(length, 0), f"record length {length} is outside 24..{MAX_LENGTH}")


def test_bounds_themselves_are_accepted() -> None:
    smallest = HEADER.pack(MIN_LENGTH, 7) + bytes(TAG)
    assert RecordFramer().feed(smallest) == [(7, bytes(TAG))]
    largest = HEADER.pack(MAX_LENGTH, 8) + b"\xaa" * MAX_RECORD
    framer = RecordFramer()
    assert framer.feed(largest[:-1]) == []
    assert framer.feed(largest[-1:]) == [(8, b"\xaa" * MAX_RECORD)]


def test_bad_length_after_good_records(cipher: str) -> None:
    sealer, _ = make_pair(cipher)
    good = sealer.seal(b"ok", 0.0)
    framer = RecordFramer()
    assert len(framer.feed(good)) == 1
    with pytest.raises(ProtocolError, match="record length 5"):
        framer.feed(HEADER.pack(5, 1))


def test_largest_sealed_record_passes_the_framer(cipher: str) -> None:
    sealer, opener = make_pair(cipher)
    payload = os.urandom(MAX_RECORD - TAG)
    assert open_all(opener, RecordFramer().feed(sealer.seal(payload, 0.0))) == [payload]


garbage_records = st.lists(
    st.tuples(st.integers(0, 2**64 - 1), st.binary(max_size=64)), min_size=1, max_size=5
).map(lambda parts: b"".join(HEADER.pack(8 + len(b), c) + b for c, b in parts))
garbage_streams = st.one_of(st.binary(max_size=300), garbage_records)


def consume(opener: RecordOpener, records: list[Record]) -> None:
    for record in records:
        with pytest.raises(CryptoError):
            opener.open(*record)


@settings(max_examples=150, deadline=None)
@given(st.sampled_from(CIPHERS), garbage_streams)
def test_garbage_raises_only_protocol_errors(cipher: str, stream: bytes) -> None:
    _, opener = make_pair(cipher)
    try:
        records = RecordFramer().feed(stream)
    except ProtocolError:
        pass
    else:
        consume(opener, records)
    framer = RecordFramer()
    with contextlib.suppress(ProtocolError):
        for i in range(len(stream)):
            consume(opener, framer.feed(stream[i : i + 1]))
    assert opener.last is None


# Rekeying


def test_rekey_by_bytes(cipher: str) -> None:
    sealer, opener = make_pair(cipher, rekey_bytes=1000)
    framer = RecordFramer()
    # 300-byte records: the fourth passes 1000 bytes, so each epoch holds four.
    for i in range(20):
        payload = os.urandom(300)
        record = sealer.seal(payload, 0.0)
        epoch, index = divmod(i, 4)
        assert sealer.epoch == epoch
        assert sealer.rekeys == epoch
        ((counter, ct),) = framer.feed(record)
        assert counter == epoch * EPOCH + index
        assert opener.open(counter, ct) == payload
        assert opener.rekeys == epoch
        assert opener.last == counter


def test_opener_follows_every_epoch_when_each_record_rekeys(cipher: str) -> None:
    sealer, opener = make_pair(cipher, rekey_bytes=1)
    for epoch in range(6):
        ((counter, ct),) = RecordFramer().feed(sealer.seal(b"r", 0.0))
        assert counter == epoch * EPOCH
        assert opener.open(counter, ct) == b"r"
        assert opener.rekeys == epoch


def test_epochs_lost_with_a_transport_are_followed(cipher: str) -> None:
    # Every record of epoch 1 went down with a transport: epoch 2 still opens.
    sealer, opener = make_pair(cipher, rekey_bytes=1000)
    r0, r1, r2 = (only_record(RecordFramer(), sealer.seal(bytes(1000), 0.0)) for _ in range(3))
    assert [r0[0], r1[0], r2[0]] == [0, EPOCH, 2 * EPOCH]
    assert opener.open(*r0) == bytes(1000)
    assert opener.open(*r2) == bytes(1000)
    assert opener.rekeys == 2
    refuse(opener, r1, "replayed record")


def test_record_beyond_the_epoch_skip_limit_is_refused(cipher: str) -> None:
    sealer, opener = make_pair(cipher, rekey_bytes=1)
    records = [only_record(RecordFramer(), sealer.seal(b"r", 0.0))
               for _ in range(MAX_EPOCH_SKIP + 2)]
    assert opener.open(*records[0]) == b"r"
    last = records[-1]
    refuse(opener, last, f"record from key epoch {MAX_EPOCH_SKIP + 1}; this side is at 0")
    assert opener.open(*records[-2]) == b"r"
    assert opener.rekeys == MAX_EPOCH_SKIP
    assert opener.open(*last) == b"r"


def test_old_epoch_record_is_refused_after_rekey(cipher: str) -> None:
    sealer, opener = make_pair(cipher, rekey_bytes=1)
    r0, r1 = (only_record(RecordFramer(), sealer.seal(b"r", 0.0)) for _ in range(2))
    assert open_all(opener, [r1]) == [b"r"]
    refuse(opener, r0, "replayed record")


def test_tampered_next_epoch_record_does_not_rekey_the_opener(cipher: str) -> None:
    sealer, opener = make_pair(cipher, rekey_bytes=1)
    r0, r1 = (sealer.seal(b"r", 0.0) for _ in range(2))
    assert open_all(opener, RecordFramer().feed(r0)) == [b"r"]
    bad = bytearray(r1)
    bad[-1] ^= 1
    refuse(opener, only_record(RecordFramer(), bytes(bad)), "decryption failed")
    assert opener.rekeys == 0
    assert open_all(opener, RecordFramer().feed(r1)) == [b"r"]
    assert opener.rekeys == 1


def test_next_epoch_counter_with_old_key_is_refused(cipher: str) -> None:
    # A record claiming the next epoch must be sealed with the rekeyed key.
    state = CipherState(cipher, os.urandom(32))
    opener = RecordOpener(state.copy())
    ct = state.encrypt_with_nonce(EPOCH, b"", b"old key")
    refuse(opener, (EPOCH, ct), "decryption failed")
    assert opener.open(0, state.encrypt_with_nonce(0, b"", b"ok")) == b"ok"


def test_rekey_by_time(cipher: str) -> None:
    sealer, opener = make_pair(cipher, now=100.0, rekey_seconds=10.0)
    expected = [(100.0, 0), (105.0, 0), (109.999, 0), (110.0, 1), (115.0, 1), (119.9, 1),
                (120.0, 2), (500.0, 3), (509.0, 3), (510.0, 4)]
    for now, epoch in expected:
        record = only_record(RecordFramer(), sealer.seal(b"t", now))
        assert sealer.epoch == epoch
        assert record[0] >> 32 == epoch
        assert opener.open(*record) == b"t"
        assert opener.rekeys == epoch


def test_time_and_bytes_limits_together(cipher: str) -> None:
    sealer, _ = make_pair(cipher, rekey_bytes=100, rekey_seconds=10.0)
    sealer.seal(bytes(60), 0.0)
    sealer.seal(bytes(60), 1.0)
    assert sealer.epoch == 0
    sealer.seal(b"", 2.0)  # 120 bytes in epoch 0: rekey
    assert sealer.epoch == 1
    sealer.seal(b"", 11.9)
    assert sealer.epoch == 1
    sealer.seal(b"", 12.0)  # ten seconds since the rekey at 2.0
    assert sealer.epoch == 2


def test_defaults_do_not_rekey_early(cipher: str) -> None:
    sealer, _ = make_pair(cipher)
    for now in (0.0, 60.0, 599.0):
        sealer.seal(os.urandom(1000), now)
    assert sealer.epoch == 0
    sealer.seal(b"", 600.0)
    assert sealer.epoch == 1


def test_exhausted_epoch_moves_to_the_next(cipher: str) -> None:
    sealer, opener = make_pair(cipher)
    sealer.counter = EPOCH - 2
    a = only_record(RecordFramer(), sealer.seal(b"a", 0.0))
    b = only_record(RecordFramer(), sealer.seal(b"b", 0.0))
    # Counter EPOCH - 1 is skipped: the last counter of an epoch is never used.
    assert (a[0], b[0]) == (EPOCH - 2, EPOCH)
    assert sealer.rekeys == 1
    assert open_all(opener, [a, b]) == [b"a", b"b"]
    assert opener.rekeys == 1


# Several transports, one session


def test_counters_continue_across_transports(cipher: str) -> None:
    sealer, opener = make_pair(cipher, rekey_bytes=250)
    streams: list[bytes] = []
    feeds: list[Feed] = [feed_whole, feed_bytewise]
    for transport in range(4):
        # Three 103-byte records pass 250 bytes, so each transport starts an epoch.
        payloads = [b"%d-%d" % (transport, i) + bytes(100) for i in range(3)]
        stream = b"".join(sealer.seal(p, 0.0) for p in payloads)
        records = feeds[transport % 2](RecordFramer(), stream)
        assert [c for c, _ in records] == [transport * EPOCH + i for i in range(3)]
        assert open_all(opener, records) == payloads
        assert opener.rekeys == transport
        streams.append(stream)
    # Anything from an earlier transport, replayed on a new one, is refused.
    late = RecordFramer()
    for stream in streams:
        for record in late.feed(stream):
            refuse(opener, record)
    assert open_all(opener, late.feed(sealer.seal(b"still fine", 0.0))) == [b"still fine"]


def test_record_from_an_earlier_transport_after_later_ones(cipher: str) -> None:
    sealer, opener = make_pair(cipher)
    old, new = RecordFramer(), RecordFramer()
    held_back = sealer.seal(b"stuck in the old transport", 0.0)
    assert old.feed(held_back[:20]) == []
    assert open_all(opener, new.feed(sealer.seal(b"on the new transport", 0.0))) == [
        b"on the new transport"
    ]
    refuse(opener, only_record(old, held_back[20:]), "replayed record: counter 0")
    assert open_all(opener, new.feed(sealer.seal(b"next", 0.0))) == [b"next"]


# ---- datagrams: a sliding replay window instead of strict order -------------


def _datagram_pair(cipher: str = "AESGCM", window: int = 64) -> tuple[RecordSealer,
                                                                        DatagramOpener]:
    key = os.urandom(32)
    return (RecordSealer(CipherState(cipher, key), 0.0),
            DatagramOpener(CipherState(cipher, key), window))


def _split(record: bytes) -> tuple[int, bytes]:
    _, counter = HEADER.unpack_from(record)
    return counter, record[HEADER.size:]


def test_window_accepts_reordering_within_it_and_each_counter_once() -> None:
    sealer, opener = _datagram_pair()
    packets = [_split(sealer.seal(bytes([i]), 0.0)) for i in range(10)]
    order = [3, 0, 9, 1, 2, 8, 4, 7, 5, 6]
    assert [opener.open(*packets[i])[0] for i in order] == [bytes([i]) for i in order]
    for i in order:
        with pytest.raises(CryptoError, match="replayed datagram"):
            opener.open(*packets[i])


def test_window_says_which_packet_is_the_newest() -> None:
    sealer, opener = _datagram_pair()
    a, b, c = (_split(sealer.seal(b"x", 0.0)) for _ in range(3))
    assert opener.open(*b)[1] is True
    assert opener.open(*a)[1] is False  # late: its source is not where the peer is now
    assert opener.open(*c)[1] is True


def test_packets_older_than_the_window_are_refused() -> None:
    sealer, opener = _datagram_pair(window=64)
    old = _split(sealer.seal(b"old", 0.0))
    for _ in range(64):
        sealer.seal(b"", 0.0)
    opener.open(*_split(sealer.seal(b"new", 0.0)))
    with pytest.raises(CryptoError, match="older than the replay window"):
        opener.open(*old)


def test_a_forged_packet_does_not_move_the_window() -> None:
    sealer, opener = _datagram_pair()
    first = _split(sealer.seal(b"a", 0.0))
    later = _split(sealer.seal(b"b", 0.0))
    with pytest.raises(CryptoError):
        opener.open(later[0] + 1000, later[1])
    assert opener.window.highest is None
    assert opener.open(*first)[0] == b"a"
    assert opener.open(*later)[0] == b"b"


def test_datagram_epochs_move_forward_only() -> None:
    sealer, opener = _datagram_pair()
    before = _split(sealer.seal(b"before", 0.0))
    sealer._next_epoch(0.0)
    after = _split(sealer.seal(b"after", 0.0))
    assert opener.open(*after)[0] == b"after"
    assert opener.rekeys == 1
    with pytest.raises(CryptoError):
        opener.open(*before)  # a whole epoch back: beyond any window


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(min_value=0, max_value=300), max_size=200))
def test_window_never_accepts_a_counter_twice(counters: list[int]) -> None:
    window = ReplayWindow(64)
    accepted: set[int] = set()
    for counter in counters:
        try:
            window.check(counter)
        except CryptoError:
            assert counter in accepted or (window.highest is not None
                                           and counter <= window.highest - 64)
            continue
        assert counter not in accepted
        window.accept(counter)
        accepted.add(counter)


def test_forged_packets_from_far_epochs_derive_each_key_once() -> None:
    sealer, opener = _datagram_pair()
    rekeys = 0
    real_rekey = CipherState.rekey

    def counted(self: CipherState) -> None:
        nonlocal rekeys
        rekeys += 1
        real_rekey(self)

    far = (MAX_EPOCH_SKIP << 32) | 5
    CipherState.rekey = counted  # type: ignore[method-assign]
    try:
        for i in range(1000):  # anyone can send these: the counter is cleartext
            with pytest.raises(CryptoError):
                opener.open(far + i, os.urandom(40))
    finally:
        CipherState.rekey = real_rekey  # type: ignore[method-assign]
    assert rekeys == MAX_EPOCH_SKIP  # not a thousand times that
    # The real sender, two epochs on, is still followed.
    sealer._next_epoch(0.0)
    sealer._next_epoch(0.0)
    counter, body = _split(sealer.seal(b"after", 0.0))
    assert opener.open(counter, body) == (b"after", True)
    assert opener.rekeys == 2


# ---- several transports: lanes and the window -----------------------------------


def sealed(sealer: RecordSealer, n: int) -> list[Record]:
    out = []
    for i in range(n):
        length, counter = HEADER.unpack_from(raw := sealer.seal(bytes([i % 256]) * 10, 0.0))
        out.append((counter, bytes(raw[HEADER.size:HEADER.size + length - 8])))
    return out


def test_records_interleaved_over_two_transports_are_each_taken_once() -> None:
    sealer, opener = make_pair(CIPHERS[0])
    records = sealed(sealer, 6)
    a, b = Lane(), Lane()
    # Odd counters on one transport, even on the other; the second one is faster.
    for counter, ct in (records[1], records[3], records[0], records[5], records[2]):
        opener.open(counter, ct, lane=b if counter % 2 else a)
    assert opener.last == 5
    with pytest.raises(CryptoError, match="replayed record"):
        opener.open(*records[0], lane=b)  # recorded on one, played on the other
    with pytest.raises(CryptoError, match="on this transport"):
        opener.open(*records[2], lane=a)  # not above that transport's last
    opener.open(*records[4], lane=a)


def test_a_transport_lagging_past_the_window_is_refused() -> None:
    sealer, opener = make_pair(CIPHERS[0])
    first = sealed(sealer, 1)[0]
    late = Lane()
    rest = sealed(sealer, RECORD_WINDOW + 1)
    fast = Lane()
    for counter, ct in rest:
        opener.open(counter, ct, lane=fast)
    with pytest.raises(CryptoError, match="older than the replay window"):
        opener.open(*first, lane=late)


def test_one_transport_keeps_the_strict_rule() -> None:
    sealer, opener = make_pair(CIPHERS[0])
    records = sealed(sealer, 3)
    opener.open(*records[0])
    opener.open(*records[2])  # a record lost on the way is no reason to refuse
    with pytest.raises(CryptoError, match="already accepted up to 2"):
        opener.open(*records[1])


def test_a_counter_one_transport_skipped_is_left_to_a_joining_one_once() -> None:
    # The JOIN on a standby over a slower path: the active transport carries
    # later records first, and the skipped counter arrives on the standby.
    sealer, opener = make_pair(CIPHERS[0])
    records = sealed(sealer, 5)
    opener.open(*records[0])
    opener.open(*records[2])
    opener.open(*records[3])
    standby = Lane()
    opener.open(*records[1], lane=standby)
    with pytest.raises(CryptoError, match="replayed record"):
        opener.open(*records[1], lane=Lane())
    opener.open(*records[4])
    assert opener.last == 4


def test_in_order_records_cost_no_bitmap_work() -> None:
    sealer, opener = make_pair(CIPHERS[0])
    for record in sealed(sealer, 3):
        opener.open(*record)
    assert opener.window._seen is opener.window._full
