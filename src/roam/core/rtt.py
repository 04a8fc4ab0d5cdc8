"""Round-trip time estimate and retransmission timeout, as RFC 6298 computes them."""

from __future__ import annotations

# RFC 6298 2.1: before any sample the RTO is 1 s.
INITIAL_RTO = 1.0
# Linux's TCP_RTO_MIN (200 ms) rather than RFC 6298's 1 s: a session layer on
# top of TCP needs no slack for delayed ACKs on the peer.
MIN_RTO = 0.2
MAX_RTO = 60.0
_ALPHA = 1 / 8
_BETA = 1 / 4
# Clock granularity G of RFC 6298: our timers are asyncio's, about 1 ms.
_G = 0.001


class RttEstimator:
    __slots__ = ("latest", "min_rtt", "rto", "rttvar", "srtt")

    def __init__(self) -> None:
        self.srtt: float | None = None
        self.rttvar = 0.0
        self.latest: float | None = None
        self.min_rtt: float | None = None
        # Kept up to date by sample(): sessions read it on every timer check.
        self.rto = INITIAL_RTO

    def new_path(self) -> None:
        """The transport moved: the least RTT is learnt again (the smoothed
        RTT and the RTO carry on, and adapt within a few samples)."""
        self.min_rtt = None

    def sample(self, rtt: float) -> None:
        rtt = max(rtt, 0.0)
        self.latest = rtt
        self.min_rtt = rtt if self.min_rtt is None else min(self.min_rtt, rtt)
        if self.srtt is None:
            self.srtt = rtt
            self.rttvar = rtt / 2
        else:
            self.rttvar = (1 - _BETA) * self.rttvar + _BETA * abs(self.srtt - rtt)
            self.srtt = (1 - _ALPHA) * self.srtt + _ALPHA * rtt
        self.rto = min(MAX_RTO, max(MIN_RTO, self.srtt + max(_G, 4 * self.rttvar)))
