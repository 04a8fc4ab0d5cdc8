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
from roam.observe.metrics import STALL_BUCKETS, DaemonMetrics
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
    for role in ("client", "server", "relay", "registrar"):
        text = DaemonMetrics(role).render(["not", "a", "dict"])
        assert b"roam_" in text
    bad = {"sessions": "x", "uplinks": [1], "paths": 5, "servers": [None], "refused": None}
    for role in ("client", "server", "relay", "registrar"):
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


def test_buckets_cover_zero_to_five_seconds() -> None:
    assert list(STALL_BUCKETS) == sorted(STALL_BUCKETS)
    assert STALL_BUCKETS[0] <= 0.005
    assert STALL_BUCKETS[-1] == 5.0
