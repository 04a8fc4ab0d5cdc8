"""A relay fleet in the network lab (root): Redis, three relays, two inside servers,
fifty clients; one relay killed and started again.

    mobile ==wifi== router == server    two roam servers, uplinks only (inbound dropped)
                      |  \\== relay1, relay2, relay3   (a DMZ each; one fleet)
                      \\==== relay4                    (Redis: the fleet's directory)

Server A keeps uplinks on relay1 and relay2, server B on relay2 and relay3,
so a client landing on a relay that holds no uplink of its server is spliced
across to one that does (the fleet's extra hop). 50 client daemons, each
with a session to one of the servers (chosen at random) and a byte-exact
echo stream on it; each has a path through each relay (on the one wifi
device), its relays in a random order. Relay1 is killed by its PID: every stream
must go on without losing a byte (sessions resume through the other relays;
server A keeps its uplinks on relay2), and the time from the kill to the
last session's resume is reported (bench/results/lab_fleet.json). Relay1 is
started again and comes back into the fleet: its record is back, server A's
uplink lands on it again, and a new client is spliced through it.
"""

from __future__ import annotations

import json
import os
import random
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from roam.crypto.keys import encode_key, generate_private_key, public_key, write_private_key
from roam.lab.netlab import NetLab
from roam.lab.redis import RedisServer, find_redis
from tests.conftest import require

from .harness import ENV, ROOT, SERVICES
from .test_survival import _report

pytestmark = pytest.mark.root

CLIENTS = 50  # daemons, a session each
RATE = 16 * 1024  # bytes a second per stream, each way
RELAY_PORT, ECHO_PORT, REDIS_PORT, FORWARD_BASE = 7400, 7007, 6379, 7100
RELAYS = (1, 2, 3)
UPLINKS = {"a": (1, 2), "b": (2, 3)}  # server: the relays it keeps uplinks on
KILLED = 1


@pytest.fixture
def lab() -> Iterator[NetLab]:
    require(os.geteuid() == 0, "the network lab needs root")
    require(find_redis() is not None, "redis-server is not installed")
    with NetLab(wifi_delay_ms=2.5, relays=4) as lab:
        lab.firewall(True)
        yield lab


class Key:
    def __init__(self, d: Path, name: str) -> None:
        key = generate_private_key()
        self.path = d / f"{name}.key"
        write_private_key(self.path, key)
        self.pub = encode_key(public_key(key))


class Fleet:
    """Every process of the lab test, each ended by its PID (and by the lab)."""

    def __init__(self, lab: NetLab, tmp: Path) -> None:
        self.lab, self.tmp = lab, tmp
        keys = tmp / "keys"
        keys.mkdir()
        self.relay_keys = {i: Key(keys, f"relay{i}") for i in RELAYS}
        self.server_keys = {s: Key(keys, f"server-{s}") for s in UPLINKS}
        self.client_keys = [Key(keys, f"client{i}") for i in range(CLIENTS + 1)]
        self.authorized = keys / "authorized"
        self.authorized.write_text("".join(f"{k.pub} c\n" for k in self.client_keys))
        self.admitted = keys / "admitted"
        self.admitted.write_text(self.authorized.read_text() + "".join(
            f"{k.pub} server-{s}\n" for s, k in self.server_keys.items()))
        self.procs: dict[str, subprocess.Popen[Any]] = {}
        self.starts: dict[int, int] = dict.fromkeys(RELAYS, 0)
        self.redis = RedisServer(tmp / "redis", port=REDIS_PORT,
                                 host=lab.addresses["relay4"],
                                 prefix=("ip", "netns", "exec", lab.relays[3]))

    def relay_address(self, i: int) -> str:
        return f"{self.lab.addresses[f'relay{i}']}:{RELAY_PORT}"

    def run(self, ns: str, name: str, argv: list[str], **kw: Any) -> subprocess.Popen[Any]:
        log = (self.tmp / f"{name}.log").open("wb")
        kw.setdefault("stdout", log)
        proc = self.lab.run(ns, argv, stderr=log, env=ENV, cwd=ROOT, **kw)
        self.procs[name] = proc
        return proc

    def start_relay(self, i: int) -> None:
        self.starts[i] += 1
        self.run(f"relay{i}", f"relay{i}-{self.starts[i]}", [
            sys.executable, "-m", "roam", "relay", "--listen", self.relay_address(i),
            "--key", str(self.relay_keys[i].path), "--admit-keys", str(self.admitted),
            "--directory", self.redis.url, "--control", str(self.tmp / f"relay{i}.sock")])

    def start_server(self, name: str) -> None:
        uplinks = [x for i in UPLINKS[name] for x in (
            "--uplink", f"{self.relay_address(i)},key={self.relay_keys[i].pub}")]
        self.run("server", f"server-{name}", [
            sys.executable, "-m", "roam", "server", "--key", str(self.server_keys[name].path),
            "--authorized-keys", str(self.authorized), *uplinks,
            "--allow", f"127.0.0.1:{ECHO_PORT}",
            "--control", str(self.tmp / f"server-{name}.sock")])

    def start_client(self, n: int, order: list[int], servers: tuple[str, ...]) -> list[int]:
        """A client daemon with a path through each relay of `order` (by
        priority), a session to each of `servers`; its forward ports."""
        relays = [x for i in RELAYS for x in (
            "--relay", f"r{i}={self.relay_address(i)},key={self.relay_keys[i].pub}")]
        paths = [x for rank, i in enumerate(order) for x in (
            "--path", f"via{i}:dev=wifi,priority={10 * (rank + 1)},via=r{i}")]
        # The servers' own addresses: nothing reaches them; their uplinks do.
        inside = self.lab.addresses["server"]
        targets = [x for s in servers for x in (
            "--server", f"{s}={inside}:7000,key={self.server_keys[s].pub}")]
        ports = [FORWARD_BASE + 2 * n + k for k in range(len(servers))]
        forwards = [x for port, s in zip(ports, servers, strict=True) for x in (
            "--forward", f"127.0.0.1:{port}={s}/127.0.0.1:{ECHO_PORT}")]
        self.run("mobile", f"client{n}", [
            sys.executable, "-m", "roam", "client", *targets, "--key",
            str(self.client_keys[n].path), *relays, *paths, *forwards, "--links", "linux",
            "--no-udp", "--dwell", "1", "--control", str(self.tmp / f"client{n}.sock"),
            "--event-log", str(self.tmp / f"client{n}.events")])
        return ports

    def status(self, control: Path) -> dict[str, Any]:
        out = subprocess.run([sys.executable, "-m", "roam", "status", "--json", "--control",
                              str(control)], capture_output=True, text=True, timeout=30,
                             env=ENV)
        if out.returncode != 0:
            raise AssertionError(out.stderr)
        result: dict[str, Any] = json.loads(out.stdout)
        return result

    def wait_status(self, control: Path, condition: Callable[[dict[str, Any]], bool],
                    what: str, timeout: float = 30.0) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        last: dict[str, Any] = {}
        while time.monotonic() < deadline:
            try:
                last = self.status(control)
                if condition(last):
                    return last
            except (AssertionError, subprocess.TimeoutExpired):
                pass
            time.sleep(0.2)
        raise AssertionError(f"waited {timeout} s for {what}: {last}\n{self.logs()}")

    def logs(self) -> str:
        return "".join(f"--- {p.name}\n{p.read_text(errors='replace')[-1500:]}\n"
                       for p in sorted(self.tmp.glob("*.log")))

    def stop(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in self.procs.values():
            try:
                proc.wait(5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)
        self.redis.stop()


class Streams:
    """lab_streams.py in `mobile`, its progress lines read as they come."""

    def __init__(self, fleet: Fleet, ports: list[int]) -> None:
        self.proc = fleet.run("mobile", "streams", [
            sys.executable, str(ROOT / "tests/system/lab_streams.py"), str(RATE),
            *map(str, ports)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        fleet.procs["streams"] = self.proc
        self.received = [0] * len(ports)
        self.errors: list[str] = []
        self.final: dict[str, Any] | None = None
        self.changed = threading.Condition()
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            record = json.loads(line)
            with self.changed:
                self.received = record["received"]
                self.errors = [e for e in record["errors"] if e]
                if record.get("final"):
                    self.final = record
                self.changed.notify_all()

    def wait(self, condition: Callable[[list[int]], bool], what: str,
             timeout: float) -> None:
        deadline = time.monotonic() + timeout
        with self.changed:
            while not condition(self.received):
                assert not self.errors, self.errors
                left = deadline - time.monotonic()
                assert self.proc.poll() is None, f"the streams ended: {self.received}"
                assert left > 0, f"waited {timeout} s for {what}: {self.received}"
                self.changed.wait(left)

    def finish(self, timeout: float = 60.0) -> dict[str, Any]:
        assert self.proc.stdin is not None
        self.proc.stdin.write("stop\n")
        self.proc.stdin.flush()
        self._thread.join(timeout)
        assert self.final is not None, f"no final report: {self.received} {self.errors}"
        return self.final


def resumes(tmp: Path, since: float, until: float) -> list[float]:
    """When a session resumed on another transport after its own was lost,
    between `since` and `until` (the clients' event logs: a hard handover,
    to another path or on the same one)."""
    times: list[float] = []
    for path in tmp.glob("client*.events"):
        for line in path.read_text().splitlines():
            event = json.loads(line)
            if (event.get("kind") == "handover" and event.get("type") == "hard"
                    and since <= event["time"] < until):
                times.append(event["time"])
    return times


def test_a_fleet_survives_a_relay_killed_and_takes_it_back(lab: NetLab,
                                                           tmp_path: Path) -> None:
    fleet = Fleet(lab, tmp_path)
    try:
        _run(fleet, lab, tmp_path)
    finally:
        fleet.stop()


def _run(fleet: Fleet, lab: NetLab, tmp: Path) -> None:
    fleet.redis.start()
    for i in RELAYS:
        fleet.start_relay(i)
    fleet.run("server", "echo", [sys.executable, str(SERVICES), "echo", "--port",
                                 str(ECHO_PORT)])
    for s in UPLINKS:
        fleet.start_server(s)
    for i in RELAYS:
        servers = sum(i in r for r in UPLINKS.values())
        fleet.wait_status(tmp / f"relay{i}.sock",
                          lambda st, n=servers: len(st["uplinks"]) == n
                          and len(st["fleet"]["peers"]) == 2,
                          f"the servers' uplinks on relay{i}, and the fleet")
    rng = random.Random(7)
    ports: list[int] = []
    servers = sorted(UPLINKS)
    for n in range(CLIENTS):
        order = list(RELAYS)
        rng.shuffle(order)
        ports += fleet.start_client(n, order, (rng.choice(servers),))
    streams = Streams(fleet, ports)
    streams.wait(lambda got: all(g >= 2 * RATE for g in got), "every stream flowing", 60)

    # Relay1 dies. To the sessions through it (they landed on it, or were
    # spliced across to server A's uplink there) it is a path that failed.
    through = fleet.status(tmp / f"relay{KILLED}.sock")["active"]
    at_kill = list(streams.received)
    fleet.procs.pop(f"relay{KILLED}-1").send_signal(signal.SIGKILL)
    killed_at = time.time()
    # Every stream flows again: a session whose transport went through
    # relay1 can only have done so by resuming on another transport.
    streams.wait(lambda got: all(g >= a + 2 * RATE for g, a in zip(got, at_kill, strict=True)),
                 "every stream flowing again after the kill", 60)
    restarted_at = time.time()
    resumed = resumes(tmp, killed_at, restarted_at)
    assert resumed, "no session resumed after the kill"
    last_resume = max(resumed) - killed_at

    # Relay1 comes back: its record returns, server A's uplink lands on it.
    fleet.start_relay(KILLED)
    fleet.wait_status(tmp / "relay2.sock", lambda st: len(st["fleet"]["peers"]) == 2,
                      "relay1 back among relay2's peers", timeout=20)
    back = fleet.wait_status(tmp / f"relay{KILLED}.sock",
                             lambda st: bool(st["uplinks"]) and bool(st["fleet"]["claims"]),
                             "server A's uplink on relay1 again", timeout=40)
    # A new client, through relay1 only, to server B (whose uplinks are on
    # relay2 and relay3): spliced through relay1 across the fleet.
    fleet.start_client(CLIENTS, [KILLED], ("b",))
    # (Its forward listens once its session is up: the snippet tries until then.)
    code = ("import socket,time\n"
            "for _ in range(300):\n"
            " try:\n"
            f"  s=socket.create_connection(('127.0.0.1',{FORWARD_BASE + 2 * CLIENTS}),30)\n"
            "  break\n"
            " except ConnectionRefusedError:\n"
            "  time.sleep(0.1)\n"
            "m=bytes(range(256))*64\n"
            "s.sendall(m)\nb=b''\n"
            "while len(b)<len(m):\n b+=s.recv(65536)\n"
            "print('echoed' if b==m else 'wrong')\n")
    assert lab.check("mobile", [sys.executable, "-c", code], timeout=60).strip() == "echoed"
    relay1_log = (tmp / f"relay{KILLED}-2.log").read_text()
    assert re.search(r"spliced to the uplink of \S+ at relay \S+", relay1_log), relay1_log

    final = streams.finish()
    assert all(e is None for e in final["errors"]), final["errors"]
    assert final["received"] == final["sent"]
    # The application's view: the waits that began with the kill (a stream
    # paced every 0.1 s whose transport died has its last byte by then).
    cut = [[(start, end) for start, end in gaps
            if start <= killed_at + 0.5 and end >= killed_at] for gaps in final["gaps"]]
    stalls = [max((end - start for start, end in c), default=0.0) for c in cut]
    flowing = [max((end for _, end in c), default=killed_at) - killed_at for c in cut]
    _report("lab_fleet", {
        "sessions": len(ports), "client_daemons": CLIENTS, "relays": len(RELAYS),
        "rate_kib_s_per_stream": RATE // 1024,
        "transports_through_killed_relay": through,
        "sessions_that_resumed": len(resumed),
        "last_resume_after_kill_s": round(last_resume, 2),
        "streams_that_stalled": sum(1 for x in stalls if x > 0),
        "longest_stall_s": round(max(stalls), 2),
        "last_stream_flowing_again_s": round(max(flowing), 2),
        "relay_back_claims": back["fleet"]["claims"],
    })
