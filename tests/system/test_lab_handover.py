"""Handover in the network lab (root): real links, the linux driver, NAT on cell.

    mobile ==wifi (RTT ~5 ms)==  router == server
    mobile ==cell (RTT ~60 ms, NAT)==>

The client prefers wifi. An echo conversation of 200 MiB (a 200 MiB upload
and a 200 MiB download at once) runs through a forward while the lab takes
wifi down and brings it back.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from roam.lab.netlab import NetLab
from tests.conftest import require

from .harness import ENV, ROOT, SERVICES, Keys
from .test_survival import _report

MIB = 1 << 20
TRANSFER = int(os.environ.get("ROAM_LAB_MIB", "200")) * MIB
ROAM_PORT, ECHO_PORT, FORWARD_PORT = 7000, 7007, 7100


class LabRoam:
    """roam server in `server`, roam client with two paths in `mobile`."""

    def __init__(self, lab: NetLab, tmp: Path) -> None:
        self.lab, self.tmp = lab, tmp
        self.keys = Keys.make(tmp / "keys")
        self.control = tmp / "client.sock"
        self.events = tmp / "events.jsonl"

    def start(self, dwell: float = 2.0, extra: tuple[str, ...] = (),
              allow: tuple[str, ...] = (), client_flags: tuple[str, ...] = (),
              server_flags: tuple[str, ...] = ()) -> None:
        server = self.lab.addresses["server"]
        self._run("server", "echo", [sys.executable, str(SERVICES), "echo", "--port",
                                     str(ECHO_PORT)])
        self.server = self._run("server", "roam-server", [
            sys.executable, "-m", "roam", "server", "--listen", f"{server}:{ROAM_PORT}",
            "--key", str(self.keys.server_key), "--authorized-keys", str(self.keys.authorized),
            "--allow", f"127.0.0.1:{ECHO_PORT}", *(x for a in allow for x in ("--allow", a)),
            "--control", str(self.tmp / "server.sock"), *server_flags])
        time.sleep(1.0)
        self.start_client(dwell, extra, client_flags)

    def start_client(self, dwell: float = 2.0, extra: tuple[str, ...] = (),
                     client_flags: tuple[str, ...] = ()) -> None:
        server = self.lab.addresses["server"]
        self.client = self._run("mobile", "roam-client", [
            sys.executable, "-m", "roam", "client", "--server", f"{server}:{ROAM_PORT}",
            "--server-key", self.keys.server_pub, "--key", str(self.keys.client_key),
            "--forward", f"127.0.0.1:{FORWARD_PORT}=127.0.0.1:{ECHO_PORT}",
            "--links", "linux", "--path", "wifi:dev=wifi,priority=10,kind=wifi",
            "--path", "cell:dev=cell,priority=20,kind=cellular", "--dwell", str(dwell),
            "--control", str(self.control), "--event-log", str(self.events),
            *(x for f in extra for x in ("--forward", f)), *client_flags])
        self.wait(lambda s: s["active_path"] == "wifi" and s["session"], "session on wifi")

    def _run(self, ns: str, name: str, argv: list[str]) -> subprocess.Popen[Any]:
        log = (self.tmp / f"{name}.log").open("wb")
        return self.lab.run(ns, argv, stdout=log, stderr=log, env=ENV, cwd=ROOT)

    def status(self, control: Path | None = None) -> dict[str, Any]:
        out = subprocess.run([sys.executable, "-m", "roam", "status", "--json", "--control",
                              str(control or self.control)], capture_output=True, text=True,
                             timeout=30, env=ENV)
        if out.returncode != 0:
            raise AssertionError(out.stderr + self.logs())
        result: dict[str, Any] = json.loads(out.stdout)
        return result

    def wait(self, condition: Any, what: str, timeout: float = 30.0,
             control: Path | None = None) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        last: dict[str, Any] = {}
        while time.monotonic() < deadline:
            try:
                last = self.status(control)
                if condition(last):
                    return last
            except AssertionError:
                pass
            time.sleep(0.1)
        raise AssertionError(f"waited {timeout} s for {what}: {last}\n{self.logs()}")

    def logs(self) -> str:
        return "".join(f"--- {p.name}\n{p.read_text(errors='replace')[-2500:]}\n"
                       for p in sorted(self.tmp.glob("*.log")))

    def app(self, total: int, seed: int) -> App:
        proc = self.lab.run("mobile", [sys.executable, str(ROOT / "tests/system/lab_app.py"),
                                       str(FORWARD_PORT), str(total), str(seed)],
                            stdout=subprocess.PIPE, text=True, env=ENV, cwd=ROOT)
        return App(proc)


class App:
    def __init__(self, proc: subprocess.Popen[str]) -> None:
        self.proc = proc
        self.received = 0
        self.result: dict[str, Any] | None = None
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        if self.proc.stdout is None:
            return
        for line in self.proc.stdout:
            if line.startswith("progress "):
                self.received = int(line.split()[1])
            elif line.startswith("{"):
                self.result = json.loads(line)

    def wait_progress(self, n: int, timeout: float = 120.0) -> None:
        deadline = time.monotonic() + timeout
        while self.received < n and self.result is None and time.monotonic() < deadline:
            time.sleep(0.05)

    def finish(self, timeout: float = 300.0) -> dict[str, Any]:
        self.proc.wait(timeout)
        self._thread.join(5)
        if self.result is None:
            raise AssertionError("the application printed no result")
        return self.result


@pytest.fixture
def lab(tmp_path: Path) -> Iterator[NetLab]:
    require(os.geteuid() == 0, "the network lab needs root")
    with NetLab(wifi_delay_ms=2.5, cell_delay_ms=30) as lab:
        yield lab


def test_wifi_down_hard_to_cell_then_soft_back(lab: NetLab, tmp_path: Path) -> None:
    roam = LabRoam(lab, tmp_path)
    roam.start(dwell=2.0)
    roam.wait(lambda s: s["standby"] == "cell", "a standby transport parked on cell")
    app = roam.app(TRANSFER, 11)
    app.wait_progress(TRANSFER // 4)
    lab.link_down("wifi")
    down_at = time.monotonic()
    roam.wait(lambda s: len(s["handovers"]) >= 1, "hard handover to cell")
    app.wait_progress(TRANSFER * 3 // 5, timeout=300)
    lab.link_up("wifi")
    status = roam.wait(lambda s: len(s["handovers"]) >= 2, "soft handover back to wifi")
    result = app.finish()
    hard, soft = status["handovers"][:2]
    _report("lab_handover", {
        "mib": TRANSFER // MIB, "hard_stall_ms": hard["stall_ms"],
        "soft_stall_ms": soft["stall_ms"], "app_longest_stall_ms":
        round(result["longest_stall"] * 1000), "hard_found_after_s":
        round(time.monotonic() - down_at, 2)})
    assert result["error"] is None, roam.logs()
    assert result["mismatch_at"] is None
    assert result["received"] == TRANSFER
    assert (hard["kind"], hard["origin"], hard["target"]) == ("hard", "wifi", "cell")
    assert hard["reason"] == "wifi is down"
    # The hard handover went to the joined standby: no connect, no resume.
    log = (tmp_path / "roam-client.log").read_text()
    assert "handover hard wifi -> cell (wifi is down) on the joined standby" in log
    assert (soft["kind"], soft["origin"], soft["target"]) == ("soft", "cell", "wifi")
    assert soft["frames_resent"] == 0
    assert roam.status()["active_path"] == "wifi"


def _check(result: dict[str, Any], roam: LabRoam, total: int) -> None:
    assert result["error"] is None, roam.logs()
    assert result["mismatch_at"] is None
    assert result["received"] == total


def test_address_change_on_the_active_link(lab: NetLab, tmp_path: Path) -> None:
    roam = LabRoam(lab, tmp_path)
    roam.start()
    total = TRANSFER // 2
    app = roam.app(total, 12)
    app.wait_progress(total // 3)
    new = lab.change_address("wifi", 7)
    status = roam.wait(lambda s: len(s["handovers"]) >= 1, "resume from the new address")
    result = app.finish()
    handover = status["handovers"][0]
    _report("lab_address_change", {"stall_ms": handover["stall_ms"],
                                    "app_longest_stall_ms": round(result["longest_stall"] * 1000)})
    _check(result, roam, total)
    assert (handover["kind"], handover["origin"], handover["target"]) == ("hard", "wifi", "wifi")
    assert "lost address 198.18.1.2" in handover["reason"]
    wifi = next(p for p in roam.status()["paths"] if p["name"] == "wifi")
    assert new in wifi["addresses"]


def test_silent_black_hole_found_by_liveness(lab: NetLab, tmp_path: Path) -> None:
    roam = LabRoam(lab, tmp_path)
    roam.start(dwell=1.0)
    total = TRANSFER // 2
    roam.wait(lambda s: s["standby"] == "cell", "a standby transport joined on cell")
    app = roam.app(total, 13)
    app.wait_progress(total // 4)
    lab.blackhole("wifi", True)  # the link stays up; nothing gets through
    status = roam.wait(lambda s: len(s["handovers"]) >= 1, "move to cell")
    lab.blackhole("wifi", False)
    back = roam.wait(lambda s: len(s["handovers"]) >= 2, "back to wifi", timeout=60)
    result = app.finish()
    first = status["handovers"][0]
    _report("lab_black_hole", {"stall_ms": first["stall_ms"],
                               "app_longest_stall_ms": round(result["longest_stall"] * 1000)})
    _check(result, roam, total)
    assert (first["kind"], first["origin"], first["target"]) == ("hard", "wifi", "cell")
    # Found by either side: nothing acknowledged for the stall time while
    # the standby on cell answered (docs/protocol.md 5.2).
    assert "stalled" in first["reason"] or "lost or stalled" in first["reason"]
    assert (back["handovers"][1]["kind"], back["handovers"][1]["target"]) == ("soft", "wifi")


def test_a_server_paused_half_a_second_under_load_moves_the_session_at_most_once(
        lab: NetLab, tmp_path: Path) -> None:
    # A Python peer stops now and then (a GC, a long write); SIGSTOP is the
    # longest such pause. Its host's TCP still acknowledges what arrives, so
    # the client must not take it for a black hole, nor move back and forth.
    roam = LabRoam(lab, tmp_path)
    roam.start()
    roam.wait(lambda s: s["standby"] == "cell", "a standby transport joined on cell")
    total = TRANSFER // 4
    app = roam.app(total, 15)
    app.wait_progress(total // 4)
    moves_before = len(roam.status()["handovers"])
    os.kill(roam.server.pid, signal.SIGSTOP)
    try:
        time.sleep(0.5)  # the pause itself; nothing is measured across it
    finally:
        os.kill(roam.server.pid, signal.SIGCONT)
    result = app.finish()
    _check(result, roam, total)
    client = roam.status()
    server = roam.status(tmp_path / "server.sock")
    moves = client["handovers"][moves_before:]
    (session,) = server["sessions"]
    _report("lab_paused_server", {
        "client_moves": len(moves), "server_switches": session.get("switches", 0),
        "app_longest_stall_ms": round(result["longest_stall"] * 1000)})
    assert len(moves) <= 1, moves
    assert client["active_path"] in ("wifi", "cell")


def test_soft_handover_whose_old_path_black_holes_midway_completes_hard(
        lab: NetLab, tmp_path: Path) -> None:
    roam = LabRoam(lab, tmp_path)
    roam.start()
    switch = subprocess.run([sys.executable, "-m", "roam", "switch", "cell", "--control",
                             str(roam.control)], capture_output=True, text=True, timeout=30,
                            env=ENV)
    assert switch.returncode == 0, switch.stderr
    total = TRANSFER // 4
    app = roam.app(total, 14)
    app.wait_progress(total // 4)
    # A slow old path, so that the soft handover's drain takes a while...
    lab.set_delay("cell", 400)
    time.sleep(1.0)
    mover = subprocess.Popen([sys.executable, "-m", "roam", "switch", "wifi", "--control",
                              str(roam.control)], stdout=subprocess.PIPE, text=True, env=ENV)
    time.sleep(0.6)  # ...and it black-holes while HANDOVER_BEGIN and READY are under way
    lab.blackhole("cell", True)
    out, _ = mover.communicate(timeout=60)
    status = roam.wait(lambda s: len(s["handovers"]) >= 2, "on wifi")
    result = app.finish()
    last = status["handovers"][-1]
    _check(result, roam, total)
    assert out.startswith("hard handover cell -> wifi"), out
    assert (last["kind"], last["origin"], last["target"]) == ("hard", "cell", "wifi")


SSHD = Path("/usr/sbin/sshd")


def _sshd(lab: NetLab, tmp: Path) -> Path:
    """sshd on 127.0.0.1:22 in the server namespace, with throwaway keys; the user key."""
    for key in ("host_key", "user_key"):
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(tmp / key)],
                       check=True, timeout=30)
    (tmp / "authorized_keys").write_text((tmp / "user_key.pub").read_text())
    Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)  # privilege separation
    config = tmp / "sshd_config"
    config.write_text("\n".join([
        "Port 22", "ListenAddress 127.0.0.1", f"HostKey {tmp / 'host_key'}",
        f"PidFile {tmp / 'sshd.pid'}", f"AuthorizedKeysFile {tmp / 'authorized_keys'}",
        "StrictModes no", "UsePAM no", "PasswordAuthentication no",
        "KbdInteractiveAuthentication no", "PermitRootLogin prohibit-password", ""]))
    log = (tmp / "sshd.log").open("wb")
    lab.run("server", [str(SSHD), "-D", "-e", "-f", str(config)], stdout=log, stderr=log)
    return tmp / "user_key"


def test_ssh_session_survives_wifi_down_and_back(lab: NetLab, tmp_path: Path) -> None:
    require(SSHD.exists(), "sshd is missing (scripts/setup-env installs openssh-server)")
    key = _sshd(lab, tmp_path)
    roam = LabRoam(lab, tmp_path)
    roam.start(dwell=1.0, extra=("127.0.0.1:2222=127.0.0.1:22",), allow=("127.0.0.1:22",))
    lines = 80  # one every 100 ms: 8 s of output
    ssh = lab.run("mobile", [
        "ssh", "-F", "/dev/null", "-o", "StrictHostKeyChecking=no", "-o",
        "UserKnownHostsFile=/dev/null", "-o", "BatchMode=yes", "-o", "ServerAliveInterval=0",
        "-i", str(key), "-p", "2222", "root@127.0.0.1",
        f"for i in $(seq 1 {lines}); do echo line $i; sleep 0.1; done"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    time.sleep(2.5)
    lab.link_down("wifi")
    roam.wait(lambda s: len(s["handovers"]) >= 1, "hard handover to cell")
    time.sleep(1.5)
    lab.link_up("wifi")
    roam.wait(lambda s: len(s["handovers"]) >= 2, "soft handover back to wifi")
    out, err = ssh.communicate(timeout=60)
    assert ssh.returncode == 0, err + roam.logs()
    assert out.splitlines() == [f"line {i}" for i in range(1, lines + 1)]
    kinds = [(h["kind"], h["target"]) for h in roam.status()["handovers"]]
    assert kinds[:2] == [("hard", "cell"), ("soft", "wifi")]


def test_dig_through_a_udp_forward_across_a_handover_and_with_udp_blocked(
        lab: NetLab, tmp_path: Path) -> None:
    require(Path("/usr/sbin/dnsmasq").exists(), "dnsmasq is missing (dnsmasq-base)")
    log = (tmp_path / "dnsmasq.log").open("wb")
    lab.run("server", ["/usr/sbin/dnsmasq", "--keep-in-foreground", "--no-resolv",
                       "--no-hosts", "--user=root", "--listen-address=127.0.0.1",
                       "--bind-interfaces", "--port=53", "--address=/roam.test/198.18.7.7"],
            stdout=log, stderr=log)
    roam = LabRoam(lab, tmp_path)
    roam.start(dwell=1.0, extra=("udp:127.0.0.1:5353=127.0.0.1:53",), allow=("127.0.0.1:53",))

    def dig(name: str) -> str:
        out = lab.check("mobile", ["dig", "@127.0.0.1", "-p", "5353", name, "+short",
                                    "+time=2", "+tries=4"], timeout=30).strip()
        # A try lost while UDP's failure is not yet known shows as
        # ";; communications error"; the answer is the last line.
        return out.splitlines()[-1] if out else out

    def udp_up(s: dict[str, Any]) -> bool:
        return bool(s["udp"] and s["udp"]["state"] == "up")

    roam.wait(udp_up, "UDP up on wifi")
    assert dig("a.roam.test") == "198.18.7.7"
    lab.link_down("wifi")
    roam.wait(lambda s: len(s["handovers"]) >= 1 and udp_up(s), "hard handover to cell, UDP up")
    assert dig("b.roam.test") == "198.18.7.7"  # through the carrier's NAT
    lab.link_up("wifi")
    status = roam.wait(lambda s: len(s["handovers"]) >= 2 and udp_up(s),
                       "soft handover back to wifi, UDP up")
    # So far every answer rode UDP, on each path in turn. (A flow's first
    # datagram goes on the stream right behind its channel's OPEN.)
    assert status["udp"]["datagrams_received"] >= 2
    assert status["session"]["datagrams_received"] == 0
    lab.block_udp("wifi", True)  # the network drops UDP: datagrams still arrive
    assert dig("c.roam.test") == "198.18.7.7"
    assert roam.status()["session"]["datagrams_received"] >= 1  # the answer took the stream
    (session,) = roam.status(roam.tmp / "server.sock")["sessions"]
    assert session["udp"]["state"] == "down"  # the server's probe went unanswered
