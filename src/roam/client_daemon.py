"""The client daemon: one session per server, the forwards, SOCKS and DNS on top.

With several `--server NAME=...` each server has a session of its own, with
its own transports on the same paths (its own path manager and link driver),
opened at once; a forward names the server it goes to (`LHOST:LPORT=
NAME/RHOST:RPORT`), and one that names none, SOCKS, DNS, transparent mode and
reverse forwards go to the first. The daemon prints one line per listening
socket once every session is up (`forward HOST:PORT=DEST:PORT`), and ends
when any session can no longer continue.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import socket
import sys
from collections.abc import Awaitable, Callable

from roam.connector.allow import format_host_port, parse_port, split_host_port
from roam.control.eventlog import EventLog
from roam.control.server import Handler
from roam.core.compress import AUTO, CompressionMode
from roam.core.preamble import Suite
from roam.core.session import SessionConfig
from roam.crypto.cpu import default_cipher
from roam.crypto.keys import decode_public_key, load_private_key, short_id
from roam.daemons import _address, _control, _metrics, _ready
from roam.errors import ConfigError, KeyFileError, ServerBusy, TransportError
from roam.interfaces.dnsintercept import AddressPool, DnsInterceptor, NamePatterns
from roam.interfaces.dnsproxy import DnsProxy, default_upstream
from roam.interfaces.forward import Forward, ForwardSpec
from roam.interfaces.reverse import ReverseForwards
from roam.interfaces.socksproxy import SocksProxy, load_credentials
from roam.interfaces.transparent import Transparent, need_tools
from roam.interfaces.udpforward import RedundantUdpForward, UdpForward
from roam.links.driver import make_driver
from roam.policy.paths import PathConfig, parse_paths
from roam.policy.policy import Policy
from roam.registrar.messages import Found
from roam.registrar.sipunit import SipRegistrar, is_sip, parse_sip_registrar
from roam.registrar.sipunit import locator as sip_locator
from roam.registrar.unit import RegistrarSpec, lookup, parse_registrar
from roam.relay.route import RelayHop, parse_relays, resolve_route
from roam.servers import ServerSpec, parse_servers, server_for
from roam.transport.client import BACKOFF, Client, ClientConfig, HandoverRecord, busy_delay
from roam.transport.driver import SessionDriver
from roam.transport.pathmanager import PathManager

log = logging.getLogger("roam")


@dataclasses.dataclass
class RelayOptions:
    """A client's relays (`--relay`) and how it proves itself to them."""

    relays: list[str]
    otp_secret: str | None = None  # --relay-otp-secret FILE
    otp_code: int | None = None  # what a person typed at --relay-otp-prompt


@dataclasses.dataclass(frozen=True)
class DnsOptions:
    """The --dns flags as given."""

    listen: str | None
    intercept: list[str]
    pool: str | None
    upstream: str | None
    ports: str | None


@dataclasses.dataclass
class ServerSession:
    """One server's session: its client, its paths, its handovers."""

    spec: ServerSpec
    client: Client
    events: EventLog
    manager: PathManager | None = None
    history: list[HandoverRecord] = dataclasses.field(default_factory=list)

    async def start_paths(self, links: str, paths: list[PathConfig], dwell: float,
                          routes: dict[str, tuple[RelayHop, ...]]) -> None:
        if paths:
            driver = make_driver(links, {p.name: p.device for p in paths})
            self.manager = PathManager(self.client, Policy(paths, dwell=dwell), driver,
                                       self.events, routes)
            await self.manager.start()
            return

        def record(r: HandoverRecord) -> None:
            self.history.append(r)
            self.events.write("handover", type=r.kind, reason=r.reason, **{"from": r.origin},
                              to=r.target, stall_ms=r.stall_ms, frames_resent=r.frames_resent,
                              server=self.spec.name)
        self.client.on_handover = record

    async def connect(self) -> None:
        """The first handshake, tried again and again as a daemon should."""
        attempt = busy = 0
        client, where = self.client, f"server {self.spec.name} ({self.spec.address})"
        while True:
            if self.manager is not None:
                client.attachment = self.manager.initial()
                if client.attachment is None:
                    log.warning("%s: no usable path yet; waiting", where)
                    await asyncio.sleep(1.0)
                    continue
            try:
                await client.handshake()
                return
            except ServerBusy as exc:
                # Overloaded with openings (a flood, a mass reconnect): a
                # longer wait with jitter, as on every reconnect.
                busy += 1
                delay = busy_delay(busy)
                log.warning("%s: %s; waiting %.1f s before trying again", where, exc, delay)
                await asyncio.sleep(delay)
            except TransportError as exc:
                # The server may not be up yet: keep trying.
                delay = BACKOFF[min(attempt + 2, len(BACKOFF) - 1)]
                log.warning("%s: %s; retrying in %.1f s", where, exc, delay)
                attempt += 1
                await asyncio.sleep(delay)

    def status(self) -> dict[str, object]:
        if self.manager is not None:
            out = self.manager.status()
        else:
            client, driver = self.client, self.client.driver
            out = {"active_path": None, "links": None, "paths": [],
                   "session": (dataclasses.asdict(driver.session.statistics())
                               if driver else None),
                   "channels": driver.session.channel_ids() if driver else [],
                   "udp": driver.datagrams.status() if driver and driver.datagrams else None,
                   "transports": client.transport_roles(),
                   "handovers": [dataclasses.asdict(r) for r in self.history[-100:]]}
        return {"server": self.spec.name, "address": self.client.server, **out}

    async def close(self) -> None:
        await self.client.shutdown()
        if self.manager is not None:
            await self.manager.close()


def _relay_otp(options: RelayOptions) -> Callable[[float], int] | None:
    from cryptography.hazmat.primitives.hashes import SHA1
    from cryptography.hazmat.primitives.twofactor.totp import TOTP

    from roam.relay.admission import TOTP_DIGITS, TOTP_STEP_S
    from roam.relay.config import load_otp_secret

    if options.otp_secret is not None:
        totp = TOTP(load_otp_secret(options.otp_secret), TOTP_DIGITS, SHA1(), TOTP_STEP_S,
                    enforce_key_length=False)
        return lambda wall: int(totp.generate(wall))
    code = options.otp_code
    if code is not None:
        return lambda wall: code
    return None


async def run_client(servers: list[str], server_key: str | None, key: str,
                     forwards: list[str], cipher: str, paths: list[str] | None = None,
                     links: str = "linux", dwell: float = 3.0, control: str | None = None,
                     event_log: str | None = None, udp: bool = True,
                     socks: str | None = None, socks_auth: str | None = None,
                     dns: DnsOptions | None = None, reverse: list[str] | None = None,
                     transparent: list[str] | None = None,
                     compression: CompressionMode = AUTO,
                     relays: RelayOptions | None = None,
                     registrars: list[str] | None = None, metrics: str | None = None) -> int:
    registrar_specs = [parse_registrar(r) for r in registrars or [] if not is_sip(r)]
    sip = [parse_sip_registrar(r) for r in registrars or [] if is_sip(r)]
    private = load_private_key(key)
    sip_aor = servers[0] if len(servers) == 1 and is_sip(servers[0]) else None
    if any(is_sip(s) for s in servers) and sip_aor is None:
        raise ConfigError("--server sip:USER@DOMAIN names one server, alone")
    if sip_aor is not None:
        # Named by its address-of-record, as a phone number names a person.
        if not sip or server_key is None:
            raise ConfigError(f"--server {sip_aor}: needs --server-key and --registrar "
                              "sip:USER@DOMAIN,via=HOST:PORT,password-file=FILE")
        servers = [await _find(_sip_locators(sip, sip_aor), sip_aor)]
    elif not servers and registrar_specs and server_key is not None:
        # Named by identity alone: where it is comes from its registrars.
        servers = [await _find_server(registrar_specs, private, server_key)]
    specs_of_servers = parse_servers(servers, server_key)
    relay_options = relays or RelayOptions([])
    known_relays = parse_relays(relay_options.relays)
    specs = [ForwardSpec.parse(f) for f in forwards]
    for spec in specs:
        server_for(specs_of_servers, spec.server, f"--forward {spec}")
    if socks_auth and socks is None:
        raise ConfigError("--socks-auth needs --socks HOST:PORT")
    credentials = load_credentials(socks_auth) if socks_auth else None
    socks_at = _address(socks, "--socks") if socks else None
    reverse_specs = [ForwardSpec.parse_reverse(r) for r in reverse or []]
    path_configs = parse_paths(paths or [])
    routes = {p.name: resolve_route(p.via, known_relays, p.name) for p in path_configs}
    name = default_cipher() if cipher == "auto" else {"aesgcm": "AESGCM",
                                                       "chachapoly": "ChaChaPoly"}[cipher]
    suite = Suite.AESGCM_SHA256 if name == "AESGCM" else Suite.CHACHAPOLY_BLAKE2S
    otp = _relay_otp(relay_options)
    events = EventLog(event_log)
    sessions = {s.name: ServerSession(s, Client(ClientConfig(
        s.host, s.port, s.key, private, SessionConfig(), suite, udp, compression, otp,
        _sip_locators(sip, sip_aor) if sip_aor is not None
        else _locator(registrar_specs, private, s.key) if registrar_specs else None)), events)
        for s in specs_of_servers}
    first = sessions[specs_of_servers[0].name]

    def current() -> SessionDriver | None:
        return first.client.driver

    dns_proxy = _dns_proxy(dns, current) if dns is not None else None
    tproxy = (await _transparent(transparent, first.spec, current) if transparent else None)
    if not specs and socks_at is None and dns_proxy is None and not reverse_specs and not tproxy:
        log.warning("no --forward given: the session will carry nothing")
    if reverse_specs:
        first.client.on_session = ReverseForwards(reverse_specs).attach
    for session in sessions.values():
        await session.start_paths(links, path_configs, dwell, routes)
    web = await _metrics(metrics, "client")
    handlers = _client_handlers(list(sessions.values()))
    ctl = await _control(control, "client", handlers)
    if web is not None:
        for session in sessions.values():
            web.metrics.watch_client(session.client)
        web.serve(handlers["status"])
    started: list[Forward | UdpForward] = []
    proxy: SocksProxy | None = None
    try:
        try:
            async with asyncio.TaskGroup() as tg:
                for session in sessions.values():
                    tg.create_task(session.connect(), name=f"connect-{session.spec.name}")
        except ExceptionGroup as group:  # a session that cannot start says why, as one did
            raise group.exceptions[0] from None

        def driver_of(spec: ForwardSpec) -> Callable[[], SessionDriver | None]:
            client = sessions[server_for(specs_of_servers, spec.server, "").name].client
            return lambda: client.driver

        started = [(RedundantUdpForward if spec.redundant else UdpForward if spec.udp
                    else Forward)(spec, driver_of(spec)) for spec in specs]
        proxy = (SocksProxy(socks_at[0], socks_at[1], current, credentials)
                 if socks_at else None)
        for fwd in started:
            lhost, lport = await fwd.start()
            proto = "udp:" if fwd.spec.udp else ""
            to = f"{fwd.spec.server}/" if fwd.spec.server else ""
            _ready(f"forward {proto}{format_host_port(lhost, lport)}={to}"
                   f"{format_host_port(fwd.spec.dest_host, fwd.spec.dest_port)}")
        if proxy is not None:
            shost, sport = await proxy.start()
            _ready(f"socks {format_host_port(shost, sport)}")
        if dns_proxy is not None:
            dhost, dport = await dns_proxy.start()
            _ready(f"dns {format_host_port(dhost, dport)}")
        if tproxy is not None:
            await tproxy.start()
            _ready(f"transparent {','.join(tproxy.cidrs)}")
        ended = await _first_to_stop(list(sessions.values()))
        print(f"roam client: stopped: the session to {ended} cannot continue", file=sys.stderr)
        return 1
    finally:
        for fwd in started:
            fwd.close()
        if proxy is not None:
            proxy.close()
        if dns_proxy is not None:
            dns_proxy.close()
        if tproxy is not None:
            tproxy.close()  # the rules go first, whatever else fails
        for session in sessions.values():
            await session.close()
        if ctl is not None:
            await ctl.close()
        if web is not None:
            await web.close()
        events.close()


def _locator(specs: list[RegistrarSpec], private: bytes, server: bytes
             ) -> Callable[[], Awaitable[tuple[str, int] | None]]:
    async def locate() -> tuple[str, int] | None:
        found = await lookup(specs, private, server)
        if not isinstance(found, Found) or not found.addresses:
            return None
        host, port = split_host_port(found.addresses[0], "registered address")
        return host, int(port)

    return locate


def _sip_locators(registrars: list[SipRegistrar], aor: str
                  ) -> Callable[[], Awaitable[tuple[str, int] | None]]:
    """The first SIP registrar that has a contact for `aor`."""
    each = [sip_locator(r, aor) for r in registrars]

    async def locate() -> tuple[str, int] | None:
        for one in each:
            if (found := await one()) is not None:
                return found
        return None

    return locate


async def _find_server(specs: list[RegistrarSpec], private: bytes, server_key: str) -> str:
    """HOST:PORT of the server from its registrars, asked until one knows."""
    try:
        key = decode_public_key(server_key)
    except KeyFileError as exc:
        raise ConfigError(f"--server-key: {exc}") from None
    return await _find(_locator(specs, private, key), f"server {short_id(key)}")


async def _find(locate: Callable[[], Awaitable[tuple[str, int] | None]], who: str) -> str:
    attempt = 0
    while (found := await locate()) is None:
        delay = BACKOFF[min(attempt + 2, len(BACKOFF) - 1)]
        log.warning("no registrar knows where %s is; asking again in %.1f s", who, delay)
        attempt += 1
        await asyncio.sleep(delay)
    log.info("the registrar has the server at %s", format_host_port(*found))
    return format_host_port(*found)


class _Stopped(Exception):
    """A session's client stopped: it cannot continue."""


async def _first_to_stop(sessions: list[ServerSession]) -> str:
    """Wait until any session's client stops; its name (several: comma-separated)."""

    async def watch(session: ServerSession) -> None:
        await session.client.stopped.wait()
        raise _Stopped(session.spec.name)

    ended: list[str] = []
    try:
        async with asyncio.TaskGroup() as tg:
            for session in sessions:
                tg.create_task(watch(session), name=f"watch-{session.spec.name}")
    except* _Stopped as group:
        ended = [str(e) for e in group.exceptions]
    return ", ".join(ended)


async def _transparent(cidrs: list[str], server: ServerSpec,
                       current: Callable[[], SessionDriver | None]) -> Transparent:
    """Checked before the session starts: root, nft, the networks; the server's
    own address is never intercepted."""
    need_tools()
    try:
        infos = await asyncio.get_running_loop().getaddrinfo(
            server.host, server.port, family=socket.AF_INET, type=socket.SOCK_STREAM)
    except OSError as exc:
        raise ConfigError(f"--server {server.host}: cannot resolve it to exclude it from "
                          f"--transparent: {exc}") from None
    addresses = sorted({(str(info[4][0]), server.port) for info in infos})
    return Transparent(cidrs, current, exclude=addresses)


def _dns_proxy(opts: DnsOptions, current: Callable[[], SessionDriver | None]
               ) -> DnsProxy | None:
    if opts.listen is None:
        given = [flag for flag, value in (("--dns-intercept", opts.intercept),
                                          ("--dns-pool", opts.pool),
                                          ("--dns-upstream", opts.upstream),
                                          ("--dns-ports", opts.ports)) if value]
        if given:
            raise ConfigError(f"{', '.join(given)} need --dns HOST:PORT")
        return None
    host, port = _address(opts.listen, "--dns")
    if not opts.intercept:
        log.warning("--dns without --dns-intercept: every query goes upstream")
    ports: list[int] = []
    for text in (opts.ports or "80,443").split(","):
        number = parse_port(text.strip(), "--dns-ports")
        if number is None:
            raise ConfigError(f"--dns-ports {opts.ports!r}: a port is needed")
        ports.append(number)
    upstream = (_address(opts.upstream, "--dns-upstream") if opts.upstream
                else default_upstream())
    pool = AddressPool(opts.pool) if opts.pool else AddressPool()
    interceptor = DnsInterceptor(NamePatterns(opts.intercept), pool)
    return DnsProxy(host, port, interceptor, pool, ports, upstream, current)


def _client_handlers(sessions: list[ServerSession]) -> dict[str, Handler]:
    """`roam status` shows the first server's session at the top and, with
    several servers, every one under "servers"; `roam link` and `roam switch`
    act on every server's paths."""
    managers = [s.manager for s in sessions if s.manager is not None]

    async def status(_: dict[str, object]) -> object:
        out = sessions[0].status()
        if len(sessions) > 1:
            out["servers"] = [s.status() for s in sessions]
        return out

    async def link(req: dict[str, object]) -> object:
        if not managers:
            raise ConfigError("this client has no --path: there are no links to change")
        for manager in managers:
            answer = manager.set_link(str(req["path"]), str(req["change"]))
        return answer

    async def switch(req: dict[str, object]) -> object:
        if not managers:
            raise ConfigError("this client has no --path to switch to")
        for manager in managers:
            if req["path"] == "auto":
                manager.pin(None)
                continue
            try:
                await manager.switch(str(req["path"]), soft=True, reason="roam switch",
                                     pin=True)
            except TransportError as exc:
                raise ConfigError(f"switch to {req['path']} failed: {exc}") from None
        return await status({})

    return {"status": status, "link": link, "switch": switch}


__all__ = ["DnsOptions", "RelayOptions", "ServerSession", "run_client"]
