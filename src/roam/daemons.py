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
import sys
from typing import Any

from roam.connector.allow import AccessList, format_host_port, parse_port, split_host_port
from roam.connector.connector import Connector
from roam.control.eventlog import EventLog
from roam.control.server import ControlServer, Handler, default_control_path
from roam.core.compress import AUTO, CompressionMode
from roam.core.session import SessionConfig
from roam.crypto.keys import decode_public_key, load_authorized_keys, load_private_key
from roam.errors import ConfigError, KeyFileError, RoamError
from roam.links.driver import make_driver
from roam.observe.http import MetricsHttp
from roam.observe.metrics import DaemonMetrics
from roam.policy.paths import parse_paths
from roam.policy.policy import Policy
from roam.transport.driver import SessionDriver
from roam.transport.mobility import ServerNetworks
from roam.transport.server import MAX_OPENINGS, Server, ServerConfig
from roam.workers import WorkerRole

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


async def _metrics(address: str | None, role: str) -> MetricsHttp | None:
    """--metrics: bound, and its line printed before every other ready line."""
    if address is None:
        return None
    web = await MetricsHttp.open(address, role)
    _ready(f"metrics {web.url}")
    return web


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
                     uplinks: list[str] | None = None, registrars: list[str] | None = None,
                     advertise: list[str] | None = None, paths: list[str] | None = None,
                     links: str = "linux", dwell: float = 3.0,
                     event_log: str | None = None, metrics: str | None = None,
                     workers: int = 1, worker: WorkerRole | None = None) -> int:
    if workers > 1:
        from roam.workers import supervise

        # Every setting as given: the workers run with them (roam.workers).
        return await supervise(workers, dict(locals()))
    from roam.crypto.keys import encode_key
    from roam.registrar.addresses import WILDCARDS, reachable_at
    from roam.registrar.messages import check_address
    from roam.registrar.sipunit import is_sip, keep_registered, parse_sip_registrar
    from roam.registrar.unit import Registration, parse_registrar
    from roam.registrar.watch import watch_addresses
    from roam.relay.route import parse_relay
    from roam.transport.uplink import UplinkKeeper

    raise_open_files_limit()
    relays = [parse_relay(text, flag="--uplink", name=f"uplink{i}")
              for i, text in enumerate(uplinks or [])]
    if listen is None and not relays:
        raise ConfigError("give --listen HOST:PORT, or --uplink to relays (or both)")
    host, port = _address(listen, "--listen") if listen is not None else ("", 0)
    specs = [parse_registrar(r) for r in registrars or [] if not is_sip(r)]
    sip = [parse_sip_registrar(r) for r in registrars or [] if is_sip(r)]
    for text in advertise or []:
        try:
            check_address(text)
        except RoamError as exc:
            raise ConfigError(f"--advertise {text!r}: {exc}") from None
    if advertise and not (specs or sip):
        raise ConfigError("--advertise needs --registrar HOST:PORT,key=...: where to say it")
    networks_config = parse_paths(paths or [])
    if networks_config and listen is None:
        raise ConfigError("--path needs --listen: a server is reached on its networks at the "
                          "port it listens on")
    policy = Policy(networks_config, dwell=dwell) if networks_config else None
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
    bound_at: tuple[str, int] | None = None
    web = await _metrics(metrics, "server")
    # A worker counts what --metrics counts, for its supervisor to add up
    # over the workers (roam.workers): its status carries the figures.
    counting = web.metrics if web is not None else (
        DaemonMetrics("server") if worker is not None else None)
    if counting is not None:
        server.on_session = counting.watch_session
    if listen is not None:
        try:
            if worker is not None:
                worker.attach(server)  # one of several on this port (docs/workers.md)
            bound = bound_at = await server.start()
            if worker is not None:
                worker.started()
        except OSError as exc:
            raise ConfigError(f"--listen {listen!r}: {exc.strerror or exc}") from None
        where = format_host_port(bound[0], bound[1])
        _ready(f"listening {where}")
    keeper = UplinkKeeper(relays, private, server.accept_socket) if relays else None
    if keeper is not None:
        _ready("uplinks " + " ".join(r.address for r in relays))

    async def status(_: dict[str, object]) -> dict[str, Any]:
        return {"listening": where, "worker": worker.status() if worker is not None else None,
                "uplinks": ({r.address: {"idle": keeper.idle[r.name],
                                         "taken": keeper.taken[r.name]} for r in relays}
                            if keeper is not None else {}),
                "sessions": [{"id": sid.hex(), "name": d.name,
                              "transport": d.proto.peer if d.proto else None,
                              **dataclasses.asdict(d.session.statistics()),
                              "channel_ids": d.session.channel_ids(),
                              "transports": _transports(d),
                              "udp": d.datagrams.status() if d.datagrams else None}
                             for sid, d in server.sessions.items()],
                "refused": _refused(server, worker),
                "counters": counting.counters() if counting is not None else None}

    wake_sip = [asyncio.Event() for _ in sip]
    registration: Registration | None = None
    networks: ServerNetworks | None = None

    def addresses_changed() -> None:
        if registration is not None:
            registration.changed()
        for event in wake_sip:
            event.set()

    reachable = reachable_at(bound_at, advertise or [])
    if policy is not None and bound_at is not None:
        networks = ServerNetworks(policy, make_driver(links, {p.name: p.device
                                                              for p in networks_config}),
                                  bound_at[1], server, addresses_changed, EventLog(event_log))
        if not advertise:
            reachable = networks.addresses
    if specs:
        registration = Registration(
            specs, private, reachable,
            lambda: [f"{r.name}={r.address},key={encode_key(r.key)}" for r in relays],
            frozenset(authorized))
    async def with_networks(req: dict[str, object]) -> object:
        return {**await status(req),
                "networks": networks.status() if networks is not None else None}

    def needs_networks() -> ServerNetworks:
        if networks is None:
            raise ConfigError("this server has no --path: it is reached where it listens")
        return networks

    async def switch(req: dict[str, object]) -> object:
        try:
            needs_networks().switch(str(req["path"]))
        except ValueError as exc:
            raise ConfigError(str(exc)) from None
        return await with_networks({})

    async def link(req: dict[str, object]) -> object:
        return needs_networks().set_link(str(req["path"]), str(req["change"]))

    ctl = await _control(control, "server", {"status": with_networks, "switch": switch,
                                             "link": link})
    if web is not None:
        web.serve(with_networks)
    try:
        if networks is not None:
            await networks.start()
        # One TaskGroup for what the daemon runs besides its listener.
        async with asyncio.TaskGroup() as tasks:
            tasks.create_task(asyncio.Event().wait(), name="serve")
            if keeper is not None:
                tasks.create_task(keeper.run(), name="uplinks")
            if registration is not None:
                tasks.create_task(registration.run(), name="registration")
            if ((registration is not None or sip) and networks is None and not advertise
                    and bound_at is not None and bound_at[0] in WILDCARDS):
                # Reached on every interface, no networks named: look for changes.
                tasks.create_task(watch_addresses(reachable, addresses_changed),
                                  name="address-watch")
            for n, registrar in enumerate(sip):
                tasks.create_task(keep_registered(registrar, reachable, wake_sip[n]),
                                  name=f"sip-registration-{n}")
    finally:
        if networks is not None:
            await networks.close()
        if ctl is not None:
            await ctl.close()
        if web is not None:
            await web.close()
        await server.close()
        if worker is not None:
            worker.close()
    return 0


async def run_relay(listen: str, key: str, admit_keys: str | None, admit_totp: str | None,
                    admit: str | None, control: str | None = None,
                    dial_allow: list[str] | None = None, metrics: str | None = None, *,
                    directory: str | None = None, fleet_address: str | None = None) -> int:
    from roam.relay.config import relay_config
    from roam.relay.driver import Relay

    raise_open_files_limit()
    config = relay_config(_address(listen, "--listen"), key, admit_keys, admit_totp, admit,
                          dial_allow, directory, fleet_address)
    if config.admit_any and config.dial_allow is None:
        log.warning("--admit any without --dial-allow: anyone can have this relay dial any "
                    "address; give --dial-allow for the servers and relays it may reach")
    relay = Relay(config)
    try:
        bound = relay.open()
    except OSError as exc:
        raise ConfigError(f"--listen {listen!r}: {exc.strerror or exc}") from None
    if relay.fleet is not None:
        await relay.fleet.start()  # ConfigError naming --directory when Redis is unusable
    log.info("relay %s admits %d keys, %d TOTP identities%s", relay.status()["identity"],
             len(config.admit_keys), len(config.admit_totp),
             ", and any identity" if config.admit_any else "")
    web = await _metrics(metrics, "relay")
    _ready(f"listening {format_host_port(bound[0], bound[1])}")

    async def status(_: dict[str, object]) -> object:
        return {"listening": format_host_port(bound[0], bound[1]), **relay.status()}

    ctl = await _control(control, "relay", {"status": status})
    if web is not None:
        web.serve(status)
    try:
        await relay.run()
    finally:
        if ctl is not None:
            await ctl.close()
        if web is not None:
            await web.close()
    return 0


def _refused(server: Server, worker: WorkerRole | None) -> dict[str, int]:
    """Transports the server refused, by code; a worker's own BUSY answers
    (a transport the holding worker could not take) among them."""
    refused = dict(server.refused)
    busy = worker.refused_busy if worker is not None else 0
    if busy:
        refused["BUSY"] = refused.get("BUSY", 0) + busy
    return refused


def _transports(driver: SessionDriver) -> list[dict[str, object]]:
    """Each transport of a session: its number, role and peer address."""
    states = driver.session.transport_ids()
    return [{"id": tid, "state": states[tid].value if tid in states else "gone",
             "peer": proto.peer} for tid, proto in sorted(driver.carriers().items())]


async def run_registrar(listen: str, key: str, db: str | None, allow_lookup: str | None,
                        control: str | None = None, metrics: str | None = None) -> int:
    from roam.registrar.config import registrar_config
    from roam.registrar.driver import Registrar

    config = registrar_config(_address(listen, "--listen"), key, db, allow_lookup)
    registrar = Registrar(config)
    await registrar.connect()  # before "listening": an unreachable --db ends the start
    try:
        bound = registrar.open()
    except OSError as exc:
        raise ConfigError(f"--listen {listen!r}: {exc.strerror or exc}") from None
    log.info("registrar %s: %s units on record (%s)", registrar.status()["identity"],
             registrar.status()["units"], registrar.store.name)
    web = await _metrics(metrics, "registrar")
    _ready(f"listening {format_host_port(bound[0], bound[1])}")

    async def status(_: dict[str, object]) -> object:
        return {"listening": format_host_port(bound[0], bound[1]), **registrar.status()}

    ctl = await _control(control, "registrar", {"status": status})
    if web is not None:
        web.serve(status)
    try:
        await registrar.run()
    finally:
        if ctl is not None:
            await ctl.close()
        if web is not None:
            await web.close()
    return 0


async def run_lookup(target: str, key: str, registrars: list[str]) -> int:
    from roam.registrar.messages import Found
    from roam.registrar.unit import lookup, parse_registrar

    if not registrars:
        raise ConfigError("--registrar is needed: where to ask (HOST:PORT,key=PUBLIC_KEY)")
    specs = [parse_registrar(r) for r in registrars]
    try:
        peer = decode_public_key(target)
    except KeyFileError as exc:
        raise ConfigError(f"PUBLIC_KEY {target!r}: {exc}") from None
    answer = await lookup(specs, load_private_key(key), peer)
    if not isinstance(answer, Found):
        print(f"roam lookup: {answer.reason}", file=sys.stderr)
        return 2
    for address in answer.addresses:
        print(address)
    for relay in answer.relays:
        print(f"via {relay}")
    print(f"expires in {answer.expires_in_s:.0f} s")
    return 0
