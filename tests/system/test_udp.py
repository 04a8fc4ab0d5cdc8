"""UDP forwards with real programs: dig through roam to dnsmasq beside the server."""

from __future__ import annotations

import shutil
import socket
import subprocess
from pathlib import Path

from tests.conftest import require

from .harness import Keys, Procs

NAME, ADDRESS = "roam.test", "198.18.7.7"


def _free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _dnsmasq(procs: Procs) -> int:
    port = _free_udp_port()
    procs.start("dnsmasq", [shutil.which("dnsmasq") or "/usr/sbin/dnsmasq", "--keep-in-foreground",
                            "--no-resolv", "--no-hosts", "--no-daemon", "--user=root",
                            "--listen-address=127.0.0.1", "--bind-interfaces",
                            f"--port={port}", f"--address=/{NAME}/{ADDRESS}",
                            "--log-facility=-"], ready=None)
    return port


def dig(port: int, name: str = NAME) -> str:
    out = subprocess.run(["dig", "@127.0.0.1", "-p", str(port), name, "+short", "+time=2",
                          "+tries=3"], capture_output=True, text=True, timeout=30)
    return out.stdout.strip()


def test_dig_through_a_udp_forward_before_and_after_a_reset(tmp_path: Path) -> None:
    require(shutil.which("dig") is not None, "dig is missing (bind9-dnsutils)")
    require(shutil.which("dnsmasq") is not None or Path("/usr/sbin/dnsmasq").exists(),
            "dnsmasq is missing (dnsmasq-base)")
    keys = Keys.make(tmp_path / "keys")
    with Procs(tmp_path) as procs:
        dns = _dnsmasq(procs)
        server, sport = procs.server(keys, f"127.0.0.1:{dns}")
        link = procs.link(sport)
        _, (fport,) = procs.client(keys, link.port, f"udp:127.0.0.1:0=127.0.0.1:{dns}")
        assert dig(fport) == ADDRESS
        link.command("cut")
        assert dig(fport) == ADDRESS  # the session resumed; a new query gets through
        answers = [dig(fport, f"host{i}.{NAME}") for i in range(5)]
        assert answers == [ADDRESS] * 5
        server.wait_log(r"datagram channel \d+ open to udp 127\.0\.0\.1")


def test_udp_destination_outside_allow_is_refused(tmp_path: Path) -> None:
    require(shutil.which("dig") is not None, "dig is missing (bind9-dnsutils)")
    keys = Keys.make(tmp_path / "keys")
    with Procs(tmp_path) as procs:
        dns = _dnsmasq(procs)
        server, sport = procs.server(keys, "127.0.0.1:1")
        _, (fport,) = procs.client(keys, sport, f"udp:127.0.0.1:0=127.0.0.1:{dns}")
        assert ADDRESS not in dig(fport)
        server.wait_log(rf"refused channel \d+: udp 127\.0\.0\.1:{dns} is not allowed")
