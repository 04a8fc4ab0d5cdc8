"""The datagram transport of one session, sans-IO: UDP packets, probes, fallback,
and redundant channels sent on two paths at once.

A session's datagram channels ride UDP when UDP gets through, so a lost
datagram is just lost (as the application expects) instead of holding up
the stream behind it. Each packet is

    kind u8 | session tag (8 bytes) | counter u64 | AEAD ciphertext

sealed with the datagram keys (apart from the stream's) and the first nine
bytes as associated data. Counters are explicit; the receiver takes them in
any order within a sliding window, each once (`DatagramOpener`).

The plaintext is frames: DGRAM, and PING/PONG, which prove the round trip.
UDP is *up* once a PONG came back, and stays up while PINGs are answered:
a PING unanswered for a while is sent again (PROBE_TRIES in all), and only
when none of them is answered within `probe_timeout` of the first is UDP
*down*, so one packet lost on a lossy radio link does not send datagrams
to the stream. A side sending datagrams adds a PING when its last PONG is
older than CHECK_INTERVAL, so a network that starts dropping UDP is found
within about a second; then datagrams go on the stream transport and the
client probes again every RETRY_INTERVAL.

Kind 0x01 is a packet sent on one path. Kind 0x02 (TWO_PATH) is a packet of
a side that sends on two paths (docs/protocol.md 12.5): while both
work, a datagram of a *redundant* channel is sealed once and the same packet
goes on both, so the receiver's replay window refuses the later copy, which
is counted as a duplicate and dropped without a word. The client's two paths are its legs:
PRIMARY, the socket beside the stream transport, and SECOND, a socket on
the backup path, each with its own probes (`Liveness`). The server learns
from authentic TWO_PATH packets which channels are redundant, keeps the two
source addresses it heard from most recently (forgetting one silent for
FORGET_AFTER), and sends each datagram of a redundant channel to both. Only
a kind 0x01 packet with the highest counter of its kind moves the server's
idea of where the client is (`peer`): the client sends kind 0x01 only on its
primary leg, so copies and probes on the backup path never pull the
session's other datagrams over there.
"""

from __future__ import annotations

import struct
from collections.abc import Collection, Hashable
from enum import Enum

from roam.core import frames as fr
from roam.core.rtt import RttEstimator
from roam.crypto.noise import CipherState
from roam.crypto.records import TAG, DatagramOpener, RecordSealer
from roam.errors import CryptoError, FramingError, ProtocolError

PACKET_DATA = 0x01
# A packet of a side that sends on two paths: its counter may arrive twice.
PACKET_TWO_PATH = 0x02
PACKET_KINDS = (PACKET_DATA, PACKET_TWO_PATH)
HEADER = struct.Struct("!B8sQ")
MIN_PACKET = HEADER.size + TAG
# Largest UDP payload over IPv4 (65535 - 20 - 8); beyond, datagrams take the stream.
MAX_PACKET = 65507
# A PING unanswered this long means UDP does not get through; at least
# this much, however small the RTT, since a busy Python peer can pause.
PROBE_FLOOR = 1.0
PROBE_RTTS = 3.0
# PINGs sent within one probe timeout before UDP counts as down, evenly
# spaced. On a link losing 5% of packets each way a PING or its PONG is lost
# about one time in ten, so a single unanswered PING took UDP down every ten
# seconds or so of traffic (a check a second); four in a row are lost about
# once in 10^4 checks, three hours of traffic. A dead path is still found
# within the probe timeout.
PROBE_TRIES = 4
# While datagrams flow, a PING rides along when the last PONG is this old.
CHECK_INTERVAL = 1.0
# After UDP failed, the client tries again this often (a firewall may open,
# a NAT may have forgotten us); each try is a few small packets.
RETRY_INTERVAL = 5.0
# The client's keepalive while UDP is up: NATs forget UDP bindings after 30 s
# and more (RFC 4787 REQ-5 asks for 2 min; carriers often use 30 s).
KEEPALIVE_INTERVAL = 15.0
# The server forgets a client address not heard from for two keepalives: a
# leg that is up is heard at least every KEEPALIVE_INTERVAL, so one lost
# keepalive does not cost the copies, and a path gone quiet stops getting
# them within half a minute.
FORGET_AFTER = 2 * KEEPALIVE_INTERVAL
# Addresses per session the server sends a redundant channel's datagrams to:
# the client's two legs. A third replaces the least recently heard.
MAX_ADDRESSES = 2
# Redundant channels remembered per session; past it the least recently
# used is forgotten (its datagrams then take one path), so a peer that
# marks channel after channel cannot make the set grow without bound.
MAX_REDUNDANT_CHANNELS = 1024
_MAX_PINGS = 8
_PING_SIZE = len(fr.encode(fr.Ping(0)))  # a PING frame is the same size for any token

Where = Hashable  # where a packet goes or came from: a Leg (client) or an address (server)


class DatagramState(Enum):
    PROBING = "probing"  # no answer yet
    UP = "up"
    DOWN = "down"  # probes went unanswered: datagrams take the stream


class Leg(Enum):
    """The client's UDP sockets: beside the stream transport, and on the backup path."""

    PRIMARY = "primary"
    SECOND = "second"


class Redundancy(Enum):
    """How a session's redundant channels are carried just now."""

    OFF = "off"  # no redundant channel
    TWO_PATHS = "two paths"
    NO_BACKUP = "one path: no backup path"
    PROBING = "one path: probing the backup path"
    BACKUP_DOWN = "one path: UDP does not get through on the backup path"


def parse_packet(packet: bytes | memoryview) -> tuple[int, bytes, int, memoryview]:
    """(kind, session tag, counter, ciphertext); FramingError for what is not one of ours."""
    if len(packet) < MIN_PACKET:
        raise FramingError(f"datagram packet of {len(packet)} bytes; the least is {MIN_PACKET}")
    kind, tag, counter = HEADER.unpack_from(packet)
    if kind not in PACKET_KINDS:
        raise FramingError(f"unknown datagram packet kind {kind:#04x}")
    return kind, tag, counter, memoryview(packet)[HEADER.size:]


class Liveness:
    """Whether UDP gets through on one path, by PING and PONG; the client's
    keepalive and retries on it."""

    __slots__ = ("_failed_at", "_last_pong", "_last_sent", "_pings", "is_client", "rtt",
                 "state")

    def __init__(self, now: float, *, is_client: bool) -> None:
        self.is_client = is_client
        self.state = DatagramState.PROBING
        self.rtt = RttEstimator()
        self._pings: dict[int, float] = {}
        self._last_pong: float | None = None
        self._last_sent = now
        self._failed_at: float | None = None

    @property
    def usable(self) -> bool:
        return self.state is DatagramState.UP

    def probe_timeout(self) -> float:
        srtt = self.rtt.srtt
        return PROBE_FLOOR if srtt is None else max(PROBE_FLOOR, PROBE_RTTS * srtt)

    def reset(self) -> None:
        """The socket moved (or is gone): nothing is proven on it any more."""
        self.state = DatagramState.PROBING
        self._pings.clear()
        self._last_pong = None
        self._failed_at = None

    def sent(self, now: float) -> None:
        self._last_sent = now

    def check_due(self, now: float) -> bool:
        """Traffic flows: is a PING due to confirm UDP still gets through?"""
        return (not self._pings and self._last_pong is not None
                and now - self._last_pong >= CHECK_INTERVAL)

    def wants_probe_back(self) -> bool:
        """The peer reached us on this path: find out whether we reach it."""
        return self.state is not DatagramState.UP and not self._pings

    def ping(self, token: int, now: float) -> None:
        if len(self._pings) >= _MAX_PINGS:
            self._pings.pop(next(iter(self._pings)))
        self._pings[token] = now

    def owns(self, token: int) -> bool:
        return token in self._pings

    def pong(self, token: int, now: float) -> None:
        sent = self._pings.pop(token, None)
        if sent is None:
            return
        self.rtt.sample(now - sent)
        self._pings = {t: s for t, s in self._pings.items() if s > sent}
        self._last_pong = now
        self._failed_at = None
        self.state = DatagramState.UP

    def get_timer(self) -> float | None:
        deadlines: list[float] = []
        if self._pings:
            timeout = self.probe_timeout()
            deadlines.append(min(self._pings.values()) + timeout)
            if len(self._pings) < PROBE_TRIES:
                deadlines.append(max(self._pings.values()) + timeout / PROBE_TRIES)
        if self.is_client:
            if self.state is DatagramState.DOWN and self._failed_at is not None:
                deadlines.append(self._failed_at + RETRY_INTERVAL)
            elif self.state is DatagramState.UP:
                deadlines.append(self._last_sent + KEEPALIVE_INTERVAL)
        return min(deadlines) if deadlines else None

    def expire(self, now: float) -> bool:
        """Note what timed out by `now`; True when a PING is to be sent now."""
        if self._pings:
            timeout = self.probe_timeout()
            if now >= min(self._pings.values()) + timeout:
                self._pings.clear()
                self.state = DatagramState.DOWN
                self._failed_at = now
                self._last_pong = None
                return False
            return (len(self._pings) < PROBE_TRIES
                    and now >= max(self._pings.values()) + timeout / PROBE_TRIES)
        if not self.is_client:
            return False
        if self.state is DatagramState.DOWN and self._failed_at is not None:
            if now >= self._failed_at + RETRY_INTERVAL:
                self._failed_at = now
                return True
            return False
        return self.state is DatagramState.UP and now >= self._last_sent + KEEPALIVE_INTERVAL

    def rtt_ms(self) -> float | None:
        return None if self.rtt.srtt is None else round(self.rtt.srtt * 1000, 1)


class DatagramPath:
    """One side's UDP state for a session; the driver owns the sockets and the clock.

    `where` values name where packets go and come from: on the client a Leg,
    on the server the source address the driver saw (any hashable value;
    the core only compares them).
    """

    def __init__(self, tag: bytes, send: CipherState, receive: CipherState, now: float, *,
                 is_client: bool) -> None:
        if len(tag) != 8:
            raise ValueError(f"a session tag is 8 bytes, got {len(tag)}")
        self.tag = tag
        self.is_client = is_client
        self._ad = bytes([PACKET_DATA]) + tag
        self._ad_two_path = bytes([PACKET_TWO_PATH]) + tag
        self._sealer = RecordSealer(send, now)
        self._opener = DatagramOpener(receive)
        self.primary = Liveness(now, is_client=is_client)
        self.second: Liveness | None = None  # the client's leg on the backup path
        self._token = 0
        self._out: list[tuple[bytes, Where]] = []  # probes and answers for the driver
        # Redundant channel ids, least recently used first: the client's
        # chosen ones, or those the server saw in TWO_PATH packets.
        self._redundant: dict[int, None] = {}
        # The server's view of the client: where the session's datagrams go
        # (`peer`), and the addresses heard from lately, with when.
        self.peer: Where | None = None
        self._data_highest: int | None = None
        self._heard: dict[Where, float] = {}
        self.packets_sent = 0
        self.packets_received = 0
        self.datagrams_sent = 0
        self.datagrams_received = 0
        self.rejected = 0
        self.duplicates = 0
        self.copies_sent = 0

    # ---- the primary path, as before there were two -----------------------

    @property
    def state(self) -> DatagramState:
        return self.primary.state

    @property
    def rtt(self) -> RttEstimator:
        return self.primary.rtt

    @property
    def usable(self) -> bool:
        return self.primary.usable

    def probe_timeout(self) -> float:
        return self.primary.probe_timeout()

    # ---- sending -----------------------------------------------------------

    def seal(self, payload: bytes, now: float, kind: int = PACKET_DATA) -> bytes:
        ad = self._ad_two_path if kind == PACKET_TWO_PATH else self._ad
        sealed = self._sealer.seal(payload, now, ad=ad)
        self.packets_sent += 1
        # The record header's length is redundant in a datagram: keep kind,
        # tag and counter.
        return ad + sealed[4:]

    def datagram(self, frame: bytes, now: float, channel: int | None = None
                 ) -> list[tuple[bytes, Where]]:
        """The packets for one encoded DGRAM frame of `channel`, and where each
        goes; none: send the datagram on the stream."""
        if len(frame) + MIN_PACKET > MAX_PACKET:
            return []
        if channel is not None and channel in self._redundant:
            routes = self._routes(now)
            # TWO_PATH only while a second path works: on the client that is
            # the backup leg, proven by a PONG to a TWO_PATH PING, so a server
            # that does not know the kind never gets one. Otherwise the
            # datagram is an ordinary one.
            if len(routes) > 1 or (routes and routes[0][0] is Leg.SECOND):
                return self._two_path(frame, now, routes)
        home = self._home()
        if not self.primary.usable or home is None:
            return []
        parts = [frame]
        if self.primary.check_due(now):
            if len(frame) + _PING_SIZE + MIN_PACKET <= MAX_PACKET:
                parts.append(self._ping(self.primary, now))
            else:  # no room beside the datagram: a PING of its own
                self._probe(self.primary, home, now)
        self.datagrams_sent += 1
        self.primary.sent(now)
        return [(self.seal(b"".join(parts), now), home)]

    def _two_path(self, frame: bytes, now: float, routes: list[tuple[Where, Liveness]]
                  ) -> list[tuple[bytes, Where]]:
        """One packet, sealed once, to every path that works: the receiver
        keeps whichever copy comes first and drops the other by its counter."""
        packet = self.seal(frame, now, PACKET_TWO_PATH)
        self.datagrams_sent += 1
        self.copies_sent += len(routes) - 1
        for where, liveness in routes:
            liveness.sent(now)
            # Each path proves itself with PINGs of its own: one inside the
            # copies would be answered on whichever path its copy won.
            if liveness.check_due(now):
                self._probe(liveness, where, now)
        return [(packet, where) for where, _ in routes]

    def _routes(self, now: float) -> list[tuple[Where, Liveness]]:
        """The paths a redundant channel's datagram may take now."""
        if self.is_client:
            legs = [(Leg.PRIMARY, self.primary)]
            if self.second is not None:
                legs.append((Leg.SECOND, self.second))
            return [(where, liveness) for where, liveness in legs if liveness.usable]
        home = self._home()
        if home is None or not self.primary.usable:
            return []
        return [(where, self.primary) for where in [home, *self._others(home, now)]]

    def restart(self, now: float) -> None:
        """Client: the primary socket moved to another path; prove it before trusting it."""
        self.primary.reset()
        self._probe(self.primary, Leg.PRIMARY, now)

    def primary_unbound(self) -> None:
        """Client: the primary socket is gone; datagrams take the stream until the next."""
        self.primary.reset()

    def second_bound(self, now: float) -> None:
        """Client: a socket is bound on the backup path (anew); probe it."""
        self.second = Liveness(now, is_client=True)
        self._probe(self.second, Leg.SECOND, now)

    def second_unbound(self) -> None:
        """Client: no socket on a backup path any more."""
        self.second = None
        self._out = [(p, where) for p, where in self._out if where is not Leg.SECOND]

    def _kind(self, where: Where) -> int:
        # The client's backup leg sends TWO_PATH only: its packets must never
        # move the server's `peer` there.
        return PACKET_TWO_PATH if where is Leg.SECOND else PACKET_DATA

    def _ping(self, liveness: Liveness, now: float) -> bytes:
        self._token += 1
        liveness.ping(self._token, now)
        return fr.encode(fr.Ping(self._token))

    def _probe(self, liveness: Liveness, where: Where | None, now: float) -> None:
        if where is None:
            return  # the server has not heard from the client yet: nowhere to probe
        self._queue(self._ping(liveness, now), where, liveness, now)

    def _queue(self, payload: bytes, where: Where, liveness: Liveness | None,
               now: float) -> None:
        self._out.append((self.seal(payload, now, self._kind(where)), where))
        if liveness is not None:
            liveness.sent(now)

    def packets_to_send(self) -> list[tuple[bytes, Where]]:
        out, self._out = self._out, []
        return out

    # ---- redundant channels ----------------------------------------------

    def mark_redundant(self, channel: int) -> bool:
        """Client: `channel`'s datagrams go on two paths. True when it is new."""
        new = channel not in self._redundant
        self._remember(channel)
        return new

    def _remember(self, channel: int) -> None:
        self._redundant.pop(channel, None)
        self._redundant[channel] = None
        if len(self._redundant) > MAX_REDUNDANT_CHANNELS:
            del self._redundant[next(iter(self._redundant))]

    def is_redundant(self, channel: int) -> bool:
        return channel in self._redundant

    def keep_channels(self, open_channels: Collection[int]) -> None:
        """Forget redundant channels that are closed (ids are never reused)."""
        for channel in [c for c in self._redundant if c not in open_channels]:
            del self._redundant[channel]

    @property
    def redundant_channels(self) -> int:
        return len(self._redundant)

    def redundancy(self, now: float) -> Redundancy:
        if not self._redundant:
            return Redundancy.OFF
        if not self.is_client:
            home = self._home()
            return (Redundancy.TWO_PATHS if home is not None and self._others(home, now)
                    else Redundancy.NO_BACKUP)
        if self.second is None:
            return Redundancy.NO_BACKUP
        return {DatagramState.UP: Redundancy.TWO_PATHS, DatagramState.DOWN:
                Redundancy.BACKUP_DOWN, DatagramState.PROBING: Redundancy.PROBING
                }[self.second.state]

    # ---- the server's addresses of the client -------------------------------

    def _home(self) -> Where | None:
        """Where this side's own packets go: the client's primary leg (the
        client's one destination is the server, named PRIMARY)."""
        if self.is_client:
            return Leg.PRIMARY
        if self.peer is not None:
            return self.peer
        # Only TWO_PATH packets so far: the address heard from last.
        return max(self._heard, key=self._heard.__getitem__) if self._heard else None

    def _others(self, home: Where, now: float) -> list[Where]:
        return [where for where, heard in self._heard.items()
                if where != home and now - heard <= FORGET_AFTER]

    def _heard_from(self, where: Where, now: float) -> None:
        heard = self._heard
        if where not in heard and len(heard) >= MAX_ADDRESSES:
            # The peer stays; of the others the least recently heard goes.
            victims = [w for w in heard if w != self.peer]
            del heard[min(victims, key=heard.__getitem__)]
        heard[where] = now

    def addresses(self, now: float) -> list[tuple[Where, float]]:
        """Server: the client's addresses heard from within FORGET_AFTER, with
        how long ago, the peer first."""
        ordered = sorted(self._heard.items(), key=lambda item: item[0] != self.peer)
        return [(where, now - heard) for where, heard in ordered
                if now - heard <= FORGET_AFTER]

    # ---- receiving ---------------------------------------------------------

    def receive(self, packet: bytes | memoryview, now: float,
                where: Where = Leg.PRIMARY) -> tuple[list[fr.Dgram], bool]:
        """(DGRAM frames, newest) of one packet that came from `where`; newest:
        it is the server's kind 0x01 packet with the highest counter yet, so
        `where` is now the peer.

        A copy of a TWO_PATH packet already taken is a duplicate: counted and
        dropped before any decryption, with no exception. FramingError or
        CryptoError for a packet that is not authentic (count it, drop it);
        ProtocolError for an authentic one that breaks the rules.
        """
        kind, tag, counter, ciphertext = parse_packet(packet)
        if tag != self.tag:
            raise FramingError("datagram packet for another session")
        if kind == PACKET_TWO_PATH and self._taken(counter):
            self.duplicates += 1
            return [], False
        try:
            plaintext, _ = self._opener.open(
                counter, ciphertext, self._ad_two_path if kind == PACKET_TWO_PATH else self._ad)
        except Exception:
            self.rejected += 1
            raise
        self.packets_received += 1
        newest = False
        liveness: Liveness | None = self.primary
        if self.is_client:
            if where is Leg.SECOND:
                liveness = self.second
        else:
            if kind == PACKET_DATA and (self._data_highest is None
                                        or counter > self._data_highest):
                self._data_highest = counter
                self.peer = where
                newest = True
            self._heard_from(where, now)
        datagrams: list[fr.Dgram] = []
        for frame in fr.decode_frames(plaintext):
            if isinstance(frame, fr.Dgram):
                datagrams.append(frame)
                if kind == PACKET_TWO_PATH and not self.is_client:
                    self._remember(frame.channel)
            elif isinstance(frame, fr.Ping):
                # The answer goes back the way the question came, so it
                # proves that very path.
                self._queue(fr.encode(fr.Pong(frame.token)), where, liveness, now)
            elif isinstance(frame, fr.Pong):
                if liveness is not None:
                    liveness.pong(frame.token, now)
            else:
                raise ProtocolError(f"{type(frame).__name__.upper()} in a datagram packet")
        if liveness is not None and liveness.wants_probe_back():
            # The peer reaches us; find out whether we reach it (the server
            # learns of UDP this way, and of a way back after a failure).
            self._probe(liveness, where if self.is_client else self._home(), now)
        self.datagrams_received += len(datagrams)
        return datagrams, newest

    def _taken(self, counter: int) -> bool:
        """`counter` was authenticated already (a copy from the other path)."""
        window = self._opener.window
        highest = window.highest
        if highest is None or counter > highest or highest - counter >= window.size:
            return False  # new, or too old to tell: the opener decides
        try:
            window.check(counter)
        except CryptoError:
            return True
        return False

    # ---- time --------------------------------------------------------------

    def _legs(self) -> list[tuple[Liveness, Where | None]]:
        if not self.is_client:
            return [(self.primary, self._home())]
        legs: list[tuple[Liveness, Where | None]] = [(self.primary, Leg.PRIMARY)]
        if self.second is not None:
            legs.append((self.second, Leg.SECOND))
        return legs

    def get_timer(self) -> float | None:
        deadlines = [t for liveness, _ in self._legs()
                     if (t := liveness.get_timer()) is not None]
        return min(deadlines) if deadlines else None

    def handle_timer(self, now: float) -> None:
        for liveness, where in self._legs():
            if liveness.expire(now):
                self._probe(liveness, where, now)

    def statistics(self, now: float) -> dict[str, object]:
        out: dict[str, object] = {
            "state": self.primary.state.value, "rtt_ms": self.primary.rtt_ms(),
            "packets_sent": self.packets_sent, "packets_received": self.packets_received,
            "datagrams_sent": self.datagrams_sent,
            "datagrams_received": self.datagrams_received, "rejected": self.rejected,
            "duplicates": self.duplicates}
        mode = self.redundancy(now)
        if mode is not Redundancy.OFF or self.second is not None:
            redundant: dict[str, object] = {
                "channels": len(self._redundant), "mode": mode.value,
                "copies_sent": self.copies_sent, "duplicates": self.duplicates}
            if self.is_client:
                second = self.second
                redundant["second_state"] = None if second is None else second.state.value
                redundant["second_rtt_ms"] = None if second is None else second.rtt_ms()
            out["redundant"] = redundant
        return out
