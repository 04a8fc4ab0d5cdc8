"""Relays in the network lab (root): an inside server behind a firewall, a
relay in a DMZ, a chain of three (figures 3, 4, 6 and 7 of the invention).

    mobile ==wifi (RTT ~5 ms)==  router == server   (drops every inbound connection)
    mobile ==cell (RTT ~60 ms, NAT)==>  |
                                        +== relay1, relay2, relay3   (each a DMZ)

The server keeps uplinks to the last relay and listens nowhere; the client's
two paths (wifi and cell) both go through the relays. A 100 MiB echo
conversation (100 MiB up and 100 MiB down at once) runs through a forward to
a service beside the server while wifi goes down and comes back and a relay
is killed and started again; every byte must come back in order.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from roam.crypto.keys import encode_key, generate_private_key, public_key, write_private_key
from roam.lab.netlab import NetLab
from tests.conftest import require

from .harness import SERVICES, Keys
from .test_lab_handover import LabRoam
from .test_survival import _report

pytestmark = pytest.mark.root

MIB = 1 << 20
TRANSFER = int(os.environ.get("ROAM_LAB_RELAY_MIB", "100")) * MIB
ECHO_PORT, FORWARD_PORT, RELAY_PORT, SERVER_PORT = 7007, 7100, 7400, 7000
MARKER = b"roam-plaintext-marker/"  # what the application writes, to look for on the wire


@pytest.fixture
def lab() -> Iterator[NetLab]:
    require(os.geteuid() == 0, "the network lab needs root")
    with NetLab(wifi_delay_ms=2.5, cell_delay_ms=30, relays=3) as lab:
        lab.firewall(True)
        yield lab


class RelayLab(LabRoam):
    """Relays in their namespaces, the server inside, the client on `mobile`;
    status, waits, logs and the application as LabRoam has them."""

    def __init__(self, lab: NetLab, tmp: Path, relays: int) -> None:
        self.lab, self.tmp = lab, tmp
        self.keys = Keys.make(tmp / "keys")
        self.relay_keys: list[tuple[Path, str]] = []
        admitted = self.keys.dir / "admitted"
        admitted.write_text(f"{self.keys.client_pub} laptop\n{self.keys.server_pub} inside\n")
        self.admitted = admitted
        for i in range(1, relays + 1):
            key = generate_private_key()
            write_private_key(self.keys.dir / f"relay{i}.key", key)
            self.relay_keys.append((self.keys.dir / f"relay{i}.key", encode_key(public_key(key))))
        self.relays: dict[int, subprocess.Popen[Any]] = {}
        self.starts = dict.fromkeys(range(1, relays + 1), 0)
        self.control = tmp / "client.sock"

    def address(self, i: int) -> str:
        return f"{self.lab.addresses[f'relay{i}']}:{RELAY_PORT}"

    def start_relay(self, i: int) -> None:
        self.starts[i] += 1
        key, _ = self.relay_keys[i - 1]
        self.relays[i] = self._run(f"relay{i}", f"relay{i}-{self.starts[i]}", [
            sys.executable, "-m", "roam", "relay", "--listen", self.address(i), "--key",
            str(key), "--admit-keys", str(self.admitted),
            "--control", str(self.tmp / f"relay{i}.sock")])

    def kill_relay(self, i: int) -> None:
        proc = self.relays.pop(i)
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)

    def start_through(self, route: tuple[int, ...], dwell: float = 1.0) -> None:
        """The relays, the service and the server (uplinks to the last relay
        of `route`), then the client with wifi and cell both through `route`."""
        for i in sorted(set(route)):
            self.start_relay(i)
        self._run("server", "echo", [sys.executable, str(SERVICES), "echo", "--port",
                                     str(ECHO_PORT)])
        last = route[-1]
        self._run("server", "roam-server", [
            sys.executable, "-m", "roam", "server", "--key", str(self.keys.server_key),
            "--authorized-keys", str(self.keys.authorized),
            "--uplink", f"{self.address(last)},key={self.relay_keys[last - 1][1]}",
            "--allow", f"127.0.0.1:{ECHO_PORT}", "--control", str(self.tmp / "server.sock")])
        self.wait(lambda s: s["uplinks"], f"the server's uplinks on relay{last}",
                  control=self.tmp / f"relay{last}.sock")
        via = "+".join(f"r{i}" for i in route)
        relays = [x for i in sorted(set(route)) for x in (
            "--relay", f"r{i}={self.address(i)},key={self.relay_keys[i - 1][1]}")]
        self.client = self._run("mobile", "roam-client", [
            sys.executable, "-m", "roam", "client",
            # The inside server's address: nobody can reach it, and with an
            # uplink on the last relay nobody needs to.
            "--server", f"{self.lab.addresses['server']}:{SERVER_PORT}",
            "--server-key", self.keys.server_pub, "--key", str(self.keys.client_key), *relays,
            "--forward", f"127.0.0.1:{FORWARD_PORT}=127.0.0.1:{ECHO_PORT}",
            "--links", "linux", "--path", f"wifi:dev=wifi,priority=10,kind=wifi,via={via}",
            "--path", f"cell:dev=cell,priority=20,kind=cellular,via={via}",
            "--dwell", str(dwell), "--control", str(self.control)])
        self.wait(lambda s: s["active_path"] == "wifi" and s["session"], "session on wifi")

    def marker_exchange(self) -> None:
        """The application writes a recognisable text and reads its echo."""
        code = ("import socket,sys\n"
                f"s=socket.create_connection(('127.0.0.1',{FORWARD_PORT}),timeout=20)\n"
                f"m={MARKER!r}*200\n"
                "s.sendall(m)\nb=b''\n"
                "while len(b)<len(m):\n b+=s.recv(65536)\n"
                "print('echoed' if b==m else 'wrong')\n")
        assert self.lab.check("mobile", [sys.executable, "-c", code]).strip() == "echoed"


def capture(lab: NetLab, ns: str, iface: str, path: Path) -> subprocess.Popen[Any]:
    proc = lab.run(ns, ["tcpdump", "-i", iface, "-s", "0", "-U", "-n", "-w", str(path)],
                   stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    # tcpdump says "listening on" once the capture runs.
    assert proc.stderr is not None
    line = proc.stderr.readline()
    assert b"listening on" in line, line
    return proc


def stop(proc: subprocess.Popen[Any]) -> None:
    proc.terminate()
    proc.wait(10)


def _check(result: dict[str, Any], roam: RelayLab) -> None:
    assert result["error"] is None, roam.logs()
    assert result["mismatch_at"] is None, roam.logs()
    assert result["received"] == TRANSFER


def test_an_inside_server_behind_a_dmz_relay_survives_wifi_down_and_a_relay_restart(
        lab: NetLab, tmp_path: Path) -> None:
    require(Path("/usr/bin/tcpdump").exists(), "tcpdump is missing")
    roam = RelayLab(lab, tmp_path, relays=1)
    roam.start_through((1,))
    on_relay = capture(lab, "relay1", "rly", tmp_path / "relay.pcap")
    inside = capture(lab, "server", "lo", tmp_path / "inside.pcap")
    roam.marker_exchange()
    app = roam.app(TRANSFER, 21)
    app.wait_progress(TRANSFER // 8)
    stop(on_relay)
    stop(inside)
    # The relay carried the session and the marker, and saw neither in clear;
    # beside the server, where the service gets its bytes, the marker is plain.
    seen = (tmp_path / "relay.pcap").read_bytes()
    assert len(seen) > TRANSFER // 8
    assert MARKER not in seen
    assert MARKER in (tmp_path / "inside.pcap").read_bytes()

    lab.link_down("wifi")
    roam.wait(lambda s: len(s["handovers"]) >= 1, "hard handover to cell")
    app.wait_progress(TRANSFER * 3 // 8, timeout=300)
    lab.link_up("wifi")
    roam.wait(lambda s: len(s["handovers"]) >= 2, "soft handover back to wifi")
    app.wait_progress(TRANSFER * 5 // 8, timeout=300)
    before = app.received
    roam.kill_relay(1)
    killed_at = time.monotonic()
    time.sleep(1.0)  # the relay is gone a while: both paths fail
    roam.start_relay(1)
    app.wait_progress(before + 4 * MIB, timeout=120)
    back_after = time.monotonic() - killed_at
    result = app.finish()
    status = roam.status()
    _report("lab_relay_dmz", {
        "mib": TRANSFER // MIB, "back_after_relay_kill_s": round(back_after, 2),
        "app_longest_stall_ms": round(result["longest_stall"] * 1000),
        "handovers": [(h["kind"], h["target"], h["stall_ms"]) for h in status["handovers"]]})
    _check(result, roam)
    kinds = [(h["kind"], h["origin"], h["target"]) for h in status["handovers"]]
    assert kinds[:2] == [("hard", "wifi", "cell"), ("soft", "cell", "wifi")]
    assert len(kinds) >= 3  # the relay's restart was a path failure, survived
    assert status["session"]["resumes"] >= 1
    routes = {p["name"]: p["route"] for p in status["paths"]}
    assert routes == {"wifi": ["r1"], "cell": ["r1"]}
    # The server took no connection at all: every transport came by its uplinks.
    server_log = (tmp_path / "roam-server.log").read_text()
    assert "listening" not in server_log
    relay = roam.status(tmp_path / "relay1.sock")
    assert relay["spliced"] >= 1
    assert relay["uplinks"]


def test_a_chain_of_three_relays_survives_its_middle_relay_restarting(
        lab: NetLab, tmp_path: Path) -> None:
    roam = RelayLab(lab, tmp_path, relays=3)
    roam.start_through((1, 2, 3))
    app = roam.app(TRANSFER, 22)
    app.wait_progress(TRANSFER // 3)
    before = app.received
    roam.kill_relay(2)
    time.sleep(1.0)
    roam.start_relay(2)
    app.wait_progress(before + 4 * MIB, timeout=120)
    result = app.finish()
    status = roam.status()
    _report("lab_relay_chain", {
        "mib": TRANSFER // MIB, "app_longest_stall_ms": round(result["longest_stall"] * 1000),
        "handovers": [(h["kind"], h["target"], h["stall_ms"]) for h in status["handovers"]]})
    _check(result, roam)
    assert status["session"]["resumes"] >= 1
    assert {p["name"]: p["route"] for p in status["paths"]} == {
        "wifi": ["r1", "r2", "r3"], "cell": ["r1", "r2", "r3"]}
    # Each relay of the chain spliced this session's transports onward.
    for i in (1, 2, 3):
        assert roam.status(tmp_path / f"relay{i}.sock")["spliced"] >= 1
