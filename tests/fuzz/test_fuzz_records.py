"""Fuzz the record layer: framing raises only FramingError, opening only
CryptoError (leaving the opener as it was), and sealed records round-trip."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from roam.crypto.noise import CIPHERS, CipherState
from roam.crypto.records import (
    HEADER,
    MAX_EPOCH_SKIP,
    MAX_RECORD,
    DatagramOpener,
    RecordFramer,
    RecordOpener,
    RecordSealer,
)
from roam.errors import CryptoError, FramingError
from tests.fuzz.conftest import fuzz_settings
from tests.fuzz.mutate import apply_mutations, cut
from tests.fuzz.provider import Provider, built

EPOCH = 1 << 32
U64 = 2**64 - 1
KEY = bytes(range(32))
OTHER_KEY = bytes(range(1, 33))

# Counters near the interesting places: the start, epoch edges, a few epochs
# ahead (followed), too far ahead (refused), and the top of the range.
EDGE_COUNTERS = (0, 1, EPOCH - 1, EPOCH, EPOCH + 1, 2 * EPOCH, MAX_EPOCH_SKIP * EPOCH,
                 (MAX_EPOCH_SKIP + 1) * EPOCH, U64 - 1, U64)
# Record lengths at and around the accepted range (8 + 16 to MAX_RECORD + 8).
EDGE_LENGTHS = (0, 23, 24, 25, MAX_RECORD + 8, MAX_RECORD + 9, 2**32 - 1)


def counter(p: Provider) -> int:
    return p.choice(EDGE_COUNTERS) if p.flag() else p.uint(64)


def sealed_stream(cipher: str, payloads: list[bytes]) -> bytes:
    sealer = RecordSealer(CipherState(cipher, KEY), 0.0)
    return b"".join(bytes(sealer.seal(p, 0.0)) for p in payloads)


def build_stream(p: Provider) -> bytes:
    """Garbage, a mutated stream of genuine records, or records with forged headers."""
    match p.below(3):
        case 0:
            return p.blob(300)
        case 1:
            stream = sealed_stream(p.choice(CIPHERS), [p.blob(80) for _ in range(1 + p.below(4))])
            return apply_mutations(stream, p.blob(16))
        case _:
            return b"".join(
                HEADER.pack(p.choice(EDGE_LENGTHS) if p.flag() else p.uint(32), counter(p))
                + p.blob(64) for _ in range(1 + p.below(3)))


Fed = tuple[list[tuple[int, bytes]], bool]


def feed_pieces(pieces: list[bytes]) -> Fed:
    """Records from a stream delivered in `pieces`, and whether a FramingError
    ended it (the driver then drops the transport)."""
    framer = RecordFramer()
    out: list[tuple[int, bytes]] = []
    try:
        for piece in pieces:
            out += [(c, bytes(ct)) for c, ct in framer.feed(piece)]
    except FramingError:
        return out, True
    return out, False


def feed_scratch(pieces: list[bytes]) -> Fed:
    """The same through get_buffer / buffer_updated, as the event loop reads."""
    framer = RecordFramer()
    scratch = memoryview(bytearray(MAX_RECORD + 64 + max(map(len, pieces), default=0)))
    out: list[tuple[int, bytes]] = []
    try:
        for piece in pieces:
            view = framer.get_buffer(scratch)
            view[:len(piece)] = piece
            out += [(c, bytes(ct)) for c, ct in framer.buffer_updated(scratch, len(piece))]
    except FramingError:
        return out, True
    return out, False


@fuzz_settings()
@given(built(lambda p: cut(build_stream(p), p.blob(16)), max_size=600))
def test_framer_raises_only_framing_error(pieces: list[bytes]) -> None:
    records, failed = feed_pieces(pieces)
    assert feed_scratch(pieces) == (records, failed)
    # However the bytes arrive, a stream is refused or not as a whole; a
    # refused read hands out nothing, so only an accepted stream's records
    # are the same for every split.
    whole = feed_pieces([b"".join(pieces)])
    assert whole[1] == failed
    if not failed:
        assert whole[0] == records
    for _, ciphertext in records:
        assert 16 <= len(ciphertext) <= MAX_RECORD


Forgery = tuple[str, int, bytes, bytes, bytes, int, bytes, bytes]


def build_forgery(p: Provider) -> Forgery:
    """(cipher, genuine counter, genuine ciphertext, its ad, the opener's key,
    forged counter, forged ciphertext, forged ad)."""
    cipher = p.choice(CIPHERS)
    genuine = p.below(3) * EPOCH + p.choice([0, 1, 2, 1000, EPOCH - 1])
    state = CipherState(cipher, KEY)
    for _ in range(genuine // EPOCH):
        state.rekey()
    ad = p.choice([b"", b"ROAM preamble"])
    ciphertext = state.encrypt_with_nonce(genuine, ad, p.blob(100))
    f_counter, f_ct, f_ad, key = genuine, ciphertext, ad, KEY
    match p.below(5):
        case 0:
            f_counter = counter(p)
        case 1:
            f_ct = apply_mutations(ciphertext, p.blob(16))
        case 2:
            f_ad = p.blob(40)
        case 3:
            key = OTHER_KEY
        case _:
            f_counter, f_ct = counter(p), p.blob(100)
    return cipher, genuine, ciphertext, ad, key, f_counter, f_ct, f_ad


forgeries = built(build_forgery)


@fuzz_settings()
@given(forgeries, st.sampled_from([None, 0, EPOCH - 1]))
def test_record_opener_refuses_forgeries_with_crypto_error(
        forged: Forgery, last: int | None) -> None:
    cipher, genuine, ciphertext, ad, key, f_counter, f_ct, f_ad = forged
    opener = RecordOpener(CipherState(cipher, key))
    if last is not None and last < genuine:
        # Keys are per epoch: an opener past epoch 0 holds the later key.
        opener.last = last
    before = (opener.last, opener.rekeys)
    try:
        opener.open(f_counter, f_ct, f_ad)
    except CryptoError:
        assert (opener.last, opener.rekeys) == before
    else:
        # Only the genuine record itself can open.
        assert key == KEY
        assert (f_counter, f_ct, f_ad) == (genuine, ciphertext, ad)
        return
    if key == KEY:
        opener.open(genuine, ciphertext, ad)  # the refusal changed nothing
        assert opener.last == genuine


@fuzz_settings()
@given(forgeries, built(lambda p: [p.below(3001) for _ in range(p.below(7))], max_size=30))
def test_datagram_opener_refuses_forgeries_with_crypto_error(
        forged: Forgery, accepted: list[int]) -> None:
    cipher, genuine, ciphertext, ad, key, f_counter, f_ct, f_ad = forged
    opener = DatagramOpener(CipherState(cipher, key))
    for c in accepted:
        opener.window.accept(c)  # earlier packets, in any order
    before = (opener.window.highest, opener.window._seen, opener.rekeys)
    try:
        opener.open(f_counter, f_ct, f_ad)
    except CryptoError:
        assert (opener.window.highest, opener.window._seen, opener.rekeys) == before
    else:
        assert key == KEY
        assert (f_counter, f_ct, f_ad) == (genuine, ciphertext, ad)


@fuzz_settings(0.3)
@given(built(lambda p: (p.choice(CIPHERS), [p.blob(100) for _ in range(1 + p.below(6))],
                        p.choice([1, 200, 1 << 30]), p.blob(16)), max_size=800))
def test_sealed_records_round_trip(case: tuple[str, list[bytes], int, bytes]) -> None:
    cipher, plain, rekey_bytes, cuts = case
    # With a small rekey_bytes the sealer moves to the next key epoch every
    # record or so, and the opener must follow.
    sealer = RecordSealer(CipherState(cipher, KEY), 0.0, rekey_bytes=rekey_bytes)
    stream = b"".join(bytes(sealer.seal(p, 0.0)) for p in plain)
    opener = RecordOpener(CipherState(cipher, KEY))
    framer = RecordFramer()
    records: list[tuple[int, bytes]] = []
    for piece in cut(stream, cuts):
        records += [(c, bytes(ct)) for c, ct in framer.feed(piece)]
    assert [opener.open(c, ct) for c, ct in records] == plain
    assert framer.take_buffer() == b""
