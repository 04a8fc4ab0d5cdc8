"""A capture of the transport holds no application plaintext (tcpdump on loopback)."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

from tests.conftest import require

from .harness import Keys, Procs

MARKER = b"roam-plaintext-marker-6b1f9c"


def _capture(port: int, out: Path) -> subprocess.Popen[bytes]:
    tcpdump = shutil.which("tcpdump") or "/usr/bin/tcpdump"
    proc = subprocess.Popen([tcpdump, "-i", "lo", "-U", "-s", "0", "-w", str(out),
                             f"tcp port {port}"], stderr=subprocess.PIPE)
    time.sleep(1.0)  # tcpdump opens the interface before traffic starts
    return proc


def _stop(proc: subprocess.Popen[bytes]) -> None:
    proc.send_signal(signal.SIGINT)
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(5)


def test_transport_capture_has_no_plaintext(tmp_path: Path) -> None:
    require(os.geteuid() == 0, "capturing on lo needs root")
    require(shutil.which("tcpdump") is not None, "tcpdump is not installed")
    keys = Keys.make(tmp_path / "keys")
    with Procs(tmp_path) as procs:
        echo = procs.service("echo")
        # Compression off: it would shrink the repeated marker out of sight
        # even without encryption, and this test is about encryption.
        _server, sport = procs.server(keys, f"127.0.0.1:{echo}", extra=("--compress", "off"))
        _client, (fport,) = procs.client(keys, sport, f"127.0.0.1:0=127.0.0.1:{echo}")
        transport_cap = _capture(sport, tmp_path / "transport.pcap")
        app_cap = _capture(echo, tmp_path / "app.pcap")
        try:
            with socket.create_connection(("127.0.0.1", fport), timeout=10) as s:
                payload = MARKER * 20000
                s.sendall(payload)
                got = b""
                while len(got) < len(payload):
                    data = s.recv(1 << 20)
                    assert data, "echo ended early"
                    got += data
                assert got == payload
        finally:
            _stop(transport_cap)
            _stop(app_cap)
        transport = (tmp_path / "transport.pcap").read_bytes()
        app = (tmp_path / "app.pcap").read_bytes()
        # The capture works: the unprotected hop beside the server shows the marker...
        assert MARKER in app
        # ...and the session between client and server carried all of it, sealed.
        assert len(transport) > len(payload)
        assert MARKER not in transport
        assert MARKER[:12] not in transport
