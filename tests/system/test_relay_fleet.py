"""A relay fleet on loopback sharing a real Redis: the extra hop, codes once fleet-wide,
tickets fleet-wide, and a client that falls back to another relay of the fleet."""

from __future__ import annotations

import base64
import os
import re
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.hashes import SHA1
from cryptography.hazmat.primitives.twofactor.totp import TOTP

from roam.crypto.keys import decode_public_key, load_private_key
from roam.lab.redis import RedisServer, find_redis, free_port
from roam.relay.hop import Hop, HopKind, Next, Proof, Status, decode_reply, seal_hop
from tests.conftest import require

from .harness import ENV, EchoResult, Keys, Proc, Procs, echo_conversation
from .test_relay import SECRET, both, relay_keys


@pytest.fixture
def redis(tmp_path: Path) -> Iterator[RedisServer]:
    require(find_redis() is not None, "redis-server is not installed")
    with RedisServer(tmp_path / "redis", port=free_port()) as server:
        yield server


def start_fleet_relay(procs: Procs, key: Path, port: int, redis: RedisServer, *admission: str,
                      name: str) -> Proc:
    return procs.start(name, [sys.executable, "-m", "roam", "relay", "--listen",
                              f"127.0.0.1:{port}", "--key", str(key), "--directory", redis.url,
                              "--control", str(procs.dir / f"{name}.sock"), *admission],
                       ready="listening")


def uplinked_server(procs: Procs, keys: Keys, echo: int, *relays: tuple[int, str]) -> Proc:
    uplinks = [x for port, pub in relays for x in ("--uplink", f"127.0.0.1:{port},key={pub}")]
    return procs.start("server", [
        sys.executable, "-m", "roam", "server", *uplinks, "--key", str(keys.server_key),
        "--authorized-keys", str(keys.authorized), "--allow", f"127.0.0.1:{echo}"],
        ready="uplinks")


def fleet_keys(keys: Keys, n: int) -> list[tuple[Path, str]]:
    out = []
    for i in range(n):
        d = keys.dir / f"relay{i}"
        d.mkdir()
        out.append(relay_keys(d))
    return out


def test_a_client_on_one_relay_reaches_a_server_uplinked_only_to_another(
        tmp_path: Path, redis: RedisServer) -> None:
    keys = Keys.make(tmp_path / "keys")
    (akey, apub), (bkey, bpub) = fleet_keys(keys, 2)
    admitted = keys.dir / "admitted"
    admitted.write_text(f"{keys.client_pub} laptop\n")
    servers = keys.dir / "servers"
    servers.write_text(f"{keys.server_pub} inside\n")
    admit = ("--admit-keys", str(both(keys.dir, admitted, servers)))
    aport, bport = free_port(), free_port()
    with Procs(tmp_path) as procs:
        echo = procs.service("echo")
        a = start_fleet_relay(procs, akey, aport, redis, *admit, name="relay-a")
        b = start_fleet_relay(procs, bkey, bport, redis, *admit, name="relay-b")
        uplinked_server(procs, keys, echo, (bport, bpub))
        b.wait_log("claimed the uplinks of")
        client = procs.start("client", [
            sys.executable, "-m", "roam", "client", "--server", f"127.0.0.1:{free_port()}",
            "--server-key", keys.server_pub, "--key", str(keys.client_key),
            "--relay", f"a=127.0.0.1:{aport},key={apub}", "--path", "fleet:dev=lo,via=a",
            "--links", "static", "--no-udp", "--forward", f"127.0.0.1:0=127.0.0.1:{echo}"],
            ready="forward")
        fport = int(client.ready.split("=")[0].rsplit(":", 1)[1])
        result = EchoResult()
        echo_conversation(fport, 4 << 20, 31, result, deadline=60)
        assert result.error is None, result.error
        assert result.mismatch_at is None
        assert result.received == 4 << 20
        # Relay A spliced the client to relay B, which admitted A as a relay
        # of its fleet and gave it the server's uplink: one extra hop.
        a.wait_log(rf"laptop\) is admitted\) spliced to the uplink of \S+ at relay \S+ "
                   rf"\(127\.0\.0\.1:{bport}\)")
        b.wait_log(r"\(relay \S+ of the fleet \(127\.0\.0\.1:\d+\)\) spliced to the uplink of")
        assert "spliced to 127.0.0.1" not in a.log_text()


def _header_to(relay_pub: str, client_key: Path, target: bytes, address: str, proof: Proof,
               code: int = 0, ticket: bytes = b"") -> bytes:
    stamp = time.time_ns()
    hop = Hop(HopKind.CLIENT, stamp, target, Next.DIAL, target, address, proof, code, ticket)
    return seal_hop(hop, load_private_key(client_key), decode_public_key(relay_pub))


def _ask(port: int, header: bytes) -> tuple[Status, bytes]:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(header)
        answer = b""
        while (decoded := decode_reply(answer)) is None:
            data = s.recv(4096)
            assert data, "the relay closed without an answer"
            answer += data
    status, body, _ = decoded
    return status, body


def test_a_one_time_code_used_at_one_relay_is_refused_at_another_and_the_ticket_passes(
        tmp_path: Path, redis: RedisServer) -> None:
    keys = Keys.make(tmp_path / "keys")
    (akey, apub), (bkey, bpub) = fleet_keys(keys, 2)
    secret32 = base64.b32encode(SECRET).decode().rstrip("=")
    totp = keys.dir / "totp"
    totp.write_text(f"{keys.client_pub} {secret32} laptop\n")
    os.chmod(totp, 0o600)
    # Something for relay A to dial once it admitted the code: a listener
    # that accepts and holds the connection.
    sink = socket.create_server(("127.0.0.1", 0))
    held: list[socket.socket] = []
    threading.Thread(target=lambda: held.append(sink.accept()[0]), daemon=True).start()
    target = os.urandom(32)
    address = f"127.0.0.1:{sink.getsockname()[1]}"
    aport, bport = free_port(), free_port()
    try:
        with Procs(tmp_path) as procs:
            a = start_fleet_relay(procs, akey, aport, redis, "--admit-totp", str(totp),
                                  name="relay-a")
            b = start_fleet_relay(procs, bkey, bport, redis, "--admit-totp", str(totp),
                                  name="relay-b")
            code = int(TOTP(SECRET, 6, SHA1(), 30, enforce_key_length=False).generate(
                time.time()))
            status, ticket = _ask(aport, _header_to(apub, keys.client_key, target, address,
                                                    Proof.TOTP, code))
            assert status is Status.OK, ticket
            a.wait_log("admitted by one-time code")
            # The same code (its step, or an earlier one) at relay B: refused.
            status, body = _ask(bport, _header_to(bpub, keys.client_key, target, address,
                                                  Proof.TOTP, code))
            assert status is Status.NOT_ADMITTED
            assert "already used (at another relay of the fleet)" in body.decode()
            b.wait_log(r"refused: \S+: this one-time code was already used \(at another relay")
            # Relay A's ticket admits the client at relay B: no new code.
            status, body = _ask(bport, _header_to(bpub, keys.client_key, target, address,
                                                  Proof.TICKET, ticket=ticket))
            assert status is Status.OK, body
            b.wait_log("admitted by ticket")
    finally:
        sink.close()
        for s in held:
            s.close()


def test_a_client_falls_back_to_another_relay_of_the_fleet_when_its_relay_dies(
        tmp_path: Path, redis: RedisServer) -> None:
    """The client has a path through each of two relays (on one device);
    the server keeps uplinks to both. Relay A dies mid-conversation: the
    session resumes through relay B, admitted by relay A's ticket (the code
    of the first admission is used up fleet-wide), and no byte is lost."""
    keys = Keys.make(tmp_path / "keys")
    (akey, apub), (bkey, bpub) = fleet_keys(keys, 2)
    secret32 = base64.b32encode(SECRET).decode().rstrip("=")
    totp = keys.dir / "totp"
    totp.write_text(f"{keys.client_pub} {secret32} laptop\n")
    os.chmod(totp, 0o600)
    otp = keys.dir / "otp-secret"
    otp.write_text(secret32 + "\n")
    os.chmod(otp, 0o600)
    servers = keys.dir / "servers"
    servers.write_text(f"{keys.server_pub} inside\n")
    admit = ("--admit-totp", str(totp), "--admit-keys", str(servers))
    aport, bport = free_port(), free_port()
    with Procs(tmp_path) as procs:
        echo = procs.service("echo")
        a = start_fleet_relay(procs, akey, aport, redis, *admit, name="relay-a")
        b = start_fleet_relay(procs, bkey, bport, redis, *admit, name="relay-b")
        uplinked_server(procs, keys, echo, (aport, apub), (bport, bpub))
        a.wait_log("claimed the uplinks of")
        b.wait_log("claimed the uplinks of")
        client = procs.start("client", [
            sys.executable, "-m", "roam", "client", "--server", f"127.0.0.1:{free_port()}",
            "--server-key", keys.server_pub, "--key", str(keys.client_key),
            "--relay", f"a=127.0.0.1:{aport},key={apub}",
            "--relay", f"b=127.0.0.1:{bport},key={bpub}",
            "--path", "via-a:dev=lo,via=a,priority=10",
            "--path", "via-b:dev=lo,via=b,priority=20", "--relay-otp-secret", str(otp),
            "--links", "static", "--no-udp", "--forward", f"127.0.0.1:0=127.0.0.1:{echo}"],
            ready="forward")
        fport = int(client.ready.split("=")[0].rsplit(":", 1)[1])
        result = EchoResult()
        total = 24 << 20
        talk = threading.Thread(target=echo_conversation, args=(fport, total, 32, result),
                                kwargs={"deadline": 90}, daemon=True)
        talk.start()
        a.wait_log("admitted by one-time code", timeout=20)
        while result.received < total // 4 and talk.is_alive():
            time.sleep(0.02)
        a.popen.kill()
        a.popen.wait(5)
        talk.join(90)
        assert result.error is None, result.error + client.log_text()[-3000:]
        assert result.mismatch_at is None
        assert result.received == total
        b.wait_log("admitted by ticket")
        client.wait_log("resum")


def test_a_relay_whose_directory_is_unreachable_or_malformed_says_so_at_start(
        tmp_path: Path) -> None:
    keys = Keys.make(tmp_path / "keys")
    (key, _), = fleet_keys(keys, 1)
    for url, why in ((f"redis://127.0.0.1:{free_port()}/0", "refused|Error"),
                     ("mysql://127.0.0.1:1", "expected redis://")):
        done = subprocess.run([sys.executable, "-m", "roam", "relay", "--listen",
                               f"127.0.0.1:{free_port()}", "--key", str(key), "--admit", "any",
                               "--directory", url], capture_output=True, text=True, timeout=30,
                              env=ENV)
        assert done.returncode != 0
        assert re.search(rf"--directory '{re.escape(url)}'.*({why})", done.stderr), done.stderr
