"""Collectors and event counters of roam.observe.metrics, parsed back as Prometheus would."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from roam.core import events as ev
from roam.core.session import Session, SessionConfig
from roam.crypto.keys import generate_private_key
from roam.crypto.noise import CipherState
from roam.crypto.records import RecordOpener, RecordSealer
from roam.errors import ConfigError
from roam.observe.metrics import STALL_BUCKETS, DaemonMetrics, max_figures, sum_figures
from roam.transport.client import Client, ClientConfig, HandoverRecord
from roam.transport.driver import SessionDriver


def _samples(text: bytes) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    out = {}
    for family in text_string_to_metric_families(text.decode()):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def _path(name: str, active: bool, up: bool, sent: int, received: int,
          rtt: float | None) -> dict[str, Any]:
    return {"name": name, "active": active, "up": up, "bytes_sent": sent,
            "bytes_received": received, "rtt_ms": rtt}


CLIENT = {"server": "default", "address": "127.0.0.1:4433", "active_path": "wifi",
          "session": {"state": "attached", "bytes_sent": 300, "bytes_received": 500,
                      "resumes": 2, "srtt": 0.01},
          "channels": [1, 3],
          "paths": [_path("wifi", True, True, 100, 200, 12.5),
                    _path("cell", False, False, 200, 300, None)],
          "handovers": []}


def test_client_families_from_status_and_handovers_from_events() -> None:
    metrics = DaemonMetrics("client")
    client = Client(ClientConfig("127.0.0.1", 1, bytes(32), generate_private_key(),
                                 SessionConfig()))
    seen: list[HandoverRecord] = []
    client.on_handover = seen.append
    metrics.watch_client(client)
    client.on_handover(HandoverRecord("hard", "link down", "wifi", "cell", 66.4, 3, 0.0))
    client.on_handover(HandoverRecord("soft", "roam switch", "cell", "wifi", 0.0, 0, 1.0))
    assert len(seen) == 2  # what was hooked before still hears every one
    s = _samples(metrics.render(CLIENT))
    assert s[("roam_sessions", ())] == 1
    assert s[("roam_channels", ())] == 2
    assert s[("roam_bytes_total", (("direction", "sent"), ("path", "wifi")))] == 100
    assert s[("roam_bytes_total", (("direction", "received"), ("path", "cell")))] == 300
    assert s[("roam_path_up", (("path", "cell"),))] == 0
    assert s[("roam_path_active", (("path", "wifi"),))] == 1
    assert s[("roam_path_rtt_seconds", (("path", "wifi"),))] == pytest.approx(0.0125)
    assert s[("roam_resumes_total", ())] == 2
    assert s[("roam_handovers_total", (("kind", "hard"),))] == 1
    assert s[("roam_handovers_total", (("kind", "soft"),))] == 1
    assert s[("roam_handover_stall_seconds_count", (("kind", "hard"),))] == 1
    assert s[("roam_handover_stall_seconds_sum", (("kind", "hard"),))] == pytest.approx(0.0664)
    assert s[("roam_handover_stall_seconds_bucket", (("kind", "hard"), ("le", "0.1")))] == 1
    assert s[("roam_handover_stall_seconds_bucket", (("kind", "hard"), ("le", "0.05")))] == 0


def test_client_without_paths_and_with_several_servers() -> None:
    bare = {**CLIENT, "paths": [], "server": "a"}
    other = {**bare, "server": "b", "session": None, "channels": []}
    s = _samples(DaemonMetrics("client").render({**bare, "servers": [bare, other]}))
    assert s[("roam_sessions", ())] == 1
    assert s[("roam_bytes_total", (("direction", "sent"), ("path", "default")))] == 300


def _driver() -> SessionDriver:
    now = asyncio.get_running_loop().time()
    return SessionDriver(Session(is_client=False, now=now, config=SessionConfig()),
                         RecordSealer(CipherState("AESGCM", bytes(32)), now),
                         RecordOpener(CipherState("AESGCM", bytes(32))), name="test")


def test_server_counts_handovers_resumes_and_keeps_ended_sessions() -> None:
    async def main() -> None:
        metrics = DaemonMetrics("server")
        driver = _driver()
        lost: list[str] = []
        driver.on_transport_lost = lost.append
        metrics.watch_session(driver)
        driver.on_switched(ev.TransportSwitched(1, 0, "peer switched", 0, hard=False))
        driver.on_switched(ev.TransportSwitched(1, None, "first", 0))  # no handover
        driver.on_transport_lost("reset")
        await asyncio.sleep(0.05)
        driver.on_resumed(4)
        assert lost == ["reset"]
        driver.session.resumes = 1  # as the core counts the resume it reported
        status = {"listening": "x", "sessions": [{"id": "00", "channel_ids": [1]}],
                  "uplinks": {"127.0.0.1:4434": {"idle": 2, "taken": 5}}}
        s = _samples(metrics.render(status))
        assert s[("roam_sessions", ())] == 1
        assert s[("roam_channels", ())] == 1
        assert s[("roam_handovers_total", (("kind", "soft"),))] == 1
        assert s[("roam_handovers_total", (("kind", "hard"),))] == 1
        assert s[("roam_handover_stall_seconds_sum", (("kind", "hard"),))] >= 0.04
        assert s[("roam_handover_stall_seconds_sum", (("kind", "soft"),))] == 0
        assert s[("roam_resumes_total", ())] == 1
        assert s[("roam_uplinks_idle", (("relay", "127.0.0.1:4434"),))] == 2
        assert s[("roam_uplinks_taken_total", (("relay", "127.0.0.1:4434"),))] == 5
        driver.closed.set()
        await asyncio.sleep(0)
        await asyncio.sleep(0)
        s = _samples(metrics.render({"sessions": []}))
        assert s[("roam_sessions", ())] == 0
        assert s[("roam_resumes_total", ())] == 1  # a counter does not fall when it ends
    asyncio.run(main())


def test_server_refusals_by_reason() -> None:
    status = {"sessions": [], "refused": {"NOT_AUTHORIZED": 2, "BUSY": 5}}
    s = _samples(DaemonMetrics("server").render(status))
    assert s[("roam_refusals_total", (("reason", "NOT_AUTHORIZED"),))] == 2
    assert s[("roam_refusals_total", (("reason", "BUSY"),))] == 5


def _without_created(text: bytes) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {k: v for k, v in _samples(text).items() if not k[0].endswith("_created")}


def test_the_supervisor_renders_its_workers_as_one_server() -> None:
    """Two workers' figures, added up by the supervisor, render as one server
    that saw every event would."""

    async def main() -> None:
        one, workers = DaemonMetrics("server"), [DaemonMetrics("server") for _ in range(2)]
        for i, (kind, stall) in enumerate([("hard", 0.003), ("soft", 0.0), ("hard", 0.3),
                                           ("hard", 7.0)]):
            for metrics in (one, workers[i % 2]):
                assert metrics.handovers is not None
                metrics.handovers.record(kind, stall)
        drivers = [_driver() for _ in range(3)]
        for n, driver in enumerate(drivers):
            driver.session.channels.bytes_sent, driver.session.resumes = 1000 * (n + 1), n
            one.watch_session(driver)
            workers[n % 2].watch_session(driver)
        drivers[0].closed.set()  # an ended session still counts
        await asyncio.sleep(0)
        await asyncio.sleep(0)
        sessions = [{"id": f"{n}", "channel_ids": [1, 2]} for n in (1, 2)]
        figures = [{"refused": {"BUSY": 1}, "counters": w.counters()} for w in workers]
        total = sum_figures(figures)
        status = {"sessions": sessions, "uplinks": {}, "refused": total["refused"],
                  "counters": total["counters"],
                  "workers": [{"index": 0, "alive": True, "sessions": 1},
                              {"index": 1, "alive": False}]}
        mine = _without_created(DaemonMetrics("supervisor").render(status))
        alone = _without_created(one.render({**status, "refused": {"BUSY": 2}}))
        for key, value in alone.items():
            assert mine[key] == pytest.approx(value), key
        assert mine[("roam_handovers_total", (("kind", "hard"),))] == 3
        assert mine[("roam_handover_stall_seconds_bucket",
                     (("kind", "hard"), ("le", "5.0")))] == 2
        assert mine[("roam_resumes_total", ())] == 3
        assert mine[("roam_bytes_total", (("direction", "sent"), ("path", "all")))] == 6000
        assert mine[("roam_refusals_total", (("reason", "BUSY"),))] == 2
        assert mine[("roam_worker_up", (("worker", "0"),))] == 1
        assert mine[("roam_worker_up", (("worker", "1"),))] == 0
        assert mine[("roam_worker_sessions", (("worker", "0"),))] == 1
    asyncio.run(main())


def test_workers_figures_are_summed_and_the_latest_kept() -> None:
    total = sum_figures([{"a": 1, "b": {"c": 2.5}, "d": "x"}, {"a": 2, "b": {"c": 1}},
                         None, {"b": 3, "a": True}, {"e": [1]}])
    assert total == {"a": 3, "b": {"c": 3.5}}
    older, newer = {"a": 1, "b": {"c": 2}}, {"a": 4, "b": {"c": 2, "d": 1}}
    for pair in ([older, newer], [newer, older]):  # answers in either order
        assert max_figures(pair) == newer


def test_relay_families_keep_labels_bounded() -> None:
    status = {"role": "relay", "identity": "x", "spliced": 7, "active": 2, "pipes": 4,
              "bytes_up": 1000, "bytes_down": 2000, "refused": {"NOT_ADMITTED": 3},
              "uplinks": {"id1": 2, "id2": 1}}
    s = _samples(DaemonMetrics("relay").render(status))
    assert s[("roam_relay_splices_total", ())] == 7
    assert s[("roam_relay_splices_active", ())] == 2
    assert s[("roam_relay_bytes_total", (("direction", "up"),))] == 1000
    assert s[("roam_refusals_total", (("reason", "NOT_ADMITTED"),))] == 3
    assert s[("roam_relay_uplinks_idle", ())] == 3
    assert s[("roam_relay_uplink_servers", ())] == 2
    assert not any("id1" in str(labels) for _, labels in s)


def test_registrar_families() -> None:
    status = {"units": 3, "registrations": 9, "lookups": 4, "found": 2,
              "refused": {"not-allowed": 1}, "connections": 1}
    s = _samples(DaemonMetrics("registrar").render(status))
    assert s[("roam_registrar_records", ())] == 3
    assert s[("roam_registrar_registrations_total", ())] == 9
    assert s[("roam_registrar_lookups_total", ())] == 4
    assert s[("roam_refusals_total", (("reason", "not-allowed"),))] == 1


def test_garbage_status_renders_zeros_not_an_error() -> None:
    roles = ("client", "server", "supervisor", "relay", "registrar")
    for role in roles:
        text = DaemonMetrics(role).render(["not", "a", "dict"])
        assert b"roam_" in text
    bad = {"sessions": "x", "uplinks": [1], "paths": 5, "servers": [None], "refused": None,
           "counters": {"handovers": {"hard": {"buckets": [1]}, "soft": 3}},
           "workers": [None, {"index": "x"}]}
    for role in roles:
        DaemonMetrics(role).render(bad)


def test_each_daemon_has_its_own_registry() -> None:
    a, b = DaemonMetrics("client"), DaemonMetrics("client")
    assert a.handovers is not None
    assert b.handovers is not None
    a.handovers.record("hard", 0.2)
    assert _samples(b.render({}))[("roam_handovers_total", (("kind", "hard"),))] == 0


def test_misuse_is_a_config_error() -> None:
    with pytest.raises(ConfigError):
        DaemonMetrics("phone")
    with pytest.raises(ConfigError):
        DaemonMetrics("relay").watch_session(None)  # type: ignore[arg-type]
    with pytest.raises(ConfigError):
        DaemonMetrics("supervisor").counters()  # its workers count, not it


def test_buckets_cover_zero_to_five_seconds() -> None:
    assert list(STALL_BUCKETS) == sorted(STALL_BUCKETS)
    assert STALL_BUCKETS[0] <= 0.005
    assert STALL_BUCKETS[-1] == 5.0
