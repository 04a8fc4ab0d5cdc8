"""Redundant datagrams in the network lab (root): voice over two lossy links.

    mobile ==wifi (RTT ~5 ms, 5% loss uplink)==       router == server
    mobile ==cell (RTT ~60 ms, 5% loss uplink, NAT)==>

One roam session carries two UDP forwards to two iperf3 servers beside the
roam server: one redundant (each datagram on wifi and on cell), one not (wifi
only). Two iperf3 clients send 2 Mbit/s each through them at the same time,
so both see the same links, the same loss and the same daemons.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from roam.lab.netlab import NetLab
from tests.conftest import require

from .test_lab_handover import LabRoam
from .test_survival import _report

IPERF_PORTS = {"redundant": 5201, "single": 5202}
# The client's forwards listen on these, TCP (iperf3's control connection)
# and UDP (its data) alike.
FORWARD_PORTS = {"redundant": 5301, "single": 5302}
LOSS_PERCENT = 5
LOSS_TABLE = "roamtest_loss"

# 4 Mbit/s of 1000-byte datagrams is 500 a second; 20 s is N = 10,000 per run.
# Without redundancy each is lost with p = 0.05: 500 expected, sd
# sqrt(N p (1-p)) = 22, so the bounds 2% and 9% (200 and 900) are over 13 sd
# away. With it a datagram is lost only when both copies are, p = 0.0025: 25
# expected; the bound 0.5% is 50, and P(X >= 50) for a Poisson of mean 25 is
# about 1.5e-5. Lab, daemons and the two runs take about 40 s in all.
RATE, LENGTH, SECONDS = "4M", 1000, 20
PER_SECOND = 500  # datagrams a second at RATE


@pytest.fixture
def lab() -> Iterator[NetLab]:
    require(os.geteuid() == 0, "the network lab needs root")
    require(shutil.which("iperf3") is not None, "iperf3 is missing")
    require(shutil.which("nft") is not None, "nft is missing (nftables)")
    with NetLab(wifi_delay_ms=2.5, cell_delay_ms=30) as lab:
        yield lab


def _nft(lab: NetLab, script: str) -> None:
    done = subprocess.run(["ip", "netns", "exec", lab.mobile, "nft", "-f", "-"], input=script,
                          capture_output=True, text=True, timeout=30, check=False)
    assert done.returncode == 0, done.stderr


def _uplink_loss(lab: NetLab) -> None:
    """Drop LOSS_PERCENT of what the mobile sends on each link, at random and
    independently (one draw per rule): the direction of the data. What
    comes back (iperf3's control answers, PONGs, the server's ACKs) is not
    lost, so the figures are those of the datagrams alone."""
    rules = "\n".join(f'        oifname "{dev}" numgen random mod 100 < {LOSS_PERCENT} drop'
                      for dev in ("wifi", "cell"))
    _nft(lab, f"table ip {LOSS_TABLE} {{\n    chain uplink {{\n"
              f"        type filter hook output priority filter; policy accept;\n"
              f"{rules}\n    }}\n}}\n")


def _socket_drops(lab: NetLab) -> int:
    """Datagrams the kernel dropped at full UDP sockets (mobile and server):
    loss that is no link's doing, so no redundancy can make it up."""
    total = 0
    for ns in ("mobile", "server"):
        for line in lab.check(ns, ["cat", "/proc/net/udp"]).splitlines()[1:]:
            total += int(line.split()[-1])
    return total


def _iperf(lab: NetLab, which: str, seconds: int) -> subprocess.Popen[str]:
    return lab.run("mobile", ["iperf3", "-c", "127.0.0.1", "-p", str(FORWARD_PORTS[which]),
                              "-u", "-b", RATE, "-l", str(LENGTH), "-t", str(seconds), "-J"],
                   stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _received(proc: subprocess.Popen[str], seconds: int, roam: LabRoam) -> dict[str, Any]:
    """What the iperf3 server counted: packets and lost_packets."""
    out, _ = proc.communicate(timeout=seconds + 30)
    try:
        result: dict[str, Any] = json.loads(out)
        received: dict[str, Any] = result["end"]["sum_received"]
    except (ValueError, KeyError) as exc:
        raise AssertionError(f"iperf3 gave no result ({exc}):\n{out[-2000:]}\n"
                             f"{roam.logs()}") from None
    return received


def test_redundant_datagrams_make_up_for_two_lossy_links(lab: NetLab, tmp_path: Path) -> None:
    roam = LabRoam(lab, tmp_path)
    for port in IPERF_PORTS.values():
        roam._run("server", f"iperf3-{port}", ["iperf3", "-s", "-B", "127.0.0.1", "-p",
                                                str(port)])
    forwards = []
    for which, port in IPERF_PORTS.items():
        listen = f"127.0.0.1:{FORWARD_PORTS[which]}=127.0.0.1:{port}"
        forwards += [listen, f"udp:{listen}{',redundant' if which == 'redundant' else ''}"]
    roam.start(extra=tuple(forwards), allow=tuple(f"127.0.0.1:{p}" for p in
                                                 IPERF_PORTS.values()))
    roam.wait(lambda s: s["standby"] == "cell", "cell known as the backup path")
    # A short run opens a redundant channel, so the client binds its second
    # socket on cell and proves it before the measured runs begin.
    _received(_iperf(lab, "redundant", 1), 1, roam)

    def both_paths(s: dict[str, Any]) -> bool:
        redundant = (s.get("udp") or {}).get("redundant") or {}
        return bool(redundant.get("mode") == "two paths" and s["udp"]["state"] == "up")

    roam.wait(both_paths, "redundant datagrams on wifi and cell")
    _uplink_loss(lab)
    drops = _socket_drops(lab)
    try:
        started = time.monotonic()
        runs = {which: _iperf(lab, which, SECONDS) for which in IPERF_PORTS}
        got = {which: _received(proc, SECONDS, roam) for which, proc in runs.items()}
        took = time.monotonic() - started
    finally:
        _nft(lab, f"delete table ip {LOSS_TABLE}\n")
    client = roam.status()
    server = roam.status(tmp_path / "server.sock")
    loss = {which: r["lost_packets"] / r["packets"] for which, r in got.items()}
    _report("redundant_datagrams", {
        "seconds": SECONDS, "uplink_loss_percent": LOSS_PERCENT,
        **{f"{which}_packets": r["packets"] for which, r in got.items()},
        **{f"{which}_lost_percent": round(100 * loss[which], 3) for which in got},
        "copies_sent": client["udp"]["redundant"]["copies_sent"],
        "socket_drops": _socket_drops(lab) - drops, "run_s": round(took, 1)})
    for which, r in got.items():
        # The whole run got through (a stall would show as fewer packets).
        assert r["packets"] >= 0.95 * SECONDS * PER_SECOND, (which, r, roam.logs())
    assert loss["redundant"] < 0.005, (got, roam.logs())
    assert 0.02 < loss["single"] < 0.09, (got, roam.logs())
    redundant = client["udp"]["redundant"]
    assert (redundant["second_path"], redundant["second_state"]) == ("cell", "up")
    assert redundant["copies_sent"] >= 0.95 * SECONDS * PER_SECOND
    (session,) = server["sessions"]
    assert session["udp"]["redundant"]["mode"] == "two paths"
    # Most copies arrive (95% of each): all but the first of each pair is a
    # duplicate the server dropped without a word.
    assert session["udp"]["redundant"]["duplicates"] >= 0.85 * SECONDS * PER_SECOND
    assert session["udp"]["rejected"] == 0
    assert client["active_path"] == "wifi"
    assert not client["handovers"]
