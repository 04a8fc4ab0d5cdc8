"""Transparent mode: the generated nftables script, the kernel interception in a
network namespace of the test's own (root), and the session wiring in-process."""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from roam.core.frames import ChannelKind
from roam.errors import ConfigError
from roam.interfaces import transparent as tp
from roam.interfaces.transparent import Transparent, build_rules, parse_cidrs
from tests.conftest import require

from .conftest import SocksStack, UdpEcho

ROOT = Path(__file__).resolve().parents[2]
# Inside the namespace: the host's address on its one link, a covered network
# routed through that link, and a "server" address in it whose port is excluded.
HOST_ADDR = "198.18.5.1"
COVERED = "198.18.9.0/24"
TARGET = "198.18.9.9"
SERVER = ("198.18.9.7", 7000)

# ---- the script ----------------------------------------------------------------


def test_script_holds_table_networks_ports_and_exclusions() -> None:
    rules = build_rules(["10.1.0.0/16", "198.18.9.9"], 12345, 12346, [("203.0.113.5", 7000)])
    script = rules.nft
    assert f"table ip {tp.TABLE} {{" in script
    # Replaced in one transaction, so a reinstall after a crash never stacks rules.
    assert script.startswith(f"table ip {tp.TABLE} {{}}\ndelete table ip {tp.TABLE}\n")
    assert "elements = { 10.1.0.0/16, 198.18.9.9/32 }" in script
    assert "type nat hook output" in script
    assert "redirect to :12345" in script
    assert "type route hook output" in script
    assert f"meta mark set {hex(tp.MARK_INTERCEPT)}" in script
    assert "type filter hook prerouting" in script
    assert "tproxy to 127.0.0.1:12346" in script
    # Each output chain lets roam's own sockets, the server and loopback pass first.
    for proto, chain in (("tcp", "tcp_redirect"), ("udp", "udp_mark")):
        body = script.split(f"chain {chain} {{")[1].split("\n    }")[0]
        lines = [line.strip() for line in body.splitlines()
                 if line.strip() and not line.strip().startswith("#")]
        assert lines[1:4] == [f"meta mark {hex(tp.MARK_BYPASS)} return",
                              "ip daddr 127.0.0.0/8 return",
                              f"ip daddr 203.0.113.5 {proto} dport 7000 return"]
        assert "@targets" in lines[-1]
    assert rules.cidrs == parse_cidrs(["10.1.0.0/16", "198.18.9.9/32"])


def test_policy_route_loops_marked_udp_through_lo() -> None:
    commands = build_rules(["10.0.0.0/8"], 1, 2).ip_commands
    assert ["ip", "-4", "route", "replace", "local", "0.0.0.0/0", "dev", "lo", "table",
            str(tp.ROUTE_TABLE)] in commands
    assert ["ip", "-4", "rule", "add", "fwmark", hex(tp.MARK_INTERCEPT), "lookup",
            str(tp.ROUTE_TABLE), "priority", str(tp.RULE_PRIORITY)] in commands


def test_ipv6_server_is_not_excluded_since_it_is_never_caught() -> None:
    script = build_rules(["10.0.0.0/8"], 1, 2, [("2001:db8::1", 7000)]).nft
    assert "2001:db8" not in script


def test_marks_differ_so_roam_traffic_never_takes_the_loop() -> None:
    assert tp.MARK_BYPASS != tp.MARK_INTERCEPT


@pytest.mark.parametrize(
    ("cidrs", "named"),
    [
        (["2001:db8::/32"], "'2001:db8::/32'"),
        (["10.0.0.0/8", "fd00::/8", "example.com"], "'fd00::/8', 'example.com'"),
        (["10.0.0.0/33"], "'10.0.0.0/33'"),
        ([""], "''"),
    ],
)
def test_refuses_what_is_not_an_ipv4_network(cidrs: list[str], named: str) -> None:
    with pytest.raises(ConfigError, match=f"IPv4 networks .*not: {named}$"):
        build_rules(cidrs, 1, 2)
    with pytest.raises(ConfigError, match="IPv4 networks"):
        Transparent(cidrs, lambda: None)


def test_refuses_no_networks_bad_ports_and_unresolved_servers() -> None:
    with pytest.raises(ConfigError, match="at least one IPv4 network"):
        build_rules([], 1, 2)
    with pytest.raises(ConfigError, match="TCP port 0 is not a port"):
        build_rules(["10.0.0.0/8"], 0, 2)
    with pytest.raises(ConfigError, match="UDP port 70000 is not a port"):
        build_rules(["10.0.0.0/8"], 1, 70000)
    with pytest.raises(ConfigError, match=r"'gw\.example' must be an IP address"):
        build_rules(["10.0.0.0/8"], 1, 2, [("gw.example", 7000)])


def test_install_and_remove_say_they_need_root(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(tp.os, "geteuid", lambda: 1000)
    rules = build_rules(["10.0.0.0/8"], 1, 2)
    with pytest.raises(ConfigError, match="transparent mode needs root"):
        tp.install(rules)
    with pytest.raises(ConfigError, match="transparent mode needs root"):
        tp.remove()


def test_install_names_a_missing_nft(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(tp.os, "geteuid", lambda: 0)
    monkeypatch.setattr(tp.shutil, "which", lambda name: None if name == "nft" else "/x")
    with pytest.raises(ConfigError, match=r"needs the 'nft' command .*nftables"):
        tp.install(build_rules(["10.0.0.0/8"], 1, 2))


def test_sockaddr_in_parsing() -> None:
    raw = bytes([2, 0]) + (443).to_bytes(2, "big") + socket.inet_aton("198.18.9.9") + bytes(8)
    assert tp._sockaddr_in(raw) == ("198.18.9.9", 443)


# ---- the kernel, in a namespace of our own (root) ------------------------------

_names = itertools.count()


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, timeout=30)


@pytest.fixture
def netns() -> Iterator[str]:
    """A namespace with lo up and one veth link carrying HOST_ADDR; COVERED is
    routed out of it to a gateway that never answers."""
    require(os.geteuid() == 0, "transparent mode needs root (nftables, policy routing)")
    require(shutil.which("nft") is not None, "nft is missing (Debian package nftables)")
    name = f"roamtp{os.getpid()}x{next(_names)}"
    _ip("netns", "add", name)
    try:
        _ip("-n", name, "link", "set", "lo", "up")
        _ip("-n", name, "link", "add", "v0", "type", "veth", "peer", "name", "v1")
        _ip("-n", name, "addr", "add", f"{HOST_ADDR}/24", "dev", "v0")
        _ip("-n", name, "link", "set", "v0", "up")
        _ip("-n", name, "link", "set", "v1", "up")
        _ip("-n", name, "route", "add", COVERED, "via", "198.18.5.254", "dev", "v0")
        # Strict reverse-path filtering, as hardened hosts have: the loop
        # through lo must pass it.
        subprocess.run(["ip", "netns", "exec", name, "sysctl", "-q", "-w",
                        "net.ipv4.conf.all.rp_filter=1", "net.ipv4.conf.lo.rp_filter=1"],
                       check=True, capture_output=True, timeout=30)
        yield name
    finally:
        # Deleting the namespace takes its nft table, rules and routes with it.
        subprocess.run(["ip", "netns", "del", name], capture_output=True, timeout=30,
                       check=False)


def _in_netns(ns: str, probe: str) -> dict[str, Any]:
    """Run `probe` (a function of this module) inside `ns`; its JSON result."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), str(ROOT)])}
    code = f"import json; from tests.interfaces.test_transparent import {probe}; " \
           f"print(json.dumps({probe}()))"
    done = subprocess.run(["ip", "netns", "exec", ns, sys.executable, "-c", code], env=env,
                          cwd=ROOT, capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    result: dict[str, Any] = json.loads(done.stdout.splitlines()[-1])
    return result


def _shell(*argv: str) -> str:
    return subprocess.run(argv, capture_output=True, text=True, timeout=30,
                          check=False).stdout


def _lands(listener: socket.socket, dest: tuple[str, int], mark: int | None = None) -> bool:
    """Whether a TCP connect to `dest` is redirected to `listener`."""
    client = socket.socket()
    if mark is not None:
        client.setsockopt(socket.SOL_SOCKET, socket.SO_MARK, mark)
    client.setblocking(False)
    client.connect_ex(dest)
    listener.settimeout(0.5)
    try:
        accepted, _ = listener.accept()
    except TimeoutError:
        return False
    finally:
        client.close()
    accepted.close()
    return True


def _udp_lands(receiver: socket.socket, dest: tuple[str, int]) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sender:
        sender.sendto(b"x", dest)
    receiver.settimeout(0.5)
    try:
        tp.receive_datagram(receiver)
    except TimeoutError:
        return False
    return True


def probe_interception() -> dict[str, Any]:
    """In the namespace: install, intercept TCP and UDP, check the exclusions, remove."""
    out: dict[str, Any] = {}
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    receiver = tp.udp_receiver()
    receiver.setblocking(True)
    rules = build_rules([COVERED], listener.getsockname()[1], receiver.getsockname()[1],
                        [SERVER])
    tp.install(rules)
    tp.install(rules)  # a second install (a restart after a crash) replaces the first
    out["table"] = _shell("nft", "list", "table", "ip", tp.TABLE)
    out["rules"] = _shell("ip", "-4", "rule", "show")
    out["routes"] = _shell("ip", "-4", "route", "show", "table", str(tp.ROUTE_TABLE))

    app = socket.create_connection((TARGET, 443), timeout=5)
    listener.settimeout(5)
    accepted, peer = listener.accept()
    out["tcp"] = {"app": app.getsockname(), "peer": peer, "orig": tp.original_dst(accepted)}
    app.sendall(b"ping")
    out["tcp"]["data"] = accepted.recv(10).decode()
    for sock in (app, accepted):
        sock.close()

    udp_app = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    udp_app.settimeout(5)
    udp_app.sendto(b"query", (TARGET, 53))
    receiver.settimeout(5)
    data, source, dest = tp.receive_datagram(receiver)
    assert dest is not None
    with tp.reply_socket(dest) as reply:
        reply.sendto(b"answer", source)
        answer, answered_from = udp_app.recvfrom(100)
    out["udp"] = {"app": ["198.18.5.1", udp_app.getsockname()[1]], "data": data.decode(),
                  "source": source, "orig": dest, "answer": answer.decode(),
                  "answered_from": answered_from}
    udp_app.close()

    out["excluded"] = {
        "tcp_marked": _lands(listener, (TARGET, 443), tp.MARK_BYPASS),
        "tcp_server": _lands(listener, SERVER),
        "tcp_uncovered": _lands(listener, ("198.18.5.77", 443)),
        "udp_server": _udp_lands(receiver, SERVER),
        "tcp_covered": _lands(listener, (TARGET, 80)),
        "udp_covered": _udp_lands(receiver, (TARGET, 123)),
    }
    tp.remove()
    out["after"] = {"installed": tp.installed(), "tables": _shell("nft", "list", "tables"),
                    "rules": _shell("ip", "-4", "rule", "show"),
                    "routes": _shell("ip", "-4", "route", "show", "table",
                                     str(tp.ROUTE_TABLE)),
                    "tcp_covered": _lands(listener, (TARGET, 80))}
    tp.remove()  # idempotent: nothing left is not an error
    return out


def test_kernel_intercepts_tcp_and_udp(netns: str) -> None:
    out = _in_netns(netns, "probe_interception")
    assert f"table ip {tp.TABLE}" in out["table"]
    assert COVERED in out["table"]
    assert "redirect to :" in out["table"]
    assert "tproxy to 127.0.0.1:" in out["table"]
    assert f"ip daddr {SERVER[0]} tcp dport {SERVER[1]} return" in out["table"]
    assert out["rules"].count(f"fwmark {hex(tp.MARK_INTERCEPT)} lookup {tp.ROUTE_TABLE}") == 1
    assert "local default dev lo" in out["routes"]

    tcp = out["tcp"]
    assert tcp["orig"] == [TARGET, 443]
    assert tcp["peer"] == tcp["app"]
    assert tcp["data"] == "ping"

    udp = out["udp"]
    assert udp["data"] == "query"
    assert udp["orig"] == [TARGET, 53]
    assert udp["source"] == udp["app"]
    assert udp["answer"] == "answer"
    assert udp["answered_from"] == [TARGET, 53]

    assert out["excluded"] == {"tcp_marked": False, "tcp_server": False,
                               "tcp_uncovered": False, "udp_server": False,
                               "tcp_covered": True, "udp_covered": True}

    after = out["after"]
    assert after["installed"] is False
    assert tp.TABLE not in after["tables"]
    assert hex(tp.MARK_INTERCEPT) not in after["rules"]
    assert after["routes"] == ""
    assert after["tcp_covered"] is False


class _FakeSession:
    def __init__(self) -> None:
        self.opened: list[tuple[str, int, int]] = []
        self.sent = bytearray()
        self._cid = itertools.count(1, 2)

    def open_channel(self, host: str, port: int, kind: int = ChannelKind.STREAM) -> int:
        self.opened.append((host, port, int(kind)))
        return next(self._cid)

    def send(self, cid: int, data: bytes) -> None:
        self.sent += data

    def send_room(self, cid: int) -> int:
        return 1 << 20

    def consumed(self, cid: int, n: int) -> None:
        pass

    def reset_channel(self, cid: int) -> None:
        pass


class _FakeDriver:
    """Records what the driver asks of a session, so the kernel test needs none."""

    def __init__(self) -> None:
        self.session = _FakeSession()
        self.apps: dict[int, Any] = {}
        self.paused: set[int] = set()
        self.datagrams: list[tuple[int, bytes]] = []

    def add_app(self, app: Any) -> None:
        self.apps[app.cid] = app

    def send_datagram(self, cid: int, data: bytes) -> bool:
        self.datagrams.append((cid, data))
        return True

    def schedule(self) -> None:
        pass

    def flush(self) -> None:
        pass


async def _until(cond: Any, timeout: float = 5.0) -> None:
    async with asyncio.timeout(timeout):
        while not cond():  # noqa: ASYNC110  (the fake has no event to wait on)
            await asyncio.sleep(0.01)


def probe_driver() -> dict[str, Any]:
    """In the namespace: the Transparent driver itself, with a recording session."""
    async def main() -> dict[str, Any]:
        driver = _FakeDriver()
        fake: Any = driver  # stands in for a SessionDriver: only what the driver uses
        mode = Transparent([COVERED], lambda: fake, exclude=[SERVER])
        tcp_port, udp_port = await mode.start()
        out: dict[str, Any] = {"installed": tp.installed(), "ports": [tcp_port, udp_port]}
        try:
            reader, writer = await asyncio.open_connection(TARGET, 5432)
            writer.write(b"hello")
            await _until(lambda: driver.session.sent == b"hello")
            (cid, app), = driver.apps.items()
            app.deliver(b"world")
            out["tcp_answer"] = (await reader.readexactly(5)).decode()
            writer.close()

            loop = asyncio.get_running_loop()
            answers: asyncio.Queue[tuple[bytes, Any]] = asyncio.Queue()

            class App(asyncio.DatagramProtocol):
                def datagram_received(self, data: bytes, addr: Any) -> None:
                    answers.put_nowait((data, addr))

            udp_app, _ = await loop.create_datagram_endpoint(App, remote_addr=(TARGET, 53))
            udp_app.sendto(b"query")
            await _until(lambda: len(driver.datagrams) == 1)
            cid = driver.datagrams[0][0]
            driver.apps[cid].deliver(b"answer")
            data, addr = await asyncio.wait_for(answers.get(), 5)
            out["udp_answer"], out["udp_from"] = data.decode(), addr
            udp_app.sendto(b"again")  # the same flow: no second channel
            await _until(lambda: len(driver.datagrams) == 2)
            out["datagrams"] = [(c, d.decode()) for c, d in driver.datagrams]
            out["opened"] = driver.session.opened
            udp_app.close()
        finally:
            mode.close()
        out["after_close"] = tp.installed()
        return out

    return asyncio.run(main())


def test_driver_carries_intercepted_connections_and_datagrams(netns: str) -> None:
    out = _in_netns(netns, "probe_driver")
    assert out["installed"] is True
    assert out["tcp_answer"] == "world"
    assert out["udp_answer"] == "answer"
    assert out["udp_from"] == [TARGET, 53]
    stream, datagram = int(ChannelKind.STREAM), int(ChannelKind.DATAGRAM)
    assert out["opened"] == [[TARGET, 5432, stream], [TARGET, 53, datagram]]
    cid = out["datagrams"][0][0]
    assert out["datagrams"] == [[cid, "query"], [cid, "again"]]
    assert out["after_close"] is False


# ---- the session wiring, in-process (no root) ----------------------------------


class _Loopback(Transparent):
    """Transparent mode minus the kernel: every connection "was" for `dest`, and
    answers leave from an ordinary socket."""

    def __init__(self, stack: SocksStack, dest: tuple[str, int]) -> None:
        super().__init__(["127.0.0.0/8"], lambda: stack.client.driver, install_rules=False)
        self.dest = dest

    def original_destination(self, sock: socket.socket) -> tuple[str, int]:
        return self.dest

    def reply_socket(self, origin: tuple[str, int]) -> socket.socket:
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.bind(("127.0.0.1", 0))
        return sock


def test_session_carries_tcp_and_udp_to_the_original_destination() -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        echo, _ = await loop.create_datagram_endpoint(UdpEcho, local_addr=("127.0.0.1", 0))
        stack = SocksStack()
        stack.udp_port = echo.get_extra_info("sockname")[1]
        await stack.start()
        mode = _Loopback(stack, ("127.0.0.1", stack.echo_port))
        tcp_port, _ = await mode.start()
        app = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        app.bind(("127.0.0.1", 0))
        app.setblocking(False)
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", tcp_port)
            payload = os.urandom(200_000)
            writer.write(payload)
            assert await asyncio.wait_for(reader.readexactly(len(payload)), 30) == payload
            writer.close()

            source = app.getsockname()
            for i in range(3):
                mode.datagram(f"q{i}".encode(), source, ("127.0.0.1", stack.udp_port))
                deadline = time.monotonic() + 10
                while True:
                    try:
                        data = app.recv(100)
                        break
                    except BlockingIOError:
                        assert time.monotonic() < deadline, "no answer through the session"
                        await asyncio.sleep(0.01)
                assert data == f"echo:q{i}".encode()
            assert len(mode.flows) == 1  # one (source, destination): one channel
        finally:
            app.close()
            mode.close()
            await stack.close()
            echo.close()
        assert mode.connections == 1

    asyncio.run(main())


def test_a_connection_before_the_session_is_refused_at_once() -> None:
    async def main() -> None:
        mode = Transparent(["10.0.0.0/8"], lambda: None, install_rules=False)
        tcp_port, _ = await mode.start()
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", tcp_port)
            with pytest.raises((ConnectionResetError, asyncio.IncompleteReadError)):
                await asyncio.wait_for(reader.readexactly(1), 5)
            writer.close()
        finally:
            mode.close()

    asyncio.run(main())
