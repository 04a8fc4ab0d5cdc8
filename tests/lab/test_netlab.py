"""The namespace lab, end to end: needs root, ip, tc, nft, sysctl and ping.

Timing checks are lower bounds only: a slow machine may make anything slower,
never faster than the emulated link allows.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import os
import re
import selectors
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from roam.lab.netlab import MAX_RELAYS, LabError, NetLab
from tests.conftest import require

pytestmark = pytest.mark.root

TOOLS = ("ip", "tc", "nft", "sysctl", "ping")
PORT = 5001
STARTUP_TIMEOUT = 20.0

# Answers every connection with the peer address it sees, then closes it.
PEER_SERVER = r"""
import socket, sys
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("0.0.0.0", int(sys.argv[1])))
s.listen()
s.settimeout(60)
print("listening", flush=True)
while True:
    c, addr = s.accept()
    c.sendall(addr[0].encode() + b"\n")
    c.close()
"""

# Connects from a socket bound to one device and prints the first line it gets.
PEER_CLIENT = r"""
import socket, sys
dev, host, port = sys.argv[1], sys.argv[2], int(sys.argv[3])
s = socket.socket()
if dev != "-":
    s.setsockopt(socket.SOL_SOCKET, socket.SO_BINDTODEVICE, dev.encode())
s.settimeout(10)
s.connect((host, port))
print(s.makefile().readline().strip())
"""

# Reads one connection to its end, then answers with the byte count.
SINK_SERVER = r"""
import socket, sys
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("0.0.0.0", int(sys.argv[1])))
s.listen()
s.settimeout(60)
print("listening", flush=True)
c, _ = s.accept()
c.settimeout(60)
total = 0
while chunk := c.recv(1 << 16):
    total += len(chunk)
c.sendall(b"%d\n" % total)
c.close()
"""

# Sends N bytes from a socket bound to one device; prints seconds until the
# server confirmed it had them all.
SINK_CLIENT = r"""
import socket, sys, time
dev, host, port, size = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_BINDTODEVICE, dev.encode())
s.settimeout(60)
s.connect((host, port))
started = time.monotonic()
s.sendall(bytes(size))
s.shutdown(socket.SHUT_WR)
answer = s.makefile().readline().strip()
print(answer, time.monotonic() - started)
"""


def require_lab() -> None:
    require(os.geteuid() == 0, "the network lab needs root (namespaces, TUN, nftables)")
    for tool in TOOLS:
        require(shutil.which(tool) is not None, f"the network lab needs {tool} installed")


@pytest.fixture
def lab() -> Iterator[NetLab]:
    require_lab()
    with NetLab(wifi_delay_ms=1, cell_delay_ms=5) as lab:
        yield lab
    assert not lab.cleanup_errors


def lab_namespaces() -> set[str]:
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=True)
    return {line.split()[0] for line in out.stdout.splitlines() if line.strip()}


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def read_line(proc: subprocess.Popen[Any], timeout: float = STARTUP_TIMEOUT) -> str:
    assert proc.stdout is not None
    with selectors.DefaultSelector() as selector:
        selector.register(proc.stdout, selectors.EVENT_READ)
        if not selector.select(timeout):
            raise TimeoutError(f"no output from {proc.args!r} within {timeout} s")
    return str(proc.stdout.readline()).strip()


def start_server(lab: NetLab, code: str) -> subprocess.Popen[str]:
    proc: subprocess.Popen[str] = lab.run(
        "server", [sys.executable, "-c", code, str(PORT)], stdout=subprocess.PIPE, text=True
    )
    assert read_line(proc) == "listening"
    return proc


def peer_seen(lab: NetLab, device: str, host: str | None = None) -> str:
    """The address the server's PEER_SERVER saw for a connection from mobile."""
    target = lab.addresses["server"] if host is None else host
    out = lab.check("mobile", [sys.executable, "-c", PEER_CLIENT, device, target, str(PORT)])
    return out.strip()


@dataclass
class Ping:
    sent: int
    received: int
    min_rtt_ms: float | None


def ping(
    lab: NetLab,
    device: str,
    count: int = 3,
    interval: float = 0.2,
    wait_s: float = 1.0,
    host: str | None = None,
) -> Ping:
    argv = [
        "ping",
        "-n",
        "-q",
        "-I",
        device,
        "-c",
        str(count),
        "-i",
        str(interval),
        "-W",
        str(wait_s),
        lab.addresses["server"] if host is None else host,
    ]
    proc = lab.run("mobile", argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    out, _ = proc.communicate(timeout=count * interval + wait_s + 10)
    counts = re.search(r"(\d+) packets transmitted, (\d+) received", out)
    if counts is None:
        # An unreachable network fails before sending anything.
        return Ping(0, 0, None)
    rtt = re.search(r"= ([\d.]+)/", out)
    return Ping(int(counts[1]), int(counts[2]), float(rtt[1]) if rtt else None)


def reaches(lab: NetLab, device: str, host: str | None = None) -> bool:
    return ping(lab, device, count=2, interval=0.1, host=host).received > 0


def test_ping_server_over_each_link(lab: NetLab) -> None:
    for device in ("wifi", "cell"):
        result = ping(lab, device)
        assert result.received == 3, device


def test_cell_is_nated_and_wifi_is_not(lab: NetLab) -> None:
    start_server(lab, PEER_SERVER)
    addresses = lab.addresses
    assert peer_seen(lab, "cell") == addresses["router_server"]
    assert peer_seen(lab, "wifi") == addresses["mobile_wifi"]
    # Unbound traffic takes the preferred default route, wifi.
    assert peer_seen(lab, "-") == addresses["mobile_wifi"]


def test_link_down_fails_that_link_only(lab: NetLab) -> None:
    lab.link_down("wifi")
    assert not reaches(lab, "wifi")
    assert reaches(lab, "cell")
    lab.link_up("wifi")
    assert reaches(lab, "wifi")
    lab.link_down("cell")
    assert not reaches(lab, "cell")
    assert reaches(lab, "wifi")


def test_blackhole_silences_a_link_that_stays_up(lab: NetLab) -> None:
    lab.blackhole("cell", True)
    assert not reaches(lab, "cell")
    assert "UP" in lab.check("mobile", ["ip", "-br", "link", "show", "dev", "cell"])
    assert reaches(lab, "wifi")
    assert json.loads(lab.link_stats("cell"))["a_to_b"]["dropped_blackhole"] >= 2
    lab.blackhole("cell", False)
    assert reaches(lab, "cell")


def test_delay_is_added_to_the_round_trip() -> None:
    require_lab()
    delay = 30.0
    with NetLab(wifi_delay_ms=2.5, cell_delay_ms=delay) as lab:
        result = ping(lab, "cell")
        assert result.min_rtt_ms is not None
        assert result.min_rtt_ms >= 2 * delay
        lab.set_delay("wifi", 20)
        result = ping(lab, "wifi")
        assert result.min_rtt_ms is not None
        assert result.min_rtt_ms >= 40


def test_loss_drops_packets(lab: NetLab) -> None:
    lab.set_loss("wifi", 30)
    # 30 % each way loses about half the echoes: ~100 of 200; 30 is far below.
    result = ping(lab, "wifi", count=200, interval=0.005)
    assert result.sent == 200
    assert result.sent - result.received >= 30
    lab.set_loss("wifi", 0)
    assert ping(lab, "wifi", count=20, interval=0.01).received == 20


def test_rate_limit_slows_a_transfer(lab: NetLab) -> None:
    rate = 8_000_000
    size = 1_500_000
    lab.set_rate("wifi", rate)
    start_server(lab, SINK_SERVER)
    out = lab.check(
        "mobile",
        [sys.executable, "-c", SINK_CLIENT, "wifi", lab.addresses["server"], str(PORT), str(size)],
        timeout=60,
    )
    received, elapsed = out.split()
    assert int(received) == size
    # The bucket lets one burst through at once; the rest waits for tokens.
    assert float(elapsed) >= (size - lab.rate_burst("wifi")) / (rate / 8)
    lab.set_rate("wifi", None)
    assert lab.rate_burst("wifi") == 0


def test_change_address(lab: NetLab) -> None:
    start_server(lab, PEER_SERVER)
    new = lab.change_address("wifi", 7)
    assert new == "198.18.1.7"
    assert lab.addresses["mobile_wifi"] == new
    assert peer_seen(lab, "wifi") == new
    assert "198.18.1.2" not in lab.check("mobile", ["ip", "-br", "addr", "show", "dev", "wifi"])
    with pytest.raises(LabError, match="host octet"):
        lab.change_address("wifi", 1)


def test_bulk_transfer_with_iperf3(lab: NetLab) -> None:
    require(shutil.which("iperf3") is not None, "iperf3 is not installed")
    server = lab.run(
        "server", ["iperf3", "-s", "-1", "-B", lab.addresses["server"]], stdout=subprocess.DEVNULL
    )
    argv = ["iperf3", "-c", lab.addresses["server"], "--bind-dev", "cell", "-n", "10M", "-J"]
    deadline = time.monotonic() + STARTUP_TIMEOUT
    while True:
        try:
            out = lab.check("mobile", argv, timeout=30)
            break
        except LabError:
            # The server may not listen yet.
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)
    result = json.loads(out)
    # The receiver's total can miss the last interval; the sender's is exact.
    assert result["end"]["sum_sent"]["bytes"] >= 10 << 20
    assert result["end"]["sum_received"]["bytes"] > 0
    server.wait(10)


def test_errors_name_the_problem(lab: NetLab) -> None:
    with pytest.raises(LabError, match="unknown link 'lte'"):
        lab.set_delay("lte", 1)
    with pytest.raises(LabError, match="unknown namespace"):
        lab.check("moon", ["true"])
    with pytest.raises(LabError, match="failed with status"):
        lab.check("mobile", ["false"])
    with pytest.raises(LabError, match="loss must be"):
        lab.set_loss("wifi", 120)
    with pytest.raises(LabError, match="rate must be"):
        lab.set_rate("wifi", 0)
    # A lab with one server link has no srv2.
    with pytest.raises(LabError, match="unknown server link 'srv2'"):
        lab.server_link_down("srv2")


def test_methods_need_a_built_lab() -> None:
    with pytest.raises(LabError, match="not built"):
        NetLab().link_down("wifi")


def test_destroy_removes_everything() -> None:
    require_lab()
    lab = NetLab()
    lab.build()
    lab.build()  # idempotent
    sleeper = lab.run("server", ["sleep", "30"])
    names = set(lab.namespaces)
    pids = lab.pids()
    assert sleeper.pid in pids
    assert len(pids) == 3
    assert names <= lab_namespaces()
    lab.destroy()
    lab.destroy()  # idempotent
    assert not names & lab_namespaces()
    assert not [pid for pid in pids if alive(pid)]
    assert sleeper.returncode is not None
    assert not lab.cleanup_errors
    assert not lab.built


def test_failing_body_still_cleans_up() -> None:
    require_lab()
    seen: dict[str, Any] = {}

    def body() -> None:
        with NetLab() as lab:
            seen["names"] = set(lab.namespaces)
            seen["pids"] = [*lab.pids(), lab.run("mobile", ["sleep", "30"]).pid]
            raise RuntimeError("deliberate failure inside the lab")

    with pytest.raises(RuntimeError, match="deliberate"):
        body()
    assert not seen["names"] & lab_namespaces()
    assert not [pid for pid in seen["pids"] if alive(pid)]


def test_parallel_labs_do_not_collide() -> None:
    require_lab()
    with NetLab() as first, NetLab() as second:
        assert not set(first.namespaces) & set(second.namespaces)
        for each in (first, second):
            assert ping(each, "wifi", count=1).received == 1


def test_failed_build_cleans_up(monkeypatch: pytest.MonkeyPatch) -> None:
    require_lab()
    lab = NetLab()
    pids: list[int] = []

    def broken_nft(script: str) -> None:
        # The last build step: namespaces and tunlinks exist by now.
        pids.extend(lab.pids())
        raise LabError("nft broke")

    monkeypatch.setattr(lab, "_nft", broken_nft)
    with pytest.raises(LabError, match="nft broke"):
        lab.build()
    assert len(pids) == 2
    assert not set(lab.namespaces) & lab_namespaces()
    assert not [pid for pid in pids if alive(pid)]
    assert not lab.built


UDP_ECHO = """
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind(("0.0.0.0", int(sys.argv[1])))
print("listening", flush=True)
while True:
    data, addr = s.recvfrom(2048)
    s.sendto(data, addr)
"""

UDP_ASK = """
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.setsockopt(socket.SOL_SOCKET, socket.SO_BINDTODEVICE, sys.argv[1].encode())
s.settimeout(0.5)
for _ in range(4):
    s.sendto(b"ping", (sys.argv[2], int(sys.argv[3])))
    try:
        s.recvfrom(2048)
        print("answered")
        break
    except TimeoutError:
        pass
else:
    print("silent")
"""


def test_block_udp_drops_udp_and_passes_tcp(lab: NetLab) -> None:
    start_server(lab, UDP_ECHO)

    def udp(device: str) -> str:
        return lab.check("mobile", [sys.executable, "-c", UDP_ASK, device,
                                    lab.addresses["server"], str(PORT)]).strip()

    assert udp("wifi") == "answered"
    lab.block_udp("wifi", True)
    assert udp("wifi") == "silent"
    assert udp("cell") == "answered"
    assert reaches(lab, "wifi")  # ICMP (and TCP) still pass
    lab.block_udp("wifi", False)
    assert udp("wifi") == "answered"


# Connects to HOST:PORT from the given device ("-": any) and says what came of
# it: "refused" (a RST: the host is reachable, nothing listens), "ok",
# "timeout" (dropped on the way) or "unreachable" (a router said so).
CONNECT = r"""
import errno, socket, sys
device, host, port = sys.argv[1], sys.argv[2], int(sys.argv[3])
s = socket.socket()
if device != "-":
    s.setsockopt(socket.SOL_SOCKET, socket.SO_BINDTODEVICE, device.encode())
s.settimeout(1.0)
try:
    s.connect((host, port))
    print("ok")
except ConnectionRefusedError:
    print("refused")
except (TimeoutError, socket.timeout):
    print("timeout")
except OSError as exc:
    if exc.errno not in (errno.EHOSTUNREACH, errno.ENETUNREACH):
        raise
    print("unreachable")
"""


def connect(lab: NetLab, ns: str, host: str, device: str = "-") -> str:
    return lab.check(ns, [sys.executable, "-c", CONNECT, device, host, str(PORT)]).strip()


def test_relay_namespaces_reach_everyone_and_the_firewall_keeps_the_server_inside() -> None:
    require_lab()
    with NetLab(relays=2) as lab:
        a = lab.addresses
        assert (a["relay1"], a["relay2"]) == ("198.19.1.2", "198.19.2.2")
        for device in ("wifi", "cell"):
            assert connect(lab, "mobile", a["relay1"], device) == "refused"
        assert connect(lab, "relay1", a["relay2"]) == "refused"
        assert connect(lab, "server", a["relay2"]) == "refused"
        assert connect(lab, "relay1", a["server"]) == "refused"
        lab.firewall(True)
        # Nothing from outside gets in; the server still reaches out.
        assert connect(lab, "relay1", a["server"]) == "timeout"
        assert connect(lab, "mobile", a["server"], "wifi") == "timeout"
        assert connect(lab, "server", a["relay1"]) == "refused"
        lab.firewall(False)
        assert connect(lab, "relay1", a["server"]) == "refused"
        with pytest.raises(LabError, match="unknown namespace 'relay3'"):
            lab.check("relay3", ["true"])
    assert not lab.cleanup_errors
    assert not set(lab.namespaces) & lab_namespaces()


def test_relay_count_is_checked() -> None:
    with pytest.raises(LabError, match=r"relays must be 0\.\.4"):
        NetLab(relays=5)


# -- a mobile server: two server links, no NAT ---------------------------------


def test_server_link_arguments_are_checked() -> None:
    for bad in (0, 3, True, "2"):
        with pytest.raises(LabError, match="server_links must be 1 or 2"):
            NetLab(server_links=bad)  # type: ignore[arg-type]
    with pytest.raises(LabError, match="not built"):
        NetLab(server_links=2).server_link_down("srv")


def test_second_server_net_stays_clear_of_the_relay_nets() -> None:
    # Addresses are known before build(), so this needs no root.
    lab = NetLab(server_links=2, relays=MAX_RELAYS)
    a = lab.addresses
    assert (a["server"], a["router_server"]) == ("198.19.0.2", "198.19.0.1")
    assert (a["server2"], a["router_server2"]) == ("198.19.64.2", "198.19.64.1")
    benchmarking = ipaddress.ip_network("198.18.0.0/15")
    assert all(ipaddress.ip_address(x) in benchmarking for x in a.values())
    # Every namespace sits on a /24 of its own, shared only with the router.
    hosts = [x for key, x in a.items() if not key.startswith("router_")]
    nets = [ipaddress.ip_network(f"{x}/24", strict=False) for x in hosts]
    assert len(set(nets)) == len(nets) == 2 + 2 + MAX_RELAYS
    assert "server2" not in NetLab().addresses


@pytest.fixture(scope="module")
def mobile_server_lab() -> Iterator[NetLab]:
    """One lab shared by the tests below; each leaves it as it found it."""
    require_lab()
    with NetLab(wifi_delay_ms=1, cell_delay_ms=2, server_links=2, nat=False, relays=1) as lab:
        yield lab
    assert not lab.cleanup_errors


@contextlib.contextmanager
def serving(lab: NetLab, code: str) -> Iterator[None]:
    """A listener in the server for the length of a test, then gone, so the
    next test sharing the lab can bind the port again."""
    proc = start_server(lab, code)
    try:
        yield
    finally:
        proc.terminate()
        proc.wait(10)


def server_route(lab: NetLab, to: str) -> str:
    """The device the server's replies to `to` leave by."""
    found = re.search(r"\bdev (\S+)", lab.check("server", ["ip", "route", "get", to]))
    assert found is not None
    return found[1]


def test_mobile_reaches_both_server_addresses_over_each_link(mobile_server_lab: NetLab) -> None:
    lab = mobile_server_lab
    a = lab.addresses
    for device in ("wifi", "cell"):
        for host in (a["server"], a["server2"]):
            assert ping(lab, device, count=1, wait_s=2, host=host).received == 1, (device, host)
    # Both links up: srv, the lower metric, carries the server's answers.
    assert server_route(lab, a["mobile_cell"]) == "srv"


def test_without_nat_the_server_sees_the_real_cell_address(mobile_server_lab: NetLab) -> None:
    lab = mobile_server_lab
    a = lab.addresses
    with serving(lab, PEER_SERVER):
        for host in (a["server"], a["server2"]):
            assert peer_seen(lab, "cell", host) == a["mobile_cell"]
            assert peer_seen(lab, "wifi", host) == a["mobile_wifi"]


def test_server_link_down_falls_back_to_the_other(mobile_server_lab: NetLab) -> None:
    lab = mobile_server_lab
    a = lab.addresses
    with serving(lab, PEER_SERVER):
        try:
            lab.server_link_down("srv")
            lab.server_link_down("srv")  # idempotent
            for device in ("wifi", "cell"):
                assert not reaches(lab, device, a["server"]), device
                assert reaches(lab, device, a["server2"]), device
                # TCP needs the answers too: they leave by srv2 now.
                assert peer_seen(lab, device, a["server2"]) == a[f"mobile_{device}"]
            assert server_route(lab, a["mobile_wifi"]) == "srv2"
            assert server_route(lab, a["relay1"]) == "srv2"
            # A registrar in relay1 and the server still find each other.
            assert connect(lab, "server", a["relay1"]) == "refused"
            assert connect(lab, "relay1", a["server2"]) == "ok"
            # The router's neighbour lookup fails, or the packet just vanishes.
            assert connect(lab, "relay1", a["server"]) in ("timeout", "unreachable")

            lab.server_link_up("srv")
            lab.server_link_up("srv")  # idempotent
            assert server_route(lab, a["mobile_wifi"]) == "srv"
            for device in ("wifi", "cell"):
                for host in (a["server"], a["server2"]):
                    assert reaches(lab, device, host), (device, host)
                    assert peer_seen(lab, device, host) == a[f"mobile_{device}"]
            assert connect(lab, "relay1", a["server"]) == "ok"

            # The other way round: srv2 down leaves srv alone.
            lab.server_link_down("srv2")
            assert reaches(lab, "wifi", a["server"])
            assert not reaches(lab, "wifi", a["server2"])
            assert server_route(lab, a["relay1"]) == "srv"
        finally:
            lab.server_link_up("srv")
            lab.server_link_up("srv2")
    assert reaches(lab, "cell", a["server2"])


def test_change_server_address(mobile_server_lab: NetLab) -> None:
    lab = mobile_server_lab
    with serving(lab, PEER_SERVER):
        try:
            new = lab.change_server_address("srv2", 9)
            assert new == "198.19.64.9"
            assert lab.addresses["server2"] == new
            assert lab.change_server_address("srv2", 9) == new  # no change
            shown = lab.check("server", ["ip", "-br", "addr", "show", "dev", "srv2"])
            assert "198.19.64.9/24" in shown
            assert "198.19.64.2/" not in shown
            assert peer_seen(lab, "cell", new) == lab.addresses["mobile_cell"]
            # With srv down, srv2's routes (rebuilt after the change) carry
            # everything.
            lab.server_link_down("srv")
            assert peer_seen(lab, "wifi", new) == lab.addresses["mobile_wifi"]
            # A change while the link is down takes effect when it comes up.
            moved = lab.change_server_address("srv", 5)
            assert moved == lab.addresses["server"] == "198.19.0.5"
            lab.server_link_up("srv")
            assert peer_seen(lab, "wifi", moved) == lab.addresses["mobile_wifi"]
            assert not reaches(lab, "wifi", "198.19.0.2")
            with pytest.raises(LabError, match="host octet"):
                lab.change_server_address("srv2", 1)
        finally:
            lab.server_link_up("srv")
            lab.change_server_address("srv", 2)
            lab.change_server_address("srv2", 2)
    assert reaches(lab, "wifi", "198.19.0.2")
    assert reaches(lab, "wifi", "198.19.64.2")


def test_firewall_covers_both_server_links(mobile_server_lab: NetLab) -> None:
    lab = mobile_server_lab
    a = lab.addresses
    with serving(lab, PEER_SERVER):
        try:
            lab.firewall(True)
            for host in (a["server"], a["server2"]):
                assert connect(lab, "relay1", host) == "timeout", host
            assert connect(lab, "server", a["relay1"]) == "refused"
        finally:
            lab.firewall(False)
        assert connect(lab, "relay1", a["server2"]) == "ok"


def test_server_link_errors_name_the_problem(mobile_server_lab: NetLab) -> None:
    lab = mobile_server_lab
    for call in (lab.server_link_down, lab.server_link_up):
        with pytest.raises(LabError, match=r"unknown server link 'srv3': the lab has srv, srv2"):
            call("srv3")
    with pytest.raises(LabError, match="unknown server link 'wifi'"):
        lab.change_server_address("wifi", 3)
    with pytest.raises(LabError, match="host octet"):
        lab.change_server_address("srv", 255)
