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


def _site(lab: NetLab, tmp: Path, size: int, bind: str = "127.0.0.1") -> str:
    """An HTTP server in the server namespace with one file; its sha256."""
    root = tmp / "site"
    root.mkdir()
    data = os.urandom(size)
    (root / "file.bin").write_bytes(data)
    log = (tmp / "http.log").open("wb")
    lab.run("server", [sys.executable, "-m", "http.server", str(HTTP_PORT), "--bind",
                       bind, "--directory", str(root)], stdout=log, stderr=log)
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


def _table_in_mobile(lab: NetLab) -> bool:
    done = subprocess.run(["ip", "netns", "exec", lab.mobile, "nft", "list", "tables", "ip"],
                          capture_output=True, text=True, timeout=30)
    return "roam_transparent" in done.stdout


def test_transparent_mode_carries_plain_curl_and_dig_and_cleans_up(
        lab: NetLab, tmp_path: Path) -> None:
    require(shutil.which("nft") is not None, "nft is missing (nftables)")
    require(shutil.which("dig") is not None, "dig is missing (bind9-dnsutils)")
    require(Path("/usr/sbin/dnsmasq").exists(), "dnsmasq is missing (dnsmasq-base)")
    server = lab.addresses["server"]
    network = server.rsplit(".", 1)[0] + ".0/24"
    digest = _site(lab, tmp_path, 20 * MIB, bind=server)
    log = (tmp_path / "dnsmasq.log").open("wb")
    lab.run("server", ["/usr/sbin/dnsmasq", "--keep-in-foreground", "--no-resolv", "--no-hosts",
                       "--user=root", f"--listen-address={server}", "--bind-interfaces",
                       "--port=53", "--address=/roam.test/198.18.7.7"], stdout=log, stderr=log)
    roam = LabRoam(lab, tmp_path)
    roam.start(dwell=1.0, allow=(f"{server}:{HTTP_PORT}", f"{server}:53"),
               client_flags=("--transparent", network))
    roam.wait(lambda s: _table_in_mobile(lab), "the transparent table", timeout=10)
    # No proxy settings anywhere: the applications just talk to the server's network.
    out = tmp_path / "plain.bin"
    lab.check("mobile", ["curl", "--silent", "--show-error", "--max-time", "60", "-o", str(out),
                         f"http://{server}:{HTTP_PORT}/file.bin"], timeout=90)
    assert hashlib.sha256(out.read_bytes()).hexdigest() == digest
    answer = lab.check("mobile", ["dig", f"@{server}", "a.roam.test", "+short", "+time=2",
                                  "+tries=3"]).strip().splitlines()[-1]
    assert answer == "198.18.7.7"
    # And a transfer survives wifi going down in its middle.
    _fetch_across_wifi_down(lab, roam, tmp_path, [f"http://{server}:{HTTP_PORT}/file.bin"],
                            digest)
    server_log = (tmp_path / "roam-server.log").read_text()
    assert f"open to {server}:{HTTP_PORT}" in server_log  # it went through roam
    assert f"open to udp {server}:53" in server_log
    # SIGTERM: the rules go with the daemon.
    roam.client.terminate()
    roam.client.wait(30)
    assert not _table_in_mobile(lab)
    # SIGKILL leaves them behind; `roam client --cleanup` removes them.
    roam.start_client(client_flags=("--transparent", network))
    roam.wait(lambda s: _table_in_mobile(lab), "the transparent table again", timeout=10)
    roam.client.kill()
    roam.client.wait(30)
    assert _table_in_mobile(lab)
    out = lab.check("mobile", [sys.executable, "-m", "roam", "client", "--cleanup"])
    assert "no transparent-mode rules are left" in out
    assert not _table_in_mobile(lab)
