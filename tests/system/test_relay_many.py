"""Many to many through one relay (figure 8, claim 15), with real daemons on loopback.

Two servers, each reachable only by its uplink on the relay; one client
daemon with a session to each (`--server office=...`, `--server lab=...`)
and forwards naming them; a second client daemon on the same relay. Three
echo conversations run at once, each byte-exact, each to the service beside
the server its forward names.
"""

from __future__ import annotations

import sys
import threading
from pathlib import Path
from typing import Any

from roam.crypto.keys import encode_key, generate_private_key, public_key, write_private_key

from .harness import EchoResult, Procs, _read_line, echo_conversation
from .test_relay import free_port, relay_keys, start_relay

MIB = 1 << 20


def _key(d: Path, name: str) -> tuple[Path, str]:
    key = generate_private_key()
    write_private_key(d / f"{name}.key", key)
    return d / f"{name}.key", encode_key(public_key(key))


def test_one_client_with_two_servers_and_a_second_client_share_one_relay(
        tmp_path: Path) -> None:
    d = tmp_path / "keys"
    d.mkdir()
    rkey, rpub = relay_keys(d)
    office_key, office_pub = _key(d, "office")
    lab_key, lab_pub = _key(d, "lab")
    laptop_key, laptop_pub = _key(d, "laptop")
    tablet_key, tablet_pub = _key(d, "tablet")
    clients = d / "clients"
    clients.write_text(f"{laptop_pub} laptop\n{tablet_pub} tablet\n")
    admitted = d / "admitted"
    admitted.write_text(clients.read_text() + f"{office_pub} office\n{lab_pub} lab\n")
    with Procs(tmp_path) as procs:
        relay = start_relay(procs, rkey, 0, "--admit-keys", str(admitted),
                            "--control", str(tmp_path / "relay.sock"))
        rport = int(relay.ready.rsplit(":", 1)[1])
        # Each server has its own echo service, and tells it apart: the lab's
        # echo is reachable only from the lab server's --allow.
        echoes = {"office": procs.service("echo"), "lab": procs.service("echo")}
        for name, key in (("office", office_key), ("lab", lab_key)):
            procs.start(name, [
                sys.executable, "-m", "roam", "server", "--uplink",
                f"127.0.0.1:{rport},key={rpub}", "--key", str(key),
                "--authorized-keys", str(clients), "--allow", f"127.0.0.1:{echoes[name]}",
                "--control", str(tmp_path / f"{name}.sock")], ready="uplinks")
        relay.wait_log(r"uplink of \S+ \(office\)")
        relay.wait_log(r"uplink of \S+ \(lab\)")
        nowhere = free_port()  # the servers listen nowhere: only uplinks carry them

        def client(name: str, key: Path, servers: list[str], forwards: list[str]
                   ) -> list[int]:
            argv = [sys.executable, "-m", "roam", "client", "--key", str(key),
                    *(x for s in servers for x in ("--server", s)),
                    "--relay", f"r1=127.0.0.1:{rport},key={rpub}",
                    "--path", "relayed:dev=lo,via=r1", "--links", "static", "--no-udp",
                    "--control", str(tmp_path / f"{name}.sock"),
                    *(x for f in forwards for x in ("--forward", f))]
            proc = procs.start(name, argv, ready="forward")
            lines = [proc.ready] + [_read_line(proc.popen, 20) for _ in forwards[1:]]
            return [int(line.split()[1].split("=")[0].rsplit(":", 1)[1]) for line in lines]

        laptop = client("laptop", laptop_key, [
            f"office=127.0.0.1:{nowhere},key={office_pub}",
            f"lab=127.0.0.1:{nowhere},key={lab_pub}"], [
            f"127.0.0.1:0=127.0.0.1:{echoes['office']}",  # no name: the first, office
            f"127.0.0.1:0=lab/127.0.0.1:{echoes['lab']}"])
        tablet = client("tablet", tablet_key, [f"127.0.0.1:{nowhere},key={office_pub}"],
                        [f"127.0.0.1:0=127.0.0.1:{echoes['office']}"])

        results = [EchoResult() for _ in range(3)]
        threads = [threading.Thread(target=echo_conversation, args=(port, 8 * MIB, seed, r),
                                    kwargs={"deadline": 120})
                   for port, seed, r in zip([*laptop, *tablet], (31, 32, 33), results,
                                            strict=True)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(150)
        for r in results:
            assert r.error is None, r.error
            assert r.received == 8 * MIB
            assert r.mismatch_at is None

        status: dict[str, Any] = _status(tmp_path / "laptop.sock")
        assert [(s["server"], s["session"]["state"]) for s in status["servers"]] == [
            ("office", "attached"), ("lab", "attached")]
        assert all(p["route"] == ["r1"] for s in status["servers"] for p in s["paths"])
        relayed = _status(tmp_path / "relay.sock")
        assert relayed["spliced"] >= 3
        assert len(relayed["uplinks"]) == 2
        # Each server has the sessions its forwards named: office two
        # (laptop, tablet), lab one (laptop).
        assert len(_status(tmp_path / "office.sock")["sessions"]) == 2
        assert len(_status(tmp_path / "lab.sock")["sessions"]) == 1


def _status(control: Path) -> dict[str, Any]:
    import json
    import subprocess

    from .harness import ENV

    out = subprocess.run([sys.executable, "-m", "roam", "status", "--json", "--control",
                          str(control)], capture_output=True, text=True, timeout=30, env=ENV,
                         check=True)
    result: dict[str, Any] = json.loads(out.stdout)
    return result
