"""A session's settings and the statistics it reports (docs/protocol.md 10).

Every constant of the session layer that a deployment or a test may change
is a field of SessionConfig, with the measurement or the RFC behind its
default beside it; SessionStatistics is what `roam status` shows of one
session.
"""

from __future__ import annotations

from dataclasses import dataclass

from roam.core.compress import AUTO_MIN_RTT

__all__ = ["SessionConfig", "SessionStatistics"]


@dataclass(frozen=True, slots=True)
class SessionConfig:
    # 8 MiB covers the bandwidth-delay product of 1 Gbit/s at 60 ms RTT; it
    # is also the most a session holds for an outage however long it lasts.
    replay_limit: int = 8 * 1024 * 1024
    # Per-channel receive window: 1 MiB keeps one stream at ~170 Mbit/s on a
    # 50 ms path, and bounds what a non-reading application costs us.
    channel_window: int = 1024 * 1024
    # Application bytes a channel buffers before its reading pauses.
    channel_send_buffer: int = 256 * 1024
    # Largest record plaintext we build; records this size keep per-record
    # costs (AEAD call, length prefix, Python overhead) under 1% of the data.
    max_record_payload: int = 128 * 1024
    # A PING this often measures the RTT and keeps NAT bindings warm while the
    # session carries data; mosh uses 3 s, we want a dead path found sooner.
    keepalive_interval: float = 1.0
    # A session that sent and received no reliable frame for this long is idle
    # (an interactive one typing now and then is not) ...
    idle_after: float = 30.0
    # ... and then pings this often (never more often than keepalive_interval),
    # and its transport is dead after this plus the dead time below. Every ping
    # costs the server (10,000 idle sessions pinged every second kept one
    # server CPU 78% busy) and wakes a mobile unit's radio; NAT bindings of TCP
    # last hours (RFC 5382: at least 2 h 4 min), so this is about finding a
    # silent black hole on an idle session within about 12 s. A link driver's
    # link-down event is acted on at once either way.
    idle_keepalive_interval: float = 10.0
    # A transport is dead after this much silence at least, however small the
    # RTT: a loaded Python peer can pause for hundreds of ms (GC, big writes).
    dead_floor: float = 2.0
    # ... and after this many RTOs when the RTT is large.
    dead_rtos: float = 4.0
    # How long a detached session waits for a resume before it closes
    # (None: forever). The client keeps trying; the server gives up.
    detached_timeout: float | None = None
    max_channels: int = 4096
    # An ACK rides on any record going the other way; alone, it waits until
    # this much arrived (1/32 of the peer's replay buffer, so the peer never
    # stalls on it) ...
    ack_bytes: int = 256 * 1024
    # ... or this long, far below any RTO, so it never looks like a loss.
    ack_delay: float = 0.005
    # --compress auto leaves paths with a least RTT under this uncompressed
    # (roam.core.compress.AUTO_MIN_RTT says why).
    auto_compress_min_rtt: float = AUTO_MIN_RTT
    # With a standby transport, the active one is stalled when data is
    # outstanding and nothing was acknowledged for this many smoothed RTTs of
    # it, and at least `stall_floor` seconds, and TCP beneath delivered
    # nothing in that time either (roam.core.delivery): its unacknowledged
    # frames are then sent again on the standby, which becomes the active one.
    stall_rtts: float = 4.0
    # A loaded Python peer acknowledges late now and then (a GC pause, a long
    # write): on loopback under bulk load, with the server's CPU shared with
    # a busy loop, the longest gap between ACK advances was 24 ms and the
    # p99.9 13 ms (bench/stall.py, docs/performance.md "Stall floor"), while
    # 4 RTTs of such a path are 3-24 ms. 150 ms is six times the worst gap:
    # a pause is not taken for a black hole, and a black hole is found in a
    # fraction of the 2 s dead time.
    stall_floor: float = 0.15
    # While a stall may be building, the driver reads the delivery count of
    # TCP beneath the active transport this often (roam.core.delivery): a
    # path that delivers shows within two readings, well inside stall_floor.
    delivery_interval: float = 0.03
    # Client, with no other transport to move to: the last one is dead when
    # nothing came on it and TCP beneath (roam.core.delivery) delivered
    # nothing of what it had in flight (data, ACKs or a keepalive) for this
    # long, and four of its RTTs, instead of after 2 s of silence
    # (`dead_floor`). By then TCP's own first two retransmissions (Linux's
    # TCP_RTO_MIN, 200 ms, then 400 ms) have gone unanswered: no lost
    # segment looks like that, a path that is gone does (both units moved at
    # once, docs/mobility.md), and the resume that follows asks the
    # registrars. A paused peer's kernel still acknowledges, so a pause
    # never counts.
    alone_dead_after: float = 0.6


@dataclass(frozen=True, slots=True)
class SessionStatistics:
    state: str
    srtt: float | None
    rto: float
    channels: int
    replay_bytes: int
    bytes_sent: int
    bytes_received: int
    frames_resent: int
    resumes: int
    # Datagrams carried on the stream transport (UDP's own count is apart).
    datagrams_sent: int
    datagrams_received: int
    # This side's compression of its sending direction ("off" when the
    # handshake did not negotiate it, else "auto" or "zstd:LEVEL").
    compression: str
    # DATA payload bytes as carried in frames, after compression; bytes_sent
    # and bytes_received count the application's bytes, before it. Their
    # quotient is the compression ratio.
    payload_bytes_sent: int
    payload_bytes_received: int
    # Moves of this side's sending from one transport to another.
    switches: int
    # Switches of both units that crossed (claim 17), settled by the rule.
    crossings: int
