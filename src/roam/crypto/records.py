"""AEAD records: `length:u32 | counter:u64 | ciphertext` on a byte stream.

The counter is the AEAD nonce. It counts per direction for the whole session,
across every transport, and the receiver accepts only counters above the last
one it accepted: a record replayed from this or an earlier transport, or
reordered, is refused.

Rekey: the top 32 bits of the counter are the key *epoch*. The key of epoch
e+1 is Noise's REKEY of the key of epoch e. A sender rekeys by jumping its
counter to the next epoch (after `rekey_bytes` or `rekey_seconds`); the
receiver follows when a record of the next epoch authenticates, and forgets
the old key, so a later key compromise does not expose earlier traffic.

Framing (`RecordFramer`, per transport) is apart from the keys
(`RecordSealer` / `RecordOpener`, per session), so a record can be checked
on a new transport before that transport replaces the old one.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence

from roam.crypto.noise import CipherState
from roam.errors import CryptoError, FramingError

HEADER = struct.Struct("!IQ")
TAG = 16
# The largest record accepted: the session's records are at most 128 KiB of
# plaintext; twice that leaves room to raise the size without a new version.
MAX_RECORD = 256 * 1024 + TAG
_EPOCH_SHIFT = 32
_EPOCH_MASK = (1 << _EPOCH_SHIFT) - 1
# TLS 1.3 (RFC 8446 5.5) allows 2^24.5 full 16 KiB records per AES-GCM key;
# rekeying every GiB stays a thousand times below that and costs nothing.
REKEY_BYTES = 1 << 30
# WireGuard rekeys every 120 s; ten minutes bounds what one key protects
# without churning keys on idle sessions.
REKEY_SECONDS = 600.0
# Epochs a receiver follows in one step. Every record of an epoch can be lost
# with a transport (or an epoch can start on a resume attempt that never
# arrives), so the next record may be several epochs ahead: 64 covers ten
# hours of failed resume attempts; each step costs one AES block.
MAX_EPOCH_SKIP = 64


class EpochKeys:
    """The receiving key of the current epoch, and those of later epochs
    derived so far.

    A later epoch's key is a rekeyed copy, kept as the current one only once
    a record under it authenticates, so a forged counter moves nothing. Each
    later key is derived once and kept until the epoch is reached or passed:
    forged packets naming far epochs (anyone can send UDP) cost one AEAD
    check each, not up to MAX_EPOCH_SKIP rekeys each.
    """

    __slots__ = ("_ahead", "current")

    def __init__(self, cipher: CipherState) -> None:
        self.current = cipher
        self._ahead: list[CipherState] = []  # epochs current+1, current+2, ...

    def key(self, last: int | None, counter: int, what: str) -> tuple[CipherState, int]:
        """The key for `counter`'s epoch, and how many epochs ahead of `last` it is."""
        current = 0 if last is None else last >> _EPOCH_SHIFT
        epoch = counter >> _EPOCH_SHIFT
        if epoch == current:
            return self.current, 0
        steps = epoch - current
        if not 0 < steps <= MAX_EPOCH_SKIP:
            raise CryptoError(f"{what} from key epoch {epoch}; this side is at {current}")
        ahead = self._ahead
        while len(ahead) < steps:
            following = (ahead[-1] if ahead else self.current).copy()
            following.rekey()
            ahead.append(following)
        return ahead[steps - 1], steps

    def advance(self, steps: int) -> None:
        """A record `steps` epochs ahead authenticated: that epoch is current now."""
        if steps:
            self.current = self._ahead[steps - 1]
            del self._ahead[:steps]


class SealScratch:
    """Buffers a sealer gathers and encrypts records in, reused for every record.

    One per event loop serves every session in it: a sealed record is handed
    to the transport before the next one is sealed. asyncio's transports
    copy what the socket did not take; uvloop's keep it by reference, so a
    record the transport holds on to must be `surrender`ed. The buffers grow
    to the largest record sealed so far.
    """

    __slots__ = ("_plain", "_record")

    def __init__(self) -> None:
        self._plain = memoryview(bytearray())
        self._record = memoryview(bytearray())

    def plain(self, size: int) -> memoryview:
        if len(self._plain) < size:
            self._plain = memoryview(bytearray(size))
        return self._plain

    def record(self, size: int) -> memoryview:
        if len(self._record) < size:
            self._record = memoryview(bytearray(size))
        return self._record[:size]

    def surrender(self) -> None:
        """The last record's buffer belongs to whoever holds it now; the next
        record gets a new one."""
        self._record = memoryview(bytearray())


class RecordSealer:
    """Seals outgoing records for one direction of a session."""

    def __init__(self, cipher: CipherState, now: float, *, rekey_bytes: int = REKEY_BYTES,
                 rekey_seconds: float = REKEY_SECONDS) -> None:
        self._cipher = cipher
        self.counter = 0
        self._epoch_start = now
        self._epoch_bytes = 0
        self._rekey_bytes = rekey_bytes
        self._rekey_seconds = rekey_seconds
        self.rekeys = 0

    @property
    def epoch(self) -> int:
        return self.counter >> _EPOCH_SHIFT

    def seal(self, payload: bytes | memoryview, now: float, ad: bytes = b"") -> bytearray:
        """One record in a buffer of its own."""
        size = len(payload) + TAG
        record = bytearray(HEADER.size + size)
        self._seal_into(payload, now, ad, memoryview(record))
        return record

    def seal_parts(self, parts: Sequence[bytes | memoryview], now: float,
                   scratch: SealScratch) -> memoryview:
        """One record whose plaintext is the concatenation of `parts`, sealed
        into `scratch`: the view is valid until `scratch` seals again.

        The parts are gathered into the scratch's plaintext buffer (the one
        copy of the data before encryption; none for a single part) and
        encrypted into its record buffer, so a record costs no allocation
        and no zero-filling of a fresh buffer.
        """
        if len(parts) == 1:
            plain: bytes | memoryview = parts[0]
            size = len(plain)
        else:
            size = 0
            for part in parts:
                size += len(part)
            view = scratch.plain(size)
            offset = 0
            for part in parts:
                end = offset + len(part)
                view[offset:end] = part
                offset = end
            plain = view[:size]
        out = scratch.record(HEADER.size + size + TAG)
        self._seal_into(plain, now, b"", out)
        return out

    def _seal_into(self, payload: bytes | memoryview, now: float, ad: bytes,
                   out: memoryview) -> None:
        if (self._epoch_bytes >= self._rekey_bytes
                or now - self._epoch_start >= self._rekey_seconds
                or self.counter & _EPOCH_MASK == _EPOCH_MASK):
            self._next_epoch(now)
        counter = self.counter
        self.counter += 1
        self._epoch_bytes += len(payload)
        # Header and ciphertext in one buffer, sealed in place: concatenating
        # a header to a 128 KiB ciphertext cost a copy of every byte sent.
        HEADER.pack_into(out, 0, len(payload) + TAG + 8, counter)
        self._cipher.encrypt_into(counter, ad, payload, out[HEADER.size:])

    def _next_epoch(self, now: float) -> None:
        self._cipher.rekey()
        self.counter = (self.epoch + 1) << _EPOCH_SHIFT
        self._epoch_start = now
        self._epoch_bytes = 0
        self.rekeys += 1


class Lane:
    """One transport's share of a direction's records: on one transport the
    counters rise (TCP keeps order), while the transports interleave."""

    __slots__ = ("last",)

    def __init__(self) -> None:
        self.last: int | None = None


# Record counters a receiver remembers below the highest it accepted, when a
# session has several transports: a record is taken once, from whichever
# transport brings it, if it is no older than this. A transport lagging
# further behind the others (4096 records is 4 s of a 1 KiB-per-ms stream,
# 512 MiB of full records) is dropped as a replay would be, and what it
# carried is resent on the others.
RECORD_WINDOW = 4096


class RecordOpener:
    """Opens incoming records for one direction of a session.

    With one transport (`lane` None) a record's counter must be above every
    one accepted. With several, each brings its `Lane`: the counter must be
    above that transport's last, and new within the window over all of them
    (docs/protocol.md 3.3), so a record recorded on one transport and
    replayed on another is refused as surely as one replayed on its own.
    """

    def __init__(self, cipher: CipherState) -> None:
        self._keys = EpochKeys(cipher)
        self.window = ReplayWindow(RECORD_WINDOW, "record")
        self.rekeys = 0

    @property
    def last(self) -> int | None:
        """The highest counter accepted so far."""
        return self.window.highest

    @last.setter
    def last(self, counter: int | None) -> None:
        """As if every record up to `counter` had been accepted (None: none)."""
        if counter is None:
            self.window = ReplayWindow(RECORD_WINDOW, "record")
        else:
            self.window.accept_up_to(counter)

    def open(self, counter: int, ciphertext: bytes | memoryview, ad: bytes = b"",
             lane: Lane | None = None) -> bytes:
        """Authenticate and decrypt; the state changes only when it succeeds."""
        highest = self.window.highest
        if lane is None:
            if highest is not None and counter <= highest:
                raise CryptoError(f"replayed record: counter {counter}, "
                                  f"already accepted up to {highest}")
        else:
            if lane.last is not None and counter <= lane.last:
                raise CryptoError(f"replayed record: counter {counter}, already accepted up "
                                  f"to {lane.last} on this transport")
            self.window.check(counter)
        # A record of an epoch before the newest accepted one (a transport
        # that lagged across a rekey) is refused: its key is forgotten.
        cipher, steps = self._keys.key(highest, counter, "record")
        plaintext = cipher.decrypt_with_nonce(counter, ad, ciphertext)
        self._keys.advance(steps)
        self.rekeys += steps
        if lane is None:
            self.window.accept_in_order(counter)
        else:
            self.window.accept(counter)
            lane.last = counter
        return plaintext


class RecordFramer:
    """Splits one transport's byte stream into (counter, ciphertext) records.

    Two ways in: `feed(data)` for bytes read elsewhere, and the pair
    `get_buffer(scratch)` / `buffer_updated(scratch, n)` for reading straight
    into a scratch buffer shared by every transport of an event loop. Only
    the part of a record that a read left unfinished is kept per transport;
    whole records are handed out as views and never copied.
    """

    __slots__ = ("_buf",)

    def __init__(self) -> None:
        self._buf = bytearray()  # an unfinished record, kept between reads

    def feed(self, data: bytes | bytearray | memoryview) -> list[tuple[int, memoryview]]:
        """Whole records in `data` (after what an earlier read left over).

        The ciphertexts are views: into `data` itself when nothing was left
        over, else into a copy of the joined bytes. Open them before the
        next feed.
        """
        return self._split(memoryview(bytes(self._buf + data)) if self._buf else
                           memoryview(data))

    def get_buffer(self, scratch: memoryview) -> memoryview:
        """Where the next read goes: `scratch`, after the unfinished record
        (copied to its front). `scratch` must hold more than MAX_RECORD + 12
        bytes; it is shared, so `buffer_updated` must follow before any
        other transport's `get_buffer`."""
        held = len(self._buf)
        if held:
            scratch[:held] = self._buf
        return scratch[held:]

    def buffer_updated(self, scratch: memoryview,
                       n: int) -> list[tuple[int, memoryview]]:
        """Whole records among the unfinished one and the `n` bytes just read
        into `get_buffer`'s view: views into `scratch`, valid until it is
        read into again."""
        return self._split(scratch[:len(self._buf) + n])

    def _split(self, view: memoryview) -> list[tuple[int, memoryview]]:
        out: list[tuple[int, memoryview]] = []
        offset = 0
        end = len(view)
        while end - offset >= HEADER.size:
            length, counter = HEADER.unpack_from(view, offset)
            if length < 8 + TAG or length > MAX_RECORD + 8:
                raise FramingError(f"record length {length} is outside 24..{MAX_RECORD + 8}")
            if end - offset < 4 + length:
                break
            start = offset + HEADER.size
            offset += 4 + length
            out.append((counter, view[start:offset]))
        if offset < end:
            self._buf = bytearray(view[offset:])
        elif self._buf:
            self._buf = bytearray()  # (an empty one stays: most reads end on a record)
        return out

    def take_buffer(self) -> bytes:
        """Bytes received past the last whole record (handed on with the transport)."""
        data = bytes(self._buf)
        self._buf.clear()
        return data


# Counters a datagram receiver remembers below the highest it has seen.
# WireGuard keeps 8192 - 64 (RFC 6479's bitmap); datagrams here travel one
# path at a time, so reordering spans far fewer packets: 2048 is plenty.
REPLAY_WINDOW = 2048


class ReplayWindow:
    """A sliding window of accepted counters (RFC 6479's idea, as a Python int).

    `check` says whether a counter may be tried; `accept` records it once it
    authenticated, so a forged packet never moves the window.
    """

    def __init__(self, size: int = REPLAY_WINDOW, what: str = "datagram") -> None:
        self.size = size
        self._what = what
        self.highest: int | None = None
        self._seen = 0  # bit i: highest - i was accepted
        self._full = (1 << size) - 1

    def check(self, counter: int) -> None:
        if self.highest is None or counter > self.highest:
            return
        back = self.highest - counter
        if back >= self.size:
            raise CryptoError(f"{self._what} counter {counter} is older than the replay window "
                              f"({self.size} below {self.highest})")
        if self._seen >> back & 1:
            raise CryptoError(f"replayed {self._what}: counter {counter}")

    def accept_up_to(self, counter: int) -> None:
        """Every counter up to `counter` counts as seen (one transport, in
        order). The full bitmap is made once per window: no allocation per record."""
        self.highest = counter
        self._seen = self._full

    def accept_in_order(self, counter: int) -> None:
        """Record `counter`, from a transport that delivers in order.

        Without a gap, every counter up to it counts as seen (no bitmap work
        per record). Counters it skipped went out on another transport, such
        as the JOIN on a standby whose path is slower than the active one's,
        and stay open for that one, within the window.
        """
        if self.highest is None or (counter == self.highest + 1 and self._seen == self._full):
            self.accept_up_to(counter)
        else:
            self.accept(counter)

    def accept(self, counter: int) -> bool:
        """Record `counter`; True when it is the newest so far."""
        if self.highest is None or counter > self.highest:
            shift = self.size if self.highest is None else counter - self.highest
            # A jump past the window (a new key epoch) forgets everything;
            # shifting by it would build a 2^32-bit integer.
            kept = self._seen << shift if shift < self.size else 0
            self._seen = (kept | 1) & ((1 << self.size) - 1)
            self.highest = counter
            return True
        self._seen |= 1 << (self.highest - counter)
        return False


class DatagramOpener:
    """Opens datagram packets: any order within the window, each counter once.

    Key epochs work as for records, forward only: a packet from an epoch
    before the current one is refused (UDP may lose it anyway).
    """

    def __init__(self, cipher: CipherState, window: int = REPLAY_WINDOW) -> None:
        self._keys = EpochKeys(cipher)
        self.window = ReplayWindow(window)
        self.rekeys = 0

    def open(self, counter: int, ciphertext: bytes | memoryview, ad: bytes = b"") -> tuple[
            bytes, bool]:
        """(plaintext, newest): the state changes only when it authenticates."""
        self.window.check(counter)
        cipher, steps = self._keys.key(self.window.highest, counter, "datagram")
        plaintext = cipher.decrypt_with_nonce(counter, ad, ciphertext)
        self._keys.advance(steps)
        self.rekeys += steps
        return plaintext, self.window.accept(counter)
