"""The datagram transport of one session, sans-IO: UDP packets, probes, fallback.

A session's datagram channels ride UDP when UDP gets through, so a lost
datagram is just lost (as the application expects) instead of holding up
the stream behind it. Each packet is

    kind u8 (0x01) | session tag (8 bytes) | counter u64 | AEAD ciphertext

sealed with the datagram keys (apart from the stream's) and the first nine
bytes as associated data. Counters are explicit; the receiver takes them in
any order within a sliding window, each once (`DatagramOpener`).

The plaintext is frames: DGRAM, and PING/PONG, which prove the round trip.
UDP is *up* once a PONG came back, and stays up while every PING is
answered within `probe_timeout`. A side sending datagrams adds a PING when
its last PONG is older than CHECK_INTERVAL, so a network that starts
dropping UDP is found within about a second; then datagrams go on the
stream transport (the driver asks `usable`) and the client probes again
every RETRY_INTERVAL.
"""

from __future__ import annotations

import struct
from enum import Enum

from roam.core import frames as fr
from roam.core.rtt import RttEstimator
from roam.crypto.noise import CipherState
from roam.crypto.records import TAG, DatagramOpener, RecordSealer
from roam.errors import FramingError, ProtocolError

PACKET_DATA = 0x01
HEADER = struct.Struct("!B8sQ")
MIN_PACKET = HEADER.size + TAG
# Largest UDP payload over IPv4 (65535 - 20 - 8); beyond, datagrams take the stream.
MAX_PACKET = 65507
# A PING unanswered this long means UDP does not get through; at least
# this much, however small the RTT, since a busy Python peer can pause.
PROBE_FLOOR = 1.0
PROBE_RTTS = 3.0
# While datagrams flow, a PING rides along when the last PONG is this old.
CHECK_INTERVAL = 1.0
# After UDP failed, the client tries again this often (a firewall may open,
# a NAT may have forgotten us); each try is one small packet.
RETRY_INTERVAL = 5.0
# The client's keepalive while UDP is up: NATs forget UDP bindings after 30 s
# and more (RFC 4787 REQ-5 asks for 2 min; carriers often use 30 s).
KEEPALIVE_INTERVAL = 15.0
_MAX_PINGS = 8


class DatagramState(Enum):
    PROBING = "probing"  # no answer yet
    UP = "up"
    DOWN = "down"  # a probe went unanswered: datagrams take the stream


def parse_packet(packet: bytes | memoryview) -> tuple[bytes, int, memoryview]:
    """(session tag, counter, ciphertext); FramingError for what is not one of ours."""
    if len(packet) < MIN_PACKET:
        raise FramingError(f"datagram packet of {len(packet)} bytes; the least is {MIN_PACKET}")
    kind, tag, counter = HEADER.unpack_from(packet)
    if kind != PACKET_DATA:
        raise FramingError(f"unknown datagram packet kind {kind:#04x}")
    return tag, counter, memoryview(packet)[HEADER.size:]


class DatagramPath:
    """One side's UDP state for a session; the driver owns the socket and the clock."""

    def __init__(self, tag: bytes, send: CipherState, receive: CipherState, now: float, *,
                 is_client: bool) -> None:
        if len(tag) != 8:
            raise ValueError(f"a session tag is 8 bytes, got {len(tag)}")
        self.tag = tag
        self.is_client = is_client
        self._ad = bytes([PACKET_DATA]) + tag
        self._sealer = RecordSealer(send, now)
        self._opener = DatagramOpener(receive)
        self.state = DatagramState.PROBING
        self.rtt = RttEstimator()
        self._pings: dict[int, float] = {}
        self._token = 0
        self._last_pong: float | None = None
        self._last_sent = now
        self._failed_at: float | None = None
        self._out: list[bytes] = []  # probes and answers for the driver to send
        self.packets_sent = 0
        self.packets_received = 0
        self.datagrams_sent = 0
        self.datagrams_received = 0
        self.rejected = 0

    # ---- sending -----------------------------------------------------------

    @property
    def usable(self) -> bool:
        return self.state is DatagramState.UP

    def probe_timeout(self) -> float:
        srtt = self.rtt.srtt
        return PROBE_FLOOR if srtt is None else max(PROBE_FLOOR, PROBE_RTTS * srtt)

    def seal(self, payload: bytes, now: float) -> bytes:
        sealed = self._sealer.seal(payload, now, ad=self._ad)
        self.packets_sent += 1
        self._last_sent = now
        # The record header's length is redundant in a datagram: keep kind,
        # tag and counter.
        return self._ad + sealed[4:]

    def datagram(self, frame: bytes, now: float) -> bytes | None:
        """The packet for one encoded DGRAM frame, or None: send it on the stream."""
        if not self.usable:
            return None
        parts = [frame]
        if (not self._pings and self._last_pong is not None
                and now - self._last_pong >= CHECK_INTERVAL):
            parts.append(self._ping(now))
        payload = b"".join(parts)
        if len(payload) + MIN_PACKET > MAX_PACKET:
            return None
        self.datagrams_sent += 1
        return self.seal(payload, now)

    def restart(self, now: float) -> None:
        """Client: the socket moved to another path; prove it before trusting it."""
        self.state = DatagramState.PROBING
        self._pings.clear()
        self._last_pong = None
        self._failed_at = None
        self._probe(now)

    def _ping(self, now: float) -> bytes:
        self._token += 1
        if len(self._pings) >= _MAX_PINGS:
            self._pings.pop(next(iter(self._pings)))
        self._pings[self._token] = now
        return fr.encode(fr.Ping(self._token))

    def _probe(self, now: float) -> None:
        self._out.append(self.seal(self._ping(now), now))

    def packets_to_send(self) -> list[bytes]:
        out, self._out = self._out, []
        return out

    # ---- receiving ---------------------------------------------------------

    def receive(self, packet: bytes | memoryview, now: float) -> tuple[list[fr.Dgram], bool]:
        """(DGRAM frames, newest) of one packet; newest: its counter is the highest yet,
        so its source is where the peer is now.

        FramingError or CryptoError for a packet that is not authentic (count
        it, drop it); ProtocolError for an authentic one that breaks the rules.
        """
        tag, counter, ciphertext = parse_packet(packet)
        if tag != self.tag:
            raise FramingError("datagram packet for another session")
        try:
            plaintext, newest = self._opener.open(counter, ciphertext, self._ad)
        except Exception:
            self.rejected += 1
            raise
        self.packets_received += 1
        datagrams: list[fr.Dgram] = []
        for frame in fr.decode_frames(plaintext):
            if isinstance(frame, fr.Dgram):
                datagrams.append(frame)
            elif isinstance(frame, fr.Ping):
                self._out.append(self.seal(fr.encode(fr.Pong(frame.token)), now))
            elif isinstance(frame, fr.Pong):
                self._pong(frame.token, now)
            else:
                raise ProtocolError(f"{type(frame).__name__.upper()} in a datagram packet")
        if self.state is not DatagramState.UP and not self._pings:
            # The peer reaches us; find out whether we reach it (the server
            # learns of UDP this way, and of a way back after a failure).
            self._probe(now)
        self.datagrams_received += len(datagrams)
        return datagrams, newest

    def _pong(self, token: int, now: float) -> None:
        sent = self._pings.pop(token, None)
        if sent is None:
            return
        self.rtt.sample(now - sent)
        self._pings = {t: s for t, s in self._pings.items() if s > sent}
        self._last_pong = now
        self._failed_at = None
        self.state = DatagramState.UP

    # ---- time --------------------------------------------------------------

    def get_timer(self) -> float | None:
        deadlines: list[float] = []
        if self._pings:
            deadlines.append(min(self._pings.values()) + self.probe_timeout())
        if self.is_client:
            if self.state is DatagramState.DOWN and self._failed_at is not None:
                deadlines.append(self._failed_at + RETRY_INTERVAL)
            elif self.state is DatagramState.UP:
                deadlines.append(self._last_sent + KEEPALIVE_INTERVAL)
        return min(deadlines) if deadlines else None

    def handle_timer(self, now: float) -> None:
        if self._pings and now >= min(self._pings.values()) + self.probe_timeout():
            self._pings.clear()
            self.state = DatagramState.DOWN
            self._failed_at = now
            self._last_pong = None
        if not self.is_client or self._pings:
            return
        if self.state is DatagramState.DOWN and self._failed_at is not None:
            if now >= self._failed_at + RETRY_INTERVAL:
                self._failed_at = now
                self._probe(now)
        elif self.state is DatagramState.UP and now >= self._last_sent + KEEPALIVE_INTERVAL:
            self._probe(now)

    def statistics(self) -> dict[str, object]:
        return {"state": self.state.value, "rtt_ms": None if self.rtt.srtt is None
                else round(self.rtt.srtt * 1000, 1), "packets_sent": self.packets_sent,
                "packets_received": self.packets_received,
                "datagrams_sent": self.datagrams_sent,
                "datagrams_received": self.datagrams_received, "rejected": self.rejected}
