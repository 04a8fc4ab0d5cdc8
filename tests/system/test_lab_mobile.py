"""Both units mobile in the network lab (root), with a registrar (claims
16-19, figure 5):

    mobile ==wifi (RTT ~5 ms)== router ==srv== server (net1, 198.19.0.2)
    mobile ==cell (RTT ~60 ms)==        ==srv2== server (net2, 198.19.64.2)
                                        ==rly== relay1: the registrar

No NAT anywhere: both units are reachable, as with public addresses. The
server listens on every address of its namespace and has two networks
(`--path net1:dev=srv --path net2:dev=srv2`); the client names it by key
alone and finds it through the registrar. A 100 MiB echo runs both ways
while (a) the server moves to its other network by soft handover, and (b)
both units lose their network at the same moment (the double jump): the
client's resume to the server's old address fails, the registrar has the
new one (the server registered it on the move), and the client resumes
there. The same double jump with a real Kamailio as the registrar.
"""

from __future__ import annotations

import os
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

from .harness import ENV, SERVICES
from .test_lab_handover import MIB, LabRoam
from .test_survival import _report

TRANSFER = int(os.environ.get("ROAM_LAB_MOBILE_MIB", "100")) * MIB
ROAM_PORT, ECHO_PORT, FORWARD_PORT, REGISTRAR_PORT, SIP_PORT = 7000, 7007, 7100, 7500, 5060


@pytest.fixture
def lab() -> Iterator[NetLab]:
    require(os.geteuid() == 0, "the network lab needs root")
    with NetLab(wifi_delay_ms=2.5, cell_delay_ms=30, relays=1, server_links=2,
                nat=False) as lab:
        yield lab


class MobileLab(LabRoam):
    """The registrar in relay1, a mobile server with two networks, a client
    that finds it by key through the registrar."""

    def __init__(self, lab: NetLab, tmp: Path) -> None:
        super().__init__(lab, tmp)
        self.server_control = tmp / "server.sock"
        key = generate_private_key()
        write_private_key(self.keys.dir / "registrar.key", key)
        self.registrar_key = self.keys.dir / "registrar.key"
        self.registrar_pub = encode_key(public_key(key))
        self.registrar_at = f"{lab.addresses['relay1']}:{REGISTRAR_PORT}"

    def builtin(self) -> tuple[list[str], list[str]]:
        """The built-in registrar: its flags for the server and the client."""
        self._run("relay1", "registrar", [
            sys.executable, "-m", "roam", "registrar", "--listen", self.registrar_at,
            "--key", str(self.registrar_key), "--db", str(self.tmp / "registrar.db")])
        flag = ["--registrar", f"{self.registrar_at},key={self.registrar_pub}"]
        return flag, flag

    def start_units(self, server_flags: list[str], client_flags: list[str]) -> None:
        self._run("server", "echo", [sys.executable, str(SERVICES), "echo", "--port",
                                     str(ECHO_PORT)])
        self.server = self._run("server", "roam-server", [
            sys.executable, "-m", "roam", "server", "--listen", f"0.0.0.0:{ROAM_PORT}",
            "--key", str(self.keys.server_key), "--authorized-keys", str(self.keys.authorized),
            "--allow", f"127.0.0.1:{ECHO_PORT}", "--links", "linux",
            "--path", "net1:dev=srv,priority=10", "--path", "net2:dev=srv2,priority=20",
            "--dwell", "1", "--control", str(self.server_control), *server_flags])
        self.wait(lambda s: (s["networks"] or {}).get("current") == "net1",
                  "the server on net1", control=self.server_control)
        self.client = self._run("mobile", "roam-client", [
            sys.executable, "-m", "roam", "client", "--server-key", self.keys.server_pub,
            "--key", str(self.keys.client_key),
            "--forward", f"127.0.0.1:{FORWARD_PORT}=127.0.0.1:{ECHO_PORT}",
            "--links", "linux", "--path", "wifi:dev=wifi,priority=10,kind=wifi",
            "--path", "cell:dev=cell,priority=20,kind=cellular", "--dwell", "1",
            "--control", str(self.control), "--event-log", str(self.events), *client_flags])
        self.wait(lambda s: s["active_path"] == "wifi" and s["session"], "session on wifi",
                  timeout=60)
        self.wait(lambda s: s["standby"] == "cell", "a standby on cell")

    def server_status(self) -> dict[str, Any]:
        return self.status(self.server_control)

    def server_switch(self, network: str) -> None:
        subprocess.run([sys.executable, "-m", "roam", "switch", network, "--server",
                        "--control", str(self.server_control)], check=True, env=ENV,
                       timeout=30, capture_output=True)

    def double_jump(self, app: Any, server_link: str, address: str) -> dict[str, float]:
        """Both units lose their network at once: the client's wifi and the
        server's `server_link`. Returns how long until the client had the
        session resumed at the server's new `address`, and the stall of that
        handover as the client recorded it (from the last byte heard); the
        application's longest stall over the whole transfer says the rest."""
        assert app.result is None, "the transfer ended before the double jump"
        before = len(self.status()["handovers"])
        jumped = time.monotonic()
        self.lab.link_down("wifi")
        self.lab.server_link_down(server_link)
        # The switch to the standby right after the jump is a handover of
        # its own (to the old address: nothing answers there); the one that
        # counts is completed after the last status still at the old address.
        mark = [before]

        def resumed_there(s: dict[str, Any]) -> bool:
            attached = bool(s["session"]) and s["session"]["state"] == "attached"
            if s["address"] != address or not attached:
                mark[0] = len(s["handovers"])
                return False
            return len(s["handovers"]) > mark[0]

        status = self.wait(resumed_there, f"the session resumed at {address}", timeout=120)
        resumed = time.monotonic() - jumped
        last = status["handovers"][-1]
        return {"resumed_after_s": round(resumed, 2), "handover_stall_ms": last["stall_ms"]}


def _check(result: dict[str, Any], roam: LabRoam) -> None:
    assert result["error"] is None, roam.logs()
    assert result["mismatch_at"] is None, roam.logs()
    assert result["received"] == TRANSFER


def test_server_soft_move_then_double_jump_with_the_builtin_registrar(
        lab: NetLab, tmp_path: Path) -> None:
    roam = MobileLab(lab, tmp_path)
    roam.start_units(*roam.builtin())
    net1, net2 = (f"{lab.addresses[n]}:{ROAM_PORT}" for n in ("server", "server2"))
    assert roam.status()["address"] == net1  # found through the registrar
    app = roam.app(TRANSFER, 21)
    app.wait_progress(TRANSFER // 5)

    # (a) The server moves to net2 by soft handover: every client follows.
    roam.server_switch("net2")
    status = roam.wait(lambda s: (s["address"] == net2 and s["standby"] == "cell"
                                  and not any(t["peer"] == net1 for t in s["transports"])),
                       "the client follows the server to net2, lets net1 go, and has a "
                       "standby on cell again")
    soft = status["handovers"][-1]
    assert soft["kind"] == "soft", status["handovers"]
    assert "the server moved" in soft["reason"]
    assert status["session"]["frames_resent"] == 0
    app.wait_progress(TRANSFER * 2 // 5, timeout=300)

    # (b) The double jump: the client's wifi and the server's net2 go at once.
    jump = roam.double_jump(app, "srv2", net1)
    result = app.finish()
    _check(result, roam)
    moves = roam.server_status()["networks"]["moves"]
    assert [(m["type"], m["to"]) for m in moves[-2:]] == [("soft", "net2"), ("hard", "net1")]
    log = (tmp_path / "roam-client.log").read_text()
    # The MOVE of the hard move could not get out: the registrar said where.
    assert "(its registrar says)" in log, roam.logs()
    _report("lab_double_jump", {"registrar": "builtin", "mib": TRANSFER // MIB,
                                "soft_move_frames_resent": 0, **jump,
                                "app_longest_stall_ms": round(result["longest_stall"] * 1000)})


def test_double_jump_with_kamailio_as_the_registrar(lab: NetLab, tmp_path: Path) -> None:
    from roam.lab.kamailio import Kamailio, find_kamailio

    require(find_kamailio() is not None, "kamailio is missing (scripts/setup-env installs it)")
    roam = MobileLab(lab, tmp_path)
    at = lab.addresses["relay1"]
    for user in ("server", "laptop"):
        (tmp_path / f"{user}.pass").write_text(f"{user}-secret\n")
        os.chmod(tmp_path / f"{user}.pass", 0o600)

    def registrar(user: str) -> list[str]:
        return ["--registrar", f"sip:{user}@roam.test,via={at}:{SIP_PORT},"
                               f"password-file={tmp_path / (user + '.pass')}"]

    with Kamailio(tmp_path / "kamailio", {"server": "server-secret", "laptop": "laptop-secret"},
                  port=SIP_PORT, host=at, prefix=("ip", "netns", "exec", lab.relays[0])):
        roam.start_units(registrar("server"),
                         ["--server", "sip:server@roam.test", *registrar("laptop")])
        net1, net2 = (f"{lab.addresses[n]}:{ROAM_PORT}" for n in ("server", "server2"))
        assert roam.status()["address"] == net1
        app = roam.app(TRANSFER, 22)
        app.wait_progress(TRANSFER // 3)
        jump = roam.double_jump(app, "srv", net2)
        result = app.finish()
        _check(result, roam)
    _report("lab_double_jump", {"registrar": "kamailio", "mib": TRANSFER // MIB, **jump,
                                "app_longest_stall_ms": round(result["longest_stall"] * 1000)})


# Wifi's one-way delay in the crossing test: the server's SWITCH is on its
# way that long, and the client's own switch must start meanwhile. The test
# reacts to the server's log line within tens of ms; 250 ms leaves room.
CROSSING_WIFI_DELAY_MS = 250.0


def test_crossing_switches_resolve_by_the_creators_rule(tmp_path: Path) -> None:
    """The server moves to net2 and switches to the client's new transport
    there; while that SWITCH is on its way, the client switches to cell
    (its own planned handover). The two cross: the client made the session,
    so its switch stands and the server's is abandoned, on both sides. The
    session is idle meanwhile (a bulk stream on a 500 ms wifi would itself
    look stalled); an echo after it checks that every byte still gets
    through, as the in-memory test checks under load for every timing."""
    from roam.control.client import request

    require(os.geteuid() == 0, "the network lab needs root")
    with NetLab(wifi_delay_ms=CROSSING_WIFI_DELAY_MS, cell_delay_ms=30, relays=1,
                server_links=2, nat=False) as lab:
        roam = MobileLab(lab, tmp_path)
        roam.start_units(*roam.builtin())
        net1 = f"{lab.addresses['server']}:{ROAM_PORT}"
        server_log = tmp_path / "roam-server.log"
        roam.server_switch("net2")
        deadline = time.monotonic() + 60
        while "this server moved to net2" not in server_log.read_text():
            assert time.monotonic() < deadline, roam.logs()
            time.sleep(0.005)
        request(str(roam.control), "switch", {"path": "cell"})
        status = roam.wait(lambda s: "crossed" in (tmp_path / "roam-client.log").read_text()
                           and s["active_path"] == "cell", "the crossing settled", timeout=60)
        total = 4 * MIB
        result = roam.app(total, 23).finish()
        assert result["error"] is None, roam.logs()
        assert result["mismatch_at"] is None
        assert result["received"] == total
        client_log = (tmp_path / "roam-client.log").read_text()
        server_text = server_log.read_text()
        assert "ours stands (this side made the session)" in client_log, roam.logs()
        assert "ours is abandoned (the peer made the session)" in server_text, roam.logs()
        assert "the server's is abandoned" in client_log
        # Both ends on the client's choice: cell, at the server's old address.
        assert status["address"] == net1
        (session,) = roam.server_status()["sessions"]
        assert session["crossings"] == 1
        assert session["transport"].startswith("198.18.2.2:")  # mobile's cell address
        assert status["session"]["crossings"] == 1
        _report("lab_crossing", {"wifi_one_way_ms": CROSSING_WIFI_DELAY_MS,
                                 "client_active_path": status["active_path"],
                                 "server_peer": session["transport"]})
