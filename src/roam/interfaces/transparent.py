"""Transparent mode: applications' IPv4 traffic to chosen networks, caught by the kernel.

Applications on the mobile unit keep connecting to the real destinations;
nftables rules in a table of roam's own steer that traffic to roam, which
carries it over the session like a forward whose destination is read from
the socket:

- TCP: a `nat` chain on hook `output` REDIRECTs new connections to
  127.0.0.1:<tcp port>; `SO_ORIGINAL_DST` on the accepted socket gives the
  address the application asked for, and that becomes the channel's
  destination.
- UDP: TPROXY only exists in prerouting, which locally generated packets
  never cross. A `route` chain on hook `output` marks them `MARK_INTERCEPT`,
  which makes the kernel route them again; a policy rule (`ip rule fwmark
  MARK_INTERCEPT lookup ROUTE_TABLE`, with `local 0.0.0.0/0 dev lo` in that
  table) sends them through `lo`, where the prerouting chain TPROXYs them to
  an IP_TRANSPARENT socket on 127.0.0.1:<udp port>. IP_RECVORIGDSTADDR gives
  each datagram's original destination; answers go out from an
  IP_TRANSPARENT socket bound to that destination, so the application sees
  them come from where it sent.

roam's own traffic must never be caught, or its transports would loop into
themselves. Two exclusions, both checked first in every chain:

- `MARK_BYPASS`: every socket roam opens toward the network (its transports,
  and the reply sockets here) carries this mark with SO_MARK. A mark is per
  socket, so it stays right whatever uid, cgroup or path the daemon runs
  with; setting it needs CAP_NET_ADMIN, which transparent mode needs anyway.
- the server's address and port (`exclude`), for the transports of a
  daemon that has not set the mark, and for the moment before it does.

Loopback destinations are never caught either: they never leave the host,
and catching them would loop through roam's own listeners.

Everything lives in one nftables table (`TABLE`) plus one policy rule and
one routing table, all with fixed names and numbers, so `remove()` can
undo a crashed run without knowing what it installed.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import os
import shutil
import socket
import struct
import subprocess
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Final

from roam.core.frames import ChannelKind
from roam.errors import ConfigError
from roam.eventloop import stream_transport
from roam.transport.driver import AppConnection, SessionDriver

log = logging.getLogger("roam.transparent")

TABLE: Final = "roam_transparent"
FAMILY: Final = "ip"
# "ROAM" in ASCII: a value unlikely to be chosen by other software that marks
# packets. Set with SO_MARK on every socket roam opens toward the network.
MARK_BYPASS: Final = 0x524F414D
# Put by the output route chain on UDP to be intercepted; steers the policy
# route through lo. Differs from MARK_BYPASS so roam's own packets never take it.
MARK_INTERCEPT: Final = 0x524F4155
# The policy routing table holding the `local 0.0.0.0/0 dev lo` route, and the
# priority of the rule that selects it (before `main`, at 32766).
ROUTE_TABLE: Final = 21071
RULE_PRIORITY: Final = 21071

# Linux constants Python's socket module lacks (linux/in.h, netfilter_ipv4.h).
SO_ORIGINAL_DST: Final = 80
IP_TRANSPARENT: Final = 19
IP_RECVORIGDSTADDR: Final = 20
IP_ORIGDSTADDR: Final = IP_RECVORIGDSTADDR
_SOCKADDR_IN: Final = struct.Struct("!2xH4s8x")  # family (host order, skipped), port, addr

# Like udpforward's flows: a NAT-like idle time for request/response protocols.
FLOW_IDLE = 60.0
# Largest UDP payload over IPv4.
_MAX_DATAGRAM = 65507
# How long one nft or ip command may take.
_COMMAND_TIMEOUT = 30.0
_LOOPBACK: Final = ipaddress.IPv4Network("127.0.0.0/8")

Addr = tuple[str, int]


# ---- the rules ---------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Rules:
    """What `install()` sets up: the nft script and the policy route commands."""

    cidrs: tuple[ipaddress.IPv4Network, ...]
    tcp_port: int
    udp_port: int
    exclude: tuple[tuple[ipaddress.IPv4Address, int], ...]
    nft: str

    @property
    def ip_commands(self) -> list[list[str]]:
        """`ip` argv lists that loop marked UDP through lo (run after the table exists)."""
        return [
            ["ip", "-4", "route", "replace", "local", "0.0.0.0/0", "dev", "lo",
             "table", str(ROUTE_TABLE)],
            ["ip", "-4", "rule", "add", "fwmark", hex(MARK_INTERCEPT), "lookup",
             str(ROUTE_TABLE), "priority", str(RULE_PRIORITY)],
        ]


def parse_cidrs(cidrs: Iterable[str]) -> tuple[ipaddress.IPv4Network, ...]:
    """IPv4 networks from text; ConfigError names every entry that is not one."""
    good: list[ipaddress.IPv4Network] = []
    bad: list[str] = []
    for text in cidrs:
        try:
            net = ipaddress.ip_network(text.strip(), strict=False)
        except ValueError:
            bad.append(text)
            continue
        if isinstance(net, ipaddress.IPv4Network):
            good.append(net)
        else:
            bad.append(text)
    if bad:
        raise ConfigError("transparent mode takes IPv4 networks (like 10.1.0.0/16); "
                          f"not: {', '.join(repr(b) for b in bad)}")
    if not good:
        raise ConfigError("transparent mode needs at least one IPv4 network to intercept")
    return tuple(good)


def _port(port: int, what: str) -> int:
    if not isinstance(port, int) or not 1 <= port <= 65535:
        raise ConfigError(f"transparent mode: {what} {port!r} is not a port from 1 to 65535")
    return port


def build_rules(cidrs: Iterable[str], tcp_port: int, udp_port: int,
                exclude: Iterable[Addr] = ()) -> Rules:
    """The nftables script for `cidrs`, catching TCP into 127.0.0.1:`tcp_port` and
    UDP into 127.0.0.1:`udp_port`, leaving alone roam's marked sockets and each
    (IPv4 address, port) of `exclude` (the server's transports)."""
    nets = parse_cidrs(cidrs)
    tcp_port, udp_port = _port(tcp_port, "TCP port"), _port(udp_port, "UDP port")
    skip: list[tuple[ipaddress.IPv4Address, int]] = []
    for host, port in exclude:
        try:
            addr = ipaddress.ip_address(host)
        except ValueError:
            raise ConfigError(f"transparent mode: the excluded server address {host!r} "
                              "must be an IP address (resolve the name first)") from None
        # An IPv6 server is never caught: only IPv4 destinations are.
        if isinstance(addr, ipaddress.IPv4Address):
            skip.append((addr, _port(port, "excluded server port")))

    elements = ", ".join(str(n) for n in nets)

    def exclusions(proto: str) -> str:
        lines = [f"meta mark {hex(MARK_BYPASS)} return",
                 f"ip daddr {_LOOPBACK} return"]
        lines += [f"ip daddr {a} {proto} dport {p} return" for a, p in skip]
        return "\n        ".join(lines)

    script = f"""\
table {FAMILY} {TABLE} {{}}
delete table {FAMILY} {TABLE}
table {FAMILY} {TABLE} {{
    set targets {{
        type ipv4_addr; flags interval; auto-merge;
        elements = {{ {elements} }}
    }}

    chain tcp_redirect {{
        # -100 is dstnat's value; nft only accepts the name in prerouting.
        type nat hook output priority -100; policy accept;
        {exclusions("tcp")}
        ip daddr @targets meta l4proto tcp redirect to :{tcp_port}
    }}

    chain udp_mark {{
        # A route chain: changing the mark here makes the kernel route the
        # packet again, now by the policy rule, out through lo.
        type route hook output priority mangle; policy accept;
        {exclusions("udp")}
        # Broadcast and multicast (DHCP, mDNS) have no one destination to carry to.
        fib daddr type {{ broadcast, multicast }} return
        ip daddr @targets meta l4proto udp meta mark set {hex(MARK_INTERCEPT)}
    }}

    chain udp_tproxy {{
        # Only the packets our own output chain marked and looped: nothing
        # arriving from outside is ever diverted.
        type filter hook prerouting priority mangle; policy accept;
        iif "lo" meta mark {hex(MARK_INTERCEPT)} meta l4proto udp \
tproxy to 127.0.0.1:{udp_port} accept
    }}
}}
"""
    return Rules(nets, tcp_port, udp_port, tuple(skip), script)


# ---- installing and removing -------------------------------------------------


def need_tools() -> None:
    """ConfigError unless this process can install rules (root, nft, ip)."""
    if os.geteuid() != 0:
        raise ConfigError("transparent mode needs root (nftables rules, policy routing "
                          "and IP_TRANSPARENT sockets)")
    for tool in ("nft", "ip"):
        if shutil.which(tool) is None:
            package = "nftables" if tool == "nft" else "iproute2"
            raise ConfigError(f"transparent mode needs the {tool!r} command "
                              f"(Debian package {package}), which is not installed")


def _run(argv: list[str], stdin: str = "") -> subprocess.CompletedProcess[str]:
    try:
        return subprocess.run(argv, input=stdin, capture_output=True, text=True,
                              timeout=_COMMAND_TIMEOUT, check=False)
    except FileNotFoundError:
        raise ConfigError(f"transparent mode needs the {argv[0]!r} command, "
                          "which is not installed") from None
    except subprocess.TimeoutExpired:
        raise ConfigError(f"{' '.join(argv)} did not finish within "
                          f"{_COMMAND_TIMEOUT:g} s") from None


def _must(argv: list[str], stdin: str = "") -> None:
    done = _run(argv, stdin)
    if done.returncode != 0:
        raise ConfigError(f"transparent mode: {' '.join(argv)} failed: "
                          f"{done.stderr.strip() or done.stdout.strip() or 'no output'}")


def install(rules: Rules) -> None:
    """Load the table and the policy route; replaces what a crashed run left.

    On failure everything already installed is removed again before the
    ConfigError propagates, so the host is never left half-intercepted.
    """
    need_tools()
    try:
        # The script replaces the table in one transaction; the policy rule
        # is removed first so a reinstall never stacks a second copy.
        _remove_policy_route()
        _must(["nft", "-f", "-"], rules.nft)
        for argv in rules.ip_commands:
            _must(argv)
    except BaseException:
        with contextlib.suppress(ConfigError):
            remove()
        raise
    log.info("transparent: intercepting %s (TCP -> :%d, UDP -> :%d)",
             ", ".join(map(str, rules.cidrs)), rules.tcp_port, rules.udp_port)


def installed() -> bool:
    """Whether roam's table is loaded (the policy route is not looked at)."""
    done = _run(["nft", "list", "tables", FAMILY])
    return done.returncode == 0 and f"table {FAMILY} {TABLE}" in done.stdout.splitlines()


def remove() -> None:
    """Delete roam's table, policy rule and route if present; safe to repeat.

    Looks only at the fixed names and numbers, so it also cleans up after a
    daemon that died without calling it (`roam client --cleanup`). Raises
    ConfigError only when something present could not be deleted.
    """
    need_tools()
    problems: list[str] = []
    if installed():
        done = _run(["nft", "delete", "table", FAMILY, TABLE])
        # Someone else deleting it meanwhile is as good as us deleting it.
        if done.returncode != 0 and installed():
            problems.append(f"nft delete table {FAMILY} {TABLE}: {done.stderr.strip()}")
    problems += _remove_policy_route()
    if problems:
        raise ConfigError("transparent mode: could not remove: " + "; ".join(problems))


def _remove_policy_route() -> list[str]:
    problems: list[str] = []
    # A rule is deleted once per copy; the bound keeps a failing delete from spinning.
    for _ in range(16):
        shown = _run(["ip", "-4", "rule", "show", "priority", str(RULE_PRIORITY)])
        if shown.returncode != 0 or not shown.stdout.strip():
            break
        done = _run(["ip", "-4", "rule", "del", "priority", str(RULE_PRIORITY)])
        if done.returncode != 0:
            problems.append(f"ip rule del priority {RULE_PRIORITY}: {done.stderr.strip()}")
            break
    shown = _run(["ip", "-4", "route", "show", "table", str(ROUTE_TABLE)])
    if shown.returncode == 0 and shown.stdout.strip():
        done = _run(["ip", "-4", "route", "flush", "table", str(ROUTE_TABLE)])
        if done.returncode != 0:
            problems.append(f"ip route flush table {ROUTE_TABLE}: {done.stderr.strip()}")
    return problems


# ---- sockets -----------------------------------------------------------------


def _sockaddr_in(raw: bytes) -> Addr:
    port, packed = _SOCKADDR_IN.unpack(raw[:_SOCKADDR_IN.size])
    return socket.inet_ntoa(packed), port


def original_dst(sock: socket.socket) -> Addr:
    """Where the application connected before REDIRECT (OSError if it was not redirected)."""
    return _sockaddr_in(sock.getsockopt(socket.SOL_IP, SO_ORIGINAL_DST, _SOCKADDR_IN.size))


def mark_socket(sock: socket.socket) -> None:
    """Exempt `sock` from interception; for roam's own sockets (needs CAP_NET_ADMIN
    or CAP_NET_RAW)."""
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_MARK, MARK_BYPASS)


def udp_receiver(host: str = "127.0.0.1", port: int = 0, *,
                 transparent: bool = True) -> socket.socket:
    """The socket TPROXY delivers intercepted UDP to, non-blocking; read it with
    `receive_datagram`. TPROXY only delivers to IP_TRANSPARENT sockets, which
    need CAP_NET_ADMIN; `transparent=False` is for use without the rules."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        if transparent:
            sock.setsockopt(socket.SOL_IP, IP_TRANSPARENT, 1)
        sock.setsockopt(socket.SOL_IP, IP_RECVORIGDSTADDR, 1)
        sock.bind((host, port))
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock


def receive_datagram(sock: socket.socket) -> tuple[bytes, Addr, Addr | None]:
    """(payload, source, original destination) of one datagram from `udp_receiver`.

    The destination is None when the kernel attached none; such a datagram
    cannot be answered from the right address, so callers drop it.
    """
    data, ancillary, _flags, source = sock.recvmsg(_MAX_DATAGRAM,
                                                   socket.CMSG_SPACE(_SOCKADDR_IN.size))
    dest: Addr | None = None
    for level, kind, value in ancillary:
        if level == socket.SOL_IP and kind == IP_ORIGDSTADDR:
            dest = _sockaddr_in(value)
    return data, (source[0], source[1]), dest


def reply_socket(origin: Addr) -> socket.socket:
    """A non-blocking socket whose datagrams leave from `origin`, an address that
    is not ours: how answers reach an application from where it sent to.

    SO_REUSEADDR lets several such sockets, and the kernel's delivery to the
    TPROXY socket, share one original destination; the socket is never
    connected, so TPROXY never picks it for the application's next datagram.
    """
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.SOL_IP, IP_TRANSPARENT, 1)
        # The answer goes to the application's own address, which may lie in
        # an intercepted network: the mark keeps it from being caught again.
        mark_socket(sock)
        sock.bind(origin)
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock


# ---- the driver --------------------------------------------------------------


class _Flow:
    """One (application source, original destination) pair: its datagram channel."""

    def __init__(self, owner: Transparent, driver: SessionDriver, source: Addr,
                 dest: Addr) -> None:
        self.owner = owner
        self.driver = driver
        self.source, self.dest = source, dest
        self.last_used = asyncio.get_running_loop().time()
        self.cid: int | None = driver.session.open_channel(dest[0], dest[1],
                                                           ChannelKind.DATAGRAM)
        driver.add_app(self)

    def deliver(self, data: bytes | memoryview) -> None:
        self.last_used = asyncio.get_running_loop().time()
        self.owner.send_reply(self.dest, bytes(data), self.source)

    def end(self) -> None:
        pass

    def finish(self) -> None:
        self.owner.forget(self)

    def abort(self) -> None:
        self.owner.forget(self)


class _Refuse(asyncio.Protocol):
    """A connection caught before the session exists: reset it at once, so the
    application fails fast and retries instead of hanging on a silent socket."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        log.info("transparent: a connection before the session exists, refused")
        try:
            stream_transport(transport).abort()
        except TypeError:  # not a stream: nothing to reset
            transport.close()


class Transparent:
    """Carries intercepted TCP connections and UDP flows over the current session.

    `start()` listens on 127.0.0.1:`tcp_port` and 127.0.0.1:`udp_port` (0:
    any free port) and then installs the rules for the ports it got;
    `close()` removes them. `exclude` lists the server's (IPv4 address,
    port) pairs; the daemon should also `mark_socket()` its transports.
    """

    def __init__(self, cidrs: Sequence[str], current: Callable[[], SessionDriver | None], *,
                 tcp_port: int = 0, udp_port: int = 0, exclude: Sequence[Addr] = (),
                 install_rules: bool = True) -> None:
        build_rules(cidrs, 1, 1, exclude)  # refuse bad networks and servers before binding
        self.cidrs = list(cidrs)
        self._current = current
        self._ports = (tcp_port, udp_port)
        self.exclude = list(exclude)
        self._install_rules = install_rules
        self.rules: Rules | None = None
        self._server: asyncio.Server | None = None
        self._udp: socket.socket | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self.flows: dict[tuple[Addr, Addr], _Flow] = {}
        self._replies: dict[Addr, socket.socket] = {}
        self._sweeper: asyncio.Task[None] | None = None
        self.connections = 0

    async def start(self) -> tuple[int, int]:
        """Listen, then install the rules; returns the (TCP, UDP) ports."""
        loop = self._loop = asyncio.get_running_loop()
        tcp_port, udp_port = self._ports
        try:
            self._server = await loop.create_server(self._accept, "127.0.0.1", tcp_port)
            self._udp = udp_receiver("127.0.0.1", udp_port, transparent=self._install_rules)
        except OSError as exc:
            self._close_sockets()
            raise ConfigError(f"transparent mode: cannot listen on 127.0.0.1: "
                              f"{exc.strerror or exc}") from None
        tcp_port = self._server.sockets[0].getsockname()[1]
        udp_port = self._udp.getsockname()[1]
        loop.add_reader(self._udp.fileno(), self._readable)
        self._sweeper = loop.create_task(self._sweep(), name="transparent-udp-flows")
        try:
            rules = build_rules(self.cidrs, tcp_port, udp_port, self.exclude)
            if self._install_rules:
                # Synchronous on purpose: a few short commands, and a cancelled
                # start must not leave a thread installing rules behind it.
                install(rules)
        except BaseException:
            self._close_sockets()
            raise
        self.rules = rules
        return tcp_port, udp_port

    def close(self) -> None:
        """Stop intercepting (rules first, so nothing new is caught), then close
        the listeners; each step runs even if an earlier one failed."""
        try:
            if self._install_rules and self.rules is not None:
                self.rules = None
                remove()
        finally:
            self._close_sockets()

    def _close_sockets(self) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
            self._sweeper = None
        if self._server is not None:
            self._server.close()
            self._server = None
        if self._udp is not None:
            if self._loop is not None and not self._loop.is_closed():
                self._loop.remove_reader(self._udp.fileno())
            self._udp.close()
            self._udp = None
        for sock in self._replies.values():
            sock.close()
        self._replies.clear()

    # ---- TCP ---------------------------------------------------------------

    def original_destination(self, sock: socket.socket) -> Addr:
        """The redirected connection's destination; a seam for tests without nftables."""
        return original_dst(sock)

    def _accept(self) -> asyncio.Protocol:
        driver = self._current()
        if driver is None:
            return _Refuse()
        self.connections += 1
        return AppConnection(driver, on_made=self._opened)

    def _opened(self, app: AppConnection) -> None:
        if app.transport is None:
            return  # connection_made always sets it; nothing to carry without one
        sock = app.transport.get_extra_info("socket")
        try:
            host, port = self.original_destination(sock)
        except OSError as exc:
            # Connected to the listener itself, not redirected: nowhere to carry it.
            log.info("transparent: a connection without an original destination: %s", exc)
            app.transport.abort()
            return
        app.cid = app.driver.session.open_channel(host, port)
        app.driver.add_app(app)
        app.driver.schedule()

    # ---- UDP ---------------------------------------------------------------

    def _readable(self) -> None:
        # Drain what is queued: one wakeup may stand for many datagrams.
        while self._udp is not None:
            try:
                data, source, dest = receive_datagram(self._udp)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                log.debug("transparent: UDP receive: %s", exc)
                return
            if dest is None:
                log.debug("transparent: a datagram from %s:%d was not intercepted", *source)
                continue
            self.datagram(data, source, dest)

    def datagram(self, data: bytes, source: Addr, dest: Addr) -> None:
        """One intercepted datagram from `source` to `dest`: send it on its flow."""
        driver = self._current()
        if driver is None:
            return
        key = (source, dest)
        flow = self.flows.get(key)
        if flow is None or flow.driver is not driver or flow.cid not in driver.apps:
            flow = _Flow(self, driver, source, dest)
            self.flows[key] = flow
        flow.last_used = asyncio.get_running_loop().time()
        if flow.cid is not None and not driver.send_datagram(flow.cid, data):
            log.debug("transparent: datagram of %d bytes to %s:%d dropped", len(data), *dest)
        driver.flush()

    def reply_socket(self, origin: Addr) -> socket.socket:
        """A socket sending from `origin`; a seam for tests without IP_TRANSPARENT."""
        return reply_socket(origin)

    def send_reply(self, origin: Addr, data: bytes, to: Addr) -> None:
        sock = self._replies.get(origin)
        try:
            if sock is None:
                sock = self._replies[origin] = self.reply_socket(origin)
            sock.sendto(data, to)
        except OSError as exc:
            # UDP may drop: a full buffer or a vanished application loses this one.
            log.debug("transparent: reply from %s:%d to %s:%d dropped: %s", *origin, *to, exc)

    def forget(self, flow: _Flow) -> None:
        if self.flows.get((flow.source, flow.dest)) is flow:
            del self.flows[(flow.source, flow.dest)]
        if not any(f.dest == flow.dest for f in self.flows.values()):
            sock = self._replies.pop(flow.dest, None)
            if sock is not None:
                sock.close()

    async def _sweep(self) -> None:
        while True:
            await asyncio.sleep(FLOW_IDLE / 4)
            now = asyncio.get_running_loop().time()
            for flow in list(self.flows.values()):
                if now - flow.last_used >= FLOW_IDLE:
                    self.forget(flow)
                    if flow.cid is not None:
                        flow.driver.apps.pop(flow.cid, None)
                        flow.driver.session.reset_channel(flow.cid)
                        flow.driver.schedule()
