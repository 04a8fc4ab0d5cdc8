"""Compression of DATA payloads, sans-IO: one streaming zstd context per channel and direction.

Each side compresses its own sending direction, before encryption. A channel's
compressed DATA payloads form one zstd stream (RFC 8878): every payload is the
compressor's output for that frame's bytes flushed with FLUSH_BLOCK, so the
receiver gets every byte of the frame from that frame alone, and the
compression window spans the frames before it. A payload that does not
shrink goes raw with the flag clear; if the compressor had already taken it
in, its stream ends there and the next compressed payload starts a new zstd
frame, which the receiver recognises by the zstd magic number.

The session compresses a DATA frame once, when it builds it, and keeps the
encoded frame for resending; the receiver decompresses a frame only when it
first arrives in order. Both streams thereby see every frame exactly once,
in sequence order, whatever happens to transports.

History (negotiated as ZSTD_HISTORY): every connection of an API client is a
channel of its own, and a new channel's stream would start knowing nothing,
where the responses before it held the same headers and the same keys. So
each direction keeps the last HISTORY_SIZE bytes of the application data of
its DATA frames flagged FLAG_HISTORY (the sender flags every frame it builds
while compression is wanted), in sequence order, all channels together; and
every zstd frame begins primed with that history as a raw-content
dictionary, as it stood before the frame. Both sides see the same frames in
the same order, so both hold the same history.
"""

from __future__ import annotations

import io
from collections import OrderedDict, deque
from dataclasses import dataclass
from typing import TYPE_CHECKING

import zstandard

from roam.core.frames import MAX_DATA_CHUNK
from roam.errors import ProtocolError

if TYPE_CHECKING:
    from _typeshed import ReadableBuffer

# On the handshake: the bits a HELLO offers, one of which an ACCEPTED picks.
ZSTD = 0x01
# zstd with every stream primed by the direction's history (see above).
ZSTD_HISTORY = 0x02
# The history a new stream starts from. Measured on 24 JSON API responses of
# 40 KiB, each on a channel of its own, at level 5: 0.115 of the raw size
# without history, 0.100 with 64 KiB, 0.098 with 128 KiB (and 0.107 for
# OpenSSH's one zlib stream over all of them); it costs a session that
# compresses up to twice this much per direction.
HISTORY_SIZE = 64 * 1024
# Every zstd frame begins with this (RFC 8878 3.1.1). A compressed payload
# that begins with it starts a new stream. A block inside a frame never looks
# like it: those bytes, read as a block header (RFC 8878 3.1.1.2), declare a
# raw block of 390821 bytes, beyond the 128 KiB a block may hold.
MAGIC = b"\x28\xb5\x2f\xfd"
# zstd's own default level: measured on 5 MiB of JSON in 60 KiB frames,
# level 3 gives 0.19 of the size at ~195 MB/s, level 1 0.20 at ~210 MB/s;
# both are far faster than the paths a mobile unit uses.
DEFAULT_LEVEL = 3
# auto compresses only on paths slower than zstd (AUTO_MIN_RTT), where bytes
# saved are time saved: level 5 (zstd's first lazy-matching level) made the
# JSON responses above 0.100 of their size against 0.116 at level 3, and the
# 1 MiB text log 0.232 against 0.233, at about 60 MB/s against 125: still
# several times a cellular link.
AUTO_LEVEL = 5
# Levels 20-22 ("ultra") need windows beyond MAX_WINDOW_LOG.
MAX_LEVEL = 19
# The history a stream may use: 128 KiB. A larger window gained under 1% on
# the same JSON (0.189 at 1 MiB against 0.191) and costs every receiving
# channel the window in memory; the receiver refuses streams that ask for
# more (zstd reports "Frame requires too much memory for decoding").
MAX_WINDOW_LOG = 17
# A compressed DATA payload decompresses to at most this much, like a raw one.
MAX_OUTPUT = MAX_DATA_CHUNK
# Below this a frame is sent raw without trying: block and sequence headers
# eat most of what zstd could save, and a frame that does not shrink would
# cost the stream its history.
MIN_SIZE = 64
# auto: a frame pays for the CPU on both ends when it shrinks to 90% or less.
AUTO_RATIO = 0.9
# auto: a path whose round trip is shorter than this (loopback, a wired LAN)
# carries bytes about as fast as zstd compresses them here, or faster: 256 MiB
# of JSON crossed loopback between the two daemons in 0.5 s raw and in 1.6 s
# at zstd:3 (2-CPU machine, 2026-12). Beyond it (Wi-Fi, cellular, the
# Internet) the link is the bottleneck and every byte saved is time saved.
# The path's least RTT seen is the measure: queueing in a busy transport
# raises the smoothed RTT of even the fastest path.
AUTO_MIN_RTT = 0.001
# After n frames in a row that did not pay, the next min(2^(n-1), 64) frames
# go raw without trying. Incompressible streams (TLS, media, archives) are
# long: zstd gives up on them quickly (~1.4 GB/s measured on random 60 KiB
# frames) but not for free, and every miss ends the stream. Backing off
# keeps the cost to about one try in 64 frames, while a stream that turns
# compressible is noticed within 64 frames (at most 3.75 MiB).
MAX_SKIP = 64
# zstd sizes a context's match tables for inputs far larger than a 128 KiB
# window: capped at 2^15 entries, a level-5 context is 665 KiB instead of
# 3065 and a level-3 one 761 instead of 1273, for 0.0992 of a JSON stream
# instead of 0.0979 (level 5) and the same 0.1148 (level 3). A server
# resuming a thousand sessions at once that all compress makes a thousand.
TABLE_LOG_MAX = 15
# A new stream is tried only on data a sample of which shrinks: the sample,
# this much from across the frame, goes through one level-1 compressor that every
# session of the process shares (4 us for random bytes, 11 for JSON), so a
# channel of random or encrypted bytes never costs a context of its own.
PROBE_SIZE = 4096
PROBE_MIN = 512
# Live compression contexts per session: each costs ~0.7 MB (above), too
# much for thousands of channels. The
# least recently used one is taken over when a channel needs one; its old
# channel's next compressed frame starts a new stream.
MAX_CONTEXTS = 16


@dataclass(frozen=True, slots=True)
class CompressionMode:
    """What a side allows and does with its sending direction: off, auto or zstd:LEVEL."""

    enabled: bool
    level: int = DEFAULT_LEVEL
    auto: bool = False

    def __str__(self) -> str:
        if not self.enabled:
            return "off"
        return "auto" if self.auto else f"zstd:{self.level}"

    @classmethod
    def parse(cls, text: str) -> CompressionMode:
        """`auto`, `off`, `zstd` or `zstd:LEVEL`; ValueError says what is wrong."""
        value = text.strip().lower()
        if value == "off":
            return OFF
        if value == "auto":
            return AUTO
        name, sep, level_text = value.partition(":")
        if name != "zstd":
            raise ValueError(f"{text!r}: expected auto, off, zstd or zstd:LEVEL")
        if not sep:
            return cls(True, DEFAULT_LEVEL)
        if not level_text.isdigit() or not 1 <= int(level_text) <= MAX_LEVEL:
            raise ValueError(f"{text!r}: LEVEL must be a whole number from 1 to {MAX_LEVEL}")
        return cls(True, int(level_text))


OFF = CompressionMode(False)
AUTO = CompressionMode(True, AUTO_LEVEL, auto=True)


def _parameters(level: int) -> zstandard.ZstdCompressionParameters:
    p = zstandard.ZstdCompressionParameters.from_level(
        level, window_log=MAX_WINDOW_LOG, write_checksum=0, write_content_size=0,
        write_dict_id=0)
    return zstandard.ZstdCompressionParameters(
        window_log=MAX_WINDOW_LOG, hash_log=min(p.hash_log, TABLE_LOG_MAX),
        chain_log=min(p.chain_log, TABLE_LOG_MAX), search_log=p.search_log,
        min_match=p.min_match, target_length=p.target_length, strategy=p.strategy,
        write_checksum=0, write_content_size=0, write_dict_id=0)


_probe: zstandard.ZstdCompressor | None = None


def _worth_a_stream(data: bytes | memoryview, ratio: float) -> bool:
    """Whether a sample of `data` shrinks to `ratio` of its size at level 1."""
    global _probe
    if _probe is None:
        _probe = zstandard.ZstdCompressor(level=1, write_checksum=False,
                                          write_content_size=False)
    n = len(data)
    if n <= PROBE_SIZE:
        sample = bytes(data)
    else:
        # Four pieces from across the frame, not its head alone: a frame may
        # begin with bytes unlike the rest.
        piece = PROBE_SIZE // 4
        sample = b"".join(data[i * (n - piece) // 3:i * (n - piece) // 3 + piece]
                          for i in range(4))
    return len(_probe.compress(sample)) <= len(sample) * ratio


class History:
    """The last HISTORY_SIZE bytes of one direction's FLAG_HISTORY data.

    Kept as copies of at most HISTORY_SIZE bytes each, so that a session
    holds no more than about twice that, whatever buffers the data came in.
    """

    __slots__ = ("_pieces", "_size")

    def __init__(self) -> None:
        # Made with the first data: every session that negotiated history
        # has two, most of them idle (an empty deque is 0.6 KiB).
        self._pieces: deque[bytes] | None = None
        self._size = 0

    def __len__(self) -> int:
        return min(self._size, HISTORY_SIZE)

    def add(self, data: bytes | memoryview) -> None:
        if not data:
            return
        piece = bytes(data[-HISTORY_SIZE:])
        if self._pieces is None:
            self._pieces = deque()
        pieces = self._pieces
        pieces.append(piece)
        self._size += len(piece)
        while self._size - len(pieces[0]) >= HISTORY_SIZE:
            self._size -= len(pieces.popleft())

    def dictionary(self) -> zstandard.ZstdCompressionDict | None:
        """The history as a raw-content dictionary; None while it is empty."""
        if self._pieces is None:
            return None
        data = b"".join(self._pieces)[-HISTORY_SIZE:]
        return zstandard.ZstdCompressionDict(data, dict_type=zstandard.DICT_TYPE_RAWCONTENT)


class _Context:
    __slots__ = ("owner", "params", "primed", "zstd")

    def __init__(self, params: zstandard.ZstdCompressionParameters) -> None:
        self.params = params
        self.zstd = zstandard.ZstdCompressor(compression_params=params)
        self.primed = False
        self.owner: ChannelCompressor | None = None

    def start(self, history: History | None) -> zstandard.ZstdCompressionObj:
        """A new stream, primed with `history` when there is one."""
        primer = history.dictionary() if history is not None else None
        # A compressor loads its dictionary when it is made, not per stream.
        if primer is not None:
            self.zstd = zstandard.ZstdCompressor(compression_params=self.params,
                                                 dict_data=primer)
            self.primed = True
        elif self.primed:
            self.zstd = zstandard.ZstdCompressor(compression_params=self.params)
            self.primed = False
        return self.zstd.compressobj()


class Compressor:
    """A session's sending direction: hands compression contexts to its channels."""

    def __init__(self, mode: CompressionMode, max_contexts: int = MAX_CONTEXTS,
                 auto_min_rtt: float = AUTO_MIN_RTT, history: History | None = None) -> None:
        """`history`: this direction's, when the session negotiated ZSTD_HISTORY;
        the session adds to it, the compressor primes new streams with it."""
        if not mode.enabled:
            raise ValueError("compression is off")
        self.mode = mode
        self.history = history
        self._params = _parameters(mode.level)
        self._max = max_contexts
        self._lru: OrderedDict[_Context, None] = OrderedDict()
        # Least of a compressed frame's size over its raw size that still counts as a hit.
        self._ratio = AUTO_RATIO if mode.auto else 1.0
        self._min_rtt = auto_min_rtt

    def channel(self) -> ChannelCompressor:
        return ChannelCompressor(self)

    def wanted(self, min_rtt: float | None) -> bool:
        """Whether to try at all on a path whose least RTT is `min_rtt` (None:
        not measured yet): always for zstd:LEVEL, for auto beyond AUTO_MIN_RTT.
        A frame not tried goes raw and leaves the channel's stream as it was."""
        return not self.mode.auto or min_rtt is None or min_rtt >= self._min_rtt

    def _context(self, ch: ChannelCompressor) -> _Context:
        ctx = ch._ctx
        if ctx is not None and ctx.owner is ch:
            self._lru.move_to_end(ctx)
            return ctx
        if len(self._lru) < self._max:
            ctx = _Context(self._params)
        else:
            ctx, _ = self._lru.popitem(last=False)
            if ctx.owner is not None:
                ctx.owner._ctx = None
                ctx.owner._obj = None
        ctx.owner = ch
        ch._ctx = ctx
        self._lru[ctx] = None
        return ctx

    def _release(self, ch: ChannelCompressor) -> None:
        ctx = ch._ctx
        if ctx is not None and ctx.owner is ch:
            # A context costs about 1.7 MB: a closed channel gives its back.
            self._lru.pop(ctx, None)
            ctx.owner = None
        ch._ctx = None
        ch._obj = None


class ChannelCompressor:
    """One channel's sending stream."""

    __slots__ = ("_ctx", "_misses", "_obj", "_pool", "_skip")

    def __init__(self, pool: Compressor) -> None:
        self._pool = pool
        self._ctx: _Context | None = None
        self._obj: zstandard.ZstdCompressionObj | None = None
        self._misses = 0
        self._skip = 0

    def compress(self, data: bytes | memoryview) -> tuple[bytes | memoryview, bool]:
        """The payload for one DATA frame carrying `data`, and whether it is compressed."""
        if len(data) < MIN_SIZE:
            return data, False
        if self._skip:
            # Not taken in by the compressor: the stream's history stays the
            # receiver's, so the next compressed frame continues the stream.
            self._skip -= 1
            return data, False
        if self._obj is None:
            # Small frames skip the probe: one shot without the stream's
            # history undersells them, and they are what chatty channels send.
            if len(data) >= PROBE_MIN and not _worth_a_stream(data, self._pool._ratio):
                self._missed()
                return data, False
            self._obj = self._pool._context(self).start(self._pool.history)
        else:
            self._pool._context(self)  # marks its context the most recently used
        out = self._obj.compress(data) + self._obj.flush(zstandard.COMPRESSOBJ_FLUSH_BLOCK)
        if len(out) <= len(data) * self._pool._ratio:
            self._misses = 0
        else:
            self._missed()
        if len(out) < len(data):
            return out, True
        # The compressor took this frame into its history but the receiver
        # never will: end the stream, the next compressed frame starts anew.
        self._obj = None
        return data, False

    def _missed(self) -> None:
        self._misses += 1
        self._skip = min(2 ** (self._misses - 1), MAX_SKIP)

    def release(self) -> None:
        """The channel ended: its compression context goes back to the pool."""
        self._pool._release(self)


class OutputTooLarge(ProtocolError):
    """A compressed payload expands beyond what its frame may carry."""


class _Sink(io.BytesIO):
    """Collects one frame's output; refuses to grow past `limit` (a bomb stops here)."""

    limit = 0

    def write(self, data: ReadableBuffer, /) -> int:
        if self.tell() + memoryview(data).nbytes > self.limit:
            raise OutputTooLarge(f"expands beyond {self.limit} bytes")
        return super().write(data)


class ChannelDecompressor:
    """One channel's receiving stream."""

    __slots__ = ("_dctx", "_sink", "_writer")

    def __init__(self) -> None:
        self._dctx: zstandard.ZstdDecompressor | None = None
        self._writer: zstandard.ZstdDecompressionWriter | None = None
        self._sink = _Sink()

    def decompress(self, payload: bytes | memoryview, limit: int,
                   history: History | None = None) -> bytes:
        """All of one frame's bytes. OutputTooLarge past `limit` (at most MAX_OUTPUT),
        ProtocolError for anything that does not decompress. `history`: this
        direction's, when the session negotiated ZSTD_HISTORY."""
        limit = min(limit, MAX_OUTPUT)
        if payload[:4] == MAGIC:
            primer = history.dictionary() if history is not None else None
            if primer is not None:
                dctx = zstandard.ZstdDecompressor(dict_data=primer,
                                                  max_window_size=1 << MAX_WINDOW_LOG)
            else:
                if self._dctx is None:
                    self._dctx = zstandard.ZstdDecompressor(max_window_size=1 << MAX_WINDOW_LOG)
                dctx = self._dctx
            # The writer hands the output over in pieces of at most
            # MAX_OUTPUT + 1 bytes, more than any limit: either a piece
            # overflows the sink, or zstd had room for everything and holds
            # nothing back for later (it stops short only on a full buffer).
            self._writer = dctx.stream_writer(self._sink, write_size=MAX_OUTPUT + 1)
        elif self._writer is None:
            raise ProtocolError("compressed DATA continues a stream that never began (or "
                                "ended in an error)")
        sink = self._sink
        sink.seek(0)
        sink.truncate()
        sink.limit = limit
        try:
            self._writer.write(payload)
        except OutputTooLarge:
            self._writer = None
            raise
        except zstandard.ZstdError as exc:
            self._writer = None
            raise ProtocolError(f"compressed DATA does not decompress: {exc}") from None
        return sink.getvalue()
