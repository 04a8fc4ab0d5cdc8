"""A direct path and a path through a relay: direct blocked, the session moves, and back.

Needs root (nftables). The block is an nftables table of this test's own that
drops TCP to the server's own listening port on loopback: only the client's
direct transports go there, since the relay reaches the server by the
server's uplink. The table is deleted whatever happens.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from tests.conftest import require

from .harness import EchoResult, Keys, Procs, echo_conversation
from .test_relay import both, free_port, relay_keys, start_relay

TABLE = f"roam_relay_paths_{os.getpid()}"


def nft(script: str) -> None:
    subprocess.run(["nft", "-f", "-"], input=script.encode(), check=True, timeout=10,
                   capture_output=True)


def block(port: int) -> None:
    nft(f"table inet {TABLE} {{\n chain out {{\n  type filter hook output priority 0;\n"
        f"  tcp dport {port} drop\n }}\n}}\n")


def unblock() -> None:
    subprocess.run(["nft", "delete", "table", "inet", TABLE], check=False, timeout=10,
                   capture_output=True)


def handovers(log: Path) -> list[dict[str, object]]:
    if not log.exists():
        return []
    return [e for e in (json.loads(line) for line in log.read_text().splitlines() if line)
            if e.get("kind") == "handover"]


def wait_for_handover(log: Path, to: str, after: int, timeout: float = 60.0) -> dict[str, object]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = [e for e in handovers(log)[after:] if e.get("to") == to]
        if found:
            return found[0]
        time.sleep(0.05)
    raise AssertionError(f"no handover to {to} within {timeout} s: {handovers(log)}")


@pytest.mark.root
def test_the_session_moves_to_the_relay_when_direct_is_blocked_and_back_when_it_is_not(
        tmp_path: Path) -> None:
    require(os.geteuid() == 0, "blocking a port needs root (nftables)")
    require(shutil.which("nft") is not None, "needs nft (nftables)")
    keys = Keys.make(tmp_path / "keys")
    rkey, rpub = relay_keys(keys.dir)
    servers = keys.dir / "servers"
    servers.write_text(f"{keys.server_pub} server\n")
    events = tmp_path / "events.jsonl"
    sport = free_port()
    try:
        with Procs(tmp_path) as procs:
            echo = procs.service("echo")
            relay = start_relay(procs, rkey, 0, "--admit-keys",
                                str(both(keys.dir, keys.authorized, servers)))
            rport = int(relay.ready.rsplit(":", 1)[1])
            procs.start("server", [
                sys.executable, "-m", "roam", "server", "--listen", f"127.0.0.1:{sport}",
                "--uplink", f"127.0.0.1:{rport},key={rpub}", "--key", str(keys.server_key),
                "--authorized-keys", str(keys.authorized), "--allow", f"127.0.0.1:{echo}",
                "--no-udp"], ready="listening")
            relay.wait_log("relay: uplink of")
            client = procs.start("client", [
                sys.executable, "-m", "roam", "client", "--server", f"127.0.0.1:{sport}",
                "--server-key", keys.server_pub, "--key", str(keys.client_key),
                "--relay", f"r1=127.0.0.1:{rport},key={rpub}",
                "--path", "direct:dev=lo,priority=10", "--path",
                "relayed:dev=lo,priority=20,via=r1", "--links", "static", "--dwell", "1",
                "--event-log", str(events), "--no-udp",
                "--forward", f"127.0.0.1:0=127.0.0.1:{echo}"], ready="forward")
            fport = int(client.ready.split("=")[0].rsplit(":", 1)[1])
            result = EchoResult()
            total = 48 << 20
            talk = threading.Thread(target=echo_conversation, args=(fport, total, 21, result),
                                    kwargs={"deadline": 120, "chunk": 64 * 1024}, daemon=True)
            talk.start()
            while result.received < 2 << 20 and not result.done:
                time.sleep(0.01)
            before = len(handovers(events))
            block(sport)
            moved = wait_for_handover(events, "relayed", before)
            assert moved["type"] == "hard"
            relay.wait_log("spliced to the uplink of")
            unblock()
            back = wait_for_handover(events, "direct", before + 1, timeout=90)
            assert back["type"] == "soft"
            talk.join(180)
            assert result.error is None, result.error
            assert result.mismatch_at is None
            assert result.received == total
    finally:
        unblock()
