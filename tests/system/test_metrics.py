"""--metrics on every daemon, end to end: a registrar, a relay, a server with an
uplink to the relay registered at the registrar, and a client with two emulated
paths (one through the relay), all real processes on loopback, scraped over
HTTP while a conversation runs through a hard and a soft handover.

    client --wifi (via relay)--> relay ==uplink== server --> echo
       \\---cell (direct)----------------------->/     \\--> registrar
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from roam.crypto.keys import encode_key, generate_private_key, public_key, write_private_key

from .harness import ENV, EchoResult, Keys, Proc, Procs, _read_line, echo_conversation
from .test_relay import both, relay_keys

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def scrape(url: str) -> Samples:
    with urllib.request.urlopen(url + "metrics", timeout=10) as answer:
        text = answer.read().decode()
    out: Samples = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def status(url: str) -> Any:
    with urllib.request.urlopen(url + "status.json", timeout=10) as answer:
        return json.loads(answer.read())


def wait_for(what: str, check: Callable[[], bool], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.1)
    raise AssertionError(f"waited {timeout} s for {what}")


def metrics_url(proc: Proc) -> str:
    assert proc.ready.startswith("metrics http://127.0.0.1:"), proc.ready
    return proc.ready.split(" ", 1)[1]


def roam(*args: str) -> None:
    out = subprocess.run([sys.executable, "-m", "roam", *args], capture_output=True, text=True,
                         timeout=30, env=ENV)
    assert out.returncode == 0, out.stderr


def stall_count(s: Samples, kind: str) -> float:
    return s.get(("roam_handover_stall_seconds_count", (("kind", kind),)), 0.0)


def handovers(s: Samples, kind: str) -> float:
    return s.get(("roam_handovers_total", (("kind", kind),)), 0.0)


class Units:
    """The four daemons, each with --metrics 127.0.0.1:0, and the echo service."""

    def __init__(self, procs: Procs, tmp: Path) -> None:
        keys = Keys.make(tmp / "keys")
        rkey, rpub = relay_keys(keys.dir)
        servers = keys.dir / "servers"
        servers.write_text(f"{keys.server_pub} server\n")
        reg = generate_private_key()
        write_private_key(keys.dir / "registrar.key", reg)
        self.echo = procs.service("echo")
        self.registrar = procs.start("registrar", [
            sys.executable, "-m", "roam", "registrar", "--listen", "127.0.0.1:0",
            "--key", str(keys.dir / "registrar.key"), "--control", str(tmp / "registrar.sock"),
            "--metrics", "127.0.0.1:0"], ready="metrics")
        reg_port = _read_line(self.registrar.popen, 10).rsplit(":", 1)[1]
        self.relay = procs.start("relay", [
            sys.executable, "-m", "roam", "relay", "--listen", "127.0.0.1:0", "--key", str(rkey),
            "--admit-keys", str(both(keys.dir, keys.authorized, servers)),
            "--control", str(tmp / "relay.sock"), "--metrics", "127.0.0.1:0"], ready="metrics")
        rport = int(_read_line(self.relay.popen, 10).rsplit(":", 1)[1])
        self.server = procs.start("server", [
            sys.executable, "-m", "roam", "server", "--listen", "127.0.0.1:0",
            "--uplink", f"127.0.0.1:{rport},key={rpub}", "--key", str(keys.server_key),
            "--authorized-keys", str(keys.authorized), "--allow", f"127.0.0.1:{self.echo}",
            "--registrar", f"127.0.0.1:{reg_port},key={encode_key(public_key(reg))}",
            "--control", str(tmp / "server.sock"), "--no-udp", "--metrics", "127.0.0.1:0"],
            ready="metrics")
        sport = int(_read_line(self.server.popen, 10).rsplit(":", 1)[1])
        self.relay.wait_log("relay: uplink of")
        self.control = tmp / "client.sock"
        self.client = procs.start("client", [
            sys.executable, "-m", "roam", "client", "--server", f"127.0.0.1:{sport}",
            "--server-key", keys.server_pub, "--key", str(keys.client_key),
            "--relay", f"r1=127.0.0.1:{rport},key={rpub}",
            "--path", "wifi:dev=lo,priority=10,kind=wifi,via=r1",
            "--path", "cell:dev=lo,priority=20,kind=cellular",
            "--links", "emulated", "--dwell", "1", "--no-udp", "--control", str(self.control),
            "--forward", f"127.0.0.1:0=127.0.0.1:{self.echo}", "--metrics", "127.0.0.1:0"],
            ready="metrics")
        forward = _read_line(self.client.popen, 20)
        assert forward.startswith("forward"), forward
        self.forward = int(forward.split("=")[0].rsplit(":", 1)[1])
        self.urls = {name: metrics_url(p) for name, p in (
            ("client", self.client), ("server", self.server), ("relay", self.relay),
            ("registrar", self.registrar))}

    def talk(self, total: int) -> tuple[EchoResult, threading.Thread]:
        result = EchoResult()
        t = threading.Thread(target=echo_conversation, args=(self.forward, total, 5, result),
                             kwargs={"deadline": 120, "chunk": 64 * 1024}, daemon=True)
        t.start()
        wait_for("the conversation to start", lambda: result.received > 1 << 20 or result.done)
        return result, t


def check_stalls_match_status(url: str) -> None:
    """The histogram's sums are the stall_ms figures `roam status` lists."""
    s = scrape(url)
    records = status(url)["handovers"]
    for kind in ("hard", "soft"):
        mine = [r["stall_ms"] for r in records if r["kind"] == kind]
        assert stall_count(s, kind) == len(mine)
        total = s[("roam_handover_stall_seconds_sum", (("kind", kind),))]
        assert total == pytest.approx(sum(mine) / 1000, abs=1e-3)


def test_every_daemon_counts_what_it_did(tmp_path: Path) -> None:
    with Procs(tmp_path) as procs:
        units = Units(procs, tmp_path)
        urls = units.urls
        wait_for("the registration", lambda: scrape(urls["registrar"]).get(
            ("roam_registrar_registrations_total", ()), 0) >= 1)
        before = {name: scrape(url) for name, url in urls.items()}
        assert before["registrar"][("roam_registrar_records", ())] >= 1
        assert before["relay"][("roam_relay_splices_total", ())] >= 1  # wifi goes via r1
        assert before["client"][("roam_path_active", (("path", "wifi"),))] == 1
        assert before["server"][("roam_sessions", ())] == 1
        result, talk = units.talk(24 << 20)

        roam("link", "wifi", "down", "--control", str(units.control))
        wait_for("the client's hard handover",
                 lambda: handovers(scrape(urls["client"]), "hard") > handovers(
                     before["client"], "hard"))
        wait_for("the server's handover", lambda: sum(
            handovers(scrape(urls["server"]), k) - handovers(before["server"], k)
            for k in ("hard", "soft")) >= 1)
        after_hard = {name: scrape(url) for name, url in urls.items()}
        assert stall_count(after_hard["client"], "hard") == stall_count(
            before["client"], "hard") + 1
        assert after_hard["client"][("roam_path_active", (("path", "cell"),))] == 1
        check_stalls_match_status(urls["client"])

        roam("link", "wifi", "up", "--control", str(units.control))
        roam("switch", "wifi", "--control", str(units.control))
        wait_for("the client's soft handover",
                 lambda: handovers(scrape(urls["client"]), "soft") > handovers(
                     after_hard["client"], "soft"))
        wait_for("the server's second handover", lambda: sum(
            handovers(scrape(urls["server"]), k) - handovers(after_hard["server"], k)
            for k in ("hard", "soft")) >= 1)
        wait_for("the relay's second splice", lambda: scrape(urls["relay"])[
            ("roam_relay_splices_total", ())] > before["relay"][("roam_relay_splices_total", ())])
        check_stalls_match_status(urls["client"])
        server = scrape(urls["server"])
        assert sum(stall_count(server, k) for k in ("hard", "soft")) == sum(
            handovers(server, k) for k in ("hard", "soft"))
        talk.join(120)
        assert result.error is None, result.error
        assert result.received == 24 << 20
        end = {name: scrape(url) for name, url in urls.items()}
        for name in ("client", "server"):
            sent = sum(v for (n, labels), v in end[name].items()
                       if n == "roam_bytes_total" and ("direction", "sent") in labels)
            assert sent >= 24 << 20, name
        assert end["relay"][("roam_relay_bytes_total", (("direction", "up"),))] > 0
        for proc in (units.client, units.server, units.relay, units.registrar):
            assert proc.popen.poll() is None, proc.log_text()[-2000:]
