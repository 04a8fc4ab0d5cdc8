"""A three-namespace network lab: a mobile device, a router and a server.

    mobile ==wifi== router ==srv=== server   198.19.0.0/24
    mobile ==cell== router ==srv2== server   198.19.64.0/24 (server_links=2)
                    router ==rlyN== relayN   198.19.N.0/24  (relays=N, a DMZ each)
    (with nat=True, the default, the router masquerades cell traffic)

`mobile` has two uplinks, `wifi` (198.18.1.0/24) and `cell` (198.18.2.0/24),
each with its own default route; wifi has the lower metric so unbound
traffic prefers it, and a socket bound to a device with SO_BINDTODEVICE
(`ping -I cell`) leaves by that device. `router` forwards between the uplinks
and `server` (198.19.0.2 on the veth pair `srv`; the router is 198.19.0.1).
Cell traffic is masqueraded on its way to the server, as a carrier's NAT
would; wifi traffic reaches the server with mobile's own address, so the
server routes 198.18.1.0/24 back through the router and has no route to the
cell subnet. `NetLab(nat=False)` drops the masquerade: both of mobile's
networks then behave as public addresses, and the server routes
198.18.2.0/24 back through the router as well.

`NetLab(server_links=2)` makes the server mobile too: a second veth pair,
`srv2` on both sides, gives it 198.19.64.2 (the router is 198.19.64.1), and
`addresses` names them `server2` and `router_server2`. The server routes
mobile's subnets and every relay's DMZ over both of its links, `srv` with
the lower metric and `srv2` as the fallback, so with `srv` down it still
answers (and reaches the relays) through `srv2`. `server_link_down(name)`,
`server_link_up(name)` and `change_server_address(name, octet)` change the
server's side of a link the way `link_down`, `link_up` and `change_address`
change mobile's. The router drops what arrives on a server link from an
address outside that link's net (ingress filtering, BCP 38), as a provider
would: a server that lost a network cannot go on using its address there.

Each uplink is a pair of TUN devices (`wifi` in mobile, `wifi-r` in router)
joined by a `roam.lab.tunlink` process, which adds delay and can black-hole
the link while it stays up. Rate limits are tbf qdiscs on both TUN devices;
random loss is an nftables table of the lab's own in the router namespace.
This kernel-independent mix stands in for netem, which not every kernel has.

`NetLab(relays=N)` adds N relay namespaces (`relay1`..), each on a veth of
its own to the router (198.19.N.2; the router is 198.19.N.1), reachable from
every other namespace: a DMZ for a relay. `firewall(True)` makes the server
an inside server: its namespace drops every inbound connection on any of
its links (nftables, conntrack state new) while its own outbound connections
and their answers pass.

Every name the lab creates carries a prefix made of the process id and a
counter (`roam<pid>x<n>-mobile`), so parallel labs and leftovers of a crashed
run never collide. `destroy()` removes all of it, and never raises.
All addresses come from 198.18.0.0/15, the range reserved for benchmarking.
"""

from __future__ import annotations

import atexit
import contextlib
import itertools
import math
import os
import selectors
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, Final

from roam.errors import RoamError
from roam.lab.tunlink import DEFAULT_MTU

__all__ = ["LINKS", "MAX_RELAYS", "SERVER_LINKS", "LabError", "NetLab"]

LINKS: Final = ("wifi", "cell")
# The server's links, in order of preference; a lab has the first 1 or 2.
SERVER_LINKS: Final = ("srv", "srv2")

_SERVER_HOST = 2
_ROUTER_HOST = 1
_MOBILE_HOST = 2
_NFT_TABLE = "roamlab"
_FIREWALL_TABLE = "roamlab_inside"
MAX_RELAYS: Final = 4

# How long one `ip`/`tc`/`nft` command, and a tunlink's start, may take.
_COMMAND_TIMEOUT = 30.0
_READY_TIMEOUT = 20.0
# Grace between SIGTERM and SIGKILL when ending a process.
_TERM_GRACE = 3.0

_counter = itertools.count()


class LabError(RoamError):
    """The lab could not be built or changed; the message names what failed."""


@dataclass(frozen=True)
class _Link:
    name: str
    net: str  # first three octets of the /24
    metric: int

    @property
    def router_iface(self) -> str:
        return f"{self.name}-r"

    @property
    def gateway(self) -> str:
        return f"{self.net}.{_ROUTER_HOST}"


_LINKS: Final = {
    "wifi": _Link("wifi", "198.18.1", 100),
    "cell": _Link("cell", "198.18.2", 200),
}
_NAT_LINK: Final = "cell"


@dataclass(frozen=True)
class _ServerLink:
    name: str  # the veth's name, the same in the router and in the server
    net: str  # first three octets of the /24
    metric: int  # of the server's routes through this link: lower is preferred
    key: str  # the server's address in `addresses`; the router's is router_<key>

    @property
    def gateway(self) -> str:
        return f"{self.net}.{_ROUTER_HOST}"


_SERVER_LINKS: Final = {
    "srv": _ServerLink("srv", "198.19.0", 100, "server"),
    # Far above the relay nets (198.19.1 .. 198.19.MAX_RELAYS), so raising
    # MAX_RELAYS a little never makes them overlap.
    "srv2": _ServerLink("srv2", "198.19.64", 200, "server2"),
}


def _relay_net(i: int) -> str:
    """relay<i>'s /24 (first three octets), beside the server's 198.19.0."""
    return f"198.19.{i}"


# Overlapping nets would make the router's connected routes ambiguous; fail
# at import rather than with a lab that routes to the wrong namespace.
if {_relay_net(i) for i in range(1, MAX_RELAYS + 1)} & {x.net for x in _SERVER_LINKS.values()}:
    raise ImportError("a relay net overlaps a server net: lower MAX_RELAYS")


def _check_delay(delay_ms: float, what: str) -> float:
    if not isinstance(delay_ms, int | float) or not math.isfinite(delay_ms) or delay_ms < 0:
        raise LabError(f"{what} must be a finite number of milliseconds >= 0, got {delay_ms!r}")
    return float(delay_ms)


class NetLab:
    """Builds, changes and removes the lab; use it as a context manager.

    `wifi_delay_ms` and `cell_delay_ms` are one-way delays added in each
    direction of that link, so its round trip grows by twice as much.
    `server_links` (1 or 2) is how many links the server has to the router;
    `nat=False` lets cell traffic reach the server unmasqueraded.
    """

    def __init__(
        self,
        *,
        wifi_delay_ms: float = 0.0,
        cell_delay_ms: float = 0.0,
        mtu: int = DEFAULT_MTU,
        relays: int = 0,
        server_links: int = 1,
        nat: bool = True,
    ) -> None:
        self._initial_delay = {
            "wifi": _check_delay(wifi_delay_ms, "wifi_delay_ms"),
            "cell": _check_delay(cell_delay_ms, "cell_delay_ms"),
        }
        if not 576 <= mtu <= 65535:
            raise LabError(f"mtu must be between 576 and 65535, got {mtu}")
        if not isinstance(relays, int) or not 0 <= relays <= MAX_RELAYS:
            raise LabError(f"relays must be 0..{MAX_RELAYS}, got {relays!r}")
        if (not isinstance(server_links, int) or isinstance(server_links, bool)
                or server_links not in (1, 2)):
            raise LabError(f"server_links must be 1 or 2, got {server_links!r}")
        self.mtu = mtu
        self.nat = bool(nat)
        self.server_link_names: tuple[str, ...] = SERVER_LINKS[:server_links]
        self.prefix = f"roam{os.getpid()}x{next(_counter)}"
        self.mobile = f"{self.prefix}-mobile"
        self.router = f"{self.prefix}-router"
        self.server = f"{self.prefix}-server"
        self.relays = tuple(f"{self.prefix}-relay{i}" for i in range(1, relays + 1))
        # Problems met while tearing down; destroy() records instead of raising.
        self.cleanup_errors: list[str] = []
        self._built = False
        self._dir: Path | None = None
        self._created: list[str] = []
        self._tunlinks: dict[str, subprocess.Popen[bytes]] = {}
        self._processes: list[subprocess.Popen[Any]] = []
        self._reset_state()

    def _reset_state(self) -> None:
        self._hosts = dict.fromkeys(LINKS, _MOBILE_HOST)
        self._down: set[str] = set()
        self._loss = dict.fromkeys(LINKS, 0.0)
        self._rate: dict[str, int | None] = dict.fromkeys(LINKS, None)
        self._udp_blocked: set[str] = set()
        self._server_hosts = dict.fromkeys(self.server_link_names, _SERVER_HOST)
        self._server_down: set[str] = set()

    # -- names and addresses -------------------------------------------------

    @property
    def namespaces(self) -> tuple[str, ...]:
        """(mobile, router, server, relay1, ...) namespace names."""
        return (self.mobile, self.router, self.server, *self.relays)

    @property
    def built(self) -> bool:
        return self._built

    @property
    def addresses(self) -> dict[str, str]:
        """Current addresses: mobile_wifi, mobile_cell, router_wifi, router_cell,
        router_server (router's address toward the server, which is also what
        the server sees for NATed cell traffic), server (on srv), with
        server_links=2 also server2 (the server on srv2) and router_server2
        (the router on srv2, what the server sees for NATed cell traffic
        arriving there), and relay1.. for each relay namespace."""
        out: dict[str, str] = {}
        for link in _LINKS.values():
            out[f"mobile_{link.name}"] = f"{link.net}.{self._hosts[link.name]}"
            out[f"router_{link.name}"] = link.gateway
        for name in self.server_link_names:
            srv = _SERVER_LINKS[name]
            out[f"router_{srv.key}"] = srv.gateway
            out[srv.key] = f"{srv.net}.{self._server_hosts[name]}"
        for i in range(1, len(self.relays) + 1):
            out[f"relay{i}"] = f"{_relay_net(i)}.{_SERVER_HOST}"
        return out

    def pids(self) -> list[int]:
        """Process ids of everything the lab started (tunlinks and run())."""
        return [p.pid for p in self._tunlinks.values()] + [p.pid for p in self._processes]

    def _namespace(self, ns: str) -> str:
        roles = {"mobile": self.mobile, "router": self.router, "server": self.server,
                 **{f"relay{i}": ns for i, ns in enumerate(self.relays, 1)}}
        if ns in roles:
            return roles[ns]
        if ns in roles.values():
            return ns
        raise LabError(
            f"unknown namespace {ns!r}: expected one of {', '.join(roles)} or "
            f"{self.namespaces}"
        )

    @staticmethod
    def _link(name: str) -> _Link:
        link = _LINKS.get(name)
        if link is None:
            raise LabError(f"unknown link {name!r}: the lab has {', '.join(LINKS)}")
        return link

    def _server_link(self, name: str) -> _ServerLink:
        if name not in self.server_link_names:
            raise LabError(
                f"unknown server link {name!r}: the lab has {', '.join(self.server_link_names)}"
            )
        return _SERVER_LINKS[name]

    def _require_built(self) -> None:
        if not self._built:
            raise LabError("the lab is not built: call build() or use it in a with block")

    # -- life cycle ----------------------------------------------------------

    def __enter__(self) -> NetLab:
        self.build()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.destroy()

    def build(self) -> None:
        """Create namespaces, links, routes and NAT; a second call does nothing."""
        if self._built:
            return
        # Interpreter exit without destroy() (an uncaught error outside a with
        # block) must still not leave namespaces and tunlinks behind.
        atexit.register(self.destroy)
        try:
            self._build()
        except BaseException:
            self.destroy()
            raise
        self._built = True

    def _build(self) -> None:
        self._reset_state()
        self._dir = Path(tempfile.mkdtemp(prefix=f"{self.prefix}-"))
        for ns in self.namespaces:
            # Fails if the name exists: someone else's namespace is never
            # adopted, so never deleted either.
            self._cmd(["ip", "netns", "add", ns])
            self._created.append(ns)
            # Both uplinks receive traffic for a source the default route
            # would send elsewhere; reverse-path filtering would drop it.
            # IPv6 is off so the links carry only the traffic tests make.
            self._exec(
                ns,
                [
                    "sysctl",
                    "-q",
                    "-w",
                    "net.ipv4.conf.all.rp_filter=0",
                    "net.ipv4.conf.default.rp_filter=0",
                    "net.ipv6.conf.all.disable_ipv6=1",
                    "net.ipv6.conf.default.disable_ipv6=1",
                ],
            )
            self._cmd(["ip", "-n", ns, "link", "set", "dev", "lo", "up"])
        self._exec(self.router, ["sysctl", "-q", "-w", "net.ipv4.ip_forward=1"])

        # Start both forwarders before waiting, so their start-ups overlap.
        for name in LINKS:
            self._start_tunlink(self._link(name))
        deadline = time.monotonic() + _READY_TIMEOUT
        for name, proc in self._tunlinks.items():
            self._wait_ready(name, proc, deadline)

        for name in self.server_link_names:
            srv = _SERVER_LINKS[name]
            # Created inside the router namespace, so no name ever appears on the host.
            self._ip(self.router, "link", "add", srv.name, "type", "veth", "peer", "name",
                     srv.name, "netns", self.server)
            self._ip(self.router, "addr", "add", f"{srv.gateway}/24", "dev", srv.name)
            self._ip(self.router, "link", "set", "dev", srv.name, "up")
            self._ip(self.server, "addr", "add", f"{srv.net}.{_SERVER_HOST}/24", "dev", srv.name)
            self._ip(self.server, "link", "set", "dev", srv.name, "up")

        for link in _LINKS.values():
            self._ip(self.router, "addr", "add", f"{link.gateway}/24", "dev", link.router_iface)
            self._ip(self.mobile, "addr", "add", f"{link.net}.{_MOBILE_HOST}/24", "dev", link.name)
            self._default_route(link)

        for i, ns in enumerate(self.relays, 1):
            self._relay_namespace(i, ns)
        for name in self.server_link_names:
            self._server_routes(_SERVER_LINKS[name])
            self._server_rule(_SERVER_LINKS[name],
                              f"{_SERVER_LINKS[name].net}.{self._server_hosts[name]}", "add")

        nat_net = f"{_LINKS[_NAT_LINK].net}.0/24"
        # Without NAT the chain stays, empty, so the table has one shape.
        masquerade = (
            f'ip saddr {nat_net} oifname != "{_LINKS[_NAT_LINK].router_iface}" masquerade'
            if self.nat
            else ""
        )
        # Ingress filtering (BCP 38), as a provider does: what arrives from a
        # server link must come from that link's own net. Without it, a
        # server that left a network would still send from its old address
        # through the other one (the address stays on a link that is down,
        # and its packets leave by whichever route is left).
        source_check = "\n".join(
            f'iifname "{name}" ip saddr != {_SERVER_LINKS[name].net}.0/24 drop'
            for name in self.server_link_names)
        self._nft(
            f"""
            table ip {_NFT_TABLE} {{
                chain nat_postrouting {{
                    type nat hook postrouting priority srcnat; policy accept;
                    {masquerade}
                }}
                chain loss_in {{
                    type filter hook prerouting priority raw; policy accept;
                }}
                chain loss_out {{
                    type filter hook postrouting priority filter; policy accept;
                }}
                chain udp_block {{
                    type filter hook forward priority filter; policy accept;
                }}
                chain source_check {{
                    type filter hook prerouting priority filter; policy accept;
                    {source_check}
                }}
            }}
            """
        )

    def _server_routed_nets(self) -> list[str]:
        """The /24s the server reaches through the router: mobile's public
        ones (wifi; cell too without NAT) and every relay's DMZ. The server's
        own nets are directly connected, and so need no route."""
        nets = [_LINKS["wifi"].net]
        if not self.nat:
            nets.append(_LINKS[_NAT_LINK].net)
        nets.extend(_relay_net(i) for i in range(1, len(self.relays) + 1))
        return [f"{net}.0/24" for net in nets]

    def _server_routes(self, srv: _ServerLink) -> None:
        """(Re)install the server's routes through `srv`; each link's metric
        differs, so the kernel keeps one route per link and uses the best one
        whose device is up: srv2 takes over as soon as srv goes down."""
        for net in self._server_routed_nets():
            self._ip(self.server, "route", "replace", net, "via", srv.gateway, "dev", srv.name,
                     "metric", str(srv.metric))
            # And in the link's own table, for what leaves from its address.
            self._ip(self.server, "route", "replace", net, "via", srv.gateway, "dev", srv.name,
                     "table", str(srv.metric))

    def _server_rule(self, srv: _ServerLink, address: str, action: str) -> None:
        """What the server sends from its address on `srv` leaves by `srv`
        (a multihomed host's source routing): the router's ingress filter
        drops it on the other link. Table and preference are the link's metric."""
        self._ip(self.server, "rule", action, "from", address, "table", str(srv.metric),
                 "pref", str(1000 + srv.metric))

    def _relay_namespace(self, i: int, ns: str) -> None:
        """relay<i>: a veth to the router, a default route through it. The
        server's route back to the relay's /24 is one of _server_routes."""
        net = _relay_net(i)
        veth = f"rly{i}"
        self._ip(self.router, "link", "add", veth, "type", "veth", "peer", "name", "rly",
                 "netns", ns)
        self._ip(self.router, "addr", "add", f"{net}.{_ROUTER_HOST}/24", "dev", veth)
        self._ip(self.router, "link", "set", "dev", veth, "up")
        self._ip(ns, "addr", "add", f"{net}.{_SERVER_HOST}/24", "dev", "rly")
        self._ip(ns, "link", "set", "dev", "rly", "up")
        self._ip(ns, "route", "add", "default", "via", f"{net}.{_ROUTER_HOST}", "dev", "rly")

    def firewall(self, on: bool) -> None:
        """Make the server an inside server (on) or a reachable one (off):
        every connection that begins outside it is dropped, silently."""
        self._require_built()
        # Every interface but loopback leads outside, srv2 as much as srv.
        script = (f"table inet {_FIREWALL_TABLE} {{\n chain input {{\n"
                  "  type filter hook input priority filter; policy accept;\n"
                  '  iifname != "lo" ct state new drop\n }\n}\n')
        if on:
            self._cmd(["ip", "netns", "exec", self.server, "nft", "-f", "-"], stdin=script)
        else:
            with contextlib.suppress(LabError):
                self._cmd(["ip", "netns", "exec", self.server, "nft", "delete", "table",
                           "inet", _FIREWALL_TABLE])

    def destroy(self) -> None:
        """Remove everything build() made; safe to call any time, never raises."""
        with contextlib.suppress(Exception):
            atexit.unregister(self.destroy)
        for proc in self._processes:
            self._end(proc, "process")
        self._processes.clear()
        for ns in self._created:
            self._kill_namespace_processes(ns)
        for name, proc in self._tunlinks.items():
            self._end(proc, f"tunlink {name}")
        self._tunlinks.clear()
        for ns in reversed(self._created):
            try:
                self._cmd(["ip", "netns", "del", ns])
            except Exception as exc:
                self.cleanup_errors.append(f"deleting namespace {ns}: {exc}")
        self._created.clear()
        if self._dir is not None:
            shutil.rmtree(self._dir, ignore_errors=True)
            self._dir = None
        self._built = False

    def _end(self, proc: subprocess.Popen[Any], what: str) -> None:
        try:
            if proc.stdin is not None:
                # A tunlink started with --watch-stdin exits on this alone.
                with contextlib.suppress(OSError):
                    proc.stdin.close()
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(_TERM_GRACE)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(_TERM_GRACE)
            for stream in (proc.stdout, proc.stderr):
                if stream is not None:
                    stream.close()
        except Exception as exc:
            self.cleanup_errors.append(f"ending {what} {proc.pid}: {exc}")

    def _kill_namespace_processes(self, ns: str) -> None:
        # Children of run() processes (a shell's jobs, say) outlive their
        # parent's SIGTERM; anything still inside our namespace is ours.
        try:
            out = subprocess.run(
                ["ip", "netns", "pids", ns],
                capture_output=True,
                text=True,
                timeout=_COMMAND_TIMEOUT,
                check=False,
            ).stdout
            for word in out.split():
                with contextlib.suppress(ProcessLookupError, ValueError):
                    os.kill(int(word), signal.SIGKILL)
        except Exception as exc:
            self.cleanup_errors.append(f"listing processes in {ns}: {exc}")

    # -- running things inside -----------------------------------------------

    def run(self, ns: str, argv: list[str], **popen_kwargs: Any) -> subprocess.Popen[Any]:
        """Start `argv` in namespace `ns` (a role or full name); destroy() ends it."""
        self._require_built()
        proc: subprocess.Popen[Any] = subprocess.Popen(
            ["ip", "netns", "exec", self._namespace(ns), *argv], **popen_kwargs
        )
        self._processes.append(proc)
        return proc

    def check(self, ns: str, argv: list[str], timeout: float = _COMMAND_TIMEOUT) -> str:
        """Run `argv` in namespace `ns` to completion and return its stdout."""
        self._require_built()
        return self._exec(self._namespace(ns), argv, timeout)

    def _exec(self, ns: str, argv: list[str], timeout: float = _COMMAND_TIMEOUT) -> str:
        return self._cmd(["ip", "netns", "exec", ns, *argv], timeout)

    def _ip(self, ns: str, *args: str) -> str:
        return self._cmd(["ip", "-n", ns, *args])

    def _cmd(self, argv: list[str], timeout: float = _COMMAND_TIMEOUT, stdin: str = "") -> str:
        try:
            done = subprocess.run(
                argv, input=stdin, capture_output=True, text=True, timeout=timeout, check=False
            )
        except FileNotFoundError:
            raise LabError(f"{argv[0]} is not installed (needed for: {' '.join(argv)})") from None
        except subprocess.TimeoutExpired:
            raise LabError(f"{' '.join(argv)} did not finish within {timeout} s") from None
        if done.returncode != 0:
            raise LabError(
                f"{' '.join(argv)} failed with status {done.returncode}: "
                f"{done.stderr.strip() or done.stdout.strip() or 'no output'}"
            )
        return done.stdout

    def _nft(self, script: str) -> None:
        self._cmd(["ip", "netns", "exec", self.router, "nft", "-f", "-"], stdin=script)

    # -- the userspace links -------------------------------------------------

    def _control_path(self, name: str) -> Path:
        if self._dir is None:
            raise LabError("the lab is not built: call build() or use it in a with block")
        return self._dir / f"{name}.ctl"

    def _start_tunlink(self, link: _Link) -> None:
        control = self._control_path(link.name)
        # The package may not be installed in the interpreter's site-packages.
        package_root = str(Path(__file__).resolve().parents[2])
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [package_root, env.get("PYTHONPATH")]))
        argv = [
            sys.executable,
            "-m",
            "roam.lab.tunlink",
            "--a",
            f"{self.mobile}:{link.name}",
            "--b",
            f"{self.router}:{link.router_iface}",
            "--delay-ms",
            repr(self._initial_delay[link.name]),
            "--mtu",
            str(self.mtu),
            "--control",
            str(control),
            "--watch-stdin",
        ]
        with open(control.with_suffix(".log"), "wb") as log:
            self._tunlinks[link.name] = subprocess.Popen(
                argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log, env=env
            )

    def _log_tail(self, name: str) -> str:
        try:
            text = self._control_path(name).with_suffix(".log").read_text(errors="replace")
        except (OSError, LabError):
            return ""
        return f": {text.strip()[-2000:]}" if text.strip() else ""

    def _wait_ready(self, name: str, proc: subprocess.Popen[bytes], deadline: float) -> None:
        if proc.stdout is None:
            raise LabError(f"tunlink for {name} has no stdout pipe")
        fd = proc.stdout.fileno()
        buffer = b""
        with selectors.DefaultSelector() as selector:
            selector.register(fd, selectors.EVENT_READ)
            while b"\n" not in buffer:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise LabError(
                        f"tunlink for {name} did not report ready within {_READY_TIMEOUT} s"
                        f"{self._log_tail(name)}"
                    )
                if not selector.select(remaining):
                    continue
                chunk = os.read(fd, 4096)
                if not chunk:
                    status = proc.wait(_TERM_GRACE)
                    raise LabError(
                        f"tunlink for {name} exited with status {status} before it was ready"
                        f"{self._log_tail(name)}"
                    )
                buffer += chunk
        first = buffer.split(b"\n", 1)[0].strip()
        if first != b"ready":
            raise LabError(f"tunlink for {name} said {first!r} instead of 'ready'")

    def control(self, name: str, command: str) -> str:
        """Send one control command to link `name`'s tunlink; returns its answer."""
        self._require_built()
        self._link(name)
        path = self._control_path(name)
        data = b""
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
                sock.settimeout(_COMMAND_TIMEOUT)
                sock.connect(str(path))
                sock.sendall(command.encode("utf-8") + b"\n")
                while not data.endswith(b"\n"):
                    chunk = sock.recv(65536)
                    if not chunk:
                        break
                    data += chunk
        except OSError as exc:
            raise LabError(f"tunlink for {name}: {command!r} failed: {exc}") from None
        answer = data.decode("utf-8", "replace").strip()
        if not answer or answer.startswith("error"):
            raise LabError(f"tunlink for {name}: {command!r}: {answer or 'no answer'}")
        return answer

    # -- changing the links --------------------------------------------------

    def _default_route(self, link: _Link) -> None:
        self._ip(
            self.mobile,
            "route",
            "replace",
            "default",
            "via",
            link.gateway,
            "dev",
            link.name,
            "metric",
            str(link.metric),
        )

    def link_down(self, name: str) -> None:
        """Take mobile's side of the link down, as when the radio goes away."""
        self._require_built()
        link = self._link(name)
        self._ip(self.mobile, "link", "set", "dev", link.name, "down")
        self._down.add(link.name)

    def link_up(self, name: str) -> None:
        """Bring mobile's side back up and restore its default route."""
        self._require_built()
        link = self._link(name)
        self._ip(self.mobile, "link", "set", "dev", link.name, "up")
        self._down.discard(link.name)
        # The kernel dropped the route when the device went down.
        self._default_route(link)

    def blackhole(self, name: str, on: bool) -> None:
        """Silently drop everything on the link (both ways) while it stays up."""
        self._require_built()
        self.control(self._link(name).name, "blackhole on" if on else "blackhole off")

    def set_delay(self, name: str, ms: float) -> None:
        """One-way delay added in each direction of the link."""
        self._require_built()
        link = self._link(name)
        self.control(link.name, f"delay {_check_delay(ms, 'delay'):g}")

    def set_loss(self, name: str, percent: float) -> None:
        """Drop `percent` of packets at random in each direction of the link."""
        self._require_built()
        link = self._link(name)
        if not isinstance(percent, int | float) or not 0 <= percent <= 100:
            raise LabError(f"loss must be between 0 and 100 percent, got {percent!r}")
        self._loss[link.name] = float(percent)
        lines = [f"flush chain ip {_NFT_TABLE} loss_in", f"flush chain ip {_NFT_TABLE} loss_out"]
        for other in _LINKS.values():
            # numgen works on whole numbers: hundredths of a percent.
            threshold = round(self._loss[other.name] * 100)
            if threshold == 0:
                continue
            drop = f"numgen random mod 10000 < {threshold} drop"
            iface = other.router_iface
            lines.append(f'add rule ip {_NFT_TABLE} loss_in iifname "{iface}" {drop}')
            lines.append(f'add rule ip {_NFT_TABLE} loss_out oifname "{iface}" {drop}')
        self._nft("\n".join(lines) + "\n")

    def block_udp(self, name: str, on: bool) -> None:
        """Drop every UDP packet crossing the link (as some networks do); TCP passes."""
        self._require_built()
        link = self._link(name)
        if on:
            self._udp_blocked.add(link.name)
        else:
            self._udp_blocked.discard(link.name)
        lines = [f"flush chain ip {_NFT_TABLE} udp_block"]
        for blocked in sorted(self._udp_blocked):
            iface = _LINKS[blocked].router_iface
            for way in ("iifname", "oifname"):
                lines.append(f'add rule ip {_NFT_TABLE} udp_block {way} "{iface}" '
                             "meta l4proto udp drop")
        self._nft("\n".join(lines) + "\n")

    def set_rate(self, name: str, bits_per_s: int | None) -> None:
        """Cap the link at `bits_per_s` in each direction; None removes the cap."""
        self._require_built()
        link = self._link(name)
        if bits_per_s is not None and (not isinstance(bits_per_s, int) or bits_per_s <= 0):
            raise LabError(
                f"rate must be a whole number of bits per second > 0, got {bits_per_s!r}"
            )
        ends = ((self.mobile, link.name), (self.router, link.router_iface))
        if bits_per_s is None:
            if self._rate[link.name] is not None:
                for ns, dev in ends:
                    self._cmd(["tc", "-n", ns, "qdisc", "del", "dev", dev, "root"])
            self._rate[link.name] = None
            return
        burst = self._burst(bits_per_s)
        # The queue holds about 100 ms, a typical access-link buffer.
        limit = max(burst + self.mtu, bits_per_s // 80)
        for ns, dev in ends:
            self._cmd(
                [
                    "tc",
                    "-n",
                    ns,
                    "qdisc",
                    "replace",
                    "dev",
                    dev,
                    "root",
                    "tbf",
                    "rate",
                    f"{bits_per_s}bit",
                    "burst",
                    str(burst),
                    "limit",
                    str(limit),
                ]
            )
        self._rate[link.name] = bits_per_s

    def _burst(self, bits_per_s: int) -> int:
        # The bucket must hold whole packets, or tbf drops every full-size
        # one; otherwise about 10 ms of traffic.
        return max(2 * self.mtu, bits_per_s // 800)

    def rate_burst(self, name: str) -> int:
        """Bytes the link's tbf lets through at once before the cap bites (0: no cap)."""
        rate = self._rate[self._link(name).name]
        return 0 if rate is None else self._burst(rate)

    def change_address(self, name: str, new_host_octet: int) -> str:
        """Give mobile a new address on the link (same /24); returns it."""
        self._require_built()
        link = self._link(name)
        if not isinstance(new_host_octet, int) or not 2 <= new_host_octet <= 254:
            raise LabError(f"host octet must be 2..254 (1 is the router), got {new_host_octet!r}")
        old = f"{link.net}.{self._hosts[link.name]}"
        new = f"{link.net}.{new_host_octet}"
        if new == old:
            return new
        self._ip(self.mobile, "addr", "del", f"{old}/24", "dev", link.name)
        self._ip(self.mobile, "addr", "add", f"{new}/24", "dev", link.name)
        self._hosts[link.name] = new_host_octet
        if link.name not in self._down:
            # Removing the old address took the default route with it.
            self._default_route(link)
        return new

    def link_stats(self, name: str) -> str:
        """The link's tunlink counters, as the JSON line `stats` returns."""
        return self.control(self._link(name).name, "stats")

    # -- changing the server's links -----------------------------------------

    def server_link_down(self, name: str) -> None:
        """Take the server's side of link `name` (srv or srv2) down; the
        kernel drops the server's routes through it, so another link's take
        over. Doing it twice is harmless."""
        self._require_built()
        srv = self._server_link(name)
        self._ip(self.server, "link", "set", "dev", srv.name, "down")
        self._server_down.add(srv.name)

    def server_link_up(self, name: str) -> None:
        """Bring the server's side of link `name` back up, with its address
        and routes. Doing it twice is harmless."""
        self._require_built()
        srv = self._server_link(name)
        self._ip(self.server, "link", "set", "dev", srv.name, "up")
        self._server_down.discard(srv.name)
        # IPv4 addresses survive a down link, but restore it anyway, so the
        # link comes back as the lab describes it whatever happened meanwhile.
        self._ip(self.server, "addr", "replace", f"{srv.net}.{self._server_hosts[srv.name]}/24",
                 "dev", srv.name)
        # The routes through the link went when it went down.
        self._server_routes(srv)

    def change_server_address(self, name: str, new_host_octet: int) -> str:
        """Give the server a new address on link `name` (same /24); returns it."""
        self._require_built()
        srv = self._server_link(name)
        if not isinstance(new_host_octet, int) or not 2 <= new_host_octet <= 254:
            raise LabError(f"host octet must be 2..254 (1 is the router), got {new_host_octet!r}")
        old = f"{srv.net}.{self._server_hosts[srv.name]}"
        new = f"{srv.net}.{new_host_octet}"
        if new == old:
            return new
        # Delete first: with the old address primary, adding the new one as a
        # secondary and then deleting the primary would take both away.
        self._ip(self.server, "addr", "del", f"{old}/24", "dev", srv.name)
        self._ip(self.server, "addr", "add", f"{new}/24", "dev", srv.name)
        self._server_rule(srv, old, "del")
        self._server_rule(srv, new, "add")
        self._server_hosts[srv.name] = new_host_octet
        if srv.name not in self._server_down:
            # Removing the link's only address took its routes with it.
            self._server_routes(srv)
        return new
