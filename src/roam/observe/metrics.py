"""Prometheus metrics of one daemon, in a registry of its own.

Most of what a daemon can tell is read at scrape time from the status it
builds for `roam status --json` (a custom collector: nothing is counted twice
and nothing costs anything between scrapes). Handovers are events: a counter
and a histogram of their stalls are fed as they happen, on the client by
`Client.on_handover` and on the server by each session's driver.

The supervisor of `roam server --workers N` serves one set for the server
as a whole (`role` "supervisor"): each worker counts its own handovers and
ended sessions as a single server does and reports them in its status
(`counters`, `DaemonMetrics.counters`); the supervisor sums the workers'
figures (`sum_figures`) and renders them from its status like the rest.

Labels stay bounded: `path` is a configured path's name, `relay` a
configured uplink's address, `reason` a refusal code from a fixed list,
`worker` a worker's index (below `--workers`); never a peer's identity or
address, which anyone could multiply.
"""

from __future__ import annotations

import dataclasses
import operator
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from roam.core import events as ev
from roam.errors import ConfigError
from roam.transport.client import Client, HandoverRecord
from roam.transport.driver import SessionDriver

# "supervisor": the server of workers as a whole (roam.workers).
ROLES = ("client", "server", "supervisor", "relay", "registrar")
KINDS = ("hard", "soft")

# Stall buckets, in seconds, for what handovers measure (docs/benchmarks.md,
# network lab): a soft handover 0 ms; a hard one on link down 4-6 ms to the
# joined standby, 66 ms with a RESUME round trip on a 60 ms cell path, 270 ms
# when it must connect first; a silent black hole is found by liveness after
# its 2 s floor (2069 ms). So: fine steps below 100 ms, where the standby
# works, and 2 and 2.5 s around the liveness floor; past 5 s the session was
# detached rather than handed over, and +Inf says so.
STALL_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 2.5, 5.0)

Status = Mapping[str, Any]
# The stall histogram's upper bounds as prometheus-client writes them (for
# these values, Python's repr of the float).
_BOUNDS = (*(repr(float(b)) for b in STALL_BUCKETS), "+Inf")


class Handovers:
    """Handovers by kind and a histogram of their stalls, fed as they happen."""

    def __init__(self, registry: CollectorRegistry) -> None:
        # `reason` is free text (a path name, an error): as a label it would
        # grow without bound, so the event log and `roam status` keep it.
        self.total = Counter("roam_handovers", "Handovers of a session to another transport",
                             ["kind"], registry=registry)
        self.stall = Histogram("roam_handover_stall_seconds",
                               "How long a handover held the session's traffic up",
                               ["kind"], buckets=STALL_BUCKETS, registry=registry)
        for kind in KINDS:  # both series exist from the start, at 0
            self.total.labels(kind)
            self.stall.labels(kind)

    def record(self, kind: str, stall_s: float) -> None:
        kind = kind if kind in KINDS else "hard"
        self.total.labels(kind).inc()
        self.stall.labels(kind).observe(max(0.0, stall_s))

    def snapshot(self) -> dict[str, dict[str, Any]]:
        """Per kind: the stall histogram's cumulative `buckets` by upper bound
        (as Prometheus writes it, "+Inf" last), its `sum` and `count` (the
        handovers: `record` feeds both at once)."""
        out: dict[str, dict[str, Any]] = {
            kind: {"count": 0.0, "sum": 0.0, "buckets": {}} for kind in KINDS}
        for family in self.stall.collect():
            for sample in family.samples:
                each = out.get(sample.labels.get("kind", ""))
                if each is None:
                    continue
                if sample.name.endswith("_bucket"):
                    each["buckets"][sample.labels["le"]] = sample.value
                elif sample.name.endswith("_sum"):
                    each["sum"] = sample.value
                elif sample.name.endswith("_count"):
                    each["count"] = sample.value
        return out


@dataclasses.dataclass
class _Totals:
    bytes_sent: int = 0
    bytes_received: int = 0
    resumes: int = 0

    def add(self, driver: SessionDriver) -> None:
        stats = driver.session.statistics()
        self.bytes_sent += stats.bytes_sent
        self.bytes_received += stats.bytes_received
        self.resumes += stats.resumes


class ServerSessions:
    """The server's sessions, watched from their first moment to their end.

    Sessions come and go, so counters summed over the live ones would fall
    when one ends: each ended session's last figures are kept here.

    What the server can know of a handover: that the session moved to
    another transport (a SWITCH, soft or hard as the client flagged it) or
    resumed on a new one (a RESUME, counted hard: a planned move without a
    joined standby ends in a RESUME too, and only the client knows it was
    planned). It cannot see the client's links, so the stall it records is
    how long it held the session with no transport: from noticing the loss
    itself to the handover, and 0 when the client moved before the server
    noticed anything. The stall applications see is the client's figure.
    """

    def __init__(self, handovers: Handovers) -> None:
        self.handovers = handovers
        self.live: set[SessionDriver] = set()
        self.ended = _Totals()

    def watch(self, driver: SessionDriver) -> None:
        self.live.add(driver)
        lost_at: list[float | None] = [None]
        lost, switched, resumed = driver.on_transport_lost, driver.on_switched, driver.on_resumed

        def on_lost(reason: str) -> None:
            if lost_at[0] is None:
                lost_at[0] = driver.loop.time()
            lost(reason)

        def handed_over(kind: str) -> None:
            since, lost_at[0] = lost_at[0], None
            self.handovers.record(kind, driver.loop.time() - since if since is not None else 0.0)

        def on_switched(e: ev.TransportSwitched) -> None:
            switched(e)
            if e.previous is not None and e.previous != e.transport:
                handed_over("hard" if e.hard else "soft")

        def on_resumed(frames: int) -> None:
            resumed(frames)
            handed_over("hard")

        driver.on_transport_lost = on_lost
        driver.on_switched = on_switched
        driver.on_resumed = on_resumed
        driver.closed.add_callback(lambda: self._ended(driver))

    def _ended(self, driver: SessionDriver) -> None:
        if driver in self.live:
            self.live.discard(driver)
            self.ended.add(driver)

    def totals(self) -> _Totals:
        out = dataclasses.replace(self.ended)
        for driver in self.live:
            out.add(driver)
        return out


class StatusCollector(Collector):
    """Metric families from the daemon's last status, read at scrape time."""

    def __init__(self, families: Callable[[Status], Iterable[Metric]]) -> None:
        self._families = families
        self.latest: Status = {}

    def collect(self) -> Iterable[Metric]:
        return list(self._families(self.latest))


class DaemonMetrics:
    """One daemon's metrics: its registry, its collector, its event counters."""

    def __init__(self, role: str) -> None:
        if role not in ROLES:
            raise ConfigError(f"no metrics for a {role!r}: one of {', '.join(ROLES)}")
        self.role = role
        self.registry = CollectorRegistry(auto_describe=False)
        self.handovers = Handovers(self.registry) if role in ("client", "server") else None
        self.sessions = (ServerSessions(self.handovers)
                         if self.handovers is not None and role == "server" else None)
        families: dict[str, Callable[[Status], Iterable[Metric]]] = {
            "client": client_families, "server": self._server_families,
            "supervisor": supervisor_families, "relay": relay_families,
            "registrar": registrar_families}
        self._collector = StatusCollector(families[role])
        self.registry.register(self._collector)

    def watch_client(self, client: Client) -> None:
        """Count `client`'s handovers, after whatever it reports them to."""
        handovers, previous = self.handovers, client.on_handover
        if handovers is None:
            raise ConfigError(f"a {self.role} has no client handovers to count")

        def record(r: HandoverRecord) -> None:
            previous(r)
            handovers.record(r.kind, r.stall_ms / 1000)

        client.on_handover = record

    def watch_session(self, driver: SessionDriver) -> None:
        """A server's new session: its handovers, and its figures once it ends."""
        if self.sessions is None:
            raise ConfigError(f"a {self.role} has no sessions to watch")
        self.sessions.watch(driver)

    def counters(self) -> dict[str, Any]:
        """A server's event counters and its sessions' totals, ended ones
        included, for its status: what a supervisor sums over its workers
        (roam.workers). Each figure only grows."""
        if self.sessions is None or self.handovers is None:
            raise ConfigError(f"a {self.role} has no sessions to count")
        totals = self.sessions.totals()
        return {"bytes_sent": totals.bytes_sent, "bytes_received": totals.bytes_received,
                "resumes": totals.resumes, "handovers": self.handovers.snapshot()}

    def render(self, status: object) -> bytes:
        """The Prometheus text for this daemon, given its status now."""
        self._collector.latest = status if isinstance(status, Mapping) else {}
        return generate_latest(self.registry)

    def _server_families(self, status: Status) -> Iterator[Metric]:
        totals = self.sessions.totals() if self.sessions is not None else _Totals()
        yield from server_families(status, totals.bytes_sent, totals.bytes_received,
                                   totals.resumes)


def server_families(status: Status, sent: float, received: float,
                    resumes: float) -> Iterator[Metric]:
    """A server's families but its handovers, with its sessions' totals."""
    sessions = _list(status.get("sessions"))
    yield _gauge("roam_sessions", "Sessions the server holds", len(sessions))
    yield _gauge("roam_channels", "Application sockets carried, over all sessions",
                 sum(len(_list(_mapping(s).get("channel_ids"))) for s in sessions))
    # A server's sessions are not tied to one of its paths: "all".
    yield _bytes("Application bytes carried", [("all", sent, received)])
    yield _counter("roam_resumes", "Sessions resumed on a new transport", resumes)
    uplinks = _mapping(status.get("uplinks"))
    idle = GaugeMetricFamily("roam_uplinks_idle", "Idle uplinks open to each relay",
                             labels=["relay"])
    taken = CounterMetricFamily("roam_uplinks_taken", "Uplinks a relay spliced a client to",
                                labels=["relay"])
    for relay, counts in sorted(uplinks.items()):
        each = _mapping(counts)
        idle.add_metric([str(relay)], _number(each.get("idle")))
        taken.add_metric([str(relay)], _number(each.get("taken")))
    yield idle
    yield taken
    yield _refusals(status)


def supervisor_families(status: Status) -> Iterator[Metric]:
    """`roam server --workers N` as one server, from the supervisor's status:
    sessions as every worker lists them, counters as `sum_figures` added the
    workers' `counters` up."""
    counters = _mapping(status.get("counters"))
    yield from server_families(status, _number(counters.get("bytes_sent")),
                               _number(counters.get("bytes_received")),
                               _number(counters.get("resumes")))
    handovers = _mapping(counters.get("handovers"))
    total = CounterMetricFamily("roam_handovers", "Handovers of a session to another transport",
                                labels=["kind"])
    stall = HistogramMetricFamily("roam_handover_stall_seconds",
                                  "How long a handover held the session's traffic up",
                                  labels=["kind"])
    for kind in KINDS:
        each = _mapping(handovers.get(kind))
        buckets = _mapping(each.get("buckets"))
        total.add_metric([kind], _number(each.get("count")))
        # The bounds are STALL_BUCKETS in every worker (the same code): as
        # prometheus-client writes them, so a worker's figures line up.
        stall.add_metric([kind], [(le, _number(buckets.get(le))) for le in _BOUNDS],
                         sum_value=_number(each.get("sum")))
    yield total
    yield stall
    up = GaugeMetricFamily("roam_worker_up", "1 while the worker process runs",
                           labels=["worker"])
    held = GaugeMetricFamily("roam_worker_sessions", "Sessions the worker holds",
                             labels=["worker"])
    for worker in (_mapping(w) for w in _list(status.get("workers"))):
        index = str(int(_number(worker.get("index"))))
        up.add_metric([index], 1.0 if worker.get("alive") else 0.0)
        if "sessions" in worker:
            held.add_metric([index], _number(worker.get("sessions")))
    yield up
    yield held


def sum_figures(each: Iterable[object]) -> dict[str, Any]:
    """Numbers added up key by key, into nested mappings: the workers'
    `counters` and `refused` into the server's. What is not a number or a
    mapping is left out."""
    return _merge(each, operator.add)


def max_figures(each: Iterable[object]) -> dict[str, Any]:
    """The largest of each number, key by key: of two snapshots of figures
    that only grow, the later one, whichever arrived last."""
    return _merge(each, max)


def _merge(each: Iterable[object], op: Callable[[Any, Any], Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for figures in each:
        for key, value in _mapping(figures).items():
            if isinstance(value, Mapping):
                out[key] = _merge([out.get(key), value], op)
            elif _is_number(value) and not isinstance(out.get(key), Mapping):
                out[key] = op(out[key], value) if key in out else value
    return out


def client_families(status: Status) -> Iterator[Metric]:
    servers = [_mapping(s) for s in _list(status.get("servers"))] or [status]
    live = [s for s in servers if _mapping(s.get("session")).get("state") not in (None, "closed")]
    yield _gauge("roam_sessions", "Sessions to servers, open now", len(live))
    yield _gauge("roam_channels", "Application sockets carried, over all sessions",
                 sum(len(_list(s.get("channels"))) for s in servers))
    per_path: dict[str, tuple[float, float]] = {}
    up = GaugeMetricFamily("roam_path_up", "1 when the path's link is up", labels=["path"])
    active = GaugeMetricFamily("roam_path_active", "1 on the path carrying the session",
                               labels=["path"])
    rtt = GaugeMetricFamily("roam_path_rtt_seconds", "Smoothed round-trip time on the path",
                            labels=["path"])
    for server in servers:
        paths = [_mapping(p) for p in _list(server.get("paths"))]
        if not paths:  # no --path: the session leaves by the default route
            stats = _mapping(server.get("session"))
            paths = [{"name": "default", "bytes_sent": stats.get("bytes_sent"),
                      "bytes_received": stats.get("bytes_received")}]
        for path in paths:
            name = str(path.get("name"))
            sent, received = per_path.get(name, (0.0, 0.0))
            per_path[name] = (sent + _number(path.get("bytes_sent")),
                              received + _number(path.get("bytes_received")))
    # Up, active and RTT are the first server's view (every server's session
    # uses the same links).
    for path in (_mapping(p) for p in _list(servers[0].get("paths"))):
        name = str(path.get("name"))
        up.add_metric([name], 1.0 if path.get("up") else 0.0)
        active.add_metric([name], 1.0 if path.get("active") else 0.0)
        if path.get("rtt_ms") is not None:
            rtt.add_metric([name], _number(path.get("rtt_ms")) / 1000)
    yield _bytes("Application bytes carried, by the path they went on",
                 [(name, s, r) for name, (s, r) in sorted(per_path.items())])
    yield up
    yield active
    yield rtt
    yield _counter("roam_resumes", "Sessions resumed on a new transport",
                   sum(_number(_mapping(s.get("session")).get("resumes")) for s in servers))


def relay_families(status: Status) -> Iterator[Metric]:
    yield _counter("roam_relay_splices", "Transports spliced to their next hop",
                   _number(status.get("spliced")))
    yield _gauge("roam_relay_splices_active", "Splices carrying bytes now",
                 _number(status.get("active")))
    yield _gauge("roam_relay_pipes", "Kernel pipes held for splicing", _number(status.get("pipes")))
    spliced = CounterMetricFamily("roam_relay_bytes", "Bytes spliced (up: toward the server)",
                                  labels=["direction"])
    spliced.add_metric(["up"], _number(status.get("bytes_up")))
    spliced.add_metric(["down"], _number(status.get("bytes_down")))
    yield spliced
    yield _refusals(status)
    # Uplinks are kept per server identity, which an `--admit any` relay
    # lets anyone make: totals only.
    uplinks = _mapping(status.get("uplinks"))
    yield _gauge("roam_relay_uplinks_idle", "Idle uplinks from servers, waiting for clients",
                 sum(_number(n) for n in uplinks.values()))
    yield _gauge("roam_relay_uplink_servers", "Servers with an idle uplink here", len(uplinks))


def registrar_families(status: Status) -> Iterator[Metric]:
    yield _gauge("roam_registrar_records", "Units whose registration is held",
                 _number(status.get("units")))
    yield _counter("roam_registrar_registrations", "Registrations accepted",
                   _number(status.get("registrations")))
    yield _counter("roam_registrar_lookups", "Lookups answered", _number(status.get("lookups")))
    yield _counter("roam_registrar_lookups_found", "Lookups that found the unit",
                   _number(status.get("found")))
    yield _gauge("roam_registrar_connections", "Units connected now",
                 _number(status.get("connections")))
    yield _refusals(status)


def _refusals(status: Status) -> Metric:
    # The reasons are the wire's own codes (a relay's Status, a registrar's
    # Code): a fixed set.
    family = CounterMetricFamily("roam_refusals", "Requests refused, by reason",
                                 labels=["reason"])
    for reason, n in sorted(_mapping(status.get("refused")).items()):
        family.add_metric([str(reason)], _number(n))
    return family


def _bytes(doc: str, rows: list[tuple[str, float, float]]) -> Metric:
    family = CounterMetricFamily("roam_bytes", doc, labels=["direction", "path"])
    for path, sent, received in rows:
        family.add_metric(["sent", path], sent)
        family.add_metric(["received", path], received)
    return family


def _gauge(name: str, doc: str, value: float) -> Metric:
    return GaugeMetricFamily(name, doc, value=value)


def _counter(name: str, doc: str, value: float) -> Metric:
    return CounterMetricFamily(name, doc, value=value)


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _number(value: object) -> float:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else 0.0


def _list(value: object) -> list[Any]:
    return value if isinstance(value, list) else []


def _mapping(value: object) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}


__all__ = ["STALL_BUCKETS", "DaemonMetrics", "Handovers", "ServerSessions", "StatusCollector",
           "max_figures", "server_families", "sum_figures", "supervisor_families"]
