"""Local forwards: `--forward LHOST:LPORT=[SERVER/]RHOST:RPORT`.

Each connection accepted on LHOST:LPORT becomes one channel to RHOST:RPORT,
opened by the server (claim 1: one application socket, one twin). Both hosts
are validated when the argument is parsed (`roam.names.Host`) and kept in
normal form, so the server is asked for exactly the name its rules will see.

A client with several servers (`--server NAME=...`) names the one a
forward goes to before the destination (`=lab/db:5432`); without a name it
goes to the first.

Options follow the destination after a comma. `udp:...,redundant` sends
every datagram of the forward's channels on two paths at once, the active
one and the backup (docs/protocol.md 12.5): for voice and the like
over two lossy links, where a late or lost datagram is worse than a copy.
"""

from __future__ import annotations

import asyncio
import dataclasses
import ipaddress
import logging
from collections.abc import Callable
from dataclasses import dataclass

from roam.connector.allow import format_host_port, parse_port, split_host_port
from roam.errors import ConfigError
from roam.names import Host, InvalidHost
from roam.servers import is_server_name
from roam.transport.driver import AppConnection, SessionDriver

log = logging.getLogger("roam.forward")


@dataclass(frozen=True, slots=True)
class ForwardSpec:
    """A parsed forward; the hosts are addresses or DNS names in normal form."""

    listen_host: str
    listen_port: int
    dest_host: str
    dest_port: int
    udp: bool = False
    # Each datagram on two paths (UDP only).
    redundant: bool = False
    # The server (its --server NAME) the channels go to; None: the first.
    server: str | None = None

    @classmethod
    def parse(cls, text: str) -> ForwardSpec:
        """`[tcp:|udp:]LHOST:LPORT=[SERVER/]RHOST:RPORT[,OPTION...]` (TCP when no
        protocol is named); the one option is `redundant`, for UDP."""
        # No host, port or IPv6 literal holds a comma: the first one ends the address part.
        spec, comma, rest = text.partition(",")
        server = None
        left, eq, right = spec.partition("=")
        if eq and "/" in right:  # no host or port holds a '/': it ends the server's name
            server, _, right = right.partition("/")
            if not is_server_name(server):
                raise ConfigError(f"--forward {text!r}: {server!r} is not a server's name "
                                  "(letters, digits, '.', '_', '-': as --server NAME=...)")
            spec = f"{left}={right}"
        udp = spec.startswith("udp:")
        if udp or spec.startswith("tcp:"):
            parsed = cls._parse(spec[4:], text, udp)
        else:
            parsed = cls._parse(spec, text, False)
        options = _options(rest, text) if comma else set()
        if "redundant" in options:
            if not udp:
                raise ConfigError(f"--forward {text!r}: 'redundant' is for UDP forwards "
                                  "(udp:LHOST:LPORT=RHOST:RPORT,redundant): a stream is "
                                  "already delivered whole, sending it twice adds nothing")
            parsed = dataclasses.replace(parsed, redundant=True)
        return dataclasses.replace(parsed, server=server) if server else parsed

    @classmethod
    def parse_reverse(cls, text: str) -> ForwardSpec:
        """`--reverse RHOST:RPORT=LHOST:LPORT`: TCP; the listen side (beside the
        server) first, and it needs a real port, since the client names it."""
        if text.startswith(("udp:", "tcp:")):
            raise ConfigError(f"--reverse {text!r}: reverse forwards carry TCP; expected "
                              "RHOST:RPORT=LHOST:LPORT with a TCP port to listen on beside "
                              "the server")
        return cls._parse(text, text, False, flag="--reverse", shape="RHOST:RPORT=LHOST:LPORT",
                          sides=("listen address beside the server", "local address"),
                          listen_zero=False)

    @classmethod
    def _parse(cls, spec: str, text: str, udp: bool, *, flag: str = "--forward",
               shape: str = "LHOST:LPORT=RHOST:RPORT",
               sides: tuple[str, str] = ("listen address", "destination"),
               listen_zero: bool = True) -> ForwardSpec:
        if spec.count("=") != 1:
            raise ConfigError(f"{flag} {text!r}: expected {shape} with exactly one '='")
        left, _, right = spec.partition("=")
        lhost, lport = split_host_port(left, f"{flag} {sides[0]}")
        rhost, rport = split_host_port(right, f"{flag} {sides[1]}")
        return cls(_host(left, lhost, text, flag, sides[0]),
                   _port(lport, text, flag, allow_zero=listen_zero),
                   _host(right, rhost, text, flag, sides[1]), _port(rport, text, flag), udp)

    def __str__(self) -> str:
        return (f"{format_host_port(self.listen_host, self.listen_port)}="
                f"{self.server + '/' if self.server else ''}"
                f"{format_host_port(self.dest_host, self.dest_port)}"
                f"{',redundant' if self.redundant else ''}")


# What may follow the destination, after commas.
OPTIONS = ("redundant",)


def _options(text: str, spec: str) -> set[str]:
    """The options after the first comma of `spec`, each known and given once."""
    found: set[str] = set()
    for item in text.split(","):
        option = item.strip()
        if not option:
            raise ConfigError(f"--forward {spec!r}: empty option (a stray ',')")
        if option not in OPTIONS:
            raise ConfigError(f"--forward {spec!r}: unknown option {option!r} "
                              f"(known: {', '.join(OPTIONS)})")
        if option in found:
            raise ConfigError(f"--forward {spec!r}: {option!r} is given twice")
        found.add(option)
    return found


def _host(side: str, host: str, spec: str, flag: str, what: str) -> str:
    """`host` (from `side`, one half of `spec`) in normal form, or a ConfigError."""
    try:
        parsed = Host.parse(host)
    except InvalidHost as exc:
        raise ConfigError(f"{flag} {spec!r}: {what}: {exc}") from None
    if side.strip().startswith("[") and not isinstance(parsed.address, ipaddress.IPv6Address):
        raise ConfigError(f"{flag} {spec!r}: {what}: brackets are for IPv6 addresses, "
                          f"not {host!r}")
    return str(parsed)


def _port(text: str, spec: str, flag: str, *, allow_zero: bool = False) -> int:
    if allow_zero and text == "0":
        return 0
    port = parse_port(text, f"{flag} {spec!r}")
    if port is None:
        raise ConfigError(f"{flag} {spec!r}: a port is needed")
    return port


class Forward:
    """Listens for applications and opens a channel for each connection."""

    def __init__(self, spec: ForwardSpec, current: Callable[[], SessionDriver | None]) -> None:
        self.spec = spec
        self._current = current
        self._server: asyncio.Server | None = None
        self.connections = 0

    async def start(self) -> tuple[str, int]:
        loop = asyncio.get_running_loop()
        try:
            self._server = await loop.create_server(self._accept, self.spec.listen_host,
                                                    self.spec.listen_port)
        except OSError as exc:
            where = format_host_port(self.spec.listen_host, self.spec.listen_port)
            raise ConfigError(f"--forward '{self.spec}': cannot listen on {where}: "
                              f"{exc.strerror or exc}") from None
        addr = self._server.sockets[0].getsockname()
        log.info("forward %s:%d -> %s:%d", addr[0], addr[1], self.spec.dest_host,
                 self.spec.dest_port)
        return addr[0], addr[1]

    def close(self) -> None:
        if self._server is not None:
            self._server.close()

    def _accept(self) -> asyncio.Protocol:
        driver = self._current()
        if driver is None:
            raise ConfigError("forward accepted a connection before the session exists")
        self.connections += 1
        return AppConnection(driver, on_made=self._opened)

    def _opened(self, app: AppConnection) -> None:
        session = app.driver.session
        app.cid = session.open_channel(self.spec.dest_host, self.spec.dest_port)
        app.driver.add_app(app)
        app.driver.schedule()
