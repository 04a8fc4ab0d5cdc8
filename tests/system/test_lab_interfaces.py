"""The application interfaces in the network lab (root), with real programs
on both sides and a hard handover (wifi down) in the middle of a transfer.

The name files.roam.test resolves only in the server namespace (its
/etc/netns/NS/hosts, which `ip netns exec` mounts over /etc/hosts).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from roam.lab.netlab import NetLab
from tests.conftest import require

from .harness import ENV, ROOT, SERVICES
from .test_lab_handover import LabRoam

MIB = 1 << 20
HTTP_PORT, SOCKS_PORT, DNS_PORT, MOBILE_ECHO, REVERSE_PORT = 8080, 1080, 5353, 7009, 2222
NAME = "files.roam.test"


@pytest.fixture
def lab(tmp_path: Path) -> Iterator[NetLab]:
    require(os.geteuid() == 0, "the network lab needs root")
    require(shutil.which("curl") is not None, "curl is missing (scripts/setup-env installs it)")
    with NetLab(wifi_delay_ms=2.5, cell_delay_ms=30) as lab:
        hosts = Path("/etc/netns") / lab.server
        hosts.mkdir(parents=True)
        try:
            (hosts / "hosts").write_text(f"127.0.0.1 localhost\n127.0.0.1 {NAME}\n")
            yield lab
        finally:
            shutil.rmtree(hosts, ignore_errors=True)


def _site(lab: NetLab, tmp: Path, size: int) -> str:
    """An HTTP server in the server namespace with one file; its sha256."""
    root = tmp / "site"
    root.mkdir()
    data = os.urandom(size)
    (root / "file.bin").write_bytes(data)
    log = (tmp / "http.log").open("wb")
    lab.run("server", [sys.executable, "-m", "http.server", str(HTTP_PORT), "--bind",
                       "127.0.0.1", "--directory", str(root)], stdout=log, stderr=log)
    return hashlib.sha256(data).hexdigest()


def _fetch_across_wifi_down(lab: NetLab, roam: LabRoam, tmp: Path, curl_args: list[str],
                            digest: str) -> None:
    out = tmp / "got.bin"
    # About 10 MB/s, so the handover falls in the middle of the transfer.
    curl = lab.run("mobile", ["curl", "--silent", "--show-error", "--max-time", "120",
                              "--limit-rate", "10M", "-o", str(out), *curl_args],
                   stderr=subprocess.PIPE, text=True)
    time.sleep(1.5)
    lab.link_down("wifi")
    roam.wait(lambda s: len(s["handovers"]) >= 1, "hard handover to cell")
    lab.link_up("wifi")
    _, err = curl.communicate(timeout=120)
    assert curl.returncode == 0, err + roam.logs()
    assert hashlib.sha256(out.read_bytes()).hexdigest() == digest
    kinds = [(h["kind"], h["target"]) for h in roam.status()["handovers"]]
    assert kinds[0] == ("hard", "cell")


def test_socks5_fetches_50_mib_by_a_server_side_name_across_a_handover(
        lab: NetLab, tmp_path: Path) -> None:
    digest = _site(lab, tmp_path, 50 * MIB)
    roam = LabRoam(lab, tmp_path)
    roam.start(dwell=1.0, allow=(f"{NAME}:{HTTP_PORT}",),
               client_flags=("--socks", f"127.0.0.1:{SOCKS_PORT}"))
    # The mobile unit cannot resolve the name; the server side can.
    probe = subprocess.run(["ip", "netns", "exec", lab.mobile, "getent", "hosts", NAME],
                           capture_output=True, timeout=30)
    assert probe.returncode != 0
    _fetch_across_wifi_down(lab, roam, tmp_path, [
        "--socks5-hostname", f"127.0.0.1:{SOCKS_PORT}", f"http://{NAME}:{HTTP_PORT}/file.bin"],
        digest)


def test_dns_pool_address_reaches_the_named_service_across_a_handover(
        lab: NetLab, tmp_path: Path) -> None:
    require(shutil.which("dig") is not None, "dig is missing (bind9-dnsutils)")
    digest = _site(lab, tmp_path, 20 * MIB)
    roam = LabRoam(lab, tmp_path)
    roam.start(dwell=1.0, allow=(f"{NAME}:{HTTP_PORT}",), client_flags=(
        "--dns", f"127.0.0.1:{DNS_PORT}", "--dns-intercept", "*.roam.test",
        "--dns-ports", str(HTTP_PORT), "--dns-upstream", "127.0.0.1:9"))
    address = lab.check("mobile", ["dig", "@127.0.0.1", "-p", str(DNS_PORT), NAME, "+short",
                                   "+time=2", "+tries=2"]).strip()
    assert address.startswith("127.77.")
    _fetch_across_wifi_down(lab, roam, tmp_path, [f"http://{address}:{HTTP_PORT}/file.bin"],
                            digest)


def test_a_program_beside_the_server_reaches_the_mobile_unit_by_a_reverse_forward(
        lab: NetLab, tmp_path: Path) -> None:
    log = (tmp_path / "mobile-echo.log").open("wb")
    lab.run("mobile", [sys.executable, str(SERVICES), "echo", "--port", str(MOBILE_ECHO)],
            stdout=log, stderr=log, env=ENV, cwd=ROOT)
    roam = LabRoam(lab, tmp_path)
    roam.start(dwell=1.0, server_flags=("--allow-listen", f"127.0.0.1:{REVERSE_PORT}"),
               client_flags=("--reverse", f"127.0.0.1:{REVERSE_PORT}=127.0.0.1:{MOBILE_ECHO}"))
    program = (
        "import socket, os, sys, time\n"
        "deadline = time.time() + 20\n"
        "while True:\n"
        "    try:\n"
        f"        s = socket.create_connection(('127.0.0.1', {REVERSE_PORT}), 5); break\n"
        "    except OSError:\n"
        "        if time.time() > deadline: raise\n"
        "        time.sleep(0.1)\n"
        "data = os.urandom(4 << 20); s.sendall(data); s.shutdown(socket.SHUT_WR)\n"
        "got = bytearray()\n"
        "while chunk := s.recv(65536): got += chunk\n"
        "sys.exit(0 if bytes(got) == data else 1)\n")
    out = lab.check("server", [sys.executable, "-c", program], timeout=60)
    assert out == ""
