"""Path policy end to end with the emulated link driver: real daemons on loopback.

Both paths leave by loopback; the emulated driver tells the client what the
links are doing, as `roam link` sets it, and the client must hand over as
design section 5 says, with every byte of a running conversation intact.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

from .harness import ENV, EchoResult, Keys, Procs, echo_conversation


def _roam(*args: str) -> Any:
    out = subprocess.run([sys.executable, "-m", "roam", *args], capture_output=True, text=True,
                         timeout=30, env=ENV)
    if out.returncode != 0:
        raise AssertionError(f"roam {' '.join(args)}: {out.stderr}")
    return out.stdout


def _status(ctl: Path) -> dict[str, Any]:
    result: dict[str, Any] = json.loads(_roam("status", "--json", "--control", str(ctl)))
    return result


def _wait_handovers(ctl: Path, n: int, timeout: float = 15.0) -> list[dict[str, Any]]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        handovers: list[dict[str, Any]] = _status(ctl)["handovers"]
        if len(handovers) >= n:
            return handovers
        time.sleep(0.1)
    raise AssertionError(f"expected {n} handovers: {_status(ctl)['handovers']}")


def _client(procs: Procs, keys: Keys, sport: int, echo: int, tmp: Path,
            paths: list[str], dwell: float) -> Path:
    ctl = tmp / "client.sock"
    argv = [sys.executable, "-m", "roam", "client", "--server", f"127.0.0.1:{sport}",
            "--server-key", keys.server_pub, "--key", str(keys.client_key),
            "--forward", f"127.0.0.1:0=127.0.0.1:{echo}", "--links", "emulated",
            "--dwell", str(dwell), "--control", str(ctl), "--event-log",
            str(tmp / "events.jsonl")]
    for p in paths:
        argv += ["--path", p]
    proc = procs.start("client", argv, ready="forward")
    (tmp / "forward").write_text(proc.ready.split("=")[0].rsplit(":", 1)[1])
    return ctl


def _conversation(tmp: Path, total: int) -> tuple[EchoResult, threading.Thread]:
    r = EchoResult()
    port = int((tmp / "forward").read_text())
    t = threading.Thread(target=echo_conversation, args=(port, total, 9, r), daemon=True)
    t.start()
    return r, t


def _events(tmp: Path) -> list[dict[str, Any]]:
    lines = (tmp / "events.jsonl").read_text().splitlines()
    return [e for e in map(json.loads, lines) if e["kind"] == "handover"]


def test_link_down_hard_then_back_soft_after_dwell(tmp_path: Path) -> None:
    keys = Keys.make(tmp_path / "keys")
    with Procs(tmp_path) as procs:
        echo = procs.service("echo")
        _, sport = procs.server(keys, f"127.0.0.1:{echo}")
        ctl = _client(procs, keys, sport, echo, tmp_path,
                      ["wifi:dev=lo,priority=10,kind=wifi", "cell:dev=lo,priority=20,"
                       "kind=cellular"], dwell=1.0)
        r, t = _conversation(tmp_path, 64 << 20)
        time.sleep(0.3)
        _roam("link", "wifi", "down", "--control", str(ctl))
        first = _wait_handovers(ctl, 1)[0]
        assert (first["kind"], first["origin"], first["target"]) == ("hard", "wifi", "cell")
        assert first["reason"] == "wifi is down"
        _roam("link", "wifi", "up", "--control", str(ctl))
        up_at = time.monotonic()
        back = _wait_handovers(ctl, 2)[1]
        assert time.monotonic() - up_at >= 1.0  # not before the dwell time
        assert (back["kind"], back["origin"], back["target"]) == ("soft", "cell", "wifi")
        assert back["frames_resent"] == 0
        assert "usable for" in back["reason"]
        t.join(120)
        assert r.error is None
        assert r.mismatch_at is None
        assert r.received == 64 << 20
        status = _status(ctl)
        assert status["active_path"] == "wifi"
        assert [(e["type"], e["to"]) for e in _events(tmp_path)] == [("hard", "cell"),
                                                                      ("soft", "wifi")]
        assert all("stall_ms" in e for e in _events(tmp_path))


def test_falling_signal_soft_before_the_link_dies(tmp_path: Path) -> None:
    keys = Keys.make(tmp_path / "keys")
    with Procs(tmp_path) as procs:
        echo = procs.service("echo")
        _, sport = procs.server(keys, f"127.0.0.1:{echo}")
        ctl = _client(procs, keys, sport, echo, tmp_path,
                      ["wifi:dev=lo,priority=10,min-signal=20", "cell:dev=lo,priority=20"],
                      dwell=1.0)
        _roam("link", "wifi", "signal=60", "--control", str(ctl))
        r, t = _conversation(tmp_path, 32 << 20)
        time.sleep(0.3)
        _roam("link", "wifi", "signal=12", "--control", str(ctl))
        handover = _wait_handovers(ctl, 1)[0]
        assert (handover["kind"], handover["target"]) == ("soft", "cell")
        assert "signal 12 fell below min-signal 20" in handover["reason"]
        assert handover["frames_resent"] == 0
        t.join(120)
        assert r.received == 32 << 20
        assert r.mismatch_at is None


def test_idle_time_billed_path_left_for_per_byte(tmp_path: Path) -> None:
    keys = Keys.make(tmp_path / "keys")
    with Procs(tmp_path) as procs:
        echo = procs.service("echo")
        _, sport = procs.server(keys, f"127.0.0.1:{echo}")
        ctl = _client(procs, keys, sport, echo, tmp_path,
                      ["circuit:dev=lo,priority=10,kind=circuit,billing=time,idle-switch=2",
                       "cell:dev=lo,priority=20,billing=byte"], dwell=0.5)
        assert _status(ctl)["active_path"] == "circuit"
        started = time.monotonic()
        handover = _wait_handovers(ctl, 1)[0]
        assert time.monotonic() - started >= 1.5
        assert (handover["kind"], handover["target"]) == ("soft", "cell")
        assert "billed per time and idle" in handover["reason"]
        time.sleep(1.5)  # still idle: no switch back to the time-billed path
        assert len(_status(ctl)["handovers"]) == 1


def test_path_flapping_faster_than_dwell_causes_no_flapping(tmp_path: Path) -> None:
    keys = Keys.make(tmp_path / "keys")
    with Procs(tmp_path) as procs:
        echo = procs.service("echo")
        _, sport = procs.server(keys, f"127.0.0.1:{echo}")
        ctl = _client(procs, keys, sport, echo, tmp_path,
                      ["wifi:dev=lo,priority=10", "cell:dev=lo,priority=20"], dwell=2.0)
        _roam("link", "wifi", "down", "--control", str(ctl))
        _wait_handovers(ctl, 1)
        for _ in range(6):  # up for 0.5 s at a time, well under the 2 s dwell
            _roam("link", "wifi", "up", "--control", str(ctl))
            time.sleep(0.5)
            _roam("link", "wifi", "down", "--control", str(ctl))
            time.sleep(0.3)
        status = _status(ctl)
        assert len(status["handovers"]) == 1
        assert status["active_path"] == "cell"


def test_switch_pins_until_auto(tmp_path: Path) -> None:
    keys = Keys.make(tmp_path / "keys")
    with Procs(tmp_path) as procs:
        echo = procs.service("echo")
        _, sport = procs.server(keys, f"127.0.0.1:{echo}")
        ctl = _client(procs, keys, sport, echo, tmp_path,
                      ["wifi:dev=lo,priority=10", "cell:dev=lo,priority=20"], dwell=0.5)
        out = _roam("switch", "cell", "--control", str(ctl))
        assert out.startswith("soft handover wifi -> cell")
        time.sleep(1.5)  # past the dwell: pinned, so no return to wifi
        assert _status(ctl)["active_path"] == "cell"
        _roam("switch", "auto", "--control", str(ctl))
        back = _wait_handovers(ctl, 2)[1]
        assert back["target"] == "wifi"
        bad = subprocess.run([sys.executable, "-m", "roam", "switch", "lte", "--control",
                              str(ctl)], capture_output=True, text=True, timeout=30, env=ENV)
        assert bad.returncode == 1
        assert "no path 'lte' (known: wifi, cell)" in bad.stderr
