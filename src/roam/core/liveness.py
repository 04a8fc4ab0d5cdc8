"""Is the transport alive: PING and PONG, the RTT, and when silence means death.

A session pings its transport every `keepalive_interval` while it carries
data, every `idle_keepalive_interval` once idle, and every RTO while
something is unanswered and the peer is quiet, so that a dead path shows
quickly. Each PONG is an RTT sample (RFC 6298, roam.core.rtt). A transport
that brought nothing for the dead time (`dead_floor`, or `dead_rtos` RTOs
when the RTT is large, plus an idle keepalive when idle) is dead.

Sans-IO: every method that depends on time takes `now`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from roam.core.rtt import RttEstimator

if TYPE_CHECKING:
    from roam.core.sessionconfig import SessionConfig

# Pings outstanding at once; a silent path is declared dead long before more.
MAX_PINGS = 32


class Liveness:
    """One transport's pings, RTT and silence."""

    __slots__ = ("_pings", "_token", "last_ping", "last_received", "rtt")

    def __init__(self, now: float) -> None:
        self.rtt = RttEstimator()
        self._pings: dict[int, float] = {}  # token -> when sent
        self._token = 0
        self.last_received = now
        self.last_ping = now

    def new_transport(self, now: float) -> None:
        """The session moved to another transport: its pings are void, and
        its least RTT is learnt again."""
        self._pings.clear()
        self.rtt.new_path()
        self.last_received = now

    @property
    def waiting(self) -> bool:
        """A PING is unanswered."""
        return bool(self._pings)

    def ping(self, now: float) -> int:
        """A PING leaves now: its token."""
        self.last_ping = now
        self._token += 1
        if len(self._pings) >= MAX_PINGS:
            self._pings.pop(next(iter(self._pings)))
        self._pings[self._token] = now
        return self._token

    def pong(self, token: int, now: float) -> None:
        sent = self._pings.pop(token, None)
        if sent is not None:
            self.rtt.sample(now - sent)
            # Older pings were lost or overtaken; they will never count.
            self._pings = {t: s for t, s in self._pings.items() if s > sent}

    def dead_after(self, config: SessionConfig, idle: bool) -> float:
        # After every read and write (get_timer): comparisons, no max().
        dead = config.dead_rtos * self.rtt.rto
        if dead < config.dead_floor:
            dead = config.dead_floor
        return dead + idle_interval(config) if idle else dead

    def ping_interval(self, config: SessionConfig, idle: bool, unacked: bool) -> float:
        # While something is unanswered and the peer is quiet, probe every RTO
        # so a dead path shows quickly; otherwise a keepalive now and then.
        if (unacked or self._pings) and self.last_received < self.last_ping:
            return self.rtt.rto
        return idle_interval(config) if idle else config.keepalive_interval


    def deadline(self, config: SessionConfig, idle: bool, since: float, pinging: bool,
                 unacked: bool) -> float:
        """The transport's next deadline: dead when silent since the later of
        its last record and `since`; with `pinging`, its next PING if sooner.
        dead_after and ping_interval in one call: get_timer runs after every
        read and write, and a call costs more than the arithmetic."""
        rto = self.rtt.rto
        dead = config.dead_rtos * rto
        if dead < config.dead_floor:
            dead = config.dead_floor
        if idle:
            dead += idle_interval(config)
        heard = self.last_received
        at = (heard if heard > since else since) + dead
        if pinging:
            if (unacked or self._pings) and heard < self.last_ping:
                ping = self.last_ping + rto
            else:
                ping = self.last_ping + (idle_interval(config) if idle
                                         else config.keepalive_interval)
            if ping < at:
                at = ping
        return at


def idle_interval(config: SessionConfig) -> float:
    return max(config.keepalive_interval, config.idle_keepalive_interval)
