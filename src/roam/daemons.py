"""The server and client daemons: settings in, running session layer out.

Each prints one line per listening socket on stdout once it is ready
(`listening HOST:PORT`, `forward HOST:PORT=DEST:PORT`), so scripts and tests
that pass port 0 learn the real port.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import resource
import socket
import sys
from collections.abc import Callable

from roam.connector.allow import AccessList, format_host_port, parse_port, split_host_port
from roam.connector.connector import Connector
from roam.control.eventlog import EventLog
from roam.control.server import ControlServer, Handler, default_control_path
from roam.core.compress import AUTO, CompressionMode
from roam.core.preamble import Suite
from roam.core.session import SessionConfig
from roam.crypto.cpu import default_cipher
from roam.crypto.keys import decode_public_key, load_authorized_keys, load_private_key
from roam.errors import ConfigError, KeyFileError, ServerBusy, TransportError
from roam.interfaces.dnsintercept import AddressPool, DnsInterceptor, NamePatterns
from roam.interfaces.dnsproxy import DnsProxy, default_upstream
from roam.interfaces.forward import Forward, ForwardSpec
from roam.interfaces.reverse import ReverseForwards
from roam.interfaces.socksproxy import SocksProxy, load_credentials
from roam.interfaces.transparent import Transparent, need_tools
from roam.interfaces.udpforward import RedundantUdpForward, UdpForward
from roam.links.driver import make_driver
from roam.policy.paths import parse_paths
from roam.policy.policy import Policy
from roam.transport.client import BACKOFF, Client, ClientConfig, HandoverRecord, busy_delay
from roam.transport.driver import SessionDriver
from roam.transport.pathmanager import PathManager
from roam.transport.server import MAX_OPENINGS, Server, ServerConfig

log = logging.getLogger("roam")


def _address(text: str, flag: str) -> tuple[str, int]:
    host, port_text = split_host_port(text, flag)
    port = 0 if port_text == "0" else parse_port(port_text, f"{flag} {text!r}")
    if port is None:
        raise ConfigError(f"{flag} {text!r}: a port is needed")
    return host, port


def _ready(line: str) -> None:
    print(line, flush=True)


async def _control(path: str | None, role: str,
                   handlers: dict[str, Handler]) -> ControlServer | None:
    """The control socket: where --control says, else the default place if it is free."""
    server = ControlServer(path or default_control_path(role), handlers)
    try:
        await server.start()
    except ConfigError as exc:
        if path is not None:
            raise
        log.warning("running without a control socket: %s", exc)
        return None
    log.info("control socket %s", server.path)
    return server


def raise_open_files_limit() -> int:
    """Raise this process's soft limit on open files to its hard limit.

    A server holds a socket per session and per opening (4096 of those
    alone, MAX_OPENINGS), and Debian's default soft limit is 1024: at it,
    accept() fails and asyncio stops accepting for a second at a time, so a
    flood of idle connections would keep everyone out. The hard limit is the
    administrator's word (Go raises it the same way since 1.19).
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or soft < hard:
        target = hard if hard != resource.RLIM_INFINITY else max(soft, 1 << 20)
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (OSError, ValueError) as exc:
            log.warning("cannot raise the open files limit from %d to %d: %s", soft, target, exc)
    if soft < 2 * MAX_OPENINGS:
        log.warning("open files limit %d: a flood of connections can exhaust it (raise it "
                    "with ulimit -n or LimitNOFILE=)", soft)
    return soft


async def run_server(listen: str | None, key: str, authorized_keys: str, allow: list[str],
                     linger: float, control: str | None = None, udp: bool = True,
                     allow_listen: list[str] | None = None,
                     compression: CompressionMode = AUTO,
                     uplinks: list[str] | None = None) -> int:
    from roam.relay.route import parse_relay
    from roam.transport.uplink import UplinkKeeper

    raise_open_files_limit()
    relays = [parse_relay(text, flag="--uplink", name=f"uplink{i}")
              for i, text in enumerate(uplinks or [])]
    if listen is None and not relays:
        raise ConfigError("give --listen HOST:PORT, or --uplink to relays (or both)")
    host, port = _address(listen, "--listen") if listen is not None else ("", 0)
    private = load_private_key(key)
    authorized = load_authorized_keys(authorized_keys)
    if not authorized:
        log.warning("%s lists no keys: every client will be refused", authorized_keys)
    access = AccessList.parse(allow)
    if not access.rules:
        log.warning("no --allow rule: every destination will be refused")
    listen_access = AccessList.parse(allow_listen or [])
    server = Server(ServerConfig(host, port, private, authorized,
                                 Connector(access, listen_access),
                                 SessionConfig(detached_timeout=linger), udp, compression))
    where = "none (uplinks only)"
    if listen is not None:
        try:
            bound = await server.start()
        except OSError as exc:
            raise ConfigError(f"--listen {listen!r}: {exc.strerror or exc}") from None
        where = format_host_port(bound[0], bound[1])
        _ready(f"listening {where}")
    keeper = UplinkKeeper(relays, private, server.accept_socket) if relays else None
    if keeper is not None:
        _ready("uplinks " + " ".join(r.address for r in relays))

    async def status(_: dict[str, object]) -> object:
        return {"listening": where,
                "uplinks": ({r.address: {"idle": keeper.idle[r.name],
                                         "taken": keeper.taken[r.name]} for r in relays}
                            if keeper is not None else {}),
                "sessions": [{"id": sid.hex(), "name": d.name,
                              "transport": d.proto.peer if d.proto else None,
                              **dataclasses.asdict(d.session.statistics()),
                              "channel_ids": d.session.channel_ids(),
                              "transports": _transports(d),
                              "udp": d.datagrams.status() if d.datagrams else None}
                             for sid, d in server.sessions.items()]}

    ctl = await _control(control, "server", {"status": status})
    try:
        if keeper is not None:
            await keeper.run()
        else:
            await asyncio.Event().wait()
    finally:
        if ctl is not None:
            await ctl.close()
        await server.close()
    return 0


async def run_relay(listen: str, key: str, admit_keys: str | None, admit_totp: str | None,
                    admit: str | None, control: str | None = None) -> int:
    from roam.relay.config import relay_config
    from roam.relay.driver import Relay

    raise_open_files_limit()
    config = relay_config(_address(listen, "--listen"), key, admit_keys, admit_totp, admit)
    relay = Relay(config)
    try:
        bound = relay.open()
    except OSError as exc:
        raise ConfigError(f"--listen {listen!r}: {exc.strerror or exc}") from None
    log.info("relay %s admits %d keys, %d TOTP identities%s", relay.status()["identity"],
             len(config.admit_keys), len(config.admit_totp),
             ", and any identity" if config.admit_any else "")
    _ready(f"listening {format_host_port(bound[0], bound[1])}")

    async def status(_: dict[str, object]) -> object:
        return {"listening": format_host_port(bound[0], bound[1]), **relay.status()}

    ctl = await _control(control, "relay", {"status": status})
    try:
        await relay.run()
    finally:
        if ctl is not None:
            await ctl.close()
    return 0


def _transports(driver: SessionDriver) -> list[dict[str, object]]:
    """Each transport of a session: its number, role and peer address."""
    states = driver.session.transport_ids()
    return [{"id": tid, "state": states[tid].value if tid in states else "gone",
             "peer": proto.peer} for tid, proto in sorted(driver.carriers().items())]


@dataclasses.dataclass
class RelayOptions:
    """A client's relays (`--relay`) and how it proves itself to them."""

    relays: list[str]
    otp_secret: str | None = None  # --relay-otp-secret FILE
    otp_code: int | None = None  # what a person typed at --relay-otp-prompt


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


async def run_client(server: str, server_key: str, key: str, forwards: list[str],
                     cipher: str, paths: list[str] | None = None, links: str = "linux",
                     dwell: float = 3.0, control: str | None = None,
                     event_log: str | None = None, udp: bool = True,
                     socks: str | None = None, socks_auth: str | None = None,
                     dns: DnsOptions | None = None, reverse: list[str] | None = None,
                     transparent: list[str] | None = None,
                     compression: CompressionMode = AUTO,
                     relays: RelayOptions | None = None) -> int:
    from roam.relay.route import parse_relays, resolve_route

    host, port = _address(server, "--server")
    relay_options = relays or RelayOptions([])
    known_relays = parse_relays(relay_options.relays)
    try:
        pinned = decode_public_key(server_key)
    except KeyFileError as exc:
        raise ConfigError(f"--server-key: {exc}") from None
    private = load_private_key(key)
    specs = [ForwardSpec.parse(f) for f in forwards]
    if socks_auth and socks is None:
        raise ConfigError("--socks-auth needs --socks HOST:PORT")
    credentials = load_credentials(socks_auth) if socks_auth else None
    socks_at = _address(socks, "--socks") if socks else None
    dns_proxy = _dns_proxy(dns, lambda: client.driver) if dns is not None else None
    reverse_specs = [ForwardSpec.parse_reverse(r) for r in reverse or []]
    tproxy = (await _transparent(transparent, host, port, lambda: client.driver)
              if transparent else None)
    if not specs and socks_at is None and dns_proxy is None and not reverse_specs and not tproxy:
        log.warning("no --forward given: the session will carry nothing")
    name = default_cipher() if cipher == "auto" else {"aesgcm": "AESGCM",
                                                       "chachapoly": "ChaChaPoly"}[cipher]
    suite = Suite.AESGCM_SHA256 if name == "AESGCM" else Suite.CHACHAPOLY_BLAKE2S
    client = Client(ClientConfig(host, port, pinned, private, SessionConfig(), suite, udp,
                                 compression, _relay_otp(relay_options)))
    if reverse_specs:
        client.on_session = ReverseForwards(reverse_specs).attach
    events = EventLog(event_log)
    path_configs = parse_paths(paths or [])
    manager: PathManager | None = None
    history: list[HandoverRecord] = []
    if path_configs:
        routes = {p.name: resolve_route(p.via, known_relays, p.name) for p in path_configs}
        driver = make_driver(links, {p.name: p.device for p in path_configs})
        manager = PathManager(client, Policy(path_configs, dwell=dwell), driver, events,
                              routes)
        await manager.start()
    else:
        def record(r: HandoverRecord) -> None:
            history.append(r)
            events.write("handover", type=r.kind, reason=r.reason, **{"from": r.origin},
                         to=r.target, stall_ms=r.stall_ms, frames_resent=r.frames_resent)
        client.on_handover = record
    ctl = await _control(control, "client", _client_handlers(client, manager, history))
    attempt = busy = 0
    while True:
        if manager is not None:
            client.attachment = manager.initial()
            if client.attachment is None:
                log.warning("no usable path yet; waiting")
                await asyncio.sleep(1.0)
                continue
        try:
            await client.handshake()
            break
        except ServerBusy as exc:
            # Overloaded with openings (a flood, a mass reconnect): a longer
            # wait with jitter, as on every reconnect.
            busy += 1
            delay = busy_delay(busy)
            log.warning("%s; waiting %.1f s before trying again", exc, delay)
            await asyncio.sleep(delay)
        except TransportError as exc:
            # The server may not be up yet: keep trying, as a daemon should.
            delay = BACKOFF[min(attempt + 2, len(BACKOFF) - 1)]
            log.warning("%s; retrying in %.1f s", exc, delay)
            attempt += 1
            await asyncio.sleep(delay)
    started: list[Forward | UdpForward] = [
        (RedundantUdpForward if spec.redundant else UdpForward if spec.udp else Forward)(
            spec, lambda: client.driver) for spec in specs]
    proxy = (SocksProxy(socks_at[0], socks_at[1], lambda: client.driver, credentials)
             if socks_at else None)
    try:
        for fwd in started:
            lhost, lport = await fwd.start()
            proto = "udp:" if fwd.spec.udp else ""
            _ready(f"forward {proto}{format_host_port(lhost, lport)}="
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
        await client.stopped.wait()
        print("roam client: stopped: the session cannot continue", file=sys.stderr)
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
        await client.shutdown()
        if manager is not None:
            await manager.close()
        if ctl is not None:
            await ctl.close()
        events.close()


async def _transparent(cidrs: list[str], host: str, port: int,
                       current: Callable[[], SessionDriver | None]) -> Transparent:
    """Checked before the session starts: root, nft, the networks; the server's
    own address is never intercepted."""
    need_tools()
    try:
        infos = await asyncio.get_running_loop().getaddrinfo(host, port, family=socket.AF_INET,
                                                             type=socket.SOCK_STREAM)
    except OSError as exc:
        raise ConfigError(f"--server {host}: cannot resolve it to exclude it from "
                          f"--transparent: {exc}") from None
    servers = sorted({(str(info[4][0]), port) for info in infos})
    return Transparent(cidrs, current, exclude=servers)


@dataclasses.dataclass(frozen=True)
class DnsOptions:
    """The --dns flags as given."""

    listen: str | None
    intercept: list[str]
    pool: str | None
    upstream: str | None
    ports: str | None


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


def _client_handlers(client: Client, manager: PathManager | None,
                     history: list[HandoverRecord]) -> dict[str, Handler]:
    async def status(_: dict[str, object]) -> object:
        if manager is not None:
            return manager.status()
        driver = client.driver
        return {"active_path": None, "links": None, "paths": [],
                "session": dataclasses.asdict(driver.session.statistics()) if driver else None,
                "channels": driver.session.channel_ids() if driver else [],
                "udp": driver.datagrams.status() if driver and driver.datagrams else None,
                "transports": client.transport_roles(),
                "handovers": [dataclasses.asdict(r) for r in history[-100:]]}

    async def link(req: dict[str, object]) -> object:
        if manager is None:
            raise ConfigError("this client has no --path: there are no links to change")
        return manager.set_link(str(req["path"]), str(req["change"]))

    async def switch(req: dict[str, object]) -> object:
        if manager is None:
            raise ConfigError("this client has no --path to switch to")
        if req["path"] == "auto":
            manager.pin(None)
            return manager.status()
        try:
            await manager.switch(str(req["path"]), soft=True, reason="roam switch", pin=True)
        except TransportError as exc:
            raise ConfigError(f"switch to {req['path']} failed: {exc}") from None
        return manager.status()

    return {"status": status, "link": link, "switch": switch}
