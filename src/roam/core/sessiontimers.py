"""The session's clock: keepalives, dead transports, stalls and the deadline.

What the session does when time passes (`get_timer`, `handle_timer`) and
what it asks the driver to read of TCP beneath (`delivery_due`,
`delivery_read`): PINGs on each transport, a transport silent past its dead
time let go, the client's only transport given up once nothing came on it
and TCP delivered nothing (docs/protocol.md 8), and a stalled active
transport left for an answering standby (a black hole, 5.2). A part of
roam.core.session.Session, which holds the state it reads; sans-IO like it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from roam.core import events as ev
from roam.core import frames as fr
from roam.core.liveness import MAX_PINGS, idle_interval
from roam.core.replay import ReplayBuffer
from roam.core.sessionconfig import SessionConfig
from roam.core.states import SessionInput, SessionState, TransportState
from roam.core.transports import Transport
from roam.errors import CloseCode

if TYPE_CHECKING:
    from roam.core.channels import Channels

# PINGs and PONGs waiting in the control queue at most. They leave with the
# next records, so an honest peer never gets near this: only a transport
# whose writes stall while the peer keeps pinging (a peer that sends and
# never reads) would have us queue a PONG per PING it sends, without end.
# The peer waits for at most MAX_PINGS answers, so more queued ones answer
# pings it has forgotten.
MAX_PROBES = MAX_PINGS


class SessionTimers:
    """The time-driven part of the session (mixed into Session, whose slots
    hold the state below)."""

    # Its own state (set by Session.__init__): whether the session is idle,
    # since when it is active again, its last reliable frame either way, and
    # when to look again for a standby after a stall found none.
    __slots__ = ("_active_since", "_idle", "_last_activity", "_stall_retry")
    _idle: bool
    _active_since: float
    _last_activity: float
    _stall_retry: float

    # The session's state this part reads and moves (roam.core.session).
    config: SessionConfig
    is_client: bool
    state: SessionState
    replay: ReplayBuffer
    channels: Channels
    _events: list[ev.Event]
    _transports: dict[int, Transport]
    _active: Transport | None
    _ack_progress: float
    _ack_due: float | None
    _detached_since: float | None

    if TYPE_CHECKING:
        def transport_lost(self, now: float, tid: int | None = None,
                           why: str = "lost") -> None: ...

        def switch(self, tid: int, now: float, *, reinject: bool = False,
                   reason: str = "asked", heard: float | None = None) -> None: ...

        def _closed(self, code: CloseCode, reason: str, event: SessionInput) -> None: ...

    def _note_activity(self, now: float) -> None:
        if self._idle:
            # Woken up: the peer may have been pinging only now and then, so
            # silence counts from here, not from its last idle ping.
            self._idle = False
            self._active_since = now
        self._last_activity = now

    @property
    def idle(self) -> bool:
        """No reliable frame either way for `idle_after`: slow keepalive."""
        return self._idle

    def _stall_after(self, t: Transport) -> float:
        srtt = t.live.rtt.srtt
        floor = self.config.stall_floor
        return floor if srtt is None else max(floor, self.config.stall_rtts * srtt)

    def _alone(self) -> Transport | None:
        """Client: its only transport, attached, while TCP beneath reports
        what it delivered (roam.core.delivery)."""
        if not self.is_client or len(self._transports) != 1:
            return None
        t = self._active
        if t is None or not t.delivery.reports or self.state is not SessionState.ATTACHED:
            return None
        if self._idle and not self.replay.unacked and t.live.last_ping <= t.live.last_received:
            # Idle, and no keepalive unanswered: nothing to watch (and no
            # readings every few hundred ms on an idle mobile unit).
            return None
        return t

    def _quiet_since(self, t: Transport) -> float:
        """Since when nothing came on `t` and TCP beneath delivered nothing,
        counted at the earliest from when it became the active one (a
        standby hears only its keepalives' answers)."""
        return max(t.live.last_received, t.delivery.at, self._ack_progress)

    def _alone_limit(self, t: Transport) -> float:
        # Four RTTs on a long path (a satellite's 600 ms): TCP's own ACK of
        # a keepalive takes a round trip to come.
        return max(self.config.alone_dead_after, self._stall_after(t))

    def _stall_since(self, t: Transport) -> float:
        """Since when nothing shows that `t` delivers: the peer's last new
        ACK, or its TCP's (roam.core.delivery), whichever is later."""
        at = t.delivery.at
        return at if at > self._ack_progress else self._ack_progress

    def delivery_due(self, now: float) -> int | None:
        """The transport whose delivery count the driver should read now
        (then `delivery_read`), if any: the active one while a stall may be
        building on it."""
        alone = self._alone()
        if alone is not None:
            due = alone.delivery.due(self._quiet_since(alone), self._alone_limit(alone),
                                     self.config.delivery_interval)
            return alone.id if due is not None and due <= now else None
        active = self._active
        if (active is None or not self.replay.unacked or self.state is not SessionState.ATTACHED
                or len(self._transports) < 2):
            return None
        due = active.delivery.due(self._stall_since(active), self._stall_after(active),
                                  self.config.delivery_interval)
        return active.id if due is not None and due <= now else None

    def delivery_read(self, tid: int, now: float, count: int | None) -> None:
        """What the layer beneath transport `tid` delivered so far (TCP's
        tcpi_delivered), None if nothing of ours is in flight there. The
        driver calls it once when the transport comes, if it can read it at
        all, and then whenever `delivery_due` says."""
        t = self._transports.get(tid)
        if t is not None:
            t.delivery.reading(now, count)

    def delivery_unknown(self, tid: int) -> None:
        """The layer beneath transport `tid` no longer says what it delivered:
        its stall counts from the session's ACKs alone."""
        t = self._transports.get(tid)
        if t is not None:
            t.delivery.reports = False

    def _standby(self, now: float) -> Transport | None:
        """The standby to move to if the active transport stalls: one that
        answered recently (within a keepalive and two of its RTOs)."""
        best: Transport | None = None
        for t in self._transports.values():
            if t.state is not TransportState.STANDBY or t.live.rtt.srtt is None:
                continue
            fresh = idle_interval(self.config) if self._idle else self.config.keepalive_interval
            if now - t.live.last_received <= fresh + 2 * t.live.rtt.rto and (
                    best is None or t.live.last_received > best.live.last_received):
                best = t
        return best

    def get_timer(self) -> float | None:
        # Called after every read and write: plain comparisons, no min().
        state = self.state
        if state is SessionState.CLOSED:
            return None
        if state is SessionState.DETACHED:
            limit = self.config.detached_timeout
            if limit is None or self._detached_since is None:
                return None
            return self._detached_since + limit
        config, idle = self.config, self._idle
        unacked = bool(self.replay.unacked)
        attached = state is SessionState.ATTACHED
        active_since, active = self._active_since, self._active
        deadline: float | None = None
        for t in self._transports.values():
            st = t.state
            at = t.live.deadline(config, idle, active_since,
                                 attached and (st is TransportState.ACTIVE
                                               or st is TransportState.STANDBY),
                                 unacked and t is active)
            if deadline is None or at < deadline:
                deadline = at
        ack = self._ack_due
        if ack is not None and (attached or state is SessionState.DRAINING) and (
                deadline is None or ack < deadline):
            deadline = ack
        alone = self._alone()
        if alone is not None:
            since, after = self._quiet_since(alone), self._alone_limit(alone)
            at = since + after
            read = alone.delivery.due(since, after, self.config.delivery_interval)
            if read is not None and read < at:
                at = read
            if deadline is None or at < deadline:
                deadline = at
        if (unacked and active is not None and state is SessionState.ATTACHED
                and len(self._transports) > 1):
            since, after = self._stall_since(active), self._stall_after(active)
            stall = max(since + after, self._stall_retry)
            if deadline is None or stall < deadline:
                deadline = stall
            read = active.delivery.due(since, after, self.config.delivery_interval)
            if read is not None and read < deadline:
                deadline = read
        return deadline

    def handle_timer(self, now: float) -> None:
        if self.state is SessionState.DETACHED:
            limit = self.config.detached_timeout
            if (limit is not None and self._detached_since is not None
                    and now - self._detached_since >= limit):
                self._closed(CloseCode.TIMEOUT, f"no transport for {limit:g} s",
                             SessionInput.DETACHED_TIMEOUT)
            return
        if self.state is SessionState.CLOSED:
            return
        config = self.config
        if not self._idle and now - self._last_activity >= config.idle_after:
            self._idle = True
        for t in list(self._transports.values()):
            if self._transports.get(t.id) is not t:
                continue  # let go of by an earlier one's loss
            live = t.live
            silence = now - max(live.last_received, self._active_since)
            if silence >= live.dead_after(config, self._idle):
                self.transport_lost(now, t.id, f"silent for {silence:.1f} s")
                self._events.append(ev.TransportDead(silence, t.id))
                continue
            if self.state is SessionState.ATTACHED and t.usable and now - live.last_ping >= \
                    live.ping_interval(config, self._idle,
                                       bool(self.replay.unacked) and t is self._active):
                if t.probes < MAX_PROBES:  # else our writes stall: it could not leave
                    t.probes += 1
                    t.control.append(fr.encode(fr.Ping(live.ping(now))))
                else:
                    live.last_ping = now
        alone = self._alone()
        if alone is not None and now - self._quiet_since(alone) >= self._alone_limit(alone):
            # The last transport: nothing heard on it and nothing delivered
            # beneath while something of ours was in flight. Its path is gone.
            silence = now - self._quiet_since(alone)
            self.transport_lost(now, alone.id)
            self._events.append(ev.TransportDead(silence, alone.id))
            return
        active = self._active
        if (active is not None and self.replay.unacked and self.state is SessionState.ATTACHED
                and now - self._stall_since(active) >= self._stall_after(active)
                and now >= self._stall_retry and len(self._transports) > 1):
            standby = self._standby(now)
            if standby is None:
                # No standby answers now; one may at its next PONG.
                self._stall_retry = now + self.config.stall_floor
            else:
                # Nothing acknowledged for several RTTs, nothing delivered
                # beneath either, while the standby answers: a black hole on
                # the active path. Its frames go again on the standby, which
                # carries the session from now.
                self.switch(standby.id, now, reinject=True,
                            reason=f"transport {active.id} stalled "
                                   f"{(now - self._stall_since(active)) * 1000:.0f} ms")
        if not self.replay.pending and not self.replay.unacked:
            # Nothing in flight: an idle session gives back its deques
            # until it carries data again.
            self.replay.release_if_empty()
            self.channels.release_rr_if_empty()
